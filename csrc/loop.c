/* The event loop: epoll for file descriptors, a binary heap of timers,
 * signalfd for SIGINT/SIGTERM/SIGHUP, and an "after each iteration" hook that
 * the server uses to flush the records' group commit (record_engine.lua). All of it
 * runs on the thread that owns the lua_State; callbacks run on the main Lua
 * thread (LUA_RIDX_MAINTHREAD), never on whichever coroutine created the loop. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

#include "core.h"
#include "loop.h"
#include "metrics.h"

#define LOOP_MT "moonstream.Loop"
#define TIMER_MT "moonstream.Timer"
#define LOOP_MAX_EVENTS 128
#define LOOP_MAX_PREPARE 8

typedef struct loop_timer {
    double due;           /* ms, ms_loop_now() clock */
    uint64_t seq;         /* ties broken by creation order */
    size_t heap_index;    /* position in loop->heap while armed */
    int self_ref;         /* registry ref to the userdata while armed, else LUA_NOREF */
    ms_loop *loop;        /* NULL once fired, cancelled, or the loop closed */
    int closed;           /* timer:close() ran: any further use raises */
} loop_timer;

typedef struct loop_watch {
    ms_io_fn fn;          /* NULL: slot unused */
    void *ud;
    uint32_t events;
    uint32_t gen;         /* bumped on every (re)registration of the fd */
    int lua_ref;          /* Lua watchers: registry ref to the callback */
    int first;            /* served before the other fds of a batch (ms_loop_first) */
} loop_watch;

struct ms_loop {
    int epfd;             /* -1 once closed */
    lua_State *L;         /* main thread */
    int running, stop_requested;
    loop_timer **heap;
    size_t ntimers, heap_cap;
    uint64_t timer_seq;
    loop_watch *watches;  /* indexed by fd */
    int nwatches;
    uint32_t next_gen;
    struct { ms_prepare_fn fn; void *ud; } prepare[LOOP_MAX_PREPARE];
    int nprepare;
    int iteration_ref;    /* Lua function run after each iteration */
    int sigfd, signal_ref;
    sigset_t sigmask, old_sigmask;
    int tfd;              /* embedding (loop:fd()): a timerfd due when the loop next needs a step, else -1 */
};

double ms_loop_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---- timer heap (min-heap on (due, seq)) ---- */

static int timer_before(const loop_timer *a, const loop_timer *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_set(ms_loop *loop, size_t i, loop_timer *t) {
    loop->heap[i] = t;
    t->heap_index = i;
}

static void heap_sift_up(ms_loop *loop, size_t i) {
    loop_timer *t = loop->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!timer_before(t, loop->heap[parent])) break;
        heap_set(loop, i, loop->heap[parent]);
        i = parent;
    }
    heap_set(loop, i, t);
}

static void heap_sift_down(ms_loop *loop, size_t i) {
    loop_timer *t = loop->heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= loop->ntimers) break;
        if (child + 1 < loop->ntimers && timer_before(loop->heap[child + 1], loop->heap[child]))
            child++;
        if (!timer_before(loop->heap[child], t)) break;
        heap_set(loop, i, loop->heap[child]);
        i = child;
    }
    heap_set(loop, i, t);
}

static void heap_remove(ms_loop *loop, loop_timer *t) {
    size_t i = t->heap_index;
    loop_timer *last = loop->heap[--loop->ntimers];
    if (last != t) {
        heap_set(loop, i, last);
        heap_sift_up(loop, i);
        heap_sift_down(loop, last->heap_index);
    }
}

/* Disarms t: removes it from the heap and drops the registry refs that kept it
 * and its callback alive. Safe on a disarmed timer. */
static void timer_disarm(lua_State *L, loop_timer *t) {
    if (t->loop == NULL) return;
    heap_remove(t->loop, t);
    t->loop = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, t->self_ref);
    t->self_ref = LUA_NOREF;
}

/* ---- userdata access ---- */

ms_loop *ms_loop_check(lua_State *L, int idx) {
    ms_loop *loop = luaL_checkudata(L, idx, LOOP_MT);
    if (loop->epfd < 0) luaL_error(L, "attempt to use a closed loop");
    return loop;
}

static loop_timer *check_timer(lua_State *L, int idx) {
    loop_timer *t = luaL_checkudata(L, idx, TIMER_MT);
    if (t->closed) luaL_error(L, "attempt to use a closed timer");
    return t;
}

