/* records: versioned record values over the store, with group commit.
 *
 * A stored value is "<version> <json>" under the key "r/<name>". Changes made
 * while the loop serves one iteration live in an overlay (name -> newest
 * version and text, or deleted) that every read consults; flush() (called by
 * the server once per loop iteration) turns it into one LevelDB write batch,
 * one put or delete per record however often it changed, and writes it with
 * one sync; only then are the requests that changed (or saw unsynced) data
 * answered, through after_flush callbacks.
 *
 * With a loop the synced write runs on the store's writer thread while the
 * loop keeps serving: the next group gathers in a second overlay meanwhile
 * (double buffering) and goes to the writer as soon as the first is on disk,
 * before the first group's requests are answered (on_written).
 * Without a loop flush writes at once.
 *
 * This is the LevelDB implementation of the record engine's storage seam
 * (recstore.h): engine.c, the one home of the record commands, reaches it
 * only through ms_records_seam. The key prefix "r/" and the stored value's
 * format are known here and nowhere else. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <leveldb/c.h>

#include "core.h"
#include "json.h"
#include "loop.h"
#include "recmap.h"
#include "records.h"
#include "metrics.h"
#include "recstore.h"
#include "store.h"

#define RECORDS_MT "moonstream.Records"
#define KEY_PREFIX "r/"
#define KEY_PREFIX_LEN 2

/* user values of the records userdata */
#define UV_STORE 1
#define UV_LOOP 2
#define UV_ON_ERROR 3

/* A record's state as read: text is valid until the next change to the
 * records (or until record_release when it is owned). */
typedef struct ms_record {
    long long version;
    const char *text;
    size_t len;
    char *owned;
} ms_record;


typedef struct rec_waiter {
    ms_rec_durable_fn fn;  /* NULL: a Lua function, ref */
    void *ud;
    int ref;
} rec_waiter;

typedef struct rec_waiters {
    rec_waiter *items;
    size_t n, cap;
} rec_waiters;

struct ms_records {
    lua_State *L;                /* main thread */
    ms_store *store;
    ms_loop *loop;               /* NULL: flush writes synchronously */
    int sync;
    ms_recmap pending;           /* the group gathering */
    ms_recmap inflight;          /* the group being written */
    leveldb_writebatch_t *batch, *spare, *writing;  /* filled at flush; a spare; the one being written */
    int dirty, flying, gone;
    rec_waiters waiters;         /* to wake after the next write */
    rec_waiters flying_waiters;  /* to wake when the write in flight returns */
    lua_Integer syncs;
    int on_error_ref;            /* function(err) that logs a failed write */
    ms_jbuf scratch;             /* keys and values being built */
    /* the last get's answer, while no change came after it: a put's version
     * check after the engine's get needs no second lookup */
    ms_jbuf seen_name;
    long long seen_version;      /* -1: missing */
    int seen_valid;
};

/* ---- overlay ---- */

/* r->scratch = "r/" .. name; 0 or -1 out of memory */
static int build_key(ms_records *r, const char *name, size_t nlen) {
    r->scratch.len = 0;
    return ms_jbuf_put(&r->scratch, KEY_PREFIX, KEY_PREFIX_LEN) && ms_jbuf_put(&r->scratch, name, nlen) ? 0 : -1;
}

/* ---- C API ---- */

ms_records *ms_records_check(lua_State *L, int idx) {
    ms_records *r = luaL_checkudata(L, idx, RECORDS_MT);
    if (r->gone) luaL_error(L, "attempt to use closed records");
    return r;
}

/* Parses a stored "<version> <json>" value; versions start at 1, so a
 * negative one is as corrupt as a missing one. */
static int parse_stored(const char *v, size_t vlen, ms_record *out) {
    const char *sp = memchr(v, ' ', vlen);
    if (sp == NULL || !ms_json_integer(v, (size_t)(sp - v), &out->version) || out->version < 0) return 0;
    out->text = sp + 1;
    out->len = vlen - (size_t)(sp + 1 - v);
    return 1;
}

