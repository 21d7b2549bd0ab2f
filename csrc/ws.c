/* WebSocket connections: libmicrohttpd's HTTP upgrade for the handshake,
 * then the socket is ours: RFC 6455 framing here, in moonstream's own loop.
 *
 * Why not wslay (which this used before): its context embeds fixed 4 KiB
 * input and output buffers, 8.8 KB per connection even when idle, twice the
 * whole per-client budget (4 KB per idle authenticated client; bench/RESULTS.md
 * "WebSocket scale").
 * Here an idle connection holds only struct ms_ws: the message being
 * reassembled and the bytes the socket did not take are allocated while they
 * exist and freed when done. And once MHD has sent the 101 we keep a dup of
 * the socket and hand MHD's connection straight back, so MHD frees its
 * connection and its request memory pool (16 KiB) at once.
 *
 * Lua API (stable; the realtime layer programs against it)
 * ---------------------------------------------------------
 * req:upgrade([opts]) -> ws | nil, err
 *     On a GET request with a valid RFC 6455 handshake (Upgrade: websocket,
 *     Connection: upgrade, Sec-WebSocket-Version: 13, a 16-byte
 *     Sec-WebSocket-Key) answers 101 with Sec-WebSocket-Accept and returns a
 *     WebSocket in state "connecting". On a bad handshake nothing is answered:
 *     it returns nil, err and the caller answers (400 with err).
 *     opts (all optional):
 *       max_connections   live WebSockets of the server (default: unlimited);
 *                         beyond it upgrade() returns nil, "too many
 *                         WebSocket connections" (MHD's connection limit
 *                         does not count a connection once upgraded)
 *       max_message_size  bytes (default 1048576): an incoming message larger
 *                         than this (fragments counted together) closes the
 *                         connection with 1009
 *       max_buffered      bytes (default 4194304): outgoing bytes queued for a
 *                         client that does not read; when a send leaves more
 *                         than this queued, the connection is dropped at once
 *                         (on_close gets 1008, "send buffer full")
 *       close_timeout     ms (default 2000): how long a close handshake we
 *                         started may wait for the peer's close frame
 *       idle_timeout      ms (default 0: none): a connection that receives
 *                         no data message for longer is sent a close frame
 *                         without a code and finished (on_close: 1005,
 *                         "idle timeout"); checked every idle_timeout / 2,
 *                         so it goes after 1 to 1.5 times idle_timeout
 *     Sends made while "connecting" are queued and go out once MHD hands
 *     over the socket.
 * ws:on_open(fn)      fn(ws): the socket is live (called from the loop)
 * ws:on_message(fn)   fn(data, is_binary, ws): one complete message; text
 *                     messages are valid UTF-8 (else the peer gets 1007)
 * ws:on_close(fn)     fn(code, reason, ws): exactly once for every WebSocket
 *                     upgrade() returned, when it is over (also one whose
 *                     socket never arrived: 1006). code: the peer's close
 *                     code (1005: a close frame without one), or ours (1009
 *                     too big, 1008 send buffer full, 1002 protocol error,
 *                     1007 text not UTF-8, 1001 server shutdown, the code
 *                     given to ws:close), or 1006 (connection lost)
 *     Setters take a function or nil and return ws. Callbacks always run from
 *     the loop, through ms_pcall (an error is logged, the server goes on),
 *     never inside a libmicrohttpd callback or the frame parser, never from inside a
 *     ws method (send_text, send_binary and close never call back).
 * ws:send_text(s), ws:send_binary(s) -> true | nil, err
 *     Queues one message and writes what the socket takes now. err: "closed"
 *     (closing or closed), "send buffer full" (the client was dropped).
 * ws:close([code [, reason]]) -> true | false
 *     Starts the close handshake (code default 1000, none if 0; reason at most
 *     123 bytes). on_close follows once the peer answers or close_timeout
 *     passes. false if already closing or closed.
 * ws:answer_pings(ping, pong, binary) -> ws
 *     From now on a data message (text, or binary when binary is true) whose
 *     bytes are exactly ping is answered with pong (same kind) in C and not
 *     delivered to on_message (deepstream's heartbeat: idle clients then
 *     cost no Lua work). A message that arrives while earlier ones still wait
 *     for on_message goes to on_message as usual, so answers keep their
 *     order. ws:answer_pings(nil) stops it. A server holds at most 8
 *     different (ping, pong) pairs.
 * ws:last_received() -> ms (core.now's clock) of the last complete data
 *     message, or of the upgrade when none came yet
 * ws:id() -> integer, unique in the process
 * ws:remote_address() -> "127.0.0.1"
 * ws:buffered() -> bytes queued for sending, not yet taken by the socket
 * ws:state() -> "connecting" | "open" | "closing" | "closed"
 *
 * WebSocket-level pings from the peer are answered with pongs; the server
 * sends none (deepstream's heartbeat is an application message).
 *
 * Lifetime: the userdata is referenced from the registry from upgrade() until
 * on_close has run, so Lua need not keep it. srv:close() closes every
 * WebSocket first (1001, on_close delivered).
 *
 * Reading is bounded per loop turn (WS_READ_BUDGET bytes per connection), so
 * a client that floods cannot starve the others; what it sends stays in the
 * kernel until the next turn. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <microhttpd.h>
#include <openssl/evp.h>

#include "core.h"
#include "loop.h"
#include "ws.h"

#define WS_MT "moonstream.WebSocket"
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_READ_BUDGET (256 * 1024)
#define WS_READ_CHUNK (64 * 1024)
#define WS_REASON_MAX 123
#define WS_CONTROL_MAX 125

enum { OP_CONT = 0, OP_TEXT = 1, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };
enum { CODE_NONE = 1005, CODE_LOST = 1006, CODE_PROTOCOL = 1002, CODE_NOT_UTF8 = 1007,
       CODE_POLICY = 1008, CODE_TOO_BIG = 1009, CODE_INTERNAL = 1011, CODE_GOING_AWAY = 1001 };

typedef struct ms_ws ms_ws;

/* A complete incoming message: reassembled in place, then queued until the
 * read that completed it has returned. */
typedef struct ws_msg {
    struct ws_msg *next;
    size_t len;
    int binary;
    char data[];
} ws_msg;

enum ws_state { WS_CONNECTING, WS_OPEN, WS_CLOSING, WS_CLOSED };

/* Everything an idle connection costs the server, apart from the kernel's
 * socket and the Lua side: keep it small (bench/RESULTS.md, ws-scale). */
struct ms_ws {
    ms_ws_hub *hub;              /* NULL once closed */
    ms_ws *prev, *next;          /* the hub's list of live connections */
    ms_ws *cprev, *cnext;        /* the hub's list of connections with a deadline */
    ms_ws *dprev, *dnext;        /* the hub's list of connections with corked frames */
    uint8_t state;               /* enum ws_state */
    uint8_t in_closing_list;
    uint8_t in_dirty_list;
    uint8_t opened;              /* on_open was delivered */
    uint8_t dead;                /* finish at the next chance (I/O failure, drop) */
    uint8_t close_sent;          /* our close frame is queued: nothing may follow */
    uint8_t close_received;      /* the peer's close frame arrived */
    uint8_t read_off;            /* read nothing more (closed, or failed) */
    uint8_t in_payload;          /* the frame header is complete */
    uint8_t hdr_len;             /* header bytes read so far */
    uint8_t hdr[14];
    uint8_t frame_op, frame_fin;
    uint8_t msg_op;              /* TEXT or BINARY while a message is reassembled */
    uint8_t ctrl_len;
    uint8_t u8_need;             /* continuation bytes the text's current character still needs */
    uint8_t beat;                /* 1 + index of the hub's heartbeat answered here, 0: none */
    uint8_t mask[4];
    uint32_t u8_cp, u8_min;      /* that character so far, and its smallest valid value */
    uint16_t code_sent, code_received;
    int fd;                      /* ours (a dup of MHD's), -1 until MHD hands it over */
    uint32_t watched;            /* events registered with the loop, 0: none */
    uint64_t frame_left, frame_pos;
    ws_msg *msg;                 /* the message being reassembled, NULL: none */
    size_t msg_cap;
    char *out;                   /* bytes the socket has not taken yet, NULL: none */
    size_t out_off, out_len, out_cap;
    size_t max_message, max_buffered;
    void *req_cls;               /* the HTTP request while connecting */
    char *extra;                 /* bytes MHD read past the handshake */
    size_t extra_len, extra_off;
    ws_msg *inbox, *inbox_tail;
    char *reason;                /* the peer's close reason, NULL: none */
    double deadline;             /* ms (ms_loop_now) while in the closing list */
    double close_timeout;
    double last_received;        /* ms (ms_loop_now): the last complete data message, or the upgrade */
    double idle_timeout;         /* ms without a data message before the sweep closes it, 0: never */
    int forced_code;             /* close code decided by us without a frame, 0: none */
    const char *forced_reason;
    int self_ref, on_open_ref, on_message_ref, on_close_ref;
    lua_Integer id;
    uint8_t ctrl[WS_CONTROL_MAX];   /* the control frame being read */
    char addr[INET6_ADDRSTRLEN];
};

