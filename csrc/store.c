/* store: LevelDB bindings (moonstream.Store, moonstream.Batch, moonstream.StoreIterator).
 *
 * Keys and values are arbitrary byte strings. Runtime failures (I/O, corruption,
 * a locked database) return nil, LevelDB's message; misuse (wrong argument type,
 * a closed store or batch) raises. Writes are synced by default: group commit is
 * done by the caller, which gathers one event-loop iteration's writes into one
 * Batch and writes it with one sync. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <leveldb/c.h>
#include "core.h"
#include "loop.h"
#include "metrics.h"
#include "store.h"

#define STORE_MT "moonstream.Store"
#define BATCH_MT "moonstream.Batch"
#define ITER_MT "moonstream.StoreIterator"

#define STORE_DEFAULT_CACHE_SIZE (8u * 1024u * 1024u)
#define STORE_DEFAULT_BLOOM_BITS 10
/* Largest byte count accepted in options: fits both size_t and lua_Integer. */
#define STORE_SIZE_OPT_MAX \
    ((unsigned long long)SIZE_MAX < (unsigned long long)LUA_MAXINTEGER \
         ? (lua_Integer)SIZE_MAX : LUA_MAXINTEGER)

typedef struct store_iter store_iter;
typedef struct store_writer store_writer;

typedef struct store {
    leveldb_t *db;                  /* NULL when closed (or not yet open) */
    leveldb_options_t *options;
    leveldb_cache_t *cache;
    leveldb_filterpolicy_t *filter;
    leveldb_readoptions_t *read;       /* point reads: fill the block cache */
    leveldb_readoptions_t *scan;       /* iterators: do not evict hot blocks */
    leveldb_writeoptions_t *write_sync;
    leveldb_writeoptions_t *write_nosync;
    store_iter *iters;              /* live iterators, closed before the DB */
    char *pending;                  /* LevelDB buffer being copied into Lua */
    store_writer *writer;           /* background writer, created on first ms_store_write_async */
} store;

/* An iterator over keys starting with a prefix. The prefix bytes follow the
 * struct inside the same userdata. */
struct store_iter {
    leveldb_iterator_t *it;         /* NULL when finished or closed */
    store *owner;                   /* meaningful only while it != NULL */
    store_iter *prev, *next;        /* links in owner->iters */
    int started;                    /* the first call must not step */
    int store_closed;               /* the store was closed under us */
    size_t prefix_len;
    char prefix[];
};

typedef struct store_batch {
    leveldb_writebatch_t *wb;       /* NULL when closed */
    lua_Integer count;              /* operations since creation or clear */
} store_batch;

/* The background writer: one thread per store that performs the synced
 * leveldb_write of a batch while the loop goes on serving (double-buffered
 * group commit: the next group gathers while this one syncs). The thread only
 * touches LevelDB and the fields under mu; its caller (records.c) hears of
 * the result through an eventfd watched by the loop, on the loop thread. */
struct store_writer {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    leveldb_t *db;
    leveldb_writeoptions_t *opts;   /* for the job in flight */
    leveldb_writebatch_t *job;      /* NULL: idle */
    char *err;                      /* LevelDB's error for the finished job */
    int finished, quit;
    int efd;                        /* signalled when a job finished */
    ms_loop *loop;
    int loop_ref;                   /* the loop outlives the writer */
    ms_store_done_fn cfn;           /* the caller's callback (ms_store_write_async) */
    void *cud;
    int busy;                       /* a job was handed over and not yet called back */
    double took;                    /* ms the finished job's write took (metrics) */
};

/* Options of store_open after validation; read before anything is allocated so
 * that a raised argument error leaks nothing. */
typedef struct store_config {
    int create_if_missing;
    int paranoid_checks;
    size_t cache_size;
    int bloom_bits;
    size_t write_buffer_size;       /* 0: LevelDB's default */
    int max_open_files;             /* 0: LevelDB's default */
} store_config;

/* Frees the buffer parked in s->pending, if any. */
static void store_drop_pending(store *s) {
    if (s->pending != NULL) {
        leveldb_free(s->pending);
        s->pending = NULL;
    }
}

/* Pushes a LevelDB-allocated buffer (value or error text) as a Lua string and
 * frees it. While Lua copies it the buffer is parked in s->pending, so that if
 * the copy raises a memory error, close/__gc or the next push frees it. */
