/* fastpath: POST /api batches answered without entering Lua.
 *
 * Why: a single record read costs libmicrohttpd about 10 us here, and the Lua
 * path (routing, validation, dispatch, JSON -> Lua tables -> JSON) about 17 us
 * more (bench/RESULTS.md). Most requests need no policy decision at all when
 * auth is open, no permissions are configured and every origin is allowed,
 * so for those the body is parsed and validated straight from yajl's
 * callbacks into a compact command list, run against the shared records
 * (csrc/records.c) and answered with JSON written in C.
 *
 * What it takes: requests without token/authData whose commands are all
 * event emit, record read, head, delete, and record write without a path
 * (version absent, -1 or an integer). Anything else, including every invalid
 * request, is declined before anything runs, and the Lua path answers it as
 * if the fast path did not exist: error texts live in one place
 * (validate.lua), and both paths give the same answers
 * (spec/26-fastpath_spec.lua compares them over thousands of requests).
 *
 * Lua keeps a say: emits call emit_hook(name, data_text) while Lua reports
 * someone may listen (fp:watch_emits), and every change calls
 * change_hook(name, version, text) (realtime subscribers), as records.lua's
 * put and remove do. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_parse.h>

#include "core.h"
#include "fastpath.h"
#include "json.h"
#include "records.h"
#include "metrics.h"

#define FAST_MT "moonstream.FastPath"
#define UV_RECORDS 1

/* A data object with more keys than this is left to the Lua path (the
 * duplicate-key check below is quadratic). */
#define FAST_MAX_KEYS 64

enum { K_NONE, K_EMIT, K_READ, K_HEAD, K_WRITE, K_DELETE };
enum { T_NONE, T_EVENT, T_RECORD };

/* fields of a command */
enum {
    F_TOPIC = 1, F_ACTION = 2, F_EVENTNAME = 4, F_RECORDNAME = 8, F_DATA = 16, F_VERSION = 32
};

typedef struct fast_cmd {
    int topic, kind;
    unsigned seen;
    size_t name_off, name_len;  /* in f->names, raw bytes */
    size_t data_off, data_len;  /* in f->data, canonical JSON */
    size_t raw_off, raw_len;    /* the data as the client wrote it, in the body */
    long long version;
} fast_cmd;

/* Where the parse is. Levels: 1 = the top object, 2 = the body array,
 * 3 = a command object, deeper = inside a command's data. */
typedef struct fast_parse {
    int level;
    int decline;
    int top_key;        /* level 1: the value expected (0 skip, 1 body) */
    int skip_level;     /* > 0: skipping a value until back at this level */
    int body_seen;
    unsigned field;     /* level 3: the field whose value comes next */
    int data_level;     /* > 0: capturing data that opened at this level */
    /* per data level: no comma before the next value; index of its first key */
    unsigned char first[MS_JSON_MAX_DEPTH + 2];
    size_t keys_from[MS_JSON_MAX_DEPTH + 2];
} fast_parse;

typedef struct key_ref {
    size_t off, len;
} key_ref;

/* One result of a batch, as JSON text in f->out (or a job's copy). */
typedef struct fast_result {
    size_t off, len;
    int ok;
    int change;         /* 1 write, 2 delete: becomes a storage error if the sync fails */
} fast_result;

struct ms_fast {
    lua_State *L;
    ms_records *records;
    int enabled, watch_emits;
    int emit_ref, change_ref;
    size_t max_response;         /* record data one answer may carry (dispatch.lua's bound) */
    size_t budget;               /* what this batch's answer carries so far */
    char *api_path;
    char **exclusions;
    size_t nexclusions;
    ms_json_pool *pool;
    fast_parse p;
    fast_cmd *cmds;
    size_t ncmds, capcmds;
    key_ref *keys;
    size_t nkeys, capkeys;
    ms_jbuf names, data, out, msg, resp;
    yajl_handle h;               /* during a parse */
    const char *body;            /* the request's, during a parse and its run */
    size_t body_len;
    fast_result *results;
    size_t capresults;
};

/* A batch waiting for its group commit. */
typedef struct fast_job {
    ms_http_waiter *waiter;
    char *text;                  /* the results' text */
    fast_result *results;
    size_t n;
} fast_job;

/* ---- parsing (yajl callbacks) ---- */

static int decline(ms_fast *f) {
    f->p.decline = 1;
    return 0;  /* stops yajl */
}

static int data_comma(ms_fast *f) {
    fast_parse *p = &f->p;
    if (p->first[p->level]) {
        p->first[p->level] = 0;
        return 1;
    }
    return ms_jbuf_put(&f->data, ",", 1);
}

/* Opens capturing a command's data: the value starts here. */
static void data_begin(ms_fast *f) {
    fast_cmd *c = &f->cmds[f->ncmds - 1];
    c->data_off = f->data.len;
}

