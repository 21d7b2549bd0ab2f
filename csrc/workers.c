/* workers: a small pool of threads for CPU-heavy work that must not stall the
 * loop (password hashing: ~25 ms per file-auth login at 100 000 PBKDF2
 * iterations). Jobs carry copies of their inputs; a worker runs one without
 * touching Lua, puts it on the done list and wakes the loop through an
 * eventfd; the loop thread then calls the job's Lua callback (ms_pcall). Lua
 * only ever runs on the loop thread.
 *
 * Lua API:
 *   core.workers(loop [, threads]) -> pool
 *       threads: hashing threads (puts have one of their own, below), by
 *       default the online cores less one (at least one, at most
 *       WK_MAX_THREADS): the loop keeps a core of its own. With as many
 *       hashing threads as cores, a login storm on 2 cores left the loop's p99
 *       at 3.6-5.2x idle, with one 1.2-1.5x, at nearly the same login rate
 *       (bench/RESULTS.md). Threads start at the first job; they run as SCHED_IDLE so that the loop
 *       thread, which answers every other request, always wins the CPU over
 *       a storm of hashes (on a host saturated by other processes, hashes
 *       then wait: logins slow down rather than everything else).
 *   pool:pbkdf2(password, salt, iterations, key_length, digest, fn) -> true | nil, err
 *       As core.pbkdf2 (same checks, crypto.h), off the loop thread; later
 *       fn(key) or fn(nil, err) from the loop. err now: "unknown digest 'x'",
 *       "busy" (WK_MAX_QUEUED jobs waiting), "closed", or a thread start
 *       failure.
 *   pool:put(store, key, value, fn) -> true | nil, err
 *       Writes key = value into the store with sync (durable when fn runs),
 *       off the loop thread: fn(true) or fn(nil, err) from the loop.
 *       LevelDB groups concurrent synced writers into one log write and one
 *       sync. The store is kept from collection until fn ran; it must not be
 *       closed before the pool (the server closes the pool first).
 *       Puts have a thread and queue of their own at normal priority (the
 *       I/O thread, started with the others): behind the hashes a login's
 *       token write waited for every hash queued before it, and a SCHED_IDLE
 *       thread preempted while it held LevelDB's lock stalled the loop's
 *       reads of the same store until a core fell idle (priority inversion:
 *       a login storm's read p99 was 2x its health-check p99).
 *   pool:pending() -> jobs submitted whose callback has not run yet
 *   pool:hold(on) -> while held the workers start no new job (the specs use
 *       it to order events without timing); close releases it
 *   pool:close() (and __close): takes no more jobs, lets the workers finish
 *       every queued one, joins them and runs the remaining callbacks from the
 *       caller. Safe twice. __gc: queued jobs are dropped without callbacks,
 *       running ones are joined.
 * A pool with jobs in flight is kept alive by the registry until they are
 * delivered, so dropping it never loses a callback. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sched.h>

#include <openssl/crypto.h>

#include "core.h"
#include "crypto.h"
#include "loop.h"
#include "store.h"

#define WORKERS_MT "moonstream.Workers"
#define WK_MAX_THREADS 16
#define WK_MAX_QUEUED 65536

typedef struct wk_job wk_job;

/* One unit of work: run() on a worker thread (no Lua), push() on the loop
 * thread (its results for the callback; may raise: called protected),
 * release() frees it on the loop thread once delivered or dropped. */
struct wk_job {
    wk_job *next;
    int fn_ref;
    void (*run)(wk_job *);
    int (*push)(lua_State *L, wk_job *);
    void (*release)(lua_State *L, wk_job *);
};

typedef struct wk_list { wk_job *head, *tail; size_t n; } wk_list;

typedef struct ms_workers {
    ms_loop *loop;
    lua_State *L;                 /* main thread */
    int efd;                      /* -1 once closed */
    int self_ref;                 /* keeps the pool alive while jobs are in flight */
    size_t pending;               /* loop thread only */
    int nthreads, started;        /* hashing threads wanted, running */
    int io_started;
    pthread_t threads[WK_MAX_THREADS], io_thread;
    pthread_mutex_t mu;           /* guards everything below */
    pthread_cond_t cv, io_cv;     /* queue has work, io has work (or stop/hold changed) */
    wk_list queue, io, done;      /* CPU jobs, store jobs (the I/O thread), finished */
    int stopping, cancel, held;
} ms_workers;

static void wk_push_back(wk_list *l, wk_job *j) {
    j->next = NULL;
    if (l->tail) l->tail->next = j; else l->head = j;
    l->tail = j;
    l->n++;
}

static wk_job *wk_take_all(wk_list *l) {
    wk_job *j = l->head;
    l->head = l->tail = NULL;
    l->n = 0;
    return j;
}

