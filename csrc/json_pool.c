/* yajl allocation functions over a pool of kept blocks (see below). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "json.h"

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

