/* Shared declarations of the moonstream.core C module.
 * Each subsystem (one .c file) exports one ms_<subsystem>_open(L) that adds its
 * functions to the module table on the top of the stack and creates its
 * metatables. What one C file offers the others is in that file's own header
 * (loop.h, http.h, store.h, records.h, recstore.h, engine.h, json.h, ws.h...). */
#ifndef MOONSTREAM_CORE_H
#define MOONSTREAM_CORE_H

#include <lua.h>
#include <lauxlib.h>

void ms_loop_open(lua_State *L);
void ms_http_open(lua_State *L);
void ms_store_open(lua_State *L);
void ms_presence_open(lua_State *L);
void ms_json_open(lua_State *L);
void ms_httpclient_open(lua_State *L);
void ms_ws_open(lua_State *L);
void ms_crypto_open(lua_State *L);
void ms_records_open(lua_State *L);
void ms_engine_open(lua_State *L);
void ms_fastpath_open(lua_State *L);
void ms_metrics_open(lua_State *L);
void ms_notify_open(lua_State *L);
void ms_workers_open(lua_State *L);
void ms_redis_open(lua_State *L);
void ms_redisstore_open(lua_State *L);

/* Calls the function at the top of the stack (below its nargs arguments) with
 * lua_pcall and a traceback handler. On error the message (with traceback) goes
 * to the error reporter (the Lua function in the registry under
 * "moonstream.error_reporter", else stderr) and 0 is returned;
 * results are left on the stack on success (1 returned). Never raises:
 * safe inside libmicrohttpd, LevelDB and libcurl callbacks. */
int ms_pcall(lua_State *L, int nargs, int nresults);

/* Creates the metatable `name` with the metamethods metameth and an __index
 * table holding meth (liolib's createmeta). Leaves the stack as it was. */
void ms_createmeta(lua_State *L, const char *name, const luaL_Reg *meth, const luaL_Reg *metameth);

#endif