static int records_lookup(ms_records *r, const char *name, size_t nlen, ms_record *out, char **err) {
    *err = NULL;
    out->owned = NULL;
    ms_recmap_entry *e = ms_recmap_find(&r->pending, name, nlen);
    if (e == NULL) e = ms_recmap_find(&r->inflight, name, nlen);
    if (e != NULL) {
        if (e->text == NULL) return 0;
        out->version = e->version;
        out->text = e->text;
        out->len = e->tlen;
        return 1;
    }
    if (build_key(r, name, nlen) != 0) {
        *err = strdup("out of memory");
        return -1;
    }
    size_t vlen = 0;
    char *v = ms_store_get(r->store, r->scratch.data, r->scratch.len, &vlen, err);
    if (v == NULL) return *err ? -1 : 0;
    out->owned = v;
    if (!parse_stored(v, vlen, out)) {
        leveldb_free(v);
        out->owned = NULL;
        size_t n = nlen + 40;
        if ((*err = malloc(n)) != NULL) snprintf(*err, n, "corrupt entry for record \"%.*s\"", (int)nlen, name);
        return -1;
    }
    return 1;
}

static void record_release(ms_record *rec) {
    if (rec->owned) leveldb_free(rec->owned);
    rec->owned = NULL;
}

/* A change goes into the overlay only: the group's LevelDB batch is built
 * from the overlay at flush (fill_batch), so many changes of one record in a
 * group cost one put (or delete) of its newest state, not one per change. */
static int records_queue_put(ms_records *r, const char *name, size_t nlen, long long version,
                   const char *text, size_t tlen) {
    r->seen_valid = 0;
    if (ms_recmap_set(&r->pending, name, nlen, version, text, tlen) != 0) return -1;
    r->dirty = 1;
    ms_metrics_record_written();
    return 0;
}

static int records_queue_remove(ms_records *r, const char *name, size_t nlen) {
    r->seen_valid = 0;
    if (ms_recmap_set(&r->pending, name, nlen, 0, NULL, 0) != 0) return -1;
    r->dirty = 1;
    ms_metrics_record_deleted();
    return 0;
}

/* r->batch = one put ("<version> <json>") or delete per record of the
 * pending overlay. 0, or -1 out of memory (the batch is then cleared). */
static int fill_batch(ms_records *r) {
    ms_recmap_entry *e, *tmp;
    HASH_ITER(hh, r->pending.head, e, tmp) {
        if (build_key(r, e->name, e->nlen) != 0) goto oom;
        size_t klen = r->scratch.len;
        if (e->text == NULL) {
            leveldb_writebatch_delete(r->batch, r->scratch.data, klen);
            continue;
        }
        char num[24];
        int n = snprintf(num, sizeof num, "%lld ", e->version);
        if (!ms_jbuf_put(&r->scratch, num, (size_t)n) || !ms_jbuf_put(&r->scratch, e->text, e->tlen)) goto oom;
        leveldb_writebatch_put(r->batch, r->scratch.data, klen, r->scratch.data + klen, r->scratch.len - klen);
    }
    return 0;
oom:
    leveldb_writebatch_clear(r->batch);
    return -1;
}

static int records_pending(const ms_records *r) {
    return r->dirty || r->flying;
}

static int waiters_add(rec_waiters *w, ms_rec_durable_fn fn, void *ud, int ref) {
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        rec_waiter *items = realloc(w->items, cap * sizeof *items);
        if (items == NULL) return -1;
        w->items = items;
        w->cap = cap;
    }
    w->items[w->n++] = (rec_waiter){ fn, ud, ref };
    return 0;
}

/* Where a waiter for "every change so far" goes: with nothing gathered since
 * the group in flight left, that group holds every unsynced change, so its
 * return is enough (a read of its data waits for one sync, not two). */
static rec_waiters *waiters_now(ms_records *r) {
    return !r->dirty && r->flying ? &r->flying_waiters : &r->waiters;
}

static int records_add_waiter(ms_records *r, ms_rec_durable_fn fn, void *ud) {
    return waiters_add(waiters_now(r), fn, ud, LUA_NOREF);
}

/* ---- group commit ---- */

