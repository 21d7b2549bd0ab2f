/* redis: a hiredis async connection on the server's loop (see redis.h).
 *
 * hiredis asks for read/write interest through its ev hooks; they map to
 * ms_loop_watch on the socket. hiredis frees its context by itself when the
 * connection fails (after running every waiting callback with a NULL reply);
 * its cleanup hook is the one signal that always comes, so that is where the
 * socket is unwatched and a reconnection is planned. The reconnection timer
 * is a loop prepare source (the loop's C API has no timers): it shortens the
 * loop's wait to the next attempt and connects when that is due.
 *
 * On every (re)connection AUTH and SELECT go first, then a PING; the
 * connection counts as up when the PING is answered, and a subscriber then
 * renews its subscriptions. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#define HASH_NONFATAL_OOM 1
#include <uthash.h>
#include <hiredis/async.h>

#include "jbuf.h"
#include "redis.h"

#define BACKOFF_MIN_MS 50.0
#define BACKOFF_MAX_MS 2000.0
#define ERR_LEN 160

typedef struct channel {
    char *name;
    size_t len;
    UT_hash_handle hh;
} channel;

struct ms_redis {
    ms_loop *loop;
    redisAsyncContext *ac;      /* NULL while disconnected */
    int fd;
    uint32_t events;            /* what hiredis wants from the socket */
    int up;
    unsigned long ups;          /* times it came up */
    int closing;                /* freed once hiredis lets go of the context */
    double next_attempt;        /* ms (ms_loop_now); 0: none planned */
    double backoff;
    size_t waiting;
    double reply_timeout;       /* ms without a reply while commands wait, then dropped; 0: none */
    double last_progress;       /* when the last reply came, or the first waiting command went */
    char *host, *password;
    int port, db;
    size_t max_reply;
    ms_redis_state_fn on_state;
    ms_redis_message_fn on_message;
    void *ud;
    channel *channels;
    char err[ERR_LEN];
};

typedef struct pending {
    ms_redis *r;
    ms_redis_reply_fn fn;
    void *ud;
} pending;

static void set_err(ms_redis *r, const char *msg) {
    if (msg == r->err) return;
    size_t n = strnlen(msg, ERR_LEN - 1);
    memmove(r->err, msg, n);
    r->err[n] = '\0';
}

static void go_down(ms_redis *r, const char *why) {
    set_err(r, why);
    int was = r->up;
    r->up = 0;
    if (was && r->on_state && !r->closing) r->on_state(r->ud, 0, r->err);
}

/* ---- hiredis ev hooks ---- */

static void io_ready(void *ud, int fd, uint32_t events);

static void watch(ms_redis *r, uint32_t events) {
    if (events == r->events || r->fd < 0) return;
    r->events = events;
    if (events == 0) ms_loop_unwatch(r->loop, r->fd);
    else ms_loop_watch(r->loop, r->fd, events, io_ready, r);
}

static void ev_add_read(void *p) { ms_redis *r = p; watch(r, r->events | EPOLLIN); }
static void ev_del_read(void *p) { ms_redis *r = p; watch(r, r->events & ~(uint32_t)EPOLLIN); }
static void ev_add_write(void *p) { ms_redis *r = p; watch(r, r->events | EPOLLOUT); }
static void ev_del_write(void *p) { ms_redis *r = p; watch(r, r->events & ~(uint32_t)EPOLLOUT); }

/* hiredis is done with the context (failed, dropped or freed). */
static void ev_cleanup(void *p) {
    ms_redis *r = p;
    if (r->fd >= 0 && r->events) ms_loop_unwatch(r->loop, r->fd);
    r->fd = -1;
    r->events = 0;
    if (r->ac && r->ac->err && r->ac->errstr) set_err(r, r->ac->errstr);
    r->ac = NULL;
    if (r->closing) {
        free(r);
        return;
    }
    go_down(r, r->err[0] ? r->err : "the connection to Redis closed");
    r->next_attempt = ms_loop_now() + r->backoff;
    r->backoff = r->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff * 2;
}