/* ---- worker threads ---- */

/* Puts this thread in SCHED_IDLE: it runs only on CPU time no normal thread
 * wants, and a waking normal thread (the loop) preempts it at once. A nice
 * value is not enough: the scheduler (EEVDF) lets a running thread finish
 * its slice, milliseconds that showed up in the loop's p99 under a login
 * storm (bench/RESULTS.md). Failure only costs the priority: ignored. */
static void wk_lower_priority(void) {
    struct sched_param sp = { .sched_priority = 0 };
    (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
}

/* Runs the jobs of one list (q, signalled through cv) until the pool stops. */
static void wk_serve(ms_workers *w, wk_list *q, pthread_cond_t *cv) {
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stopping && (q->head == NULL || w->held)) pthread_cond_wait(cv, &w->mu);
        /* stopping: drain the queue first, unless cancelled (__gc) */
        if (q->head == NULL || w->cancel) break;
        wk_job *j = q->head;
        q->head = j->next;
        if (q->head == NULL) q->tail = NULL;
        q->n--;
        pthread_mutex_unlock(&w->mu);
        j->run(j);
        pthread_mutex_lock(&w->mu);
        wk_push_back(&w->done, j);
        uint64_t one = 1;
        (void)!write(w->efd, &one, sizeof one);
    }
    pthread_mutex_unlock(&w->mu);
}

static void *wk_main(void *arg) {
    ms_workers *w = arg;
    wk_lower_priority();
    wk_serve(w, &w->queue, &w->cv);
    return NULL;
}

/* The I/O thread: at normal priority, it mostly sleeps in fdatasync. */
static void *wk_io_main(void *arg) {
    ms_workers *w = arg;
    wk_serve(w, &w->io, &w->io_cv);
    return NULL;
}

/* Starts the threads not running yet (the hashing threads and the I/O
 * thread) with every signal blocked (the loop's signalfd must get
 * SIGINT/SIGTERM, never a worker). 0 unless the I/O thread and at least one
 * hashing thread run. */
static int wk_start(ms_workers *w) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    if (!w->io_started) w->io_started = pthread_create(&w->io_thread, NULL, wk_io_main, w) == 0;
    while (w->started < w->nthreads && pthread_create(&w->threads[w->started], NULL, wk_main, w) == 0)
        w->started++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return w->io_started && w->started > 0;
}

/* ---- delivery on the loop thread ---- */

static int wk_deliver_lua(lua_State *L) {
    wk_job *j = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->fn_ref);
    int n = j->push(L, j);
    lua_call(L, n, 0);
    return 0;
}

/* Runs (call != 0) or drops the callback of each job of the list, in order,
 * and frees them. Callbacks may use the pool again (even close it). */
static void wk_finish_list(ms_workers *w, wk_job *j, int call) {
    lua_State *L = w->L;
    while (j) {
        wk_job *next = j->next;
        if (call && lua_checkstack(L, 3)) {
            lua_pushcfunction(L, wk_deliver_lua);
            lua_pushlightuserdata(L, j);
            ms_pcall(L, 1, 0);
        }
        luaL_unref(L, LUA_REGISTRYINDEX, j->fn_ref);
        j->release(L, j);
        w->pending--;
        j = next;
    }
    if (w->pending == 0 && w->self_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, w->self_ref);
        w->self_ref = LUA_NOREF;
    }
}

static void wk_ready(void *ud, int fd, uint32_t events) {
    ms_workers *w = ud;
    uint64_t n;
    (void)!read(fd, &n, sizeof n);
    pthread_mutex_lock(&w->mu);
    wk_job *j = wk_take_all(&w->done);
    pthread_mutex_unlock(&w->mu);
    wk_finish_list(w, j, 1);
}

/* ---- the PBKDF2 job ---- */

typedef struct pbkdf2_job {
    wk_job base;
    ms_pbkdf2_args args;          /* password and salt point into data */
    int ok;
    size_t size;                  /* bytes of data, wiped on release */
    unsigned char data[];         /* password, salt, then the key */
} pbkdf2_job;

static void pbkdf2_run(wk_job *base) {
    pbkdf2_job *j = (pbkdf2_job *)base;
    j->ok = ms_pbkdf2_run(&j->args, j->data + j->args.plen + j->args.slen);
}

static int pbkdf2_push(lua_State *L, wk_job *base) {
    pbkdf2_job *j = (pbkdf2_job *)base;
    if (!j->ok) {
        lua_pushnil(L);
        lua_pushliteral(L, "PBKDF2 failed");
        return 2;
    }
    lua_pushlstring(L, (const char *)j->data + j->args.plen + j->args.slen, (size_t)j->args.keylen);
    return 1;
}