/* An application-level heartbeat answered without Lua: a data message
 * exactly equal to ping (of the same kind, text or binary) is answered with
 * pong. A few per hub (one per transport), shared by every connection. */
typedef struct ws_beat {
    char *ping, *pong;
    size_t ping_len, pong_len;
    int binary;
} ws_beat;
#define WS_BEATS 8

struct ms_ws_hub {
    lua_State *L;                /* main thread */
    ms_loop *loop;
    ms_ws *head;                 /* live connections */
    ms_ws *closing;              /* connections with a deadline */
    ms_ws *dirty;                /* connections with corked frames to write */
    int efd;                     /* eventfd: corked frames wait (wakes the loop), -1: none */
    size_t count;                /* live connections */
    int in_prepare, free_pending;
    int finished;                /* a connection went back to MHD since the last prepare */
    double trim_at;              /* when to give freed handshake memory back, 0: not due */
    double sweep_at;             /* next idle sweep (ms), 0: none due */
    double sweep_every;          /* half the smallest idle_timeout given, 0: none */
    ws_beat beats[WS_BEATS];     /* heartbeats answered in C (ws:answer_pings) */
    int nbeats;
};

/* After a burst of upgrades, MHD has freed each connection's request pool
 * (16 KiB, from malloc), but between long-lived WebSocket allocations: the
 * heap cannot shrink, and the pages stay in RSS. malloc_trim returns whole
 * free pages from anywhere in the heap; once per burst, a second after it. */
#define WS_TRIM_DELAY 1000.0

static lua_Integer ws_next_id = 0;

static void ws_finish(ms_ws *ws, int deliver);
static void ws_update_watch(ms_ws *ws);
static void ws_io(void *ud, int fd, uint32_t events);

/* ---- small helpers ---- */

/* Nonzero iff s[0..len) is well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF), as RFC 6455 requires of text messages. */
static int ws_utf8_valid(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (len - i <= n) return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += n + 1;
    }
    return 1;
}

/* Checks n more bytes of a text message as they arrive, so that invalid
 * UTF-8 fails the connection at once (RFC 6455 8.1) rather than after the
 * rest of a long message. Same rules as ws_utf8_valid. 0: invalid. */
static int ws_utf8_feed(ms_ws *ws, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (ws->u8_need == 0) {
            if (c < 0x80) continue;
            if ((c & 0xE0) == 0xC0) { ws->u8_need = 1; ws->u8_cp = c & 0x1F; ws->u8_min = 0x80; }
            else if ((c & 0xF0) == 0xE0) { ws->u8_need = 2; ws->u8_cp = c & 0x0F; ws->u8_min = 0x800; }
            else if ((c & 0xF8) == 0xF0) { ws->u8_need = 3; ws->u8_cp = c & 0x07; ws->u8_min = 0x10000; }
            else return 0;
            continue;
        }
        if ((c & 0xC0) != 0x80) return 0;
        ws->u8_cp = (ws->u8_cp << 6) | (c & 0x3F);
        if (--ws->u8_need == 0) {
            uint32_t cp = ws->u8_cp;
            if (cp < ws->u8_min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        }
    }
    return 1;
}

/* Nonzero iff the comma-separated header value v lists token (any case). */
static int ws_header_has_token(const char *v, const char *token) {
    size_t tl = strlen(token);
    while (v && *v) {
        while (*v == ' ' || *v == '\t' || *v == ',') v++;
        const char *end = v;
        while (*end && *end != ',') end++;
        const char *e = end;
        while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if ((size_t)(e - v) == tl && strncasecmp(v, token, tl) == 0) return 1;
        v = end;
    }
    return 0;
}

/* Nonzero iff key is the base64 form of 16 bytes (22 characters + "=="). */
static int ws_key_valid(const char *key) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (key == NULL || strlen(key) != 24 || key[22] != '=' || key[23] != '=') return 0;
    for (int i = 0; i < 22; i++)
        if (key[i] == '\0' || strchr(b64, key[i]) == NULL) return 0;
    /* the last character carries 2 bits: the other 4 must be zero */
    return strchr("AQgw", key[21]) != NULL;
}

