/* records.c: the LevelDB implementation of the record engine's storage seam
 * (recstore.h), with group commit. */
#ifndef MOONSTREAM_RECORDS_H
#define MOONSTREAM_RECORDS_H

#include "core.h"
#include "recstore.h"

typedef struct ms_records ms_records;

/* The records object at idx; raises (Lua error) otherwise. */
ms_records *ms_records_check(lua_State *L, int idx);

/* The seam over r (valid while r is alive). */
void ms_records_seam(ms_records *r, ms_recstore *out);

#endif
