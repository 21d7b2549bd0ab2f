/* redisstore: the record engine's storage seam (recstore.h) over Redis, for
 * the cluster mode: every node's engine reads and writes the same records.
 *
 * A record is the hash "ms:r:<name>" with fields v (the version, as decimal
 * text) and d (the JSON text). A put is one server-side script: it compares
 * the stored version with the expected one, sets both fields and publishes
 * "<version> <text>" on the record's channel "ms:c:r:<name>", so two nodes
 * can never both write version N+1, and subscribers learn of every change in
 * the order Redis applied them. A remove deletes and publishes "-1". Versions
 * are compared as text (Redis' Lua numbers are doubles).
 *
 * The put script's text (about half of a write's bytes) goes with the
 * first put of each connection (EVAL, which caches it in Redis); the puts
 * after it call it by its SHA1 (EVALSHA), pipelined behind it: Redis runs a
 * connection's commands in order. A Redis restart means a new connection,
 * so it is sent again; a NOSCRIPT all the same (SCRIPT FLUSH, a failover)
 * resends that put with EVAL, so the write does not fail.
 *
 * A put is acknowledged when Redis answered it: with `appendfsync always`
 * Redis wrote it to its AOF with fsync before answering, so after_flush has
 * nothing more to wait for. The connection (redis.c) is one the store owns
 * alone, so many commands (of many requests) are in flight on it at once,
 * pipelined, answered from the loop; a Redis that stops answering for the
 * store's timeout drops the connection, and every waiting command fails with
 * the engine's storage texts. settle() runs that connection's I/O and
 * nothing else: for shutdown draining and the Lua commands that still
 * wait (engine_lua.c). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "core.h"
#include "jbuf.h"
#include "redis.h"
#include "redisstore.h"

#define RSTORE_MT "moonstream.RedisRecords"
#define UV_CONN 1
#define KEY_PREFIX "ms:r:"
#define CHANNEL_PREFIX "ms:c:r:"

static const char PUT_SCRIPT[] =
    "local v = redis.call('HGET', KEYS[1], 'v')\n"
    "if (v or '-1') ~= ARGV[1] then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])\n"
    "redis.call('PUBLISH', ARGV[4], ARGV[2] .. ' ' .. ARGV[3])\n"
    "return 1\n";

static const char REMOVE_SCRIPT[] =
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('PUBLISH', ARGV[1], '-1')\n"
    "return 1\n";

struct ms_redisstore {
    ms_redis *const *conn;     /* the connection's slot: NULL once it is closed */
    unsigned long loaded;      /* ms_redis_ups() when PUT_SCRIPT was loaded, 0: not yet */
    double timeout_ms;
    size_t writes;             /* puts and removes not answered yet */
    unsigned long long acked;  /* writes Redis answered (stats) */
    int closed;
    ms_jbuf key, chan;         /* scratch names */
};

typedef struct op {
    ms_redisstore *s;
    union { ms_rec_got_fn got; ms_rec_done_fn done; } fn;
    void *ud;
    const char *name;          /* get: for the corrupt-entry text */
    size_t nlen;
    char *args;                /* put: key, expect, version, text, channel (for a NOSCRIPT's retry) */
    size_t lens[5];
} op;

static char put_sha[41];       /* PUT_SCRIPT's SHA1 in hex, as Redis names it */

/* Once per process: a constant of a constant. 0 when libcrypto failed. */
static int put_sha_ready(void) {
    if (put_sha[0]) return 1;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(PUT_SCRIPT, sizeof PUT_SCRIPT - 1, md, &n, EVP_sha1(), NULL) || n != 20) return 0;
    for (unsigned int i = 0; i < n; i++) snprintf(put_sha + 2 * i, 3, "%02x", md[i]);
    return 1;
}

/* ---- names ---- */

/* "<prefix><name>" into b; 0 when out of memory. */
static int make_name(ms_jbuf *b, const char *prefix, const char *name, size_t nlen) {
    b->len = 0;
    return ms_jbuf_put(b, prefix, strlen(prefix)) && ms_jbuf_put(b, name, nlen);
}

static ms_redis *conn_of(ms_redisstore *s, const char **err) {
    ms_redis *r = s->closed ? NULL : *s->conn;
    if (r == NULL) *err = "the record store is closed";
    return r;
}

