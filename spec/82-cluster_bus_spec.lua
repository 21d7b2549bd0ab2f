-- Messages between nodes (lua/moonstream/cluster/bus.lua, changes.lua): two
-- servers in this process share a real redis-server; realtime clients on
-- each. Record subscribers see changes made on the other node in version
-- order, once; events reach subscribers and Lua listeners on every node
-- exactly once; a node subscribes in Redis only to the names its clients
-- and listeners use.
local json = require "moonstream.json"
local H = require "spec.support.helpers"
local C = require "spec.support.cluster"

local MAX_TURNS = 1000

local function turn_until(t, done, what)
  for _ = 1, MAX_TURNS do
    if done() then return end
    t.loop:run_once(10)
  end
  error("timed out waiting for " .. what)
end

describe("messages between nodes", function()
  local redis, a, b
  setup(function()
    redis = C.redis()
  end)
  teardown(function() redis:stop() end)
  before_each(function()
    local cfg = { cluster = { redis = redis.url } }
    a = H.start(cfg)
    b = H.start(cfg, function(server)
      server:on_event("s82/heard", function(data, ctx)
        server.heard = server.heard or {}
        server.heard[#server.heard + 1] = { data = data, user = ctx.user and ctx.user.id }
      end)
    end)
  end)
  after_each(function()
    a:stop()
    b:stop()
  end)

  -- Runs both nodes' loops until Redis counts n subscribers of channel.
  local function subscribed(_, channel, n)
    turn_until(a, function()
      b.loop:run_once(0)
      local r = redis:command({ "PUBSUB", "NUMSUB", channel })
      return r[2] == n
    end, n .. " subscriber(s) of " .. channel)
  end

  -- Runs t's loop until its messages to Redis are written and answered.
  local function sent(t)
    turn_until(t, function() return t.server.cluster.commands:waiting() == 0 end, "the node's publishes")
  end

  it("record subscribers see the other node's writes in version order, once", function()
    local ca = H.realtime_client(a)
    ca.login("ann")
    ca.send({ topic = 5, action = 23, names = { "s82/rec" }, correlationId = "0" })
    ca.expect({ isAck = true })
    ca.expect({ action = 4 })
    subscribed(a, "ms:c:r:s82/rec", 1)
    for i = 1, 5 do
      local _, r = b:api({ { topic = "record", action = "write", recordName = "s82/rec", data = { i = i } } })
      assert.is_true(r.body[1].success)
    end
    -- and one on this node: delivered at once, and its copy from Redis is dropped
    local _, r = a:api({ { topic = "record", action = "write", recordName = "s82/rec", data = { i = 6 } } })
    assert.is_true(r.body[1].success)
    local versions = {}
    for i = 1, 6 do
      local m = ca.expect({ topic = 5, action = 18, name = "s82/rec" })
      versions[#versions + 1] = m.version
      assert.same({ i = i }, json.decode(m.data))
    end
    assert.same({ 1, 2, 3, 4, 5, 6 }, versions)
    assert.same({}, ca.drain(), "no change twice")
  end)

  it("a realtime client's write on one node reaches a subscriber on the other; deletes too", function()
    local ca, cb = H.realtime_client(a), H.realtime_client(b)
    ca.login("ann"); cb.login("bob")
    for _, c in ipairs({ ca, cb }) do
      c.send({ topic = 5, action = 23, names = { "s82/rt" }, correlationId = "0" })
      c.expect({ isAck = true })
      c.expect({ action = 4 })
    end
    subscribed(a, "ms:c:r:s82/rt", 2)
    cb.send({ topic = 5, action = 18, name = "s82/rt", version = 1, data = '{"by":"bob"}' })
    assert.same({}, cb.drain())
    local m = ca.expect({ topic = 5, action = 18, name = "s82/rt", version = 1 })
    assert.same({ by = "bob" }, json.decode(m.data))
    local _, r = b:api({ { topic = "record", action = "delete", recordName = "s82/rt" } })
    assert.is_true(r.body[1].success)
    ca.expect({ topic = 5, action = 13, name = "s82/rt" })
    assert.same({}, ca.drain())
    -- nobody on a subscribes any more: a unsubscribed in Redis
    subscribed(a, "ms:c:r:s82/rt", 0)
  end)

  it("a record message whose version is too big for an integer is dropped, not taken for a delete", function()
    local ca = H.realtime_client(a)
    ca.login("ann")
    ca.send({ topic = 5, action = 23, names = { "s82/big" }, correlationId = "0" })
    ca.expect({ isAck = true })
    ca.expect({ action = 4 })
    subscribed(a, "ms:c:r:s82/big", 1)
    redis:command({ "PUBLISH", "ms:c:r:s82/big", "99999999999999999999999 {}" })
    local _, r = b:api({ { topic = "record", action = "write", recordName = "s82/big", data = { i = 1 } } })
    assert.is_true(r.body[1].success)
    local m = ca.expect({ topic = 5, action = 18, name = "s82/big" })
    assert.equal(1, m.version)
    assert.same({}, ca.drain(), "no delete")
  end)

  it("events reach subscribers and Lua listeners on every node exactly once", function()
    local ca, cb = H.realtime_client(a), H.realtime_client(b)
    ca.login("ann"); cb.login("bob")
    ca.send({ topic = 4, action = 3, names = { "s82/ev", "s82/heard" }, correlationId = "0" })
    ca.expect({ isAck = true })
    subscribed(a, "ms:c:e:s82/ev", 1)
    subscribed(a, "ms:c:e:s82/heard", 2) -- a's client, and b's Lua listener
    -- HTTP on b
    b:api({ { topic = "event", action = "emit", eventName = "s82/ev", data = { from = "http-b" } } })
    sent(b)
    -- a realtime client on b
    cb.send({ topic = 4, action = 2, name = "s82/ev", data = '{"from":"client-b"}' })
    assert.same({}, cb.drain())
    sent(b)
    -- HTTP on a itself: delivered here once, not again from Redis
    a:api({ { topic = "event", action = "emit", eventName = "s82/ev", data = { from = "http-a" } } })
    sent(a)
    local got = {}
    for _ = 1, 3 do got[#got + 1] = json.decode(ca.expect({ topic = 4, action = 2, name = "s82/ev" }).data).from end
    table.sort(got)
    assert.same({ "client-b", "http-a", "http-b" }, got)
    assert.same({}, ca.drain())
    -- a's client emits: b's Lua listener hears it once, with the user
    ca.send({ topic = 4, action = 2, name = "s82/heard", data = '"hi"' })
    assert.same({}, ca.drain())
    sent(a)
    turn_until(b, function() return b.server.heard ~= nil end, "b's listener")
    for _ = 1, 20 do b.loop:run_once(5) end
    assert.same({ { data = "hi", user = "ann" } }, b.server.heard)
  end)

  it("subscribes in Redis only to the names its clients and listeners use", function()
    local ca = H.realtime_client(a)
    ca.login("ann")
    ca.send({ topic = 4, action = 3, names = { "s82/only" }, correlationId = "0" })
    ca.expect({ isAck = true })
    subscribed(a, "ms:c:e:s82/only", 1)
    subscribed(b, "ms:c:e:s82/heard", 1)
    local channels = redis:command({ "PUBSUB", "CHANNELS", "ms:c:*" })
    table.sort(channels)
    -- b's listener, a's client, presence (which every node follows), and each node's own channel (cluster/nodes.lua)
    local want = { "ms:c:e:s82/heard", "ms:c:e:s82/only", "ms:c:n:" .. a.server.cluster.id,
      "ms:c:n:" .. b.server.cluster.id, "ms:c:p" }
    table.sort(want)
    assert.same(want, channels)
    ca.send({ topic = 4, action = 4, names = { "s82/only" }, correlationId = "1" })
    ca.expect({ isAck = true })
    subscribed(a, "ms:c:e:s82/only", 0)
  end)
end)
