/* An asynchronous HTTP client on the server's event loop: libcurl's multi
 * socket interface, with curl's sockets watched by the loop's epoll. curl's
 * timer is a timerfd the loop watches too (rather than a prepare hook), so an
 * expired curl timeout is handled in ordinary fd dispatch, where calling Lua
 * is safe, and the kernel wakes the loop: no request can stall. Lua callbacks
 * run on the main Lua thread after curl_multi_socket_action has returned,
 * never inside a libcurl frame.
 *
 * Lua API:
 *   core.http_client(loop [, opts]) -> client | nil, err
 *     opts.max_response     bytes of response headers + body (default 16 MiB)
 *     opts.connect_timeout  ms (default 5000; 0 = curl's default)
 *   client:request(opts, callback) -> handle | nil, err
 *     opts: url (http/https), method ("GET"), headers, body, timeout (ms,
 *     default 30000, 0 = none), forbid_reuse, fresh_connection.
 *     callback(res) with res = { status, body, headers }, or callback(nil, err).
 *   client:pending() -> n          client:close()   (also __gc, __close)
 *   handle:cancel() -> boolean     handle:active() -> boolean
 *   handle:close()   cancels it if in flight and frees it; using it again
 *                    raises (also __gc, __close)
 * A client with transfers in flight is kept alive by them (like the loop's
 * armed timers), so dropping it does not cancel them; close() does.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/timerfd.h>

#include <curl/curl.h>

#include "core.h"
#include "loop.h"

#define HC_CLIENT_MT "moonstream.HttpClient"
#define HC_REQUEST_MT "moonstream.HttpRequest"
#define HC_DEFAULT_MAX_RESPONSE ((lua_Integer)16 * 1024 * 1024)
#define HC_DEFAULT_CONNECT_TIMEOUT 5000
#define HC_DEFAULT_TIMEOUT 30000
#define HC_BUFFER_MIN_CAPACITY 4096
#define HC_TOO_LARGE "response too large"

typedef struct hc_transfer hc_transfer;

typedef struct hc_client {
    CURLM *multi;             /* NULL once closed (or before it is opened) */
    ms_loop *loop;            /* kept alive by the client's uservalue 1 */
    lua_State *L;             /* main thread: callbacks run there */
    int timerfd;              /* curl's timer; -1 when closed */
    size_t max_response;
    long connect_timeout_ms;
    hc_transfer *transfers;   /* in flight, doubly linked */
    int pending;
    int self_ref;             /* registry ref to the client while transfers are in flight */
    int *fds;                 /* sockets curl asked us to watch */
    int nfds, fds_cap;
} hc_client;

/* The state of one request; it is the handle userdata, so Lua owns its memory. */
struct hc_transfer {
    hc_client *client;        /* NULL once finished, cancelled or closed */
    CURL *easy;
    struct curl_slist *headers;
    char *body;               /* response body, malloc'd, grows geometrically */
    size_t body_len, body_cap;
    char *head;               /* header lines of the last response, as received */
    size_t head_len, head_cap;
    size_t received;          /* header + body bytes, checked against max_response */
    size_t max_response;
    int too_large;
    int closed;               /* handle:close() ran: any further use raises */
    int callback_ref;         /* registry refs, owned by the client while in flight */
    int handle_ref;
    hc_transfer *prev, *next;
    char errbuf[CURL_ERROR_SIZE];
};

static int hc_curl_ready;

/* ---- transfers ---- */

/* Frees the curl and C memory of a transfer not (or no longer) in a multi
 * handle. Safe to call again. Never raises. */
static void hc_transfer_free(hc_transfer *t) {
    if (t->easy) curl_easy_cleanup(t->easy);
    t->easy = NULL;
    curl_slist_free_all(t->headers);
    t->headers = NULL;
    free(t->body);
    t->body = NULL;
    t->body_len = t->body_cap = 0;
    free(t->head);
    t->head = NULL;
    t->head_len = t->head_cap = 0;
}

/* Takes an in-flight transfer out of its client: removes it from the multi
 * handle (no callback is called), frees its resources and drops the client's
 * refs to the callback and the handle. No-op when not in flight. Must not be
 * called from inside a libcurl callback. Never raises. */