/* ---- C API for fd owners ---- */

int ms_loop_watch(ms_loop *loop, int fd, uint32_t events, ms_io_fn fn, void *ud) {
    if (fd < 0) { errno = EBADF; return -1; }
    if (fd >= loop->nwatches) {
        int n = loop->nwatches ? loop->nwatches : 64;
        while (n <= fd) n *= 2;
        loop_watch *w = realloc(loop->watches, (size_t)n * sizeof *w);
        if (w == NULL) { errno = ENOMEM; return -1; }
        memset(w + loop->nwatches, 0, (size_t)(n - loop->nwatches) * sizeof *w);
        for (int i = loop->nwatches; i < n; i++) w[i].lua_ref = LUA_NOREF;
        loop->watches = w;
        loop->nwatches = n;
    }
    loop_watch *w = &loop->watches[fd];
    struct epoll_event ev = { .events = events };
    uint32_t gen = ++loop->next_gen;
    ev.data.u64 = ((uint64_t)gen << 32) | (uint32_t)fd;
    int op = w->fn ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(loop->epfd, op, fd, &ev) != 0) return -1;
    w->fn = fn; w->ud = ud; w->events = events; w->gen = gen;
    return 0;
}

void ms_loop_unwatch(ms_loop *loop, int fd) {
    if (fd < 0 || fd >= loop->nwatches || loop->watches[fd].fn == NULL) return;
    loop_watch *w = &loop->watches[fd];
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
    if (w->lua_ref != LUA_NOREF) luaL_unref(loop->L, LUA_REGISTRYINDEX, w->lua_ref);
    memset(w, 0, sizeof *w);
    w->lua_ref = LUA_NOREF;
}

void ms_loop_first(ms_loop *loop, int fd) {
    if (fd >= 0 && fd < loop->nwatches && loop->watches[fd].fn) loop->watches[fd].first = 1;
}

int ms_loop_add_prepare(ms_loop *loop, ms_prepare_fn fn, void *ud) {
    if (loop->nprepare == LOOP_MAX_PREPARE) { errno = ENOSPC; return -1; }
    loop->prepare[loop->nprepare].fn = fn;
    loop->prepare[loop->nprepare].ud = ud;
    loop->nprepare++;
    return 0;
}

void ms_loop_remove_prepare(ms_loop *loop, ms_prepare_fn fn, void *ud) {
    for (int i = 0; i < loop->nprepare; i++) {
        if (loop->prepare[i].fn == fn && loop->prepare[i].ud == ud) {
            loop->prepare[i] = loop->prepare[--loop->nprepare];
            return;
        }
    }
}

/* ---- Lua fd watchers and signals ---- */

/* Calls the Lua callback of a Lua-level watcher with (readable, writable, failed). */
static void loop_lua_watch_fn(void *ud, int fd, uint32_t events) {
    ms_loop *loop = ud;
    lua_State *L = loop->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, loop->watches[fd].lua_ref);
    lua_pushboolean(L, (events & EPOLLIN) != 0);
    lua_pushboolean(L, (events & EPOLLOUT) != 0);
    lua_pushboolean(L, (events & (EPOLLERR | EPOLLHUP)) != 0);
    ms_pcall(L, 3, 0);
}

static uint32_t loop_parse_events(lua_State *L, int idx) {
    const char *s = luaL_checkstring(L, idx);
    uint32_t ev = 0;
    if (strchr(s, 'r')) ev |= EPOLLIN;
    if (strchr(s, 'w')) ev |= EPOLLOUT;
    if (ev == 0) luaL_argerror(L, idx, "expected \"r\", \"w\" or \"rw\"");
    return ev;
}

/* loop:watch(fd, "r"|"w"|"rw", fn [, first]) -> true | nil, err. Calling again
 * for the same fd replaces events and callback; loop:unwatch(fd) stops.
 * first: served before the other fds ready in the same turn (ms_loop_first). */
