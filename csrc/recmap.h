/* recmap: records by name in memory (version and JSON text, or a tombstone),
 * for records.c's overlay of unsynced changes and memstore.c's records. */
#ifndef MOONSTREAM_RECMAP_H
#define MOONSTREAM_RECMAP_H

#include <stddef.h>
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

typedef struct ms_recmap_entry {
    char *name;
    size_t nlen;
    long long version;
    char *text;          /* NULL: deleted (a tombstone) */
    size_t tlen;
    UT_hash_handle hh;
} ms_recmap_entry;

typedef struct ms_recmap {
    ms_recmap_entry *head;  /* uthash head; a zeroed map is empty */
} ms_recmap;

ms_recmap_entry *ms_recmap_find(const ms_recmap *m, const char *name, size_t nlen);
/* Sets name to version and a copy of text (NULL: a tombstone). 0, or -1 out
 * of memory (the map is unchanged). */
int ms_recmap_set(ms_recmap *m, const char *name, size_t nlen, long long version, const char *text, size_t tlen);
void ms_recmap_remove(ms_recmap *m, ms_recmap_entry *e);
void ms_recmap_clear(ms_recmap *m);

#endif
