/* Fan-out load generator (bench/fanout/run, by hand; never in the tests):
 * one process holding N realtime clients that speak just enough of
 * deepstream's protocol: the WebSocket handshake, challenge, login and one
 * subscription, each a pre-encoded frame (the run makes them with the
 * server's own codecs), waiting for one answer frame per step. Then it only
 * counts deliveries: a data frame whose payload holds the driver's marker
 * "~PHASE~NANOSECONDS~" (the emit's data, a JSON string: no escaping in
 * either transport). No JSON parsing; epoll, 64 KiB reads.
 *
 *   client PORT PATH OPCODE N FRAMES_HEX SHM SLOT
 *     OPCODE 1 (text, json) or 2 (binary). FRAMES_HEX: challenge,auth,
 *     subscribe,ping as hex, comma separated. SHM: a file of slots (see
 *     struct slot), this process writes slot SLOT: ready clients, deliveries
 *     per phase, first and last arrival (CLOCK_MONOTONIC ns, the clock of
 *     the driver's time.monotonic_ns()). Latency = arrival - the emit's send
 *     time carried in the marker. Sends the ping every 10 s to every ready
 *     client (the servers drop clients silent for 2 heartbeat intervals).
 *     When the driver sets the stop word it prints one line of JSON (CPU
 *     seconds used, per-phase latency histogram in 10 us buckets) and exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PHASES 4
#define BUCKETS 1000000         /* 10 us each: 10 s; later arrivals go in the last */
#define PING_EVERY_NS 10000000000ULL

struct slot {                   /* one per process; the driver reads them all */
    volatile uint64_t ready, failed;
    volatile uint64_t count[PHASES], first[PHASES], last[PHASES];
    uint64_t pad[4];
};
struct shm { volatile uint64_t stop; uint64_t pad[7]; struct slot slots[]; };

enum { S_HTTP, S_CHALLENGE, S_AUTH, S_SUB, S_READY, S_DEAD };

struct conn {
    int fd, state;
    unsigned char *buf;         /* an incomplete frame carried over between reads */
    size_t len, cap;
};

static struct { unsigned char *p; size_t n; } fr[4];  /* challenge, auth, subscribe, ping: whole frames */
static uint32_t *hist[PHASES];
static struct slot *me;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* A masked client frame (mask key 0: the payload goes as is). */
static void make_frame(int i, int opcode, const char *hex, size_t hlen) {
    size_t n = hlen / 2, h = n < 126 ? 2 : 4;
    unsigned char *p = malloc(h + 4 + n);
    p[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) p[1] = (unsigned char)(0x80 | n);
    else { p[1] = 0x80 | 126; p[2] = (unsigned char)(n >> 8); p[3] = (unsigned char)n; }
    memset(p + h, 0, 4);
    for (size_t k = 0; k < n; k++) sscanf(hex + 2 * k, "%2hhx", &p[h + 4 + k]);
    fr[i].p = p;
    fr[i].n = h + 4 + n;
}

static void send_all(struct conn *c, const void *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { c->state = S_DEAD; me->failed++; return; }  /* small frames: the socket takes them */
        p = (const char *)p + w;
        n -= (size_t)w;
    }
}

/* One complete server frame's payload. */
static void on_frame(struct conn *c, const unsigned char *p, size_t n) {
    if (c->state == S_READY) {
        const unsigned char *m = memchr(p, '~', n);
        if (m == NULL || m + 1 >= p + n) return;          /* a pong or an ack */
        uint64_t t = now_ns();
        unsigned phase = (unsigned)(m[1] - '0');
        uint64_t sent = 0;
        for (const unsigned char *q = m + 3; q < p + n && *q >= '0' && *q <= '9'; q++) sent = sent * 10 + (*q - '0');
        if (phase >= PHASES) return;
        uint64_t b = t > sent ? (t - sent) / 10000 : 0;
        hist[phase][b < BUCKETS ? b : BUCKETS - 1]++;
        if (me->count[phase]++ == 0) me->first[phase] = t;
        me->last[phase] = t;
        return;
    }
    if (c->state == S_CHALLENGE) { c->state = S_AUTH; send_all(c, fr[1].p, fr[1].n); }
    else if (c->state == S_AUTH) { c->state = S_SUB; send_all(c, fr[2].p, fr[2].n); }
    else if (c->state == S_SUB) { c->state = S_READY; me->ready++; }
}

