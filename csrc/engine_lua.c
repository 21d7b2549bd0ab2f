/* engine_lua: the record engine (engine.c) as Lua sees it.
 *
 *   core.engine(records | redis_records, { max_response = N, exclusions = { prefix, ... },
 *                          on_change = function(name, version|nil, text|nil, origin, notified) })
 *   (notified: "shared" | "local" for notify's changes, see engine.h; else nil)
 *   e:read(batch|nil, topic, name)            e:head(batch|nil, topic, name)
 *   e:write(batch|nil, topic, name, data_text|nil, data_err|nil, version|nil, patch|nil, origin)
 *   e:delete(batch|nil, topic, name, origin)  e:notify(batch|nil, names)
 *   e:create(name)                            e:get(name) -> version, text | nil | nil, nil, err
 *   e:batch() -> batch: b:add(ok, text), b:ok(), b:fail(topic, event, message), b:response([sync_err]) -> text
 *
 * With a batch a command's result joins it and the call returns ok; without,
 * the call returns ok and the result's JSON text. topic is "record" or
 * "list". patch(text|nil) -> new_text | nil, "whole" | "corrupt" | "invalid", message
 * makes a path write's text (lua/moonstream/records.lua).
 *
 * Lua is called from inside the engine (the patch, the change listener)
 * only through ms_pcall and a C trampoline, so nothing raises across the
 * engine or a store. These calls return the result: LevelDB and memory
 * answer at once, and a store that answers later (Redis, redisstore.c) is
 * settled before the call returns (it runs its own connection's I/O only,
 * bounded by its timeout). A continuation here would let the loop serve
 * meanwhile; the engine itself already supports one. */
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "engine.h"
#include "records.h"
#include "redisstore.h"

#define ENGINE_MT "moonstream.Engine"
#define BATCH_MT "moonstream.RecordBatch"
#define UV_RECORDS 1

/* the hooks table (registry ref): the change listener, the running command's origin */
#define HOOK_ON_CHANGE 1
#define HOOK_ORIGIN 2

typedef struct engine_box {
    ms_engine *e;                /* NULL when closed */
    ms_batch *single;            /* for commands without a batch */
    lua_State *L;                /* main thread */
    int hooks_ref;
    int busy;                    /* a command is running */
    ms_name *names;              /* notify's names */
    size_t capnames;
    ms_jbuf got;                 /* get's copy of the text */
    ms_jbuf resp;                /* a batch's answer */
} engine_box;

typedef struct batch_box {
    ms_batch *b;                 /* NULL when closed */
    engine_box *owner;
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

/* what a change's origin was (the listener's 4th and 5th arguments) */
enum { ORIGIN_NONE, ORIGIN_COMMAND, ORIGIN_NOTIFY_SHARED, ORIGIN_NOTIFY_LOCAL };

typedef struct change_args {
    engine_box *eb;
    const char *name, *text;
    size_t nlen, tlen;
    long long version;
    int origin;
} change_args;

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
    if (a->origin == ORIGIN_COMMAND) lua_rawgeti(L, hooks, HOOK_ORIGIN);
    else lua_pushnil(L);
    if (a->origin == ORIGIN_NOTIFY_SHARED) lua_pushliteral(L, "shared");
    else if (a->origin == ORIGIN_NOTIFY_LOCAL) lua_pushliteral(L, "local");
    else lua_pushnil(L);
    lua_call(L, 5, 0);
    return 0;
}

static void on_change(void *ud, const char *name, size_t nlen, long long version, const char *text, size_t tlen,
                      void *origin) {
    engine_box *eb = ud;
    lua_State *L = eb->L;
    int kind = origin == NULL ? ORIGIN_NONE
             : origin == &ms_engine_notified[0] ? ORIGIN_NOTIFY_SHARED
             : origin == &ms_engine_notified[1] ? ORIGIN_NOTIFY_LOCAL : ORIGIN_COMMAND;
    change_args a = { eb, name, text, nlen, tlen, version, kind };
    if (!lua_checkstack(L, 3)) return;
    lua_pushcfunction(L, change_tramp);
    lua_pushlightuserdata(L, &a);
    ms_pcall(L, 1, 0);
}