/* LevelDB names the file that failed ("IO error: /srv/data/000003.log: No
 * space left on device"); clients get the text without paths (the Lua
 * pattern "/[^%s:]*: " removed). Returns a malloc'd copy or NULL. */
/* Writes the public text of err to out (strlen(err) + 1 bytes); its length. */
static size_t public_error_into(const char *err, char *out) {
    size_t len = strlen(err);
    char *o = out;
    for (size_t i = 0; i < len;) {
        if (err[i] == '/') {
            size_t j = i + 1;
            while (j < len && err[j] != ':' && err[j] != ' ' && (err[j] < '\t' || err[j] > '\r')) j++;
            if (j + 1 < len && err[j] == ':' && err[j + 1] == ' ') {
                i = j + 2;
                continue;
            }
        }
        *o++ = err[i++];
    }
    *o = '\0';
    return (size_t)(o - out);
}

/* A storage error as clients may see it: without the file paths LevelDB
 * puts in its messages. malloc'd (NULL when out of memory). */
static char *records_public_error(const char *err) {
    char *out = malloc(strlen(err) + 1);
    if (out) public_error_into(err, out);
    return out;
}

/* Wakes a group's waiters: status 1 (on disk), 0 (failed: err), -1 (gone). */
/* Calls the Lua function ref with (true) or (nil, err): err NULL for true. */
typedef struct call_args {
    int ref;
    const char *err;
} call_args;

static int call_tramp(lua_State *L) {
    call_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref);
    if (a->err == NULL) {
        lua_pushboolean(L, 1);
        lua_call(L, 1, 0);
    } else {
        lua_pushnil(L);
        lua_pushstring(L, a->err);
        lua_call(L, 2, 0);
    }
    return 0;
}

/* Runs on the loop when a write returned: every push happens inside
 * ms_pcall (call_tramp), so a memory error cannot unwind through here. */
static void call_lua(lua_State *L, int ref, const char *err) {
    call_args a = { ref, err };
    if (!lua_checkstack(L, 3)) return;
    lua_pushcfunction(L, call_tramp);
    lua_pushlightuserdata(L, &a);
    ms_pcall(L, 1, 0);
}

static void wake(ms_records *r, rec_waiters *w, int status, const char *raw_err) {
    lua_State *L = r->L;
    char *err = NULL;
    if (status == 0) {
        /* the server logs the full text (on_error(nil, err)); clients see it without paths */
        if (r->on_error_ref != LUA_NOREF) call_lua(L, r->on_error_ref, raw_err);
        err = records_public_error(raw_err);
    }
    const char *perr = err ? err : "storage error";
    for (size_t i = 0; i < w->n; i++) {
        rec_waiter *it = &w->items[i];
        if (it->fn != NULL) {
            it->fn(it->ud, status, perr);
        } else {
            if (status >= 0) call_lua(L, it->ref, status == 1 ? NULL : perr);
            luaL_unref(L, LUA_REGISTRYINDEX, it->ref);
        }
    }
    free(err);
    free(w->items);
    *w = (rec_waiters){ NULL, 0, 0 };
}

/* Takes the group gathered so far: its waiters into *w, its batch filled
 * from the pending overlay. 1: there is a batch to write (r->batch); 0: all
 * was answered (no change to write, or out of memory: failed as a write). */
static int take_group(ms_records *r, rec_waiters *w) {
    *w = r->waiters;
    r->waiters = (rec_waiters){ NULL, 0, 0 };
    if (!r->dirty) {  /* waiters that only saw data now on disk */
        wake(r, w, 1, NULL);
        return 0;
    }
    r->syncs++;
    r->dirty = 0;
    ms_metrics_group_commit(HASH_COUNT(r->pending.head));
    if (fill_batch(r) == 0) return 1;
    r->seen_valid = 0;
    ms_recmap_clear(&r->pending);
    wake(r, w, 0, "out of memory");
    return 0;
}

/* The taken group becomes the one in flight (its overlay stays readable);
 * returns its batch, which the caller hands to the writer thread. */
static leveldb_writebatch_t *begin_flight(ms_records *r, rec_waiters w) {
    leveldb_writebatch_t *next = r->spare ? r->spare : leveldb_writebatch_create();
    r->spare = NULL;
    r->inflight = r->pending;
    r->pending.head = NULL;
    r->writing = r->batch;
    r->batch = next;
    r->flying = 1;
    r->flying_waiters = w;
    return r->writing;
}

