-- Records in cluster mode (lua/moonstream/cluster, csrc/redisstore.c) on a
-- real redis-server: the same answers as one node on LevelDB, the data in
-- Redis, two servers sharing one Redis, the persistence warning, Redis down
-- (fast failures with the existing texts) and back (reconnection), and the
-- cluster config keys.
local json = require "moonstream.json"
local config = require "moonstream.config"
local core = require "moonstream.core"
local H = require "spec.support.helpers"
local C = require "spec.support.cluster"

local function cluster_cfg(redis, extra)
  local cfg = { cluster = { redis = redis.url, name = "spec81" }, storageExclusionPrefixes = { "tmp/" } }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return cfg
end

local function body_of(t, commands)
  local _, decoded = t:api(commands)
  return decoded
end

describe("records in cluster mode", function()
  local redis
  setup(function() redis = C.redis() end)
  teardown(function() redis:stop() end)

  it("answers like one node and keeps the record in Redis", function()
    local t = H.start(cluster_cfg(redis))
    local r = body_of(t, {
      { topic = "record", action = "write", recordName = "s81/a", data = { x = 1 } },
      { topic = "record", action = "read", recordName = "s81/a" },
      { topic = "record", action = "write", recordName = "s81/a", data = { x = 2 }, version = 1 },
      { topic = "record", action = "write", recordName = "s81/a", path = "y", data = 3 },
      { topic = "record", action = "head", recordName = "s81/a" },
      { topic = "record", action = "read", recordName = "s81/missing" },
      { topic = "list", action = "write", listName = "s81/l", data = { "a", "b" } },
      { topic = "record", action = "write", recordName = "tmp/x", data = { m = 1 } },
    })
    assert.equal("PARTIAL_SUCCESS", r.result)
    assert.same({ success = true, version = 1, data = { x = 1 } }, r.body[2])
    assert.equal("VERSION_EXISTS", r.body[3].errorEvent)
    assert.equal(1, r.body[3].currentVersion)
    assert.is_true(r.body[4].success)
    assert.same({ success = true, version = 2 }, r.body[5])
    assert.equal("RECORD_NOT_FOUND", r.body[6].errorEvent)
    assert.is_true(r.body[7].success)
    local stored = redis:command({ "HMGET", "ms:r:s81/a", "v", "d" })
    assert.equal("2", stored[1])
    assert.same({ x = 1, y = 3 }, json.decode(stored[2]))
    -- storageExclusionPrefixes: kept in the node's memory, not in Redis
    assert.equal(0, redis:command({ "EXISTS", "ms:r:tmp/x" }))
    r = body_of(t, { { topic = "record", action = "delete", recordName = "s81/a" },
                     { topic = "record", action = "head", recordName = "s81/a" } })
    assert.same({ success = true }, r.body[1])
    assert.equal(0, redis:command({ "EXISTS", "ms:r:s81/a" }))
    t:stop()
  end)

  it("shares records between two servers; the version check is Redis'", function()
    local a = H.start(cluster_cfg(redis))
    local b = H.start(cluster_cfg(redis))
    assert.is_true(body_of(a, { { topic = "record", action = "write", recordName = "s81/shared", data = { n = 1 } } })
      .body[1].success)
    local r = body_of(b, { { topic = "record", action = "read", recordName = "s81/shared" },
                           { topic = "record", action = "write", recordName = "s81/shared", data = { n = 2 },
                             version = 2 } })
    assert.same({ success = true, version = 1, data = { n = 1 } }, r.body[1])
    assert.is_true(r.body[2].success)
    r = body_of(a, { { topic = "record", action = "write", recordName = "s81/shared", data = { n = 3 }, version = 2 } })
    assert.equal("VERSION_EXISTS", r.body[1].errorEvent)
    assert.same({ n = 2 }, r.body[1].currentData)
    -- a change made behind the node's back (another node) is what it reads next
    redis:command({ "HSET", "ms:r:s81/shared", "v", "7", "d", '{"n":7}' })
    r = body_of(a, { { topic = "record", action = "read", recordName = "s81/shared" } })
    assert.same({ success = true, version = 7, data = { n = 7 } }, r.body[1])
    a:stop()
    b:stop()
  end)

  it("a corrupt entry in Redis is reported as one", function()
    local t = H.start(cluster_cfg(redis))
    redis:command({ "HSET", "ms:r:s81/bad", "v", "x1", "d", "{}" })
    local r = body_of(t, { { topic = "record", action = "read", recordName = "s81/bad" } })
    assert.equal("RECORD_LOAD_ERROR", r.body[1].errorEvent)
    assert.matches("corrupt entry", r.body[1].error)
    t:stop()
  end)

  it("ctx.records in a handler reads and writes Redis", function()
    local t = H.start(cluster_cfg(redis), function(server)
      server:rpc("bump", function(data, ctx)
        local cur = ctx.records.read("s81/ctr") or { n = 0 }
        assert(ctx.records.write("s81/ctr", { n = cur.n + 1 }))
        return (ctx.records.read("s81/ctr")).n
      end)
    end)
    local r1 = body_of(t, { { topic = "rpc", action = "make", rpcName = "bump" } })
    local r2 = body_of(t, { { topic = "rpc", action = "make", rpcName = "bump" } })
    assert.equal(r1.body[1].data + 1, r2.body[1].data)
    t:stop()
  end)
end)