/* Sec-WebSocket-Accept for key into out (29 bytes: 28 + NUL). 0 on failure. */
static int ws_accept_value(const char *key, char out[29]) {
    char buf[24 + sizeof WS_GUID];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    memcpy(buf, key, 24);
    memcpy(buf + 24, WS_GUID, sizeof WS_GUID - 1);
    if (!EVP_Digest(buf, 24 + sizeof WS_GUID - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) return 0;
    return EVP_EncodeBlock((unsigned char *)out, md, 20) == 28;
}

/* Close codes a peer may send (RFC 6455 7.4, IANA registry). */
static int ws_code_valid(unsigned code) {
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

static void ws_unref(lua_State *L, int *ref) {
    if (*ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    *ref = LUA_NOREF;
}

/* ---- the hub's deadline list ---- */

static void ws_closing_remove(ms_ws *ws) {
    if (!ws->in_closing_list) return;
    ms_ws_hub *hub = ws->hub;
    if (ws->cprev) ws->cprev->cnext = ws->cnext; else hub->closing = ws->cnext;
    if (ws->cnext) ws->cnext->cprev = ws->cprev;
    ws->cprev = ws->cnext = NULL;
    ws->in_closing_list = 0;
}

static void ws_closing_add(ms_ws *ws, double deadline) {
    if (ws->hub == NULL) return;
    if (ws->in_closing_list) { if (deadline < ws->deadline) ws->deadline = deadline; return; }
    ms_ws_hub *hub = ws->hub;
    ws->deadline = deadline;
    ws->cprev = NULL;
    ws->cnext = hub->closing;
    if (hub->closing) hub->closing->cprev = ws;
    hub->closing = ws;
    ws->in_closing_list = 1;
}

/* ---- the hub's list of connections with corked frames ---- */

static void ws_dirty_remove(ms_ws *ws) {
    if (!ws->in_dirty_list) return;
    ms_ws_hub *hub = ws->hub;
    if (ws->dprev) ws->dprev->dnext = ws->dnext; else hub->dirty = ws->dnext;
    if (ws->dnext) ws->dnext->dprev = ws->dprev;
    ws->dprev = ws->dnext = NULL;
    ws->in_dirty_list = 0;
}

/* ---- sending (no Lua in here) ---- */

static size_t ws_buffered_bytes(const ms_ws *ws) {
    return ws->out_len - ws->out_off;
}

static void ws_out_free(ms_ws *ws) {
    free(ws->out);
    ws->out = NULL;
    ws->out_off = ws->out_len = ws->out_cap = 0;
}

/* Appends n bytes to the output buffer. -1 when out of memory. */
static int ws_out_append(ms_ws *ws, const void *p, size_t n) {
    if (n == 0) return 0;
    if (ws->out_off > 0 && ws->out_len + n > ws->out_cap) {
        memmove(ws->out, ws->out + ws->out_off, ws->out_len - ws->out_off);
        ws->out_len -= ws->out_off;
        ws->out_off = 0;
    }
    if (ws->out_len + n > ws->out_cap) {
        size_t cap = ws->out_cap ? ws->out_cap * 2 : 256;
        while (cap < ws->out_len + n) cap *= 2;
        char *o = realloc(ws->out, cap);
        if (o == NULL) return -1;
        ws->out = o;
        ws->out_cap = cap;
    }
    memcpy(ws->out + ws->out_len, p, n);
    ws->out_len += n;
    return 0;
}

/* A send(2) failure other than "try later": the connection is lost. */
static void ws_write_failed(ms_ws *ws) {
    if (!ws->dead && ws->forced_code == 0) { ws->forced_code = CODE_LOST; ws->forced_reason = "write failed"; }
    ws->dead = 1;
}

/* Writes what the socket takes of the output buffer; frees it once empty. */
static void ws_out_flush(ms_ws *ws) {
    while (ws->fd >= 0 && !ws->dead && ws->out_off < ws->out_len) {
        ssize_t n = send(ws->fd, ws->out + ws->out_off, ws->out_len - ws->out_off, MSG_NOSIGNAL);
        if (n > 0) { ws->out_off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        ws_write_failed(ws);
        return;
    }
    if (ws->out_off == ws->out_len && ws->out) ws_out_free(ws);
}

/* Queues one unfragmented, unmasked frame (server frames are never masked).
 * With nothing queued before it, it goes straight to the socket and only
 * what the socket does not take is copied. -1 when out of memory. */
/* Writes the header of an unmasked, final frame (server to client) into h
 * (10 bytes at most); returns its length. */
static size_t ws_frame_header(uint8_t h[10], int op, size_t len) {
    h[0] = (uint8_t)(0x80 | op);
    if (len < 126) { h[1] = (uint8_t)len; return 2; }
    if (len < 65536) { h[1] = 126; h[2] = (uint8_t)(len >> 8); h[3] = (uint8_t)len; return 4; }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static int ws_queue_frame(ms_ws *ws, int op, const void *data, size_t len) {
    uint8_t h[10];
    size_t hl = ws_frame_header(h, op, len);
    size_t done = 0;
    if (ws->fd >= 0 && !ws->dead && ws->out_off == ws->out_len) {
        struct iovec iov[2] = { { h, hl }, { (void *)data, len } };
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
        ssize_t n;
        do n = sendmsg(ws->fd, &mh, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
        if (n >= 0) done = (size_t)n;
        else if (errno != EAGAIN && errno != EWOULDBLOCK) { ws_write_failed(ws); return 0; }
    }
    if (done < hl && ws_out_append(ws, h + done, hl - done) != 0) return -1;
    size_t skip = done > hl ? done - hl : 0;
    return ws_out_append(ws, (const char *)data + skip, len - skip);
}

/* Fan-out frames up to this size are corked: appended to the connection's
 * output and written once per loop turn, so the emits handled in one turn
 * reach each subscriber in one send(2) (the kernel's work per send is most of
 * a delivery's cost: bench/RESULTS.md "Realtime fan-out"). Larger frames go
 * out at once, uncopied: corking copies the frame once per subscriber. */
#define WS_CORK_MAX 4096

/* Appends one frame to ws's output without writing; the hub writes every
 * corked connection before the loop sleeps (ws_prepare), and its eventfd
 * makes sure the loop does not sleep first. -1 when out of memory. */
static int ws_cork_frame(ms_ws *ws, int op, const void *data, size_t len) {
    uint8_t h[10];
    size_t hl = ws_frame_header(h, op, len);
    if (ws_out_append(ws, h, hl) != 0 || ws_out_append(ws, data, len) != 0) return -1;
    ms_ws_hub *hub = ws->hub;
    if (hub == NULL || ws->in_dirty_list) return 0;
    if (hub->dirty == NULL && hub->efd >= 0) {
        uint64_t one = 1;
        ssize_t n = write(hub->efd, &one, sizeof one);
        (void)n;  /* EAGAIN: already signalled */
    }
    ws->dprev = NULL;
    ws->dnext = hub->dirty;
    if (hub->dirty) hub->dirty->dprev = ws;
    hub->dirty = ws;
    ws->in_dirty_list = 1;
    return 0;
}

/* Queues our close frame (code 0: none); nothing may be sent after it. */
static int ws_queue_close(ms_ws *ws, unsigned code, const char *reason, size_t rlen) {
    uint8_t p[2 + WS_REASON_MAX];
    size_t n = 0;
    if (code) {
        if (rlen > WS_REASON_MAX) rlen = WS_REASON_MAX;
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        if (rlen) memcpy(p + 2, reason, rlen);
        n = 2 + rlen;
    }
    ws->close_sent = 1;
    ws->code_sent = (uint16_t)(code ? code : CODE_NONE);
    return ws_queue_frame(ws, OP_CLOSE, p, n);
}

/* RFC 6455 7.1.7, failing the connection: our close frame with code, no more
 * reading; it finishes once the frame is written (bounded by close_timeout). */
static void ws_fail(ms_ws *ws, int code, const char *reason) {
    ws->read_off = 1;
    if (ws->forced_code == 0) { ws->forced_code = code; ws->forced_reason = reason; }
    if (!ws->close_sent && ws_queue_close(ws, (unsigned)code, reason, strlen(reason)) != 0) ws->dead = 1;
    if (ws->hub) ws_closing_add(ws, ms_loop_now() + ws->close_timeout);
}

/* ---- receiving (no Lua in here) ---- */

/* A complete control frame. */
static void ws_control(ms_ws *ws) {
    if (ws->frame_op == OP_PING) {
        if (!ws->close_sent && ws_queue_frame(ws, OP_PONG, ws->ctrl, ws->ctrl_len) != 0) ws->dead = 1;
        return;
    }
    if (ws->frame_op != OP_CLOSE) return;  /* a pong: nothing to do */
    unsigned code = CODE_NONE;
    size_t rlen = 0;
    if (ws->ctrl_len == 1) { ws_fail(ws, CODE_PROTOCOL, ""); return; }
    if (ws->ctrl_len >= 2) {
        code = (unsigned)ws->ctrl[0] << 8 | ws->ctrl[1];
        rlen = ws->ctrl_len - 2u;
        if (!ws_code_valid(code)) { ws_fail(ws, CODE_PROTOCOL, ""); return; }
        if (!ws_utf8_valid(ws->ctrl + 2, rlen)) { ws_fail(ws, CODE_NOT_UTF8, ""); return; }
    }
    ws->close_received = 1;
    ws->read_off = 1;
    ws->code_received = (uint16_t)code;
    if (rlen > 0 && (ws->reason = malloc(rlen + 1)) != NULL) {
        memcpy(ws->reason, ws->ctrl + 2, rlen);
        ws->reason[rlen] = '\0';
    }
    /* answer with the same code (none for none) */
    if (!ws->close_sent && ws_queue_close(ws, code == CODE_NONE ? 0 : code, NULL, 0) != 0) ws->dead = 1;
}

/* Answers m when it is the connection's heartbeat ping: the pong is queued
 * here, Lua never sees the message. Only with nothing waiting for Lua before
 * it, so that the pong does not overtake the answers to earlier messages.
 * 1: answered (m is the caller's to free). */
static int ws_answer_beat(ms_ws *ws, const ws_msg *m) {
    if (ws->beat == 0 || ws->inbox != NULL || ws->hub == NULL || ws->state != WS_OPEN) return 0;
    const ws_beat *b = &ws->hub->beats[ws->beat - 1];
    if (m->binary != b->binary || m->len != b->ping_len || memcmp(m->data, b->ping, m->len) != 0) return 0;
    if (ws_queue_frame(ws, b->binary ? OP_BINARY : OP_TEXT, b->pong, b->pong_len) != 0) ws->dead = 1;
    else if (ws_buffered_bytes(ws) > ws->max_buffered && !ws->dead) {
        /* pings from a client that does not read its pongs: as ws_send's limit */
        ws->dead = 1;
        ws->forced_code = CODE_POLICY;
        ws->forced_reason = "send buffer full";
    }
    return 1;
}

/* The last frame of a data message arrived. */
static void ws_message_done(ms_ws *ws) {
    ws_msg *m = ws->msg;
    ws->msg = NULL;
    ws->msg_cap = 0;
    int text = ws->msg_op == OP_TEXT;
    ws->msg_op = 0;
    if (text && ws->u8_need != 0) {  /* ends inside a character */
        free(m);
        ws_fail(ws, CODE_NOT_UTF8, "text message is not UTF-8");
        return;
    }
    if (ws->close_sent || ws->state == WS_CLOSING) { free(m); return; }  /* we are closing: dropped */
    m->binary = !text;
    ws->last_received = ms_loop_now();
    if (ws_answer_beat(ws, m)) { free(m); return; }
    m->data[m->len] = '\0';
    m->next = NULL;
    if (ws->inbox_tail) ws->inbox_tail->next = m; else ws->inbox = m;
    ws->inbox_tail = m;
}

/* Checks a frame header once its first two bytes are in; 0 on a protocol
 * error (the connection has failed). */
static int ws_header_start(ms_ws *ws) {
    uint8_t b0 = ws->hdr[0], b1 = ws->hdr[1];
    int op = b0 & 0x0F, fin = b0 >> 7, len7 = b1 & 0x7F;
    int control = (op & 8) != 0;
    int known = op == OP_CONT || op == OP_TEXT || op == OP_BINARY || op == OP_CLOSE || op == OP_PING || op == OP_PONG;
    if ((b0 & 0x70) || !known || !(b1 & 0x80) ||       /* reserved bits, opcode, client frames are masked */
        (control && (!fin || len7 > WS_CONTROL_MAX)) ||  /* control frames: whole and short */
        (op == OP_CONT && ws->msg_op == 0) ||            /* a continuation of nothing */
        ((op == OP_TEXT || op == OP_BINARY) && ws->msg_op != 0)) {  /* a new message inside one */
        ws_fail(ws, CODE_PROTOCOL, "");
        return 0;
    }
    return 1;
}

/* Header bytes needed in all, once the first two are known. */
static size_t ws_header_size(const ms_ws *ws) {
    int len7 = ws->hdr[1] & 0x7F;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
}

/* The header is complete: sets up reading the payload. */
static void ws_header_done(ms_ws *ws) {
    int len7 = ws->hdr[1] & 0x7F;
    uint64_t len = (uint64_t)len7;
    const uint8_t *p = ws->hdr + 2;
    if (len7 == 126) { len = (uint64_t)p[0] << 8 | p[1]; p += 2; }
    else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++) len = len << 8 | p[i];
        p += 8;
        if (len >> 63) { ws_fail(ws, CODE_PROTOCOL, ""); return; }
    }
    memcpy(ws->mask, p, 4);
    ws->frame_op = ws->hdr[0] & 0x0F;
    ws->frame_fin = ws->hdr[0] >> 7;
    ws->frame_left = len;
    ws->frame_pos = 0;
    ws->hdr_len = 0;
    ws->ctrl_len = 0;
    if (!(ws->frame_op & 8)) {
        size_t have = ws->msg ? ws->msg->len : 0;
        if (len > ws->max_message || have + len > ws->max_message) { ws_fail(ws, CODE_TOO_BIG, ""); return; }
        if (ws->frame_op != OP_CONT) { ws->msg_op = ws->frame_op; ws->u8_need = 0; }
    }
    ws->in_payload = 1;
}

/* Room for n more bytes of the message being reassembled. 0: out of memory. */
static int ws_msg_reserve(ms_ws *ws, size_t n) {
    size_t have = ws->msg ? ws->msg->len : 0;
    if (ws->msg && have + n <= ws->msg_cap) return 1;
    size_t cap = ws->msg_cap ? ws->msg_cap * 2 : 256;
    while (cap < have + n) cap *= 2;
    if (cap > ws->max_message && have + n <= ws->max_message) cap = ws->max_message;
    ws_msg *m = realloc(ws->msg, sizeof *m + cap + 1);
    if (m == NULL) return 0;
    if (ws->msg == NULL) m->len = 0;
    ws->msg = m;
    ws->msg_cap = cap;
    return 1;
}

/* The frame's payload is complete. */
static void ws_frame_done(ms_ws *ws) {
    ws->in_payload = 0;
    if (ws->frame_op & 8) { ws_control(ws); return; }
    if (ws->msg == NULL && !ws_msg_reserve(ws, 0)) { ws->dead = 1; ws->forced_code = CODE_INTERNAL; return; }
    if (ws->frame_fin) ws_message_done(ws);
}

/* Feeds n bytes from the peer through the frame parser. */
static void ws_feed(ms_ws *ws, const uint8_t *p, size_t n) {
    while (n > 0 && !ws->read_off && !ws->dead) {
        if (!ws->in_payload) {
            ws->hdr[ws->hdr_len++] = *p++;
            n--;
            if (ws->hdr_len == 2 && !ws_header_start(ws)) return;
            if (ws->hdr_len >= 2 && ws->hdr_len == ws_header_size(ws)) {
                ws_header_done(ws);
                if (ws->in_payload && ws->frame_left == 0) ws_frame_done(ws);
            }
            continue;
        }
        size_t m = ws->frame_left < n ? (size_t)ws->frame_left : n;
        uint8_t *dst;
        if (ws->frame_op & 8) {
            dst = ws->ctrl + ws->ctrl_len;
            ws->ctrl_len = (uint8_t)(ws->ctrl_len + m);
        } else {
            if (!ws_msg_reserve(ws, m)) { ws->dead = 1; ws->forced_code = CODE_INTERNAL; return; }
            dst = (uint8_t *)ws->msg->data + ws->msg->len;
            ws->msg->len += m;
        }
        for (size_t i = 0; i < m; i++) dst[i] = p[i] ^ ws->mask[(ws->frame_pos + i) & 3];
        if (ws->msg_op == OP_TEXT && !(ws->frame_op & 8) && !ws_utf8_feed(ws, dst, m)) {
            ws_fail(ws, CODE_NOT_UTF8, "text message is not UTF-8");
            return;
        }
        ws->frame_pos += m;
        ws->frame_left -= m;
        p += m;
        n -= m;
        if (ws->frame_left == 0) ws_frame_done(ws);
    }
}

/* Reads what is there (bounded by WS_READ_BUDGET per turn): first the bytes
 * MHD read past the handshake, then the socket. EOF or an error: lost. */
static void ws_read(ms_ws *ws) {
    static uint8_t buf[WS_READ_CHUNK];  /* one thread: the loop's */
    if (ws->extra_off < ws->extra_len) {
        ws_feed(ws, (const uint8_t *)ws->extra + ws->extra_off, ws->extra_len - ws->extra_off);
        ws->extra_off = ws->extra_len;
    }
    if (ws->extra) { free(ws->extra); ws->extra = NULL; ws->extra_len = ws->extra_off = 0; }
    size_t budget = WS_READ_BUDGET;
    while (ws->fd >= 0 && !ws->read_off && !ws->dead && budget > 0) {
        ssize_t n = recv(ws->fd, buf, budget < sizeof buf ? budget : sizeof buf, 0);
        if (n > 0) {
            budget -= (size_t)n;
            ws_feed(ws, buf, (size_t)n);
            if ((size_t)n < sizeof buf) return;  /* drained for now */
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        ws->dead = 1;  /* EOF or a socket error: the connection is lost */
        return;
    }
}

/* ---- connection state machine (loop context; Lua only via ms_pcall) ---- */

static void ws_free_inbox(ms_ws *ws) {
    while (ws->inbox) {
        ws_msg *m = ws->inbox;
        ws->inbox = m->next;
        free(m);
    }
    ws->inbox_tail = NULL;
}

/* Marks the connection lost: shutting the socket down makes the loop report
 * it (EPOLLHUP), and the I/O callback then finishes it outside any caller's
 * frame. Without a socket yet, it finishes when the socket arrives or the
 * request goes away. */
static void ws_drop(ms_ws *ws, int code, const char *reason) {
    if (ws->state == WS_CLOSED) return;
    if (!ws->dead || ws->forced_code == 0) { ws->forced_code = code; ws->forced_reason = reason; }
    ws->dead = 1;
    if (ws->fd >= 0) {
        shutdown(ws->fd, SHUT_RDWR);
        ws_update_watch(ws);
    }
}

static void ws_update_watch(ms_ws *ws) {
    if (ws->fd < 0 || ws->state == WS_CLOSED || ws->hub == NULL) return;
    uint32_t ev = 0;
    if (ws->dead || !ws->read_off) ev |= EPOLLIN;
    if (!ws->dead && ws_buffered_bytes(ws) > 0) ev |= EPOLLOUT;
    if (ev == 0) ev = EPOLLIN;  /* finished: ws_check_done closes it */
    if (ev == ws->watched) return;
    if (ms_loop_watch(ws->hub->loop, ws->fd, ev, ws_io, ws) == 0) ws->watched = ev;
    else { ws->dead = 1; ws->forced_code = CODE_INTERNAL; }
}

/* Writes what the socket takes now. */
static void ws_flush(ms_ws *ws) {
    if (ws->fd < 0 || ws->dead || ws->state == WS_CLOSED) return;
    ws_out_flush(ws);
    if (ws->dead) ws_drop(ws, CODE_LOST, "write failed");
    ws_update_watch(ws);
}

/* Writes every corked connection's output (no Lua). */
static void ws_flush_dirty(ms_ws_hub *hub) {
    while (hub->dirty) {
        ms_ws *ws = hub->dirty;
        ws_dirty_remove(ws);
        ws_flush(ws);
    }
}

static void ws_dirty_io(void *ud, int fd, uint32_t events) {
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof n);
    (void)r;  /* EAGAIN: drained already */
    ws_flush_dirty(ud);
}

/* Delivers messages collected by the parser, in order, until the
 * connection stops being open (a peer that sent messages and then dropped
 * the connection still has them delivered). */
static void ws_deliver_inbox(ms_ws *ws, lua_State *L) {
    while (ws->inbox && ws->state == WS_OPEN) {
        ws_msg *m = ws->inbox;
        ws->inbox = m->next;
        if (ws->inbox == NULL) ws->inbox_tail = NULL;
        if (ws->on_message_ref != LUA_NOREF && lua_checkstack(L, 5)) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, ws->on_message_ref);
            lua_pushlstring(L, m->data, m->len);  /* may raise only on memory exhaustion */
            lua_pushboolean(L, m->binary);
            lua_rawgeti(L, LUA_REGISTRYINDEX, ws->self_ref);
            free(m);
            ms_pcall(L, 3, 0);
        } else {
            free(m);
        }
    }
}

/* The code and reason on_close reports. */
static int ws_close_code(ms_ws *ws, const char **reason) {
    *reason = "";
    if (ws->close_received) {
        if (ws->reason) *reason = ws->reason;
        return ws->code_received;
    }
    if (ws->forced_code) { *reason = ws->forced_reason ? ws->forced_reason : ""; return ws->forced_code; }
    if (ws->close_sent) return ws->code_sent;
    return CODE_LOST;
}

/* Finishes the connection: closes the socket, frees every buffer, delivers
 * on_close when deliver is set (not from __gc), then drops the registry
 * references. Safe twice. */
static void ws_finish(ms_ws *ws, int deliver) {
    if (ws->state == WS_CLOSED) return;
    ms_ws_hub *hub = ws->hub;
    lua_State *L = hub ? hub->L : NULL;
    const char *reason;
    int code = ws_close_code(ws, &reason);
    char reason_copy[WS_REASON_MAX + 1];
    snprintf(reason_copy, sizeof reason_copy, "%s", reason);
    ws->state = WS_CLOSED;
    if (hub) {
        ws_closing_remove(ws);
        ws_dirty_remove(ws);
        if (ws->prev) ws->prev->next = ws->next; else hub->head = ws->next;
        if (ws->next) ws->next->prev = ws->prev;
        ws->prev = ws->next = NULL;
        hub->count--;
        if (ws->fd >= 0 && ws->watched) ms_loop_unwatch(hub->loop, ws->fd);
    }
    ws->watched = 0;
    ws->hub = NULL;
    if (ws->req_cls) { ms_http_forget_ws(ws->req_cls); ws->req_cls = NULL; }
    if (ws->fd >= 0) close(ws->fd);
    ws->fd = -1;
    ws_out_free(ws);
    free(ws->msg);
    ws->msg = NULL;
    free(ws->extra);
    ws->extra = NULL;
    free(ws->reason);
    ws->reason = NULL;
    ws_free_inbox(ws);
    if (L == NULL) return;  /* from __gc at lua_close: no callbacks */
    if (deliver && ws->on_close_ref != LUA_NOREF && lua_checkstack(L, 5)) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ws->on_close_ref);
        lua_pushinteger(L, code);
        lua_pushstring(L, reason_copy);
        lua_rawgeti(L, LUA_REGISTRYINDEX, ws->self_ref);
        ms_pcall(L, 3, 0);
    }
    ws_unref(L, &ws->on_open_ref);
    ws_unref(L, &ws->on_message_ref);
    ws_unref(L, &ws->on_close_ref);
    ws_unref(L, &ws->self_ref);  /* last: the userdata may be collected from here on */
}