static void write_failed(ms_records *r);

/* The writer thread's answer for the group in flight (on the loop thread).
 * The group gathered meanwhile goes to the writer before this one's requests
 * are answered: the disk does not wait for the answers, nor for the rest of
 * the loop iteration (flush would start it only at the iteration's end). */
static void on_written(void *ud, const char *err) {
    ms_records *r = ud;
    r->seen_valid = 0;  /* a failed group's changes are gone from the overlay */
    ms_recmap_clear(&r->inflight);
    leveldb_writebatch_clear(r->writing);
    if (r->spare == NULL) r->spare = r->writing;
    else leveldb_writebatch_destroy(r->writing);
    r->writing = NULL;
    r->flying = 0;
    rec_waiters done = r->flying_waiters;
    r->flying_waiters = (rec_waiters){ NULL, 0, 0 };
    rec_waiters w;
    if (r->dirty && !r->gone && take_group(r, &w) &&
        ms_store_write_next(r->store, begin_flight(r, w), r->sync, on_written, r) != 0)
        write_failed(r);
    wake(r, &done, err == NULL ? 1 : 0, err);
}

/* The writer did not take the group just put in flight: it fails as a
 * failed write would. */
static void write_failed(ms_records *r) {
    char msg[96];
    snprintf(msg, sizeof msg, "cannot start the storage writer: %s", strerror(errno));
    on_written(r, msg);
}

/* Writes the gathered group (see the top of the file). The records userdata
 * is at index 1. Returns 1 when it did something. */
static int flush(lua_State *L, ms_records *r) {
    if (r->flying) return 0;  /* the next group waits for this one (on_written starts it) */
    if (!r->dirty && r->waiters.n == 0) return 0;
    rec_waiters w;
    if (!take_group(r, &w)) return 1;
    if (r->loop == NULL) {  /* written now */
        r->seen_valid = 0;
        char *err = ms_store_write(r->store, r->batch, r->sync);
        leveldb_writebatch_clear(r->batch);
        ms_recmap_clear(&r->pending);
        wake(r, &w, err == NULL ? 1 : 0, err);
        free(err);
        return 1;
    }
    leveldb_writebatch_t *wb = begin_flight(r, w);
    lua_getiuservalue(L, 1, UV_STORE);
    lua_getiuservalue(L, 1, UV_LOOP);
    if (ms_store_write_async(L, lua_gettop(L) - 1, r->loop, lua_gettop(L), wb, r->sync, on_written, r) != 0)
        write_failed(r);
    lua_pop(L, 2);
    return 1;
}

/* ---- the seam (recstore.h) ---- */

#define CLOSED "the records are closed"

static void seam_get(void *self, const char *name, size_t nlen, ms_rec_got_fn fn, void *ud) {
    if (((ms_records *)self)->gone) {
        fn(ud, MS_REC_FAILED, 0, NULL, 0, CLOSED);
        return;
    }
    ms_metrics_record_read();
    ms_record rec;
    char *err = NULL;
    int found = records_lookup(self, name, nlen, &rec, &err);
    if (found < 0) {
        /* clients see the text without LevelDB's file paths */
        char *pub = err ? records_public_error(err) : NULL;
        fn(ud, MS_REC_FAILED, 0, NULL, 0, pub ? pub : "storage error");
        free(pub);
    } else {
        ms_records *r = self;
        r->seen_name.len = 0;
        r->seen_valid = ms_jbuf_put(&r->seen_name, name, nlen);
        r->seen_version = found ? rec.version : -1;
        if (found) fn(ud, MS_REC_OK, rec.version, rec.text, rec.len, NULL);
        else fn(ud, MS_REC_MISSING, 0, NULL, 0, NULL);
        if (found) record_release(&rec);
    }
    free(err);
}

/* The version check: one thread owns this store, so it never fails here,
 * but the seam promises it. Right after the engine's get of the same name
 * (the usual case) that get's answer is the current version. */