static void pbkdf2_release(lua_State *L, wk_job *base) {
    pbkdf2_job *j = (pbkdf2_job *)base;
    OPENSSL_cleanse(j->data, j->size);
    free(j);
}

/* ---- the synced put job ---- */

typedef struct put_job {
    wk_job base;
    ms_store *store;
    int store_ref;                /* keeps the store userdata alive */
    char *err;                    /* malloc'd, from ms_store_write */
    size_t klen, vlen;
    char data[];                  /* key, then value */
} put_job;

static void put_run(wk_job *base) {
    put_job *j = (put_job *)base;
    leveldb_writebatch_t *wb = leveldb_writebatch_create();
    leveldb_writebatch_put(wb, j->data, j->klen, j->data + j->klen, j->vlen);
    j->err = ms_store_write(j->store, wb, 1);
    leveldb_writebatch_destroy(wb);
}

static int put_push(lua_State *L, wk_job *base) {
    put_job *j = (put_job *)base;
    if (j->err == NULL) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, j->err);
    return 2;
}

static void put_release(lua_State *L, wk_job *base) {
    put_job *j = (put_job *)base;
    luaL_unref(L, LUA_REGISTRYINDEX, j->store_ref);
    free(j->err);
    free(j);
}

/* ---- Lua API ---- */

static ms_workers *wk_check(lua_State *L) {
    return luaL_checkudata(L, 1, WORKERS_MT);
}

/* Nil and the reason when the pool cannot take a job now, else NULL (the
 * threads are started at the first job). */
static const char *wk_refuse(ms_workers *w) {
    if (w->efd < 0) return "closed";
    if ((w->started == 0 || !w->io_started) && !wk_start(w)) return "cannot start worker threads";
    pthread_mutex_lock(&w->mu);
    int full = w->queue.n + w->io.n >= WK_MAX_QUEUED;
    pthread_mutex_unlock(&w->mu);
    return full ? "busy" : NULL;
}

/* References the callback at fn_idx (and the pool at 1 while jobs are in
 * flight) before the job exists, so nothing raises between its allocation
 * and its queueing. Returns the callback's reference. */
static int wk_ref(lua_State *L, ms_workers *w, int fn_idx) {
    if (w->self_ref == LUA_NOREF) {
        lua_pushvalue(L, 1);
        w->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushvalue(L, fn_idx);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Drops what wk_ref took when the job could not be made. */
static void wk_unref(lua_State *L, ms_workers *w, int fn_ref) {
    luaL_unref(L, LUA_REGISTRYINDEX, fn_ref);
    if (w->pending == 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, w->self_ref);
        w->self_ref = LUA_NOREF;
    }
}

/* Fills in the job's common part and queues it for a hashing thread, or for
 * the I/O thread (io). */
static void wk_submit(ms_workers *w, wk_job *j, int fn_ref, void (*run)(wk_job *),
                      int (*push)(lua_State *L, wk_job *), void (*release)(lua_State *L, wk_job *), int io) {
    j->fn_ref = fn_ref;
    j->run = run;
    j->push = push;
    j->release = release;
    w->pending++;
    pthread_mutex_lock(&w->mu);
    wk_push_back(io ? &w->io : &w->queue, j);
    pthread_cond_signal(io ? &w->io_cv : &w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int workers_pbkdf2(lua_State *L) {
    ms_workers *w = wk_check(L);
    ms_pbkdf2_args a;
    const char *digest_name = ms_pbkdf2_check(L, 2, &a);
    luaL_checktype(L, 7, LUA_TFUNCTION);
    if (a.md == NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "unknown digest '%s'", digest_name);
        return 2;
    }
    const char *err = wk_refuse(w);
    if (err) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    int fn_ref = wk_ref(L, w, 7);
    size_t size = a.plen + a.slen + (size_t)a.keylen;
    pbkdf2_job *j = malloc(sizeof *j + size);
    if (j == NULL) {
        wk_unref(L, w, fn_ref);
        return luaL_error(L, "out of memory");
    }
    memset(j, 0, sizeof *j);
    j->size = size;
    memcpy(j->data, a.password, a.plen);
    memcpy(j->data + a.plen, a.salt, a.slen);
    j->args = a;
    j->args.password = (const char *)j->data;
    j->args.salt = (const char *)j->data + a.plen;
    wk_submit(w, &j->base, fn_ref, pbkdf2_run, pbkdf2_push, pbkdf2_release, 0);
    lua_pushboolean(L, 1);
    return 1;
}

static int workers_put(lua_State *L) {
    ms_workers *w = wk_check(L);
    ms_store *st = ms_store_check(L, 2);
    size_t klen, vlen;
    const char *key = luaL_checklstring(L, 3, &klen);
    const char *value = luaL_checklstring(L, 4, &vlen);
    luaL_checktype(L, 5, LUA_TFUNCTION);
    const char *err = wk_refuse(w);
    if (err) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushvalue(L, 2);
    int store_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    int fn_ref = wk_ref(L, w, 5);
    put_job *j = malloc(sizeof *j + klen + vlen);
    if (j == NULL) {
        luaL_unref(L, LUA_REGISTRYINDEX, store_ref);
        wk_unref(L, w, fn_ref);
        return luaL_error(L, "out of memory");
    }
    memset(j, 0, sizeof *j);
    j->store = st;
    j->store_ref = store_ref;
    j->klen = klen;
    j->vlen = vlen;
    memcpy(j->data, key, klen);
    memcpy(j->data + klen, value, vlen);
    wk_submit(w, &j->base, fn_ref, put_run, put_push, put_release, 1);
    lua_pushboolean(L, 1);
    return 1;
}

static int workers_pending(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)wk_check(L)->pending);
    return 1;
}