/* Finishes the connection if it is over: lost, or both close frames done
 * (ours written and the peer's received, or ours written after a failure). */
static int ws_check_done(ms_ws *ws) {
    if (ws->state == WS_CLOSED) return 1;
    if (ws->dead || (ws->close_sent && ws->read_off && ws_buffered_bytes(ws) == 0)) {
        ws_finish(ws, 1);
        return 1;
    }
    return 0;
}

/* ws_io's work; the caller keeps the userdata on the Lua stack, so Lua
 * callbacks that finish the connection (or close the whole server) cannot
 * get it collected under our feet. */
static void ws_io_anchored(ms_ws *ws, lua_State *L, uint32_t events) {
    if (!ws->opened && !ws->dead && ws->state == WS_CONNECTING) {
        ws->opened = 1;
        ws->state = WS_OPEN;
        if (ws->on_open_ref != LUA_NOREF && lua_checkstack(L, 3)) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, ws->on_open_ref);
            lua_rawgeti(L, LUA_REGISTRYINDEX, ws->self_ref);
            ms_pcall(L, 1, 0);
            if (ws->state == WS_CLOSED) return;
        }
    }
    if (!ws->dead && !ws->read_off && ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || ws->extra)) {
        ws_read(ws);
        ws_deliver_inbox(ws, L);
        if (ws->state == WS_CLOSED) return;
    }
    if (!ws->dead) ws_out_flush(ws);
    if ((events & (EPOLLHUP | EPOLLERR)) && !(events & EPOLLIN)) ws->dead = 1;
    if (ws_check_done(ws)) return;
    ws_update_watch(ws);
}