/* Splits bytes into frames; keeps an incomplete one for the next read. */
static void feed(struct conn *c, const unsigned char *p, size_t n) {
    if (c->len > 0) {
        if (c->len + n > c->cap) { c->cap = (c->len + n) * 2; c->buf = realloc(c->buf, c->cap); }
        memcpy(c->buf + c->len, p, n);
        c->len += n;
        p = c->buf;
        n = c->len;
    }
    size_t off = 0;
    while (n - off >= 2) {
        size_t len = p[off + 1] & 0x7F, h = 2;
        if (len == 126) { if (n - off < 4) break; len = (size_t)p[off + 2] << 8 | p[off + 3]; h = 4; }
        else if (len == 127) { if (n - off < 10) break; len = 0; for (int i = 0; i < 8; i++) len = len << 8 | p[off + 2 + i]; h = 10; }
        if (n - off < h + len) break;
        if ((p[off] & 0x0F) == 8) { c->state = S_DEAD; me->failed++; return; }  /* close */
        on_frame(c, p + off + h, len);
        off += h + len;
    }
    size_t rest = n - off;
    if (rest == 0) { c->len = 0; return; }
    if (p != c->buf) {
        if (rest > c->cap) { c->cap = rest * 2; c->buf = realloc(c->buf, c->cap); }
        memcpy(c->buf, p + off, rest);
    } else {
        memmove(c->buf, c->buf + off, rest);
    }
    c->len = rest;
}

static void on_http(struct conn *c, const unsigned char *p, size_t n) {
    /* the 101 and its headers, then maybe frames */
    size_t have = c->len;
    if (have + n > c->cap) { c->cap = (have + n) * 2 + 256; c->buf = realloc(c->buf, c->cap); }
    memcpy(c->buf + have, p, n);
    c->len += n;
    unsigned char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL) return;
    if (c->len < 12 || memcmp(c->buf, "HTTP/1.1 101", 12) != 0) { c->state = S_DEAD; me->failed++; return; }
    size_t rest = c->len - (size_t)(end + 4 - c->buf);
    unsigned char tail[4096];
    if (rest > sizeof tail) rest = sizeof tail;
    memcpy(tail, end + 4, rest);
    c->len = 0;
    c->state = S_CHALLENGE;
    send_all(c, fr[0].p, fr[0].n);
    if (rest) feed(c, tail, rest);
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: client PORT PATH OPCODE N FRAMES_HEX SHM SLOT\n"); return 2; }
    int port = atoi(argv[1]), opcode = atoi(argv[3]), n = atoi(argv[4]), slot = atoi(argv[7]);
    const char *path = argv[2];
    char *hex = strdup(argv[5]);
    for (int i = 0; i < 4; i++) {
        char *tok = strsep(&hex, ",");
        if (tok == NULL) { fprintf(stderr, "need 4 frames\n"); return 2; }
        make_frame(i, opcode, tok, strlen(tok));
    }
    int sfd = open(argv[6], O_RDWR);
    if (sfd < 0) { perror("shm"); return 1; }
    size_t shm_size = sizeof(struct shm) + (size_t)(slot + 1) * sizeof(struct slot);
    struct shm *shm = mmap(NULL, shm_size, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    if (shm == MAP_FAILED) { perror("mmap"); return 1; }
    me = &shm->slots[slot];
    for (int i = 0; i < PHASES; i++) hist[i] = calloc(BUCKETS, sizeof **hist);

    char req[512];
    int reqlen = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int ep = epoll_create1(0);
    struct conn *conns = calloc((size_t)n, sizeof *conns);
    /* connections opened in batches, so the server's accept queue never overflows */
    int opened = 0;
    static unsigned char rbuf[65536];
    struct epoll_event evs[256];
    uint64_t next_ping = now_ns() + PING_EVERY_NS;
    while (!shm->stop) {
        while (opened < n && opened - (int)(me->ready + me->failed) < 200) {
            struct conn *c = &conns[opened++];
            c->fd = socket(AF_INET, SOCK_STREAM, 0);
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) { perror("connect"); return 1; }
            c->state = S_HTTP;
            send_all(c, req, (size_t)reqlen);
            fcntl(c->fd, F_SETFL, O_NONBLOCK);
            struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        }
        int k = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            for (;;) {
                ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) {
                    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                        if (c->state != S_DEAD) { c->state = S_DEAD; me->failed++; }
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    }
                    break;
                }
                if (c->state == S_HTTP) on_http(c, rbuf, (size_t)r);
                else if (c->state != S_DEAD) feed(c, rbuf, (size_t)r);
                if ((size_t)r < sizeof rbuf) break;
            }
        }
        uint64_t t = now_ns();
        if (t >= next_ping) {
            next_ping = t + PING_EVERY_NS;
            for (int i = 0; i < opened; i++)
                if (conns[i].state == S_READY) send_all(&conns[i], fr[3].p, fr[3].n);
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"slot\":%d,\"cpu_s\":%.3f,\"hist\":[", slot,
           ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    for (int p = 0; p < PHASES; p++) {
        printf("%s{", p ? "," : "");
        int first = 1;
        for (int b = 0; b < BUCKETS; b++)
            if (hist[p][b]) { printf("%s\"%d\":%u", first ? "" : ",", b, hist[p][b]); first = 0; }
        printf("}");
    }
    printf("]}\n");
    return 0;
}
