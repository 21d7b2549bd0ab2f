/* The store's C API, for records.c: reads and synced batch writes on the
 * store's writer thread, without going through Lua. */
#ifndef MOONSTREAM_STORE_H
#define MOONSTREAM_STORE_H

#include <stddef.h>
#include <leveldb/c.h>
#include "core.h"
#include "loop.h"

typedef struct store ms_store;

/* The open store at idx; raises (Lua error) otherwise. */
ms_store *ms_store_check(lua_State *L, int idx);

/* leveldb_get: the value (free with leveldb_free) or NULL when missing or on
 * error; *err is then a malloc'd message (free with free) or NULL. */
char *ms_store_get(ms_store *s, const char *key, size_t klen, size_t *vlen, char **err);

/* Writes wb now; NULL or a malloc'd error message. */
char *ms_store_write(ms_store *s, leveldb_writebatch_t *wb, int sync);

/* Writes wb on the store's writer thread; fn(ud, err) runs on the loop once
 * it is on disk (err NULL) or failed (err: LevelDB's message, valid during
 * the call). One write at a time per store; wb must not be touched until fn
 * ran. Raises if the store at store_idx is closed; returns 0, or -1 with
 * errno set. If the store is closed first, fn still runs, from close. */
typedef void (*ms_store_done_fn)(void *ud, const char *err);
int ms_store_write_async(lua_State *L, int store_idx, ms_loop *loop, int loop_idx,
                         leveldb_writebatch_t *wb, int sync, ms_store_done_fn fn, void *ud);

/* The same on a writer that ms_store_write_async started, without Lua: for
 * the done callback, which hands over the next group at once (the writer is
 * idle when it runs). 0, or -1 with errno (ENOENT: no writer or a closed
 * store; EBUSY: a write in flight). */
int ms_store_write_next(ms_store *s, leveldb_writebatch_t *wb, int sync, ms_store_done_fn fn, void *ud);

/* Calls fn for each key starting with prefix, in key order, until it
 * returns 0. 0, or -1 with *err (malloc'd) when LevelDB failed. */
int ms_store_each(ms_store *s, const char *prefix, size_t plen,
                  int (*fn)(void *ud, const char *k, size_t klen, const char *v, size_t vlen), void *ud,
                  char **err);

/* Waits for a C caller's write in flight and drops its callback (the
 * caller is going away). */
void ms_store_write_forget(ms_store *s);

#endif
