/* fastpath: POST /api batches answered without entering Lua.
 *
 * Why: a single record read costs libmicrohttpd about 10 us here, and the Lua
 * path (routing, validation, dispatch, JSON -> Lua tables -> JSON) about 17 us
 * more (bench/RESULTS.md). Most requests need no policy decision at all when
 * auth is open, no permissions are configured and every origin is allowed,
 * so for those the body is parsed straight from yajl's callbacks into a
 * compact command list and run by the record engine (engine.c), which also
 * writes the answer.
 *
 * What it takes: requests without token/authData whose commands are all
 * event emit, record read, head, delete, and record write without a path,
 * with the fields validate.lua's table (validate.rules()) allows and requires.
 * Anything else, including every invalid request, is declined before
 * anything runs and the Lua path answers it (validate.lua owns the request
 * rules and texts). This file states no record rule: results, texts, bounds and the
 * batch's answer come from the engine, as on the Lua path.
 *
 * Emits call emit_hook(name, data_text) while Lua reports someone may listen
 * (fp:watch_emits); record changes reach Lua through the engine's listener.
 * In cluster mode (fp:publish_emits) an emit also goes to the other nodes
 * from here, published on the node's Redis commands connection without
 * entering Lua (the message's format: redis.h).
 *
 * A store that answers later (Redis, cluster mode) is never waited for: the
 * request's commands run on from the loop as each answer comes (step,
 * cmd_done), in order, while the loop serves everything else, and the
 * request is answered through a waiter (http.h) when the last is done. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_parse.h>

#include "core.h"
#include "fastpath.h"
#include "metrics.h"
#include "engine.h"
#include "http.h"
#include "json.h"
#include "redis.h"

#define FAST_MT "moonstream.FastPath"
#define UV_ENGINE 1
#define UV_REDIS 2

/* A data object with more keys than this is left to the Lua path (the
 * duplicate-key check below is quadratic). */
#define FAST_MAX_KEYS 64

enum { K_NONE, K_EMIT, K_READ, K_HEAD, K_WRITE, K_DELETE };
enum { T_NONE, T_EVENT, T_RECORD };

/* fields of a command */
enum {
    F_TOPIC = 1, F_ACTION = 2, F_EVENTNAME = 4, F_RECORDNAME = 8, F_DATA = 16, F_VERSION = 32
};

/* What validate.lua's table (validate.rules()) allows for a kind of command,
 * within what the parser captures: allowed and required fields. */
typedef struct fast_rule {
    int on;
    unsigned allowed, required;
} fast_rule;

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

struct ms_fast {
    lua_State *L;
    ms_engine *const *engine;    /* NULL inside once the engine is closed */
    ms_batch *batch;             /* the results of the request running */
    int enabled, watch_emits;
    int emit_ref;
    ms_redis *const *redis;      /* cluster mode: where emits are published, else NULL */
    char *node, *uid;            /* the node's id, the emitter's user id as JSON */
    fast_rule rules[K_DELETE + 1];
    char *api_path;
    ms_json_pool *pool;
    fast_parse p;
    fast_cmd *cmds;
    size_t ncmds, capcmds;
    key_ref *keys;
    size_t nkeys, capkeys;
    ms_jbuf names, data, resp;
    yajl_handle h;               /* during a parse */
    const char *body;            /* the request's, during a parse and its run */
    size_t body_len;
    size_t jobs;                 /* jobs whose commands wait for their store (they use f) */
};

/* One request's run. The batch's commands run in order; a command whose
 * store answers later (Redis) continues the run from the loop, so the job
 * then holds its own copies of the parsed request (the fast path parses the
 * next one into its buffers meanwhile), and it answers through a waiter. */
