/* memstore.c: records kept in memory only, behind the storage seam. */
#ifndef MOONSTREAM_MEMSTORE_H
#define MOONSTREAM_MEMSTORE_H

#include "recstore.h"

typedef struct ms_memstore ms_memstore;

/* NULL when out of memory. */
ms_memstore *ms_memstore_new(void);
void ms_memstore_free(ms_memstore *m);
void ms_memstore_seam(ms_memstore *m, ms_recstore *out);

#endif
