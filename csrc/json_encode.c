/* json_encode: a direct walk of a Lua value writing JSON into one buffer,
 * and the canonical writers other C files use (json.h), so text written in
 * C reads back exactly like text json_encode wrote. */
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "json_int.h"

#define JSON_ENCODE_MAX_DEPTH 128
/* The cached encode buffer keeps at most this much memory between calls. */
#define JSON_BUFFER_KEEP (256 * 1024)

/* ------------------------------------------------------------------------ */
/* Encoding */

typedef ms_jbuf json_buffer;

enum {
    JSON_EERR_NONE,
    JSON_EERR_MEMORY,
    JSON_EERR_DEPTH,
    JSON_EERR_NONFINITE,
    JSON_EERR_KEY,
    JSON_EERR_TYPE,
    JSON_EERR_RAW,
    JSON_EERR_STACK
};

typedef struct {
    lua_State *L;
    json_buffer *buf;
    int depth;
    int err;             /* JSON_EERR_* */
    const char *err_type;
    char decpoint;       /* 0 until the first float */
} json_encoder;

/* 0: byte copied as is; else the letter after '\\' ('u': \u00XX). */
static const char json_escape[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0, 0, '"', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '\\', 0, 0, 0,
};

static const char json_hex_digits[] = "0123456789abcdef";

#define json_reserve(e, n) (ms_jbuf_reserve((e)->buf, (n)) || json_encode_fail((e), JSON_EERR_MEMORY))

static int json_encode_fail(json_encoder *e, int err) {
    e->err = err;
    return 0;
}

static int json_put(json_encoder *e, const char *s, size_t n) {
    if (!json_reserve(e, n)) return 0;
    memcpy(e->buf->data + e->buf->len, s, n);
    e->buf->len += n;
    return 1;
}

static int json_put_char(json_encoder *e, char c) {
    if (!json_reserve(e, 1)) return 0;
    e->buf->data[e->buf->len++] = c;
    return 1;
}

static int json_put_integer(json_encoder *e, lua_Integer v) {
    char tmp[24];
    char *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    return json_put(e, p, (size_t)(tmp + sizeof tmp - p));
}

/* Shortest of %.15g/%.16g/%.17g that reads back to the same double, with
 * '.' whatever the locale; -0.0 keeps its sign (it would read back as the
 * integer 0 otherwise). */
static int json_put_float(json_encoder *e, double d) {
    if (!isfinite(d)) return json_encode_fail(e, JSON_EERR_NONFINITE);
    if (d == 0 && signbit(d)) return json_put(e, "-0.0", 4);
    char tmp[40];
    int n = snprintf(tmp, sizeof tmp, "%.15g", d);
    if (strtod(tmp, NULL) != d) {
        n = snprintf(tmp, sizeof tmp, "%.16g", d);
        if (strtod(tmp, NULL) != d) n = snprintf(tmp, sizeof tmp, "%.17g", d);
    }
    if (e->decpoint == 0) e->decpoint = lua_getlocaledecpoint();
    if (e->decpoint != '.') {
        char *point = memchr(tmp, e->decpoint, (size_t)n);
        if (point) *point = '.';
    }
    return json_put(e, tmp, (size_t)n);
}

/* Writes s as a JSON string: '"', '\\' and bytes below 0x20 escaped, every
 * other byte copied as is. Runs of plain bytes are found 8 at a time. */
static int json_put_string(json_encoder *e, const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str;
    const unsigned char *end = s + len;
    if (!json_reserve(e, len + 2)) return 0;
    json_buffer *b = e->buf;
    char *out = b->data + b->len;
    *out++ = '"';
    while (s < end) {
        const unsigned char *run = s;
        while (end - s >= 8) {
            uint64_t w = json_load8(s);
            if (json_has_less(w, 0x20) || json_has_byte(w, '"') || json_has_byte(w, '\\'))
                break;
            s += 8;
        }
        while (s < end && !json_escape[*s]) s++;
        memcpy(out, run, (size_t)(s - run));
        out += s - run;
        if (s == end) break;
        /* room for this escape (6 at most) and the rest unescaped */
        b->len = (size_t)(out - b->data);
        if (!json_reserve(e, 6 + (size_t)(end - s))) return 0;
        out = b->data + b->len;
        unsigned char c = *s++;
        char esc = json_escape[c];
        *out++ = '\\';
        *out++ = esc;
        if (esc == 'u') {
            *out++ = '0';
            *out++ = '0';
            *out++ = json_hex_digits[c >> 4];
            *out++ = json_hex_digits[c & 15];
        }
    }
    *out++ = '"';
    b->len = (size_t)(out - b->data);
    return 1;
}

