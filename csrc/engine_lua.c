/* engine_lua: the record engine (engine.c) as Lua sees it.
 *
 *   core.engine(records | redis_records, { max_response = N, exclusions = { prefix, ... },
 *                          on_change = function(name, version|nil, text|nil, origin, notified) })
 *   (notified: "shared" | "local" for notify's changes, see engine.h; else nil)
 *   e:read(batch|nil, topic, name)            e:head(batch|nil, topic, name)
 *   e:write(batch|nil, topic, name, data_text|nil, data_err|nil, version|nil, patch|nil, origin)
 *   e:delete(batch|nil, topic, name, origin)  e:notify(batch|nil, names)
 *   e:create(name[, batch])                   e:get(name[, k]) -> version, text | nil | nil, nil, err | false
 *   e:batch([k]) -> batch: b:add(ok, text), b:ok(), b:fail(topic, event, message), b:response([sync_err]) -> text,
 *                  b:result(i) -> ok, text
 *   core.whole_record_data(text) -> the engine's rule for a whole record's data
 *
 * With a batch a command's result joins it and the call returns ok; without,
 * the call returns ok and the result's JSON text. topic is "record" or
 * "list". patch(text|nil) -> new_text | nil, "whole" | "corrupt" | "invalid", message
 * makes a path write's text (lua/moonstream/record_engine.lua).
 *
 * Lua is called from inside the engine (the patch, the change listener)
 * only through ms_pcall and a C trampoline, so nothing raises across the
 * engine or a store.
 *
 * A store that answers later (Redis, redisstore.c): a batch made with a
 * continuation, e:batch(k), never waits. A command on it returns ok when it
 * finished during the call, or nothing when the store answers later: then
 * its arguments stay anchored in the registry, the loop serves everything
 * else meanwhile, and k(ok) runs (from the loop, through ms_pcall) when the
 * result has joined the batch. One command at a time per batch, so results
 * keep the batch's order; commands of different batches are in flight on
 * the store's connection together. POST /api runs this way (dispatch.lua).
 * e:get(name, k) is the same for a get: false now, k(result) later. The
 * realtime protocol runs this way too (lua/moonstream/records.lua wait_*).
 * Commands without a continuation (e:get(name), a nil batch, e:batch())
 * still settle the store before they return (it runs its own connection's
 * I/O only, bounded by its timeout): handlers' ctx.records and permission
 * rules that read records use them; shutdown drains with it. */
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "engine.h"
#include "records.h"
#include "redisstore.h"

#define ENGINE_MT "moonstream.Engine"
#define BATCH_MT "moonstream.RecordBatch"
#define UV_RECORDS 1
#define ANCHOR_BATCH 0  /* where a waiting command's anchor table holds its batch */
#define UV_K 2          /* a batch's continuation (its uservalue 1 is the engine) */

/* the hooks table (registry ref): the change listener, the running command's origin */
#define HOOK_ON_CHANGE 1
#define HOOK_ORIGIN 2

typedef struct engine_box {
    ms_engine *e;                /* NULL when closed */
    ms_batch *single;            /* for commands without a batch */
    int single_busy;             /* single holds a settling command (another one settles inside it) */
    lua_State *L;                /* main thread */
    int hooks_ref;
    int busy;                    /* Lua called from inside a command is running */
    size_t waiting;              /* commands of batches with a continuation not done yet */
    ms_name *names;              /* notify's names */
    size_t capnames;
    ms_jbuf got;                 /* get's copy of the text */
    ms_jbuf resp;                /* a batch's answer */
} engine_box;

/* A path write's patch function: at index fn of the calling frame, or
 * (ref set) at index fn of the anchor table ref while the command waits. */
typedef struct patch_args {
    lua_State *L;
    int fn;
    int ref;
    const char *cur;
    size_t len;
    ms_jbuf *out, *msg;
    int how;
} patch_args;

