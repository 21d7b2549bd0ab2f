/* What the JSON files offer other C files: strict-JSON checks (json_scan.c),
 * the canonical writers json_encode uses (json_encode.c: text written in C
 * reads back exactly like text json_encode wrote), integer text (json_num.c)
 * and yajl allocation functions that keep their blocks between parses
 * (json_pool.c). The buffer they write into is jbuf.h's. */
#ifndef MOONSTREAM_JSON_H
#define MOONSTREAM_JSON_H

#include <stddef.h>
#include <yajl/yajl_parse.h>
#include "jbuf.h"

/* Appends s as a JSON string, escaped as json_encode escapes it. */
int ms_jbuf_string(ms_jbuf *b, const char *s, size_t len);
/* Appends the number yajl handed over as text (s, len) the way json_encode
 * writes the value json_decode makes of it: integers within int64 as
 * integers, other numbers as the shortest round-tripping double. Returns 0
 * when the number is out of range (json_decode refuses it) or memory ran out. */
int ms_jbuf_number(ms_jbuf *b, const char *s, size_t len);
/* Parses JSON integer syntax within int64 into *out; 0 otherwise. */
int ms_json_integer(const char *s, size_t len, long long *out);

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
