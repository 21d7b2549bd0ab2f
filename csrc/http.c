/* HTTP serving with libmicrohttpd on the Lua thread.
 *
 * Threading model: MHD runs in external epoll mode (MHD_USE_EPOLL, no MHD
 * thread). Its epoll fd sits in the loop's epoll set and MHD_run is called
 * when it is readable, so request parsing, Lua dispatch and LevelDB all run on
 * the one thread that owns the lua_State: no locks and no hand-off queue.
 *
 * A request reaches Lua once, complete (or once its body is known to be too
 * large): handler(req). Lua answers with req:respond(...) either during that
 * call (queued at once) or later: then the connection is suspended and
 * respond() resumes it (RPC handlers waiting, group commit, slow auth).
 * The body limit is enforced while the body streams in: nothing beyond
 * max_body bytes is ever buffered. */
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>
#include <poll.h>
#include <microhttpd.h>

#include "core.h"
#include "loop.h"
#include "http.h"
#include "ws.h"
#include "fastpath.h"
#include "metrics.h"

#define SERVER_MT "moonstream.HttpServer"
#define REQUEST_MT "moonstream.Request"
#define HTTP_MAX_ENDPOINTS 16

typedef struct http_server http_server;
typedef struct http_request http_request;

/* The Lua side of a request: a box that points at the C request while the
 * connection lives. Each side clears the other's pointer when it goes away. */
typedef struct request_box {
    http_request *req;
} request_box;

enum request_state {
    REQ_RECEIVING,   /* headers seen, body arriving */
    REQ_HANDLED,     /* Lua handler called, no answer yet */
    REQ_SUSPENDED,   /* connection suspended until respond() */
    REQ_QUEUED       /* response handed to MHD */
};

struct http_request {
    http_server *srv;
    struct MHD_Connection *conn;
    const char *method, *url;    /* owned by MHD for the request's lifetime */
    request_box *box;            /* NULL if Lua never saw it or dropped it */
    char *body;
    size_t len, cap;
    size_t dropped;              /* bytes discarded after the body passed the limit */
    int too_large;
    enum request_state state;
    struct MHD_Response *response;  /* answer waiting to be queued */
    unsigned int status;
    void *ws;                    /* WebSocket waiting for this request's socket (ws.c) */
    ms_http_waiter *waiter;      /* the fast path answers it later (fastpath.c) */
    int upgraded;                /* the connection became a WebSocket */
    int endpoint;                /* its moonstream_http_requests_total label (metrics.h) */
    http_request *prev, *next;   /* list of live requests, for shutdown */
};

struct http_server {
    struct MHD_Daemon *daemon;   /* NULL once closed */
    ms_loop *loop;
    lua_State *L;                /* main thread */
    int handler_ref;
    int epfd;
    size_t max_body;
    unsigned int active;         /* live requests */
    unsigned long long handled;  /* requests handed to Lua */
    unsigned long long fast;     /* requests answered by the fast path */
    ms_fast *fastpath;           /* NULL: every request goes to Lua */
    int fast_ref;
    char **fast_headers;         /* name, value, ...: what the fast path's answers carry (httpapi.lua's) */
    size_t nfast_headers;
    http_request *requests;      /* doubly linked list of live requests */
    uint16_t port;
    int listening;
    int resumed;                 /* a connection was resumed since the last MHD_run */
    ms_ws_hub *ws_hub;           /* its WebSockets (ws.c), NULL before the first */
    int closing;                 /* inside close(): on_close callbacks may call it again */
    struct { char *path; int id; } endpoints[HTTP_MAX_ENDPOINTS];  /* exact paths -> metrics label */
    int nendpoints;
};

static int http_send_error(http_request *req, unsigned int status, const char *text);

/* A request the fast path answers later: cleared when the request goes. */
struct ms_http_waiter {
    http_request *req;
};

/* ---- request lifetime ---- */

