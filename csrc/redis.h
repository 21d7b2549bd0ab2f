/* redis: one connection to Redis (Debian's hiredis, async API) on the
 * server's event loop (loop.h), with reconnection and a bound on replies.
 *
 * A connection is either a command connection (ms_redis_command) or a
 * subscriber (ms_redis_subscribe: messages go to on_message); Redis puts a
 * subscribed connection in a mode where other commands are refused.
 * Every callback runs on the loop's thread, from inside hiredis: they must not
 * raise (C callers), and Lua is reached only through ms_pcall. */
#ifndef MOONSTREAM_REDIS_H
#define MOONSTREAM_REDIS_H

#include <stddef.h>
#include <hiredis/hiredis.h>
#include "loop.h"

typedef struct ms_redis ms_redis;

/* A command's reply: reply NULL and err set when the connection failed or
 * closed before Redis answered (the reply is valid during the call only). */
typedef void (*ms_redis_reply_fn)(void *ud, redisReply *reply, const char *err);
/* The connection came up (up = 1, after AUTH and SELECT succeeded) or went down (up = 0, err why). */
typedef void (*ms_redis_state_fn)(void *ud, int up, const char *err);
/* A message published to a subscribed channel. */
typedef void (*ms_redis_message_fn)(void *ud, const char *channel, size_t clen, const char *data, size_t dlen);

typedef struct ms_redis_opts {
    const char *host;          /* an IP address or name hiredis resolves */
    int port;
    const char *password;      /* NULL: no AUTH */
    int db;                    /* SELECT db when > 0 */
    size_t max_reply;          /* bytes one unread reply may hold; a larger one drops the connection */
    ms_redis_state_fn on_state;
    ms_redis_message_fn on_message;  /* non-NULL: a subscriber connection */
    void *ud;
} ms_redis_opts;

/* Connects (asynchronously) and keeps reconnecting with backoff until freed.
 * Strings are copied. NULL when out of memory. */
ms_redis *ms_redis_new(ms_loop *loop, const ms_redis_opts *opts);
/* Fails the commands still waiting (their callbacks run with err "closed")
 * and closes the connection. */
void ms_redis_free(ms_redis *r);
int ms_redis_up(const ms_redis *r);
/* How many times the connection came up: a new value is a new connection,
 * perhaps to a restarted Redis (what was loaded there is gone). */
unsigned long ms_redis_ups(const ms_redis *r);
/* The reason the connection is down ("" when up). */
const char *ms_redis_error(const ms_redis *r);

/* Sends a command. 0: fn runs later, exactly once; -1: not sent (the
 * connection is down or closed): fn does not run, *err says why. */
int ms_redis_command(ms_redis *r, int argc, const char **argv, const size_t *argvlen, ms_redis_reply_fn fn,
                     void *ud, const char **err);
/* Commands waiting with no reply for timeout_ms drop the connection (their
 * callbacks fail): a stalled Redis never holds a caller that waits for the
 * loop. 0 (the default): no bound. */
void ms_redis_set_reply_timeout(ms_redis *r, double timeout_ms);
/* Commands sent and not answered yet. */
size_t ms_redis_waiting(const ms_redis *r);
/* Runs this connection's I/O (and nothing else) until every command sent so
 * far has been answered, or timeout_ms passed: then the connection is
 * dropped and their callbacks fail. Only for callers that must wait here:
 * shutdown draining and the commands that still settle (see engine_lua.c). */
void ms_redis_settle(ms_redis *r, double timeout_ms);

/* Subscriber connections: (un)subscribe to a channel. The subscriptions are
 * renewed by themselves after a reconnection. 0, or -1 out of memory. */
int ms_redis_subscribe(ms_redis *r, const char *channel, size_t len);
int ms_redis_unsubscribe(ms_redis *r, const char *channel, size_t len);

/* The cluster's event messages (cluster/bus.lua), in this one place for C
 * (fastpath.c publishes its emits) and Lua (core.redis_event_*): channel
 * MS_REDIS_EVENT_PREFIX + event name, message
 * "<node id>\n<user id as JSON>\n<data JSON text, or empty: no data>".
 * Publishes one, without waiting for the reply (it is pipelined with the
 * connection's other commands, in order). 0, or -1 and *err (not sent). */
#define MS_REDIS_EVENT_PREFIX "ms:c:e:"
int ms_redis_publish_event(ms_redis *r, const char *node, size_t nlen, const char *uid, size_t ulen,
                           const char *name, size_t namelen, const char *data, size_t dlen, const char **err);
/* Splits a message: 1 with its parts, 0 when it is not one. */
typedef struct ms_redis_event {
    const char *node, *uid, *data;   /* data NULL: none */
    size_t nlen, ulen, dlen;
} ms_redis_event;
int ms_redis_event_parse(const char *msg, size_t len, ms_redis_event *out);

/* Its slot, which turns NULL when the connection is closed: a holder (the
 * record store) checks it before each use. */
ms_redis *const *ms_redis_slot_check(lua_State *L, int idx);

#endif
