/* engine: the record commands, once (see engine.h).
 *
 * A command reads the record through the seam, decides, and writes through
 * the seam with the version it read as the expected one; a store shared by
 * several servers may then refuse the write (someone else wrote first), and
 * the command decides again from the new state. Every step continues in a
 * callback, so a store that answers later (over the network) works as well
 * as one that answers at once; the command's state lives in its batch.
 *
 * Results are JSON text appended to the batch, in the shapes of the
 * contract (spec/http-api.md section 4): callers never build a record
 * result themselves. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "memstore.h"

/* Writes refused because another writer got there first, before giving up. */
#define MAX_TRIES 16

typedef struct batch_result {
    size_t off, len;
    unsigned char ok, change, list;
} batch_result;

struct ms_batch {
    ms_engine *e;
    int bounded;
    int oom;                     /* a result could not be recorded */
    size_t budget;               /* record data the answer carries so far */
    ms_jbuf out;                 /* the results' texts */
    batch_result *res;
    size_t n, cap;
    ms_jbuf msg, text;           /* an error text, a path write's new text */
    /* the command running */
    ms_cmd cmd;
    ms_engine_done_fn done;
    void *done_ud;
    size_t at;                   /* notify: the name being read */
    int looping, answered;       /* notify: reading in notify_next's loop; the read answered */
    int tries;                   /* write: refused puts so far */
    long long next;              /* write: the version being written */
    const char *wtext;           /* write: the text being written */
    size_t wlen;
};

struct ms_engine {
    ms_recstore durable;
    ms_memstore *mem;
    ms_recstore memory;
    ms_name *excl;
    size_t nexcl;
    size_t max_response;
    ms_engine_change_fn on_change;
    void *change_ud;
};

static const char OK[] = "{\"success\":true}";

/* ---- the engine ---- */

ms_engine *ms_engine_new(ms_recstore durable, size_t max_response) {
    ms_engine *e = calloc(1, sizeof *e);
    if (e == NULL) return NULL;
    e->durable = durable;
    e->max_response = max_response;
    if ((e->mem = ms_memstore_new()) == NULL) {
        free(e);
        return NULL;
    }
    ms_memstore_seam(e->mem, &e->memory);
    return e;
}

void ms_engine_free(ms_engine *e) {
    if (e == NULL) return;
    for (size_t i = 0; i < e->nexcl; i++) free((char *)e->excl[i].s);
    free(e->excl);
    ms_memstore_free(e->mem);
    free(e);
}

int ms_engine_exclude(ms_engine *e, const char *prefix, size_t plen) {
    ms_name *excl = realloc(e->excl, (e->nexcl + 1) * sizeof *excl);
    if (excl == NULL) return -1;
    e->excl = excl;
    char *copy = malloc(plen ? plen : 1);
    if (copy == NULL) return -1;
    memcpy(copy, prefix, plen);
    e->excl[e->nexcl++] = (ms_name){ copy, plen };
    return 0;
}

void ms_engine_on_change(ms_engine *e, ms_engine_change_fn fn, void *ud) {
    e->on_change = fn;
    e->change_ud = ud;
}

int ms_engine_immediate(const ms_engine *e) {
    return e->durable.ops->immediate && e->memory.ops->immediate;
}

int ms_engine_can_settle(const ms_engine *e) {
    return (e->durable.ops->immediate || e->durable.ops->settle) &&
           (e->memory.ops->immediate || e->memory.ops->settle);
}

void ms_engine_settle(ms_engine *e) {
    if (e->durable.ops->settle) e->durable.ops->settle(e->durable.self);
    if (e->memory.ops->settle) e->memory.ops->settle(e->memory.self);
}

int ms_engine_has_pending(const ms_engine *e) {
    return e->durable.ops->has_pending(e->durable.self);
}

int ms_engine_after_flush(ms_engine *e, ms_rec_durable_fn fn, void *ud) {
    return e->durable.ops->after_flush(e->durable.self, fn, ud);
}

