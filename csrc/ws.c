/* WebSocket connections: libmicrohttpd's HTTP upgrade for the handshake,
 * wslay for framing, the socket in moonstream's own loop.
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
 *       max_message_size  bytes (default 1048576): an incoming message larger
 *                         than this (fragments counted together) closes the
 *                         connection with 1009
 *       max_buffered      bytes (default 4194304): outgoing bytes queued for a
 *                         client that does not read; when a send leaves more
 *                         than this queued, the connection is dropped at once
 *                         (on_close gets 1008, "send buffer full")
 *       close_timeout     ms (default 2000): how long a close handshake we
 *                         started may wait for the peer's close frame
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
 *     never inside a wslay or libmicrohttpd frame and never from inside a
 *     ws method (send_text, send_binary and close never call back).
 * ws:send_text(s), ws:send_binary(s) -> true | nil, err
 *     Queues one message and writes what the socket takes now. err: "closed"
 *     (closing or closed), "send buffer full" (the client was dropped).
 * ws:close([code [, reason]]) -> true | false
 *     Starts the close handshake (code default 1000, none if 0; reason at most
 *     123 bytes). on_close follows once the peer answers or close_timeout
 *     passes. false if already closing or closed.
 * ws:id() -> integer, unique in the process
 * ws:remote_address() -> "127.0.0.1"
 * ws:buffered() -> bytes queued for sending, not yet taken by the socket
 * ws:state() -> "connecting" | "open" | "closing" | "closed"
 *
 * WebSocket-level pings from the peer are answered by wslay; the server sends
 * none (deepstream's heartbeat is an application message).
 *
 * Lifetime: the userdata is referenced from the registry from upgrade() until
 * on_close has run, so Lua need not keep it. srv:close() closes every
 * WebSocket first (1001, on_close delivered) and hands the sockets back to
 * MHD, as MHD_stop_daemon requires. MHD keeps an upgraded connection on its
 * books until then, so the server's connection_limit counts WebSockets too.
 *
 * Reading is bounded per loop turn (WS_READ_BUDGET bytes per connection), so
 * a client that floods cannot starve the others; what it sends stays in the
 * kernel until the next turn. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <microhttpd.h>
#include <wslay/wslay.h>
#include <openssl/evp.h>

#include "core.h"
#include "loop.h"
#include "ws.h"

#define WS_MT "moonstream.WebSocket"
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_READ_BUDGET (256 * 1024)
#define WS_REASON_MAX 123

typedef struct ms_ws ms_ws;

/* A complete incoming message, held until wslay_event_recv has returned. */
typedef struct ws_msg {
    struct ws_msg *next;
    size_t len;
    int binary;
    char data[];
} ws_msg;

enum ws_state { WS_CONNECTING, WS_OPEN, WS_CLOSING, WS_CLOSED };

struct ms_ws {
    ms_ws_hub *hub;              /* NULL once closed */
    ms_ws *prev, *next;          /* the hub's list of live connections */
    ms_ws *cprev, *cnext;        /* the hub's list of connections with a deadline */
    int in_closing_list;
    enum ws_state state;
    int opened;                  /* on_open was delivered */
    int dead;                    /* finish at the next chance (I/O failure, drop) */
    int fd;                      /* -1 until MHD hands over the socket */
    uint32_t watched;            /* events registered with the loop, 0: none */
    struct MHD_UpgradeResponseHandle *urh;
    void *req_cls;               /* the HTTP request while connecting */
    void *http_req;              /* the HTTP request once upgraded (MHD frees it after we hand back) */
    wslay_event_context_ptr ctx;
    char *extra;                 /* bytes MHD read past the handshake */
    size_t extra_len, extra_off;
    ws_msg *inbox, *inbox_tail;
    size_t read_budget;
    size_t max_buffered;
    double deadline;             /* ms (ms_loop_now) while in the closing list */
    double close_timeout;
    int forced_code;             /* close code decided by us without a frame, 0: none */
    const char *forced_reason;
    char reason[WS_REASON_MAX + 1];  /* peer's close reason */
    int self_ref, on_open_ref, on_message_ref, on_close_ref;
    lua_Integer id;
    char addr[INET6_ADDRSTRLEN];
};

