/* The fast path between http.c and fastpath.c: POST /api batches that need
 * no policy decision in Lua are parsed, validated, run and answered in C. */
#ifndef MOONSTREAM_FASTPATH_H
#define MOONSTREAM_FASTPATH_H

#include <stddef.h>
#include "core.h"

typedef struct ms_fast ms_fast;

/* The fast path object at idx; raises (Lua error) otherwise. */
ms_fast *ms_fast_check(lua_State *L, int idx);

enum {
    MS_FAST_DECLINE,  /* not for the fast path: Lua answers, as if it had never been seen */
    MS_FAST_DONE,     /* answered: 200 with *out (valid until the next call) */
    MS_FAST_LATER     /* answered later, through ms_http_waiter_answer */
};

/* Runs one complete POST request through the fast path (see the enum).
 * Never raises. */
int ms_fast_run(ms_fast *f, void *req, const char *url, const char *content_type,
                const char *body, size_t len, const char **out, size_t *outlen);

#endif
