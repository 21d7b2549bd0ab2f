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

#define JSON_DEFAULT_MAX_DEPTH MS_JSON_MAX_DEPTH
#define JSON_ENCODE_MAX_DEPTH 128
/* The cached encode buffer keeps at most this much memory between calls. */
#define JSON_BUFFER_KEEP (256 * 1024)

/* Upvalues shared by the three module functions (see ms_json_open). */
#define JSON_UV_ARRAY_MT lua_upvalueindex(1)
#define JSON_UV_RAW_MT lua_upvalueindex(2)
#define JSON_UV_PARSER_MT lua_upvalueindex(3)
#define JSON_UV_BUFFER lua_upvalueindex(4)
#define JSON_UV_POOL lua_upvalueindex(5)

#define JSON_PARSER_MT "moonstream.json.parser"
#define JSON_BUFFER_MT "moonstream.json.buffer"
#define JSON_POOL_MT "moonstream.json.pool"

/* Word-at-a-time byte tests (8 bytes per step on the common ASCII path). */
#define JSON_ONES UINT64_C(0x0101010101010101)
#define JSON_HIGHS UINT64_C(0x8080808080808080)
#define json_has_zero(w) (((w) - JSON_ONES) & ~(w) & JSON_HIGHS)
#define json_has_byte(w, c) json_has_zero((w) ^ (JSON_ONES * (uint8_t)(c)))
/* Exact for n <= 128: some byte of w is below n. */
#define json_has_less(w, n) (((w) - JSON_ONES * (n)) & ~(w) & JSON_HIGHS)

