/* Declarations shared by the JSON files only (json.c the decoder and the
 * module, json_scan.c the strictness pre-scan, json_num.c number text,
 * json_diag.c the decoder's error messages, json_encode.c the encoder,
 * json_pool.c yajl's block pool). Other C files use json.h. */
#ifndef MOONSTREAM_JSON_INT_H
#define MOONSTREAM_JSON_INT_H

#include <stdint.h>
#include <string.h>
#include <yajl/yajl_parse.h>
#include "core.h"
#include "json.h"

/* Upvalues shared by the module functions (see ms_json_open). */
#define JSON_UV_ARRAY_MT lua_upvalueindex(1)
#define JSON_UV_RAW_MT lua_upvalueindex(2)
#define JSON_UV_PARSER_MT lua_upvalueindex(3)
#define JSON_UV_BUFFER lua_upvalueindex(4)
#define JSON_UV_POOL lua_upvalueindex(5)

/* Word-at-a-time byte tests (8 bytes per step on the common ASCII path). */
#define JSON_ONES UINT64_C(0x0101010101010101)
#define JSON_HIGHS UINT64_C(0x8080808080808080)
#define json_has_zero(w) (((w) - JSON_ONES) & ~(w) & JSON_HIGHS)
#define json_has_byte(w, c) json_has_zero((w) ^ (JSON_ONES * (uint8_t)(c)))
/* Exact for n <= 128: some byte of w is below n. */
#define json_has_less(w, n) (((w) - JSON_ONES * (n)) & ~(w) & JSON_HIGHS)

static inline uint64_t json_load8(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

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


/* The encoder's cached buffer (upvalue 4): busy while an encode uses it. */
typedef struct json_cached {
    ms_jbuf b;
    int busy;
} json_cached;

/* json_scan.c: the kind of the first byte strict JSON rejects and yajl
 * accepts (JSON_SUSPECT_NONE: none), its offset in *at. */
int json_prescan(const unsigned char *s, size_t len, size_t *at);

/* json_num.c: JSON integer syntax within int64: 1 and *out; beyond int64:
 * -1; any other number: 0. */
int json_parse_integer(const char *s, size_t len, long long *out);
/* strtod with the locale's radix character (*decpoint, 0 until known):
 * 1, 0 when infinite, -1 out of memory. */
int json_to_double(const char *s, size_t len, char *decpoint, double *out);

/* json_diag.c: the decoder's error messages (each pushes what it says). */
void json_push_decode_error(json_decoder *d, yajl_status status);
void json_push_suspect_error(lua_State *L, int kind, size_t at, unsigned char c);
int json_push_trailing_error(json_decoder *d, size_t limit);

/* json_encode.c: json_encode(value) -> text | nil, message; the __gc and
 * __close of the cached buffer. */
int json_encode_lua(lua_State *L);
int json_cached_close(lua_State *L);

#endif
