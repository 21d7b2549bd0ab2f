/* memstore: the storage seam (recstore.h) over memory, for the record names
 * storageExclusionPrefixes keeps out of LevelDB. Answers at once; nothing is
 * ever pending, so after_flush calls back at once too. */
#include <stdlib.h>
#include <string.h>
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#include "memstore.h"

typedef struct mem_entry {
    char *name;
    size_t nlen;
    long long version;
    char *text;
    size_t tlen;
    UT_hash_handle hh;
} mem_entry;

struct ms_memstore {
    mem_entry *map;
};

ms_memstore *ms_memstore_new(void) {
    return calloc(1, sizeof(ms_memstore));
}

static void entry_free(ms_memstore *m, mem_entry *e) {
    HASH_DEL(m->map, e);
    free(e->name);
    free(e->text);
    free(e);
}

void ms_memstore_free(ms_memstore *m) {
    if (m == NULL) return;
    mem_entry *e, *tmp;
    HASH_ITER(hh, m->map, e, tmp) entry_free(m, e);
    free(m);
}

static mem_entry *find(ms_memstore *m, const char *name, size_t nlen) {
    mem_entry *e;
    HASH_FIND(hh, m->map, name, nlen, e);
    return e;
}

static void mem_get(void *self, const char *name, size_t nlen, ms_rec_got_fn fn, void *ud) {
    mem_entry *e = find(self, name, nlen);
    if (e == NULL) fn(ud, MS_REC_MISSING, 0, NULL, 0, NULL);
    else fn(ud, MS_REC_OK, e->version, e->text, e->tlen, NULL);
}

/* 0, or -1 out of memory */
static int mem_set(ms_memstore *m, const char *name, size_t nlen, long long version, const char *text, size_t tlen) {
    char *copy = malloc(tlen + 1);
    if (copy == NULL) return -1;
    memcpy(copy, text, tlen);
    copy[tlen] = '\0';
    mem_entry *e = find(m, name, nlen);
    if (e == NULL) {
        e = calloc(1, sizeof *e);
        if (e == NULL || (e->name = malloc(nlen ? nlen : 1)) == NULL) {
            free(e);
            free(copy);
            return -1;
        }
        memcpy(e->name, name, nlen);
        e->nlen = nlen;
        HASH_ADD_KEYPTR(hh, m->map, e->name, e->nlen, e);
        if (e->hh.tbl == NULL) {  /* uthash could not grow */
            free(e->name);
            free(e);
            free(copy);
            return -1;
        }
    }
    free(e->text);
    e->text = copy;
    e->tlen = tlen;
    e->version = version;
    return 0;
}

static void mem_put(void *self, const char *name, size_t nlen, long long expect, long long version,
                    const char *text, size_t tlen, ms_rec_done_fn fn, void *ud) {
    mem_entry *e = find(self, name, nlen);
    if ((e ? e->version : -1) != expect) fn(ud, MS_REC_MISSING, NULL);
    else if (mem_set(self, name, nlen, version, text, tlen) != 0) fn(ud, MS_REC_FAILED, "out of memory");
    else fn(ud, MS_REC_OK, NULL);
}

static void mem_remove(void *self, const char *name, size_t nlen, ms_rec_done_fn fn, void *ud) {
    mem_entry *e = find(self, name, nlen);
    if (e) entry_free(self, e);
    fn(ud, MS_REC_OK, NULL);
}

static int mem_after_flush(void *self, ms_rec_durable_fn fn, void *ud) {
    fn(ud, 1, NULL);
    return 0;
}

static int mem_has_pending(void *self) {
    return 0;
}

static int mem_iterate(void *self, const char *prefix, size_t plen, ms_rec_each_fn fn, void *ud, char **err) {
    ms_memstore *m = self;
    mem_entry *e, *tmp;
    *err = NULL;
    HASH_ITER(hh, m->map, e, tmp) {
        if (e->nlen >= plen && memcmp(e->name, prefix, plen) == 0 &&
            !fn(ud, e->name, e->nlen, e->version, e->text, e->tlen))
            break;
    }
    return 0;
}

static const ms_recstore_ops mem_ops = {
    mem_get, mem_put, mem_remove, mem_after_flush, mem_has_pending, mem_iterate, 1, NULL
};

void ms_memstore_seam(ms_memstore *m, ms_recstore *out) {
    out->ops = &mem_ops;
    out->self = m;
}