static void request_unlink(http_request *req) {
    http_server *srv = req->srv;
    if (req->prev) req->prev->next = req->next; else srv->requests = req->next;
    if (req->next) req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

/* Frees the C request; the Lua box (if any) is told the request is gone. */
static void request_free(http_request *req) {
    if (req->box) req->box->req = NULL;
    if (req->waiter) req->waiter->req = NULL;
    if (req->response) MHD_destroy_response(req->response);
    if (req->ws) ms_ws_abandon(req->ws);
    request_unlink(req);
    if (!req->upgraded) req->srv->active--;
    free(req->body);
    free(req);
}

static void http_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                           enum MHD_RequestTerminationCode toe) {
    http_request *req = *req_cls;
    if (req == NULL) return;
    *req_cls = NULL;
    request_free(req);
}

/* Stores the answer for req; resumes the connection if it is suspended.
 * Takes ownership of response. Returns 0 if the request already has one. */
static int request_set_response(http_request *req, unsigned int status, struct MHD_Response *response) {
    if (req->response != NULL || req->state == REQ_QUEUED) {
        MHD_destroy_response(response);
        return 0;
    }
    req->response = response;
    req->status = status;
    if (req->state == REQ_SUSPENDED) {
        req->state = REQ_HANDLED;
        MHD_resume_connection(req->conn);
        req->srv->resumed = 1;
    }
    return 1;
}

/* Queues the stored answer. Returns MHD's verdict; MHD_NO only if MHD refuses
 * (then the caller keeps the response for a later call). */
static enum MHD_Result request_queue(http_request *req) {
    enum MHD_Result r = MHD_queue_response(req->conn, req->status, req->response);
    if (r == MHD_YES) {
        ms_metrics_http_response(req->endpoint, req->status);
        MHD_destroy_response(req->response);
        req->response = NULL;
        req->state = REQ_QUEUED;
    }
    return r;
}

/* ---- calling Lua ---- */

static void free_fast_headers(http_server *srv);

/* A 200 JSON answer of the fast path, with the headers Lua gave with it
 * (srv:set_fast_path). */
static void http_send_json(http_request *req, const char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        http_send_error(req, 500, "Internal server error.");
        return;
    }
    http_server *srv = req->srv;
    for (size_t i = 0; i + 1 < srv->nfast_headers; i += 2)
        MHD_add_response_header(r, srv->fast_headers[i], srv->fast_headers[i + 1]);
    request_set_response(req, 200, r);
}

ms_http_waiter *ms_http_defer(void *vreq) {
    http_request *req = vreq;
    ms_http_waiter *w = malloc(sizeof *w);
    if (w == NULL) return NULL;
    w->req = req;
    req->waiter = w;
    return w;
}

void ms_http_waiter_answer(ms_http_waiter *w, const char *body, size_t len) {
    http_request *req = w->req;
    free(w);
    if (req == NULL) return;  /* the connection went away meanwhile */
    req->waiter = NULL;
    if (body) http_send_json(req, body, len);
    else http_send_error(req, 503, "Server is shutting down.");
}

int ms_http_is_json(const char *ct) {
    if (ct == NULL) return 0;
    while (*ct == ' ' || (*ct >= '\t' && *ct <= '\r')) ct++;
    static const char want[] = "application/json";
    if (strncasecmp(ct, want, sizeof want - 1) != 0) return 0;
    char c = ct[sizeof want - 1];
    return c == '\0' || c == ';' || c == ' ' || (c >= '\t' && c <= '\r');
}

/* core.is_json_content_type(header|nil) -> boolean */
static int http_is_json_lua(lua_State *L) {
    lua_pushboolean(L, ms_http_is_json(luaL_optstring(L, 1, NULL)));
    return 1;
}