typedef struct batch_box {
    ms_batch *b;                 /* NULL when closed */
    engine_box *owner;
    int later;                   /* it has a continuation (uservalue UV_K); 0: commands settle */
    int anchor_ref;              /* the running command's arguments (a table) */
    int running;                 /* a command is not done yet */
    int in_call;                 /* ... and the call that began it has not returned */
    int closing;                 /* closed while running: freed when it is done */
    int ok;                      /* the result of the command done during its call */
    int origin;                  /* the origin's index in the anchor table, 0: none */
    size_t before;               /* results before the running command */
    patch_args pa;
    ms_patch patch;
    ms_name *names;              /* notify's names */
    size_t capnames;
} batch_box;

ms_engine *const *ms_engine_slot_check(lua_State *L, int idx) {
    engine_box *eb = luaL_checkudata(L, idx, ENGINE_MT);
    return (ms_engine *const *)&eb->e;
}

static engine_box *check_engine(lua_State *L) {
    engine_box *eb = luaL_checkudata(L, 1, ENGINE_MT);
    if (eb->e == NULL) luaL_error(L, "attempt to use a closed engine");
    if (eb->busy) luaL_error(L, "the record engine is busy (called from inside a command)");
    return eb;
}

/* ---- calling Lua from inside the engine ---- */

typedef struct change_args {
    engine_box *eb;
    const char *name, *text;
    size_t nlen, tlen;
    long long version;
    void *origin;                /* eb: hooks[HOOK_ORIGIN]; a batch_box: its anchored origin;
                                    &ms_engine_notified[i]: a notify's (the listener's 5th argument) */
} change_args;

static void push_origin(lua_State *L, engine_box *eb, void *origin, int hooks) {
    if (origin == NULL) {
        lua_pushnil(L);
    } else if (origin == eb) {
        lua_rawgeti(L, hooks, HOOK_ORIGIN);
    } else {
        batch_box *bb = origin;
        lua_rawgeti(L, LUA_REGISTRYINDEX, bb->anchor_ref);
        lua_rawgeti(L, -1, bb->origin);
        lua_remove(L, -2);
    }
}

static int change_tramp(lua_State *L) {
    change_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->eb->hooks_ref);
    int hooks = lua_gettop(L);
    if (lua_rawgeti(L, hooks, HOOK_ON_CHANGE) != LUA_TFUNCTION) return 0;
    lua_pushlstring(L, a->name, a->nlen);
    if (a->version >= 0) lua_pushinteger(L, (lua_Integer)a->version);
    else lua_pushnil(L);
    if (a->text) lua_pushlstring(L, a->text, a->tlen);
    else lua_pushnil(L);
    void *o = a->origin;
    int notified = o == &ms_engine_notified[0] ? 1 : o == &ms_engine_notified[1] ? 2 : 0;
    push_origin(L, a->eb, notified ? NULL : o, hooks);
    if (notified == 1) lua_pushliteral(L, "shared");
    else if (notified == 2) lua_pushliteral(L, "local");
    else lua_pushnil(L);
    lua_call(L, 5, 0);
    return 0;
}

static void on_change(void *ud, const char *name, size_t nlen, long long version, const char *text, size_t tlen,
                      void *origin) {
    engine_box *eb = ud;
    lua_State *L = eb->L;
    change_args a = { eb, name, text, nlen, tlen, version, origin };
    if (!lua_checkstack(L, 3)) return;
    int busy = eb->busy;
    eb->busy = 1;
    lua_pushcfunction(L, change_tramp);
    lua_pushlightuserdata(L, &a);
    ms_pcall(L, 1, 0);
    eb->busy = busy;
}

static int patch_tramp(lua_State *L) {
    patch_args *p = lua_touserdata(L, 2);
    lua_pushvalue(L, 1);
    if (p->cur) lua_pushlstring(L, p->cur, p->len);
    else lua_pushnil(L);
    lua_call(L, 1, 3);
    size_t n;
    const char *s = lua_tolstring(L, -3, &n);
    if (s) {
        p->how = ms_jbuf_put(p->out, s, n) ? MS_PATCH_OK : MS_PATCH_INVALID;
        return 0;
    }
    const char *kind = lua_tostring(L, -2);
    p->how = kind && strcmp(kind, "whole") == 0 ? MS_PATCH_WHOLE
           : kind && strcmp(kind, "corrupt") == 0 ? MS_PATCH_CORRUPT : MS_PATCH_INVALID;
    if ((s = lua_tolstring(L, -1, &n)) != NULL) ms_jbuf_put(p->msg, s, n);
    return 0;
}

