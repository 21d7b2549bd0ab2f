/* The C core's metrics (see metrics.h): fixed arrays indexed by label ids,
 * so a hook is an increment; core.metrics_snapshot() copies them into Lua
 * tables when /metrics is scraped. Label names and histogram buckets live
 * here, once; metrics.lua turns them into the text format. */
#include <stdint.h>
#include <string.h>

#include "metrics.h"

#define HTTP_STATUSES 600

static const char *const ENDPOINTS[MS_EP_COUNT] = {
    "api", "auth", "health_check", "realtime", "metrics", "monitoring", "other"
};
static const char *const TOPICS[MS_TOPIC_COUNT] = { "event", "record", "list", "rpc", "presence" };
static const char *const ACTIONS[MS_ACTION_COUNT] = {
    "emit", "read", "head", "write", "delete", "notify", "make", "query"
};

typedef struct histogram {
    const char *name;
    const double *bounds;   /* upper bounds, increasing; +Inf is implicit */
    int n;
    uint64_t counts[16];    /* per bucket (not cumulative); [n] is +Inf */
    double sum;
    uint64_t count;
} histogram;

/* Seconds: half a millisecond (a page-cache fsync) to 2.5 s (a stalled disk). */
static const double SYNC_BOUNDS[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5 };
/* Records per group: one request alone, up to a loaded server's batches. */
static const double GROUP_BOUNDS[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096 };
/* Seconds: 0.1 ms (an idle loop) to 1 s (something blocking the loop). */
static const double LAG_BOUNDS[] = { 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1 };

#define NBOUNDS(a) ((int)(sizeof a / sizeof a[0]))

static struct {
    uint64_t http[MS_EP_COUNT][HTTP_STATUSES];
    uint64_t commands[MS_TOPIC_COUNT][MS_ACTION_COUNT][2];
    uint64_t records_read, records_written, records_deleted;
    histogram group_commit, sync, loop;
} M = {
    .group_commit = { "group_commit_records", GROUP_BOUNDS, NBOUNDS(GROUP_BOUNDS), { 0 }, 0, 0 },
    .sync = { "sync_seconds", SYNC_BOUNDS, NBOUNDS(SYNC_BOUNDS), { 0 }, 0, 0 },
    .loop = { "loop_busy_seconds", LAG_BOUNDS, NBOUNDS(LAG_BOUNDS), { 0 }, 0, 0 },
};

