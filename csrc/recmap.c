/* recmap: records by name in memory (recmap.h). */
#include <stdlib.h>
#include <string.h>
#include "recmap.h"

ms_recmap_entry *ms_recmap_find(const ms_recmap *m, const char *name, size_t nlen) {
    ms_recmap_entry *e;
    HASH_FIND(hh, m->head, name, nlen, e);
    return e;
}

/* A NUL-terminated copy of n bytes (NULL when out of memory). */
static char *copy_of(const char *s, size_t n) {
    char *copy = malloc(n + 1);
    if (copy == NULL) return NULL;
    if (n) memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

int ms_recmap_set(ms_recmap *m, const char *name, size_t nlen, long long version, const char *text, size_t tlen) {
    char *copy = NULL;
    if (text != NULL && (copy = copy_of(text, tlen)) == NULL) return -1;
    ms_recmap_entry *e = ms_recmap_find(m, name, nlen);
    if (e == NULL) {
        e = calloc(1, sizeof *e);
        if (e == NULL || (e->name = copy_of(name, nlen)) == NULL) {
            free(e);
            free(copy);
            return -1;
        }
        e->nlen = nlen;
        HASH_ADD_KEYPTR(hh, m->head, e->name, e->nlen, e);
        if (e->hh.tbl == NULL) {  /* uthash could not grow */
            free(e->name);
            free(e);
            free(copy);
            return -1;
        }
    }
    free(e->text);
    e->version = version;
    e->text = copy;
    e->tlen = tlen;
    return 0;
}

void ms_recmap_remove(ms_recmap *m, ms_recmap_entry *e) {
    HASH_DEL(m->head, e);
    free(e->name);
    free(e->text);
    free(e);
}

void ms_recmap_clear(ms_recmap *m) {
    ms_recmap_entry *e, *tmp;
    HASH_ITER(hh, m->head, e, tmp) ms_recmap_remove(m, e);
}