struct ms_ws_hub {
    lua_State *L;                /* main thread */
    ms_loop *loop;
    ms_ws *head;                 /* live connections */
    ms_ws *closing;              /* connections with a deadline */
    int in_prepare, free_pending;
    int finished;                /* a socket was handed back since the last prepare */
};

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

/* ---- wslay callbacks (no Lua in here) ---- */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud) {
    ms_ws *ws = ud;
    if (ws->extra_off < ws->extra_len) {
        size_t n = ws->extra_len - ws->extra_off;
        if (n > len) n = len;
        memcpy(buf, ws->extra + ws->extra_off, n);
        ws->extra_off += n;
        return (ssize_t)n;
    }
    if (ws->fd < 0 || ws->read_budget == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (len > ws->read_budget) len = ws->read_budget;
    ssize_t n;
    do n = recv(ws->fd, buf, len, 0); while (n < 0 && errno == EINTR);
    if (n > 0) { ws->read_budget -= (size_t)n; return n; }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    } else {
        ws->dead = 1;  /* EOF or a socket error: the connection is lost */
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    }
    return -1;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud) {
    ms_ws *ws = ud;
    if (ws->fd < 0) { wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK); return -1; }
    ssize_t n;
    int f = MSG_NOSIGNAL | ((flags & WSLAY_MSG_MORE) ? MSG_MORE : 0);
    do n = send(ws->fd, data, len, f); while (n < 0 && errno == EINTR);
    if (n >= 0) return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    } else {
        ws->dead = 1;
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    }
    return -1;
}

/* Keeps complete messages for delivery after wslay_event_recv returns. */
static void ws_on_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *ud) {
    ms_ws *ws = ud;
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        size_t n = arg->msg_length > 2 ? arg->msg_length - 2 : 0;
        if (n > WS_REASON_MAX) n = WS_REASON_MAX;
        if (n) memcpy(ws->reason, arg->msg + 2, n);
        ws->reason[n] = '\0';
        return;
    }
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME) return;
    if (ws->dead || ws->state == WS_CLOSING) return;
    if (arg->opcode == WSLAY_TEXT_FRAME && !ws_utf8_valid(arg->msg, arg->msg_length)) {
        static const char why[] = "text message is not UTF-8";
        wslay_event_queue_close(ctx, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, (const uint8_t *)why, sizeof why - 1);
        wslay_event_shutdown_read(ctx);
        return;
    }
    ws_msg *m = malloc(sizeof *m + arg->msg_length + 1);
    if (m == NULL) { ws->dead = 1; ws->forced_code = 1011; wslay_event_shutdown_read(ctx); return; }
    m->next = NULL;
    m->len = arg->msg_length;
    m->binary = arg->opcode == WSLAY_BINARY_FRAME;
    if (arg->msg_length) memcpy(m->data, arg->msg, arg->msg_length);
    m->data[m->len] = '\0';
    if (ws->inbox_tail) ws->inbox_tail->next = m; else ws->inbox = m;
    ws->inbox_tail = m;
}

static const struct wslay_event_callbacks ws_callbacks = {
    ws_recv_cb, ws_send_cb, NULL, NULL, NULL, NULL, ws_on_msg_cb
};

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
    if (ws->dead || wslay_event_want_read(ws->ctx)) ev |= EPOLLIN;
    if (!ws->dead && wslay_event_want_write(ws->ctx)) ev |= EPOLLOUT;
    if (ev == 0) ev = EPOLLIN;  /* finished: ws_check_done closes it */
    if (ev == ws->watched) return;
    if (ms_loop_watch(ws->hub->loop, ws->fd, ev, ws_io, ws) == 0) ws->watched = ev;
    else { ws->dead = 1; ws->forced_code = 1011; }
}

/* Writes what the socket takes now. */
static void ws_flush(ms_ws *ws) {
    if (ws->fd < 0 || ws->dead || ws->state == WS_CLOSED) return;
    if (wslay_event_send(ws->ctx) != 0 && !ws->dead) ws_drop(ws, 1006, "write failed");
    ws_update_watch(ws);
}