static void data_end(ms_fast *f) {
    fast_cmd *c = &f->cmds[f->ncmds - 1];
    c->data_len = f->data.len - c->data_off;
    c->raw_len = yajl_get_bytes_consumed(f->h) - c->raw_off;
    f->p.field = 0;
}

/* Appends a scalar to the data, canonical (0: out of memory or a number
 * json_decode refuses). */
static int put_scalar(ms_fast *f, const char *text, size_t len, int is_string, int is_number) {
    return is_string ? ms_jbuf_string(&f->data, text, len)
         : is_number ? ms_jbuf_number(&f->data, text, len)
         : ms_jbuf_put(&f->data, text, len);
}

/* A scalar anywhere: skipped, captured as data, or a command field. Returns
 * whether to go on. `text` is written to data when it is data. */
static int on_scalar(ms_fast *f, const char *text, size_t len, int is_string, int is_number) {
    fast_parse *p = &f->p;
    if (p->decline) return 0;
    if (p->skip_level || (p->level == 1 && p->top_key != 1)) {
        /* an ignored value, but json_decode refuses numbers out of range */
        f->msg.len = 0;
        return !is_number || ms_jbuf_number(&f->msg, text, len) ? 1 : decline(f);
    }
    if (p->data_level) {
        if (!data_comma(f)) return decline(f);
        return put_scalar(f, text, len, is_string, is_number) ? 1 : decline(f);
    }
    switch (p->level) {
    case 1:  /* body must be an array */
        return decline(f);
    case 3: {
        fast_cmd *c = &f->cmds[f->ncmds - 1];
        unsigned field = p->field;
        p->field = 0;
        if (field == F_DATA) {
            c->data_off = f->data.len;
            if (!put_scalar(f, text, len, is_string, is_number)) return decline(f);
            c->data_len = f->data.len - c->data_off;
            c->raw_len = yajl_get_bytes_consumed(f->h) - c->raw_off;
            return 1;
        }
        if (field == F_VERSION) {
            if (!is_number || !ms_json_integer(text, len, &c->version) || c->version < -1) return decline(f);
            return 1;
        }
        if (!is_string || len == 0) return decline(f);
        if (field == F_TOPIC) {
            if (len == 5 && memcmp(text, "event", 5) == 0) c->topic = T_EVENT;
            else if (len == 6 && memcmp(text, "record", 6) == 0) c->topic = T_RECORD;
            else return decline(f);
            return 1;
        }
        if (field == F_ACTION) {
            if (len == 4 && memcmp(text, "emit", 4) == 0) c->kind = K_EMIT;
            else if (len == 4 && memcmp(text, "read", 4) == 0) c->kind = K_READ;
            else if (len == 4 && memcmp(text, "head", 4) == 0) c->kind = K_HEAD;
            else if (len == 5 && memcmp(text, "write", 5) == 0) c->kind = K_WRITE;
            else if (len == 6 && memcmp(text, "delete", 6) == 0) c->kind = K_DELETE;
            else return decline(f);
            return 1;
        }
        /* eventName / recordName */
        c->name_off = f->names.len;
        c->name_len = len;
        return ms_jbuf_put(&f->names, text, len) ? 1 : decline(f);
    }
    default:  /* a scalar in the body array (level 2) or no container yet */
        return decline(f);
    }
}

static int on_null(void *ud) {
    return on_scalar(ud, "null", 4, 0, 0);
}

static int on_boolean(void *ud, int v) {
    return v ? on_scalar(ud, "true", 4, 0, 0) : on_scalar(ud, "false", 5, 0, 0);
}

static int on_number(void *ud, const char *s, size_t len) {
    return on_scalar(ud, s, len, 0, 1);
}

static int on_string(void *ud, const unsigned char *s, size_t len) {
    return on_scalar(ud, (const char *)s, len, 1, 0);
}