/* Offers a complete POST to the fast path: 1 when it took it. */
static int http_try_fast(http_request *req) {
    http_server *srv = req->srv;
    if (srv->fastpath == NULL || req->too_large || strcmp(req->method, "POST") != 0) return 0;
    const char *out;
    size_t outlen;
    const char *ctype = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    int rc = ms_fast_run(srv->fastpath, req, req->url, ctype, req->body ? req->body : "", req->len, &out, &outlen);
    if (rc == MS_FAST_DECLINE) return 0;
    srv->fast++;
    if (rc == MS_FAST_DONE) http_send_json(req, out, outlen);
    return 1;
}

/* handler(box): the box is made here, inside ms_pcall, as its allocation may
 * raise and this runs inside libmicrohttpd's callback. */
static int http_handler_tramp(lua_State *L) {
    http_request *req = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, req->srv->handler_ref);
    request_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->req = NULL;
    luaL_setmetatable(L, REQUEST_MT);
    box->req = req;
    req->box = box;
    lua_call(L, 1, 0);
    return 0;
}

/* Calls handler(req) with a fresh box, unless the fast path answers. Never
 * raises. A handler error is answered 500 (the error itself is logged by
 * ms_pcall). */
static void http_call_handler(http_request *req) {
    http_server *srv = req->srv;
    lua_State *L = srv->L;
    req->state = REQ_HANDLED;
    if (http_try_fast(req)) return;
    srv->handled++;
    if (!lua_checkstack(L, 4)) { http_send_error(req, 500, "Internal server error."); return; }
    lua_pushcfunction(L, http_handler_tramp);
    lua_pushlightuserdata(L, req);
    if (!ms_pcall(L, 1, 0) && req->response == NULL)
        http_send_error(req, 500, "Internal server error.");
}

static int http_send_error(http_request *req, unsigned int status, const char *text) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (r == NULL) return 0;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    return request_set_response(req, status, r);
}

/* ---- the access handler ---- */

/* The announced body size: 0 when absent, SIZE_MAX when unreadable or too
 * large for size_t. Pure (no MHD) so fuzz/http_body_fuzz.c can drive it. */
static size_t http_parse_content_length(const char *cl, int *present) {
    *present = cl != NULL;
    if (cl == NULL) return 0;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    if (errno || end == cl) return (size_t)-1;
    return n > SIZE_MAX ? SIZE_MAX : (size_t)n;
}

static size_t http_content_length(struct MHD_Connection *conn, int *present) {
    return http_parse_content_length(
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH), present);
}

/* Appends upload data, or marks the request too large once the total would
 * pass max_body (the data is then dropped, never buffered). */
static void http_take_body(http_request *req, const char *data, size_t size) {
    http_server *srv = req->srv;
    if (req->too_large || size == 0) return;  /* size 0: body may be NULL, NULL + 0 is UB */
    if (size > srv->max_body - req->len) { req->too_large = 1; return; }
    if (req->len + size > req->cap) {
        size_t cap = req->cap ? req->cap : 1024;
        while (cap < req->len + size) cap *= 2;
        if (cap > srv->max_body) cap = srv->max_body;
        char *b = realloc(req->body, cap);
        if (b == NULL) { req->too_large = 1; return; }
        req->body = b;
        req->cap = cap;
    }
    memcpy(req->body + req->len, data, size);
    req->len += size;
}

/* The metrics label of a URL path: the configured endpoint it names exactly. */
static int http_endpoint(const http_server *srv, const char *url) {
    for (int i = 0; i < srv->nendpoints; i++)
        if (strcmp(url, srv->endpoints[i].path) == 0) return srv->endpoints[i].id;
    return MS_EP_OTHER;
}

static enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version, const char *upload_data,
                                   size_t *upload_data_size, void **req_cls) {
    http_server *srv = cls;
    http_request *req = *req_cls;

    if (req == NULL) {
        req = calloc(1, sizeof *req);
        if (req == NULL) return MHD_NO;
        req->srv = srv;
        req->conn = conn;
        req->method = method;
        req->url = url;
        req->endpoint = http_endpoint(srv, url);
        req->state = REQ_RECEIVING;
        req->next = srv->requests;
        if (srv->requests) srv->requests->prev = req;
        srv->requests = req;
        srv->active++;
        *req_cls = req;
        int present;
        size_t announced = http_content_length(conn, &present);
        if (present && announced > srv->max_body) {
            /* Answer before the body is sent: Lua picks the status (an
             * earlier check such as 404 may win over 413). */
            req->too_large = 1;
            http_call_handler(req);
            if (req->response) return request_queue(req);
        }
        return MHD_YES;
    }

    if (*upload_data_size != 0) {
        if (req->state == REQ_RECEIVING) {
            http_take_body(req, upload_data, *upload_data_size);
            if (req->too_large) {
                http_call_handler(req);
                /* MHD refuses a response mid-body; it is queued at the end. */
                if (req->response) request_queue(req);
            }
        } else if (req->too_large) {
            /* Reading on to answer 413 is bounded: a body that goes on
             * much longer (an endless chunked stream) loses its connection. */
            req->dropped += *upload_data_size;
            if (req->dropped > req->srv->max_body + 1048576) return MHD_NO;
        }
        *upload_data_size = 0;  /* consumed (or dropped) */
        return MHD_YES;
    }

    /* The request is complete, or the connection was resumed. */
    if (req->state == REQ_RECEIVING) http_call_handler(req);
    if (req->state == REQ_QUEUED) return MHD_YES;
    if (req->response) return request_queue(req);
    req->state = REQ_SUSPENDED;
    MHD_suspend_connection(conn);
    return MHD_YES;
}

/* ---- loop integration ---- */

static void http_io(void *ud, int fd, uint32_t events) {
    http_server *srv = ud;
    if (srv->daemon) MHD_run(srv->daemon);
}

/* Runs before the loop sleeps. MHD only does work inside MHD_run, and some
 * of it never makes its epoll fd readable: connections resumed by respond(),
 * data MHD left unread on an edge-triggered socket (MHD_get_timeout says 0)
 * and its own timeouts. So run it here, outside any MHD frame, when it asks
 * to, once per iteration so fds and timers still get their turn. */
static long http_prepare(void *ud) {
    http_server *srv = ud;
    MHD_UNSIGNED_LONG_LONG ms;
    if (srv->daemon == NULL) return -1;
    int have_timeout = MHD_get_timeout(srv->daemon, &ms) == MHD_YES;
    if (srv->resumed || (have_timeout && ms == 0)) {
        srv->resumed = 0;
        MHD_run(srv->daemon);
        if (srv->daemon == NULL) return -1;
        have_timeout = MHD_get_timeout(srv->daemon, &ms) == MHD_YES;
    }
    if (!have_timeout) return -1;
    return ms > 60000 ? 60000 : (long)ms;
}

/* ---- Lua API: server ---- */

static http_server *check_server(lua_State *L, int idx) {
    http_server *srv = luaL_checkudata(L, idx, SERVER_MT);
    if (srv->daemon == NULL) luaL_error(L, "attempt to use a closed HTTP server");
    return srv;
}

static int http_resolve(const char *host, uint16_t port, struct sockaddr_storage *ss, const char **err) {
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV | AI_PASSIVE }, *res;
    char service[8];
    snprintf(service, sizeof service, "%u", (unsigned)port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) { *err = gai_strerror(rc); return -1; }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static int opt_int(lua_State *L, int t, const char *k, lua_Integer dflt) {
    lua_getfield(L, t, k);
    lua_Integer v = lua_isnil(L, -1) ? dflt : luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    return (int)v;
}