/* Delivers messages collected by ws_on_msg_cb, in order, until the
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
    if (ws->ctx && wslay_event_get_close_received(ws->ctx)) {
        *reason = ws->reason;
        return wslay_event_get_status_code_received(ws->ctx);
    }
    if (ws->forced_code) { *reason = ws->forced_reason ? ws->forced_reason : ""; return ws->forced_code; }
    if (ws->ctx && wslay_event_get_close_sent(ws->ctx)) return wslay_event_get_status_code_sent(ws->ctx);
    return 1006;
}

/* Finishes the connection: frees wslay's state, hands the socket back to
 * MHD (which closes it), delivers on_close when deliver is set (not from
 * __gc), then drops the registry references. Safe twice. */
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
        if (ws->prev) ws->prev->next = ws->next; else hub->head = ws->next;
        if (ws->next) ws->next->prev = ws->prev;
        ws->prev = ws->next = NULL;
        if (ws->fd >= 0 && ws->watched) ms_loop_unwatch(hub->loop, ws->fd);
    }
    ws->watched = 0;
    ws->hub = NULL;
    if (ws->req_cls) { ms_http_forget_ws(ws->req_cls); ws->req_cls = NULL; }
    if (ws->urh) {
        /* MHD closes the socket in its next MHD_run: ask http.c for one */
        MHD_upgrade_action(ws->urh, MHD_UPGRADE_ACTION_CLOSE);
        ws->urh = NULL;
        ms_http_wake(ws->http_req);
        if (hub) hub->finished = 1;
    }
    ws->fd = -1;
    if (ws->ctx) { wslay_event_context_free(ws->ctx); ws->ctx = NULL; }
    free(ws->extra);
    ws->extra = NULL;
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

/* Finishes the connection if it is over: lost, or the close handshake done. */
static int ws_check_done(ms_ws *ws) {
    if (ws->state == WS_CLOSED) return 1;
    if (ws->dead || (!wslay_event_want_read(ws->ctx) && !wslay_event_want_write(ws->ctx))) {
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
    if (!ws->dead && ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || ws->extra_off < ws->extra_len)) {
        ws->read_budget = WS_READ_BUDGET;
        if (wslay_event_recv(ws->ctx) != 0 && !ws->dead) {
            /* a framing error wslay returns instead of queuing a close
             * itself (e.g. a control frame over 125 bytes): say 1002 */
            if (!wslay_event_get_close_sent(ws->ctx))
                wslay_event_queue_close(ws->ctx, WSLAY_CODE_PROTOCOL_ERROR, NULL, 0);
            wslay_event_send(ws->ctx);
            ws_drop(ws, WSLAY_CODE_PROTOCOL_ERROR, "");
        }
        if (ws->extra && ws->extra_off == ws->extra_len) { free(ws->extra); ws->extra = NULL; ws->extra_len = ws->extra_off = 0; }
        ws_deliver_inbox(ws, L);
        if (ws->state == WS_CLOSED) return;
    }
    if (!ws->dead) {
        if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) != 0 && !ws->dead)
            ws_drop(ws, 1006, "write failed");
    }
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

/* Runs before the loop sleeps: finishes connections whose close handshake
 * timed out, and connections abandoned before their socket arrived. Returns
 * the ms until the next deadline. */
static long ws_prepare(void *ud) {
    ms_ws_hub *hub = ud;
    double now = ms_loop_now(), next = -1;
    hub->in_prepare = 1;
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
    if (hub->free_pending) { free(hub); return 0; }
    /* a socket handed back here, after http.c's prepare ran, needs another
     * turn at once for MHD to close it */
    if (hub->finished) { hub->finished = 0; return 0; }
    if (next < 0) return -1;
    return (long)(next - now) + 1;
}

/* ---- MHD side ---- */

/* Called by MHD, inside MHD_run, once the 101 is sent: no Lua here. The
 * socket is watched for writing so the loop calls ws_io at once, which
 * delivers on_open and feeds the bytes that came with the handshake. */