static void hc_transfer_detach(lua_State *L, hc_transfer *t) {
    hc_client *c = t->client;
    if (c == NULL) return;
    if (t->prev) t->prev->next = t->next; else c->transfers = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = NULL;
    t->client = NULL;
    curl_multi_remove_handle(c->multi, t->easy);
    hc_transfer_free(t);
    luaL_unref(L, LUA_REGISTRYINDEX, t->callback_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, t->handle_ref);
    t->callback_ref = t->handle_ref = LUA_NOREF;
    if (--c->pending == 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, c->self_ref);
        c->self_ref = LUA_NOREF;
    }
}

/* Appends len bytes to a buffer that doubles as it grows, never beyond
 * limit bytes. Returns 0, or -1 when over the limit or out of memory. */
static int hc_buffer_append(char **buf, size_t *used, size_t *cap, size_t limit, const char *data, size_t len) {
    if (len > limit || *used > limit - len) return -1;
    if (*used + len > *cap) {
        size_t want = *cap ? *cap : HC_BUFFER_MIN_CAPACITY;
        while (want < *used + len) want = want > SIZE_MAX / 2 ? SIZE_MAX : want * 2;
        if (want > limit) want = limit;
        char *p = realloc(*buf, want);
        if (p == NULL) return -1;
        *buf = p;
        *cap = want;
    }
    memcpy(*buf + *used, data, len);
    *used += len;
    return 0;
}

/* CURLOPT_WRITEFUNCTION: appends to the body buffer; refusing the data (a
 * short count) makes curl fail the transfer with CURLE_WRITE_ERROR. */
static size_t hc_on_body(char *data, size_t size, size_t n, void *ud) {
    hc_transfer *t = ud;
    size_t len = size * n;
    if (len > t->max_response - t->received) {
        t->too_large = 1;
        return 0;
    }
    if (hc_buffer_append(&t->body, &t->body_len, &t->body_cap, t->max_response, data, len) != 0) return 0;
    t->received += len;
    return len;
}

/* CURLOPT_HEADERFUNCTION: curl passes one complete header line per call.
 * A status line starts a new response (after 1xx interim ones), so only the
 * last response's lines are kept; all of them count against max_response.
 * Parsed once the transfer is done (hc_push_headers), in linear time. */
static size_t hc_on_header(char *data, size_t size, size_t n, void *ud) {
    hc_transfer *t = ud;
    size_t len = size * n;
    if (len > t->max_response - t->received) {
        t->too_large = 1;
        return 0;
    }
    t->received += len;
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) t->head_len = 0;
    if (hc_buffer_append(&t->head, &t->head_len, &t->head_cap, t->max_response, data, len) != 0) return 0;
    return len;
}

/* ---- curl's sockets and timer on the loop ---- */

static void hc_dispatch(hc_client *c);

/* Loop callback for a curl socket: hands the readiness to curl, then delivers
 * whatever finished. */
static void hc_on_socket_ready(void *ud, int fd, uint32_t events) {
    hc_client *c = ud;
    int mask = 0, running;
    if (c->multi == NULL) return;
    if (events & EPOLLIN) mask |= CURL_CSELECT_IN;
    if (events & EPOLLOUT) mask |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP)) mask |= CURL_CSELECT_ERR;
    curl_multi_socket_action(c->multi, fd, mask, &running);
    hc_dispatch(c);
}

/* Loop callback for the timerfd: curl's timeout expired. A stale wake-up
 * (timer re-armed after the event was queued) only costs curl a check. */
static void hc_on_timer_ready(void *ud, int fd, uint32_t events) {
    hc_client *c = ud;
    uint64_t expirations;
    int running;
    (void)events;
    ssize_t drained = read(fd, &expirations, sizeof expirations);  /* EAGAIN when stale */
    (void)drained;
    if (c->multi == NULL) return;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    hc_dispatch(c);
}

static int hc_find_fd(hc_client *c, int fd) {
    for (int i = 0; i < c->nfds; i++)
        if (c->fds[i] == fd) return i;
    return -1;
}

/* CURLMOPT_SOCKETFUNCTION: (un)watches a socket. The fds are also remembered
 * so close can unwatch any that curl did not report as removed. */