static op *new_op(ms_redisstore *s, void *ud) {
    op *o = calloc(1, sizeof *o);
    if (o) {
        o->s = s;
        o->ud = ud;
    }
    return o;
}

/* ---- get ---- */

static int parse_version(const char *str, size_t len, long long *out) {
    if (len == 0 || len > 19) return 0;
    long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (str[i] < '0' || str[i] > '9') return 0;
        int d = str[i] - '0';
        if (v > (LLONG_MAX - d) / 10) return 0;  /* 19 digits can pass LLONG_MAX: a corrupt entry, not overflow */
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static void got_reply(void *ud, redisReply *reply, const char *err) {
    op *o = ud;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        o->fn.got(o->ud, MS_REC_FAILED, 0, NULL, 0, reply ? reply->str : err);
    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        o->fn.got(o->ud, MS_REC_FAILED, 0, NULL, 0, "unexpected reply from Redis");
    } else if (reply->element[0]->type != REDIS_REPLY_STRING) {
        o->fn.got(o->ud, MS_REC_MISSING, 0, NULL, 0, NULL);
    } else {
        redisReply *v = reply->element[0], *d = reply->element[1];
        long long version;
        if (d->type != REDIS_REPLY_STRING || !parse_version(v->str, v->len, &version)) {
            char msg[160];
            snprintf(msg, sizeof msg, "corrupt entry for record \"%.*s\"", (int)(o->nlen > 100 ? 100 : o->nlen),
                     o->name);
            o->fn.got(o->ud, MS_REC_FAILED, 0, NULL, 0, msg);
        } else {
            o->fn.got(o->ud, MS_REC_OK, version, d->str, d->len, NULL);
        }
    }
    free(o);
}

static void rs_get(void *self, const char *name, size_t nlen, ms_rec_got_fn fn, void *ud) {
    ms_redisstore *s = self;
    const char *err;
    ms_redis *r = conn_of(s, &err);
    op *o = r ? new_op(s, ud) : NULL;
    int named = r && o && make_name(&s->key, KEY_PREFIX, name, nlen);
    if (r && !named) err = "out of memory";
    if (named) {
        o->fn.got = fn;
        o->name = name;  /* valid until the command is done (engine.h) */
        o->nlen = nlen;
        const char *argv[4] = { "HMGET", s->key.data, "v", "d" };
        size_t lens[4] = { 5, s->key.len, 1, 1 };
        if (ms_redis_command(r, 4, argv, lens, got_reply, o, &err) == 0) return;
    }
    free(o);
    fn(ud, MS_REC_FAILED, 0, NULL, 0, err);
}

/* ---- put, remove, durability ---- */

static int resend_put(op *o, const char **err);

static void done_reply(void *ud, redisReply *reply, const char *err) {
    op *o = ud;
    ms_redisstore *s = o->s;
    if (reply && reply->type == REDIS_REPLY_ERROR && o->args && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        int sent = resend_put(o, &err) == 0;  /* the same write, with the script's text (hiredis copied it) */
        free(o->args);
        o->args = NULL;                       /* once: a Redis answering NOSCRIPT to the EVAL too fails the put */
        if (sent) return;
        reply = NULL;
    }
    s->writes--;
    free(o->args);
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        o->fn.done(o->ud, MS_REC_FAILED, reply ? reply->str : err);
    } else {
        s->acked++;
        o->fn.done(o->ud, reply->type == REDIS_REPLY_INTEGER && reply->integer == 0 ? MS_REC_MISSING : MS_REC_OK,
                   NULL);
    }
    free(o);
}

/* Sends a script; on failure fn runs with the reason. o: the put's (its
 * args kept), or NULL. */
static void write_cmd(ms_redisstore *s, op *o, int argc, const char **argv, size_t *lens, ms_rec_done_fn fn,
                      void *ud) {
    const char *err;
    ms_redis *r = conn_of(s, &err);
    if (o == NULL && r) o = new_op(s, ud);
    if (r && o == NULL) err = "out of memory";
    if (r && o) {
        o->fn.done = fn;
        s->writes++;
        if (ms_redis_command(r, argc, argv, lens, done_reply, o, &err) == 0) return;
        s->writes--;
    }
    if (o) free(o->args);
    free(o);
    fn(ud, MS_REC_FAILED, err);
}