static int on_map_key(void *ud, const unsigned char *s, size_t len) {
    ms_fast *f = ud;
    fast_parse *p = &f->p;
    const char *k = (const char *)s;
    if (p->decline) return 0;
    if (p->skip_level) return 1;
    if (p->data_level) {
        if (!data_comma(f)) return decline(f);
        size_t off = f->data.len;
        if (!ms_jbuf_string(&f->data, k, len) || !ms_jbuf_put(&f->data, ":", 1)) return decline(f);
        size_t klen = f->data.len - off - 1;
        /* a duplicate key: json_decode keeps the last value, the text here
         * would keep both. Rare; leave it to Lua. */
        size_t from = p->keys_from[p->level];
        if (f->nkeys - from >= FAST_MAX_KEYS) return decline(f);
        for (size_t i = from; i < f->nkeys; i++) {
            if (f->keys[i].len == klen && memcmp(f->data.data + f->keys[i].off, f->data.data + off, klen) == 0)
                return decline(f);
        }
        if (f->nkeys == f->capkeys) {
            size_t cap = f->capkeys ? f->capkeys * 2 : 64;
            key_ref *keys = realloc(f->keys, cap * sizeof *keys);
            if (keys == NULL) return decline(f);
            f->keys = keys;
            f->capkeys = cap;
        }
        f->keys[f->nkeys++] = (key_ref){ off, klen };
        p->first[p->level] = 1;  /* the value follows the colon: no comma */
        return 1;
    }
    if (p->level == 1) {
        if (len == 4 && memcmp(k, "body", 4) == 0) {
            if (p->body_seen) return decline(f);  /* json_decode keeps the last one */
            p->body_seen = 1;
            p->top_key = 1;
            return 1;
        }
        if ((len == 5 && memcmp(k, "token", 5) == 0) || (len == 8 && memcmp(k, "authData", 8) == 0))
            return decline(f);  /* credentials: auth runs in Lua */
        p->top_key = 0;  /* unknown top-level keys are ignored */
        return 1;
    }
    if (p->level == 3) {
        fast_cmd *c = &f->cmds[f->ncmds - 1];
        unsigned field;
        if (len == 5 && memcmp(k, "topic", 5) == 0) field = F_TOPIC;
        else if (len == 6 && memcmp(k, "action", 6) == 0) field = F_ACTION;
        else if (len == 9 && memcmp(k, "eventName", 9) == 0) field = F_EVENTNAME;
        else if (len == 10 && memcmp(k, "recordName", 10) == 0) field = F_RECORDNAME;
        else if (len == 4 && memcmp(k, "data", 4) == 0) field = F_DATA;
        else if (len == 7 && memcmp(k, "version", 7) == 0) field = F_VERSION;
        else return decline(f);  /* path, other fields, unknown ones: Lua */
        if (c->seen & field) return decline(f);
        c->seen |= field;
        p->field = field;
        if (field == F_DATA) {
            /* the value starts after the key's closing quote, blanks and ':' */
            size_t at = yajl_get_bytes_consumed(f->h);
            while (at < f->body_len && (f->body[at] == ' ' || f->body[at] == '\t' || f->body[at] == '\n' ||
                                        f->body[at] == '\r' || f->body[at] == ':'))
                at++;
            c->raw_off = at;
        }
        return 1;
    }
    return decline(f);
}

static int on_open(ms_fast *f, int is_map) {
    fast_parse *p = &f->p;
    if (p->decline) return 0;
    /* json_decode refuses nesting beyond its limit: leave those to Lua */
    if (p->level + 1 >= MS_JSON_MAX_DEPTH) return decline(f);
    if (p->skip_level) {
        p->level++;
        return 1;
    }
    if (p->data_level) {
        if (!data_comma(f) || !ms_jbuf_put(&f->data, is_map ? "{" : "[", 1)) return decline(f);
        p->level++;
        p->first[p->level] = 1;
        p->keys_from[p->level] = f->nkeys;
        return 1;
    }
    switch (p->level) {
    case 0:  /* the top level must be an object */
        if (!is_map) return decline(f);
        p->level = 1;
        return 1;
    case 1:
        if (p->top_key == 1) {
            if (is_map) return decline(f);
            p->level = 2;
            return 1;
        }
        p->skip_level = 1;  /* an ignored key's container */
        p->level++;
        return 1;
    case 2: {  /* a command */
        if (!is_map) return decline(f);
        if (f->ncmds == f->capcmds) {
            size_t cap = f->capcmds ? f->capcmds * 2 : 16;
            fast_cmd *cmds = realloc(f->cmds, cap * sizeof *cmds);
            if (cmds == NULL) return decline(f);
            f->cmds = cmds;
            f->capcmds = cap;
        }
        memset(&f->cmds[f->ncmds++], 0, sizeof *f->cmds);
        p->level = 3;
        return 1;
    }
    case 3:  /* a container value: only data may be one */
        if (p->field != F_DATA) return decline(f);
        data_begin(f);
        if (!ms_jbuf_put(&f->data, is_map ? "{" : "[", 1)) return decline(f);
        p->data_level = 4;
        p->level = 4;
        p->first[4] = 1;
        p->keys_from[4] = f->nkeys;
        return 1;
    default:
        return decline(f);
    }
}