/* opts.endpoints (exact path -> metrics label) into srv->endpoints */
static void read_endpoints(lua_State *L, http_server *srv) {
    if (lua_getfield(L, 2, "endpoints") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (srv->nendpoints < HTTP_MAX_ENDPOINTS && lua_type(L, -2) == LUA_TSTRING &&
                lua_type(L, -1) == LUA_TSTRING) {
                char *path = strdup(lua_tostring(L, -2));
                if (path) {
                    srv->endpoints[srv->nendpoints].path = path;
                    srv->endpoints[srv->nendpoints++].id = ms_metrics_endpoint_id(lua_tostring(L, -1));
                }
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static struct MHD_Daemon *start_daemon(http_server *srv, const struct sockaddr_storage *ss, int conn_limit,
                                       int conn_timeout, int mem_limit, int per_ip_limit) {
    /* MHD_USE_TURBO also makes MHD close a connection without shutdown(2):
     * ws.c hands upgraded connections back while it keeps their socket */
    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_ALLOW_UPGRADE;
    if (ss->ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    return MHD_start_daemon(flags, 0, NULL, NULL, http_access, srv,
        MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)ss,
        MHD_OPTION_NOTIFY_COMPLETED, http_completed, srv,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)conn_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)conn_timeout,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)mem_limit,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)per_ip_limit,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int)1024,
        MHD_OPTION_END);
}

/* core.http_server(loop, opts) -> server | nil, err
 * opts: handler (function, required), host ("127.0.0.1"), port (0 = any),
 * max_body (bytes), connection_limit, connection_timeout (s, idle time
 * before MHD closes a connection), memory_limit (bytes per connection: the
 * request line and headers must fit, else 431), per_ip_limit (connections
 * per client address, 0 = no limit), endpoints (exact path -> metrics
 * label, see metrics.h; other paths count as "other"). Starts listening at once. */
static int http_server_new(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "handler");
    luaL_argcheck(L, lua_isfunction(L, -1), 2, "opts.handler must be a function");
    lua_getfield(L, 2, "host");
    const char *host = luaL_optstring(L, -1, "127.0.0.1");
    int port = opt_int(L, 2, "port", 0);
    luaL_argcheck(L, port >= 0 && port <= 65535, 2, "opts.port out of range");
    lua_Integer max_body = opt_int(L, 2, "max_body", 1048576);
    luaL_argcheck(L, max_body > 0, 2, "opts.max_body must be positive");
    int conn_limit = opt_int(L, 2, "connection_limit", 1024);
    int conn_timeout = opt_int(L, 2, "connection_timeout", 30);
    int mem_limit = opt_int(L, 2, "memory_limit", 16 * 1024);
    int per_ip_limit = opt_int(L, 2, "per_ip_limit", 0);
    luaL_argcheck(L, conn_limit > 0 && conn_timeout >= 0 && mem_limit >= 4096 && per_ip_limit >= 0, 2,
                  "opts: connection limits out of range");

    http_server *srv = lua_newuserdatauv(L, sizeof *srv, 1);
    memset(srv, 0, sizeof *srv);
    srv->handler_ref = LUA_NOREF;
    srv->fast_ref = LUA_NOREF;
    srv->epfd = -1;
    luaL_setmetatable(L, SERVER_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);  /* the loop outlives the server */
    srv->loop = loop;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    srv->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    srv->max_body = (size_t)max_body;
    read_endpoints(L, srv);

    struct sockaddr_storage ss;
    const char *err = NULL;
    if (http_resolve(host, (uint16_t)port, &ss, &err) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot resolve host '%s': %s", host, err);
        return 2;
    }
    srv->daemon = start_daemon(srv, &ss, conn_limit, conn_timeout, mem_limit, per_ip_limit);
    if (srv->daemon == NULL) {
        int e = errno;
        lua_pushnil(L);
        lua_pushfstring(L, "cannot listen on %s:%d: %s", host, port,
                        e ? strerror(e) : "libmicrohttpd could not start");
        return 2;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    srv->epfd = info ? info->epoll_fd : -1;
    info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : (uint16_t)port;
    if (srv->epfd < 0 || ms_loop_watch(loop, srv->epfd, EPOLLIN, http_io, srv) != 0 ||
        ms_loop_add_prepare(loop, http_prepare, srv) != 0) {
        ms_loop_unwatch(loop, srv->epfd);
        MHD_stop_daemon(srv->daemon);
        srv->daemon = NULL;
        lua_pushnil(L);
        lua_pushstring(L, "cannot add the HTTP server to the event loop");
        return 2;
    }
    ms_loop_first(loop, srv->epfd);
    srv->listening = 1;
    lua_getfield(L, 2, "handler");
    srv->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

static int http_server_port(lua_State *L) {
    lua_pushinteger(L, check_server(L, 1)->port);
    return 1;
}

/* srv:stats() -> { active = live requests, connections = open connections,
 * handled = requests handed to Lua } */
static int http_server_stats(lua_State *L) {
    http_server *srv = check_server(L, 1);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, srv->active);
    lua_setfield(L, -2, "active");
    lua_pushinteger(L, info ? info->num_connections : 0);
    lua_setfield(L, -2, "connections");
    lua_pushinteger(L, (lua_Integer)srv->handled);
    lua_setfield(L, -2, "handled");
    lua_pushinteger(L, (lua_Integer)srv->fast);
    lua_setfield(L, -2, "fast");
    return 1;
}

