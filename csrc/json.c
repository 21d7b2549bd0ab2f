/* JSON codec of moonstream.core: json_decode (yajl 2 building Lua values in
 * its callbacks), json_encode (a direct walk writing into one buffer) and the
 * values shared with lua/moonstream/json.lua: json_null, json_array_mt and
 * json_raw (already-encoded JSON written verbatim).
 *
 * Values: JSON null is json_null (a NULL light userdata) everywhere, so object
 * keys and array slots holding null survive; arrays carry json_array_mt so []
 * stays apart from {}; integers that fit 64 bits are Lua integers, every
 * other number a float. Error messages end in "at byte N", N being the 0-based
 * offset of the offending byte (the text length for a premature end). */
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>
#include "core.h"
#include "json.h"
#include "json_int.h"


#define JSON_DEFAULT_MAX_DEPTH MS_JSON_MAX_DEPTH

#define JSON_PARSER_MT "moonstream.json.parser"
#define JSON_BUFFER_MT "moonstream.json.buffer"
#define JSON_POOL_MT "moonstream.json.pool"

/* ------------------------------------------------------------------------ */
/* Decoding (the messages: json_diag.c) */

/* Records where the token just handed to a callback ended. Tokens that
 * complete in a later chunk leave yajl's offset at 0 in that chunk. */
static void json_mark_end(json_decoder *d) {
    d->last_end = d->base + yajl_get_bytes_consumed(d->handle);
}

/* Stores the value on the top of the stack into the container below it:
 * below a string (a pending key) is an object, below a table an array, below
 * the parser userdata the top level (the value stays). Pops the value (and
 * key) unless top level. May raise a memory error (see json_decode). */
static void json_add_value(json_decoder *d) {
    lua_State *L = d->L;
    switch (lua_type(L, -2)) {
    case LUA_TSTRING:
        lua_rawset(L, -3);
        break;
    case LUA_TTABLE:
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
        break;
    default:
        d->done = 1;
        break;
    }
}

static int json_on_null(void *ud) {
    json_decoder *d = ud;
    json_mark_end(d);
    lua_pushlightuserdata(d->L, NULL);
    json_add_value(d);
    return 1;
}

static int json_on_boolean(void *ud, int value) {
    json_decoder *d = ud;
    json_mark_end(d);
    lua_pushboolean(d->L, value);
    json_add_value(d);
    return 1;
}


/* Integer syntax becomes a Lua integer, or an error if outside int64; other
 * numbers go through strtod and must stay finite. */
static int json_on_number(void *ud, const char *s, size_t len) {
    json_decoder *d = ud;
    lua_State *L = d->L;
    json_mark_end(d);
    long long i;
    int integral = json_parse_integer(s, len, &i);
    if (integral < 0) goto out_of_range;
    if (integral) {
        lua_pushinteger(L, (lua_Integer)i);
    } else {
        double value;
        int rc = json_to_double(s, len, &d->decpoint, &value);
        if (rc < 0) luaL_error(L, "not enough memory");  /* unwinds like a Lua memory error */
        if (rc == 0) goto out_of_range;
        lua_pushnumber(L, (lua_Number)value);
    }
    json_add_value(d);
    return 1;
out_of_range:
    d->err = JSON_DERR_RANGE;
    d->err_at = d->last_end - len;
    return 0;
}

static int json_on_string(void *ud, const unsigned char *s, size_t len) {
    json_decoder *d = ud;
    json_mark_end(d);
    lua_pushlstring(d->L, (const char *)s, len);
    json_add_value(d);
    return 1;
}

static int json_on_map_key(void *ud, const unsigned char *s, size_t len) {
    json_decoder *d = ud;
    json_mark_end(d);
    lua_pushlstring(d->L, (const char *)s, len);
    return 1;
}

/* Opens a container: refuses depth beyond max_depth before yajl pushes its
 * own state, so neither its stack nor the Lua stack grow past the limit. */
static int json_open_container(json_decoder *d, int is_array) {
    json_mark_end(d);
    if (d->depth >= d->max_depth || !lua_checkstack(d->L, 4)) {
        d->err = d->depth >= d->max_depth ? JSON_DERR_DEPTH : JSON_DERR_STACK;
        d->err_at = d->last_end - 1;
        return 0;
    }
    d->depth++;
    /* room for 4 entries: skips the first rehashes (about 20% faster on
     * request-sized documents) */
    lua_createtable(d->L, is_array ? 4 : 0, is_array ? 0 : 4);
    if (is_array) {
        lua_pushvalue(d->L, JSON_UV_ARRAY_MT);
        lua_setmetatable(d->L, -2);
    }
    return 1;
}

static int json_close_container(void *ud) {
    json_decoder *d = ud;
    json_mark_end(d);
    d->depth--;
    json_add_value(d);
    return 1;
}

static int json_on_start_map(void *ud) {
    return json_open_container(ud, 0);
}

static int json_on_start_array(void *ud) {
    return json_open_container(ud, 1);
}

static const yajl_callbacks json_callbacks = {
    json_on_null, json_on_boolean, NULL, NULL, json_on_number, json_on_string,
    json_on_start_map, json_on_map_key, json_close_container,
    json_on_start_array, json_close_container
};


static int json_pool_gc(lua_State *L) {
    ms_json_pool **pool = lua_touserdata(L, 1);
    ms_json_pool_delete(*pool);
    *pool = NULL;
    return 0;
}