static int loop_watch_lua(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    int fd = (int)luaL_checkinteger(L, 2);
    uint32_t events = loop_parse_events(L, 3);
    luaL_checktype(L, 4, LUA_TFUNCTION);
    lua_pushvalue(L, 4);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    int old_ref = (fd >= 0 && fd < loop->nwatches) ? loop->watches[fd].lua_ref : LUA_NOREF;
    if (ms_loop_watch(loop, fd, events, loop_lua_watch_fn, loop) != 0) {
        int e = errno;
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        errno = e;
        return luaL_fileresult(L, 0, NULL);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, old_ref);
    loop->watches[fd].lua_ref = ref;
    loop->watches[fd].first = lua_toboolean(L, 5);  /* replaced like events and callback */
    lua_pushboolean(L, 1);
    return 1;
}

static int loop_unwatch_lua(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    ms_loop_unwatch(loop, (int)luaL_checkinteger(L, 2));
    return 0;
}

static const char *const loop_signal_names[] = { "INT", "TERM", "HUP", NULL };
static const int loop_signal_numbers[] = { SIGINT, SIGTERM, SIGHUP };

static void loop_signal_fn(void *ud, int fd, uint32_t events) {
    ms_loop *loop = ud;
    lua_State *L = loop->L;
    struct signalfd_siginfo info;
    while (read(fd, &info, sizeof info) == (ssize_t)sizeof info) {
        for (int i = 0; loop_signal_names[i]; i++) {
            if ((int)info.ssi_signo != loop_signal_numbers[i]) continue;
            lua_rawgeti(L, LUA_REGISTRYINDEX, loop->signal_ref);
            lua_pushstring(L, loop_signal_names[i]);
            ms_pcall(L, 1, 0);
        }
    }
}

static void loop_signals_off(ms_loop *loop) {
    if (loop->sigfd < 0) return;
    ms_loop_unwatch(loop, loop->sigfd);
    close(loop->sigfd);
    loop->sigfd = -1;
    sigprocmask(SIG_SETMASK, &loop->old_sigmask, NULL);
    luaL_unref(loop->L, LUA_REGISTRYINDEX, loop->signal_ref);
    loop->signal_ref = LUA_NOREF;
}

/* loop:signals(fn) -> true | nil, err: delivers SIGINT, SIGTERM and SIGHUP to
 * fn("INT"|"TERM"|"HUP") through a signalfd (no async signal handlers). The
 * signals are blocked for the process until loop:signals(nil) or close, so
 * only the server binary should use it (blocked masks survive exec). */
static int loop_signals_lua(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    loop_signals_off(loop);
    if (lua_isnoneornil(L, 2)) { lua_pushboolean(L, 1); return 1; }
    luaL_checktype(L, 2, LUA_TFUNCTION);
    sigemptyset(&loop->sigmask);
    for (int i = 0; loop_signal_names[i]; i++) sigaddset(&loop->sigmask, loop_signal_numbers[i]);
    if (sigprocmask(SIG_BLOCK, &loop->sigmask, &loop->old_sigmask) != 0)
        return luaL_fileresult(L, 0, "sigprocmask");
    int fd = signalfd(-1, &loop->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0 || ms_loop_watch(loop, fd, EPOLLIN, loop_signal_fn, loop) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        sigprocmask(SIG_SETMASK, &loop->old_sigmask, NULL);
        errno = e;
        return luaL_fileresult(L, 0, "signalfd");
    }
    loop->sigfd = fd;
    lua_pushvalue(L, 2);
    loop->signal_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- timers ---- */

/* loop:timer(ms, fn) -> timer: calls fn() once after ms milliseconds (0 = on
 * the next iteration). timer:cancel() disarms it; a fired or cancelled timer
 * is inert. timer:close() (and __close) disarms it for good: using it again
 * raises. The loop keeps an armed timer alive, so callers may drop it. */
static void loop_host_timer_sooner(ms_loop *loop, double ms);

static int loop_timer_lua(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    lua_Number ms = luaL_checknumber(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (loop->ntimers == loop->heap_cap) {
        size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
        loop_timer **h = realloc(loop->heap, cap * sizeof *h);
        if (h == NULL) return luaL_error(L, "out of memory");
        loop->heap = h;
        loop->heap_cap = cap;
    }
    loop_timer *t = lua_newuserdatauv(L, sizeof *t, 1);
    t->loop = NULL;
    t->self_ref = LUA_NOREF;
    t->closed = 0;
    luaL_setmetatable(L, TIMER_MT);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, -2, 1);
    t->due = ms_loop_now() + (ms > 0 ? ms : 0);
    t->seq = loop->timer_seq++;
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->loop = loop;
    loop->heap[loop->ntimers] = t;
    t->heap_index = loop->ntimers++;
    heap_sift_up(loop, t->heap_index);
    /* a timer armed between steps (host code calling in): the host timer must not sleep past it */
    if (loop->tfd >= 0 && !loop->running) loop_host_timer_sooner(loop, t->due - ms_loop_now());
    return 1;
}

static int timer_cancel(lua_State *L) {
    timer_disarm(L, check_timer(L, 1));
    return 0;
}

static int timer_active(lua_State *L) {
    lua_pushboolean(L, check_timer(L, 1)->loop != NULL);
    return 1;
}

/* timer:close(), __close, __gc: disarms the timer; safe twice, never raises.
 * (__gc only meets a disarmed timer, or any timer while the state closes.) */
static int timer_close(lua_State *L) {
    loop_timer *t = luaL_checkudata(L, 1, TIMER_MT);
    timer_disarm(L, t);
    t->closed = 1;
    return 0;
}

static int timer_tostring(lua_State *L) {
    loop_timer *t = luaL_checkudata(L, 1, TIMER_MT);
    lua_pushfstring(L, TIMER_MT " (%s)", t->closed ? "closed" : t->loop ? "armed" : "inert");
    return 1;
}

/* Fires every timer due by now that existed before this pass started, so a
 * callback re-arming a 0 ms timer cannot starve the loop. Returns the count. */
static int loop_run_timers(ms_loop *loop) {
    lua_State *L = loop->L;
    double now = ms_loop_now();
    uint64_t seq_limit = loop->timer_seq;
    int fired = 0;
    while (loop->ntimers > 0 && loop->epfd >= 0) {
        loop_timer *t = loop->heap[0];
        if (t->due > now || t->seq >= seq_limit) break;
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->self_ref); /* keep t alive during the call */
        lua_getiuservalue(L, -1, 1);
        timer_disarm(L, t);
        ms_pcall(L, 0, 0);
        lua_pop(L, 1);
        fired++;
    }
    return fired;
}