static int patch_apply(void *ud, const char *cur, size_t len, ms_jbuf *out, ms_jbuf *msg) {
    patch_args *p = ud;
    lua_State *L = p->L;
    p->cur = cur;
    p->len = len;
    p->out = out;
    p->msg = msg;
    p->how = MS_PATCH_INVALID;
    if (!lua_checkstack(L, 5)) return MS_PATCH_INVALID;
    lua_pushcfunction(L, patch_tramp);
    if (p->ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
        lua_rawgeti(L, -1, p->fn);
        lua_remove(L, -2);
    } else {
        lua_pushvalue(L, p->fn);
    }
    lua_pushlightuserdata(L, p);
    if (!ms_pcall(L, 2, 0)) msg->len = 0;  /* logged; the command fails */
    if (p->how == MS_PATCH_INVALID && msg->len == 0) ms_jbuf_put(msg, "the path could not be applied", 29);
    return p->how;
}

/* ---- commands ---- */

static void set_done(void *ud) {
    *(int *)ud = 1;
}

/* The batch at index 2 (its box in *bbp), or NULL for nil (the box's own). */
static batch_box *arg_batch(lua_State *L, engine_box *eb) {
    if (lua_isnoneornil(L, 2)) return NULL;
    batch_box *bb = luaL_checkudata(L, 2, BATCH_MT);
    if (bb->b == NULL || bb->owner != eb) luaL_argerror(L, 2, "a live batch of this engine");
    if (bb->running) luaL_error(L, "a command of this batch is still waiting for the store");
    return bb;
}

static int arg_list(lua_State *L, int idx) {
    const char *topic = luaL_checkstring(L, idx);
    return strcmp(topic, "list") == 0;
}

/* Runs c and settles the store; returns ok (and the text without a batch).
 * origin, patch: the indexes of those arguments, 0 for none. */
static int run_settled(lua_State *L, engine_box *eb, batch_box *bb, ms_cmd *c, int origin, int patch) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, eb->hooks_ref);
    int hooks = lua_gettop(L);
    if (origin && !lua_isnoneornil(L, origin)) {
        lua_pushvalue(L, origin);
        lua_rawseti(L, hooks, HOOK_ORIGIN);
        c->origin = eb;  /* the listener gets hooks[HOOK_ORIGIN] */
    }
    patch_args pa = { L, patch, LUA_NOREF, NULL, 0, NULL, NULL, 0 };
    ms_patch mp = { patch_apply, &pa };
    if (patch) c->patch = &mp;
    /* a command settling inside another's settle (a continuation run by it)
     * gets a batch of its own */
    ms_batch *b = bb ? bb->b : eb->single_busy ? ms_batch_new(eb->e, 0) : eb->single;
    if (b == NULL) return luaL_error(L, "not enough memory");
    int own = b == eb->single;
    if (own) eb->single_busy = 1;
    if (!bb) ms_batch_reset(b);
    size_t before = ms_batch_count(b);
    int done = 0;
    ms_engine_run(eb->e, b, c, set_done, &done);
    if (!done) ms_engine_settle(eb->e);
    if (own) eb->single_busy = 0;
    lua_pushnil(L);
    lua_rawseti(L, hooks, HOOK_ORIGIN);
    size_t len = 0;
    int ok = 0, found = done && ms_batch_count(b) > before;
    const char *text = found ? ms_batch_result(b, before, &len, &ok) : NULL;
    if (found && !bb) lua_pushlstring(L, text, len);  /* may raise: b is freed below either way */
    if (!bb && !own && done) ms_batch_free(b);  /* not done: the store may still hold it */
    if (!done) return luaL_error(L, "the record store answered later (not supported by this binding)");
    if (!found) return luaL_error(L, "not enough memory");
    lua_pushboolean(L, ok);
    if (bb) return 1;
    lua_insert(L, -2);
    return 2;
}