static int hc_on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    hc_client *c = userp;
    (void)easy; (void)socketp;
    int i = hc_find_fd(c, s);
    if (what == CURL_POLL_REMOVE) {
        ms_loop_unwatch(c->loop, s);
        if (i >= 0) c->fds[i] = c->fds[--c->nfds];
        return 0;
    }
    if (i < 0) {
        if (c->nfds == c->fds_cap) {
            int cap = c->fds_cap ? c->fds_cap * 2 : 16;
            int *p = realloc(c->fds, (size_t)cap * sizeof *p);
            if (p == NULL) return -1;
            c->fds = p;
            c->fds_cap = cap;
        }
        c->fds[c->nfds++] = s;
    }
    uint32_t events = 0;
    if (what & CURL_POLL_IN) events |= EPOLLIN;
    if (what & CURL_POLL_OUT) events |= EPOLLOUT;
    return ms_loop_watch(c->loop, s, events, hc_on_socket_ready, c) == 0 ? 0 : -1;
}

/* CURLMOPT_TIMERFUNCTION: arms the timerfd for timeout_ms (0: as soon as
 * possible, -1: disarm). curl must not be re-entered from here, so even a
 * 0 ms timeout goes through the loop. */
static int hc_on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
    hc_client *c = userp;
    struct itimerspec its;
    (void)multi;
    if (c->timerfd < 0) return 0;
    memset(&its, 0, sizeof its);
    if (timeout_ms == 0) {
        its.it_value.tv_nsec = 1;  /* an all-zero it_value would disarm */
    } else if (timeout_ms > 0) {
        its.it_value.tv_sec = timeout_ms / 1000;
        its.it_value.tv_nsec = (timeout_ms % 1000) * 1000000L;
    }
    return timerfd_settime(c->timerfd, 0, &its, NULL) == 0 ? 0 : -1;
}

/* ---- delivering results ---- */

static int hc_is_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Adds one "Name: value" line to the headers table at index headers. The
 * first value of a repeated name stays there; the later ones are collected in
 * the table at index repeated (name -> sequence of all values), joined at the
 * end, so many repeats cost linear time. Lines without a colon (the status
 * line, the blank line) are skipped. Raises on memory errors only. */
static void hc_add_header_line(lua_State *L, int headers, int repeated, const char *line, size_t len) {
    const char *colon = memchr(line, ':', len);
    if (colon == NULL || colon == line) return;
    size_t name_len = (size_t)(colon - line);
    while (name_len > 0 && hc_is_space(line[name_len - 1])) name_len--;
    if (name_len == 0) return;
    const char *value = colon + 1, *end = line + len;
    while (value < end && hc_is_space(*value)) value++;
    while (end > value && hc_is_space(end[-1])) end--;

    luaL_Buffer b;
    char *name = luaL_buffinitsize(L, &b, name_len);
    for (size_t i = 0; i < name_len; i++) {
        char ch = line[i];
        name[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    luaL_pushresultsize(&b, name_len);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, headers) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushlstring(L, value, (size_t)(end - value));
        lua_rawset(L, headers);
    } else {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, repeated) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_createtable(L, 4, 0);
            lua_pushvalue(L, -2);
            lua_rawget(L, headers);
            lua_rawseti(L, -2, 1);
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -2);
            lua_rawset(L, repeated);
        }
        lua_pushlstring(L, value, (size_t)(end - value));
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Pushes the headers of the last response as a table keyed by lowercase
 * name; repeated headers are joined with ", ", obsolete folded lines are
 * unfolded. Consumes (rewrites) t->head. Raises on memory errors only. */
static void hc_push_headers(lua_State *L, hc_transfer *t) {
    lua_newtable(L);
    if (t->head_len == 0) return;
    /* obs-fold: a line break followed by spaces or tabs continues the value;
     * it becomes one space (RFC 9112 section 5.2) */
    char *w = t->head, *r = t->head, *end = t->head + t->head_len;
    while (r < end) {
        size_t brk = (r[0] == '\r' && r + 1 < end && r[1] == '\n') ? 2 : r[0] == '\n' ? 1 : 0;
        if (brk && r + brk < end && (r[brk] == ' ' || r[brk] == '\t')) {
            r += brk;
            while (r < end && (*r == ' ' || *r == '\t')) r++;
            *w++ = ' ';
        } else {
            *w++ = *r++;
        }
    }
    char *p = t->head;
    end = w;
    int headers = lua_gettop(L);
    lua_newtable(L);
    int repeated = headers + 1;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line_end = nl ? nl : end;
        hc_add_header_line(L, headers, repeated, p, (size_t)(line_end - p));
        p = nl ? nl + 1 : end;
    }
    lua_pushnil(L);
    while (lua_next(L, repeated) != 0) {
        int parts = lua_gettop(L);
        lua_Integer n = (lua_Integer)lua_rawlen(L, parts);
        lua_pushvalue(L, parts - 1);
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1) luaL_addlstring(&b, ", ", 2);
            lua_rawgeti(L, parts, i);
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        lua_rawset(L, headers);  /* headers[name] = joined; keys of repeated unchanged */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Protected: (handle, curl result code). Builds the callback's arguments from
 * the finished transfer, detaches it, then calls callback(res) or
 * callback(nil, err). */