/* ---- the loop ---- */

/* Milliseconds the loop may sleep: the caller's limit, capped by the next
 * timer and by every prepare source. -1 means forever. */
static int loop_wait_limit(ms_loop *loop, long limit) {
    if (loop->ntimers > 0) {
        double d = loop->heap[0]->due - ms_loop_now();
        long t = d <= 0 ? 0 : (long)d + 1;
        if (limit < 0 || t < limit) limit = t;
    }
    for (int i = 0; i < loop->nprepare; i++) {
        long p = loop->prepare[i].fn(loop->prepare[i].ud);
        if (p >= 0 && (limit < 0 || p < limit)) limit = p;
    }
    if (limit > 60000) limit = 60000;
    return (int)limit;
}

/* Runs the iteration hook; returns 1 when it reports having done work
 * (it returns true), which may have woken requests that need another turn. */
static int loop_run_hook(ms_loop *loop) {
    if (loop->iteration_ref == LUA_NOREF || loop->epfd < 0) return 0;
    lua_State *L = loop->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, loop->iteration_ref);
    if (!ms_pcall(L, 0, 1)) return 0;
    int busy = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return busy;
}

/* Embedding: a host loop watches loop:fd() (the epoll fd) and calls
 * run_once(0) when it is readable. Timers and the prepare sources' deadlines
 * are not fds, so a timerfd in the epoll set is armed after each iteration
 * to when the loop next needs a turn: the epoll fd turns readable then. */
static void loop_arm_host_timer(ms_loop *loop) {
    long limit = loop_wait_limit(loop, -1);
    struct itimerspec its = { { 0, 0 }, { 0, 0 } };  /* -1: disarmed */
    if (limit == 0) its.it_value.tv_nsec = 1;      /* at once */
    else if (limit > 0) {
        its.it_value.tv_sec = limit / 1000;
        its.it_value.tv_nsec = (limit % 1000) * 1000000L;
    }
    timerfd_settime(loop->tfd, 0, &its, NULL);
}

/* Brings the host timer forward to ms from now when it is due later (or
 * not armed); outside a step, where the prepare sources must not run. */