/* The command of bb (a batch with a continuation) is done. */
static void later_done(void *ud) {
    batch_box *bb = ud;
    engine_box *eb = bb->owner;
    lua_State *L = eb->L;
    size_t len;
    int ok = 0;
    if (ms_batch_count(bb->b) > bb->before) ms_batch_result(bb->b, bb->before, &len, &ok);
    bb->running = 0;
    bb->ok = ok;
    eb->waiting--;
    int anchor = bb->anchor_ref;
    bb->anchor_ref = LUA_NOREF;
    if (bb->in_call) {
        luaL_unref(L, LUA_REGISTRYINDEX, anchor);  /* the call's frame holds the arguments */
        return;
    }
    if (bb->closing) {
        ms_batch_free(bb->b);
        bb->b = NULL;
    } else if (lua_checkstack(L, 4)) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, anchor);
        lua_rawgeti(L, -1, ANCHOR_BATCH);
        lua_getiuservalue(L, -1, UV_K);
        lua_replace(L, -3);
        lua_pop(L, 1);
        lua_pushboolean(L, ok);
        ms_pcall(L, 1, 0);  /* may run the batch's next command; bb is not touched after it */
    }
    luaL_unref(L, LUA_REGISTRYINDEX, anchor);  /* the batch may be collected from here */
}

/* Runs c on bb, a batch with a continuation: returns ok when it finished
 * during the call, nothing when k(ok) runs later (see the top). */
static int run_later(lua_State *L, engine_box *eb, batch_box *bb, int batch, ms_cmd *c, int origin, int patch) {
    int top = lua_gettop(L);
    lua_createtable(L, top + 1, 0);
    for (int i = 1; i <= top; i++) {
        lua_pushvalue(L, i);
        lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, batch);
    lua_rawseti(L, -2, ANCHOR_BATCH);
    bb->anchor_ref = luaL_ref(L, LUA_REGISTRYINDEX);  /* holds the batch, the engine, the strings c points to */
    bb->origin = 0;
    if (origin && !lua_isnoneornil(L, origin)) {
        bb->origin = origin;
        c->origin = bb;
    }
    if (patch) {
        bb->pa = (patch_args){ eb->L, patch, bb->anchor_ref, NULL, 0, NULL, NULL, 0 };
        bb->patch = (ms_patch){ patch_apply, &bb->pa };
        c->patch = &bb->patch;
    }
    bb->before = ms_batch_count(bb->b);
    bb->running = bb->in_call = 1;
    eb->waiting++;
    ms_engine_run(eb->e, bb->b, c, later_done, bb);
    bb->in_call = 0;
    if (bb->running) return 0;
    lua_pushboolean(L, bb->ok);
    return 1;
}

/* bb: the batch at index batch, or NULL */
static int run(lua_State *L, engine_box *eb, batch_box *bb, int batch, ms_cmd *c, int origin, int patch) {
    if (bb && bb->later) return run_later(L, eb, bb, batch, c, origin, patch);
    return run_settled(L, eb, bb, c, origin, patch);
}

/* The arguments every command has: (batch|nil, topic, name). */
static engine_box *cmd_args(lua_State *L, int op, batch_box **bb, ms_cmd *c) {
    engine_box *eb = check_engine(L);
    *bb = arg_batch(L, eb);
    memset(c, 0, sizeof *c);
    c->op = op;
    c->list = arg_list(L, 3);
    c->name = luaL_checklstring(L, 4, &c->nlen);
    return eb;
}

static int simple(lua_State *L, int op) {
    batch_box *bb;
    ms_cmd c;
    engine_box *eb = cmd_args(L, op, &bb, &c);
    return run(L, eb, bb, 2, &c, op == MS_OP_DELETE ? 5 : 0, 0);
}

static int engine_read(lua_State *L) {
    return simple(L, MS_OP_READ);
}