static int hc_deliver(lua_State *L) {
    hc_transfer *t = luaL_checkudata(L, 1, HC_REQUEST_MT);
    CURLcode code = (CURLcode)luaL_checkinteger(L, 2);
    int nargs;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->callback_ref);
    if (code == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, status);
        lua_setfield(L, -2, "status");
        lua_pushlstring(L, t->body ? t->body : "", t->body_len);
        lua_setfield(L, -2, "body");
        hc_push_headers(L, t);
        lua_setfield(L, -2, "headers");
        nargs = 1;
    } else {
        lua_pushnil(L);
        if (t->too_large || code == CURLE_FILESIZE_EXCEEDED)
            lua_pushliteral(L, HC_TOO_LARGE);
        else
            lua_pushstring(L, t->errbuf[0] ? t->errbuf : curl_easy_strerror(code));
        nargs = 2;
    }
    hc_transfer_detach(L, t);
    lua_call(L, nargs, 0);
    return 0;
}

/* Collects finished transfers and calls their callbacks, one at a time, so a
 * callback may cancel other transfers, start new ones or close the client
 * (curl drops the pending messages of removed handles). The client is kept
 * on the stack meanwhile so a callback cannot get it collected under us. */
static void hc_dispatch(hc_client *c) {
    lua_State *L = c->L;
    CURLMsg *msg;
    int left;
    if (c->self_ref == LUA_NOREF) return;  /* nothing in flight, nothing to deliver */
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->self_ref);
    while (c->multi && (msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURLcode code = msg->data.result;
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        hc_transfer *t = (hc_transfer *)(void *)priv;
        if (t == NULL || t->client != c) continue;
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->handle_ref);  /* keeps t alive past detach */
        lua_pushcfunction(L, hc_deliver);
        lua_pushvalue(L, -2);
        lua_pushinteger(L, code);
        ms_pcall(L, 2, 0);
        hc_transfer_detach(L, t);  /* if hc_deliver failed before detaching */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* ---- the client ---- */

static hc_client *check_client(lua_State *L, int idx) {
    hc_client *c = luaL_checkudata(L, idx, HC_CLIENT_MT);
    if (c->multi == NULL) luaL_error(L, "attempt to use a closed http client");
    return c;
}

static hc_transfer *check_request(lua_State *L, int idx) {
    hc_transfer *t = luaL_checkudata(L, idx, HC_REQUEST_MT);
    if (t->closed) luaL_error(L, "attempt to use a closed http request");
    return t;
}

/* Cancels every transfer (no callbacks), then frees curl, the watched fds and
 * the timerfd. Handles a half-opened client; safe twice. Never raises. */
static void hc_client_release(lua_State *L, hc_client *c) {
    while (c->transfers) hc_transfer_detach(L, c->transfers);
    if (c->multi) {
        curl_multi_cleanup(c->multi);  /* closes cached connections: CURL_POLL_REMOVE */
        c->multi = NULL;
    }
    for (int i = 0; i < c->nfds; i++) ms_loop_unwatch(c->loop, c->fds[i]);
    free(c->fds);
    c->fds = NULL;
    c->nfds = c->fds_cap = 0;
    if (c->timerfd >= 0) {
        ms_loop_unwatch(c->loop, c->timerfd);
        close(c->timerfd);
        c->timerfd = -1;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, c->self_ref);
    c->self_ref = LUA_NOREF;
}

static int hc_client_close(lua_State *L) {
    hc_client_release(L, luaL_checkudata(L, 1, HC_CLIENT_MT));
    return 0;
}

/* Reads opts[name] as an integer >= min, or def when absent; raises when it
 * has another type or is out of range. */
static lua_Integer hc_opt_integer(lua_State *L, int opts, const char *name, lua_Integer def, lua_Integer min) {
    lua_Integer v = def;
    if (opts != 0 && lua_getfield(L, opts, name) != LUA_TNIL) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < min)
            luaL_error(L, "opts.%s must be an integer >= %d", name, (int)min);
    }
    if (opts != 0) lua_pop(L, 1);
    return v;
}