/* The put's arguments, kept for a NOSCRIPT's retry: argv[3..7] point into them. */
static op *put_op(ms_redisstore *s, void *ud, const char **argv, const size_t *lens) {
    op *o = new_op(s, ud);
    size_t total = 0;
    for (int i = 0; i < 5; i++) total += lens[3 + i];
    char *args = o ? malloc(total ? total : 1) : NULL;
    if (args == NULL) {
        free(o);
        return NULL;
    }
    o->args = args;
    for (int i = 0; i < 5; i++) {
        memcpy(args, argv[3 + i], lens[3 + i]);
        o->lens[i] = lens[3 + i];
        args += lens[3 + i];
    }
    return o;
}

/* The put again, as EVAL (which loads the script for the puts after it). */
static int resend_put(op *o, const char **err) {
    ms_redis *r = conn_of(o->s, err);
    if (r == NULL) return -1;
    const char *argv[8] = { "EVAL", PUT_SCRIPT, "1" };
    size_t lens[8] = { 4, sizeof PUT_SCRIPT - 1, 1 };
    const char *at = o->args;
    for (int i = 0; i < 5; i++) {
        argv[3 + i] = at;
        lens[3 + i] = o->lens[i];
        at += o->lens[i];
    }
    return ms_redis_command(r, 8, argv, lens, done_reply, o, err);
}

/* Whether this put must carry the script's text: the first on each
 * connection does (EVAL caches it in Redis, and the EVALSHAs pipelined
 * behind it find it there). Not SCRIPT LOAD: Redis writes the replies of
 * commands run together in an order that would let the put's own change
 * message reach this node before the put's answer. */
static int first_put(ms_redisstore *s) {
    const char *err;
    ms_redis *r = conn_of(s, &err);
    if (r == NULL || s->loaded == ms_redis_ups(r)) return 0;
    s->loaded = ms_redis_ups(r);
    return 1;
}

static void rs_put(void *self, const char *name, size_t nlen, long long expect, long long version, const char *text,
                   size_t tlen, ms_rec_done_fn fn, void *ud) {
    ms_redisstore *s = self;
    if (!make_name(&s->key, KEY_PREFIX, name, nlen) || !make_name(&s->chan, CHANNEL_PREFIX, name, nlen) ||
        !put_sha_ready()) {
        fn(ud, MS_REC_FAILED, "out of memory");
        return;
    }
    char exp[24], ver[24];
    const char *argv[8] = { "EVALSHA", put_sha, "1", s->key.data, exp, ver, text, s->chan.data };
    size_t lens[8] = { 7, 40, 1, s->key.len, (size_t)snprintf(exp, sizeof exp, "%lld", expect),
                       (size_t)snprintf(ver, sizeof ver, "%lld", version), tlen, s->chan.len };
    op *o = put_op(s, ud, argv, lens);
    if (o == NULL) {
        fn(ud, MS_REC_FAILED, "out of memory");
        return;
    }
    if (first_put(s)) {
        argv[0] = "EVAL";
        lens[0] = 4;
        argv[1] = PUT_SCRIPT;
        lens[1] = sizeof PUT_SCRIPT - 1;
    }
    write_cmd(s, o, 8, argv, lens, fn, ud);
}

static void rs_remove(void *self, const char *name, size_t nlen, ms_rec_done_fn fn, void *ud) {
    ms_redisstore *s = self;
    if (!make_name(&s->key, KEY_PREFIX, name, nlen) || !make_name(&s->chan, CHANNEL_PREFIX, name, nlen)) {
        fn(ud, MS_REC_FAILED, "out of memory");
        return;
    }
    const char *argv[5] = { "EVAL", REMOVE_SCRIPT, "1", s->key.data, s->chan.data };
    size_t lens[5] = { 4, sizeof REMOVE_SCRIPT - 1, 1, s->key.len, s->chan.len };
    write_cmd(s, NULL, 5, argv, lens, fn, ud);
}