/* srv:quiesce(): stops accepting connections (the listening socket is closed);
 * open connections go on being served. Safe twice. */
static int http_server_quiesce(lua_State *L) {
    http_server *srv = check_server(L, 1);
    if (srv->listening) {
        MHD_socket s = MHD_quiesce_daemon(srv->daemon);
        if (s != MHD_INVALID_SOCKET) close(s);
        srv->listening = 0;
    }
    return 0;
}

static void http_free_endpoints(http_server *srv) {
    for (int i = 0; i < srv->nendpoints; i++) free(srv->endpoints[i].path);
    srv->nendpoints = 0;
}

/* srv:close(): answers every request still waiting for Lua with 503, resumes
 * every suspended connection (MHD requires it), stops the daemon (which
 * frees the requests through http_completed). Safe twice. */
static int http_server_close(lua_State *L) {
    http_server *srv = luaL_checkudata(L, 1, SERVER_MT);
    if (srv->daemon == NULL) http_free_endpoints(srv);  /* never started: nothing else to free */
    if (srv->daemon == NULL || srv->closing) return 0;
    srv->closing = 1;
    for (http_request *req = srv->requests; req; req = req->next) {
        if (req->state == REQ_SUSPENDED || (req->state == REQ_HANDLED && req->response == NULL))
            http_send_error(req, 503, "Server is shutting down.");
    }
    /* WebSockets first: their on_close callbacks may still use the server */
    ms_ws_hub *hub = srv->ws_hub;
    srv->ws_hub = NULL;
    ms_ws_hub_close(L, hub);
    ms_loop_remove_prepare(srv->loop, http_prepare, srv);
    ms_loop_unwatch(srv->loop, srv->epfd);
    /* Let MHD send those answers before it closes the connections: bounded
     * to about a second for clients that do not read. */
    for (int i = 0; i < 200 && srv->requests; i++) {
        MHD_run(srv->daemon);
        if (srv->requests) {
            struct pollfd pfd = { .fd = srv->epfd, .events = POLLIN };
            poll(&pfd, 1, 5);
        }
    }
    MHD_stop_daemon(srv->daemon);
    srv->daemon = NULL;
    while (srv->requests) request_free(srv->requests);  /* MHD reported them all; defensive */
    http_free_endpoints(srv);
    luaL_unref(L, LUA_REGISTRYINDEX, srv->handler_ref);
    srv->handler_ref = LUA_NOREF;
    srv->fastpath = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, srv->fast_ref);
    srv->fast_ref = LUA_NOREF;
    free_fast_headers(srv);
    return 0;
}

static void free_fast_headers(http_server *srv) {
    for (size_t i = 0; i < srv->nfast_headers; i++) free(srv->fast_headers[i]);
    free(srv->fast_headers);
    srv->fast_headers = NULL;
    srv->nfast_headers = 0;
}