static int hc_opt_boolean(lua_State *L, int opts, const char *name) {
    int t = lua_getfield(L, opts, name);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN) luaL_error(L, "opts.%s must be a boolean", name);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static long hc_clamp_long(lua_Integer v) {
    return v > LONG_MAX ? LONG_MAX : (long)v;
}

/* core.http_client(loop [, opts]) -> client | nil, err. Misuse (bad loop,
 * bad option types) raises. */
static int hc_client_new(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    int opts = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        opts = 2;
    }
    lua_Integer max_response = hc_opt_integer(L, opts, "max_response", HC_DEFAULT_MAX_RESPONSE, 1);
    lua_Integer connect_timeout = hc_opt_integer(L, opts, "connect_timeout", HC_DEFAULT_CONNECT_TIMEOUT, 0);
    if (!hc_curl_ready) {
        CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (rc != CURLE_OK) {
            lua_pushnil(L);
            lua_pushfstring(L, "curl_global_init: %s", curl_easy_strerror(rc));
            return 2;
        }
        hc_curl_ready = 1;
    }

    hc_client *c = lua_newuserdatauv(L, sizeof *c, 1);
    memset(c, 0, sizeof *c);
    c->timerfd = -1;
    c->self_ref = LUA_NOREF;
    c->loop = loop;
    c->max_response = (uint64_t)max_response > SIZE_MAX ? SIZE_MAX : (size_t)max_response;
    c->connect_timeout_ms = hc_clamp_long(connect_timeout);
    luaL_setmetatable(L, HC_CLIENT_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);  /* the loop outlives the client */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    c->L = lua_tothread(L, -1);
    lua_pop(L, 1);

    const char *what = "timerfd_create";
    c->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (c->timerfd < 0) goto fail_errno;
    what = "epoll_ctl";
    if (ms_loop_watch(loop, c->timerfd, EPOLLIN, hc_on_timer_ready, c) != 0) goto fail_errno;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        hc_client_release(L, c);
        lua_pushnil(L);
        lua_pushliteral(L, "curl_multi_init failed");
        return 2;
    }
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, hc_on_curl_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, hc_on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    return 1;

fail_errno: {
        int e = errno;
        hc_client_release(L, c);
        errno = e;
        return luaL_fileresult(L, 0, what);
    }
}

static int hc_client_pending(lua_State *L) {
    hc_client *c = luaL_checkudata(L, 1, HC_CLIENT_MT);
    lua_pushinteger(L, c->multi ? c->pending : 0);
    return 1;
}

static int hc_client_tostring(lua_State *L) {
    hc_client *c = luaL_checkudata(L, 1, HC_CLIENT_MT);
    lua_pushfstring(L, HC_CLIENT_MT " (%s)", c->multi ? "open" : "closed");
    return 1;
}

/* ---- requests ---- */

/* RFC 9110 token characters (methods and header names). */
static int hc_is_token(const char *s, size_t len) {
    if (len == 0) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) continue;
        if (ch == 0 || strchr("!#$%&'*+-.^_`|~", ch) == NULL) return 0;
    }
    return 1;
}

/* Header values must not smuggle in extra header lines. */
static int hc_is_header_text(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 0;
    return 1;
}

/* Appends one curl header line to t->headers. Returns 0, or -1 out of memory. */
static int hc_append_header(hc_transfer *t, const char *line) {
    struct curl_slist *l = curl_slist_append(t->headers, line);
    if (l == NULL) return -1;
    t->headers = l;
    return 0;
}

/* Turns opts.headers (at idx) into t->headers. Accepts name -> value (string
 * or number; false removes a curl default header; "" sends an empty header)
 * and sequence entries "Name: value" in curl's syntax. Raises on wrong types;
 * returns NULL or an error message for invalid names, values or no memory. */