static int on_close(ms_fast *f, int is_map) {
    fast_parse *p = &f->p;
    if (p->decline) return 0;
    if (p->skip_level) {
        p->level--;
        if (p->level == p->skip_level) p->skip_level = 0;
        return 1;
    }
    if (p->data_level) {
        if (!ms_jbuf_put(&f->data, is_map ? "}" : "]", 1)) return decline(f);
        f->nkeys = p->keys_from[p->level];
        p->level--;
        if (p->level < p->data_level) {
            p->data_level = 0;
            data_end(f);
        }
        return 1;
    }
    p->level--;
    return 1;
}

static int on_start_map(void *ud) {
    return on_open(ud, 1);
}

static int on_end_map(void *ud) {
    return on_close(ud, 1);
}

static int on_start_array(void *ud) {
    return on_open(ud, 0);
}

static int on_end_array(void *ud) {
    return on_close(ud, 0);
}

static const yajl_callbacks fast_callbacks = {
    on_null, on_boolean, NULL, NULL, on_number, on_string,
    on_start_map, on_map_key, on_end_map, on_start_array, on_end_array
};

/* Fields each command must have (besides topic and action) and may have. */
static int command_ok(ms_fast *f, const fast_cmd *c) {
    unsigned s = c->seen & ~(unsigned)(F_TOPIC | F_ACTION);
    if (!(c->seen & F_TOPIC) || !(c->seen & F_ACTION)) return 0;
    switch (c->kind) {
    case K_EMIT:
        if (c->topic != T_EVENT || !(s & F_EVENTNAME) || (s & ~(unsigned)(F_EVENTNAME | F_DATA))) return 0;
        break;
    case K_READ: case K_HEAD: case K_DELETE:
        if (c->topic != T_RECORD || s != F_RECORDNAME) return 0;
        break;
    case K_WRITE: {
        if (c->topic != T_RECORD || !(s & F_RECORDNAME) || !(s & F_DATA) ||
            (s & ~(unsigned)(F_RECORDNAME | F_DATA | F_VERSION)))
            return 0;
        /* the data of a whole-record write is an object or an array */
        char first = f->data.data[c->data_off];
        if (first != '{' && first != '[') return 0;
        break;
    }
    default:
        return 0;
    }
    if (c->topic == T_RECORD) {
        /* names kept in memory only (storageExclusionPrefixes): Lua */
        const char *name = f->names.data + c->name_off;
        for (size_t i = 0; i < f->nexclusions; i++) {
            size_t plen = strlen(f->exclusions[i]);
            if (plen <= c->name_len && memcmp(name, f->exclusions[i], plen) == 0) return 0;
        }
    }
    return 1;
}

/* Parses and validates body into f->cmds. 1 when every command is for the
 * fast path. */
static int parse(ms_fast *f, const char *body, size_t len) {
    memset(&f->p, 0, sizeof f->p);
    f->ncmds = f->nkeys = 0;
    f->names.len = f->data.len = 0;
    if (len == 0 || !ms_json_strict(body, len)) return 0;
    /* a handle per parse (yajl has no reset), its blocks from the pool */
    yajl_alloc_funcs funcs;
    ms_json_pool_funcs(f->pool, &funcs);
    yajl_handle h = yajl_alloc(&fast_callbacks, &funcs, f);
    if (h == NULL) return 0;
    yajl_config(h, yajl_dont_validate_strings, 1);  /* ms_json_strict checked UTF-8 */
    f->h = h;
    f->body = body;
    f->body_len = len;
    yajl_status st = yajl_parse(h, (const unsigned char *)body, len);
    if (st == yajl_status_ok) st = yajl_complete_parse(h);
    yajl_free(h);
    f->h = NULL;
    if (st != yajl_status_ok || f->p.decline || !f->p.body_seen || f->ncmds == 0) return 0;
    /* commands end at level 2: each closed command is checked here */
    for (size_t i = 0; i < f->ncmds; i++) {
        if (!command_ok(f, &f->cmds[i])) return 0;
    }
    return 1;
}

/* ---- running ---- */

/* Appends {"success":false,"error":message,"errorTopic":"record","errorEvent":event
 * [,"currentVersion":V,"currentData":D]} to f->out. */
static int put_failure(ms_jbuf *o, const char *event, const char *message, size_t mlen,
                       const ms_record *current) {
    if (!ms_jbuf_put(o, "{\"success\":false,\"error\":", 25) || !ms_jbuf_string(o, message, mlen) ||
        !ms_jbuf_put(o, ",\"errorTopic\":\"record\",\"errorEvent\":\"", 37) ||
        !ms_jbuf_put(o, event, strlen(event)) || !ms_jbuf_put(o, "\"", 1))
        return 0;
    if (current) {
        char num[80];  /* 35 characters and at most 20 digits */
        int n = snprintf(num, sizeof num, ",\"currentVersion\":%lld,\"currentData\":", current->version);
        if (!ms_jbuf_put(o, num, (size_t)n)) return 0;
        if (current->text ? !ms_jbuf_put(o, current->text, current->len) : !ms_jbuf_put(o, "null", 4)) return 0;
    }
    return ms_jbuf_put(o, "}", 1);
}