describe("cluster mode and Redis' health", function()
  it("warns when Redis does not fsync every write", function()
    local lazy = C.redis({ appendfsync = "everysec" })
    local log = H.capture_log(function()
      local t = H.start(cluster_cfg(lazy, { logLevel = "debug" }))
      t:stop()
    end)
    assert.matches("Redis does not fsync every write %(appendonly yes, appendfsync everysec%)", log)
    lazy:stop()
    local good = C.redis()
    log = H.capture_log(function()
      local t = H.start(cluster_cfg(good, { logLevel = "debug" }))
      t:stop()
    end)
    assert.matches("records connection to Redis redis://127%.0%.0%.1:%d+/0 is up", log)
    assert.not_matches("does not fsync", log)
    good:stop()
  end)

  it("fails fast with the existing texts while Redis is down, and recovers by itself", function()
    local own = C.redis()
    local t = H.start(cluster_cfg(own))
    assert.is_true(body_of(t, { { topic = "record", action = "write", recordName = "s81/d", data = { v = 1 } } })
      .body[1].success)
    own:kill9()
    local started = core.now()
    local r = body_of(t, { { topic = "record", action = "write", recordName = "s81/d", data = { v = 2 } },
                           { topic = "record", action = "read", recordName = "s81/d" },
                           { topic = "event", action = "emit", eventName = "still-served" } })
    assert.equal("PARTIAL_SUCCESS", r.result)
    assert.equal("RECORD_UPDATE_ERROR", r.body[1].errorEvent)
    assert.matches('^Record update failed%. Record "s81/d" could not be loaded: ', r.body[1].error)
    assert.equal("RECORD_LOAD_ERROR", r.body[2].errorEvent)
    assert.is_true(r.body[3].success)
    assert.is_true(core.now() - started < 5000, "a request without Redis must not wait for it")
    own:restart()
    local back
    for _ = 1, 200 do
      r = body_of(t, { { topic = "record", action = "read", recordName = "s81/d" } })
      if r.body[1].success then back = r.body[1]; break end
      t.loop:run_once(20) -- the reconnection happens on the node's loop
    end
    assert.same({ success = true, version = 1, data = { v = 1 } }, back, "the AOF kept the acknowledged write")
    t:stop()
    own:stop()
  end)
end)

describe("cluster config keys", function()
  it("takes redis, name and password, and --cluster-name as an override", function()
    local cfg = assert(config.validate({ cluster = { redis = "redis://:pw@127.0.0.1:7000/2", name = "n1" } }))
    assert.same({ redis = "redis://:pw@127.0.0.1:7000/2", name = "n1" }, cfg.cluster)
    cfg = assert(config.apply_overrides(cfg, { cluster = { name = "n2" } }))
    assert.equal("n2", cfg.cluster.name)
    assert.equal("redis://:pw@127.0.0.1:7000/2", cfg.cluster.redis)
    assert.is_nil(assert(config.validate({})).cluster)
  end)

  it("names a missing or bad Redis URL", function()
    local _, err = config.validate({ cluster = { name = "n1" } })
    assert.matches("config key 'cluster.redis' is required", err)
    _, err = config.validate({ cluster = { redis = "http://x" } })
    assert.matches("config key 'cluster.redis' must start with redis://", err)
    _, err = config.validate({ cluster = { redis = "redis://h:99999/0" } })
    assert.matches("port out of range", err)
    _, err = config.validate({ cluster = { redis = "redis://h/0", nmae = "x" } })
    assert.matches("unknown config key 'cluster.nmae'", err)
  end)

  it("parses URLs with a password, a database and IPv6", function()
    local url = require "moonstream.cluster.url"
    assert.same({ host = "127.0.0.1", port = 6379, db = 0 }, url.parse("redis://127.0.0.1"))
    assert.same({ host = "h", port = 7000, db = 3, password = "pw" }, url.parse("redis://user:pw@h:7000/3"))
    assert.same({ host = "::1", port = 7001, db = 0 }, url.parse("redis://[::1]:7001/"))
    -- too big for an integer: refused, not taken as the default
    assert.matches("port out of range", select(2, url.parse("redis://h:99999999999999999999/0")))
    assert.matches("bad database number", select(2, url.parse("redis://h:7000/99999999999999999999")))
  end)

  it("takes the password from cluster.password", function()
    local locked = C.redis({ password = "s81pw" })
    local t = H.start({ cluster = { redis = "redis://127.0.0.1:" .. locked.port .. "/0", password = "s81pw" } })
    assert.is_true(body_of(t, { { topic = "record", action = "write", recordName = "s81/pw", data = {} } })
      .body[1].success)
    t:stop()
    locked:stop()
  end)
end)
