/* The event loop's C API, for subsystems that own file descriptors
 * (libmicrohttpd's epoll fd, libcurl's sockets, WebSocket sockets, the
 * store writer's eventfd).
 * Everything runs on the one thread that owns the lua_State. */
#ifndef MOONSTREAM_LOOP_H
#define MOONSTREAM_LOOP_H

#include <stdint.h>
#include <sys/epoll.h>
#include <lua.h>

typedef struct ms_loop ms_loop;

/* Called with the epoll events (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP) seen on fd. */
typedef void (*ms_io_fn)(void *ud, int fd, uint32_t events);

/* Called once per loop iteration before waiting; returns the longest time in
 * ms the loop may sleep for this source (-1: no limit). Used for timeouts owned
 * by a library (MHD_get_timeout, curl's timer). */
typedef long (*ms_prepare_fn)(void *ud);

/* The loop userdata at stack index idx (raises if it is not a live loop). */
ms_loop *ms_loop_check(lua_State *L, int idx);

/* Watches fd for events (EPOLLIN and/or EPOLLOUT); calling it again for the
 * same fd changes the events and callback. Returns 0, or -1 with errno set. */
int ms_loop_watch(ms_loop *loop, int fd, uint32_t events, ms_io_fn fn, void *ud);

/* Stops watching fd (no-op if not watched). Call before closing fd. */
void ms_loop_unwatch(ms_loop *loop, int fd);
/* Serves fd (watched) before the other fds ready in the same turn, until it
 * is unwatched: the HTTP daemon's, so that a request ready in a turn does not
 * wait behind hundreds of WebSocket frames (heartbeats, fan-out). */
void ms_loop_first(ms_loop *loop, int fd);

/* Registers (fn, ud) to be asked for a wait limit each iteration; remove with
 * ms_loop_remove_prepare. At most a handful of sources exist. */
int ms_loop_add_prepare(ms_loop *loop, ms_prepare_fn fn, void *ud);
void ms_loop_remove_prepare(ms_loop *loop, ms_prepare_fn fn, void *ud);

/* Monotonic time in milliseconds. */
double ms_loop_now(void);

#endif