/* f->msg = a .. name .. b [.. c]: an error text around a record name. */
static int build_msg(ms_fast *f, const char *a, const char *name, size_t nlen, const char *b,
                     const char *c) {
    f->msg.len = 0;
    return ms_jbuf_put(&f->msg, a, strlen(a)) && ms_jbuf_put(&f->msg, name, nlen) &&
           ms_jbuf_put(&f->msg, b, strlen(b)) && (c == NULL || ms_jbuf_put(&f->msg, c, strlen(c)));
}

static int put_storage_failure(ms_fast *f, const char *what, const char *event, const char *name,
                               size_t nlen, const char *err) {
    char *pub = ms_records_public_error(err ? err : "storage error");
    int ok = build_msg(f, what, name, nlen, "\" could not be loaded: ", pub ? pub : "storage error") &&
             ms_jbuf_put(&f->msg, ".", 1) && put_failure(&f->out, event, f->msg.data, f->msg.len, NULL);
    free(pub);
    return ok;
}

/* Whether len more bytes of record data fit in this batch's answer; counts
 * them if so. */
static int fits(ms_fast *f, size_t len) {
    if (len > f->max_response - f->budget) return 0;
    f->budget += len;
    return 1;
}

static void call_change_hook(ms_fast *f, const char *name, size_t nlen, long long version,
                             const char *text, size_t tlen) {
    lua_State *L = f->L;
    if (f->change_ref == LUA_NOREF || !lua_checkstack(L, 4)) return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, f->change_ref);
    lua_pushlstring(L, name, nlen);
    if (text) {
        lua_pushinteger(L, (lua_Integer)version);
        lua_pushlstring(L, text, tlen);
        ms_pcall(L, 3, 0);
    } else {
        ms_pcall(L, 1, 0);
    }
}

/* The commands this path answers, as moonstream_commands_total labels them. */
static void metrics_count_command(const fast_cmd *c, int ok) {
    static const int ACTION[] = { [K_EMIT] = MS_ACTION_EMIT, [K_READ] = MS_ACTION_READ, [K_HEAD] = MS_ACTION_HEAD,
                                  [K_WRITE] = MS_ACTION_WRITE, [K_DELETE] = MS_ACTION_DELETE };
    ms_metrics_command(c->topic == T_EVENT ? MS_TOPIC_EVENT : MS_TOPIC_RECORD, ACTION[c->kind], ok);
}