static int json_parser_close(lua_State *L) {
    json_parser *p = luaL_checkudata(L, 1, JSON_PARSER_MT);
    if (p->handle) {
        yajl_free(p->handle);
        p->handle = NULL;
    }
    return 0;
}

/* json_decode(text [, max_depth]) -> value | nil, message
 * Strict RFC 8259 JSON, exactly one value, nesting at most max_depth (default
 * 128) arrays/objects deep. The yajl handle is owned by a to-be-closed
 * userdata: a memory error raised by a callback unwinds through yajl_parse
 * (yajl keeps all its state in the handle and holds no locks) and the handle
 * is freed as the error propagates. Misuse (text not a string, negative
 * max_depth) raises. */
static int json_decode(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    lua_Integer max_depth = luaL_optinteger(L, 2, JSON_DEFAULT_MAX_DEPTH);
    luaL_argcheck(L, max_depth >= 0, 2, "max_depth must be >= 0");
    lua_settop(L, 2);

    size_t suspect_at = len;
    int suspect = json_prescan((const unsigned char *)text, len, &suspect_at);

    json_parser *p = lua_newuserdatauv(L, sizeof *p, 0);  /* index 3 */
    p->handle = NULL;
    lua_pushvalue(L, JSON_UV_PARSER_MT);
    lua_setmetatable(L, -2);
    lua_toclose(L, 3);

    json_decoder d;
    memset(&d, 0, sizeof d);
    d.L = L;
    d.text = text;
    d.len = len;
    d.max_depth = max_depth;
    yajl_alloc_funcs funcs;
    ms_json_pool_funcs(*(ms_json_pool **)lua_touserdata(L, JSON_UV_POOL), &funcs);
    p->handle = yajl_alloc(&json_callbacks, &funcs, &d);
    if (p->handle == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "not enough memory");
        return 2;
    }
    d.handle = p->handle;
    /* the pre-scan validated UTF-8 strictly; yajl's own check is looser */
    yajl_config(d.handle, yajl_dont_validate_strings, 1);

    const unsigned char *utext = (const unsigned char *)text;
    yajl_status status;
    if (suspect == JSON_SUSPECT_NONE) {
        status = yajl_parse(d.handle, utext, len);
        if (status == yajl_status_ok) {
            d.base = len;  /* yajl finishes by parsing " " */
            status = yajl_complete_parse(d.handle);
        }
        if (status == yajl_status_ok && json_push_trailing_error(&d, len)) return 2;
    } else {
        /* Parse up to the suspect byte (an earlier fault wins), then feed
         * the byte alone so yajl says what it is where it stands. */
        status = yajl_parse(d.handle, utext, suspect_at);
        if (status == yajl_status_ok) {
            d.base = suspect_at;
            status = yajl_parse(d.handle, utext + suspect_at, 1);
            if (status == yajl_status_ok) {
                if (d.done && json_push_trailing_error(&d, suspect_at)) return 2;
                lua_pushnil(L);
                json_push_suspect_error(L, suspect, suspect_at, utext[suspect_at]);
                return 2;
            }
        }
    }
    if (status != yajl_status_ok) {
        lua_pushnil(L);
        json_push_decode_error(&d, status);
        return 2;
    }
    return 1;  /* the value, above the parser which closes on return */
}


/* json_raw(text) -> a value json_encode writes as text, verbatim (text must
 * be trusted JSON, e.g. read back from the store). A table {text} with
 * json_raw_mt, so Lua code can still read raw[1]. */
static int json_raw(lua_State *L) {
    luaL_checkstring(L, 1);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, JSON_UV_RAW_MT);
    lua_setmetatable(L, -2);
    return 1;
}

/* ------------------------------------------------------------------------ */

static const luaL_Reg json_parser_metameth[] = {
    {"__gc", json_parser_close},
    {"__close", json_parser_close},
    {NULL, NULL}
};

static const luaL_Reg json_buffer_metameth[] = {
    {"__gc", json_cached_close},
    {"__close", json_cached_close},
    {NULL, NULL}
};

static const luaL_Reg json_funcs[] = {
    {"json_decode", json_decode},
    {"json_encode", json_encode_lua},
    {"json_raw", json_raw},
    {NULL, NULL}
};

/* Pushes a new metatable {__name = name}. */
static void json_new_marker(lua_State *L, const char *name) {
    lua_createtable(L, 0, 1);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
}

void ms_json_open(lua_State *L) {
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "json_null");

    json_new_marker(L, "moonstream.json.array");   /* upvalue 1 */
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "json_array_mt");
    json_new_marker(L, "moonstream.json.raw");     /* upvalue 2 */
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "json_raw_mt");

    luaL_newmetatable(L, JSON_PARSER_MT);          /* upvalue 3 */
    luaL_setfuncs(L, json_parser_metameth, 0);

    json_cached *b = lua_newuserdatauv(L, sizeof *b, 0);  /* upvalue 4 */
    memset(b, 0, sizeof *b);
    luaL_newmetatable(L, JSON_BUFFER_MT);
    luaL_setfuncs(L, json_buffer_metameth, 0);
    lua_setmetatable(L, -2);

    ms_json_pool **pool = lua_newuserdatauv(L, sizeof *pool, 0);  /* upvalue 5 */
    *pool = NULL;
    luaL_newmetatable(L, JSON_POOL_MT);
    lua_pushcfunction(L, json_pool_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    if ((*pool = ms_json_pool_new()) == NULL) luaL_error(L, "not enough memory");

    luaL_setfuncs(L, json_funcs, 5);
}