static void loop_host_timer_sooner(ms_loop *loop, double ms) {
    struct itimerspec cur;
    if (timerfd_gettime(loop->tfd, &cur) != 0) return;
    double left = (double)cur.it_value.tv_sec * 1000.0 + (double)cur.it_value.tv_nsec / 1e6;
    int armed = cur.it_value.tv_sec != 0 || cur.it_value.tv_nsec != 0;
    if (armed && left <= ms) return;
    long whole = ms <= 0 ? 0 : (long)ms + 1;
    struct itimerspec its = { { 0, 0 }, { whole / 1000, (whole % 1000) * 1000000L } };
    if (whole == 0) its.it_value.tv_nsec = 1;
    timerfd_settime(loop->tfd, 0, &its, NULL);
}

static void loop_host_timer_fired(void *ud, int fd, uint32_t events) {
    uint64_t expirations;
    ssize_t n = read(fd, &expirations, sizeof expirations);
    (void)n;  /* EAGAIN when already drained: nothing to do either way */
}

/* One iteration: ask the prepare sources for a wait limit (they may do work
 * of their own, e.g. MHD_run for resumed connections), run the hook so that
 * work is committed before sleeping, wait for fds (at most timeout_ms; -1 =
 * until something happens), dispatch them, fire due timers, run the hook
 * again. Returns the number of fd events and timers handled. */
static int loop_iterate(ms_loop *loop, long timeout_ms) {
    struct epoll_event events[LOOP_MAX_EVENTS];
    int limit = loop_wait_limit(loop, timeout_ms);
    if (loop_run_hook(loop)) limit = 0;
    if (loop->epfd < 0) return 0;
    int n = epoll_wait(loop->epfd, events, LOOP_MAX_EVENTS, limit);
    if (n < 0) n = 0; /* EINTR: just go round */
    double woke = ms_loop_now();  /* how long this iteration keeps new events waiting (metrics) */
    /* two passes: the fds marked first, then the others */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n && loop->epfd >= 0; i++) {
            int fd = (int)(uint32_t)events[i].data.u64;
            uint32_t gen = (uint32_t)(events[i].data.u64 >> 32);
            if (fd >= loop->nwatches) continue;
            loop_watch *w = &loop->watches[fd];
            /* skip fds unwatched or re-registered by an earlier callback of this batch */
            if (w->fn == NULL || w->gen != gen || w->first != (pass == 0)) continue;
            w->fn(w->ud, fd, events[i].events);
        }
    }
    if (loop->epfd < 0) return n;
    n += loop_run_timers(loop);
    loop_run_hook(loop);
    if (n > 0) ms_metrics_loop_busy((ms_loop_now() - woke) / 1000.0);
    if (loop->tfd >= 0) loop_arm_host_timer(loop);
    return n;
}

/* loop:run_once([timeout_ms]) -> count. timeout_ms defaults to 0 (poll). */
static int loop_run_once(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    lua_Number timeout = luaL_optnumber(L, 2, 0);
    if (loop->running) return luaL_error(L, "loop is already running");
    loop->running = 1;
    int n = loop_iterate(loop, timeout < 0 ? -1 : (long)timeout);
    loop->running = 0;
    lua_pushinteger(L, n);
    return 1;
}

/* loop:run(): iterates until loop:stop() is called from a callback. */
static int loop_run(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    if (loop->running) return luaL_error(L, "loop is already running");
    loop->running = 1;
    loop->stop_requested = 0;
    while (!loop->stop_requested && loop->epfd >= 0) loop_iterate(loop, -1);
    loop->running = 0;
    loop->stop_requested = 0;
    return 0;
}

static int loop_stop(lua_State *L) {
    ms_loop_check(L, 1)->stop_requested = 1;
    return 0;
}

/* loop:on_iteration(fn|nil): fn() runs before each wait and after each
 * iteration (group commit); it returns true when it did work. */