/* Runs command c, appending its result to f->out. 0 when out of memory. */
static int run_command(ms_fast *f, const fast_cmd *c, fast_result *res) {
    lua_State *L = f->L;
    ms_jbuf *o = &f->out;
    const char *name = f->names.data + c->name_off;
    size_t nlen = c->name_len;
    static const char OK[] = "{\"success\":true}";
    res->ok = 1;
    res->change = 0;
    if (c->kind == K_EMIT) {
        if (f->watch_emits && f->emit_ref != LUA_NOREF && lua_checkstack(L, 4)) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, f->emit_ref);
            lua_pushlstring(L, name, nlen);
            /* the client's own text: listeners decode it as the Lua path would
             * (2.0 stays a float, which the canonical text would not keep) */
            if (c->seen & F_DATA) lua_pushlstring(L, f->body + c->raw_off, c->raw_len);
            else lua_pushnil(L);
            ms_pcall(L, 2, 0);
        }
        return ms_jbuf_put(o, OK, sizeof OK - 1);
    }
    ms_record rec;
    char *err = NULL;
    int found = ms_records_get(f->records, name, nlen, &rec, &err);
    int ok = 1;
    switch (c->kind) {
    case K_READ:
        if (found < 0) {
            res->ok = 0;
            ok = put_storage_failure(f, "Record read failed. Record \"", "RECORD_LOAD_ERROR", name, nlen, err);
        } else if (found == 0) {
            res->ok = 0;
            ok = build_msg(f, "Record read failed. Record \"", name, nlen, "\" could not be found.", NULL) &&
                 put_failure(&f->out, "RECORD_NOT_FOUND", f->msg.data, f->msg.len, NULL);
        } else if (!fits(f, rec.len)) {
            char limit[24];
            snprintf(limit, sizeof limit, "%zu", f->max_response);
            res->ok = 0;
            ok = build_msg(f, "Record read failed. Record \"", name, nlen,
                           "\" does not fit in this response (maxResponseSize is ", limit) &&
                 ms_jbuf_put(&f->msg, " bytes).", 8) && put_failure(&f->out, "RECORD_LOAD_ERROR", f->msg.data, f->msg.len, NULL);
        } else {
            char num[80];  /* 35 characters and at most 20 digits */
            int n = snprintf(num, sizeof num, "{\"success\":true,\"version\":%lld,\"data\":", rec.version);
            ok = ms_jbuf_put(o, num, (size_t)n) && ms_jbuf_put(o, rec.text, rec.len) && ms_jbuf_put(o, "}", 1);
        }
        break;
    case K_HEAD:
        if (found < 0) {
            res->ok = 0;
            ok = put_storage_failure(f, "Record read failed. Record \"", "RECORD_LOAD_ERROR", name, nlen, err);
        } else {
            char num[80];
            int n = snprintf(num, sizeof num, "{\"success\":true,\"version\":%lld}", found ? rec.version : -1LL);
            ok = ms_jbuf_put(o, num, (size_t)n);
        }
        break;
    case K_WRITE: {
        if (found < 0) {
            res->ok = 0;
            ok = put_storage_failure(f, "Record update failed. Record \"", "RECORD_UPDATE_ERROR", name, nlen, err);
            break;
        }
        long long cur = found ? rec.version : 0;
        /* the next version wraps at the int64 limit, as Lua integers do */
        long long next = (long long)((unsigned long long)cur + 1);
        int has_version = (c->seen & F_VERSION) && c->version != -1;
        if (has_version && (c->version <= cur || c->version > next)) {
            ms_record current = { cur, found ? rec.text : NULL, found ? rec.len : 0, NULL };
            if (current.text && !fits(f, current.len)) current.text = NULL;  /* currentData: null */
            char num[24];
            res->ok = 0;
            if (c->version <= cur) {
                snprintf(num, sizeof num, "%lld", cur);
                ok = build_msg(f, "Record update failed. Version ", num, strlen(num), " exists for record \"", NULL) &&
                     ms_jbuf_put(&f->msg, name, nlen) && ms_jbuf_put(&f->msg, "\".", 2) &&
                     put_failure(&f->out, "VERSION_EXISTS", f->msg.data, f->msg.len, &current);
            } else {
                snprintf(num, sizeof num, "%lld", c->version);
                ok = build_msg(f, "Record update failed. Version ", num, strlen(num), " is not valid for record \"",
                               NULL) &&
                     ms_jbuf_put(&f->msg, name, nlen) && ms_jbuf_put(&f->msg, "\".", 2) &&
                     put_failure(&f->out, "INVALID_VERSION", f->msg.data, f->msg.len, &current);
            }
            break;
        }
        ms_record_release(&rec);  /* before the put changes what it points at */
        found = 0;
        const char *text = f->data.data + c->data_off;
        if (ms_records_put(f->records, name, nlen, next, text, c->data_len) != 0) {
            ok = 0;
            break;
        }
        res->change = 1;
        call_change_hook(f, name, nlen, next, text, c->data_len);
        ok = ms_jbuf_put(o, OK, sizeof OK - 1);
        break;
    }
    case K_DELETE:
        /* a corrupt entry is removed too; a failing store reports at the flush */
        if (found != 0) {
            if (found > 0) ms_record_release(&rec);
            found = 0;
            if (ms_records_remove(f->records, name, nlen) != 0) {
                ok = 0;
                break;
            }
            call_change_hook(f, name, nlen, 0, NULL, 0);
        }
        res->change = 2;
        ok = ms_jbuf_put(o, OK, sizeof OK - 1);
        break;
    }
    if (found > 0) ms_record_release(&rec);
    free(err);
    return ok;
}

/* Writes to o the response for n results whose text is in text; a failed
 * sync (err) turns the changes into storage errors. msg: scratch. */
static int assemble(ms_jbuf *o, ms_jbuf *msg, const char *text, const fast_result *results, size_t n,
                    const char *err) {
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) ok += results[i].ok && !(err && results[i].change);
    const char *overall = ok == n ? "SUCCESS" : ok == 0 ? "FAILURE" : "PARTIAL_SUCCESS";
    if (!ms_jbuf_put(o, "{\"result\":\"", 11) || !ms_jbuf_put(o, overall, strlen(overall)) ||
        !ms_jbuf_put(o, "\",\"body\":[", 10))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && !ms_jbuf_put(o, ",", 1)) return 0;
        if (err && results[i].change) {
            int del = results[i].change == 2;
            const char *what = del ? "Record delete failed" : "Record update failed";
            msg->len = 0;
            if (!ms_jbuf_put(msg, what, strlen(what)) ||
                !ms_jbuf_put(msg, ": the storage could not save it (", 33) ||
                !ms_jbuf_put(msg, err, strlen(err)) || !ms_jbuf_put(msg, ").", 2) ||
                !put_failure(o, del ? "RECORD_DELETE_ERROR" : "RECORD_UPDATE_ERROR", msg->data, msg->len, NULL))
                return 0;
        } else if (!ms_jbuf_put(o, text + results[i].off, results[i].len)) {
            return 0;
        }
    }
    return ms_jbuf_put(o, "]}", 2);
}