/* The loop's I/O callback for an upgraded socket. A connection closed by
 * Lua before its socket arrived never opens (on_close still follows). */
static void ws_io(void *ud, int fd, uint32_t events) {
    ms_ws *ws = ud;
    lua_State *L = ws->hub->L;
    if (!lua_checkstack(L, 2)) return;  /* level-triggered: comes back */
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ws->self_ref);
    ws_io_anchored(ws, L, events);
    lua_settop(L, top);
}

static void ws_hub_free(ms_ws_hub *hub) {
    if (hub->efd >= 0) close(hub->efd);
    for (int i = 0; i < hub->nbeats; i++) { free(hub->beats[i].ping); free(hub->beats[i].pong); }
    free(hub);
}

/* The idle sweep, once every sweep_every ms: an open connection that has
 * received no data message for more than its idle_timeout gets a close
 * frame without a code and is finished at once (a silent peer is not waited
 * for), through the deadline list so that on_close runs from ws_prepare's
 * loop below. One pass in C over every connection: idle clients cost no Lua
 * work (bench/RESULTS.md "WebSocket scale"). No Lua in here. */
static void ws_sweep(ms_ws_hub *hub, double now) {
    if (hub->sweep_at == 0 || now < hub->sweep_at) return;
    for (ms_ws *ws = hub->head; ws; ws = ws->next) {
        if (ws->idle_timeout <= 0 || ws->state != WS_OPEN || ws->dead || ws->close_sent) continue;
        if (now - ws->last_received <= ws->idle_timeout) continue;
        /* this runs before the turn's reads: bytes the kernel holds for us
         * count as received (a busy loop must not drop clients that spoke) */
        int pending = 0;
        if (ws->extra || (ws->fd >= 0 && ioctl(ws->fd, FIONREAD, &pending) == 0 && pending > 0)) continue;
        ws->read_off = 1;
        if (ws_queue_close(ws, 0, NULL, 0) == 0) ws_out_flush(ws);
        ws->forced_code = CODE_NONE;
        ws->forced_reason = "idle timeout";
        ws->dead = 1;
        ws_closing_add(ws, 0);
    }
    hub->sweep_at = hub->count > 0 ? now + hub->sweep_every : 0;
}