/* storageExclusionPrefixes: the store a name lives in */
static const ms_recstore *store_for(const ms_engine *e, const char *name, size_t nlen) {
    for (size_t i = 0; i < e->nexcl; i++) {
        if (e->excl[i].len <= nlen && memcmp(name, e->excl[i].s, e->excl[i].len) == 0) return &e->memory;
    }
    return &e->durable;
}

void ms_engine_get(ms_engine *e, const char *name, size_t nlen, ms_rec_got_fn fn, void *ud) {
    const ms_recstore *s = store_for(e, name, nlen);
    s->ops->get(s->self, name, nlen, fn, ud);
}

static void changed(ms_engine *e, const char *name, size_t nlen, long long version, const char *text,
                    size_t tlen, void *origin) {
    if (e->on_change) e->on_change(e->change_ud, name, nlen, version, text, tlen, origin);
}

/* ---- results ---- */

static int put(ms_jbuf *o, const char *s) {
    return ms_jbuf_put(o, s, strlen(s));
}

/* The failure object; current (version >= 0 given): with currentVersion and
 * currentData (text NULL: null). */
static int put_failure(ms_jbuf *o, const char *topic, const char *event, const char *msg, size_t mlen,
                       int has_current, long long version, const char *text, size_t tlen) {
    if (!put(o, "{\"success\":false,\"error\":") || !ms_jbuf_string(o, msg, mlen) ||
        !put(o, ",\"errorTopic\":") || !ms_jbuf_string(o, topic, strlen(topic)) ||
        !put(o, ",\"errorEvent\":") || !ms_jbuf_string(o, event, strlen(event)))
        return 0;
    if (has_current) {
        char num[48];
        snprintf(num, sizeof num, ",\"currentVersion\":%lld,\"currentData\":", version);
        if (!put(o, num) || !(text ? ms_jbuf_put(o, text, tlen) : put(o, "null"))) return 0;
    }
    return put(o, "}");
}

/* b->msg = a .. name .. c (an error text around a record name) */
static int msg3(ms_batch *b, const char *a, const char *name, size_t nlen, const char *c) {
    b->msg.len = 0;
    return put(&b->msg, a) && ms_jbuf_put(&b->msg, name, nlen) && put(&b->msg, c);
}

/* Whether len more bytes of record data fit in the answer; counts them if so. */
static int fits(ms_batch *b, size_t len) {
    if (!b->bounded) return 1;
    if (len > b->e->max_response - b->budget) return 0;
    b->budget += len;
    return 1;
}

static int grow_results(ms_batch *b) {
    if (b->n < b->cap) return 1;
    size_t cap = b->cap ? b->cap * 2 : 16;
    batch_result *res = realloc(b->res, cap * sizeof *res);
    if (res == NULL) return 0;
    b->res = res;
    b->cap = cap;
    return 1;
}

/* Records the result written to out since off (good: writing it succeeded). */
static void record(ms_batch *b, size_t off, int good, int ok, int change) {
    if (!good) b->out.len = off;  /* half a text: leave the slot empty (see response) */
    if (!grow_results(b)) {
        b->oom = 1;
        b->out.len = off;
        return;
    }
    b->res[b->n++] = (batch_result){ off, b->out.len - off, (unsigned char)(good && ok),
                                     (unsigned char)(good && ok ? change : MS_CHANGE_NONE),
                                     (unsigned char)(change != MS_CHANGE_NONE && b->cmd.list) };
}

static const char *topic_of(const ms_cmd *c) {
    return c->list ? "list" : "record";
}

/* The command's result is a failure with event and b->msg. */
static void fail(ms_batch *b, const char *event) {
    size_t off = b->out.len;
    int good = b->msg.len > 0 &&
               put_failure(&b->out, topic_of(&b->cmd), event, b->msg.data, b->msg.len, 0, 0, NULL, 0);
    record(b, off, good, 0, 0);
}