static void store_push_owned(lua_State *L, store *s, char *buf, size_t len) {
    store_drop_pending(s);
    s->pending = buf;
    lua_pushlstring(L, buf, len);
    store_drop_pending(s);
}

/* Pushes nil and LevelDB's error text (freed); returns 2 for lua_CFunctions. */
static int store_push_error(lua_State *L, store *s, char *err) {
    lua_pushnil(L);
    store_push_owned(L, s, err, strlen(err));
    return 2;
}

/* Destroys a live iterator's LevelDB iterator and unlinks it from its store.
 * Safe on a finished or closed iterator. */
static void store_iter_release(store_iter *si) {
    if (si->it == NULL) return;
    leveldb_iter_destroy(si->it);
    si->it = NULL;
    if (si->prev != NULL) si->prev->next = si->next;
    else si->owner->iters = si->next;
    if (si->next != NULL) si->next->prev = si->prev;
    si->prev = si->next = NULL;
    si->owner = NULL;
}

/* Releases everything a store holds, in the order LevelDB needs: iterators
 * before the DB, the DB before the cache and filter policy it uses. Safe on a
 * partly opened store and safe twice. Never raises. */
static void store_release(store *s) {
    while (s->iters != NULL) {
        store_iter *si = s->iters;
        store_iter_release(si);
        si->store_closed = 1;
    }
    if (s->db != NULL) { leveldb_close(s->db); s->db = NULL; }
    if (s->options != NULL) { leveldb_options_destroy(s->options); s->options = NULL; }
    if (s->cache != NULL) { leveldb_cache_destroy(s->cache); s->cache = NULL; }
    if (s->filter != NULL) { leveldb_filterpolicy_destroy(s->filter); s->filter = NULL; }
    if (s->read != NULL) { leveldb_readoptions_destroy(s->read); s->read = NULL; }
    if (s->scan != NULL) { leveldb_readoptions_destroy(s->scan); s->scan = NULL; }
    if (s->write_sync != NULL) { leveldb_writeoptions_destroy(s->write_sync); s->write_sync = NULL; }
    if (s->write_nosync != NULL) { leveldb_writeoptions_destroy(s->write_nosync); s->write_nosync = NULL; }
    store_drop_pending(s);
}

/* The open store at index i; raises on a non-store or a closed store. */
static store *check_store(lua_State *L, int i) {
    store *s = (store *)luaL_checkudata(L, i, STORE_MT);
    if (s->db == NULL) luaL_error(L, "attempt to use a closed store");
    return s;
}

/* The open batch at index i; raises on a non-batch or a closed batch. */
static store_batch *check_batch(lua_State *L, int i) {
    store_batch *b = (store_batch *)luaL_checkudata(L, i, BATCH_MT);
    if (b->wb == NULL) luaL_error(L, "attempt to use a closed batch");
    return b;
}

/* The optional sync flag at index i: true unless given and false. */
static int store_opt_sync(lua_State *L, int i) {
    return lua_isnoneornil(L, i) ? 1 : lua_toboolean(L, i);
}

/* Reads opts[name] as an integer in [min, max], or def when absent; raises a
 * "bad option" error otherwise. Leaves the stack as it was. */
static lua_Integer store_opt_integer(lua_State *L, int opts, const char *name,
                                     lua_Integer def, lua_Integer min, lua_Integer max) {
    lua_Integer v = def;
    int isint = 0;
    if (lua_getfield(L, opts, name) != LUA_TNIL) {
        v = lua_tointegerx(L, -1, &isint);
        if (!isint || v < min || v > max)
            luaL_error(L, "bad option '%s' (expected an integer from %I to %I)", name, min, max);
    }
    lua_pop(L, 1);
    return v;
}

/* Reads opts[name] as a boolean, or def when absent; raises otherwise. */
static int store_opt_boolean(lua_State *L, int opts, const char *name, int def) {
    int t = lua_getfield(L, opts, name);
    int v = def;
    if (t == LUA_TBOOLEAN) v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL) luaL_error(L, "bad option '%s' (expected a boolean)", name);
    lua_pop(L, 1);
    return v;
}