static int engine_head(lua_State *L) {
    return simple(L, MS_OP_HEAD);
}

static int engine_delete(lua_State *L) {
    return simple(L, MS_OP_DELETE);
}

static int engine_write(lua_State *L) {
    batch_box *bb;
    ms_cmd c;
    engine_box *eb = cmd_args(L, MS_OP_WRITE, &bb, &c);
    c.data = luaL_optlstring(L, 5, NULL, &c.dlen);
    c.data_err = luaL_optstring(L, 6, NULL);
    if (!lua_isnoneornil(L, 7)) {
        c.version = (long long)luaL_checkinteger(L, 7);
        c.has_version = c.version != -1;
    }
    int patch = 0;
    if (!lua_isnoneornil(L, 8)) {
        luaL_checktype(L, 8, LUA_TFUNCTION);
        patch = 8;
    }
    return run(L, eb, bb, 2, &c, 9, patch);
}

static int engine_notify(lua_State *L) {
    engine_box *eb = check_engine(L);
    batch_box *bb = arg_batch(L, eb);
    luaL_checktype(L, 3, LUA_TTABLE);
    size_t n = lua_rawlen(L, 3);
    /* a waiting command keeps its names: each batch has its own array */
    ms_name **names = bb ? &bb->names : &eb->names;
    size_t *cap = bb ? &bb->capnames : &eb->capnames;
    if (n > *cap) {
        ms_name *more = realloc(*names, n * sizeof *more);
        if (more == NULL) return luaL_error(L, "not enough memory");
        *names = more;
        *cap = n;
    }
    ms_cmd c = { 0 };
    c.op = MS_OP_NOTIFY;
    for (size_t i = 0; i < n; i++) {
        if (lua_rawgeti(L, 3, (lua_Integer)i + 1) == LUA_TSTRING) {
            ms_name *nm = &(*names)[c.nnames++];
            nm->s = lua_tolstring(L, -1, &nm->len);  /* anchored in the table */
        }
        lua_pop(L, 1);
    }
    c.names = *names;
    return run(L, eb, bb, 2, &c, 0, 0);
}

/* e:create(name[, batch]) -> ok (with a batch: as the other commands) */
static int engine_create(lua_State *L) {
    engine_box *eb = check_engine(L);
    ms_cmd c = { 0 };
    c.op = MS_OP_CREATE;
    c.name = luaL_checklstring(L, 2, &c.nlen);
    if (!lua_isnoneornil(L, 3)) {
        lua_settop(L, 3);
        batch_box *bb = luaL_checkudata(L, 3, BATCH_MT);
        if (bb->b == NULL || bb->owner != eb) luaL_argerror(L, 3, "a live batch of this engine");
        if (bb->running) luaL_error(L, "a command of this batch is still waiting for the store");
        return run(L, eb, bb, 3, &c, 0, 0);
    }
    lua_settop(L, 2);
    run_settled(L, eb, NULL, &c, 0, 0);
    lua_pop(L, 1);  /* the text */
    return 1;
}

/* Memory get keeps for the next call. */
#define GOT_KEEP (256 * 1024)

typedef struct got_state {
    ms_jbuf *buf;                /* the box's, or (a store that settles) the call's own */
    int status, copied;
    long long version;
} got_state;

static void got(void *ud, int status, long long version, const char *text, size_t len, const char *err) {
    got_state *g = ud;
    g->status = status;
    g->version = version;
    g->buf->len = 0;
    if (status == MS_REC_OK) g->copied = ms_jbuf_put(g->buf, text, len);
    else if (status == MS_REC_FAILED) g->copied = ms_jbuf_put(g->buf, err, strlen(err));
    else g->copied = 1;
}

/* Pushes what e:get returns for g; -1 when out of memory. */
static int push_got(lua_State *L, const got_state *g) {
    const char *text = g->buf->data ? g->buf->data : "";
    if (!g->copied) return -1;
    if (g->status == MS_REC_FAILED) {
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushlstring(L, text, g->buf->len);
        return 3;
    }
    if (g->status != MS_REC_OK) return 0;
    lua_pushinteger(L, (lua_Integer)g->version);
    lua_pushlstring(L, text, g->buf->len);
    return 2;
}