static void succeed(ms_batch *b, int change) {
    size_t off = b->out.len;
    record(b, off, put(&b->out, OK), 1, change);
}

/* "<what>: the storage could not save it (<err>)." in b->msg */
static int storage_msg(ms_batch *b, int del, const char *err) {
    b->msg.len = 0;
    return put(&b->msg, del ? "Record delete failed" : "Record update failed") &&
           put(&b->msg, ": the storage could not save it (") && put(&b->msg, err) && put(&b->msg, ").");
}

static void finish(ms_batch *b) {
    ms_engine_done_fn done = b->done;
    b->done = NULL;
    if (done) done(b->done_ud);
}

/* ---- read, head ---- */

static void load_failure(ms_batch *b, const char *what, const char *event, const char *err) {
    const ms_cmd *c = &b->cmd;
    b->msg.len = 0;
    if (!(put(&b->msg, what) && ms_jbuf_put(&b->msg, c->name, c->nlen) && put(&b->msg, "\" could not be loaded: ") &&
          put(&b->msg, err ? err : "storage error") && put(&b->msg, ".")))
        b->msg.len = 0;
    fail(b, event);
}

static void read_got(ms_batch *b, int status, long long version, const char *text, size_t len, const char *err) {
    const ms_cmd *c = &b->cmd;
    if (status == MS_REC_FAILED) {
        load_failure(b, "Record read failed. Record \"", "RECORD_LOAD_ERROR", err);
    } else if (status == MS_REC_MISSING) {
        if (!msg3(b, "Record read failed. Record \"", c->name, c->nlen, "\" could not be found.")) b->msg.len = 0;
        fail(b, "RECORD_NOT_FOUND");
    } else if (!fits(b, len)) {
        char tail[96];
        snprintf(tail, sizeof tail, "\" does not fit in this response (maxResponseSize is %zu bytes).",
                 b->e->max_response);
        if (!msg3(b, "Record read failed. Record \"", c->name, c->nlen, tail)) b->msg.len = 0;
        fail(b, "RECORD_LOAD_ERROR");
    } else {
        char num[64];
        snprintf(num, sizeof num, "{\"success\":true,\"version\":%lld,\"data\":", version);
        size_t off = b->out.len;
        record(b, off, put(&b->out, num) && ms_jbuf_put(&b->out, text, len) && put(&b->out, "}"), 1, 0);
    }
}

static void head_got(ms_batch *b, int status, long long version, const char *text, size_t len, const char *err) {
    if (status == MS_REC_FAILED) {
        load_failure(b, "Record read failed. Record \"", "RECORD_LOAD_ERROR", err);
        return;
    }
    char num[64];
    snprintf(num, sizeof num, "{\"success\":true,\"version\":%lld}", status == MS_REC_OK ? version : -1LL);
    size_t off = b->out.len;
    record(b, off, put(&b->out, num), 1, 0);
}

/* ---- write ---- */

static void write_start(ms_batch *b);

static void write_put(void *ud, int status, const char *err) {
    ms_batch *b = ud;
    const ms_cmd *c = &b->cmd;
    if (status == MS_REC_MISSING && ++b->tries < MAX_TRIES) {
        write_start(b);  /* someone else wrote first: decide again */
        return;
    }
    if (status == MS_REC_OK) {
        changed(b->e, c->name, c->nlen, b->next, b->wtext, b->wlen, c->origin);
        succeed(b, MS_CHANGE_WRITE);
    } else if (status == MS_REC_MISSING) {
        if (!msg3(b, "Record update failed. Record \"", c->name, c->nlen, "\" is being changed by others."))
            b->msg.len = 0;
        fail(b, "RECORD_UPDATE_ERROR");
    } else {
        if (!storage_msg(b, 0, err)) b->msg.len = 0;
        fail(b, "RECORD_UPDATE_ERROR");
    }
    finish(b);
}