static uint64_t json_load8(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

/* ------------------------------------------------------------------------ */
/* Decoding */

/* What the pre-scan found first: bytes yajl 2.1 would let through although
 * strict JSON forbids them (it checks UTF-8 loosely, takes \v and \f as
 * white space and turns a lone \ud800 into '?'). */
enum {
    JSON_SUSPECT_NONE,
    JSON_SUSPECT_UTF8,      /* malformed, overlong, surrogate or > U+10FFFF */
    JSON_SUSPECT_CONTROL,   /* raw \v or \f */
    JSON_SUSPECT_SURROGATE  /* \uD800-\uDFFF escape not in a valid pair */
};

/* Errors raised by our own callbacks (they cancel the parse). */
enum {
    JSON_DERR_NONE,
    JSON_DERR_DEPTH,
    JSON_DERR_RANGE,
    JSON_DERR_STACK
};

typedef struct {
    yajl_handle handle;  /* NULL once closed */
} json_parser;

typedef struct {
    lua_State *L;
    yajl_handle handle;
    const char *text;
    size_t len;
    size_t base;       /* offset of the chunk being parsed within text */
    size_t last_end;   /* offset just past the last token seen by a callback */
    int done;          /* the top-level value is complete */
    lua_Integer depth;
    lua_Integer max_depth;
    int err;           /* JSON_DERR_* */
    size_t err_at;
    char decpoint;     /* locale radix character, 0 until first needed */
} json_decoder;

static int json_hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads the 4 hex digits at s[0..3] (bounds checked by the caller); -1 if
 * one is not hex (yajl reports that itself). */
static long json_hex4(const unsigned char *s) {
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int d = json_hex_value(s[i]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if it is not one
 * (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF); n when
 * the text ends inside a sequence that was valid so far (then yajl reports
 * the end of input). */
static size_t json_utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t need;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (n > 1 && (s[1] < lo || s[1] > hi)) return 0;
    for (size_t i = 2; i <= need && i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n <= need ? n : need + 1;
}

/* 1 if s[0..n) (n < 6) could begin a low surrogate escape "\uDC00".."\uDFFF". */
static int json_is_low_prefix(const unsigned char *s, size_t n) {
    for (size_t k = 0; k < n; k++) {
        unsigned char c = s[k];
        int ok = k == 0 ? c == '\\'
               : k == 1 ? c == 'u'
               : k == 2 ? (c == 'd' || c == 'D')
               : k == 3 ? json_hex_value(c) >= 0xC
               : json_hex_value(c) >= 0;
        if (!ok) return 0;
    }
    return 1;
}

/* Handles the backslash run starting at s[i]: returns the offset to resume
 * the scan from, or sets *bad to the offset of an escape that starts or ends
 * an unpaired UTF-16 surrogate. Outside strings any backslash is an error
 * yajl reports first, so only escapes inside strings matter here. */
static size_t json_scan_escapes(const unsigned char *s, size_t len, size_t i, size_t *bad) {
    size_t j = i;
    while (j < len && s[j] == '\\') j++;
    if ((j - i) % 2 == 0 || j + 5 > len || s[j] != 'u') return j;
    long cp = json_hex4(s + j + 1);
    if (cp < 0xD800 || cp > 0xDFFF) return j;
    if (cp <= 0xDBFF && j + 11 <= len && s[j + 5] == '\\' && s[j + 6] == 'u') {
        long low = json_hex4(s + j + 7);
        if (low >= 0xDC00 && low <= 0xDFFF) return j + 11;
    }
    if (cp <= 0xDBFF && j + 11 > len && json_is_low_prefix(s + j + 5, len - (j + 5)))
        return len;  /* the text ends inside the pair: yajl says so */
    *bad = j - 1;
    return len;
}

/* Finds the first byte of text that strict JSON rejects but yajl accepts.
 * Returns its JSON_SUSPECT_* kind and stores its offset in *at. */
static int json_prescan(const unsigned char *s, size_t len, size_t *at) {
    size_t i = 0;
    while (i < len) {
        /* skip 8 plain bytes at a time: no high bit, '\\', \v or \f */
        while (i + 8 <= len) {
            uint64_t w = json_load8(s + i);
            if ((w & JSON_HIGHS) || json_has_byte(w, '\\') ||
                json_has_byte(w, 0x0B) || json_has_byte(w, 0x0C))
                break;
            i += 8;
        }
        if (i >= len) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            if (c == 0x0B || c == 0x0C) {
                *at = i;
                return JSON_SUSPECT_CONTROL;
            }
            if (c == '\\') {
                size_t bad = len;
                i = json_scan_escapes(s, len, i, &bad);
                if (bad < len) {
                    *at = bad;
                    return JSON_SUSPECT_SURROGATE;
                }
            } else {
                i++;
            }
        } else {
            size_t n = json_utf8_len(s + i, len - i);
            if (n == 0) {
                *at = i;
                return JSON_SUSPECT_UTF8;
            }
            i += n;
        }
    }
    return JSON_SUSPECT_NONE;
}

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

/* JSON integer syntax (no '.', 'e', 'E') within int64: 1 and *out set;
 * integer syntax beyond int64: -1; any other number: 0. */
static int json_parse_integer(const char *s, size_t len, long long *out) {
    size_t i = (s[0] == '-');
    size_t digits = 0;
    uint64_t u = 0;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < '0' || c > '9') return 0;
        /* 19 digits cannot overflow u; more are out of range anyway */
        if (digits++ < 19) u = u * 10 + (c - '0');
    }
    uint64_t limit = (uint64_t)INT64_MAX + (s[0] == '-');
    if (digits > 19 || u > limit) return -1;
    if (s[0] != '-') *out = (long long)u;
    else if (u == (uint64_t)INT64_MAX + 1) *out = LLONG_MIN;
    else *out = -(long long)u;
    return 1;
}

int ms_json_integer(const char *s, size_t len, long long *out) {
    return len > 0 && json_parse_integer(s, len, out) == 1;
}

/* strtod of a number yajl validated, with the locale's radix character.
 * Returns 1, 0 if it is infinite (out of range), -1 if out of memory. */