/* Copies the table at idx (header name -> value, strings) into srv. */
static void copy_fast_headers(lua_State *L, http_server *srv, int idx) {
    size_t n = 0;
    for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
        luaL_argcheck(L, lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING, idx,
                      "headers must map strings to strings");
        n += 2;
    }
    if ((srv->fast_headers = calloc(n ? n : 1, sizeof *srv->fast_headers)) == NULL) luaL_error(L, "not enough memory");
    for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
        char *k = strdup(lua_tostring(L, -2)), *v = strdup(lua_tostring(L, -1));
        srv->fast_headers[srv->nfast_headers++] = k;
        srv->fast_headers[srv->nfast_headers++] = v;
        if (k == NULL || v == NULL) luaL_error(L, "not enough memory");  /* freed by the next call or close */
    }
}

/* srv:set_fast_path(fp, headers | nil): POST requests go to fp first
 * (csrc/fastpath.c); its answers carry headers (httpapi.lua's for JSON
 * answers when every origin is allowed, the only case the fast path runs). */
static int http_server_set_fast_path(lua_State *L) {
    http_server *srv = check_server(L, 1);
    ms_fast *f = lua_isnoneornil(L, 2) ? NULL : ms_fast_check(L, 2);
    if (f) luaL_checktype(L, 3, LUA_TTABLE);
    luaL_unref(L, LUA_REGISTRYINDEX, srv->fast_ref);
    srv->fast_ref = LUA_NOREF;
    srv->fastpath = NULL;
    free_fast_headers(srv);
    if (f) {
        copy_fast_headers(L, srv, 3);
        lua_pushvalue(L, 2);
        srv->fast_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        srv->fastpath = f;
    }
    return 0;
}

/* ---- Lua API: request ---- */

static http_request *check_request(lua_State *L, int idx) {
    request_box *box = luaL_checkudata(L, idx, REQUEST_MT);
    return box->req;  /* NULL: the connection is gone */
}

static http_request *check_live_request(lua_State *L, int idx) {
    http_request *req = check_request(L, idx);
    if (req == NULL) luaL_error(L, "the request is finished");
    return req;
}

static int request_method(lua_State *L) {
    lua_pushstring(L, check_live_request(L, 1)->method);
    return 1;
}

/* req:path() -> the URL path, without the query string */
static int request_path(lua_State *L) {
    lua_pushstring(L, check_live_request(L, 1)->url);
    return 1;
}

static int request_header(lua_State *L) {
    http_request *req = check_live_request(L, 1);
    const char *name = luaL_checkstring(L, 2);
    const char *v = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
    if (v) lua_pushstring(L, v); else lua_pushnil(L);
    return 1;
}

/* req:body() -> string, or nil when the body passed the limit */
static int request_body(lua_State *L) {
    http_request *req = check_live_request(L, 1);
    if (req->too_large) lua_pushnil(L);
    else lua_pushlstring(L, req->body ? req->body : "", req->len);
    return 1;
}

static int request_client_address(lua_State *L) {
    http_request *req = check_live_request(L, 1);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char buf[INET6_ADDRSTRLEN] = "";
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, sizeof buf);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, sizeof buf);
    }
    lua_pushstring(L, buf);
    return 1;
}

/* req:respond(status, body, headers) -> true | false, reason
 * headers: table name -> value. Answers now if Lua is inside the handler
 * call, else resumes the suspended connection. A second answer, or an answer
 * to a finished request, returns false. */