/* VERSION_EXISTS or INVALID_VERSION, with the stored state */
static void version_failure(ms_batch *b, long long cur, const char *text, size_t len) {
    const ms_cmd *c = &b->cmd;
    int exists = c->version <= cur;
    char num[24];
    snprintf(num, sizeof num, "%lld", exists ? cur : c->version);
    b->msg.len = 0;
    int good = put(&b->msg, "Record update failed. Version ") && put(&b->msg, num) &&
               put(&b->msg, exists ? " exists for record \"" : " is not valid for record \"") &&
               ms_jbuf_put(&b->msg, c->name, c->nlen) && put(&b->msg, "\".");
    if (text && !fits(b, len)) text = NULL;  /* currentData: null */
    size_t off = b->out.len;
    good = good && put_failure(&b->out, topic_of(c), exists ? "VERSION_EXISTS" : "INVALID_VERSION", b->msg.data,
                               b->msg.len, 1, cur, text, len);
    record(b, off, good, 0, 0);
}

int ms_engine_whole_data(const char *data, size_t len) {
    size_t i = 0;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r')) i++;
    return i < len && (data[i] == '{' || data[i] == '[');
}

/* The text to write (b->wtext) for a command whose version check passed;
 * 0 after recording the failure when there is none. */
static int write_text(ms_batch *b, const char *cur, size_t len) {
    const ms_cmd *c = &b->cmd;
    int how = MS_PATCH_WHOLE;
    if (c->patch) {
        b->text.len = 0;
        b->msg.len = 0;
        how = c->patch->apply(c->patch->ud, cur, len, &b->text, &b->msg);
    }
    if (how == MS_PATCH_OK) {
        b->wtext = b->text.data ? b->text.data : "";
        b->wlen = b->text.len;
        return 1;
    }
    if (how == MS_PATCH_CORRUPT) {
        if (!msg3(b, "Record update failed. Record \"", c->name, c->nlen, "\" is corrupt.")) b->msg.len = 0;
        fail(b, "RECORD_UPDATE_ERROR");
        return 0;
    }
    if (how == MS_PATCH_WHOLE) {
        if (c->data == NULL && c->data_err) {
            b->msg.len = 0;
            if (!put(&b->msg, c->data_err)) b->msg.len = 0;
        } else if (c->data == NULL || !ms_engine_whole_data(c->data, c->dlen)) {
            if (!msg3(b, "Record update failed. The data of record \"", c->name, c->nlen,
                      "\" must be an object or an array."))
                b->msg.len = 0;
        } else {
            b->wtext = c->data;
            b->wlen = c->dlen;
            return 1;
        }
    }
    fail(b, "INVALID_MESSAGE_DATA");  /* the patch's message, or the one above */
    return 0;
}

static void write_got(void *ud, int status, long long version, const char *text, size_t len, const char *err) {
    ms_batch *b = ud;
    const ms_cmd *c = &b->cmd;
    if (status == MS_REC_FAILED) {
        load_failure(b, "Record update failed. Record \"", "RECORD_UPDATE_ERROR", err);
        finish(b);
        return;
    }
    int found = status == MS_REC_OK;
    long long cur = found ? version : 0;
    /* the next version wraps at the int64 limit, as Lua integers do */
    b->next = (long long)((unsigned long long)cur + 1);
    if (c->has_version && (c->version <= cur || c->version > b->next)) {
        version_failure(b, cur, found ? text : NULL, len);
        finish(b);
        return;
    }
    if (!write_text(b, found ? text : NULL, len)) {
        finish(b);
        return;
    }
    const ms_recstore *s = store_for(b->e, c->name, c->nlen);
    s->ops->put(s->self, c->name, c->nlen, found ? cur : -1, b->next, b->wtext, b->wlen, write_put, b);
}

static void write_start(ms_batch *b) {
    ms_engine_get(b->e, b->cmd.name, b->cmd.nlen, write_got, b);
}

/* ---- delete, create, notify ---- */

