/* luaopen_moonstream_core: assembles the C module from its subsystems. */
#include "core.h"

LUALIB_API int luaopen_moonstream_core(lua_State *L);

LUALIB_API int luaopen_moonstream_core(lua_State *L) {
    lua_newtable(L);
    ms_loop_open(L);
    ms_http_open(L);
    ms_store_open(L);
    ms_presence_open(L);
    ms_json_open(L);
    ms_httpclient_open(L);
    ms_ws_open(L);
    ms_crypto_open(L);
    ms_records_open(L);
    ms_engine_open(L);
    ms_fastpath_open(L);
    ms_metrics_open(L);
    ms_notify_open(L);
    ms_workers_open(L);
    ms_redis_open(L);
    ms_redisstore_open(L);
    return 1;
}