static const char *hc_build_headers(lua_State *L, int idx, hc_transfer *t) {
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        const char *line;
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t nlen, vlen;
            const char *name = lua_tolstring(L, -2, &nlen);
            if (!hc_is_token(name, nlen)) { lua_pop(L, 2); return "invalid header name"; }
            int vt = lua_type(L, -1);
            if (vt == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
                line = lua_pushfstring(L, "%s:", name);
            } else if (vt == LUA_TSTRING || vt == LUA_TNUMBER) {
                lua_pushvalue(L, -1);
                const char *value = lua_tolstring(L, -1, &vlen);
                if (!hc_is_header_text(value, vlen)) { lua_pop(L, 3); return "invalid header value"; }
                line = vlen == 0 ? lua_pushfstring(L, "%s;", name) : lua_pushfstring(L, "%s: %s", name, value);
                lua_remove(L, -2);
            } else {
                return luaL_error(L, "opts.headers[\"%s\"] must be a string, a number or false", name), NULL;
            }
        } else if (lua_isinteger(L, -2) && lua_type(L, -1) == LUA_TSTRING) {
            size_t len;
            line = lua_tolstring(L, -1, &len);
            size_t namelen = strcspn(line, ":;");
            if (namelen == len || !hc_is_token(line, namelen) || !hc_is_header_text(line, len)) {
                lua_pop(L, 2);
                return "invalid header line";
            }
            lua_pushvalue(L, -1);
        } else {
            return luaL_error(L, "opts.headers: expected name = value pairs or \"Name: value\" strings"), NULL;
        }
        int failed = hc_append_header(t, line) != 0;
        lua_pop(L, 2);  /* line and value; the key stays for lua_next */
        if (failed) { lua_pop(L, 1); return "out of memory"; }
    }
    return NULL;
}

/* Checks that url parses and is http or https. Returns NULL or an error. */
static const char *hc_check_url(lua_State *L, const char *url, size_t len) {
    if (strlen(url) != len) return "invalid url: embedded zero byte";
    CURLU *u = curl_url();
    if (u == NULL) return "out of memory";
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
    const char *err = NULL;
    char *scheme = NULL;
    if (rc != CURLUE_OK) {
        err = lua_pushfstring(L, "invalid url: %s", curl_url_strerror(rc));
    } else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
               (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
        err = "invalid url: only http and https are supported";
    }
    curl_free(scheme);
    curl_url_cleanup(u);
    return err;
}

/* Sets the method and body: GET and HEAD are curl's own, POST/PUT/PATCH always
 * send a body (empty if none, so Content-Length is 0), anything else is a
 * custom request with a body only when one is given. Returns NULL or an error. */
static const char *hc_set_method(hc_transfer *t, const char *method, size_t mlen,
                                 const char *body, size_t blen) {
    CURL *e = t->easy;
    if (!hc_is_token(method, mlen)) return "invalid method";
    int is_get = strcmp(method, "GET") == 0, is_head = strcmp(method, "HEAD") == 0;
    if (is_head) {
        if (body) return "a HEAD request cannot have a body";
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        return NULL;
    }
    int wants_body = body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                     strcmp(method, "PATCH") == 0;
    if (wants_body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? blen : 0));
        if (curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? body : "") != CURLE_OK) return "out of memory";
    }
    if (strcmp(method, "POST") == 0 || (is_get && !wants_body)) return NULL;
    return curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) == CURLE_OK ? NULL : "out of memory";
}

static const char *hc_opt_string(lua_State *L, int opts, const char *name, size_t *len) {
    int t = lua_getfield(L, opts, name);
    if (t == LUA_TNIL) { lua_pop(L, 1); return NULL; }
    if (t != LUA_TSTRING) luaL_error(L, "opts.%s must be a string", name);
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1);  /* still referenced by opts */
    return s;
}

/* client:request(opts, callback) -> handle | nil, err. Misuse (closed client
 * or loop, wrong option types) raises; an invalid url, method or header and
 * curl setup failures return nil, err. callback(res) or callback(nil, err)
 * runs later on the loop, unless the request is cancelled or the client closed. */