/* ---- the writers for other C files (json.h) ---- */

int ms_jbuf_string(ms_jbuf *b, const char *s, size_t len) {
    json_encoder e = {NULL, b, 0, JSON_EERR_NONE, NULL, 0};
    return json_put_string(&e, s, len);
}

int ms_jbuf_number(ms_jbuf *b, const char *s, size_t len) {
    json_encoder e = {NULL, b, 0, JSON_EERR_NONE, NULL, 0};
    long long i;
    int integral = json_parse_integer(s, len, &i);
    if (integral < 0) return 0;
    if (integral) return json_put_integer(&e, (lua_Integer)i);
    double d;
    if (json_to_double(s, len, &e.decpoint, &d) != 1) return 0;
    return json_put_float(&e, d);
}

static int json_encode_value(json_encoder *e, int idx);

/* 1 if the table at idx (no metatable, border n >= 1) has exactly the keys
 * 1..n. Leaves the stack as it found it. */
static int json_is_sequence(lua_State *L, int idx, lua_Unsigned n) {
    lua_Unsigned count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1)) {
            lua_pop(L, 1);
            return 0;
        }
        lua_Integer k = lua_tointeger(L, -1);
        if (k < 1 || (lua_Unsigned)k > n) {
            lua_pop(L, 1);
            return 0;
        }
        count++;
    }
    return count == n;
}

static int json_encode_array(json_encoder *e, int idx, lua_Unsigned n) {
    lua_State *L = e->L;
    if (!json_put_char(e, '[')) return 0;
    for (lua_Unsigned i = 1; i <= n; i++) {
        if (i > 1 && !json_put_char(e, ',')) return 0;
        lua_rawgeti(L, idx, (lua_Integer)i);
        if (!json_encode_value(e, lua_gettop(L))) return 0;
        lua_pop(L, 1);
    }
    return json_put_char(e, ']');
}

static int json_encode_object(json_encoder *e, int idx) {
    lua_State *L = e->L;
    int first = 1;
    if (!json_put_char(e, '{')) return 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (!first && !json_put_char(e, ',')) return 0;
        first = 0;
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t klen;
            const char *k = lua_tolstring(L, -2, &klen);
            if (!json_put_string(e, k, klen)) return 0;
        } else if (lua_isinteger(L, -2)) {
            /* written by hand: lua_tostring would turn the key into a
             * string in place and break lua_next */
            if (!json_put_char(e, '"') || !json_put_integer(e, lua_tointeger(L, -2)) ||
                !json_put_char(e, '"'))
                return 0;
        } else {
            return json_encode_fail(e, JSON_EERR_KEY);
        }
        if (!json_put_char(e, ':') || !json_encode_value(e, lua_gettop(L))) return 0;
        lua_pop(L, 1);
    }
    return json_put_char(e, '}');
}

/* Arrays: json_array_mt, or no metatable and keys exactly 1..n (n >= 1).
 * json_raw tables: their text verbatim. Anything else: an object. */