static int request_respond(lua_State *L) {
    http_request *req = check_request(L, 1);
    lua_Integer status = luaL_checkinteger(L, 2);
    size_t len;
    const char *body = luaL_optlstring(L, 3, "", &len);
    if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
    luaL_argcheck(L, status >= 100 && status <= 599, 2, "invalid HTTP status");
    if (req == NULL) { lua_pushboolean(L, 0); lua_pushliteral(L, "the request is finished"); return 2; }
    if (req->response != NULL || req->state == REQ_QUEUED) {
        lua_pushboolean(L, 0); lua_pushliteral(L, "the request was already answered"); return 2;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL) return luaL_error(L, "out of memory");
    if (!lua_isnoneornil(L, 4)) {
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
                MHD_add_response_header(r, lua_tostring(L, -2), lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    request_set_response(req, (unsigned int)status, r);
    lua_pushboolean(L, 1);
    return 1;
}

/* req:upgrade([opts]) -> websocket | nil, err: see csrc/ws.c. A bad
 * handshake leaves the request unanswered (the caller answers 400). */
static int request_upgrade(lua_State *L) {
    http_request *req = check_live_request(L, 1);
    int opts = lua_isnoneornil(L, 2) ? 0 : 2;
    if (opts) luaL_checktype(L, 2, LUA_TTABLE);
    if (req->response != NULL || req->state == REQ_QUEUED || req->ws != NULL)
        return luaL_error(L, "the request was already answered");
    if (strcmp(req->method, MHD_HTTP_METHOD_GET) != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "a WebSocket handshake must be a GET request");
        return 2;
    }
    const char *err = NULL;
    struct MHD_Response *r = ms_ws_upgrade(L, req->srv->loop, &req->srv->ws_hub, req->conn, req, opts, &err);
    if (r == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    req->ws = lua_touserdata(L, -1);
    request_set_response(req, MHD_HTTP_SWITCHING_PROTOCOLS, r);
    return 1;
}

void *ms_http_upgraded(void *req_cls) {
    http_request *req = req_cls;
    void *ws = req->ws;
    req->ws = NULL;
    if (!req->upgraded) {
        req->upgraded = 1;
        req->srv->active--;
    }
    return ws;
}

void ms_http_forget_ws(void *req_cls) {
    ((http_request *)req_cls)->ws = NULL;
}

void ms_http_wake(void *req_cls) {
    ((http_request *)req_cls)->srv->resumed = 1;
}


/* req:close(), __close, __gc: a request dropped by Lua without an answer
 * would hang its client until shutdown: answer it 500. Safe twice.
 * (MHD_resume_connection is safe anywhere.) */
static int request_gc(lua_State *L) {
    request_box *box = luaL_checkudata(L, 1, REQUEST_MT);
    http_request *req = box->req;
    if (req == NULL) return 0;
    req->box = NULL;
    box->req = NULL;
    if (req->state == REQ_SUSPENDED && req->response == NULL)
        http_send_error(req, 500, "Internal server error.");
    return 0;
}

static const luaL_Reg server_meth[] = {
    {"port", http_server_port},
    {"stats", http_server_stats},
    {"quiesce", http_server_quiesce},
    {"close", http_server_close},
    {"set_fast_path", http_server_set_fast_path},
    {NULL, NULL}
};

static const luaL_Reg server_metameth[] = {
    {"__index", NULL},
    {"__gc", http_server_close},
    {"__close", http_server_close},
    {NULL, NULL}
};

static const luaL_Reg request_meth[] = {
    {"method", request_method},
    {"path", request_path},
    {"header", request_header},
    {"body", request_body},
    {"client_address", request_client_address},
    {"respond", request_respond},
    {"upgrade", request_upgrade},
    {"close", request_gc},
    {NULL, NULL}
};

static const luaL_Reg request_metameth[] = {
    {"__index", NULL},
    {"__gc", request_gc},
    {"__close", request_gc},
    {NULL, NULL}
};


void ms_http_open(lua_State *L) {
    ms_createmeta(L, SERVER_MT, server_meth, server_metameth);
    ms_createmeta(L, REQUEST_MT, request_meth, request_metameth);
    lua_pushcfunction(L, http_server_new);
    lua_setfield(L, -2, "http_server");
    lua_pushcfunction(L, http_is_json_lua);
    lua_setfield(L, -2, "is_json_content_type");
}
