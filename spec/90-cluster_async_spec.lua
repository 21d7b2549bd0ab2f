-- Cluster mode without blocking waits (csrc/engine_lua.c e:batch(k),
-- csrc/fastpath.c step/cmd_done, csrc/redis.c's reply bound): while Redis
-- holds a request's command, the node answers everything else; the held
-- request answers once Redis does, its batch's results in order; many
-- requests are in flight at once; a Redis that stalls past the store's
-- timeout gives the existing error texts; shutdown drains commands in flight.
--
-- Redis is held with `CLIENT PAUSE <ms> WRITE` (scripts wait, reads go on)
-- and released with CLIENT UNPAUSE: the test, not a clock, decides when.
local json = require "moonstream.json"
local H = require "spec.support.helpers"
local C = require "spec.support.cluster"
local cluster = require "moonstream.cluster"
local core = require "moonstream.core"

local function start(redis)
  return H.start({ cluster = { redis = redis.url, name = "spec90" }, storageExclusionPrefixes = { "tmp/" } })
end

local function post(t, commands, cb)
  assert(t.client:request({
    method = "POST", url = t.url .. "/api", body = assert(json.encode({ body = commands })),
    headers = { ["Content-Type"] = "application/json", Expect = false }, timeout = 30000,
  }, function(res, err) cb(res or { error = err }) end))
end

local function api(t, commands)
  local _, decoded = t:api(commands)
  return decoded
end

-- Sends commands and runs the loop until their write is in flight to Redis
-- (held there while the pause lasts); returns the box its answer lands in.
local function send_held(t, commands)
  local box = {}
  post(t, commands, function(res) box.res = res end)
  t:run_until(function() return box.res ~= nil or t.server.records:has_pending() end)
  assert.is_nil(box.res, "the held request was answered before Redis was released")
  return box
end

describe("cluster mode without blocking waits", function()
  local redis
  setup(function() redis = C.redis() end)
  teardown(function() redis:stop() end)

  for _, case in ipairs({
    { "the fast path", { topic = "record", action = "write", recordName = "s90/held", data = { n = 1 } } },
    { "the Lua path", { topic = "record", action = "write", recordName = "s90/held", path = "n", data = 1 } },
  }) do
    it("serves other requests while Redis holds a write (" .. case[1] .. "); the batch keeps its order", function()
      local t = start(redis)
      redis:command({ "DEL", "ms:r:s90/held" })
      assert.is_true(api(t, { { topic = "record", action = "write", recordName = "tmp/x", data = { m = 1 } } })
        .body[1].success)
      assert.equal("OK", redis:command({ "CLIENT", "PAUSE", "60000", "WRITE" }))
      local held = send_held(t, {
        case[2],
        { topic = "record", action = "read", recordName = "tmp/x" },
        { topic = "event", action = "emit", eventName = "s90/e", data = 1 },
        { topic = "record", action = "read", recordName = "s90/held" },
        { topic = "record", action = "head", recordName = "s90/missing" },
      })
      local others = t:request_all({
        { method = "GET", path = "/health-check" },
        { body = json.encode({ body = { { topic = "event", action = "emit", eventName = "s90/e" } } }) },
        { body = json.encode({ body = { { topic = "record", action = "read", recordName = "tmp/x" } } }) },
      })
      assert.is_nil(held.res, "the held request answered before Redis was released")
      assert.equal(200, others[1].status)
      assert.same({ result = "SUCCESS", body = { { success = true } } }, json.decode(others[2].body))
      assert.same({ success = true, version = 1, data = { m = 1 } }, json.decode(others[3].body).body[1])
      assert.equal("OK", redis:command({ "CLIENT", "UNPAUSE" }))
      t:run_until(function() return held.res ~= nil end)
      assert.equal(200, held.res.status)
      assert.same({ result = "SUCCESS", body = {
        { success = true },
        { success = true, version = 1, data = { m = 1 } },
        { success = true },
        { success = true, version = 1, data = { n = 1 } },
        { success = true, version = -1 },
      } }, json.decode(held.res.body))
      t:stop()
    end)
  end

  it("a realtime client's held write holds no one else; its replies keep their order", function()
    local t = start(redis)
    redis:command({ "DEL", "ms:r:s90/rt" })
    assert.is_true(api(t, { { topic = "record", action = "write", recordName = "tmp/y", data = { m = 2 } } })
      .body[1].success)
    local a, b = H.realtime_client(t), H.realtime_client(t)
    a.login("ann")
    b.login("bob")
    assert.equal("OK", redis:command({ "CLIENT", "PAUSE", "60000", "WRITE" }))
    -- CREATEANDUPDATE with an ack, then a HEAD that must answer after it
    a.send({ topic = 5, action = 16, name = "s90/rt", version = -1, data = '{"a":1}', correlationId = "1",
      isWriteAck = true })
    a.send({ topic = 5, action = 5, name = "s90/rt" })
    t:run_until(function() return t.server.records:has_pending() end)
    b.send({ topic = 5, action = 3, name = "tmp/y" }) -- READ of an excluded record
    b.expect({ topic = 5, action = 4, name = "tmp/y", version = 1 })
    assert.same({}, a.drain(), "ann's replies came before Redis answered")
    assert.equal("OK", redis:command({ "CLIENT", "UNPAUSE" }))
    a.expect({ topic = 5, action = 14, name = "s90/rt", correlationId = "1", isWriteAck = true })
    a.expect({ topic = 5, action = 6, name = "s90/rt", version = 1 })
    t:stop()
  end)

  it("a login waits for Redis to store its token without holding other requests", function()
    local t = start(redis)
    assert.equal("OK", redis:command({ "CLIENT", "PAUSE", "60000", "WRITE" }))
    local login = {}
    assert(t.client:request({
      method = "POST", url = t.url .. "/api/auth", body = json.encode({ username = "ann" }),
      headers = { ["Content-Type"] = "application/json", Expect = false }, timeout = 30000,
    }, function(res, err) login.res = res or { error = err } end))
    -- the token's SET is in flight once the connection has a command waiting
    t:run_until(function() return login.res ~= nil or t.server.cluster.commands:waiting() > 0 end)
    local health = t:request({ method = "GET", path = "/health-check" })
    assert.equal(200, health.status)
    assert.is_nil(login.res, "the login answered before Redis stored its token")
    assert.equal("OK", redis:command({ "CLIENT", "UNPAUSE" }))
    t:run_until(function() return login.res ~= nil end)
    assert.equal(200, login.res.status, login.res.body)
    local token = json.decode(login.res.body).token
    local tokens = require "moonstream.tokens"
    assert.equal(1, redis:command({ "EXISTS", "ms:k:" .. tokens.KEY_PREFIX .. tokens.hash(token) }))
    t:stop()
  end)

  it("publishes an emit the fast path answers to the other nodes", function()
    local t = start(redis)
    local got
    local sub = assert(core.redis(t.loop, { host = "127.0.0.1", port = redis.port, max_reply = 1048576,
      on_message = function(channel, data) if channel == "ms:c:e:s90/fast" then got = data end end }))
    sub:subscribe("ms:c:e:s90/fast")
    t:run_until(function() return redis:command({ "PUBSUB", "NUMSUB", "ms:c:e:s90/fast" })[2] == 1 end)
    local fast = t.server.http:stats().fast
    assert.equal("SUCCESS", api(t, { { topic = "event", action = "emit", eventName = "s90/fast", data = { k = 1 } } })
      .result)
    assert.equal(fast + 1, t.server.http:stats().fast, "the fast path answered it")
    t:run_until(function() return got ~= nil end)
    assert.same({ k = 1 }, json.decode(got:match("\n[^\n]*\n(.*)$")))
    sub:close()
    t:stop()
  end)

  it("answers many requests in flight at once, each correctly", function()
    local t = start(redis)
    local list = {}
    for i = 1, 120 do
      local name = "s90/many/" .. i
      list[i] = { body = json.encode({ body = {
        { topic = "record", action = "write", recordName = name, data = { i = i } },
        { topic = "record", action = "write", recordName = name, path = "j", data = i * 2 },
        { topic = "record", action = "read", recordName = name },
      } }) }
    end
    for i, res in ipairs(t:request_all(list)) do
      assert.equal(200, res.status, res.error)
      local r = json.decode(res.body)
      assert.equal("SUCCESS", r.result)
      assert.same({ success = true, version = 2, data = { i = i, j = i * 2 } }, r.body[3])
    end
    t:stop()
  end)

  it("fails a command Redis holds past the store's timeout with the existing texts, then recovers", function()
    local t = start(redis)
    assert.equal("OK", redis:command({ "CLIENT", "PAUSE", tostring(cluster.COMMAND_TIMEOUT_MS * 30), "WRITE" }))
    local held = send_held(t, { { topic = "record", action = "write", recordName = "s90/stall", data = { a = 1 } } })
    t:run_until(function() return held.res ~= nil end) -- the store's timeout drops the connection
    assert.equal("OK", redis:command({ "CLIENT", "UNPAUSE" }))
    local r = json.decode(held.res.body)
    assert.equal("FAILURE", r.result)
    assert.same({ success = false, errorTopic = "record", errorEvent = "RECORD_UPDATE_ERROR",
      error = "Record update failed: the storage could not save it (Redis did not answer in time)." }, r.body[1])
    -- the connection comes back by itself (backoff): poll with a deadline
    local deadline = t.loop:now() + 20000
    local ok
    repeat
      ok = api(t, { { topic = "record", action = "write", recordName = "s90/stall", data = { a = 2 } } })
        .body[1].success
      if not ok then t.loop:run_once(50) end
    until ok or t.loop:now() > deadline
    assert.is_true(ok)
    t:stop()
  end)

  it("drains a command in flight on shutdown", function()
    local t = start(redis)
    redis:command({ "DEL", "ms:r:s90/drain" })
    -- Redis lifts this pause by itself, well inside the store's timeout
    assert.equal("OK", redis:command({ "CLIENT", "PAUSE", tostring(cluster.COMMAND_TIMEOUT_MS // 4), "WRITE" }))
    send_held(t, { { topic = "record", action = "write", recordName = "s90/drain", data = { d = 1 } } })
    t:stop() -- drains: the write reaches Redis before the connection closes
    local stored = redis:command({ "HMGET", "ms:r:s90/drain", "v", "d" })
    assert.equal("1", stored[1])
    assert.same({ d = 1 }, json.decode(stored[2]))
  end)
end)