static void seam_put(void *self, const char *name, size_t nlen, long long expect, long long version,
                     const char *text, size_t tlen, ms_rec_done_fn fn, void *ud) {
    ms_records *r = self;
    if (r->gone) {
        fn(ud, MS_REC_FAILED, CLOSED);
        return;
    }
    if (r->seen_valid && nlen > 0 && r->seen_name.len == nlen && memcmp(r->seen_name.data, name, nlen) == 0) {
        if (r->seen_version != expect) fn(ud, MS_REC_MISSING, NULL);
        else if (records_queue_put(r, name, nlen, version, text, tlen) != 0) fn(ud, MS_REC_FAILED, "out of memory");
        else fn(ud, MS_REC_OK, NULL);
        return;
    }
    ms_record rec;
    char *err = NULL;
    int found = records_lookup(r, name, nlen, &rec, &err);
    long long have = found > 0 ? rec.version : -1;
    if (found > 0) record_release(&rec);
    if (found < 0) {
        char *pub = err ? records_public_error(err) : NULL;
        fn(ud, MS_REC_FAILED, pub ? pub : "storage error");
        free(pub);
    } else if (have != expect) fn(ud, MS_REC_MISSING, NULL);
    else if (records_queue_put(r, name, nlen, version, text, tlen) != 0) fn(ud, MS_REC_FAILED, "out of memory");
    else fn(ud, MS_REC_OK, NULL);
    free(err);
}

static void seam_remove(void *self, const char *name, size_t nlen, ms_rec_done_fn fn, void *ud) {
    if (((ms_records *)self)->gone) fn(ud, MS_REC_FAILED, CLOSED);
    else if (records_queue_remove(self, name, nlen) != 0) fn(ud, MS_REC_FAILED, "out of memory");
    else fn(ud, MS_REC_OK, NULL);
}

static int seam_after_flush(void *self, ms_rec_durable_fn fn, void *ud) {
    if (((ms_records *)self)->gone) {
        fn(ud, -1, CLOSED);
        return 0;
    }
    return records_add_waiter(self, fn, ud);
}

static int seam_has_pending(void *self) {
    return records_pending(self);
}

typedef struct each_state {
    ms_rec_each_fn fn;
    void *ud;
} each_state;

static int each_entry(void *ud, const char *k, size_t klen, const char *v, size_t vlen) {
    each_state *st = ud;
    ms_record rec;
    if (!parse_stored(v, vlen, &rec)) return 1;  /* a corrupt entry: not a record */
    return st->fn(st->ud, k + KEY_PREFIX_LEN, klen - KEY_PREFIX_LEN, rec.version, rec.text, rec.len);
}

static int seam_iterate(void *self, const char *prefix, size_t plen, ms_rec_each_fn fn, void *ud, char **err) {
    ms_records *r = self;
    *err = NULL;
    if (r->gone) {
        *err = strdup(CLOSED);
        return -1;
    }
    if (build_key(r, prefix, plen) != 0) {
        *err = strdup("out of memory");
        return -1;
    }
    each_state st = { fn, ud };
    return ms_store_each(r->store, r->scratch.data, r->scratch.len, each_entry, &st, err);
}

static const ms_recstore_ops seam_ops = {
    seam_get, seam_put, seam_remove, seam_after_flush, seam_has_pending, seam_iterate, 1, NULL
};

void ms_records_seam(ms_records *r, ms_recstore *out) {
    out->ops = &seam_ops;
    out->self = r;
}

/* ---- Lua API ---- */

/* core.records(store [, loop [, opts]]) -> records
 * opts: sync (default true), on_error (function(nil, err): a group's write failed) */
