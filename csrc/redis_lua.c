/* redis_lua: a Redis connection (redis.c) as Lua sees it.
 *
 *   core.redis(loop, { host =, port =, password = nil, db = 0, max_reply = bytes,
 *                      on_state = function(up, err), on_message = function(channel, data) })
 *   conn:command({ "SET", "k", "v" }, function(reply, err)) -> true | nil, err (not sent)
 *   conn:subscribe(channel)  conn:unsubscribe(channel)     (connections with on_message)
 *   conn:up() -> bool, err   conn:waiting() -> n          conn:close()
 *   conn:settle(ms)   runs this connection's I/O until every command sent is
 *                     answered (callbacks included) or ms passed (then they
 *                     fail): for callers that must answer before returning
 *   conn:reply_timeout(ms)  commands with no reply for ms fail (see redis.h)
 *   conn:publish_event(node_id, uid_json, name, text|nil) -> true | nil, err
 *   core.redis_event_parse(message) -> node_id, uid_json, text|nil | nil
 *   core.redis_event_channel_prefix   (the event messages' format: redis.h)
 *
 * A reply is a string (bulk or status), an integer, nil (a nil bulk; false
 * inside an array) or a table (array); an error reply is nil, "ERR ...".
 * Lua runs from hiredis callbacks only through ms_pcall and a trampoline. */
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "redis.h"

#define REDIS_MT "moonstream.Redis"
#define UV_LOOP 1
#define MAX_ARGS 1024

typedef struct redis_box {
    ms_redis *r;                /* NULL when closed */
    lua_State *L;               /* main thread */
    int state_ref, message_ref;
} redis_box;

typedef struct lua_cmd {
    redis_box *box;
    int fn_ref;
} lua_cmd;

/* The connection userdata at idx (raises if it is not a live one). */
static ms_redis *redis_check(lua_State *L, int idx) {
    redis_box *b = luaL_checkudata(L, idx, REDIS_MT);
    if (b->r == NULL) luaL_error(L, "attempt to use a closed Redis connection");
    return b->r;
}

ms_redis *const *ms_redis_slot_check(lua_State *L, int idx) {
    redis_box *b = luaL_checkudata(L, idx, REDIS_MT);
    if (b->r == NULL) luaL_error(L, "attempt to use a closed Redis connection");
    return (ms_redis *const *)&b->r;
}

static void push_reply(lua_State *L, const redisReply *r, int in_array) {
    luaL_checkstack(L, 3, "Redis reply too deep");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_reply(L, r->element[i], 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default:
        if (in_array) lua_pushboolean(L, 0);
        else lua_pushnil(L);
    }
}

typedef struct reply_args {
    int fn_ref;
    const redisReply *reply;
    const char *err;
} reply_args;

static int reply_tramp(lua_State *L) {
    reply_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->fn_ref);
    if (a->reply == NULL || a->reply->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        if (a->reply) lua_pushlstring(L, a->reply->str, a->reply->len);
        else lua_pushstring(L, a->err);
    } else {
        push_reply(L, a->reply, 0);
        lua_pushnil(L);
    }
    lua_call(L, 2, 0);
    return 0;
}

static void on_lua_reply(void *ud, redisReply *reply, const char *err) {
    lua_cmd *c = ud;
    redis_box *b = c->box;
    lua_State *L = b->L;
    if (b->r != NULL && lua_checkstack(L, 3)) {  /* a closed connection calls nothing back */
        reply_args a = { c->fn_ref, reply, err };
        lua_pushcfunction(L, reply_tramp);
        lua_pushlightuserdata(L, &a);
        ms_pcall(L, 1, 0);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, c->fn_ref);
    free(c);
}

static int state_tramp(lua_State *L) {
    redis_box *b = lua_touserdata(L, 1);
    const char *err = lua_touserdata(L, 3);
    lua_rawgeti(L, LUA_REGISTRYINDEX, b->state_ref);
    lua_pushboolean(L, lua_toboolean(L, 2));
    if (err) lua_pushstring(L, err);
    else lua_pushnil(L);
    lua_call(L, 2, 0);
    return 0;
}