/* Drops the connection: waiting commands fail with why. */
static void drop(ms_redis *r, const char *why) {
    if (r->ac == NULL) return;
    set_err(r, why);
    redisAsyncFree(r->ac);  /* deferred by hiredis when inside one of its callbacks */
}

static void io_ready(void *ud, int fd, uint32_t events) {
    ms_redis *r = ud;
    if (r->ac && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) redisAsyncHandleRead(r->ac);
    if (r->ac && (events & EPOLLOUT)) redisAsyncHandleWrite(r->ac);
    /* hiredis keeps an incomplete reply in its reader's buffer: bound it */
    if (r->ac && r->ac->c.reader && r->ac->c.reader->len - r->ac->c.reader->pos > r->max_reply)
        drop(r, "a Redis reply exceeded the size limit");
}

/* ---- replies ---- */

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    pending *p = privdata;
    ms_redis *r = p->r;
    r->waiting--;
    r->last_progress = ms_loop_now();
    const char *err = NULL;
    if (reply == NULL) {
        if (ac->err && ac->errstr[0]) set_err(r, ac->errstr);
        err = r->closing ? "closed" : r->err[0] ? r->err : "the connection to Redis was lost";
    }
    if (p->fn) p->fn(p->ud, reply, err);
    free(p);
}

static void on_message(redisAsyncContext *ac, void *reply, void *privdata) {
    ms_redis *r = privdata;
    redisReply *m = reply;
    if (m == NULL || r->closing || m->type != REDIS_REPLY_ARRAY || m->elements != 3) return;
    redisReply *kind = m->element[0], *ch = m->element[1], *data = m->element[2];
    if (kind->type != REDIS_REPLY_STRING || strcmp(kind->str, "message") != 0) return;
    if (ch->type != REDIS_REPLY_STRING || data->type != REDIS_REPLY_STRING) return;
    r->on_message(r->ud, ch->str, ch->len, data->str, data->len);
}

static int send_subscribe(ms_redis *r, const char *verb, const char *name, size_t len) {
    const char *argv[2] = { verb, name };
    size_t lens[2] = { strlen(verb), len };
    return redisAsyncCommandArgv(r->ac, on_message, r, 2, argv, lens) == REDIS_OK ? 0 : -1;
}

/* The PING after AUTH and SELECT: the connection is usable. */
static void on_ready(void *ud, redisReply *reply, const char *err) {
    ms_redis *r = ud;
    if (reply == NULL || r->closing || r->ac == NULL) return;  /* NULL: hiredis is dropping it already */
    if (reply->type == REDIS_REPLY_ERROR) {
        drop(r, reply->str);
        return;
    }
    r->up = 1;
    r->ups++;
    r->err[0] = '\0';
    r->backoff = BACKOFF_MIN_MS;
    if (r->on_message) {
        channel *c, *tmp;
        HASH_ITER(hh, r->channels, c, tmp) send_subscribe(r, "SUBSCRIBE", c->name, c->len);
    }
    if (r->on_state) r->on_state(r->ud, 1, NULL);
}

/* AUTH or SELECT: an error reply (a wrong password) drops the connection. */
static void on_setup(void *ud, redisReply *reply, const char *err) {
    ms_redis *r = ud;
    if (reply && reply->type == REDIS_REPLY_ERROR && !r->closing) drop(r, reply->str);
}

static int send_raw(ms_redis *r, int argc, const char **argv, const size_t *lens, ms_redis_reply_fn fn, void *ud) {
    pending *p = malloc(sizeof *p);
    if (p == NULL) return -1;
    p->r = r;
    p->fn = fn;
    p->ud = ud;
    if (r->waiting == 0) r->last_progress = ms_loop_now();
    if (redisAsyncCommandArgv(r->ac, on_reply, p, argc, argv, lens) != REDIS_OK) {
        free(p);
        return -1;
    }
    r->waiting++;
    return 0;
}