static int json_encode_table(json_encoder *e, int idx) {
    lua_State *L = e->L;
    int ok;
    if (++e->depth > JSON_ENCODE_MAX_DEPTH) return json_encode_fail(e, JSON_EERR_DEPTH);
    if (!lua_checkstack(L, 6)) return json_encode_fail(e, JSON_EERR_STACK);
    if (lua_getmetatable(L, idx)) {
        if (lua_rawequal(L, -1, JSON_UV_ARRAY_MT)) {
            lua_pop(L, 1);
            ok = json_encode_array(e, idx, lua_rawlen(L, idx));
        } else if (lua_rawequal(L, -1, JSON_UV_RAW_MT)) {
            lua_pop(L, 1);
            if (lua_rawgeti(L, idx, 1) != LUA_TSTRING) return json_encode_fail(e, JSON_EERR_RAW);
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            ok = json_put(e, s, n);
            lua_pop(L, 1);
        } else {
            lua_pop(L, 1);
            ok = json_encode_object(e, idx);
        }
    } else {
        lua_Unsigned n = lua_rawlen(L, idx);
        if (n > 0 && json_is_sequence(L, idx, n)) ok = json_encode_array(e, idx, n);
        else ok = json_encode_object(e, idx);
    }
    e->depth--;
    return ok;
}

/* Appends the value at absolute index idx. Returns 0 with e->err set on
 * failure, leaving whatever it pushed (the caller resets the stack). Never
 * raises: it uses raw access only and allocates no Lua objects. */
static int json_encode_value(json_encoder *e, int idx) {
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return json_put(e, "null", 4);
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? json_put(e, "true", 4) : json_put(e, "false", 5);
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) return json_put_integer(e, lua_tointeger(L, idx));
        return json_put_float(e, (double)lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return json_put_string(e, s, n);
    }
    case LUA_TTABLE:
        return json_encode_table(e, idx);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) return json_put(e, "null", 4);
        /* fall through */
    default:
        e->err_type = luaL_typename(L, idx);
        return json_encode_fail(e, JSON_EERR_TYPE);
    }
}

static void json_push_encode_error(lua_State *L, const json_encoder *e) {
    switch (e->err) {
    case JSON_EERR_DEPTH:
        lua_pushfstring(L, "nesting deeper than %d (or a cycle)", JSON_ENCODE_MAX_DEPTH);
        break;
    case JSON_EERR_NONFINITE:
        lua_pushliteral(L, "cannot encode non-finite number");
        break;
    case JSON_EERR_KEY:
        lua_pushliteral(L, "table key must be a string");
        break;
    case JSON_EERR_TYPE:
        lua_pushfstring(L, "cannot encode a value of type %s", e->err_type);
        break;
    case JSON_EERR_RAW:
        lua_pushliteral(L, "json_raw value must hold a string");
        break;
    case JSON_EERR_STACK:
        lua_pushliteral(L, "stack overflow");
        break;
    default:
        lua_pushliteral(L, "not enough memory");
        break;
    }
}

/* json_encode(value) -> text | nil, message
 * Writes into the cached buffer (upvalue 4), or into a fresh to-be-closed
 * one if that is busy (an encode started from a finalizer running inside
 * another encode). The walk raises nothing, so the cached buffer is always
 * released; pushing the result may raise a memory error, after release. */
int json_cached_close(lua_State *L) {
    json_cached *c = lua_touserdata(L, 1);
    ms_jbuf_free(&c->b);
    return 0;
}

int json_encode_lua(lua_State *L) {
    lua_settop(L, 1);
    json_cached *c = lua_touserdata(L, JSON_UV_BUFFER);
    int cached = !c->busy;
    if (cached) {
        c->busy = 1;
    } else {
        c = lua_newuserdatauv(L, sizeof *c, 0);
        memset(c, 0, sizeof *c);
        lua_getmetatable(L, JSON_UV_BUFFER);
        lua_setmetatable(L, -2);
        lua_toclose(L, -1);
    }
    json_buffer *b = &c->b;
    b->len = 0;
    int base = lua_gettop(L);
    json_encoder e = {L, b, 0, JSON_EERR_NONE, NULL, 0};
    int ok = json_encode_value(&e, 1);
    lua_settop(L, base);
    if (cached) c->busy = 0;
    if (ok) lua_pushlstring(L, b->data, b->len);
    if (cached && b->cap > JSON_BUFFER_KEEP) ms_jbuf_free(b);
    if (!ok) {
        lua_pushnil(L);
        json_push_encode_error(L, &e);
        return 2;
    }
    return 1;
}