/* A get with a continuation whose store answers later. */
typedef struct get_later {
    engine_box *eb;
    int anchor_ref;              /* { name, k } */
    int in_call;
    got_state g;
    ms_jbuf buf;
} get_later;

static int get_later_tramp(lua_State *L) {
    get_later *gl = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, gl->anchor_ref);
    lua_rawgeti(L, -1, 2);
    int n = push_got(L, &gl->g);
    if (n < 0) return luaL_error(L, "not enough memory");
    lua_call(L, n, 0);
    return 0;
}

static void get_later_free(lua_State *L, get_later *gl) {
    luaL_unref(L, LUA_REGISTRYINDEX, gl->anchor_ref);
    ms_jbuf_free(&gl->buf);
    free(gl);
}

static void got_later(void *ud, int status, long long version, const char *text, size_t len, const char *err) {
    get_later *gl = ud;
    got(&gl->g, status, version, text, len, err);
    if (gl->in_call) return;
    lua_State *L = gl->eb->L;
    gl->eb->waiting--;
    if (lua_checkstack(L, 6)) {
        lua_pushcfunction(L, get_later_tramp);
        lua_pushlightuserdata(L, gl);
        ms_pcall(L, 1, 0);
    }
    get_later_free(L, gl);
}

/* e:get(name, k) for a store that answers later: the result now, or false
 * and k(result...) later from the loop. */
static int engine_get_later(lua_State *L, engine_box *eb, const char *name, size_t nlen) {
    get_later *gl = calloc(1, sizeof *gl);
    if (gl == NULL) return luaL_error(L, "not enough memory");
    gl->eb = eb;
    gl->g = (got_state){ &gl->buf, -2, 0, 0 };
    gl->anchor_ref = LUA_NOREF;
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 1);  /* the name the store points to until it answers */
    lua_pushvalue(L, 3);
    lua_rawseti(L, -2, 2);
    gl->anchor_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    gl->in_call = 1;
    ms_engine_get(eb->e, name, nlen, got_later, gl);
    gl->in_call = 0;
    if (gl->g.status == -2) {
        eb->waiting++;
        lua_pushboolean(L, 0);
        return 1;
    }
    int n = push_got(L, &gl->g);
    get_later_free(L, gl);
    if (n < 0) return luaL_error(L, "not enough memory");
    return n;
}

/* e:get(name[, k]) -> version, text | nil (missing) | nil, nil, err. With k
 * and a store that answers later: false, and k(those) runs later. Without
 * k it settles such a store: a get of a batch's continuation run meanwhile
 * copies into its own buffer, not this one. */
static int engine_get(lua_State *L) {
    engine_box *eb = check_engine(L);
    size_t nlen;
    const char *name = luaL_checklstring(L, 2, &nlen);
    int immediate = ms_engine_immediate(eb->e);
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TFUNCTION);
        if (!immediate) return engine_get_later(L, eb, name, nlen);
    }
    ms_jbuf own = { 0 };
    got_state g = { immediate ? &eb->got : &own, -2, 0, 0 };
    ms_engine_get(eb->e, name, nlen, got, &g);
    if (g.status == -2) ms_engine_settle(eb->e);
    if (g.status == -2) return luaL_error(L, "the record store answered later (not supported by this binding)");
    int n = push_got(L, &g);
    ms_jbuf_free(&own);
    if (eb->got.cap > GOT_KEEP) ms_jbuf_free(&eb->got);
    if (n < 0) return luaL_error(L, "not enough memory");
    return n;
}

/* e:batch([k]) -> a batch whose answer is bounded by max_response. With k,
 * its commands never wait: k(ok) runs when one the store answers later is
 * done (see the top). */