static void connect_now(ms_redis *r) {
    r->next_attempt = 0;
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL || ac->err) {
        set_err(r, ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        r->next_attempt = ms_loop_now() + r->backoff;
        return;
    }
    r->ac = ac;
    r->fd = ac->c.fd;
    r->events = 0;
    ac->ev.data = r;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    char db[24];
    int ok = 1;
    if (r->password) {
        const char *argv[2] = { "AUTH", r->password };
        size_t lens[2] = { 4, strlen(r->password) };
        ok = send_raw(r, 2, argv, lens, on_setup, r) == 0;
    }
    if (ok && r->db > 0) {
        const char *argv[2] = { "SELECT", db };
        size_t lens[2] = { 6, (size_t)snprintf(db, sizeof db, "%d", r->db) };
        ok = send_raw(r, 2, argv, lens, on_setup, r) == 0;
    }
    const char *ping[1] = { "PING" };
    size_t plen[1] = { 4 };
    if (!ok || send_raw(r, 1, ping, plen, on_ready, r) != 0) drop(r, "out of memory");
}

/* A stalled Redis: commands wait and no reply came for reply_timeout. The
 * connection is dropped, so they fail (with the caller's texts) rather than
 * hang; -1, or the ms until the next check. */
static long check_stall(ms_redis *r) {
    if (r->reply_timeout <= 0 || r->waiting == 0 || r->closing) return -1;
    double left = r->last_progress + r->reply_timeout - ms_loop_now();
    if (left > 0) return (long)left + 1;
    drop(r, "Redis did not answer in time");
    return 1;  /* the reconnection is planned now */
}

/* The loop's prepare source: fails stalled commands, reconnects when due. */
static long prepare(void *ud) {
    ms_redis *r = ud;
    if (r->ac) return check_stall(r);
    if (r->closing || r->next_attempt == 0) return -1;
    double left = r->next_attempt - ms_loop_now();
    if (left > 0) return (long)left + 1;
    connect_now(r);
    return r->next_attempt ? (long)r->backoff : -1;
}

/* ---- API ---- */

static char *dup_or_null(const char *s) {
    return s ? strdup(s) : NULL;
}

ms_redis *ms_redis_new(ms_loop *loop, const ms_redis_opts *o) {
    ms_redis *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->loop = loop;
    r->fd = -1;
    r->host = strdup(o->host);
    r->password = dup_or_null(o->password);
    if (r->host == NULL || (o->password && r->password == NULL) || ms_loop_add_prepare(loop, prepare, r) != 0) {
        free(r->host);
        free(r->password);
        free(r);
        return NULL;
    }
    r->port = o->port;
    r->db = o->db;
    r->max_reply = o->max_reply;
    r->on_state = o->on_state;
    r->on_message = o->on_message;
    r->ud = o->ud;
    r->backoff = BACKOFF_MIN_MS;
    set_err(r, "not connected to Redis yet");
    connect_now(r);
    return r;
}

void ms_redis_free(ms_redis *r) {
    if (r == NULL || r->closing) return;
    r->closing = 1;
    ms_loop_remove_prepare(r->loop, prepare, r);
    channel *c, *tmp;
    HASH_ITER(hh, r->channels, c, tmp) {
        HASH_DEL(r->channels, c);
        free(c->name);
        free(c);
    }
    free(r->host);
    free(r->password);
    r->host = r->password = NULL;
    if (r->ac) redisAsyncFree(r->ac);  /* ev_cleanup frees r (maybe later, when inside a callback) */
    else free(r);
}

unsigned long ms_redis_ups(const ms_redis *r) {
    return r->ups;
}

int ms_redis_up(const ms_redis *r) {
    return r->up;
}

const char *ms_redis_error(const ms_redis *r) {
    return r->up ? "" : r->err;
}

void ms_redis_set_reply_timeout(ms_redis *r, double timeout_ms) {
    r->reply_timeout = timeout_ms;
}

size_t ms_redis_waiting(const ms_redis *r) {
    return r->waiting;
}

int ms_redis_command(ms_redis *r, int argc, const char **argv, const size_t *argvlen, ms_redis_reply_fn fn,
                     void *ud, const char **err) {
    if (r->closing || !r->up || r->ac == NULL) {
        *err = r->closing ? "closed" : r->err;
        return -1;
    }
    if (send_raw(r, argc, argv, argvlen, fn, ud) != 0) {
        *err = "out of memory";
        return -1;
    }
    return 0;
}