static void on_state(void *ud, int up, const char *err) {
    redis_box *b = ud;
    lua_State *L = b->L;
    if (b->r == NULL || b->state_ref == LUA_NOREF || !lua_checkstack(L, 4)) return;
    lua_pushcfunction(L, state_tramp);
    lua_pushlightuserdata(L, b);
    lua_pushboolean(L, up);
    lua_pushlightuserdata(L, (void *)err);
    ms_pcall(L, 3, 0);
}

typedef struct message_args {
    redis_box *b;
    const char *ch, *data;
    size_t clen, dlen;
} message_args;

static int message_tramp(lua_State *L) {
    message_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->b->message_ref);
    lua_pushlstring(L, a->ch, a->clen);
    lua_pushlstring(L, a->data, a->dlen);
    lua_call(L, 2, 0);
    return 0;
}

static void on_message(void *ud, const char *ch, size_t clen, const char *data, size_t dlen) {
    redis_box *b = ud;
    lua_State *L = b->L;
    if (b->r == NULL || !lua_checkstack(L, 4)) return;
    message_args a = { b, ch, data, clen, dlen };
    lua_pushcfunction(L, message_tramp);
    lua_pushlightuserdata(L, &a);
    ms_pcall(L, 1, 0);
}

static int redis_command(lua_State *L) {
    redis_box *b = luaL_checkudata(L, 1, REDIS_MT);
    ms_redis *r = redis_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    luaL_argcheck(L, n >= 1 && n <= MAX_ARGS, 2, "1 to 1024 arguments");
    const char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    luaL_checkstack(L, (int)n + 4, "too many arguments");
    for (lua_Integer i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        argv[i] = luaL_tolstring(L, -1, &lens[i]);  /* anchored on the stack until we return */
        lua_remove(L, -2);
    }
    lua_cmd *c = malloc(sizeof *c);
    if (c == NULL) return luaL_error(L, "not enough memory");
    lua_pushvalue(L, 3);
    c->box = b;
    c->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    const char *err;
    if (ms_redis_command(r, (int)n, argv, lens, on_lua_reply, c, &err) != 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, c->fn_ref);
        free(c);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int redis_sub(lua_State *L, int on) {
    redis_box *b = luaL_checkudata(L, 1, REDIS_MT);
    ms_redis *r = redis_check(L, 1);
    if (b->message_ref == LUA_NOREF) return luaL_error(L, "not a subscriber connection (no on_message)");
    size_t len;
    const char *ch = luaL_checklstring(L, 2, &len);
    if ((on ? ms_redis_subscribe(r, ch, len) : ms_redis_unsubscribe(r, ch, len)) != 0)
        return luaL_error(L, "not enough memory");
    return 0;
}

static int redis_subscribe(lua_State *L) {
    return redis_sub(L, 1);
}

static int redis_unsubscribe(lua_State *L) {
    return redis_sub(L, 0);
}

static int redis_publish_event(lua_State *L) {
    ms_redis *r = redis_check(L, 1);
    size_t nlen, ulen, namelen, dlen = 0;
    const char *node = luaL_checklstring(L, 2, &nlen), *uid = luaL_checklstring(L, 3, &ulen);
    const char *name = luaL_checklstring(L, 4, &namelen), *data = luaL_optlstring(L, 5, NULL, &dlen);
    const char *err = NULL;
    if (ms_redis_publish_event(r, node, nlen, uid, ulen, name, namelen, data, dlen, &err) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int redis_event_parse(lua_State *L) {
    size_t len;
    const char *msg = luaL_checklstring(L, 1, &len);
    ms_redis_event ev;
    if (!ms_redis_event_parse(msg, len, &ev)) return 0;
    lua_pushlstring(L, ev.node, ev.nlen);
    lua_pushlstring(L, ev.uid, ev.ulen);
    if (ev.data) lua_pushlstring(L, ev.data, ev.dlen);
    else lua_pushnil(L);
    return 3;
}

static int redis_up(lua_State *L) {
    ms_redis *r = redis_check(L, 1);
    lua_pushboolean(L, ms_redis_up(r));
    if (ms_redis_up(r)) return 1;
    lua_pushstring(L, ms_redis_error(r));
    return 2;
}

static int redis_waiting(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)ms_redis_waiting(redis_check(L, 1)));
    return 1;
}

/* Argument 2: a positive number of ms. */
static double arg_ms(lua_State *L) {
    lua_Number ms = luaL_checknumber(L, 2);
    luaL_argcheck(L, ms > 0, 2, "a positive number of ms");
    return (double)ms;
}

static int redis_settle(lua_State *L) {
    ms_redis *r = redis_check(L, 1);
    ms_redis_settle(r, arg_ms(L));
    return 0;
}

/* conn:reply_timeout(ms): commands waiting with no reply for ms fail (the
 * connection is dropped and reconnects); callers that wait for the loop
 * then never hang on a stalled Redis. */
static int redis_reply_timeout(lua_State *L) {
    ms_redis *r = redis_check(L, 1);
    ms_redis_set_reply_timeout(r, arg_ms(L));
    return 0;
}

static int redis_close(lua_State *L) {
    redis_box *b = luaL_checkudata(L, 1, REDIS_MT);
    if (b->r == NULL) return 0;
    ms_redis *r = b->r;
    b->r = NULL;            /* callbacks run by the free below call no Lua */
    ms_redis_free(r);
    luaL_unref(L, LUA_REGISTRYINDEX, b->state_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, b->message_ref);
    b->state_ref = b->message_ref = LUA_NOREF;
    return 0;
}

static int opt_ref(lua_State *L, const char *key) {
    if (lua_getfield(L, 2, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return LUA_NOREF;
    }
    luaL_checktype(L, -1, LUA_TFUNCTION);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

static int redis_new(lua_State *L) {
    ms_loop *loop = ms_loop_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    ms_redis_opts o = { 0 };
    lua_getfield(L, 2, "host");
    o.host = luaL_checkstring(L, -1);
    lua_getfield(L, 2, "port");
    o.port = (int)luaL_checkinteger(L, -1);
    lua_getfield(L, 2, "password");
    o.password = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 2, "db");
    o.db = (int)luaL_optinteger(L, -1, 0);
    lua_getfield(L, 2, "max_reply");
    o.max_reply = (size_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);                 /* host, port and password stay anchored */
    redis_box *b = lua_newuserdatauv(L, sizeof *b, 1);
    b->r = NULL;
    b->state_ref = b->message_ref = LUA_NOREF;
    luaL_setmetatable(L, REDIS_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, UV_LOOP);  /* the loop outlives the connection */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    b->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    b->state_ref = opt_ref(L, "on_state");
    b->message_ref = opt_ref(L, "on_message");
    o.on_state = on_state;
    o.on_message = b->message_ref == LUA_NOREF ? NULL : on_message;
    o.ud = b;
    if ((b->r = ms_redis_new(loop, &o)) == NULL) return luaL_error(L, "not enough memory");
    return 1;
}

static const luaL_Reg redis_meth[] = {
    {"command", redis_command},
    {"subscribe", redis_subscribe},
    {"unsubscribe", redis_unsubscribe},
    {"publish_event", redis_publish_event},
    {"up", redis_up},
    {"waiting", redis_waiting},
    {"settle", redis_settle},
    {"reply_timeout", redis_reply_timeout},
    {"close", redis_close},
    {NULL, NULL}
};

static const luaL_Reg redis_metameth[] = {
    {"__gc", redis_close},
    {"__close", redis_close},
    {"__index", NULL},
    {NULL, NULL}
};

void ms_redis_open(lua_State *L) {
    ms_createmeta(L, REDIS_MT, redis_meth, redis_metameth);
    lua_pushcfunction(L, redis_new);
    lua_setfield(L, -2, "redis");
    lua_pushcfunction(L, redis_event_parse);
    lua_setfield(L, -2, "redis_event_parse");
    lua_pushliteral(L, MS_REDIS_EVENT_PREFIX);
    lua_setfield(L, -2, "redis_event_channel_prefix");
}