static void delete_done(void *ud, int status, const char *err) {
    ms_batch *b = ud;
    const ms_cmd *c = &b->cmd;
    if (status == MS_REC_OK) {
        changed(b->e, c->name, c->nlen, -1, NULL, 0, c->origin);
        succeed(b, MS_CHANGE_DELETE);
    } else {
        if (!storage_msg(b, 1, err)) b->msg.len = 0;
        fail(b, "RECORD_DELETE_ERROR");
    }
    finish(b);
}

static void delete_got(ms_batch *b, int status) {
    const ms_cmd *c = &b->cmd;
    if (status == MS_REC_MISSING) {
        succeed(b, MS_CHANGE_DELETE);  /* nothing to remove; a failing store still reports at the flush */
        finish(b);
        return;
    }
    /* found, or unreadable: a corrupt entry is removed too */
    const ms_recstore *s = store_for(b->e, c->name, c->nlen);
    s->ops->remove(s->self, c->name, c->nlen, delete_done, b);
}

static void create_done(void *ud, int status, const char *err) {
    ms_batch *b = ud;
    const ms_cmd *c = &b->cmd;
    if (status == MS_REC_OK) changed(b->e, c->name, c->nlen, 0, "{}", 2, c->origin);
    succeed(b, MS_CHANGE_NONE);
    finish(b);
}

/* A realtime subscription creates a missing record at version 0, empty. */
static void create_got(ms_batch *b, int status) {
    const ms_cmd *c = &b->cmd;
    if (status != MS_REC_MISSING) {
        succeed(b, MS_CHANGE_NONE);
        finish(b);
        return;
    }
    const ms_recstore *s = store_for(b->e, c->name, c->nlen);
    s->ops->put(s->self, c->name, c->nlen, -1, 0, "{}", 2, create_done, b);
}

static void notify_next(ms_batch *b);

/* notify: subscribers hear the current state of each record, or that it
 * was deleted when it is no longer stored (as deepstream's notify) */
char ms_engine_notified[2];

static void notify_got(void *ud, int status, long long version, const char *text, size_t len, const char *err) {
    ms_batch *b = ud;
    const ms_name *n = &b->cmd.names[b->at];
    void *origin = &ms_engine_notified[store_for(b->e, n->s, n->len) == &b->e->memory];
    if (status == MS_REC_OK) changed(b->e, n->s, n->len, version, text, len, origin);
    else if (status == MS_REC_MISSING) changed(b->e, n->s, n->len, -1, NULL, 0, origin);
    b->at++;
    if (b->looping) b->answered = 1;  /* notify_next's loop goes on */
    else notify_next(b);              /* a store that answered later */
}

/* A loop, not a recursion: a store that answers at once would otherwise
 * nest one call per name (a 1 MiB body holds 200 000 of them). */
static void notify_next(ms_batch *b) {
    while (b->at < b->cmd.nnames) {
        const ms_name *n = &b->cmd.names[b->at];
        b->looping = 1;
        b->answered = 0;
        ms_engine_get(b->e, n->s, n->len, notify_got, b);
        b->looping = 0;
        if (!b->answered) return;  /* notify_got goes on */
    }
    succeed(b, MS_CHANGE_NONE);
    finish(b);
}

static void cmd_got(void *ud, int status, long long version, const char *text, size_t len, const char *err) {
    ms_batch *b = ud;
    switch (b->cmd.op) {
    case MS_OP_READ: read_got(b, status, version, text, len, err); break;
    case MS_OP_HEAD: head_got(b, status, version, text, len, err); break;
    case MS_OP_DELETE: delete_got(b, status); return;
    case MS_OP_CREATE: create_got(b, status); return;
    }
    finish(b);
}