static void job_free(fast_job *job) {
    free(job->text);
    free(job->results);
    free(job);
}

/* The group commit of a deferred batch returned: answer it (status 1 or 0),
 * or only free it (-1: the records went away). */
static void job_done(void *ud, int status, const char *err) {
    fast_job *job = ud;
    if (status < 0) {
        ms_http_waiter_answer(job->waiter, NULL, 0);
        job_free(job);
        return;
    }
    ms_jbuf o = { 0 }, msg = { 0 };
    if (assemble(&o, &msg, job->text, job->results, job->n, status ? NULL : err)) {
        ms_http_waiter_answer(job->waiter, o.data, o.len);
    } else {
        static const char OOM[] = "{\"result\":\"FAILURE\",\"body\":[]}";
        ms_http_waiter_answer(job->waiter, OOM, sizeof OOM - 1);
    }
    ms_jbuf_free(&o);
    ms_jbuf_free(&msg);
    job_free(job);
}

/* Runs the parsed commands; answers now or after the group commit. */
static int run(ms_fast *f, void *req, const char **out, size_t *outlen) {
    if (f->capresults < f->ncmds) {
        fast_result *r = realloc(f->results, f->ncmds * sizeof *r);
        if (r == NULL) return MS_FAST_DECLINE;
        f->results = r;
        f->capresults = f->ncmds;
    }
    f->out.len = 0;
    f->budget = 0;
    for (size_t i = 0; i < f->ncmds; i++) {
        fast_result *res = &f->results[i];
        res->off = f->out.len;
        if (!run_command(f, &f->cmds[i], res)) {
            /* out of memory half way: the rest cannot be answered honestly */
            f->out.len = res->off;
            res->ok = 0;
            res->change = 0;
            if (!put_failure(&f->out, "RECORD_UPDATE_ERROR", "out of memory", 13, NULL)) f->out.len = res->off;
        }
        res->len = f->out.len - res->off;
        metrics_count_command(&f->cmds[i], res->ok);
    }
    size_t n = f->ncmds;
    if (!ms_records_has_pending(f->records)) {
        f->resp.len = 0;
        if (!assemble(&f->resp, &f->msg, f->out.data, f->results, n, NULL)) return MS_FAST_DECLINE;
        *out = f->resp.data;
        *outlen = f->resp.len;
        return MS_FAST_DONE;
    }
    /* answered once the batch's writes (or the unsynced data it saw) are on disk */
    fast_job *job = calloc(1, sizeof *job);
    if (job == NULL) goto oom;
    job->n = n;
    job->text = malloc(f->out.len ? f->out.len : 1);
    job->results = malloc(n * sizeof *job->results);
    job->waiter = ms_http_defer(req);
    if (job->text == NULL || job->results == NULL || job->waiter == NULL) goto oom;
    memcpy(job->text, f->out.data, f->out.len);
    memcpy(job->results, f->results, n * sizeof *job->results);
    if (ms_records_after_flush(f->records, job_done, job) != 0) goto oom;
    return MS_FAST_LATER;
oom:
    if (job) {
        if (job->waiter) ms_http_waiter_answer(job->waiter, NULL, 0);
        job_free(job);
    }
    /* the commands ran: the answer must say so, not be left to Lua */
    f->resp.len = 0;
    if (!assemble(&f->resp, &f->msg, f->out.data, f->results, n, "out of memory")) {
        static const char OOM[] = "{\"result\":\"FAILURE\",\"body\":[]}";
        *out = OOM;
        *outlen = sizeof OOM - 1;
        return MS_FAST_DONE;
    }
    *out = f->resp.data;
    *outlen = f->resp.len;
    return MS_FAST_DONE;
}

/* "application/json" with optional parameters, case-insensitive, as
 * httpapi.lua's is_json_content_type. */
static int is_json(const char *ct) {
    if (ct == NULL) return 0;
    while (*ct == ' ' || (*ct >= '\t' && *ct <= '\r')) ct++;
    static const char want[] = "application/json";
    if (strncasecmp(ct, want, sizeof want - 1) != 0) return 0;
    char c = ct[sizeof want - 1];
    return c == '\0' || c == ';' || c == ' ' || (c >= '\t' && c <= '\r');
}

int ms_fast_run(ms_fast *f, void *req, const char *url, const char *content_type,
                const char *body, size_t len, const char **out, size_t *outlen) {
    if (!f->enabled || f->api_path == NULL || strcmp(url, f->api_path) != 0 || !is_json(content_type))
        return MS_FAST_DECLINE;
    if (!parse(f, body, len)) return MS_FAST_DECLINE;
    return run(f, req, out, outlen);
}

