/* memstore: the storage seam (recstore.h) over memory, for the record names
 * storageExclusionPrefixes keeps out of LevelDB. Answers at once; nothing is
 * ever pending, so after_flush calls back at once too. */
#include <stdlib.h>
#include <string.h>

#include "memstore.h"
#include "recmap.h"

struct ms_memstore {
    ms_recmap map;
};

ms_memstore *ms_memstore_new(void) {
    return calloc(1, sizeof(ms_memstore));
}

void ms_memstore_free(ms_memstore *m) {
    if (m == NULL) return;
    ms_recmap_clear(&m->map);
    free(m);
}

static void mem_get(void *self, const char *name, size_t nlen, ms_rec_got_fn fn, void *ud) {
    ms_recmap_entry *e = ms_recmap_find(&((ms_memstore *)self)->map, name, nlen);
    if (e == NULL) fn(ud, MS_REC_MISSING, 0, NULL, 0, NULL);
    else fn(ud, MS_REC_OK, e->version, e->text, e->tlen, NULL);
}

static void mem_put(void *self, const char *name, size_t nlen, long long expect, long long version,
                    const char *text, size_t tlen, ms_rec_done_fn fn, void *ud) {
    ms_recmap *map = &((ms_memstore *)self)->map;
    ms_recmap_entry *e = ms_recmap_find(map, name, nlen);
    if ((e ? e->version : -1) != expect) fn(ud, MS_REC_MISSING, NULL);
    else if (ms_recmap_set(map, name, nlen, version, text, tlen) != 0) fn(ud, MS_REC_FAILED, "out of memory");
    else fn(ud, MS_REC_OK, NULL);
}

static void mem_remove(void *self, const char *name, size_t nlen, ms_rec_done_fn fn, void *ud) {
    ms_recmap *map = &((ms_memstore *)self)->map;
    ms_recmap_entry *e = ms_recmap_find(map, name, nlen);
    if (e) ms_recmap_remove(map, e);
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
    ms_recmap_entry *e, *tmp;
    *err = NULL;
    HASH_ITER(hh, m->map.head, e, tmp) {
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