typedef struct patch_args {
    lua_State *L;
    int fn;                      /* the patch function's index in the calling frame */
    const char *cur;
    size_t len;
    ms_jbuf *out, *msg;
    int how;
} patch_args;

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
    if (!lua_checkstack(L, 4)) return MS_PATCH_INVALID;
    lua_pushcfunction(L, patch_tramp);
    lua_pushvalue(L, p->fn);
    lua_pushlightuserdata(L, p);
    if (!ms_pcall(L, 2, 0)) msg->len = 0;  /* logged; the command fails */
    if (p->how == MS_PATCH_INVALID && msg->len == 0) ms_jbuf_put(msg, "the path could not be applied", 29);
    return p->how;
}

/* ---- commands ---- */

static void set_done(void *ud) {
    *(int *)ud = 1;
}

/* The batch at index 2, or the box's own (reset) when nil. */
static ms_batch *arg_batch(lua_State *L, engine_box *eb) {
    if (lua_isnoneornil(L, 2)) {
        ms_batch_reset(eb->single);
        return eb->single;
    }
    batch_box *bb = luaL_checkudata(L, 2, BATCH_MT);
    if (bb->b == NULL || bb->owner != eb) luaL_argerror(L, 2, "a live batch of this engine");
    return bb->b;
}

static int arg_list(lua_State *L, int idx) {
    const char *topic = luaL_checkstring(L, idx);
    return strcmp(topic, "list") == 0;
}

/* Runs c; returns ok (and the text without a batch). origin: the index of
 * the origin argument, 0 for none. */
static int run(lua_State *L, engine_box *eb, ms_batch *b, ms_cmd *c, int origin) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, eb->hooks_ref);
    int hooks = lua_gettop(L);
    if (origin && !lua_isnoneornil(L, origin)) {
        lua_pushvalue(L, origin);
        lua_rawseti(L, hooks, HOOK_ORIGIN);
        c->origin = eb;  /* any non-NULL: the listener gets hooks[HOOK_ORIGIN] */
    }
    size_t before = ms_batch_count(b);
    int done = 0;
    eb->busy = 1;
    ms_engine_run(eb->e, b, c, set_done, &done);
    if (!done) ms_engine_settle(eb->e);
    eb->busy = 0;
    lua_pushnil(L);
    lua_rawseti(L, hooks, HOOK_ORIGIN);
    if (!done) return luaL_error(L, "the record store answered later (not supported by this binding)");
    if (ms_batch_count(b) == before) return luaL_error(L, "not enough memory");
    size_t len;
    int ok;
    const char *text = ms_batch_result(b, before, &len, &ok);
    lua_pushboolean(L, ok);
    if (b != eb->single) return 1;
    lua_pushlstring(L, text, len);
    return 2;
}

/* The arguments every command has: (batch|nil, topic, name). */
static engine_box *cmd_args(lua_State *L, int op, ms_batch **b, ms_cmd *c) {
    engine_box *eb = check_engine(L);
    *b = arg_batch(L, eb);
    memset(c, 0, sizeof *c);
    c->op = op;
    c->list = arg_list(L, 3);
    c->name = luaL_checklstring(L, 4, &c->nlen);
    return eb;
}

static int simple(lua_State *L, int op) {
    ms_batch *b;
    ms_cmd c;
    engine_box *eb = cmd_args(L, op, &b, &c);
    return run(L, eb, b, &c, op == MS_OP_DELETE ? 5 : 0);
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
    ms_batch *b;
    ms_cmd c;
    engine_box *eb = cmd_args(L, MS_OP_WRITE, &b, &c);
    c.data = luaL_optlstring(L, 5, NULL, &c.dlen);
    c.data_err = luaL_optstring(L, 6, NULL);
    if (!lua_isnoneornil(L, 7)) {
        c.version = (long long)luaL_checkinteger(L, 7);
        c.has_version = c.version != -1;
    }
    patch_args pa = { L, 8, NULL, 0, NULL, NULL, 0 };
    ms_patch patch = { patch_apply, &pa };
    if (!lua_isnoneornil(L, 8)) {
        luaL_checktype(L, 8, LUA_TFUNCTION);
        c.patch = &patch;
    }
    return run(L, eb, b, &c, 9);
}

