/* redisstore: the storage seam (recstore.h) over Redis, for the cluster mode. */
#ifndef MOONSTREAM_REDISSTORE_H
#define MOONSTREAM_REDISSTORE_H

#include <lua.h>
#include "recstore.h"

typedef struct ms_redisstore ms_redisstore;

/* The store at idx as a seam in *out, or NULL when idx is not one (raises
 * when it is closed). */
ms_redisstore *ms_redisstore_test(lua_State *L, int idx, ms_recstore *out);

#endif