typedef struct fast_job {
    ms_fast *f;
    ms_engine *e;
    ms_batch *batch;
    ms_http_waiter *waiter;      /* set once the request is answered later */
    const fast_cmd *cmds;
    size_t ncmds, at;            /* at: the command running */
    const char *names, *data, *body;
    int looping, answered;       /* in step's loop; the running command answered */
    int counted;                 /* counted in f->jobs (its commands still run) */
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
        f->resp.len = 0;  /* scratch: the number's canonical form is not kept */
        return !is_number || ms_jbuf_number(&f->resp, text, len) ? 1 : decline(f);
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

/* The kinds of command the parser knows, and the topic each belongs to. */
static const struct {
    int kind, topic;
    const char *topic_name, *action;
} KINDS[] = {
    { K_EMIT, T_EVENT, "event", "emit" }, { K_READ, T_RECORD, "record", "read" },
    { K_HEAD, T_RECORD, "record", "head" }, { K_WRITE, T_RECORD, "record", "write" },
    { K_DELETE, T_RECORD, "record", "delete" },
};

/* The fields the parser captures, and the kinds of validate.lua whose values
 * include all it captures: names are non-empty strings, versions integers
 * >= -1 (a float is declined), data anything. */
static const struct {
    const char *name;
    unsigned flag;
    const char *kinds[4];
} FIELDS[] = {
    { "eventName", F_EVENTNAME, { "name", "string", "any", NULL } },
    { "recordName", F_RECORDNAME, { "name", "string", "any", NULL } },
    { "data", F_DATA, { "any", NULL } },
    { "version", F_VERSION, { "version", "any", NULL } },
};

/* Whether c is a command the rules allow, with every field it needs. */
static int command_ok(const ms_fast *f, const fast_cmd *c) {
    unsigned s = c->seen & ~(unsigned)(F_TOPIC | F_ACTION);
    if (!(c->seen & F_TOPIC) || !(c->seen & F_ACTION) || c->kind == K_NONE) return 0;
    const fast_rule *r = &f->rules[c->kind];
    return r->on && c->topic == KINDS[c->kind - 1].topic && (s & ~r->allowed) == 0 &&
           (s & r->required) == r->required;
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

typedef struct emit_args {
    ms_fast *f;
    const char *name, *raw;      /* raw: the data as the client wrote it, NULL: none */
    size_t nlen, rlen;
} emit_args;

/* emit_hook(name, data_text|nil): the client's own text, so listeners decode
 * it as the Lua path would (2.0 stays a float, which the canonical text
 * would not keep). Run by ms_pcall: nothing raises inside MHD's callback. */
static int emit_tramp(lua_State *L) {
    emit_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->f->emit_ref);
    lua_pushlstring(L, a->name, a->nlen);
    if (a->raw) lua_pushlstring(L, a->raw, a->rlen);
    else lua_pushnil(L);
    lua_call(L, 2, 0);
    return 0;
}

/* To the other nodes, who hear it as the Lua path's emits (bus.lua). A
 * failure is not the client's: the emit reached this node, as on the Lua
 * path. It fails only while the connection is down (cluster/init.lua logs
 * that) or memory runs out, so it is not logged per emit here. */
static void publish(ms_fast *f, const char *name, size_t nlen, const char *raw, size_t rlen) {
    const char *err;
    if (f->redis == NULL || *f->redis == NULL) return;
    (void)ms_redis_publish_event(*f->redis, f->node, strlen(f->node), f->uid, strlen(f->uid), name, nlen, raw, rlen,
                                 &err);
}

static void emit(fast_job *job, const fast_cmd *c) {
    ms_fast *f = job->f;
    lua_State *L = f->L;
    publish(f, job->names + c->name_off, c->name_len, (c->seen & F_DATA) ? job->body + c->raw_off : NULL,
            (c->seen & F_DATA) ? c->raw_len : 0);
    if (!f->watch_emits || f->emit_ref == LUA_NOREF || !lua_checkstack(L, 3)) return;
    emit_args a = { f, job->names + c->name_off, (c->seen & F_DATA) ? job->body + c->raw_off : NULL, c->name_len,
                    c->raw_len };
    lua_pushcfunction(L, emit_tramp);
    lua_pushlightuserdata(L, &a);
    ms_pcall(L, 1, 0);
}

/* The commands this path answers, as moonstream_commands_total labels them. */
static void count_commands(const fast_job *job) {
    static const int ACTION[] = { [K_EMIT] = MS_ACTION_EMIT, [K_READ] = MS_ACTION_READ, [K_HEAD] = MS_ACTION_HEAD,
                                  [K_WRITE] = MS_ACTION_WRITE, [K_DELETE] = MS_ACTION_DELETE };
    for (size_t i = 0; i < job->ncmds && i < ms_batch_count(job->batch); i++) {
        const fast_cmd *c = &job->cmds[i];
        size_t len;
        int ok;
        ms_batch_result(job->batch, i, &len, &ok);
        ms_metrics_command(c->topic == T_EVENT ? MS_TOPIC_EVENT : MS_TOPIC_RECORD, ACTION[c->kind], ok);
    }
}

/* The job's commands are done (or never ran): from here it does not touch
 * f, so waiting for the group commit may outlive the fast path. */
static void job_uncount(fast_job *job) {
    if (job->counted) job->f->jobs--;
    job->counted = 0;
}

static void job_free(fast_job *job) {
    job_uncount(job);
    ms_batch_free(job->batch);
    free(job);  /* the copies live in the same block */
}

/* Answers a job that waited: status 1 (durable) or 0 (err), or only frees
 * it (-1: the store went away). */
static void job_done(void *ud, int status, const char *err) {
    fast_job *job = ud;
    if (status < 0) {
        ms_http_waiter_answer(job->waiter, NULL, 0);
        job_free(job);
        return;
    }
    ms_jbuf o = { 0 };
    if (ms_batch_response(job->batch, &o, status ? NULL : err)) ms_http_waiter_answer(job->waiter, o.data, o.len);
    else ms_http_waiter_answer(job->waiter, ms_batch_oom, strlen(ms_batch_oom));
    ms_jbuf_free(&o);
    job_free(job);
}

static void cmd_done(void *ud);

/* Every command of a job that waits is done: the answer, once the batch's
 * writes are durable. */
static void job_answer(fast_job *job) {
    if (!ms_engine_has_pending(job->e)) job_done(job, 1, NULL);
    else if (ms_engine_after_flush(job->e, job_done, job) != 0) job_done(job, 0, "out of memory");
}

/* Runs the job's commands from job->at; 1 when all are done, 0 when one
 * waits for its store (cmd_done goes on). A loop, not a recursion, for
 * stores that answer at once. */
static int step(fast_job *job) {
    static const int OPS[] = { [K_READ] = MS_OP_READ, [K_HEAD] = MS_OP_HEAD, [K_WRITE] = MS_OP_WRITE,
                               [K_DELETE] = MS_OP_DELETE };
    while (job->at < job->ncmds) {
        const fast_cmd *c = &job->cmds[job->at];
        if (c->kind == K_EMIT) {
            emit(job, c);
            ms_batch_ok(job->batch);
            job->at++;
            continue;
        }
        ms_cmd cmd = { 0 };
        cmd.op = OPS[c->kind];
        cmd.name = job->names + c->name_off;
        cmd.nlen = c->name_len;
        if (c->kind == K_WRITE) {
            cmd.data = job->data + c->data_off;
            cmd.dlen = c->data_len;
            cmd.has_version = (c->seen & F_VERSION) && c->version != -1;
            cmd.version = c->version;
        }
        job->looping = 1;
        job->answered = 0;
        ms_engine_run(job->e, job->batch, &cmd, cmd_done, job);
        job->looping = 0;
        if (!job->answered) return 0;
    }
    count_commands(job);
    job_uncount(job);
    return 1;
}

/* A command of a job that waited is done: the next, or the answer once the
 * batch's writes are durable. */
static void cmd_done(void *ud) {
    fast_job *job = ud;
    job->at++;
    if (job->looping) {
        job->answered = 1;  /* step's loop goes on */
        return;
    }
    if (step(job)) job_answer(job);
}

/* Answers now: *out is f->resp (sync_err: the batch's changes failed). */
static int answer(ms_fast *f, const char *sync_err, const char **out, size_t *outlen) {
    f->resp.len = 0;
    if (ms_batch_response(f->batch, &f->resp, sync_err)) {
        *out = f->resp.data;
        *outlen = f->resp.len;
    } else {
        *out = ms_batch_oom;
        *outlen = strlen(ms_batch_oom);
    }
    return MS_FAST_DONE;
}

/* A job with its own copies of the parsed request and its own batch, for a
 * store that answers later; NULL when out of memory. */
static fast_job *job_copy(ms_fast *f, ms_engine *e, void *req) {
    size_t ncmd = f->ncmds * sizeof *f->cmds;
    fast_job *job = malloc(sizeof *job + ncmd + f->names.len + f->data.len + f->body_len + 1);
    if (job == NULL) return NULL;
    memset(job, 0, sizeof *job);
    char *at = (char *)(job + 1);
    memcpy(at, f->cmds, ncmd);
    job->cmds = (const fast_cmd *)at;
    at += ncmd;
    if (f->names.len) memcpy(at, f->names.data, f->names.len);
    job->names = at;
    at += f->names.len;
    if (f->data.len) memcpy(at, f->data.data, f->data.len);
    job->data = at;
    at += f->data.len;
    if (f->body_len) memcpy(at, f->body, f->body_len);
    job->body = at;
    job->f = f;
    job->e = e;
    job->ncmds = f->ncmds;
    if ((job->batch = ms_batch_new(e, 1)) == NULL || (job->waiter = ms_http_defer(req)) == NULL) {
        ms_batch_free(job->batch);
        free(job);
        return NULL;
    }
    f->jobs++;
    job->counted = 1;
    return job;
}

/* Runs the parsed commands; answers now or after the group commit. A store
 * that answers later: the job runs on from the loop (cmd_done). */
static int run(ms_fast *f, ms_engine *e, void *req, const char **out, size_t *outlen) {
    if (!ms_engine_immediate(e)) {
        fast_job *later = job_copy(f, e, req);
        if (later == NULL) return MS_FAST_DECLINE;  /* nothing ran: the Lua path answers */
        if (step(later)) job_answer(later);  /* every store answered during the call */
        return MS_FAST_LATER;
    }
    ms_batch_reset(f->batch);
    fast_job job = { .f = f, .e = e, .batch = f->batch, .cmds = f->cmds, .ncmds = f->ncmds, .names = f->names.data,
                     .data = f->data.data, .body = f->body };
    step(&job);  /* immediate stores: done */
    if (!ms_engine_has_pending(e)) return answer(f, NULL, out, outlen);
    /* answered once the batch's writes (or the unsynced data it saw) are
     * durable: the job takes the batch, the fast path a new one */
    fast_job *wait = calloc(1, sizeof *wait);
    ms_batch *next = ms_batch_new(e, 1);
    if (wait == NULL || next == NULL || (wait->waiter = ms_http_defer(req)) == NULL) {
        free(wait);
        ms_batch_free(next);
        return answer(f, "out of memory", out, outlen);  /* the commands ran: say so */
    }
    wait->f = f;
    wait->e = e;
    wait->batch = f->batch;
    f->batch = next;
    if (ms_engine_after_flush(e, job_done, wait) != 0) job_done(wait, 0, "out of memory");
    return MS_FAST_LATER;
}

int ms_fast_run(ms_fast *f, void *req, const char *url, const char *content_type,
                const char *body, size_t len, const char **out, size_t *outlen) {
    ms_engine *e = *f->engine;
    if (!f->enabled || e == NULL || f->api_path == NULL ||
        strcmp(url, f->api_path) != 0 || !ms_http_is_json(content_type))
        return MS_FAST_DECLINE;
    if (!parse(f, body, len)) return MS_FAST_DECLINE;
    return run(f, e, req, out, outlen);
}

/* ---- Lua API ---- */

ms_fast *ms_fast_check(lua_State *L, int idx) {
    return luaL_checkudata(L, idx, FAST_MT);
}

/* One field of rules[topic][action] (the table at idx): allowed and
 * required as far as the parser can take it; 0 when the kind cannot be taken
 * (a required field the parser does not capture as the rule wants). */
static int read_field(lua_State *L, int idx, fast_rule *r) {
    lua_getfield(L, idx, "name");
    lua_getfield(L, idx, "kind");
    lua_getfield(L, idx, "required");
    const char *name = lua_tostring(L, -3), *kind = lua_tostring(L, -2);
    int required = lua_toboolean(L, -1);
    unsigned flag = 0;
    for (size_t i = 0; name && kind && i < sizeof FIELDS / sizeof *FIELDS; i++) {
        if (strcmp(FIELDS[i].name, name) != 0) continue;
        for (size_t k = 0; FIELDS[i].kinds[k]; k++) {
            if (strcmp(FIELDS[i].kinds[k], kind) == 0) flag = FIELDS[i].flag;
        }
    }
    lua_pop(L, 3);
    if (flag == 0) return !required;  /* optional: its presence sends the command to Lua */
    r->allowed |= flag;
    if (required) r->required |= flag;
    return 1;
}

/* f->rules from validate.rules() at idx. */
static void read_rules(lua_State *L, int idx, ms_fast *f) {
    for (size_t i = 0; i < sizeof KINDS / sizeof *KINDS; i++) {
        fast_rule *r = &f->rules[KINDS[i].kind];
        *r = (fast_rule){ 0, 0, 0 };
        if (lua_getfield(L, idx, KINDS[i].topic_name) != LUA_TTABLE ||
            lua_getfield(L, -1, KINDS[i].action) != LUA_TTABLE) {
            lua_settop(L, idx);
            continue;
        }
        int props = lua_gettop(L), ok = 1;
        for (lua_Integer n = 1; ok && lua_rawgeti(L, props, n) == LUA_TTABLE; n++) {
            ok = read_field(L, lua_gettop(L), r);
            lua_pop(L, 1);
        }
        r->on = ok;
        lua_settop(L, idx);
    }
}

/* core.fast_path(engine, opts) -> fast path, disabled until fp:enable(true)
 * opts: api_path (string), rules (validate.rules(): the commands it may take),
 * emit_hook (function(name, data_text|nil)) */
static int fast_new(lua_State *L) {
    ms_engine *const *engine = ms_engine_slot_check(L, 1);
    if (*engine == NULL) return luaL_argerror(L, 1, "a live engine");
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_getfield(L, 2, "api_path");
    const char *api = luaL_checkstring(L, 3);
    if (lua_getfield(L, 2, "emit_hook") != LUA_TNIL) luaL_checktype(L, 4, LUA_TFUNCTION);
    ms_fast *f = lua_newuserdatauv(L, sizeof *f, 2);
    memset(f, 0, sizeof *f);
    f->emit_ref = LUA_NOREF;
    luaL_setmetatable(L, FAST_MT);  /* from here __gc frees what is made below */
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, 5, UV_ENGINE);  /* the engine outlives the fast path */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    f->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    f->engine = engine;
    f->api_path = strdup(api);
    f->pool = ms_json_pool_new();
    f->batch = ms_batch_new(*engine, 1);
    if (f->api_path == NULL || f->pool == NULL || f->batch == NULL) return luaL_error(L, "not enough memory");
    if (!lua_isnil(L, 4)) {
        lua_pushvalue(L, 4);
        f->emit_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_settop(L, 5);
    if (lua_getfield(L, 2, "rules") != LUA_TTABLE) return luaL_argerror(L, 2, "opts.rules must be a table");
    read_rules(L, 6, f);
    lua_settop(L, 5);
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

/* fp:publish_emits(conn, node_id, uid_json): cluster mode, emits go to the
 * other nodes on conn (core.redis) from here; fp:publish_emits(nil): not */
static int fast_publish_emits(lua_State *L) {
    ms_fast *f = ms_fast_check(L, 1);
    ms_redis *const *slot = lua_isnoneornil(L, 2) ? NULL : ms_redis_slot_check(L, 2);
    if (slot) {  /* both checked before either is copied: a raise then leaks nothing */
        luaL_checkstring(L, 3);
        luaL_checkstring(L, 4);
    }
    char *node = slot ? strdup(lua_tostring(L, 3)) : NULL, *uid = slot ? strdup(lua_tostring(L, 4)) : NULL;
    free(f->node);
    free(f->uid);
    f->node = node;
    f->uid = uid;
    f->redis = slot;
    if (slot && (node == NULL || uid == NULL)) {
        f->redis = NULL;
        return luaL_error(L, "not enough memory");
    }
    lua_settop(L, 2);
    lua_setiuservalue(L, 1, UV_REDIS);  /* the connection outlives its use here */
    return 0;
}

static int fast_close(lua_State *L) {
    ms_fast *f = luaL_checkudata(L, 1, FAST_MT);
    f->enabled = 0;
    /* jobs waiting for their store point here: they finish first (shutdown) */
    if (f->jobs > 0 && *f->engine) ms_engine_settle(*f->engine);
    ms_json_pool_delete(f->pool);
    f->pool = NULL;
    free(f->api_path);
    f->api_path = NULL;
    ms_batch_free(f->batch);
    f->batch = NULL;
    free(f->cmds);
    free(f->keys);
    f->cmds = NULL;
    f->keys = NULL;
    f->capcmds = f->capkeys = 0;
    ms_jbuf_free(&f->names);
    ms_jbuf_free(&f->data);
    ms_jbuf_free(&f->resp);
    luaL_unref(L, LUA_REGISTRYINDEX, f->emit_ref);
    f->emit_ref = LUA_NOREF;
    f->redis = NULL;
    free(f->node);
    free(f->uid);
    f->node = f->uid = NULL;
    return 0;
}

static const luaL_Reg fast_meth[] = {
    {"close", fast_close},
    {"enable", fast_enable},
    {"watch_emits", fast_watch_emits},
    {"publish_emits", fast_publish_emits},
    {NULL, NULL}
};

static const luaL_Reg fast_metameth[] = {
    {"__gc", fast_close},
    {"__close", fast_close},
    {"__index", NULL},
    {NULL, NULL}
};

void ms_fastpath_open(lua_State *L) {
    ms_createmeta(L, FAST_MT, fast_meth, fast_metameth);
    lua_pushcfunction(L, fast_new);
    lua_setfield(L, -2, "fast_path");
}