void ms_engine_run(ms_engine *e, ms_batch *b, const ms_cmd *c, ms_engine_done_fn done, void *ud) {
    b->cmd = *c;
    b->done = done;
    b->done_ud = ud;
    b->at = 0;
    b->tries = 0;
    switch (c->op) {
    case MS_OP_WRITE:
        write_start(b);
        break;
    case MS_OP_NOTIFY:
        notify_next(b);
        break;
    default:
        ms_engine_get(e, c->name, c->nlen, cmd_got, b);
    }
}

/* ---- batches ---- */

ms_batch *ms_batch_new(ms_engine *e, int bounded) {
    ms_batch *b = calloc(1, sizeof *b);
    if (b == NULL) return NULL;
    b->e = e;
    b->bounded = bounded;
    return b;
}

void ms_batch_free(ms_batch *b) {
    if (b == NULL) return;
    ms_jbuf_free(&b->out);
    ms_jbuf_free(&b->msg);
    ms_jbuf_free(&b->text);
    free(b->res);
    free(b);
}

/* Memory a batch keeps for the next request. */
#define BATCH_KEEP (1024 * 1024)

void ms_batch_reset(ms_batch *b) {
    if (b->out.cap > BATCH_KEEP) ms_jbuf_free(&b->out);
    if (b->text.cap > BATCH_KEEP) ms_jbuf_free(&b->text);
    b->out.len = 0;
    b->n = 0;
    b->budget = 0;
    b->oom = 0;
}

size_t ms_batch_count(const ms_batch *b) {
    return b->n;
}

const char *ms_batch_result(const ms_batch *b, size_t i, size_t *len, int *ok) {
    *len = b->res[i].len;
    *ok = b->res[i].ok;
    return b->out.data ? b->out.data + b->res[i].off : "";
}

int ms_batch_add(ms_batch *b, int ok, const char *text, size_t len) {
    size_t off = b->out.len;
    int good = ms_jbuf_put(&b->out, text, len);
    record(b, off, good, ok, 0);
    return good;
}

int ms_batch_ok(ms_batch *b) {
    return ms_batch_add(b, 1, OK, sizeof OK - 1);
}

int ms_batch_fail(ms_batch *b, const char *topic, const char *event, const char *msg, size_t mlen) {
    size_t off = b->out.len;
    int good = put_failure(&b->out, topic, event, msg, mlen, 0, 0, NULL, 0);
    record(b, off, good, 0, 0);
    return good;
}

/* A result whose text could not be kept (out of memory). */
static const char LOST[] = "{\"success\":false,\"error\":\"out of memory\",\"errorTopic\":\"record\","
                           "\"errorEvent\":\"RECORD_UPDATE_ERROR\"}";

const char ms_batch_oom[] = "{\"result\":\"FAILURE\",\"body\":[]}";

int ms_batch_response(ms_batch *b, ms_jbuf *o, const char *sync_err) {
    if (b->oom) return 0;
    size_t ok = 0;
    for (size_t i = 0; i < b->n; i++) ok += b->res[i].ok && !(sync_err && b->res[i].change);
    const char *overall = ok == b->n ? "SUCCESS" : ok == 0 ? "FAILURE" : "PARTIAL_SUCCESS";
    if (!put(o, "{\"result\":\"") || !put(o, overall) || !put(o, "\",\"body\":[")) return 0;
    for (size_t i = 0; i < b->n; i++) {
        const batch_result *r = &b->res[i];
        if (i > 0 && !put(o, ",")) return 0;
        if (sync_err && r->change) {
            /* the batch's writes did not reach the disk */
            int del = r->change == MS_CHANGE_DELETE;
            const char *event = del ? "RECORD_DELETE_ERROR" : "RECORD_UPDATE_ERROR";
            if (!storage_msg(b, del, sync_err) ||
                !put_failure(o, r->list ? "list" : "record", event, b->msg.data, b->msg.len, 0, 0, NULL, 0))
                return 0;
        } else if (!(r->len ? ms_jbuf_put(o, b->out.data + r->off, r->len) : put(o, LOST))) {
            return 0;
        }
    }
    return put(o, "]}");
}
