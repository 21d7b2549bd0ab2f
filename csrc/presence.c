/* presence: who is online (moonstream.Presence).
 *
 * A hash of user name -> number of live realtime connections, so one user may
 * hold several connections and goes offline only when the last one closes.
 * Every operation is O(1) (O(n) for users/query over their input or output).
 * Names are arbitrary byte strings; the caller bounds their length and number. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

/* Out of memory inside uthash must not exit(): with the non-fatal mode an
 * element that could not be added has hh.tbl == NULL, checked after HASH_ADD. */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#define PRESENCE_MT "moonstream.Presence"

typedef struct presence_user {
    UT_hash_handle hh;
    lua_Integer connections;        /* >= 1 while in the hash */
    size_t len;
    char name[];                    /* len bytes, not NUL-terminated */
} presence_user;

typedef struct presence {
    presence_user *users;           /* uthash head; iteration is join order */
    int closed;
} presence;

/* The open registry at index i; raises on a non-registry or a closed one. */
static presence *check_presence(lua_State *L, int i) {
    presence *p = (presence *)luaL_checkudata(L, i, PRESENCE_MT);
    if (p->closed) luaL_error(L, "attempt to use a closed presence registry");
    return p;
}

/* The user name at index i (a string, not a number: numbers would silently
 * become different names); raises otherwise. Sets *len. */
static const char *presence_check_name(lua_State *L, int i, size_t *len) {
    if (lua_type(L, i) != LUA_TSTRING) luaL_typeerror(L, i, "string");
    const char *name = lua_tolstring(L, i, len);
    /* uthash key lengths are unsigned. */
    if (*len > UINT_MAX) luaL_argerror(L, i, "user name too long");
    return name;
}

/* The entry for name, or NULL when the user is offline. */
static presence_user *presence_find(presence *p, const char *name, size_t len) {
    presence_user *u = NULL;
    HASH_FIND(hh, p->users, name, (unsigned)len, u);
    return u;
}

/* Frees every entry; the registry stays usable (empty). Never raises. */
static void presence_clear(presence *p) {
    presence_user *u, *tmp;
    HASH_ITER(hh, p->users, u, tmp) {
        HASH_DEL(p->users, u);
        free(u);
    }
    p->users = NULL;
}

/* core.presence() -> registry (empty). */
static int presence_new(lua_State *L) {
    presence *p = (presence *)lua_newuserdatauv(L, sizeof(presence), 0);
    p->users = NULL;
    p->closed = 0;
    luaL_setmetatable(L, PRESENCE_MT);
    return 1;
}

/* p:join(user) -> true when this connection brought the user online, false
 * when the user was already online (one more connection). Raises on a
 * non-string name or when memory runs out (nothing is left allocated then). */
static int presence_join(lua_State *L) {
    presence *p = check_presence(L, 1);
    size_t len;
    const char *name = presence_check_name(L, 2, &len);
    presence_user *u = presence_find(p, name, len);
    if (u != NULL) {
        u->connections++;
        lua_pushboolean(L, 0);
        return 1;
    }
    u = (presence_user *)malloc(sizeof(presence_user) + len);
    if (u == NULL) return luaL_error(L, "not enough memory");
    u->connections = 1;
    u->len = len;
    memcpy(u->name, name, len);
    HASH_ADD_KEYPTR(hh, p->users, u->name, (unsigned)len, u);
    if (u->hh.tbl == NULL) {  /* uthash could not grow: not added */
        free(u);
        return luaL_error(L, "not enough memory");
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* p:leave(user) -> true when the user went offline (last connection), false
 * when still online, nil, "not online" when the user had no connection. */
static int presence_leave(lua_State *L) {
    presence *p = check_presence(L, 1);
    size_t len;
    const char *name = presence_check_name(L, 2, &len);
    presence_user *u = presence_find(p, name, len);
    if (u == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "not online");
        return 2;
    }
    if (--u->connections > 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    HASH_DEL(p->users, u);
    free(u);
    lua_pushboolean(L, 1);
    return 1;
}

/* p:count(user) -> number of live connections (0 when offline). */
static int presence_count(lua_State *L) {
    presence *p = check_presence(L, 1);
    size_t len;
    const char *name = presence_check_name(L, 2, &len);
    presence_user *u = presence_find(p, name, len);
    lua_pushinteger(L, u != NULL ? u->connections : 0);
    return 1;
}

/* p:is_online(user) -> boolean. */
static int presence_is_online(lua_State *L) {
    presence *p = check_presence(L, 1);
    size_t len;
    const char *name = presence_check_name(L, 2, &len);
    lua_pushboolean(L, presence_find(p, name, len) != NULL);
    return 1;
}

/* p:users() -> sequence of online user names, in the order they came online. */
static int presence_users(lua_State *L) {
    presence *p = check_presence(L, 1);
    unsigned n = HASH_COUNT(p->users);
    lua_createtable(L, n > INT_MAX ? INT_MAX : (int)n, 0);
    lua_Integer i = 0;
    presence_user *u, *tmp;
    HASH_ITER(hh, p->users, u, tmp) {
        lua_pushlstring(L, u->name, u->len);
        lua_rawseti(L, -2, ++i);
    }
    return 1;
}

/* p:query(names) -> table mapping each string of the sequence names to whether
 * that user is online. Raises when names is not a table or holds a non-string
 * in 1..#names. */
static int presence_query(lua_State *L) {
    presence *p = check_presence(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 2);
    lua_createtable(L, 0, n > INT_MAX ? INT_MAX : (n < 0 ? 0 : (int)n));
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_geti(L, 2, i) != LUA_TSTRING)
            return luaL_argerror(L, 2, lua_pushfstring(L, "names[%I] is a %s, expected a string",
                                                       i, luaL_typename(L, -1)));
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        int online = len <= UINT_MAX && presence_find(p, name, len) != NULL;
        lua_pushboolean(L, online);
        lua_rawset(L, -3);  /* result[name] = online; pops both */
    }
    return 1;
}

/* p:size() -> number of online users. */
static int presence_size(lua_State *L) {
    presence *p = check_presence(L, 1);
    lua_pushinteger(L, (lua_Integer)HASH_COUNT(p->users));
    return 1;
}

/* p:close(), __gc, __close: frees every entry; safe twice. */
static int presence_close(lua_State *L) {
    presence *p = (presence *)luaL_checkudata(L, 1, PRESENCE_MT);
    presence_clear(p);
    p->closed = 1;
    return 0;
}

static int presence_tostring(lua_State *L) {
    presence *p = (presence *)luaL_checkudata(L, 1, PRESENCE_MT);
    if (p->closed) lua_pushliteral(L, "moonstream.Presence (closed)");
    else lua_pushfstring(L, "moonstream.Presence (%d online)", (int)HASH_COUNT(p->users));
    return 1;
}

static const luaL_Reg presence_meth[] = {
    {"join", presence_join},
    {"leave", presence_leave},
    {"count", presence_count},
    {"is_online", presence_is_online},
    {"users", presence_users},
    {"query", presence_query},
    {"size", presence_size},
    {"close", presence_close},
    {NULL, NULL}
};

static const luaL_Reg presence_metameth[] = {
    {"__index", NULL},  /* set to presence_meth below */
    {"__gc", presence_close},
    {"__close", presence_close},
    {"__tostring", presence_tostring},
    {NULL, NULL}
};

void ms_presence_open(lua_State *L) {
    ms_createmeta(L, PRESENCE_MT, presence_meth, presence_metameth);
    lua_pushcfunction(L, presence_new);
    lua_setfield(L, -2, "presence");
}
