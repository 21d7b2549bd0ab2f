/* Counters and histograms the C core keeps for the Prometheus endpoint
 * (lua/moonstream/metrics.lua renders them, on scrape only).
 *
 * They are process-wide, like a Prometheus client's default registry: every
 * hook is one increment on plain memory, with no pointer to pass around, and
 * everything runs on the loop thread (the store's writer thread never calls
 * these). Several servers in one process (the specs) share them. */
#ifndef MOONSTREAM_METRICS_H
#define MOONSTREAM_METRICS_H

#include <stddef.h>
#include "core.h"

/* The `endpoint` label of moonstream_http_requests_total. */
enum {
    MS_EP_API, MS_EP_AUTH, MS_EP_HEALTH, MS_EP_REALTIME, MS_EP_METRICS, MS_EP_MONITORING,
    MS_EP_OTHER, MS_EP_COUNT
};

/* The `topic` and `action` labels of moonstream_commands_total (POST /api). */
enum { MS_TOPIC_EVENT, MS_TOPIC_RECORD, MS_TOPIC_LIST, MS_TOPIC_RPC, MS_TOPIC_PRESENCE, MS_TOPIC_COUNT };
enum {
    MS_ACTION_EMIT, MS_ACTION_READ, MS_ACTION_HEAD, MS_ACTION_WRITE, MS_ACTION_DELETE,
    MS_ACTION_NOTIFY, MS_ACTION_MAKE, MS_ACTION_QUERY, MS_ACTION_COUNT
};

/* The endpoint id for a label name ("api", "auth", ...); MS_EP_OTHER if unknown. */
int ms_metrics_endpoint_id(const char *label);

/* Hooks (see the README's metrics list for what each counts). */
void ms_metrics_http_response(int endpoint, unsigned status);          /* http.c: a response queued */
void ms_metrics_command(int topic, int action, int ok);                /* fastpath.c, dispatch.lua */
void ms_metrics_record_read(void);                                     /* records.c: a lookup */
void ms_metrics_record_written(void);                                  /* records.c: a version queued */
void ms_metrics_record_deleted(void);                                  /* records.c: a delete queued */
void ms_metrics_group_commit(size_t records);                          /* records.c: a group handed to the disk */
void ms_metrics_sync_seconds(double seconds);                          /* store.c: one synced group write */
void ms_metrics_loop_busy(double seconds);                             /* loop.c: one iteration's work */

void ms_metrics_open(lua_State *L);

#endif