void ms_redis_settle(ms_redis *r, double timeout_ms) {
    double deadline = ms_loop_now() + timeout_ms;
    while (r->ac && r->waiting > 0) {
        double left = deadline - ms_loop_now();
        if (left <= 0) {
            drop(r, "Redis did not answer in time");
            return;
        }
        struct pollfd pfd = { r->fd, 0, 0 };
        if (r->events & EPOLLIN) pfd.events |= POLLIN;
        if (r->events & EPOLLOUT) pfd.events |= POLLOUT;
        int n = poll(&pfd, 1, (int)left + 1);
        if (n < 0 && errno != EINTR) {
            drop(r, strerror(errno));
            return;
        }
        if (n <= 0) continue;
        uint32_t ev = 0;
        if (pfd.revents & POLLIN) ev |= EPOLLIN;
        if (pfd.revents & POLLOUT) ev |= EPOLLOUT;
        if (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)) ev |= EPOLLERR;
        io_ready(r, r->fd, ev);
    }
}

int ms_redis_subscribe(ms_redis *r, const char *name, size_t len) {
    channel *c;
    HASH_FIND(hh, r->channels, name, len, c);
    if (c) return 0;
    if ((c = calloc(1, sizeof *c)) == NULL || (c->name = malloc(len + 1)) == NULL) {
        free(c);
        return -1;
    }
    memcpy(c->name, name, len);
    c->name[len] = '\0';
    c->len = len;
    HASH_ADD_KEYPTR(hh, r->channels, c->name, c->len, c);
    if (c->hh.tbl == NULL) {
        free(c->name);
        free(c);
        return -1;
    }
    if (r->up && r->ac) send_subscribe(r, "SUBSCRIBE", name, len);  /* else on the next connection */
    return 0;
}

int ms_redis_unsubscribe(ms_redis *r, const char *name, size_t len) {
    channel *c;
    HASH_FIND(hh, r->channels, name, len, c);
    if (c == NULL) return 0;
    HASH_DEL(r->channels, c);
    free(c->name);
    free(c);
    if (r->up && r->ac) send_subscribe(r, "UNSUBSCRIBE", name, len);
    return 0;
}

int ms_redis_publish_event(ms_redis *r, const char *node, size_t nlen, const char *uid, size_t ulen,
                           const char *name, size_t namelen, const char *data, size_t dlen, const char **err) {
    ms_jbuf chan = { 0 }, msg = { 0 };
    int ok = ms_jbuf_put(&chan, MS_REDIS_EVENT_PREFIX, sizeof MS_REDIS_EVENT_PREFIX - 1)
             && ms_jbuf_put(&chan, name, namelen) && ms_jbuf_reserve(&msg, nlen + ulen + dlen + 2)
             && ms_jbuf_put(&msg, node, nlen) && ms_jbuf_put(&msg, "\n", 1) && ms_jbuf_put(&msg, uid, ulen)
             && ms_jbuf_put(&msg, "\n", 1) && (dlen == 0 || ms_jbuf_put(&msg, data, dlen));
    int rc = -1;
    if (!ok) *err = "out of memory";
    else {
        /* hiredis copies the arguments into its output buffer: the buffers go at once */
        const char *argv[3] = { "PUBLISH", chan.data, msg.data ? msg.data : "" };
        size_t lens[3] = { 7, chan.len, msg.len };
        rc = ms_redis_command(r, 3, argv, lens, NULL, NULL, err);
    }
    ms_jbuf_free(&chan);
    ms_jbuf_free(&msg);
    return rc;
}

int ms_redis_event_parse(const char *msg, size_t len, ms_redis_event *out) {
    const char *a = memchr(msg, '\n', len);
    const char *b = a ? memchr(a + 1, '\n', len - (size_t)(a + 1 - msg)) : NULL;
    if (b == NULL) return 0;
    out->node = msg;
    out->nlen = (size_t)(a - msg);
    out->uid = a + 1;
    out->ulen = (size_t)(b - a - 1);
    out->dlen = len - (size_t)(b + 1 - msg);
    out->data = out->dlen ? b + 1 : NULL;
    return 1;
}