static int json_to_double(const char *s, size_t len, char *decpoint, double *out) {
    char small[64];
    char *copy = small;
    if (len >= sizeof small && (copy = malloc(len + 1)) == NULL) return -1;
    memcpy(copy, s, len);
    copy[len] = '\0';
    if (*decpoint == 0) *decpoint = lua_getlocaledecpoint();
    if (*decpoint != '.') {
        char *dot = memchr(copy, '.', len);
        if (dot) *dot = *decpoint;
    }
    *out = strtod(copy, NULL);
    if (copy != small) free(copy);
    return !isinf(*out);
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

static size_t json_skip_space(const char *s, size_t len, size_t i) {
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* Writes a short description of byte c: 'x' ("'" for a quote), or 0xNN when
 * it is not printable ASCII. */
static void json_describe_byte(char *out, size_t size, unsigned char c) {
    if (c == '\'') snprintf(out, size, "\"'\"");
    else if (c > 0x20 && c < 0x7F) snprintf(out, size, "'%c'", c);
    else snprintf(out, size, "0x%02X", c);
}

typedef struct {
    const char *what;  /* message before " at byte N"; NULL: see use_char */
    int use_char;      /* "unexpected character X[ after the value]" */
    int after_value;
    size_t at;
} json_fault;

/* Matches yajl's own error text (yajl 2.1 has no error codes) to a short
 * message and the offset of the fault. consumed is the offset yajl stopped
 * at; a lexer error leaves it on or just past the offending byte. */
static void json_classify_yajl(json_decoder *d, const char *yerr, size_t consumed, json_fault *f) {
    const char *text = d->text;
    size_t len = d->len;
    const char *kind = strchr(yerr, ':');
    kind = kind ? kind + 2 : yerr;
    f->what = NULL;
    f->use_char = 0;
    f->after_value = 0;
    f->at = consumed;
    if (strncmp(yerr, "lexical", 7) == 0) {
        if (d->base >= len) {
            /* the lexer choked on the " " yajl_complete_parse feeds: the
             * text ended inside a token ('"\u12', '1.') */
            f->at = len;
        } else if (strncmp(kind, "invalid char in", 15) == 0) {
            f->at = consumed - 1;
            f->use_char = 1;
        } else if (strncmp(kind, "invalid string", 14) == 0 ||
                   strncmp(kind, "probable comment", 16) == 0) {
            f->use_char = 1;
        } else if (strncmp(kind, "invalid character inside", 24) == 0) {
            f->what = "unescaped control character in string";
        } else if (strncmp(kind, "inside a string", 15) == 0) {
            f->at = consumed - 1;
            f->what = "invalid escape in string";
        } else if (strncmp(kind, "invalid (non-hex)", 17) == 0) {
            size_t i = consumed;
            while (i > 0 && text[i - 1] != 'u') i--;
            f->at = i >= 2 ? i - 2 : 0;
            f->what = "invalid \\u escape in string";
        } else if (strncmp(kind, "malformed number", 16) == 0) {
            f->what = "expected a digit";
        } else if (strncmp(kind, "invalid bytes in UTF8", 21) == 0) {
            f->what = "invalid UTF-8 in string";
        } else {
            f->what = "invalid JSON";
        }
    } else {
        /* Parse errors: the offending token starts at the first non-space
         * after the last token a callback saw, past a ',' or ':' that was
         * fine (yajl has no callback for those). */
        size_t start = json_skip_space(text, len, d->last_end);
        if (strncmp(kind, "premature EOF", 13) == 0) {
            start = len;
        } else if (strncmp(kind, "unallowed token", 15) == 0) {
            start = consumed - 1;
            f->use_char = 1;
        } else if (strncmp(kind, "invalid object key", 18) == 0) {
            if (start < len && (text[start] == ',' || text[start] == ':') && start + 1 < consumed)
                start = json_skip_space(text, len, start + 1);
            f->what = "expected a string key";
        } else if (strncmp(kind, "object key and value", 20) == 0) {
            f->what = "expected ':'";
        } else if (strncmp(kind, "after key and value", 19) == 0) {
            f->what = "expected ',' or '}'";
        } else if (strncmp(kind, "after array element", 19) == 0) {
            f->what = "expected ',' or ']'";
        } else if (strncmp(kind, "trailing garbage", 16) == 0) {
            f->use_char = 1;
            f->after_value = 1;
        } else {
            f->what = "invalid JSON";
        }
        f->at = start;
    }
}

/* Pushes the message for a failed parse of the chunk at d->base. */
static void json_push_decode_error(json_decoder *d, yajl_status status) {
    lua_State *L = d->L;
    json_fault f = {NULL, 0, 0, 0};
    if (status == yajl_status_client_canceled && d->err == JSON_DERR_DEPTH) {
        lua_pushfstring(L, "nesting deeper than %I at byte %I",
                        (lua_Integer)d->max_depth, (lua_Integer)d->err_at);
        return;
    } else if (status == yajl_status_client_canceled && d->err != JSON_DERR_NONE) {
        f.at = d->err_at;
        f.what = d->err == JSON_DERR_RANGE ? "number out of range"
               : "nesting too deep for the Lua stack";
    } else {
        size_t consumed = d->base + yajl_get_bytes_consumed(d->handle);
        unsigned char *yerr = yajl_get_error(d->handle, 0, NULL, 0);
        if (yerr == NULL) {
            f.what = "invalid JSON";
            f.at = consumed;
        } else {
            json_classify_yajl(d, (const char *)yerr, consumed, &f);
            yajl_free_error(d->handle, yerr);
        }
    }
    if (f.at >= d->len) {
        lua_pushfstring(L, "unexpected end of input at byte %I", (lua_Integer)d->len);
    } else if (f.use_char) {
        char desc[16];
        json_describe_byte(desc, sizeof desc, (unsigned char)d->text[f.at]);
        lua_pushfstring(L, "unexpected character %s%s at byte %I", desc,
                        f.after_value ? " after the value" : "", (lua_Integer)f.at);
    } else {
        lua_pushfstring(L, "%s at byte %I", f.what, (lua_Integer)f.at);
    }
}

/* Message for a byte the pre-scan rejected and yajl did not. */
static void json_push_suspect_error(lua_State *L, int kind, size_t at, unsigned char c) {
    char desc[16];
    switch (kind) {
    case JSON_SUSPECT_UTF8:
        lua_pushfstring(L, "invalid UTF-8 in string at byte %I", (lua_Integer)at);
        break;
    case JSON_SUSPECT_SURROGATE:
        lua_pushfstring(L, "unpaired UTF-16 surrogate in \\u escape at byte %I", (lua_Integer)at);
        break;
    default:
        json_describe_byte(desc, sizeof desc, c);
        lua_pushfstring(L, "unexpected character %s at byte %I", desc, (lua_Integer)at);
        break;
    }
}

/* yajl 2.1 takes an unterminated string after the value ('1"') for the end
 * of input: only white space may follow the value, which ended with the
 * last callback. Pushes nil and the message if something else comes before
 * offset limit, and returns 1; else pushes nothing and returns 0. */
static int json_push_trailing_error(json_decoder *d, size_t limit) {
    size_t rest = json_skip_space(d->text, limit, d->last_end);
    if (rest >= limit) return 0;
    char desc[16];
    json_describe_byte(desc, sizeof desc, (unsigned char)d->text[rest]);
    lua_pushnil(d->L);
    lua_pushfstring(d->L, "unexpected character %s after the value at byte %I",
                    desc, (lua_Integer)rest);
    return 1;
}

/* yajl allocates its handle, lexer, state stack and (in yajl_complete_parse)
 * a 2 KB token buffer afresh for every parse, since yajl 2 cannot reset a
 * handle, and frees them at the end: six malloc/free pairs per request, the
 * 2 KB one large enough to make glibc consolidate its free lists each time.
 * callgrind put that at about as much as all of Lua's own allocations for a
 * small request (bench/RESULTS.md). These allocation functions keep the
 * blocks for the next parse instead. Every block up to JSON_POOL_BLOCK gets
 * that capacity, so any kept block fits any such request; larger ones (a deep
 * state stack, a long token) go to malloc. The pool belongs to the module's
 * upvalue, so separate Lua states never share it. */
#define JSON_POOL_BLOCK 2048
#define JSON_POOL_SLOTS 8

typedef union {
    size_t cap;
    max_align_t align;
} json_block;

struct ms_json_pool {
    json_block *free[JSON_POOL_SLOTS];
    int n;
};
typedef struct ms_json_pool json_pool;

static void *json_pool_malloc(void *ud, size_t size) {
    json_pool *pool = ud;
    if (size <= JSON_POOL_BLOCK && pool->n > 0) return pool->free[--pool->n] + 1;
    size_t cap = size <= JSON_POOL_BLOCK ? JSON_POOL_BLOCK : size;
    if (cap > SIZE_MAX - sizeof(json_block)) return NULL;
    json_block *b = malloc(sizeof *b + cap);
    if (b == NULL) return NULL;
    b->cap = cap;
    return b + 1;
}

static void json_pool_free(void *ud, void *ptr) {
    json_pool *pool = ud;
    if (ptr == NULL) return;
    json_block *b = (json_block *)ptr - 1;
    if (b->cap == JSON_POOL_BLOCK && pool->n < JSON_POOL_SLOTS) pool->free[pool->n++] = b;
    else free(b);
}

static void *json_pool_realloc(void *ud, void *ptr, size_t size) {
    if (ptr == NULL) return json_pool_malloc(ud, size);
    json_block *b = (json_block *)ptr - 1;
    if (size <= b->cap) return ptr;
    void *grown = json_pool_malloc(ud, size);
    if (grown == NULL) return NULL;
    memcpy(grown, ptr, b->cap);
    json_pool_free(ud, ptr);
    return grown;
}

static void json_pool_clear(json_pool *pool) {
    while (pool->n > 0) free(pool->free[--pool->n]);
}

static int json_pool_gc(lua_State *L) {
    json_pool_clear(luaL_checkudata(L, 1, JSON_POOL_MT));
    return 0;
}

ms_json_pool *ms_json_pool_new(void) {
    return calloc(1, sizeof(json_pool));
}

void ms_json_pool_delete(ms_json_pool *pool) {
    if (pool == NULL) return;
    json_pool_clear(pool);
    free(pool);
}

void ms_json_pool_funcs(ms_json_pool *pool, yajl_alloc_funcs *funcs) {
    funcs->malloc = json_pool_malloc;
    funcs->realloc = json_pool_realloc;
    funcs->free = json_pool_free;
    funcs->ctx = pool;
}

int ms_json_strict(const char *text, size_t len) {
    size_t at;
    return json_prescan((const unsigned char *)text, len, &at) == JSON_SUSPECT_NONE;
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
    json_pool *pool = lua_touserdata(L, JSON_UV_POOL);
    yajl_alloc_funcs funcs = { json_pool_malloc, json_pool_realloc, json_pool_free, pool };
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

static void json_buffer_release(json_buffer *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int json_buffer_close(lua_State *L) {
    json_buffer_release(luaL_checkudata(L, 1, JSON_BUFFER_MT));
    return 0;
}

/* Makes room for n more bytes; 0 if out of memory (nothing is raised). */
static int json_buffer_grow(json_buffer *b, size_t n) {
    if (n > SIZE_MAX / 2 - b->len) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return 0;
    b->data = data;
    b->cap = cap;
    return 1;
}

#define json_reserve(e, n) \
    ((e)->buf->cap - (e)->buf->len >= (n) || json_buffer_grow((e)->buf, (n)) || \
     json_encode_fail((e), JSON_EERR_MEMORY))

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

int ms_jbuf_put(ms_jbuf *b, const char *s, size_t n) {
    json_encoder e = {NULL, b, 0, JSON_EERR_NONE, NULL, 0};
    return json_put(&e, s, n);
}

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

void ms_jbuf_free(ms_jbuf *b) {
    json_buffer_release(b);
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
static int json_encode(lua_State *L) {
    lua_settop(L, 1);
    json_buffer *b = lua_touserdata(L, JSON_UV_BUFFER);
    int cached = !b->busy;
    if (cached) {
        b->busy = 1;
    } else {
        b = lua_newuserdatauv(L, sizeof *b, 0);
        memset(b, 0, sizeof *b);
        lua_getmetatable(L, JSON_UV_BUFFER);
        lua_setmetatable(L, -2);
        lua_toclose(L, -1);
    }
    b->len = 0;
    int base = lua_gettop(L);
    json_encoder e = {L, b, 0, JSON_EERR_NONE, NULL, 0};
    int ok = json_encode_value(&e, 1);
    lua_settop(L, base);
    if (cached) b->busy = 0;
    if (ok) lua_pushlstring(L, b->data, b->len);
    if (cached && b->cap > JSON_BUFFER_KEEP) json_buffer_release(b);
    if (!ok) {
        lua_pushnil(L);
        json_push_encode_error(L, &e);
        return 2;
    }
    return 1;
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
    {"__gc", json_buffer_close},
    {"__close", json_buffer_close},
    {NULL, NULL}
};

static const luaL_Reg json_funcs[] = {
    {"json_decode", json_decode},
    {"json_encode", json_encode},
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

    json_buffer *b = lua_newuserdatauv(L, sizeof *b, 0);  /* upvalue 4 */
    memset(b, 0, sizeof *b);
    luaL_newmetatable(L, JSON_BUFFER_MT);
    luaL_setfuncs(L, json_buffer_metameth, 0);
    lua_setmetatable(L, -2);

    json_pool *pool = lua_newuserdatauv(L, sizeof *pool, 0);  /* upvalue 5 */
    pool->n = 0;
    luaL_newmetatable(L, JSON_POOL_MT);
    lua_pushcfunction(L, json_pool_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);

    luaL_setfuncs(L, json_funcs, 5);
}