/* Fills cfg from the options table at index opts (or defaults when it is
 * none/nil). Raises on a bad option; allocates nothing. */
static void store_read_config(lua_State *L, int opts, store_config *cfg) {
    cfg->create_if_missing = 1;
    cfg->paranoid_checks = 0;
    cfg->cache_size = STORE_DEFAULT_CACHE_SIZE;
    cfg->bloom_bits = STORE_DEFAULT_BLOOM_BITS;
    cfg->write_buffer_size = 0;
    cfg->max_open_files = 0;
    if (lua_isnoneornil(L, opts)) return;
    luaL_checktype(L, opts, LUA_TTABLE);
    cfg->create_if_missing = store_opt_boolean(L, opts, "create_if_missing", 1);
    cfg->paranoid_checks = store_opt_boolean(L, opts, "paranoid_checks", 0);
    /* Limits keep the values representable (size_t/int) on every platform. */
    cfg->cache_size = (size_t)store_opt_integer(L, opts, "cache_size",
                                                STORE_DEFAULT_CACHE_SIZE, 1, STORE_SIZE_OPT_MAX);
    cfg->bloom_bits = (int)store_opt_integer(L, opts, "bloom_bits",
                                             STORE_DEFAULT_BLOOM_BITS, 0, 64);
    cfg->write_buffer_size = (size_t)store_opt_integer(L, opts, "write_buffer_size",
                                                       0, 1, STORE_SIZE_OPT_MAX);
    cfg->max_open_files = (int)store_opt_integer(L, opts, "max_open_files", 0, 1, INT_MAX);
}

/* core.store_open(path [, opts]) -> store | nil, errmsg.
 * The store userdata is created closed first, so a failure halfway (LevelDB
 * error or a raised memory error) leaves only objects store_release or __gc
 * frees. LevelDB's error text is returned unchanged (a path already open,
 * here or in another process, gives its "lock ... already held" error). */
static int store_open(lua_State *L) {
    size_t path_len;
    const char *path = luaL_checklstring(L, 1, &path_len);
    /* LevelDB takes a C string: a zero byte would silently shorten the path. */
    luaL_argcheck(L, strlen(path) == path_len, 1, "path contains a zero byte");
    store_config cfg;
    store_read_config(L, 2, &cfg);

    store *s = (store *)lua_newuserdatauv(L, sizeof(store), 0);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, STORE_MT);

    s->options = leveldb_options_create();
    leveldb_options_set_create_if_missing(s->options, (unsigned char)cfg.create_if_missing);
    leveldb_options_set_paranoid_checks(s->options, (unsigned char)cfg.paranoid_checks);
    s->cache = leveldb_cache_create_lru(cfg.cache_size);
    leveldb_options_set_cache(s->options, s->cache);
    if (cfg.bloom_bits > 0) {
        s->filter = leveldb_filterpolicy_create_bloom(cfg.bloom_bits);
        leveldb_options_set_filter_policy(s->options, s->filter);
    }
    if (cfg.write_buffer_size > 0)
        leveldb_options_set_write_buffer_size(s->options, cfg.write_buffer_size);
    if (cfg.max_open_files > 0)
        leveldb_options_set_max_open_files(s->options, cfg.max_open_files);

    s->read = leveldb_readoptions_create();
    s->scan = leveldb_readoptions_create();
    leveldb_readoptions_set_fill_cache(s->scan, 0);
    s->write_sync = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(s->write_sync, 1);
    s->write_nosync = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(s->write_nosync, 0);

    char *err = NULL;
    s->db = leveldb_open(s->options, path, &err);
    if (err != NULL) {
        if (s->db != NULL) { leveldb_close(s->db); s->db = NULL; }
        store_release(s);
        return store_push_error(L, s, err);
    }
    return 1;
}

/* st:get(key) -> value | nil (not found) | nil, errmsg (I/O, corruption). */
static int store_get(lua_State *L) {
    store *s = check_store(L, 1);
    size_t klen;
    const char *key = luaL_checklstring(L, 2, &klen);
    size_t vlen = 0;
    char *err = NULL;
    char *val = leveldb_get(s->db, s->read, key, klen, &vlen, &err);
    if (err != NULL) {
        if (val != NULL) leveldb_free(val);
        return store_push_error(L, s, err);
    }
    if (val == NULL) {
        lua_pushnil(L);
        return 1;
    }
    store_push_owned(L, s, val, vlen);
    return 1;
}