static int records_new(lua_State *L) {
    ms_store *store = ms_store_check(L, 1);
    ms_loop *loop = lua_isnoneornil(L, 2) ? NULL : ms_loop_check(L, 2);
    int sync = 1, on_error = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if (lua_getfield(L, 3, "sync") != LUA_TNIL) sync = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 3, "on_error") != LUA_TNIL) {
            luaL_checktype(L, -1, LUA_TFUNCTION);
            on_error = lua_gettop(L);
        } else {
            lua_pop(L, 1);
        }
    }
    ms_records *r = lua_newuserdatauv(L, sizeof *r, 2);
    memset(r, 0, sizeof *r);
    r->on_error_ref = LUA_NOREF;
    luaL_setmetatable(L, RECORDS_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, UV_STORE);  /* the store outlives the records */
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, UV_LOOP);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    r->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    r->store = store;
    r->loop = loop;
    r->sync = sync;
    r->batch = leveldb_writebatch_create();
    if (on_error) {
        lua_pushvalue(L, on_error);
        r->on_error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 1;
}

static int records_has_pending(lua_State *L) {
    lua_pushboolean(L, records_pending(ms_records_check(L, 1)));
    return 1;
}

/* r:in_flight() -> true while a group is being written */
static int records_in_flight(lua_State *L) {
    lua_pushboolean(L, ms_records_check(L, 1)->flying);
    return 1;
}

/* r:waiting() -> true while callbacks wait for the next flush */
static int records_waiting(lua_State *L) {
    lua_pushboolean(L, ms_records_check(L, 1)->waiters.n > 0);
    return 1;
}

/* r:after_flush(fn): fn(true) or fn(nil, err) once the changes so far are on disk */
static int records_after_flush(lua_State *L) {
    ms_records *r = ms_records_check(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (waiters_add(waiters_now(r), NULL, NULL, ref) != 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return luaL_error(L, "not enough memory");
    }
    return 0;
}

/* r:flush() -> true when it wrote or woke something */
static int records_flush(lua_State *L) {
    ms_records *r = ms_records_check(L, 1);
    lua_settop(L, 1);
    lua_pushboolean(L, flush(L, r));
    return 1;
}

/* r:syncs() -> groups written so far */
static int records_syncs(lua_State *L) {
    lua_pushinteger(L, ms_records_check(L, 1)->syncs);
    return 1;
}

/* __gc: a write in flight is waited for; callbacks still waiting are told
 * the records are gone (C ones free what they hold, Lua ones are dropped). */
static int records_gc(lua_State *L) {
    ms_records *r = luaL_checkudata(L, 1, RECORDS_MT);
    if (r->gone) return 0;
    r->gone = 1;
    if (r->flying) {
        lua_getiuservalue(L, 1, UV_STORE);
        ms_store *store = lua_touserdata(L, -1);
        lua_pop(L, 1);
        if (store) ms_store_write_forget(store);
        ms_recmap_clear(&r->inflight);
        if (r->writing) leveldb_writebatch_destroy(r->writing);
        wake(r, &r->flying_waiters, -1, NULL);
    }
    wake(r, &r->waiters, -1, NULL);
    ms_recmap_clear(&r->pending);
    if (r->batch) leveldb_writebatch_destroy(r->batch);
    if (r->spare) leveldb_writebatch_destroy(r->spare);
    luaL_unref(L, LUA_REGISTRYINDEX, r->on_error_ref);
    r->on_error_ref = LUA_NOREF;
    ms_jbuf_free(&r->scratch);
    ms_jbuf_free(&r->seen_name);
    return 0;
}

static const luaL_Reg records_meth[] = {
    {"close", records_gc},
    {"has_pending", records_has_pending},
    {"in_flight", records_in_flight},
    {"waiting", records_waiting},
    {"after_flush", records_after_flush},
    {"flush", records_flush},
    {"syncs", records_syncs},
    {NULL, NULL}
};

static const luaL_Reg records_metameth[] = {
    {"__gc", records_gc},
    {"__close", records_gc},
    {"__index", NULL},
    {NULL, NULL}
};

/* core.storage_public_error(err) -> the text clients may see */
static int records_public_error_lua(lua_State *L) {
    size_t len;
    const char *err = luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, len + 1);
    luaL_pushresultsize(&b, public_error_into(err, out));
    return 1;
}

void ms_records_open(lua_State *L) {
    ms_createmeta(L, RECORDS_MT, records_meth, records_metameth);
    lua_pushcfunction(L, records_new);
    lua_setfield(L, -2, "records");
    lua_pushcfunction(L, records_public_error_lua);
    lua_setfield(L, -2, "storage_public_error");
}
