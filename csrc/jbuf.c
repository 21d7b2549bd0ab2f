/* The growable byte buffer (jbuf.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "jbuf.h"

int ms_jbuf_reserve(ms_jbuf *b, size_t n) {
    if (b->cap - b->len >= n) return 1;
    if (n > SIZE_MAX / 2 - b->len) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return 0;
    b->data = data;
    b->cap = cap;
    return 1;
}

int ms_jbuf_put(ms_jbuf *b, const char *s, size_t n) {
    if (!ms_jbuf_reserve(b, n)) return 0;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    return 1;
}

void ms_jbuf_free(ms_jbuf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