static int hc_client_request(lua_State *L) {
    hc_client *c = check_client(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lua_getiuservalue(L, 1, 1);
    ms_loop_check(L, -1);  /* requests on a closed loop would never run */
    lua_pop(L, 1);

    size_t url_len, method_len = 3, body_len = 0;
    const char *url = hc_opt_string(L, 2, "url", &url_len);
    if (url == NULL) return luaL_error(L, "opts.url must be a string");
    const char *method = hc_opt_string(L, 2, "method", &method_len);
    if (method == NULL) method = "GET";
    const char *body = hc_opt_string(L, 2, "body", &body_len);
    lua_Integer timeout = hc_opt_integer(L, 2, "timeout", HC_DEFAULT_TIMEOUT, 0);
    int forbid_reuse = hc_opt_boolean(L, 2, "forbid_reuse");
    int fresh = hc_opt_boolean(L, 2, "fresh_connection");
    int headers_type = lua_getfield(L, 2, "headers");
    if (headers_type != LUA_TNIL && headers_type != LUA_TTABLE)
        return luaL_error(L, "opts.headers must be a table");
    int headers_idx = lua_gettop(L);

    hc_transfer *t = lua_newuserdatauv(L, sizeof *t, 0);
    memset(t, 0, sizeof *t);
    t->callback_ref = t->handle_ref = LUA_NOREF;
    t->max_response = c->max_response;
    luaL_setmetatable(L, HC_REQUEST_MT);

    const char *err = hc_check_url(L, url, url_len);
    if (err) goto fail;
    t->easy = curl_easy_init();
    if (t->easy == NULL) { err = "curl_easy_init failed"; goto fail; }
    CURL *e = t->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, hc_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, hc_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, hc_clamp_long(timeout));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    if (forbid_reuse) curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    if (fresh) curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK) { err = "out of memory"; goto fail; }
    if ((err = hc_set_method(t, method, method_len, body, body_len)) != NULL) goto fail;
    if (strcmp(method, "HEAD") != 0)  /* fail early on a Content-Length over the limit */
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->max_response);
    if (headers_type == LUA_TTABLE) {
        if ((err = hc_build_headers(L, headers_idx, t)) != NULL) goto fail;
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    }

    CURLMcode mrc = curl_multi_add_handle(c->multi, e);
    if (mrc != CURLM_OK) { err = curl_multi_strerror(mrc); goto fail; }
    lua_pushvalue(L, 3);
    t->callback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    t->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (c->self_ref == LUA_NOREF) {
        lua_pushvalue(L, 1);
        c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    t->client = c;
    t->next = c->transfers;
    if (c->transfers) c->transfers->prev = t;
    c->transfers = t;
    c->pending++;
    return 1;

fail:
    hc_transfer_free(t);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* handle:cancel() -> true if the request was in flight (its callback will not
 * be called), false if it had already finished or been cancelled. */
static int hc_request_cancel(lua_State *L) {
    hc_transfer *t = check_request(L, 1);
    int active = t->client != NULL;
    hc_transfer_detach(L, t);
    lua_pushboolean(L, active);
    return 1;
}

static int hc_request_active(lua_State *L) {
    lua_pushboolean(L, check_request(L, 1)->client != NULL);
    return 1;
}

/* handle:close(), __close, __gc: cancels an in-flight request (no callback)
 * and frees what curl holds for it; safe twice, never raises. __gc meets an
 * in-flight handle only when the state closes (the client holds it until
 * then); a failed setup may leave curl memory behind. */
static int hc_request_close(lua_State *L) {
    hc_transfer *t = luaL_checkudata(L, 1, HC_REQUEST_MT);
    hc_transfer_detach(L, t);
    hc_transfer_free(t);
    t->closed = 1;
    return 0;
}

static int hc_request_tostring(lua_State *L) {
    hc_transfer *t = luaL_checkudata(L, 1, HC_REQUEST_MT);
    lua_pushfstring(L, HC_REQUEST_MT " (%s)", t->closed ? "closed" : t->client ? "active" : "done");
    return 1;
}

static const luaL_Reg hc_client_meth[] = {
    {"request", hc_client_request},
    {"pending", hc_client_pending},
    {"close", hc_client_close},
    {NULL, NULL}
};

static const luaL_Reg hc_client_metameth[] = {
    {"__index", NULL},
    {"__gc", hc_client_close},
    {"__close", hc_client_close},
    {"__tostring", hc_client_tostring},
    {NULL, NULL}
};

static const luaL_Reg hc_request_meth[] = {
    {"cancel", hc_request_cancel},
    {"active", hc_request_active},
    {"close", hc_request_close},
    {NULL, NULL}
};

static const luaL_Reg hc_request_metameth[] = {
    {"__index", NULL},
    {"__gc", hc_request_close},
    {"__close", hc_request_close},
    {"__tostring", hc_request_tostring},
    {NULL, NULL}
};


void ms_httpclient_open(lua_State *L) {
    ms_createmeta(L, HC_CLIENT_MT, hc_client_meth, hc_client_metameth);
    ms_createmeta(L, HC_REQUEST_MT, hc_request_meth, hc_request_metameth);
    lua_pushcfunction(L, hc_client_new);
    lua_setfield(L, -2, "http_client");
}