static int loop_on_iteration(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_unref(L, LUA_REGISTRYINDEX, loop->iteration_ref);
    loop->iteration_ref = LUA_NOREF;
    if (!lua_isnoneornil(L, 2)) {
        lua_pushvalue(L, 2);
        loop->iteration_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

/* loop:fd() -> the epoll fd, for a host event loop: when it is readable,
 * call loop:run_once(0). Turns on the timerfd above (a syscall per
 * iteration, so only for loops that are driven this way). */
static int loop_fd(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    if (loop->tfd < 0) {
        int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (tfd < 0) return luaL_fileresult(L, 0, "timerfd_create");
        if (ms_loop_watch(loop, tfd, EPOLLIN, loop_host_timer_fired, loop) != 0) {
            close(tfd);
            return luaL_fileresult(L, 0, "epoll_ctl");
        }
        loop->tfd = tfd;
        loop_arm_host_timer(loop);
    }
    lua_pushinteger(L, loop->epfd);
    return 1;
}

/* core.wallclock() -> milliseconds since the Unix epoch (an integer), for
 * times shown to people and other programs (monitoring's from/to); durations
 * use core.now(), which never jumps. */
static int loop_wallclock_lua(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushinteger(L, (lua_Integer)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    return 1;
}

static int loop_now_lua(lua_State *L) {
    lua_pushnumber(L, ms_loop_now());
    return 1;
}

/* Frees everything; safe twice (close, __gc, __close share it). Armed timers
 * are disarmed without firing; fd owners must have unwatched already (their
 * slots are simply dropped). */
static int loop_close(lua_State *L) {
    ms_loop *loop = luaL_checkudata(L, 1, LOOP_MT);
    if (loop->epfd < 0) return 0;
    loop_signals_off(loop);
    if (loop->tfd >= 0) {
        ms_loop_unwatch(loop, loop->tfd);
        close(loop->tfd);
        loop->tfd = -1;
    }
    while (loop->ntimers > 0) timer_disarm(L, loop->heap[0]);
    for (int fd = 0; fd < loop->nwatches; fd++)
        if (loop->watches[fd].lua_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, loop->watches[fd].lua_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, loop->iteration_ref);
    loop->iteration_ref = LUA_NOREF;
    free(loop->heap);
    free(loop->watches);
    loop->heap = NULL;
    loop->watches = NULL;
    loop->nwatches = 0;
    close(loop->epfd);
    loop->epfd = -1;
    return 0;
}

static int loop_tostring(lua_State *L) {
    ms_loop *loop = luaL_checkudata(L, 1, LOOP_MT);
    lua_pushfstring(L, "moonstream.Loop (%s)", loop->epfd < 0 ? "closed" : "open");
    return 1;
}

/* core.loop() -> loop | nil, err */
static int loop_new(lua_State *L) {
    ms_loop *loop = lua_newuserdatauv(L, sizeof *loop, 0);
    memset(loop, 0, sizeof *loop);
    loop->epfd = -1;
    loop->sigfd = -1;
    loop->tfd = -1;
    loop->iteration_ref = loop->signal_ref = LUA_NOREF;
    luaL_setmetatable(L, LOOP_MT);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    loop->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) return luaL_fileresult(L, 0, "epoll_create1");
    return 1;
}

static const luaL_Reg loop_meth[] = {
    {"timer", loop_timer_lua},
    {"watch", loop_watch_lua},
    {"unwatch", loop_unwatch_lua},
    {"signals", loop_signals_lua},
    {"on_iteration", loop_on_iteration},
    {"run_once", loop_run_once},
    {"run", loop_run},
    {"stop", loop_stop},
    {"now", loop_now_lua},
    {"fd", loop_fd},
    {"close", loop_close},
    {NULL, NULL}
};

static const luaL_Reg loop_metameth[] = {
    {"__index", NULL},
    {"__gc", loop_close},
    {"__close", loop_close},
    {"__tostring", loop_tostring},
    {NULL, NULL}
};

static const luaL_Reg timer_meth[] = {
    {"cancel", timer_cancel},
    {"active", timer_active},
    {"close", timer_close},
    {NULL, NULL}
};

static const luaL_Reg timer_metameth[] = {
    {"__index", NULL},
    {"__gc", timer_close},
    {"__close", timer_close},
    {"__tostring", timer_tostring},
    {NULL, NULL}
};


void ms_loop_open(lua_State *L) {
    ms_createmeta(L, LOOP_MT, loop_meth, loop_metameth);
    ms_createmeta(L, TIMER_MT, timer_meth, timer_metameth);
    lua_pushcfunction(L, loop_new);
    lua_setfield(L, -2, "loop");
    lua_pushcfunction(L, loop_now_lua);
    lua_setfield(L, -2, "now");
    lua_pushcfunction(L, loop_wallclock_lua);
    lua_setfield(L, -2, "wallclock");
}