static int engine_batch(lua_State *L) {
    engine_box *eb = check_engine(L);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
    batch_box *bb = lua_newuserdatauv(L, sizeof *bb, 2);
    memset(bb, 0, sizeof *bb);
    bb->owner = eb;
    bb->anchor_ref = LUA_NOREF;
    luaL_setmetatable(L, BATCH_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);  /* the engine outlives its batches */
    if ((bb->b = ms_batch_new(eb->e, 1)) == NULL) return luaL_error(L, "not enough memory");
    if (!lua_isnoneornil(L, 2)) {
        lua_pushvalue(L, 2);
        lua_setiuservalue(L, -2, UV_K);  /* not in the registry: a dropped batch is collected */
        bb->later = 1;
    }
    return 1;
}

static int engine_close(lua_State *L) {
    engine_box *eb = luaL_checkudata(L, 1, ENGINE_MT);
    if (eb->e == NULL) return 0;
    if (eb->waiting > 0) ms_engine_settle(eb->e);  /* shutdown: commands in flight finish first */
    ms_engine_free(eb->e);
    eb->e = NULL;
    ms_batch_free(eb->single);
    eb->single = NULL;
    free(eb->names);
    eb->names = NULL;
    ms_jbuf_free(&eb->got);
    ms_jbuf_free(&eb->resp);
    luaL_unref(L, LUA_REGISTRYINDEX, eb->hooks_ref);
    eb->hooks_ref = LUA_NOREF;
    return 0;
}

static void read_opts(lua_State *L, engine_box *eb) {
    lua_getfield(L, 2, "max_response");
    lua_Integer max = luaL_checkinteger(L, -1);
    luaL_argcheck(L, max > 0, 2, "opts.max_response must be positive");
    lua_pop(L, 1);
    ms_recstore durable;
    if (ms_redisstore_test(L, 1, &durable) == NULL) ms_records_seam(ms_records_check(L, 1), &durable);
    if ((eb->e = ms_engine_new(durable, (size_t)max)) == NULL) luaL_error(L, "not enough memory");
    if (!ms_engine_can_settle(eb->e)) luaL_error(L, "this binding needs stores that answer at once or settle");
    if (lua_getfield(L, 2, "exclusions") == LUA_TTABLE) {
        for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
            size_t plen;
            const char *p = luaL_checklstring(L, -1, &plen);
            if (ms_engine_exclude(eb->e, p, plen) != 0) luaL_error(L, "not enough memory");
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_createtable(L, 2, 0);
    if (lua_getfield(L, 2, "on_change") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TFUNCTION);
        lua_rawseti(L, -2, HOOK_ON_CHANGE);
        ms_engine_on_change(eb->e, on_change, eb);
    } else {
        lua_pop(L, 1);
    }
    eb->hooks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

static int engine_new(lua_State *L) {
    ms_recstore probe;
    if (ms_redisstore_test(L, 1, &probe) == NULL) ms_records_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    engine_box *eb = lua_newuserdatauv(L, sizeof *eb, 1);
    memset(eb, 0, sizeof *eb);
    eb->hooks_ref = LUA_NOREF;
    luaL_setmetatable(L, ENGINE_MT);  /* from here __gc frees what read_opts made, even if it raises */
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, 3, UV_RECORDS);  /* the records outlive the engine */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    eb->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    read_opts(L, eb);
    if ((eb->single = ms_batch_new(eb->e, 0)) == NULL) return luaL_error(L, "not enough memory");
    lua_settop(L, 3);
    return 1;
}

/* ---- batches ---- */

static ms_batch *check_batch(lua_State *L) {
    batch_box *bb = luaL_checkudata(L, 1, BATCH_MT);
    if (bb->b == NULL || bb->owner->e == NULL) luaL_error(L, "attempt to use a closed batch");
    return bb->b;
}

/* b:add(ok, text): a result made in Lua (JSON text) */
static int batch_add(lua_State *L) {
    ms_batch *b = check_batch(L);
    size_t len;
    const char *text = luaL_checklstring(L, 3, &len);
    if (!ms_batch_add(b, lua_toboolean(L, 2), text, len)) return luaL_error(L, "not enough memory");
    return 0;
}

