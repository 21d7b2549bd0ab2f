/* Helpers every subsystem uses: ms_pcall, the one way C calls into Lua from
 * inside a library callback, and ms_createmeta. */
#include <stdio.h>
#include "core.h"

/* Message handler: adds a traceback to string errors (Lua's lua.c msghandler). */
static int pcall_traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Reports an error raised by a callback: to the Lua function stored in the
 * registry under "moonstream.error_reporter" if there is one, else stderr.
 * The reporter itself is called unprotected-by-traceback but protected. */
static void pcall_report(lua_State *L, const char *msg) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, "moonstream.error_reporter") == LUA_TFUNCTION) {
        lua_pushstring(L, msg);
        if (lua_pcall(L, 1, 0, 0) == LUA_OK) return;
        msg = lua_tostring(L, -1);
        fprintf(stderr, "moonstream: error reporter failed: %s\n", msg ? msg : "?");
    } else {
        fprintf(stderr, "moonstream: %s\n", msg);
    }
    lua_pop(L, 1);
}

int ms_pcall(lua_State *L, int nargs, int nresults) {
    int base = lua_gettop(L) - nargs;  /* index of the function */
    lua_pushcfunction(L, pcall_traceback);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        pcall_report(L, msg ? msg : "(error object is not a string)");
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

void ms_createmeta(lua_State *L, const char *name, const luaL_Reg *meth, const luaL_Reg *metameth) {
    luaL_newmetatable(L, name);
    luaL_setfuncs(L, metameth, 0);
    lua_newtable(L);
    luaL_setfuncs(L, meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}
