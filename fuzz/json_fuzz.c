/* libFuzzer target: the JSON codec (csrc/json.c) on untrusted bytes.
 *
 * Every input goes through json_decode exactly as a request body does. When
 * it decodes, the value must encode, the encoding must decode to an equal
 * value (same numbers exactly, an integral float such as 0.0 may come back
 * as the integer 0 as JSON does not tell them apart, [] apart from {}, null kept,
 * same strings), and encoding that again must give text of the same length
 * (object key order follows Lua's table order, so texts may differ only in
 * order). When it does not decode, the error must be a message ending in
 * "at byte N" with N within the input, never a raised error. Any difference
 * aborts, which libFuzzer reports as a finding. The comparison is Lua run on
 * the module's own values. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_moonstream_core(lua_State *L);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static lua_State *L;
static int check_ref;

static const char json_check[] =
    "local core = ...\n"
    "local decode, encode, null, array_mt = core.json_decode, core.json_encode, core.json_null, core.json_array_mt\n"
    "local function same(a, b, depth)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then\n"
    "    if math.type(a) ~= math.type(b) then return a == b and a % 1 == 0 end\n"
    "    return a == b and (a ~= 0 or 1 / a == 1 / b)\n"   /* -0.0 stays -0.0 */
    "  end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  if getmetatable(a) ~= getmetatable(b) then return false end\n"
    "  for k, v in pairs(a) do if not same(v, b[k], depth + 1) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "return function(text)\n"
    "  local v1, err = decode(text)\n"
    "  if v1 == nil then\n"
    "    if type(err) ~= 'string' then return 'decode failed without a message' end\n"
    "    local at = tonumber(err:match('at byte (%d+)$'))\n"
    "    if err ~= 'not enough memory' and not (at and at <= #text) then return 'bad error text: ' .. err end\n"
    "    return nil\n"
    "  end\n"
    "  local t1, eerr = encode(v1)\n"
    "  if not t1 then return 'a decoded value does not encode: ' .. eerr end\n"
    "  local v2, derr = decode(t1)\n"
    "  if v2 == nil then return 'the encoding does not decode: ' .. derr .. ' in ' .. t1 end\n"
    "  if not same(v1, v2, 0) then return 'round trip changed the value: ' .. t1 end\n"
    "  local t2 = encode(v2)\n"
    "  if #t2 ~= #t1 then return 'second encoding differs: ' .. t1 .. ' / ' .. t2 end\n"
    "  return nil\n"
    "end\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadstring(L, json_check) != LUA_OK) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); exit(1); }
    luaopen_moonstream_core(L);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); exit(1); }
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isnil(L, -1)) {
        fprintf(stderr, "json_fuzz: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    return 0;
}
