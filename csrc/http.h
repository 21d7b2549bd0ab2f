/* What http.c (the libmicrohttpd server) offers the other C files: the fast
 * path's deferred answers and content-type check (fastpath.c), and the
 * WebSocket hand-over (ws.c). */
#ifndef MOONSTREAM_HTTP_H
#define MOONSTREAM_HTTP_H

#include <stddef.h>

/* A request answered later (the fast path waiting for its group commit). */
typedef struct ms_http_waiter ms_http_waiter;
/* The waiter for the request `req` (the pointer given to ms_fast_run), or
 * NULL when out of memory. */
ms_http_waiter *ms_http_defer(void *req);
/* Answers 200 with body (JSON) if the connection is still there, then frees
 * the waiter. body NULL: answers 503 (shutting down). */
void ms_http_waiter_answer(ms_http_waiter *w, const char *body, size_t len);

/* Whether a Content-Type header names application/json (parameters allowed,
 * case-insensitive): the one check for POST bodies, used by both paths
 * (Lua's through core.is_json_content_type). */
int ms_http_is_json(const char *content_type);

/* The request whose MHD closure is req_cls became a WebSocket (it no longer
 * counts as in flight); returns the WebSocket that req:upgrade() attached to
 * it, or NULL if it was finished meanwhile. */
void *ms_http_upgraded(void *req_cls);
/* The WebSocket attached to req_cls finished before its socket arrived. */
void ms_http_forget_ws(void *req_cls);
/* The upgraded connection of req_cls was handed back with
 * MHD_upgrade_action(CLOSE); MHD closes it in its next MHD_run, which this
 * asks for (MHD's own wake-up does not reach our loop). */
void ms_http_wake(void *req_cls);

#endif
