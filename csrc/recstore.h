/* The storage seam of the record engine (engine.c): the five things the
 * engine asks of a store of versioned records, and nothing else.
 *
 * Every operation answers through a callback, which may run before the call
 * returns (LevelDB in records.c, memory in memstore.c) or later from the loop
 * (a store across the network, such as Redis). The engine never assumes the
 * first. A put carries the version it expects to replace, and the store
 * checks it atomically on its side: a store shared by several servers can
 * then never accept two writes of one version.
 *
 * Names are raw bytes (nlen); texts are JSON. A version is >= 0 (0: a record
 * created empty by a realtime subscription). */
#ifndef MOONSTREAM_RECSTORE_H
#define MOONSTREAM_RECSTORE_H

#include <stddef.h>

enum {
    MS_REC_FAILED = -1,   /* the store failed: err says why (may name files) */
    MS_REC_MISSING = 0,   /* get: no such record; put: the expected version is not there */
    MS_REC_OK = 1
};

/* get: status, and when MS_REC_OK the version and text (valid during the call). */
typedef void (*ms_rec_got_fn)(void *ud, int status, long long version, const char *text, size_t len,
                              const char *err);
/* put, remove: MS_REC_OK queued for durability (see after_flush), MS_REC_MISSING
 * (put only) the record's version is not `expect` any more, MS_REC_FAILED. */
typedef void (*ms_rec_done_fn)(void *ud, int status, const char *err);
/* after_flush: 1 on disk, 0 failed (err: client-safe text), -1 the store went away. */
typedef void (*ms_rec_durable_fn)(void *ud, int status, const char *err);
/* iterate: once per record whose name starts with the prefix; return 0 to stop. */
typedef int (*ms_rec_each_fn)(void *ud, const char *name, size_t nlen, long long version,
                              const char *text, size_t len);

typedef struct ms_recstore_ops {
    void (*get)(void *self, const char *name, size_t nlen, ms_rec_got_fn fn, void *ud);
    /* expect: the version being replaced, -1 when the record must be missing */
    void (*put)(void *self, const char *name, size_t nlen, long long expect, long long version,
                const char *text, size_t tlen, ms_rec_done_fn fn, void *ud);
    void (*remove)(void *self, const char *name, size_t nlen, ms_rec_done_fn fn, void *ud);
    /* the durability signal: fn once every change queued so far is durable;
     * 0, or -1 out of memory. has_pending: changes are not durable yet. */
    int (*after_flush)(void *self, ms_rec_durable_fn fn, void *ud);
    int (*has_pending)(void *self);
    /* durable records only; 0, or -1 with *err (malloc'd) */
    int (*iterate)(void *self, const char *prefix, size_t plen, ms_rec_each_fn fn, void *ud, char **err);
    int immediate;  /* 1: every callback runs before its call returns */
    /* A store that answers later (immediate 0): runs its own I/O until every
     * callback of the calls made so far has run, bounded by its timeout (then
     * they fail). Only where waiting is right: shutdown draining, and the
     * Lua calls that still settle (engine_lua.c: handlers' ctx.records,
     * permission rules that read records). Requests (POST /api, realtime
     * records, tokens) never settle: they continue in the callbacks. NULL
     * for immediate stores. */
    void (*settle)(void *self);
} ms_recstore_ops;

typedef struct ms_recstore {
    const ms_recstore_ops *ops;
    void *self;
} ms_recstore;

#endif