/* Runs before the loop sleeps: the idle sweep, then finishes connections
 * whose close handshake timed out, and connections abandoned before their
 * socket arrived. Returns the ms until the next deadline. */
static long ws_prepare(void *ud) {
    ms_ws_hub *hub = ud;
    double now = ms_loop_now(), next = -1;
    hub->in_prepare = 1;
    ws_flush_dirty(hub);
    ws_sweep(hub, now);
    for (;;) {
        ms_ws *due = NULL;
        for (ms_ws *ws = hub->closing; ws; ws = ws->cnext) {
            if (ws->deadline <= now) { due = ws; break; }
            if (next < 0 || ws->deadline < next) next = ws->deadline;
        }
        if (due == NULL || hub->free_pending) break;
        ws_closing_remove(due);
        ws_finish(due, 1);
        next = -1;  /* the list changed: scan again */
    }
    hub->in_prepare = 0;
    if (hub->free_pending) { ws_hub_free(hub); return 0; }
    if (hub->sweep_at > 0 && (next < 0 || hub->sweep_at < next)) next = hub->sweep_at;
    if (hub->trim_at > 0) {
        if (now >= hub->trim_at) {
            hub->trim_at = 0;
            malloc_trim(0);
        } else if (next < 0 || hub->trim_at < next) {
            next = hub->trim_at;
        }
    }
    /* a connection handed back to MHD here, after http.c's prepare ran,
     * needs another turn at once for MHD to free it */
    if (hub->finished) { hub->finished = 0; return 0; }
    if (next < 0) return -1;
    return (long)(next - now) + 1;
}

/* ---- MHD side ---- */

/* Called by MHD, inside MHD_run, once the 101 is sent: no Lua here. We keep
 * a duplicate of the socket and hand MHD's connection back at once, so MHD
 * frees the connection and its memory pool in its next run (MHD_USE_TURBO:
 * MHD then closes its descriptor without shutdown(2), which would end ours
 * too). The socket is watched for writing so the loop calls ws_io at once,
 * which delivers on_open and feeds the bytes that came with the handshake. */
static void ws_upgraded(void *cls, struct MHD_Connection *connection, void *req_cls,
                        const char *extra_in, size_t extra_in_size, MHD_socket sock,
                        struct MHD_UpgradeResponseHandle *urh) {
    ms_ws *ws = ms_http_upgraded(req_cls);
    int fd = -1;
    if (ws != NULL && ws->state != WS_CLOSED && ws->hub != NULL) fd = fcntl(sock, F_DUPFD_CLOEXEC, 0);
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
    ms_http_wake(req_cls);
    if (ws == NULL || ws->state == WS_CLOSED || ws->hub == NULL) return;
    ws->hub->finished = 1;
    if (ws->hub->trim_at == 0) ws->hub->trim_at = ms_loop_now() + WS_TRIM_DELAY;
    ws->req_cls = NULL;
    if (fd < 0) {
        ws->dead = 1;
        ws->forced_code = CODE_INTERNAL;
        ws_closing_add(ws, 0);
        return;
    }
    ws->fd = fd;
    /* Frames are small messages: without this, a frame written while the
     * previous one is unacknowledged waits for the peer's delayed ACK
     * (Nagle), up to 40 ms here (the RPC round trips in bench/RESULTS.md). */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (extra_in_size > 0) {
        ws->extra = malloc(extra_in_size);
        if (ws->extra == NULL) { ws->dead = 1; ws->forced_code = CODE_INTERNAL; }
        else { memcpy(ws->extra, extra_in, extra_in_size); ws->extra_len = extra_in_size; }
    }
    if (ms_loop_watch(ws->hub->loop, fd, EPOLLIN | EPOLLOUT, ws_io, ws) == 0) {
        ws->watched = EPOLLIN | EPOLLOUT;
    } else {
        ws->dead = 1;
        ws->forced_code = CODE_INTERNAL;
        ws_closing_add(ws, 0);
    }
}

/* Called by http.c when the request of a WebSocket that never got its socket
 * is freed (inside MHD: no Lua). The hub's prepare finishes it. */
void ms_ws_abandon(void *wsp) {
    ms_ws *ws = wsp;
    ws->req_cls = NULL;
    if (ws->state == WS_CLOSED) return;
    ws->dead = 1;
    ws_closing_add(ws, 0);
}

static ms_ws_hub *ws_hub_get(lua_State *L, ms_loop *loop, ms_ws_hub **hubp) {
    if (*hubp) return *hubp;
    ms_ws_hub *hub = calloc(1, sizeof *hub);
    if (hub == NULL) luaL_error(L, "out of memory");
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    hub->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    hub->loop = loop;
    hub->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (hub->efd < 0 || ms_loop_watch(loop, hub->efd, EPOLLIN, ws_dirty_io, hub) != 0 ||
        ms_loop_add_prepare(loop, ws_prepare, hub) != 0) {
        if (hub->efd >= 0) { ms_loop_unwatch(loop, hub->efd); close(hub->efd); }
        free(hub);
        luaL_error(L, "cannot add WebSockets to the event loop");
    }
    *hubp = hub;
    return hub;
}

static lua_Integer opt_field(lua_State *L, int t, const char *k, lua_Integer dflt, lua_Integer min) {
    if (t == 0) return dflt;
    lua_getfield(L, t, k);
    lua_Integer v = lua_isnil(L, -1) ? dflt : luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (v < min) luaL_error(L, "opts.%s must be at least %d", k, (int)min);
    return v;
}

/* Checks the handshake headers of conn; NULL when good, else the reason. */
static const char *ws_check_handshake(struct MHD_Connection *conn, char accept[29]) {
    const char *upgrade = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_UPGRADE);
    const char *connection = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONNECTION);
    const char *version = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Version");
    const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Key");
    if (!ws_header_has_token(upgrade, "websocket")) return "missing \"Upgrade: websocket\"";
    if (!ws_header_has_token(connection, "upgrade")) return "missing \"Connection: Upgrade\"";
    if (version == NULL || strcmp(version, "13") != 0) return "unsupported Sec-WebSocket-Version (13 expected)";
    if (!ws_key_valid(key)) return "invalid Sec-WebSocket-Key";
    if (!ws_accept_value(key, accept)) return "cannot compute Sec-WebSocket-Accept";
    return NULL;
}

