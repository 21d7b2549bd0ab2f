/* Records' C API, for fastpath.c: the same versioned values and group commit
 * that lua/moonstream/records.lua uses, so a command answered in C and one
 * answered in Lua see each other's writes. */
#ifndef MOONSTREAM_RECORDS_H
#define MOONSTREAM_RECORDS_H

#include <stddef.h>
#include "core.h"

typedef struct ms_records ms_records;

/* The records object at idx; raises (Lua error) otherwise. */
ms_records *ms_records_check(lua_State *L, int idx);

/* A record's state as read: text is valid until the next change to the
 * records (or until ms_record_release when it is owned). */
typedef struct ms_record {
    long long version;
    const char *text;
    size_t len;
    char *owned;
} ms_record;

/* 1 found (*out set), 0 missing, -1 failed (*err: malloc'd message). */
int ms_records_get(ms_records *r, const char *name, size_t nlen, ms_record *out, char **err);
void ms_record_release(ms_record *rec);

/* Queue a change for the next group commit; 0, or -1 when out of memory. */
int ms_records_put(ms_records *r, const char *name, size_t nlen, long long version,
                   const char *text, size_t tlen);
int ms_records_remove(ms_records *r, const char *name, size_t nlen);

/* True when changes are not on disk yet (gathering or being written). */
int ms_records_has_pending(const ms_records *r);

/* fn(ud, status, err) once the changes made so far are on disk: status 1;
 * the write failed: 0 and err (the client-safe text, no file paths); the
 * records went away first: -1 (only free ud). 0, or -1 when out of memory. */
typedef void (*ms_records_done_fn)(void *ud, int status, const char *err);
int ms_records_after_flush(ms_records *r, ms_records_done_fn fn, void *ud);

/* A storage error as clients may see it: without the file paths LevelDB
 * puts in its messages. malloc'd (NULL when out of memory). */
char *ms_records_public_error(const char *err);

#endif
