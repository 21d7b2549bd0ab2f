/* The record engine: the one home of the record commands (read, head, write
 * with path and version, delete, notify, create), their texts, bounds and
 * result shapes, and of a batch's answer (SUCCESS / PARTIAL_SUCCESS /
 * FAILURE, failed-sync texts). The HTTP fast path (fastpath.c), the Lua
 * dispatcher and the realtime protocol (through engine_lua.c) all run
 * commands here. Storage is reached only through the seam (recstore.h). */
#ifndef MOONSTREAM_ENGINE_H
#define MOONSTREAM_ENGINE_H

#include <stddef.h>
#include "core.h"
#include "json.h"
#include "recstore.h"

typedef struct ms_engine ms_engine;
typedef struct ms_batch ms_batch;

enum { MS_OP_READ, MS_OP_HEAD, MS_OP_WRITE, MS_OP_DELETE, MS_OP_NOTIFY, MS_OP_CREATE };
enum { MS_CHANGE_NONE, MS_CHANGE_WRITE, MS_CHANGE_DELETE };
enum { MS_PATCH_OK, MS_PATCH_WHOLE, MS_PATCH_CORRUPT, MS_PATCH_INVALID };

/* A path write's change to the stored data (the path syntax lives with the
 * caller: lua/moonstream/paths.lua). cur NULL: the record is missing.
 * Returns MS_PATCH_OK (the new text in out), MS_PATCH_WHOLE (the path has no
 * parts: a whole-record write), MS_PATCH_CORRUPT (cur is not JSON) or
 * MS_PATCH_INVALID (msg says why). */
typedef struct ms_patch {
    int (*apply)(void *ud, const char *cur, size_t len, ms_jbuf *out, ms_jbuf *msg);
    void *ud;
} ms_patch;

typedef struct ms_name {
    const char *s;
    size_t len;
} ms_name;

/* One command. Pointers must stay valid until the command is done. */
typedef struct ms_cmd {
    int op;
    int list;                   /* a list command: errorTopic "list" */
    const char *name;
    size_t nlen;
    const char *data;           /* write: the data as canonical JSON; NULL: none */
    size_t dlen;
    const char *data_err;       /* write: why there is no text (a Lua value JSON cannot hold) */
    int has_version;            /* write: version given (and not -1) */
    long long version;
    const ms_patch *patch;      /* write with a path */
    const ms_name *names;       /* notify */
    size_t nnames;
    void *origin;               /* handed to the change listener as it is */
} ms_cmd;

/* A change: version and text, or version -1 and text NULL when deleted.
 * origin: the command's (NULL for the fast path); notify's changes carry
 * &ms_engine_notified[0] for a record of the durable store and
 * &ms_engine_notified[1] for one kept in memory: a record's stored state told
 * again, not a new version (the cluster sends the first kind to every node). */
extern char ms_engine_notified[2];
typedef void (*ms_engine_change_fn)(void *ud, const char *name, size_t nlen, long long version,
                                    const char *text, size_t tlen, void *origin);
typedef void (*ms_engine_done_fn)(void *ud);

/* max_response: bytes of record data one batch's answer may carry
 * (maxResponseSize). NULL when out of memory. */
ms_engine *ms_engine_new(ms_recstore durable, size_t max_response);
void ms_engine_free(ms_engine *e);
/* Names starting with prefix live in memory only (storageExclusionPrefixes). 0, or -1. */
int ms_engine_exclude(ms_engine *e, const char *prefix, size_t plen);
void ms_engine_on_change(ms_engine *e, ms_engine_change_fn fn, void *ud);
/* 1 when every store answers before its call returns (callers that cannot
 * wait yet check this). */
int ms_engine_immediate(const ms_engine *e);
/* 1 when every store answers at once or can settle (recstore.h). */
int ms_engine_can_settle(const ms_engine *e);
/* Runs the stores' I/O until every command and get begun so far is done
 * (bounded by each store's timeout). Not for request paths (recstore.h). */
void ms_engine_settle(ms_engine *e);
/* The durability signal of the durable store (see recstore.h). */
int ms_engine_has_pending(const ms_engine *e);
int ms_engine_after_flush(ms_engine *e, ms_rec_durable_fn fn, void *ud);
/* A record's state: the seam's get, routed by name. */
void ms_engine_get(ms_engine *e, const char *name, size_t nlen, ms_rec_got_fn fn, void *ud);

/* The rule for the data of a whole-record write (JSON text, whitespace
 * before it allowed): an object or an array. 1 when it holds. */
int ms_engine_whole_data(const char *data, size_t len);

/* Runs c, appending its result to b; done(ud) when finished (maybe before
 * this returns). One command at a time per batch. */
void ms_engine_run(ms_engine *e, ms_batch *b, const ms_cmd *c, ms_engine_done_fn done, void *ud);

/* A batch: the results of one request, in order. bounded: the answer's
 * record data is limited to max_response (HTTP); else unlimited. */
ms_batch *ms_batch_new(ms_engine *e, int bounded);
void ms_batch_free(ms_batch *b);
void ms_batch_reset(ms_batch *b);
size_t ms_batch_count(const ms_batch *b);
/* Result i: its JSON text and whether it succeeded. */
const char *ms_batch_result(const ms_batch *b, size_t i, size_t *len, int *ok);
/* Appends a result made elsewhere (JSON text). 0 when out of memory. */
int ms_batch_add(ms_batch *b, int ok, const char *text, size_t len);
/* Appends {"success":true} (a command with nothing to report). */
int ms_batch_ok(ms_batch *b);
/* Appends the failure object {success:false,error,errorTopic,errorEvent}. */
int ms_batch_fail(ms_batch *b, const char *topic, const char *event, const char *msg, size_t mlen);
/* Writes the answer {"result":...,"body":[...]} to out; sync_err (the
 * durable store's client-safe text) turns changes into storage errors.
 * 0 when out of memory. */
int ms_batch_response(ms_batch *b, ms_jbuf *out, const char *sync_err);
/* The answer when even that ran out of memory. */
extern const char ms_batch_oom[];

/* ---- the Lua binding (engine_lua.c) ---- */

/* The engine of the engine object at idx (raises otherwise); the slot turns
 * NULL when the object is closed, so a holder checks it before each use. */
ms_engine *const *ms_engine_slot_check(lua_State *L, int idx);
#endif