struct MHD_Response *ms_ws_upgrade(lua_State *L, ms_loop *loop, ms_ws_hub **hubp,
                                   struct MHD_Connection *conn, void *req_cls, int opts_idx,
                                   const char **err) {
    lua_Integer max_conns = opt_field(L, opts_idx, "max_connections", 0, 0);
    lua_Integer max_msg = opt_field(L, opts_idx, "max_message_size", 1048576, 1);
    lua_Integer max_buf = opt_field(L, opts_idx, "max_buffered", 4194304, 1);
    lua_Integer close_timeout = opt_field(L, opts_idx, "close_timeout", 2000, 0);
    lua_Integer idle_timeout = opt_field(L, opts_idx, "idle_timeout", 0, 0);
    char accept[29];
    if ((*err = ws_check_handshake(conn, accept)) != NULL) return NULL;
    if (max_conns > 0 && *hubp && (*hubp)->count >= (size_t)max_conns) {
        *err = "too many WebSocket connections";
        return NULL;
    }

    ms_ws_hub *hub = ws_hub_get(L, loop, hubp);
    ms_ws *ws = lua_newuserdatauv(L, sizeof *ws, 0);
    memset(ws, 0, sizeof *ws);
    ws->state = WS_CLOSED;  /* until fully set up: __gc has nothing to do */
    ws->fd = -1;
    ws->self_ref = ws->on_open_ref = ws->on_message_ref = ws->on_close_ref = LUA_NOREF;
    luaL_setmetatable(L, WS_MT);
    struct MHD_Response *r = MHD_create_response_for_upgrade(ws_upgraded, hub);
    if (r == NULL || MHD_add_response_header(r, MHD_HTTP_HEADER_UPGRADE, "websocket") != MHD_YES ||
        MHD_add_response_header(r, "Sec-WebSocket-Accept", accept) != MHD_YES) {
        if (r) MHD_destroy_response(r);
        luaL_error(L, "out of memory");
    }
    ws->max_message = (size_t)max_msg;
    ws->max_buffered = (size_t)max_buf;
    ws->close_timeout = (double)close_timeout;
    ws->idle_timeout = (double)idle_timeout;
    ws->last_received = ms_loop_now();
    ws->id = ++ws_next_id;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ws->addr, sizeof ws->addr);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ws->addr, sizeof ws->addr);
    }
    /* From here nothing raises. */
    ws->state = WS_CONNECTING;
    ws->req_cls = req_cls;
    ws->hub = hub;
    ws->next = hub->head;
    if (hub->head) hub->head->prev = ws;
    hub->head = ws;
    hub->count++;
    if (idle_timeout > 0) {
        double every = (double)idle_timeout / 2;
        if (hub->sweep_every == 0 || every < hub->sweep_every) hub->sweep_every = every;
        if (hub->sweep_at == 0) hub->sweep_at = ms_loop_now() + hub->sweep_every;
    }
    lua_pushvalue(L, -1);
    ws->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return r;
}

void ms_ws_hub_close(lua_State *L, ms_ws_hub *hub) {
    if (hub == NULL) return;
    static const char why[] = "server shutting down";
    while (hub->head) {
        ms_ws *ws = hub->head;
        if (ws->fd >= 0 && !ws->dead && ws->state == WS_OPEN && !ws->close_sent) {
            (void)ws_queue_close(ws, CODE_GOING_AWAY, why, sizeof why - 1);  /* best effort */
            ws_out_flush(ws);
        }
        if (!ws->forced_code) { ws->forced_code = CODE_GOING_AWAY; ws->forced_reason = why; }
        /* report our 1001, not a half-finished handshake */
        if (!ws->close_received) ws->dead = 1;
        ws_finish(ws, 1);
    }
    ms_loop_remove_prepare(hub->loop, ws_prepare, hub);
    if (hub->efd >= 0) ms_loop_unwatch(hub->loop, hub->efd);
    while (hub->closing) ws_closing_remove(hub->closing);
    if (hub->in_prepare) hub->free_pending = 1; else ws_hub_free(hub);
}

/* ---- Lua API: WebSocket ---- */

static ms_ws *check_ws(lua_State *L, int idx) {
    return luaL_checkudata(L, idx, WS_MT);
}