static void observe(histogram *h, double v) {
    int i = 0;
    while (i < h->n && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

int ms_metrics_endpoint_id(const char *label) {
    for (int i = 0; i < MS_EP_COUNT; i++)
        if (strcmp(label, ENDPOINTS[i]) == 0) return i;
    return MS_EP_OTHER;
}

void ms_metrics_http_response(int endpoint, unsigned status) {
    if (endpoint < 0 || endpoint >= MS_EP_COUNT) endpoint = MS_EP_OTHER;
    if (status < HTTP_STATUSES) M.http[endpoint][status]++;
}

void ms_metrics_command(int topic, int action, int ok) {
    if (topic >= 0 && topic < MS_TOPIC_COUNT && action >= 0 && action < MS_ACTION_COUNT)
        M.commands[topic][action][ok ? 1 : 0]++;
}

void ms_metrics_record_read(void) { M.records_read++; }
void ms_metrics_record_written(void) { M.records_written++; }
void ms_metrics_record_deleted(void) { M.records_deleted++; }
void ms_metrics_group_commit(size_t records) { observe(&M.group_commit, (double)records); }
void ms_metrics_sync_seconds(double seconds) { observe(&M.sync, seconds); }
void ms_metrics_loop_busy(double seconds) { observe(&M.loop, seconds); }

/* ---- Lua API ---- */

/* core.metrics_command(topic_id, action_id, ok): a command the Lua path
 * ran; the ids are positions (from 1) in core.metrics_labels() lists, which
 * metrics.lua looks up once, so the hot path passes integers. */
static int metrics_command_lua(lua_State *L) {
    ms_metrics_command((int)luaL_checkinteger(L, 1) - 1, (int)luaL_checkinteger(L, 2) - 1, lua_toboolean(L, 3));
    return 0;
}

static void push_names(lua_State *L, const char *const *names, int n, const char *field) {
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, field);
}

/* core.metrics_labels() -> { topics = {...}, actions = {...} }: the label
 * values of moonstream_commands_total, in id order. */
static int metrics_labels(lua_State *L) {
    lua_createtable(L, 0, 2);
    push_names(L, TOPICS, MS_TOPIC_COUNT, "topics");
    push_names(L, ACTIONS, MS_ACTION_COUNT, "actions");
    return 1;
}

static void set_int(lua_State *L, const char *k, uint64_t v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/* { bounds = {...}, counts = {... cumulative, the last is +Inf}, sum, count } */
static void push_histogram(lua_State *L, const histogram *h) {
    lua_createtable(L, 0, 4);
    lua_createtable(L, h->n, 0);
    for (int i = 0; i < h->n; i++) {
        lua_pushnumber(L, h->bounds[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "bounds");
    lua_createtable(L, h->n + 1, 0);
    uint64_t acc = 0;
    for (int i = 0; i <= h->n; i++) {
        acc += h->counts[i];
        lua_pushinteger(L, (lua_Integer)acc);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "counts");
    lua_pushnumber(L, h->sum);
    lua_setfield(L, -2, "sum");
    set_int(L, "count", h->count);
    lua_setfield(L, -2, h->name);
}

/* core.metrics_snapshot() -> { http = { { endpoint, status, count }, ... },
 * commands = { { topic, action, result, count }, ... }, records_read,
 * records_written, records_deleted, group_commit_records, sync_seconds,
 * loop_busy_seconds (histograms) }. Only series that happened are listed. */
static int metrics_snapshot(lua_State *L) {
    lua_createtable(L, 0, 8);
    lua_newtable(L);
    int n = 0;
    for (int e = 0; e < MS_EP_COUNT; e++)
        for (int s = 0; s < HTTP_STATUSES; s++)
            if (M.http[e][s]) {
                lua_createtable(L, 3, 0);
                lua_pushstring(L, ENDPOINTS[e]);
                lua_rawseti(L, -2, 1);
                lua_pushinteger(L, s);
                lua_rawseti(L, -2, 2);
                lua_pushinteger(L, (lua_Integer)M.http[e][s]);
                lua_rawseti(L, -2, 3);
                lua_rawseti(L, -2, ++n);
            }
    lua_setfield(L, -2, "http");
    lua_newtable(L);
    n = 0;
    for (int t = 0; t < MS_TOPIC_COUNT; t++)
        for (int a = 0; a < MS_ACTION_COUNT; a++)
            for (int ok = 0; ok < 2; ok++)
                if (M.commands[t][a][ok]) {
                    lua_createtable(L, 4, 0);
                    lua_pushstring(L, TOPICS[t]);
                    lua_rawseti(L, -2, 1);
                    lua_pushstring(L, ACTIONS[a]);
                    lua_rawseti(L, -2, 2);
                    lua_pushstring(L, ok ? "success" : "failure");
                    lua_rawseti(L, -2, 3);
                    lua_pushinteger(L, (lua_Integer)M.commands[t][a][ok]);
                    lua_rawseti(L, -2, 4);
                    lua_rawseti(L, -2, ++n);
                }
    lua_setfield(L, -2, "commands");
    set_int(L, "records_read", M.records_read);
    set_int(L, "records_written", M.records_written);
    set_int(L, "records_deleted", M.records_deleted);
    push_histogram(L, &M.group_commit);
    push_histogram(L, &M.sync);
    push_histogram(L, &M.loop);
    return 1;
}

void ms_metrics_open(lua_State *L) {
    lua_pushcfunction(L, metrics_command_lua);
    lua_setfield(L, -2, "metrics_command");
    lua_pushcfunction(L, metrics_snapshot);
    lua_setfield(L, -2, "metrics_snapshot");
    lua_pushcfunction(L, metrics_labels);
    lua_setfield(L, -2, "metrics_labels");
}
