/* The ceiling: a bare libmicrohttpd server that reads each POST body and
 * answers it with a fixed JSON body. Same MHD flags and threading as
 * moonstream (one thread, epoll, turbo), so the gap between the two is what
 * moonstream's own work costs (Lua dispatch, JSON, LevelDB, fsync).
 * usage: bare PORT   (prints "listening PORT" once ready; SIGTERM/SIGINT stop it) */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <microhttpd.h>

static const char BODY[] = "{\"body\":[{\"success\":true}],\"result\":\"SUCCESS\"}";
static struct MHD_Response *response;
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **req_cls) {
    (void)cls; (void)url; (void)method; (void)version; (void)upload;
    if (*req_cls == NULL) { *req_cls = conn; return MHD_YES; }  /* headers only so far */
    if (*upload_size) { *upload_size = 0; return MHD_YES; }      /* body consumed, ignored */
    return MHD_queue_response(conn, MHD_HTTP_OK, response);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: bare PORT\n"); return 2; }
    response = MHD_create_response_from_buffer(sizeof BODY - 1, (void *)BODY, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json; charset=utf-8");
    MHD_add_response_header(response, "Access-Control-Allow-Origin", "*");
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };  /* loopback only */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_TURBO, 0, NULL, NULL,
        on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, 1024u, MHD_OPTION_CONNECTION_TIMEOUT, 30u,
        /* keep equal to moonstream's connectionMemoryLimit default: MHD zeroes
         * this pool on every request, so it shows in both figures */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_END);
    if (d == NULL) { perror("bare: MHD_start_daemon"); return 1; }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("listening %s\n", argv[1]);
    fflush(stdout);
    while (!stop) pause();
    MHD_stop_daemon(d);
    MHD_destroy_response(response);
    return 0;
}