static int ws_send(lua_State *L, int binary) {
    ms_ws *ws = check_ws(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if ((ws->state != WS_CONNECTING && ws->state != WS_OPEN) || ws->dead || ws->close_sent) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (ws_queue_frame(ws, binary ? OP_BINARY : OP_TEXT, s, len) != 0) return luaL_error(L, "out of memory");
    if (ws->dead) ws_drop(ws, CODE_LOST, "write failed");
    else ws_update_watch(ws);
    if (!ws->dead && ws_buffered_bytes(ws) > ws->max_buffered)
        ws_drop(ws, CODE_POLICY, "send buffer full");
    if (ws->dead) {
        lua_pushnil(L);
        if (ws->forced_code == CODE_POLICY) lua_pushliteral(L, "send buffer full");
        else lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Queues one frame on ws for core.ws_fanout, without raising. Returns NULL,
 * or why the connection cannot take it ("closed", "send buffer full"). */
static const char *ws_send_frame(ms_ws *ws, int binary, const char *s, size_t len) {
    if ((ws->state != WS_CONNECTING && ws->state != WS_OPEN) || ws->dead || ws->close_sent) return "closed";
    int op = binary ? OP_BINARY : OP_TEXT;
    if ((len <= WS_CORK_MAX ? ws_cork_frame(ws, op, s, len) : ws_queue_frame(ws, op, s, len)) != 0) {
        ws_drop(ws, CODE_INTERNAL, "out of memory");
        return "closed";
    }
    if (ws->dead) ws_drop(ws, CODE_LOST, "write failed");
    else if (!ws->in_dirty_list && ws_buffered_bytes(ws) > 0) ws_update_watch(ws);
    /* the limit is on what the socket does not take: corked bytes are offered to it first */
    if (!ws->dead && ws_buffered_bytes(ws) > ws->max_buffered && ws->in_dirty_list) ws_flush(ws);
    if (!ws->dead && ws_buffered_bytes(ws) > ws->max_buffered) ws_drop(ws, CODE_POLICY, "send buffer full");
    if (ws->dead) return ws->forced_code == CODE_POLICY ? "send buffer full" : "closed";
    return NULL;
}

/* core.ws_fanout(conns, except, encode) -> sent, failed
 * One message to every connection of the set conns (keys: the realtime
 * layer's connection tables, with fields open, binary and ws) but except:
 * the frame is encoded once per transport, by encode(binary) -> frame |
 * false (called at most once for each, only when a subscriber needs it),
 * and written to each socket here, with no Lua call per subscriber.
 * failed: nil, or a table conn -> reason ("closed", "send buffer full", or
 * "not a WebSocket" for a connection this cannot write to) for the caller
 * to handle as its own send would. Raises only what encode raises, or on
 * memory exhaustion. */
static int ws_fanout(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lua_settop(L, 3);
    lua_pushnil(L);  /* 4: the text frame (nil: not encoded yet, false: cannot) */
    lua_pushnil(L);  /* 5: the binary frame */
    lua_pushnil(L);  /* 6: failed */
    lua_Integer sent = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {  /* key 7, value 8 */
        lua_pop(L, 1);
        if (lua_rawequal(L, 7, 2) || lua_type(L, 7) != LUA_TTABLE) continue;
        lua_getfield(L, 7, "open");
        int open = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (!open) continue;
        lua_getfield(L, 7, "binary");
        int binary = lua_toboolean(L, -1);
        lua_getfield(L, 7, "ws");
        ms_ws *ws = luaL_testudata(L, -1, WS_MT);
        lua_pop(L, 2);
        int fi = binary ? 5 : 4;
        if (lua_isnil(L, fi)) {
            lua_pushvalue(L, 3);
            lua_pushboolean(L, binary);
            lua_call(L, 1, 1);
            if (!lua_isstring(L, -1)) { lua_pop(L, 1); lua_pushboolean(L, 0); }
            lua_replace(L, fi);
        }
        if (!lua_isstring(L, fi)) continue;
        size_t len;
        const char *frame = lua_tolstring(L, fi, &len);
        const char *err = ws ? ws_send_frame(ws, binary, frame, len) : "not a WebSocket";
        if (err == NULL) { sent++; continue; }
        if (lua_isnil(L, 6)) { lua_newtable(L); lua_replace(L, 6); }
        lua_pushvalue(L, 7);
        lua_pushstring(L, err);
        lua_rawset(L, 6);
    }
    lua_pushinteger(L, sent);
    lua_pushvalue(L, 6);
    return 2;
}

static int ws_send_text(lua_State *L) { return ws_send(L, 0); }
static int ws_send_binary(lua_State *L) { return ws_send(L, 1); }

static int ws_close_lua(lua_State *L) {
    ms_ws *ws = check_ws(L, 1);
    lua_Integer code = luaL_optinteger(L, 2, 1000);
    size_t rlen = 0;
    const char *reason = luaL_optlstring(L, 3, "", &rlen);
    luaL_argcheck(L, code == 0 || (code >= 1000 && code <= 4999 && code != 1005 && code != 1006), 2,
                  "invalid close code");
    luaL_argcheck(L, rlen <= WS_REASON_MAX, 3, "close reason longer than 123 bytes");
    if ((ws->state != WS_CONNECTING && ws->state != WS_OPEN) || ws->dead || ws->close_sent) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (ws_queue_close(ws, (unsigned)code, reason, rlen) != 0) {
        ws_drop(ws, (int)(code ? code : CODE_NONE), NULL);
    } else if (ws->state == WS_OPEN) {
        ws->state = WS_CLOSING;
        ws_flush(ws);
    }
    /* the peer has close_timeout ms to answer (also bounds a connecting socket) */
    ws_closing_add(ws, ms_loop_now() + ws->close_timeout);
    if (ws->state == WS_CONNECTING) ws->state = WS_CLOSING;
    lua_pushboolean(L, 1);
    return 1;
}

static int ws_set_callback(lua_State *L, int *ref) {
    ms_ws *ws = check_ws(L, 1);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
    ws_unref(L, ref);
    if (ws->state != WS_CLOSED && !lua_isnoneornil(L, 2)) {
        lua_pushvalue(L, 2);
        *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_settop(L, 1);
    return 1;
}

static int ws_on_open(lua_State *L) { return ws_set_callback(L, &check_ws(L, 1)->on_open_ref); }
static int ws_on_message(lua_State *L) { return ws_set_callback(L, &check_ws(L, 1)->on_message_ref); }
static int ws_on_close(lua_State *L) { return ws_set_callback(L, &check_ws(L, 1)->on_close_ref); }

/* The hub's entry for this heartbeat, added on first use; -1 when full. */
static int ws_beat_index(lua_State *L, ms_ws_hub *hub, const char *ping, size_t plen,
                         const char *pong, size_t qlen, int binary) {
    for (int i = 0; i < hub->nbeats; i++) {
        const ws_beat *b = &hub->beats[i];
        if (b->binary == binary && b->ping_len == plen && b->pong_len == qlen &&
            memcmp(b->ping, ping, plen) == 0 && memcmp(b->pong, pong, qlen) == 0) return i;
    }
    if (hub->nbeats == WS_BEATS) return -1;
    ws_beat *b = &hub->beats[hub->nbeats];
    b->ping = malloc(plen);
    b->pong = malloc(qlen);
    if (b->ping == NULL || b->pong == NULL) {
        free(b->ping);
        free(b->pong);
        b->ping = b->pong = NULL;
        luaL_error(L, "out of memory");
    }
    memcpy(b->ping, ping, plen);
    memcpy(b->pong, pong, qlen);
    b->ping_len = plen;
    b->pong_len = qlen;
    b->binary = binary;
    return hub->nbeats++;
}

/* ws:answer_pings(ping, pong, binary) / ws:answer_pings(nil) */
static int ws_answer_pings(lua_State *L) {
    ms_ws *ws = check_ws(L, 1);
    if (lua_isnoneornil(L, 2)) { ws->beat = 0; lua_settop(L, 1); return 1; }
    size_t plen, qlen;
    const char *ping = luaL_checklstring(L, 2, &plen);
    const char *pong = luaL_checklstring(L, 3, &qlen);
    int binary = lua_toboolean(L, 4);
    luaL_argcheck(L, plen > 0 && qlen > 0, 2, "empty heartbeat");
    if (ws->hub == NULL || ws->state == WS_CLOSED) { lua_settop(L, 1); return 1; }
    int i = ws_beat_index(L, ws->hub, ping, plen, pong, qlen, binary);
    if (i < 0) return luaL_error(L, "too many different heartbeats (at most %d)", WS_BEATS);
    ws->beat = (uint8_t)(i + 1);
    lua_settop(L, 1);
    return 1;
}

static int ws_last_received(lua_State *L) {
    lua_pushnumber(L, check_ws(L, 1)->last_received);
    return 1;
}

static int ws_id(lua_State *L) {
    lua_pushinteger(L, check_ws(L, 1)->id);
    return 1;
}

static int ws_remote_address(lua_State *L) {
    lua_pushstring(L, check_ws(L, 1)->addr);
    return 1;
}

static int ws_buffered(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)ws_buffered_bytes(check_ws(L, 1)));
    return 1;
}

static int ws_state_lua(lua_State *L) {
    static const char *const names[] = { "connecting", "open", "closing", "closed" };
    ms_ws *ws = check_ws(L, 1);
    lua_pushstring(L, (ws->dead && ws->state != WS_CLOSED) ? "closing" : names[ws->state]);
    return 1;
}

static int ws_tostring(lua_State *L) {
    ms_ws *ws = check_ws(L, 1);
    lua_pushfstring(L, "moonstream.WebSocket %d (%s)", (int)ws->id, ws->addr);
    return 1;
}

/* Only reached with the connection still live at lua_close (the registry
 * reference keeps it alive otherwise): free C state, no callbacks. */
static int ws_gc(lua_State *L) {
    ms_ws *ws = check_ws(L, 1);
    if (ws->state == WS_CLOSED) return 0;
    ws->on_open_ref = ws->on_message_ref = ws->on_close_ref = ws->self_ref = LUA_NOREF;
    ms_ws_hub *hub = ws->hub;
    if (hub) hub->L = NULL;  /* lua_close: no more callbacks from anywhere */
    ws_finish(ws, 0);
    return 0;
}

/* __close: a to-be-closed WebSocket starts a normal close handshake (1000)
 * when its scope ends; the error object, if any, is no close code. */
static int ws_close_tbc(lua_State *L) {
    lua_settop(L, 1);
    return ws_close_lua(L);
}

static const luaL_Reg ws_meth[] = {
    {"send_text", ws_send_text},
    {"send_binary", ws_send_binary},
    {"close", ws_close_lua},
    {"on_open", ws_on_open},
    {"on_message", ws_on_message},
    {"on_close", ws_on_close},
    {"answer_pings", ws_answer_pings},
    {"last_received", ws_last_received},
    {"id", ws_id},
    {"remote_address", ws_remote_address},
    {"buffered", ws_buffered},
    {"state", ws_state_lua},
    {NULL, NULL}
};

static const luaL_Reg ws_metameth[] = {
    {"__index", NULL},
    {"__gc", ws_gc},
    {"__close", ws_close_tbc},
    {"__tostring", ws_tostring},
    {NULL, NULL}
};

void ms_ws_open(lua_State *L) {
    ms_createmeta(L, WS_MT, ws_meth, ws_metameth);
    lua_pushcfunction(L, ws_fanout);
    lua_setfield(L, -2, "ws_fanout");
}
