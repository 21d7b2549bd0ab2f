/* A growable byte buffer (lua-cjson's strbuf plays this part): what C code
 * writes JSON text and messages into. Functions return 0 when memory runs
 * out, never raise, and leave the buffer as it was then. */
#ifndef MOONSTREAM_JBUF_H
#define MOONSTREAM_JBUF_H

#include <stddef.h>

typedef struct ms_jbuf {
    char *data;
    size_t len;
    size_t cap;
} ms_jbuf;

/* Makes room for n more bytes. */
int ms_jbuf_reserve(ms_jbuf *b, size_t n);
/* Appends n bytes. */
int ms_jbuf_put(ms_jbuf *b, const char *s, size_t n);
/* Frees the memory; the buffer is empty and usable again. */
void ms_jbuf_free(ms_jbuf *b);

#endif