static int workers_hold(lua_State *L) {
    ms_workers *w = wk_check(L);
    int on = lua_toboolean(L, 2);
    pthread_mutex_lock(&w->mu);
    w->held = on && !w->stopping;
    pthread_cond_broadcast(&w->cv);
    pthread_cond_broadcast(&w->io_cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

/* Stops the threads (draining the queue unless cancel) and delivers or drops
 * what is left. */
static void wk_shutdown(ms_workers *w, int cancel) {
    if (w->efd < 0) return;
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    w->cancel = cancel;
    w->held = 0;
    pthread_cond_broadcast(&w->cv);
    pthread_cond_broadcast(&w->io_cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->started; i++) pthread_join(w->threads[i], NULL);
    if (w->io_started) pthread_join(w->io_thread, NULL);
    w->started = w->io_started = 0;
    ms_loop_unwatch(w->loop, w->efd);
    close(w->efd);
    w->efd = -1;
    /* no thread is left: the lists need no lock */
    wk_job *done = wk_take_all(&w->done);
    wk_job *queued = wk_take_all(&w->queue);
    wk_job *io = wk_take_all(&w->io);
    wk_finish_list(w, done, !cancel);
    wk_finish_list(w, queued, !cancel);
    wk_finish_list(w, io, !cancel);
}

static int workers_close(lua_State *L) {
    wk_shutdown(wk_check(L), 0);
    return 0;
}

static int workers_gc(lua_State *L) {
    ms_workers *w = wk_check(L);
    wk_shutdown(w, 1);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->io_cv);
    return 0;
}

static int workers_tostring(lua_State *L) {
    ms_workers *w = wk_check(L);
    lua_pushfstring(L, "moonstream.Workers (%s, %d threads)", w->efd < 0 ? "closed" : "open", w->nthreads);
    return 1;
}

/* core.workers(loop [, threads]) -> pool | nil, err */
static int workers_new(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    lua_Integer n = luaL_optinteger(L, 2, cores > 1 ? cores - 1 : 1);
    luaL_argcheck(L, n >= 1, 2, "at least one thread");
    if (n > WK_MAX_THREADS) n = WK_MAX_THREADS;
    ms_workers *w = lua_newuserdatauv(L, sizeof *w, 1);
    memset(w, 0, sizeof *w);
    w->efd = -1;
    w->self_ref = LUA_NOREF;
    w->nthreads = (int)n;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->io_cv, NULL);
    w->loop = loop;
    luaL_setmetatable(L, WORKERS_MT);
    lua_pushvalue(L, 1);                 /* the loop outlives the pool */
    lua_setiuservalue(L, -2, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    w->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) return luaL_fileresult(L, 0, "eventfd");
    if (ms_loop_watch(loop, efd, EPOLLIN, wk_ready, w) != 0) {
        int e = errno;
        close(efd);
        errno = e;
        return luaL_fileresult(L, 0, "eventfd");
    }
    w->efd = efd;
    return 1;
}

static const luaL_Reg workers_meth[] = {
    {"pbkdf2", workers_pbkdf2},
    {"put", workers_put},
    {"pending", workers_pending},
    {"hold", workers_hold},
    {"close", workers_close},
    {NULL, NULL}
};

static const luaL_Reg workers_metameth[] = {
    {"__index", NULL},
    {"__gc", workers_gc},
    {"__close", workers_close},
    {"__tostring", workers_tostring},
    {NULL, NULL}
};

void ms_workers_open(lua_State *L) {
    ms_createmeta(L, WORKERS_MT, workers_meth, workers_metameth);
    lua_pushcfunction(L, workers_new);
    lua_setfield(L, -2, "workers");
}