/* ---- Lua API ---- */

ms_fast *ms_fast_check(lua_State *L, int idx) {
    return luaL_checkudata(L, idx, FAST_MT);
}

static void free_exclusions(ms_fast *f) {
    for (size_t i = 0; i < f->nexclusions; i++) free(f->exclusions[i]);
    free(f->exclusions);
    f->exclusions = NULL;
    f->nexclusions = 0;
}

static int opt_ref(lua_State *L, int opts, const char *key) {
    if (lua_getfield(L, opts, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return LUA_NOREF;
    }
    luaL_checktype(L, -1, LUA_TFUNCTION);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* core.fast_path(records, opts) -> fast path, disabled until fp:enable(true)
 * opts: api_path (string), exclusions (list of record name prefixes kept in
 * memory only), max_response (bytes of record data per answer, default 16 MiB), emit_hook (function(name, data_text|nil)), change_hook
 * (function(name [, version, text]): a record changed; no version: deleted) */
static int fast_new(lua_State *L) {
    ms_records *records = ms_records_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "api_path");
    const char *api = luaL_checkstring(L, -1);
    ms_fast *f = lua_newuserdatauv(L, sizeof *f, 1);
    memset(f, 0, sizeof *f);
    f->emit_ref = f->change_ref = LUA_NOREF;
    luaL_setmetatable(L, FAST_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, UV_RECORDS);  /* the records outlive the fast path */
    int self = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    f->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    f->records = records;
    f->api_path = strdup(api);
    f->pool = ms_json_pool_new();
    if (f->api_path == NULL || f->pool == NULL) return luaL_error(L, "not enough memory");
    if (lua_getfield(L, 2, "exclusions") == LUA_TTABLE) {
        size_t n = lua_rawlen(L, -1);
        f->exclusions = calloc(n ? n : 1, sizeof *f->exclusions);
        if (f->exclusions == NULL) return luaL_error(L, "not enough memory");
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i + 1);
            const char *p = luaL_checkstring(L, -1);
            if ((f->exclusions[i] = strdup(p)) == NULL) return luaL_error(L, "not enough memory");
            f->nexclusions = i + 1;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, 2, "max_response");
    lua_Integer max_response = luaL_optinteger(L, -1, 16777216);
    luaL_argcheck(L, max_response > 0, 2, "opts.max_response must be positive");
    f->max_response = (size_t)max_response;
    lua_pop(L, 1);
    f->emit_ref = opt_ref(L, 2, "emit_hook");
    f->change_ref = opt_ref(L, 2, "change_hook");
    lua_settop(L, self);
    return 1;
}

/* fp:enable(on): Lua decides whether the configuration lets requests skip
 * it (open auth, no permissions, every origin allowed) */
static int fast_enable(lua_State *L) {
    ms_fast *f = ms_fast_check(L, 1);
    f->enabled = lua_toboolean(L, 2);
    return 0;
}

/* fp:watch_emits(on): emits call emit_hook while on (someone may listen) */
static int fast_watch_emits(lua_State *L) {
    ms_fast *f = ms_fast_check(L, 1);
    f->watch_emits = lua_toboolean(L, 2);
    return 0;
}

static int fast_gc(lua_State *L) {
    ms_fast *f = luaL_checkudata(L, 1, FAST_MT);
    ms_json_pool_delete(f->pool);
    f->pool = NULL;
    free(f->api_path);
    f->api_path = NULL;
    free_exclusions(f);
    free(f->cmds);
    free(f->keys);
    free(f->results);
    f->cmds = NULL;
    f->keys = NULL;
    f->results = NULL;
    f->capcmds = f->capkeys = f->capresults = 0;
    ms_jbuf_free(&f->names);
    ms_jbuf_free(&f->data);
    ms_jbuf_free(&f->out);
    ms_jbuf_free(&f->msg);
    ms_jbuf_free(&f->resp);
    luaL_unref(L, LUA_REGISTRYINDEX, f->emit_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, f->change_ref);
    f->emit_ref = f->change_ref = LUA_NOREF;
    f->enabled = 0;
    return 0;
}

static const luaL_Reg fast_meth[] = {
    {"enable", fast_enable},
    {"watch_emits", fast_watch_emits},
    {NULL, NULL}
};

static const luaL_Reg fast_metameth[] = {
    {"__gc", fast_gc},
    {"__index", NULL},
    {NULL, NULL}
};

void ms_fastpath_open(lua_State *L) {
    ms_createmeta(L, FAST_MT, fast_meth, fast_metameth);
    lua_pushcfunction(L, fast_new);
    lua_setfield(L, -2, "fast_path");
}