/* b:ok(): {"success":true} */
static int batch_ok(lua_State *L) {
    if (!ms_batch_ok(check_batch(L))) return luaL_error(L, "not enough memory");
    return 0;
}

/* b:fail(topic, event, message): the failure object */
static int batch_fail(lua_State *L) {
    ms_batch *b = check_batch(L);
    size_t mlen;
    const char *topic = luaL_checkstring(L, 2), *event = luaL_checkstring(L, 3);
    const char *msg = luaL_checklstring(L, 4, &mlen);
    if (!ms_batch_fail(b, topic, event, msg, mlen)) return luaL_error(L, "not enough memory");
    return 0;
}

/* b:succeeded(i) -> whether result i (1-based) succeeded (metrics) */
static int batch_succeeded(lua_State *L) {
    ms_batch *b = check_batch(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    int ok = 0;
    size_t len;
    if (i >= 1 && (size_t)i <= ms_batch_count(b)) ms_batch_result(b, (size_t)i - 1, &len, &ok);
    lua_pushboolean(L, ok);
    return 1;
}

/* b:result(i) -> ok, text of result i (1-based) | nil */
static int batch_result(lua_State *L) {
    ms_batch *b = check_batch(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (size_t)i > ms_batch_count(b)) return 0;
    size_t len;
    int ok;
    const char *text = ms_batch_result(b, (size_t)i - 1, &len, &ok);
    lua_pushboolean(L, ok);
    lua_pushlstring(L, text, len);
    return 2;
}

/* b:response([sync_err]) -> the answer's JSON text */
static int batch_response(lua_State *L) {
    ms_batch *b = check_batch(L);
    engine_box *eb = ((batch_box *)lua_touserdata(L, 1))->owner;
    const char *err = luaL_optstring(L, 2, NULL);
    eb->resp.len = 0;
    if (!ms_batch_response(b, &eb->resp, err)) {
        lua_pushstring(L, ms_batch_oom);
        return 1;
    }
    lua_pushlstring(L, eb->resp.data, eb->resp.len);
    return 1;
}

static int batch_close(lua_State *L) {
    batch_box *bb = luaL_checkudata(L, 1, BATCH_MT);
    if (bb->running) {
        bb->closing = 1;  /* the store still holds it: later_done frees it */
    } else {
        ms_batch_free(bb->b);
        bb->b = NULL;
    }
    free(bb->names);
    bb->names = NULL;
    bb->capnames = 0;
    return 0;
}

static const luaL_Reg engine_meth[] = {
    {"read", engine_read},
    {"head", engine_head},
    {"write", engine_write},
    {"delete", engine_delete},
    {"notify", engine_notify},
    {"create", engine_create},
    {"get", engine_get},
    {"batch", engine_batch},
    {"close", engine_close},
    {NULL, NULL}
};

static const luaL_Reg engine_metameth[] = {
    {"__gc", engine_close},
    {"__close", engine_close},
    {"__index", NULL},
    {NULL, NULL}
};

static const luaL_Reg batch_meth[] = {
    {"add", batch_add},
    {"ok", batch_ok},
    {"fail", batch_fail},
    {"succeeded", batch_succeeded},
    {"result", batch_result},
    {"response", batch_response},
    {"close", batch_close},
    {NULL, NULL}
};

static const luaL_Reg batch_metameth[] = {
    {"__gc", batch_close},
    {"__close", batch_close},
    {"__index", NULL},
    {NULL, NULL}
};

/* core.whole_record_data(text) -> whether JSON text may be a whole record's
 * data (the engine's rule, for callers that must answer before writing). */
static int whole_record_data(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    lua_pushboolean(L, ms_engine_whole_data(text, len));
    return 1;
}

void ms_engine_open(lua_State *L) {
    ms_createmeta(L, ENGINE_MT, engine_meth, engine_metameth);
    ms_createmeta(L, BATCH_MT, batch_meth, batch_metameth);
    lua_pushcfunction(L, engine_new);
    lua_setfield(L, -2, "engine");
    lua_pushcfunction(L, whole_record_data);
    lua_setfield(L, -2, "whole_record_data");
}