/* st:put(key, value [, sync=true]) -> true | nil, errmsg. */
static int store_put(lua_State *L) {
    store *s = check_store(L, 1);
    size_t klen, vlen;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *val = luaL_checklstring(L, 3, &vlen);
    int sync = store_opt_sync(L, 4);
    char *err = NULL;
    leveldb_put(s->db, sync ? s->write_sync : s->write_nosync, key, klen, val, vlen, &err);
    if (err != NULL) return store_push_error(L, s, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* st:delete(key [, sync=true]) -> true | nil, errmsg. Deleting a missing key
 * succeeds (LevelDB semantics). */
static int store_delete(lua_State *L) {
    store *s = check_store(L, 1);
    size_t klen;
    const char *key = luaL_checklstring(L, 2, &klen);
    int sync = store_opt_sync(L, 3);
    char *err = NULL;
    leveldb_delete(s->db, sync ? s->write_sync : s->write_nosync, key, klen, &err);
    if (err != NULL) return store_push_error(L, s, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* st:write(batch [, sync=true]) -> true | nil, errmsg. Applies the batch
 * atomically; the batch is left as it was (the caller clears it). */
static int store_write(lua_State *L) {
    store *s = check_store(L, 1);
    store_batch *b = check_batch(L, 2);
    int sync = store_opt_sync(L, 3);
    char *err = NULL;
    leveldb_write(s->db, sync ? s->write_sync : s->write_nosync, b->wb, &err);
    if (err != NULL) return store_push_error(L, s, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- background writer ---- */

static void *store_writer_main(void *arg) {
    store_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->job == NULL && !w->quit) pthread_cond_wait(&w->cv, &w->mu);
        if (w->job == NULL) break;  /* quit with nothing to do */
        leveldb_writebatch_t *job = w->job;
        pthread_mutex_unlock(&w->mu);
        char *err = NULL;
        double start = ms_loop_now();
        leveldb_write(w->db, w->opts, job, &err);
        double took = ms_loop_now() - start;
        pthread_mutex_lock(&w->mu);
        w->took = took;
        w->err = err;
        w->job = NULL;
        w->finished = 1;
        pthread_cond_broadcast(&w->cv);  /* ms_store_write_forget may wait for this */
        uint64_t one = 1;
        ssize_t n = write(w->efd, &one, sizeof one);
        (void)n;  /* the counter cannot overflow with one job at a time */
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Delivers a finished job to its Lua callback: fn(true) or fn(nil, err).
 * Runs on the loop thread when the eventfd is readable. */
static void store_writer_io(void *ud, int fd, uint32_t events) {
    store_writer *w = ud;
    uint64_t count;
    if (read(fd, &count, sizeof count) != (ssize_t)sizeof count) return;
    pthread_mutex_lock(&w->mu);
    int finished = w->finished;
    char *err = w->err;
    w->finished = 0;
    w->err = NULL;
    double took = w->took;
    pthread_mutex_unlock(&w->mu);
    if (!finished) return;
    ms_metrics_sync_seconds(took / 1000.0);
    w->busy = 0;
    ms_store_done_fn fn = w->cfn;  /* NULL: forgotten (ms_store_write_forget) */
    w->cfn = NULL;
    if (fn) fn(w->cud, err);
    if (err) leveldb_free(err);
}

/* Stops the writer: waits for a job in flight (its callback is dropped: the
 * store is closing), joins the thread, frees everything. Safe when absent. */
static void store_writer_stop(lua_State *L, store *s) {
    store_writer *w = s->writer;
    if (w == NULL) return;
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);  /* finishes the job in flight first */
    if (w->cfn != NULL && w->busy) {
        /* a C caller hears the outcome of its last write (see store.h) */
        ms_store_done_fn fn = w->cfn;
        w->cfn = NULL;
        fn(w->cud, w->finished ? w->err : "the store was closed");
    }
    if (w->err) leveldb_free(w->err);
    ms_loop_unwatch(w->loop, w->efd);
    close(w->efd);
    luaL_unref(L, LUA_REGISTRYINDEX, w->loop_ref);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    s->writer = NULL;
}

/* Creates the writer thread for s on loop (at index loop_idx). Returns 0, or
 * -1 with errno set. */
static int store_writer_start(lua_State *L, store *s, ms_loop *loop, int loop_idx) {
    store_writer *w = calloc(1, sizeof *w);
    if (w == NULL) return -1;
    w->db = s->db;
    w->loop = loop;
    w->loop_ref = LUA_NOREF;
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0) { free(w); return -1; }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (ms_loop_watch(loop, w->efd, EPOLLIN, store_writer_io, w) != 0) goto fail;
    int rc = pthread_create(&w->thread, NULL, store_writer_main, w);
    if (rc != 0) { ms_loop_unwatch(loop, w->efd); errno = rc; goto fail; }
    lua_pushvalue(L, loop_idx);  /* the loop must outlive the writer */
    w->loop_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->writer = w;
    return 0;
fail:
    close(w->efd);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    return -1;
}

ms_store *ms_store_check(lua_State *L, int idx) {
    return check_store(L, idx);
}

char *ms_store_get(ms_store *s, const char *key, size_t klen, size_t *vlen, char **err) {
    *err = NULL;
    if (s->db == NULL) {
        *err = strdup("the store is closed");
        return NULL;
    }
    char *lerr = NULL;
    char *val = leveldb_get(s->db, s->read, key, klen, vlen, &lerr);
    if (lerr != NULL) {
        if (val != NULL) leveldb_free(val);
        *err = strdup(lerr);
        leveldb_free(lerr);
        return NULL;
    }
    return val;
}

char *ms_store_write(ms_store *s, leveldb_writebatch_t *wb, int sync) {
    if (s->db == NULL) return strdup("the store is closed");
    char *lerr = NULL;
    leveldb_write(s->db, sync ? s->write_sync : s->write_nosync, wb, &lerr);
    if (lerr == NULL) return NULL;
    char *err = strdup(lerr);
    leveldb_free(lerr);
    return err ? err : strdup("out of memory");
}

int ms_store_write_async(lua_State *L, int store_idx, ms_loop *loop, int loop_idx,
                         leveldb_writebatch_t *wb, int sync, ms_store_done_fn fn, void *ud) {
    store *s = check_store(L, store_idx);
    if (s->writer == NULL && store_writer_start(L, s, loop, loop_idx) != 0) return -1;
    if (s->writer->loop != loop) {
        errno = EBUSY;
        return -1;
    }
    return ms_store_write_next(s, wb, sync, fn, ud);
}

int ms_store_write_next(ms_store *s, leveldb_writebatch_t *wb, int sync, ms_store_done_fn fn, void *ud) {
    store_writer *w = s->writer;
    if (s->db == NULL || w == NULL) {
        errno = ENOENT;
        return -1;
    }
    if (w->busy) {
        errno = EBUSY;
        return -1;
    }
    w->cfn = fn;
    w->cud = ud;
    w->busy = 1;
    pthread_mutex_lock(&w->mu);
    w->opts = sync ? s->write_sync : s->write_nosync;
    w->job = wb;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

void ms_store_write_forget(ms_store *s) {
    store_writer *w = s->writer;
    if (w == NULL || w->cfn == NULL) return;
    pthread_mutex_lock(&w->mu);
    while (w->job != NULL) pthread_cond_wait(&w->cv, &w->mu);  /* the writer broadcasts when done */
    pthread_mutex_unlock(&w->mu);
    w->cfn = NULL;  /* the eventfd wake-up that follows finds no callback */
}

int ms_store_each(ms_store *s, const char *prefix, size_t plen,
                  int (*fn)(void *ud, const char *k, size_t klen, const char *v, size_t vlen), void *ud,
                  char **err) {
    *err = NULL;
    leveldb_iterator_t *it = leveldb_create_iterator(s->db, s->scan);
    if (plen > 0) leveldb_iter_seek(it, prefix, plen);
    else leveldb_iter_seek_to_first(it);
    for (; leveldb_iter_valid(it); leveldb_iter_next(it)) {
        size_t klen, vlen;
        const char *key = leveldb_iter_key(it, &klen);
        if (klen < plen || memcmp(key, prefix, plen) != 0) break;
        const char *val = leveldb_iter_value(it, &vlen);
        if (!fn(ud, key, klen, val, vlen)) break;
    }
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    leveldb_iter_destroy(it);
    if (lerr == NULL) return 0;
    *err = strdup(lerr);
    leveldb_free(lerr);
    return -1;
}

/* st:batch() -> batch. The batch holds its store in its user value, so the
 * store is not collected while a batch it made is alive. */
static int store_batch_new(lua_State *L) {
    check_store(L, 1);
    store_batch *b = (store_batch *)lua_newuserdatauv(L, sizeof(store_batch), 1);
    b->wb = NULL;
    b->count = 0;
    luaL_setmetatable(L, BATCH_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    b->wb = leveldb_writebatch_create();
    return 1;
}

/* Iterator step, called by the generic for as f(state, control).
 * Returns key, value for the next key with the prefix, or nil at the end; at
 * the end the LevelDB iterator is released at once (not left to __close).
 * Error choice: a LevelDB read error found while stepping (corruption, I/O)
 * cannot be returned as nil, msg inside a for loop (nil ends the loop and the
 * message would be lost), so it raises "store iteration failed: <msg>" - after
 * releasing the LevelDB iterator and freeing the message, so nothing leaks.
 * Using the iterator after its store was closed raises "attempt to use a
 * closed store" (misuse); after it finished it just returns nil again. */
static int store_iter_step(lua_State *L) {
    store_iter *si = (store_iter *)luaL_checkudata(L, 1, ITER_MT);
    if (si->it == NULL) {
        if (si->store_closed) return luaL_error(L, "attempt to use a closed store");
        lua_pushnil(L);
        return 1;
    }
    if (si->started) leveldb_iter_next(si->it);
    si->started = 1;
    if (leveldb_iter_valid(si->it)) {
        size_t klen, vlen;
        const char *key = leveldb_iter_key(si->it, &klen);
        if (klen >= si->prefix_len && memcmp(key, si->prefix, si->prefix_len) == 0) {
            const char *val = leveldb_iter_value(si->it, &vlen);
            /* The iterator owns key/val; a raised memory error here leaks nothing. */
            lua_pushlstring(L, key, klen);
            lua_pushlstring(L, val, vlen);
            return 2;
        }
    }
    char *err = NULL;
    leveldb_iter_get_error(si->it, &err);
    store *s = si->owner;
    store_iter_release(si);
    if (err != NULL) {
        lua_pushliteral(L, "store iteration failed: ");
        store_push_owned(L, s, err, strlen(err));
        lua_concat(L, 2);
        return lua_error(L);
    }
    lua_pushnil(L);
    return 1;
}

/* st:iterate([prefix]) -> step, iter, nil, iter: the four values of a generic
 * for, the last being the to-be-closed value, so that
 *   for k, v in st:iterate("r:") do ... end
 * walks keys starting with prefix in key order (all keys without a prefix)
 * and frees the LevelDB iterator when the loop ends, breaks or raises.
 * The iterator is linked into the store's list (the store closes it before
 * closing the DB) and holds the store in its user value. It reads the DB as of
 * its creation (LevelDB's implicit snapshot). */
static int store_iterate(lua_State *L) {
    store *s = check_store(L, 1);
    size_t plen = 0;
    const char *prefix = luaL_optlstring(L, 2, "", &plen);
    store_iter *si = (store_iter *)lua_newuserdatauv(L, sizeof(store_iter) + plen, 1);
    memset(si, 0, sizeof *si);
    si->prefix_len = plen;
    memcpy(si->prefix, prefix, plen);
    luaL_setmetatable(L, ITER_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);

    si->it = leveldb_create_iterator(s->db, s->scan);
    si->owner = s;
    si->next = s->iters;
    if (s->iters != NULL) s->iters->prev = si;
    s->iters = si;
    if (plen > 0) leveldb_iter_seek(si->it, prefix, plen);
    else leveldb_iter_seek_to_first(si->it);

    int iter = lua_gettop(L);
    lua_pushcfunction(L, store_iter_step);
    lua_pushvalue(L, iter);
    lua_pushnil(L);
    lua_pushvalue(L, iter);
    return 4;
}

/* iter:close(), __gc, __close: frees the LevelDB iterator; safe twice. */
static int store_iter_close(lua_State *L) {
    store_iter *si = (store_iter *)luaL_checkudata(L, 1, ITER_MT);
    store_iter_release(si);
    return 0;
}

/* st:close(), __gc, __close -> true. Closes live iterators, then the DB; safe
 * twice. */
static int store_close(lua_State *L) {
    store *s = (store *)luaL_checkudata(L, 1, STORE_MT);
    store_writer_stop(L, s);
    store_release(s);
    lua_pushboolean(L, 1);
    return 1;
}

/* st:is_closed() -> boolean. */
static int store_is_closed(lua_State *L) {
    store *s = (store *)luaL_checkudata(L, 1, STORE_MT);
    lua_pushboolean(L, s->db == NULL);
    return 1;
}

static int store_tostring(lua_State *L) {
    store *s = (store *)luaL_checkudata(L, 1, STORE_MT);
    if (s->db == NULL) lua_pushliteral(L, "moonstream.Store (closed)");
    else lua_pushfstring(L, "moonstream.Store (%p)", (void *)s);
    return 1;
}

/* b:put(key, value) -> nothing. */
static int store_batch_put(lua_State *L) {
    store_batch *b = check_batch(L, 1);
    size_t klen, vlen;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *val = luaL_checklstring(L, 3, &vlen);
    leveldb_writebatch_put(b->wb, key, klen, val, vlen);
    b->count++;
    return 0;
}

/* b:delete(key) -> nothing. */
static int store_batch_delete(lua_State *L) {
    store_batch *b = check_batch(L, 1);
    size_t klen;
    const char *key = luaL_checklstring(L, 2, &klen);
    leveldb_writebatch_delete(b->wb, key, klen);
    b->count++;
    return 0;
}

/* b:clear() -> nothing. Empties the batch for reuse. */
static int store_batch_clear(lua_State *L) {
    store_batch *b = check_batch(L, 1);
    leveldb_writebatch_clear(b->wb);
    b->count = 0;
    return 0;
}

/* b:count() -> number of put/delete operations since creation or clear. */
static int store_batch_count(lua_State *L) {
    store_batch *b = check_batch(L, 1);
    lua_pushinteger(L, b->count);
    return 1;
}

/* b:close(), __gc, __close: frees the batch; safe twice. */
static int store_batch_close(lua_State *L) {
    store_batch *b = (store_batch *)luaL_checkudata(L, 1, BATCH_MT);
    if (b->wb != NULL) {
        leveldb_writebatch_destroy(b->wb);
        b->wb = NULL;
    }
    b->count = 0;
    return 0;
}

static const luaL_Reg store_meth[] = {
    {"get", store_get},
    {"put", store_put},
    {"delete", store_delete},
    {"write", store_write},
    {"batch", store_batch_new},
    {"iterate", store_iterate},
    {"close", store_close},
    {"is_closed", store_is_closed},
    {NULL, NULL}
};

static const luaL_Reg store_metameth[] = {
    {"__index", NULL},  /* set to store_meth below */
    {"__gc", store_close},
    {"__close", store_close},
    {"__tostring", store_tostring},
    {NULL, NULL}
};

static const luaL_Reg batch_meth[] = {
    {"put", store_batch_put},
    {"delete", store_batch_delete},
    {"clear", store_batch_clear},
    {"count", store_batch_count},
    {"close", store_batch_close},
    {NULL, NULL}
};

static const luaL_Reg batch_metameth[] = {
    {"__index", NULL},
    {"__gc", store_batch_close},
    {"__close", store_batch_close},
    {NULL, NULL}
};

static const luaL_Reg iter_meth[] = {
    {"close", store_iter_close},
    {NULL, NULL}
};

static const luaL_Reg iter_metameth[] = {
    {"__index", NULL},
    {"__gc", store_iter_close},
    {"__close", store_iter_close},
    {NULL, NULL}
};


void ms_store_open(lua_State *L) {
    ms_createmeta(L, STORE_MT, store_meth, store_metameth);
    ms_createmeta(L, BATCH_MT, batch_meth, batch_metameth);
    ms_createmeta(L, ITER_MT, iter_meth, iter_metameth);
    lua_pushcfunction(L, store_open);
    lua_setfield(L, -2, "store_open");
}