/* Redis answered every write already (appendfsync always: on disk). */
static int rs_after_flush(void *self, ms_rec_durable_fn fn, void *ud) {
    fn(ud, 1, NULL);
    return 0;
}

static int rs_has_pending(void *self) {
    return ((ms_redisstore *)self)->writes > 0;
}

/* Commands of any kind not answered yet. */
static size_t rs_waiting(ms_redisstore *s) {
    const char *err;
    ms_redis *r = conn_of(s, &err);
    return r ? ms_redis_waiting(r) : 0;
}

static void rs_settle(void *self) {
    ms_redisstore *s = self;
    const char *err;
    ms_redis *r = conn_of(s, &err);
    if (r) ms_redis_settle(r, s->timeout_ms);
}

/* ---- iterate: SCAN with the prefix as a pattern, then one HMGET per key ---- */

typedef struct scan_state {
    ms_redisstore *s;
    ms_rec_each_fn fn;
    void *ud;
    int stop;
    char *err;
    char cursor[32];
} scan_state;

typedef struct each_op {
    scan_state *st;
    char *name;
    size_t nlen;
} each_op;

static void each_reply(void *ud, int status, long long version, const char *text, size_t len, const char *err) {
    each_op *e = ud;
    scan_state *st = e->st;
    if (status == MS_REC_FAILED && st->err == NULL && strncmp(err, "corrupt", 7) != 0) st->err = strdup(err);
    if (status == MS_REC_OK && !st->stop && !st->fn(st->ud, e->name, e->nlen, version, text, len)) st->stop = 1;
    free(e->name);
    free(e);
}

static void scan_reply(void *ud, redisReply *reply, const char *err) {
    scan_state *st = ud;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING || reply->element[0]->len >= sizeof st->cursor ||
        reply->element[1]->type != REDIS_REPLY_ARRAY) {
        st->err = strdup(reply && reply->type == REDIS_REPLY_ERROR ? reply->str : err ? err : "bad SCAN reply");
        return;
    }
    memcpy(st->cursor, reply->element[0]->str, reply->element[0]->len + 1);  /* len checked above */
    redisReply *keys = reply->element[1];
    size_t plen = sizeof KEY_PREFIX - 1;
    for (size_t i = 0; i < keys->elements && st->err == NULL; i++) {
        redisReply *k = keys->element[i];
        if (k->type != REDIS_REPLY_STRING || k->len < plen) continue;
        each_op *e = calloc(1, sizeof *e);
        if (e == NULL || (e->name = malloc(k->len - plen + 1)) == NULL) {
            free(e);
            st->err = strdup("out of memory");
            return;
        }
        e->st = st;
        e->nlen = k->len - plen;
        memcpy(e->name, k->str + plen, e->nlen);
        rs_get(st->s, e->name, e->nlen, each_reply, e);
    }
}

static int rs_iterate(void *self, const char *prefix, size_t plen, ms_rec_each_fn fn, void *ud, char **errp) {
    ms_redisstore *s = self;
    scan_state st = { s, fn, ud, 0, NULL, "0" };
    /* the pattern: the key prefix, the name prefix with glob characters escaped, then * */
    size_t cap = sizeof KEY_PREFIX + 2 * plen + 2, n = 0;
    char *pat = malloc(cap);
    if (pat == NULL) {
        *errp = strdup("out of memory");
        return -1;
    }
    n = (size_t)snprintf(pat, cap, "%s", KEY_PREFIX);
    for (size_t i = 0; i < plen; i++) {
        if (strchr("*?[]\\", prefix[i]) && prefix[i]) pat[n++] = '\\';
        pat[n++] = prefix[i];
    }
    pat[n++] = '*';
    do {
        const char *err;
        ms_redis *r = conn_of(s, &err);
        const char *argv[6] = { "SCAN", st.cursor, "MATCH", pat, "COUNT", "512" };
        size_t lens[6] = { 4, strlen(st.cursor), 5, n, 5, 3 };
        if (r == NULL || ms_redis_command(r, 6, argv, lens, scan_reply, &st, &err) != 0) {
            st.err = strdup(err);
            break;
        }
        ms_redis_settle(r, s->timeout_ms);  /* the SCAN, then the HMGETs its reply sent */
    } while (st.err == NULL && !st.stop && strcmp(st.cursor, "0") != 0);
    free(pat);
    *errp = st.err;
    return st.err ? -1 : 0;
}