static void ws_upgraded(void *cls, struct MHD_Connection *connection, void *req_cls,
                        const char *extra_in, size_t extra_in_size, MHD_socket sock,
                        struct MHD_UpgradeResponseHandle *urh) {
    ms_ws *ws = ms_http_upgraded(req_cls);
    if (ws == NULL || ws->state == WS_CLOSED || ws->hub == NULL) {
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
        return;
    }
    ws->req_cls = NULL;
    ws->http_req = req_cls;
    ws->urh = urh;
    ws->fd = sock;
    /* Frames are small messages: without this, a frame written while the
     * previous one is unacknowledged waits for the peer's delayed ACK
     * (Nagle), up to 40 ms here (the RPC round trips in bench/RESULTS.md). */
    int one = 1;
    (void)setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (extra_in_size > 0) {
        ws->extra = malloc(extra_in_size);
        if (ws->extra == NULL) { ws->dead = 1; ws->forced_code = 1011; }
        else { memcpy(ws->extra, extra_in, extra_in_size); ws->extra_len = extra_in_size; }
    }
    if (ms_loop_watch(ws->hub->loop, sock, EPOLLIN | EPOLLOUT, ws_io, ws) == 0) {
        ws->watched = EPOLLIN | EPOLLOUT;
    } else {
        ws->dead = 1;
        ws->forced_code = 1011;
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
    if (ms_loop_add_prepare(loop, ws_prepare, hub) != 0) {
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

struct MHD_Response *ms_ws_upgrade(lua_State *L, ms_loop *loop, ms_ws_hub **hubp,
                                   struct MHD_Connection *conn, void *req_cls, int opts_idx,
                                   const char **err) {
    lua_Integer max_msg = opt_field(L, opts_idx, "max_message_size", 1048576, 1);
    lua_Integer max_buf = opt_field(L, opts_idx, "max_buffered", 4194304, 1);
    lua_Integer close_timeout = opt_field(L, opts_idx, "close_timeout", 2000, 0);
    const char *upgrade = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_UPGRADE);
    const char *connection = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONNECTION);
    const char *version = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Version");
    const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Key");
    if (!ws_header_has_token(upgrade, "websocket")) { *err = "missing \"Upgrade: websocket\""; return NULL; }
    if (!ws_header_has_token(connection, "upgrade")) { *err = "missing \"Connection: Upgrade\""; return NULL; }
    if (version == NULL || strcmp(version, "13") != 0) { *err = "unsupported Sec-WebSocket-Version (13 expected)"; return NULL; }
    if (!ws_key_valid(key)) { *err = "invalid Sec-WebSocket-Key"; return NULL; }
    char accept[29];
    if (!ws_accept_value(key, accept)) { *err = "cannot compute Sec-WebSocket-Accept"; return NULL; }

    ms_ws_hub *hub = ws_hub_get(L, loop, hubp);
    ms_ws *ws = lua_newuserdatauv(L, sizeof *ws, 0);
    memset(ws, 0, sizeof *ws);
    ws->state = WS_CLOSED;  /* until fully set up: __gc has nothing to do */
    ws->fd = -1;
    ws->self_ref = ws->on_open_ref = ws->on_message_ref = ws->on_close_ref = LUA_NOREF;
    luaL_setmetatable(L, WS_MT);
    if (wslay_event_context_server_init(&ws->ctx, &ws_callbacks, ws) != 0) luaL_error(L, "out of memory");
    wslay_event_config_set_max_recv_msg_length(ws->ctx, (uint64_t)max_msg);
    struct MHD_Response *r = MHD_create_response_for_upgrade(ws_upgraded, hub);
    if (r == NULL || MHD_add_response_header(r, MHD_HTTP_HEADER_UPGRADE, "websocket") != MHD_YES ||
        MHD_add_response_header(r, "Sec-WebSocket-Accept", accept) != MHD_YES) {
        if (r) MHD_destroy_response(r);
        wslay_event_context_free(ws->ctx);
        ws->ctx = NULL;
        luaL_error(L, "out of memory");
    }
    ws->max_buffered = (size_t)max_buf;
    ws->close_timeout = (double)close_timeout;
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
    lua_pushvalue(L, -1);
    ws->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return r;
}

void ms_ws_hub_close(lua_State *L, ms_ws_hub *hub) {
    if (hub == NULL) return;
    static const char why[] = "server shutting down";
    while (hub->head) {
        ms_ws *ws = hub->head;
        if (ws->fd >= 0 && !ws->dead && ws->state == WS_OPEN) {
            wslay_event_queue_close(ws->ctx, WSLAY_CODE_GOING_AWAY, (const uint8_t *)why, sizeof why - 1);
            wslay_event_send(ws->ctx);  /* best effort: the socket closes next */
        }
        if (!ws->forced_code) { ws->forced_code = WSLAY_CODE_GOING_AWAY; ws->forced_reason = why; }
        if (ws->ctx && !wslay_event_get_close_received(ws->ctx)) {
            /* report our 1001, not a half-finished handshake */
            ws->dead = 1;
        }
        ws_finish(ws, 1);
    }
    ms_loop_remove_prepare(hub->loop, ws_prepare, hub);
    while (hub->closing) ws_closing_remove(hub->closing);
    if (hub->in_prepare) hub->free_pending = 1; else free(hub);
}

/* ---- Lua API: WebSocket ---- */

static ms_ws *check_ws(lua_State *L, int idx) {
    return luaL_checkudata(L, idx, WS_MT);
}

static int ws_send(lua_State *L, int binary) {
    ms_ws *ws = check_ws(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (ws->state != WS_CONNECTING && ws->state != WS_OPEN) { lua_pushnil(L); lua_pushliteral(L, "closed"); return 2; }
    if (ws->dead) { lua_pushnil(L); lua_pushliteral(L, "closed"); return 2; }
    struct wslay_event_msg m = { binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME, (const uint8_t *)s, len };
    int rc = wslay_event_queue_msg(ws->ctx, &m);
    if (rc == WSLAY_ERR_NOMEM) return luaL_error(L, "out of memory");
    if (rc != 0) { lua_pushnil(L); lua_pushliteral(L, "closed"); return 2; }
    ws_flush(ws);
    if (!ws->dead && wslay_event_get_queued_msg_length(ws->ctx) > ws->max_buffered)
        ws_drop(ws, WSLAY_CODE_POLICY_VIOLATION, "send buffer full");
    if (ws->dead) {
        lua_pushnil(L);
        if (ws->forced_code == WSLAY_CODE_POLICY_VIOLATION) lua_pushliteral(L, "send buffer full");
        else lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
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
    if ((ws->state != WS_CONNECTING && ws->state != WS_OPEN) || ws->dead) { lua_pushboolean(L, 0); return 1; }
    if (wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason, rlen) != 0) {
        ws_drop(ws, (int)(code ? code : 1005), NULL);
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

static int ws_id(lua_State *L) {
    lua_pushinteger(L, check_ws(L, 1)->id);
    return 1;
}

static int ws_remote_address(lua_State *L) {
    lua_pushstring(L, check_ws(L, 1)->addr);
    return 1;
}

static int ws_buffered(lua_State *L) {
    ms_ws *ws = check_ws(L, 1);
    lua_pushinteger(L, ws->ctx ? (lua_Integer)wslay_event_get_queued_msg_length(ws->ctx) : 0);
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
    if (ws->state == WS_CLOSED) {
        if (ws->ctx) { wslay_event_context_free(ws->ctx); ws->ctx = NULL; }
        return 0;
    }
    ws->on_open_ref = ws->on_message_ref = ws->on_close_ref = ws->self_ref = LUA_NOREF;
    ms_ws_hub *hub = ws->hub;
    if (hub) hub->L = NULL;  /* lua_close: no more callbacks from anywhere */
    ws_finish(ws, 0);
    return 0;
}

static const luaL_Reg ws_meth[] = {
    {"send_text", ws_send_text},
    {"send_binary", ws_send_binary},
    {"close", ws_close_lua},
    {"on_open", ws_on_open},
    {"on_message", ws_on_message},
    {"on_close", ws_on_close},
    {"id", ws_id},
    {"remote_address", ws_remote_address},
    {"buffered", ws_buffered},
    {"state", ws_state_lua},
    {NULL, NULL}
};

static const luaL_Reg ws_metameth[] = {
    {"__index", NULL},
    {"__gc", ws_gc},
    {"__tostring", ws_tostring},
    {NULL, NULL}
};

void ms_ws_open(lua_State *L) {
    ms_createmeta(L, WS_MT, ws_meth, ws_metameth);
}
