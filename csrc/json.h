/* The pieces of json.c that other C files share: strict-JSON checks, the
 * canonical writers json_encode uses (so text written in C reads back exactly
 * like text json_encode wrote) and yajl allocation functions that keep their
 * blocks between parses. */
#ifndef MOONSTREAM_JSON_H
#define MOONSTREAM_JSON_H

#include <stddef.h>
#include <yajl/yajl_parse.h>

/* A growable output buffer. */
typedef struct ms_jbuf {
    char *data;
    size_t len;
    size_t cap;
    int busy;  /* json.c: the cached buffer is in use by an encode in progress */
} ms_jbuf;

/* Appends n bytes; 0 when out of memory. */
int ms_jbuf_put(ms_jbuf *b, const char *s, size_t n);
/* Appends s as a JSON string, escaped as json_encode escapes it. */
int ms_jbuf_string(ms_jbuf *b, const char *s, size_t len);
/* Appends the number yajl handed over as text (s, len) the way json_encode
 * writes the value json_decode makes of it: integers within int64 as
 * integers, other numbers as the shortest round-tripping double. Returns 0
 * when the number is out of range (json_decode refuses it) or memory ran out. */
int ms_jbuf_number(ms_jbuf *b, const char *s, size_t len);
/* Parses JSON integer syntax within int64 into *out; 0 otherwise. */
int ms_json_integer(const char *s, size_t len, long long *out);
void ms_jbuf_free(ms_jbuf *b);

/* 1 when text has none of the bytes yajl accepts but strict JSON refuses
 * (malformed UTF-8, raw \v or \f, unpaired surrogate escapes). */
int ms_json_strict(const char *text, size_t len);

/* yajl allocation functions over a pool of kept blocks (ms_json_pool_new,
 * freed with ms_json_pool_delete). */
typedef struct ms_json_pool ms_json_pool;
ms_json_pool *ms_json_pool_new(void);
void ms_json_pool_delete(ms_json_pool *pool);
void ms_json_pool_funcs(ms_json_pool *pool, yajl_alloc_funcs *funcs);

#define MS_JSON_MAX_DEPTH 128

#endif