static int engine_notify(lua_State *L) {
    engine_box *eb = check_engine(L);
    ms_batch *b = arg_batch(L, eb);
    luaL_checktype(L, 3, LUA_TTABLE);
    size_t n = lua_rawlen(L, 3);
    if (n > eb->capnames) {
        ms_name *names = realloc(eb->names, n * sizeof *names);
        if (names == NULL) return luaL_error(L, "not enough memory");
        eb->names = names;
        eb->capnames = n;
    }
    ms_cmd c = { 0 };
    c.op = MS_OP_NOTIFY;
    for (size_t i = 0; i < n; i++) {
        if (lua_rawgeti(L, 3, (lua_Integer)i + 1) == LUA_TSTRING) {
            ms_name *nm = &eb->names[c.nnames++];
            nm->s = lua_tolstring(L, -1, &nm->len);  /* anchored in the table */
        }
        lua_pop(L, 1);
    }
    c.names = eb->names;
    return run(L, eb, b, &c, 0);
}

static int engine_create(lua_State *L) {
    engine_box *eb = check_engine(L);
    ms_batch *b = eb->single;
    ms_batch_reset(b);
    ms_cmd c = { 0 };
    c.op = MS_OP_CREATE;
    c.name = luaL_checklstring(L, 2, &c.nlen);
    run(L, eb, b, &c, 0);
    lua_settop(L, lua_gettop(L) - 1);  /* the text */
    return 1;
}

/* Memory get keeps for the next call. */
#define GOT_KEEP (256 * 1024)

typedef struct got_state {
    engine_box *eb;
    int status, copied;
    long long version;
} got_state;

static void got(void *ud, int status, long long version, const char *text, size_t len, const char *err) {
    got_state *g = ud;
    g->status = status;
    g->version = version;
    g->eb->got.len = 0;
    if (status == MS_REC_OK) g->copied = ms_jbuf_put(&g->eb->got, text, len);
    else if (status == MS_REC_FAILED) g->copied = ms_jbuf_put(&g->eb->got, err, strlen(err));
    else g->copied = 1;
}

/* e:get(name) -> version, text | nil (missing) | nil, nil, err */
static int engine_get(lua_State *L) {
    engine_box *eb = check_engine(L);
    size_t nlen;
    const char *name = luaL_checklstring(L, 2, &nlen);
    got_state g = { eb, -2, 0, 0 };
    eb->busy = 1;
    ms_engine_get(eb->e, name, nlen, got, &g);
    if (g.status == -2) ms_engine_settle(eb->e);
    eb->busy = 0;
    if (g.status == -2) return luaL_error(L, "the record store answered later (not supported by this binding)");
    if (!g.copied) return luaL_error(L, "not enough memory");
    if (g.status == MS_REC_MISSING) return 0;
    const char *text = eb->got.data ? eb->got.data : "";
    if (g.status == MS_REC_FAILED) {
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushlstring(L, text, eb->got.len);
        return 3;
    }
    lua_pushinteger(L, (lua_Integer)g.version);
    lua_pushlstring(L, text, eb->got.len);
    if (eb->got.cap > GOT_KEEP) ms_jbuf_free(&eb->got);
    return 2;
}

/* e:batch() -> a batch whose answer is bounded by max_response */
static int engine_batch(lua_State *L) {
    engine_box *eb = check_engine(L);
    batch_box *bb = lua_newuserdatauv(L, sizeof *bb, 1);
    bb->b = NULL;
    bb->owner = eb;
    luaL_setmetatable(L, BATCH_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);  /* the engine outlives its batches */
    if ((bb->b = ms_batch_new(eb->e, 1)) == NULL) return luaL_error(L, "not enough memory");
    return 1;
}

static int engine_close(lua_State *L) {
    engine_box *eb = luaL_checkudata(L, 1, ENGINE_MT);
    if (eb->e == NULL) return 0;
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
    ms_batch_free(bb->b);
    bb->b = NULL;
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

void ms_engine_open(lua_State *L) {
    ms_createmeta(L, ENGINE_MT, engine_meth, engine_metameth);
    ms_createmeta(L, BATCH_MT, batch_meth, batch_metameth);
    lua_pushcfunction(L, engine_new);
    lua_setfield(L, -2, "engine");
}