static const ms_recstore_ops rs_ops = {
    rs_get, rs_put, rs_remove, rs_after_flush, rs_has_pending, rs_iterate, 0, rs_settle
};

/* ---- Lua API ---- */

ms_redisstore *ms_redisstore_test(lua_State *L, int idx, ms_recstore *out) {
    ms_redisstore *s = luaL_testudata(L, idx, RSTORE_MT);
    if (s == NULL) return NULL;
    if (s->closed) luaL_error(L, "attempt to use a closed record store");
    out->ops = &rs_ops;
    out->self = s;
    return s;
}

static ms_redisstore *check(lua_State *L) {
    ms_redisstore *s = luaL_checkudata(L, 1, RSTORE_MT);
    if (s->closed) luaL_error(L, "attempt to use a closed record store");
    return s;
}

/* core.redis_records(conn, { timeout = ms }) -> store. conn: a core.redis
 * connection used by this store alone. */
static int rstore_new(lua_State *L) {
    ms_redis *const *slot = ms_redis_slot_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "timeout");
    lua_Integer timeout = luaL_checkinteger(L, -1);
    luaL_argcheck(L, timeout > 0, 2, "opts.timeout must be positive");
    lua_pop(L, 1);
    ms_redisstore *s = lua_newuserdatauv(L, sizeof *s, 1);
    memset(s, 0, sizeof *s);
    s->conn = slot;
    s->timeout_ms = (double)timeout;
    ms_redis_set_reply_timeout(*slot, s->timeout_ms);  /* requests wait for the loop: bound them there */
    luaL_setmetatable(L, RSTORE_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, UV_CONN);  /* the connection outlives the store */
    return 1;
}

static int rstore_has_pending(lua_State *L) {
    lua_pushboolean(L, rs_has_pending(check(L)));
    return 1;
}

/* after_flush(fn): fn(true). A write's command is done (its request goes
 * on) only once Redis answered it: durable already. */
static int rstore_after_flush(lua_State *L) {
    check(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_pushboolean(L, 1);
    lua_call(L, 1, 0);
    return 0;
}

/* Nothing gathers here: each write goes to Redis at once. */
static int rstore_false(lua_State *L) {
    check(L);
    lua_pushboolean(L, 0);
    return 1;
}

/* waiting(), in_flight(): commands not answered yet (records.lua's drain
 * runs the loop until there are none). */
static int rstore_waiting(lua_State *L) {
    lua_pushboolean(L, rs_waiting(check(L)) > 0);
    return 1;
}

static int rstore_syncs(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)check(L)->acked);
    return 1;
}

static int rstore_close(lua_State *L) {
    ms_redisstore *s = luaL_checkudata(L, 1, RSTORE_MT);
    if (s->closed) return 0;
    if (rs_waiting(s) > 0) rs_settle(s);  /* nothing stays in flight with a pointer to s */
    s->closed = 1;
    ms_jbuf_free(&s->key);
    ms_jbuf_free(&s->chan);
    return 0;
}

static const luaL_Reg rstore_meth[] = {
    {"has_pending", rstore_has_pending},
    {"after_flush", rstore_after_flush},
    {"flush", rstore_false},
    {"waiting", rstore_waiting},
    {"in_flight", rstore_waiting},
    {"syncs", rstore_syncs},
    {"close", rstore_close},
    {NULL, NULL}
};

static const luaL_Reg rstore_metameth[] = {
    {"__gc", rstore_close},
    {"__close", rstore_close},
    {"__index", NULL},
    {NULL, NULL}
};

void ms_redisstore_open(lua_State *L) {
    ms_createmeta(L, RSTORE_MT, rstore_meth, rstore_metameth);
    lua_pushcfunction(L, rstore_new);
    lua_setfield(L, -2, "redis_records");
    lua_pushliteral(L, CHANNEL_PREFIX);
    lua_setfield(L, -2, "redis_record_channel_prefix");
    lua_pushliteral(L, KEY_PREFIX);
    lua_setfield(L, -2, "redis_record_key_prefix");
}
