-- The cluster's fast ways (issue 11): the C fast path publishes its emits to
-- the other nodes itself (csrc/fastpath.c, the message format in
-- csrc/redis.c), so an emit nobody on this node listens to never enters Lua;
-- the other nodes hear it as they hear the Lua path's emits, once.
local core = require "moonstream.core"
local H = require "spec.support.helpers"
local C = require "spec.support.cluster"

local MAX_TURNS = 1000

local function turn_until(nodes, done, what)
  for _ = 1, MAX_TURNS do
    if done() then return end
    for _, t in ipairs(nodes) do t.loop:run_once(5) end
  end
  error("timed out waiting for " .. what)
end

describe("cluster emits", function()
  local redis
  setup(function() redis = C.redis() end)
  teardown(function() redis:stop() end)

  it("the event message format is one: what Lua publishes, C parses the same", function()
    assert.equal("ms:c:e:", core.redis_event_channel_prefix)
    local node, uid, text = core.redis_event_parse('n1\n"ann"\n{"a":1}')
    assert.same({ "n1", '"ann"', '{"a":1}' }, { node, uid, text })
    node, uid, text = core.redis_event_parse("n1\nnull\n")
    assert.same({ "n1", "null" }, { node, uid })
    assert.is_nil(text)
    assert.is_nil(core.redis_event_parse("no newline"))
  end)

  describe("from the fast path", function()
    local a, b
    before_each(function()
      local cfg = { fastPath = true, cluster = { redis = redis.url } }
      local function listen(server)
        server.heard = {}
        server:on_event("s91/ev", function(data, ctx)
          server.heard[#server.heard + 1] = { data = data, user = ctx.user and ctx.user.id }
        end)
      end
      a = H.start(cfg)
      b = H.start(cfg, listen)
      turn_until({ a, b }, function()
        return redis:command({ "PUBSUB", "NUMSUB", "ms:c:e:s91/ev" })[2] == 1
      end, "b's subscription")
    end)
    after_each(function()
      a:stop()
      b:stop()
    end)

    local function fast_count(t) return t.server.http:stats().fast or 0 end

    it("are published from C: the other node hears them once, Lua on this node is not entered", function()
      local lua_emits = 0
      local dispatcher = a.server.dispatcher
      local emit = dispatcher.emit
      dispatcher.emit = function(...) lua_emits = lua_emits + 1; return emit(...) end
      local before = fast_count(a)
      for i = 1, 3 do
        local res, body = a:api({ { topic = "event", action = "emit", eventName = "s91/ev", data = { i = i } } })
        assert.equal(200, res.status)
        assert.equal("SUCCESS", body.result)
      end
      assert.equal(before + 3, fast_count(a), "the fast path answered")
      turn_until({ a, b }, function() return #b.server.heard >= 3 end, "b hearing the emits")
      assert.same({ { data = { i = 1 }, user = "open" }, { data = { i = 2 }, user = "open" },
                    { data = { i = 3 }, user = "open" } }, b.server.heard)
      assert.equal(0, lua_emits, "no Lua emit on the emitting node")
      -- an emit without data too
      a:api({ { topic = "event", action = "emit", eventName = "s91/ev" } })
      turn_until({ a, b }, function() return #b.server.heard >= 4 end, "b hearing the emit without data")
      assert.same({ user = "open" }, b.server.heard[4])
    end)

    it("still reach this node's Lua listeners, and the other nodes once (not published twice)", function()
      a.server.heard = {}
      a.server:on_event("s91/ev", function(data) a.server.heard[#a.server.heard + 1] = data end)
      local res = a:api({ { topic = "event", action = "emit", eventName = "s91/ev", data = { x = 1 } } })
      assert.equal(200, res.status)
      assert.same({ { x = 1 } }, a.server.heard)
      turn_until({ a, b }, function() return #b.server.heard >= 1 end, "b hearing the emit")
      -- a second emit marks the end: had the first gone out twice, its copy would come before it
      a:api({ { topic = "event", action = "emit", eventName = "s91/ev", data = { x = 2 } } })
      turn_until({ a, b }, function() return #b.server.heard >= 2 end, "b hearing the second emit")
      assert.same({ { data = { x = 1 }, user = "open" }, { data = { x = 2 }, user = "open" } }, b.server.heard)
      assert.same({ { x = 1 }, { x = 2 } }, a.server.heard)
    end)
  end)
end)

describe("cluster record writes", function()
  local redis, a
  setup(function() redis = C.redis() end)
  teardown(function() redis:stop() end)
  before_each(function() a = H.start({ cluster = { redis = redis.url } }) end)
  after_each(function() a:stop() end)

  -- INFO commandstats' calls of one command (0 when it never ran).
  local function calls(cmd)
    local info = redis:command({ "INFO", "commandstats" })
    return tonumber(info:match("cmdstat_" .. cmd .. ":calls=(%d+)")) or 0
  end

  local function write(i)
    local res, body = a:api({ { topic = "record", action = "write", recordName = "s91/rec", data = { i = i } } })
    assert.equal(200, res.status)
    assert.is_true(body.body[1].success, "write " .. i)
  end

  it("call the put script by its SHA1 after the connection's first; a flushed script cache fails no write", function()
    redis:command({ "CONFIG", "RESETSTAT" })
    for i = 1, 3 do write(i) end
    -- only the connection's first put carried the script's text
    assert.equal(1, calls("eval"))
    assert.equal(2, calls("evalsha"))
    redis:command({ "CONFIG", "RESETSTAT" })
    redis:command({ "SCRIPT", "FLUSH" })
    write(4) -- NOSCRIPT: sent again with its text, which loads it again
    write(5)
    assert.equal(1, calls("eval"))
    assert.equal(2, calls("evalsha"))
    local _, body = a:api({ { topic = "record", action = "read", recordName = "s91/rec" } })
    assert.same({ success = true, version = 5, data = { i = 5 } }, body.body[1])
  end)
end)

describe("ctx.records in a cluster node's RPC handler", function()
  local json = require "moonstream.json"
  local redis, t
  setup(function() redis = C.redis() end)
  teardown(function() redis:stop() end)
  before_each(function()
    t = H.start({ cluster = { redis = redis.url } }, function(server)
      server:rpc("s91/rw", function(data, ctx)
        local ok, err = ctx.records.write("s91/h", { n = data.n })
        if not ok then error(err) end
        local got, version = ctx.records.read("s91/h")
        ctx.records.delete("s91/gone")
        return { got = got, version = version, head = ctx.records.head("s91/h") }
      end)
    end)
  end)
  after_each(function()
    redis:command({ "CLIENT", "UNPAUSE" })
    t:stop()
  end)

  it("waits for Redis without blocking the node", function()
    redis:command({ "DEL", "ms:r:s91/h" })
    assert.equal("OK", redis:command({ "CLIENT", "PAUSE", "60000", "WRITE" }))
    local held = {}
    assert(t.client:request({
      method = "POST", url = t.url .. "/api", timeout = 30000,
      headers = { ["Content-Type"] = "application/json", Expect = false },
      body = json.encode({ body = { { topic = "rpc", action = "make", rpcName = "s91/rw", data = { n = 7 } } } }),
    }, function(res, err) held.res = res or { error = err } end))
    t:run_until(function() return held.res ~= nil or t.server.records:has_pending() end)
    -- while the handler's write is held in Redis, the node answers others
    local others = t:request_all({
      { method = "GET", path = "/health-check" },
      { body = json.encode({ body = { { topic = "event", action = "emit", eventName = "s91/e" } } }) },
    })
    assert.equal(200, others[1].status)
    assert.same({ result = "SUCCESS", body = { { success = true } } }, json.decode(others[2].body))
    assert.is_nil(held.res, "the handler's call answered before Redis was released")
    assert.equal("OK", redis:command({ "CLIENT", "UNPAUSE" }))
    t:run_until(function() return held.res ~= nil end)
    assert.equal(200, held.res.status)
    assert.same({ result = "SUCCESS", body = { { success = true, data = { got = { n = 7 }, version = 1, head = 1 } } } },
      json.decode(held.res.body))
  end)
end)

-- After a Redis reconnection (cluster/listen.lua reregister, which the
-- node runs each time its commands connection is back): what another node
-- said while Redis was down is lost, so its state is read again; a claim
-- another node took meanwhile is not kept here too.
describe("listen after a Redis reconnection", function()
  local json = require "moonstream.json"
  local EVENT, LISTEN, ACCEPT, FOUND, REMOVED = 4, 5, 7, 11, 12
  local NAME = "s91/l/x"
  local redis, t, l, listen
  setup(function() redis = C.redis() end)
  teardown(function() redis:stop() end)
  before_each(function()
    t = H.start({ cluster = { redis = redis.url } })
    listen = t.server.realtime.events.listen
    l = H.realtime_client(t)
    l.login("provider")
    l.send({ topic = EVENT, action = LISTEN, name = "^s91/l/" })
    l.expect({ topic = EVENT, action = LISTEN, isAck = true })
    -- another node ("ghost") subscribes: its "sub" message, as cluster/listen.lua hands it on
    listen:remote_subscribed(NAME, "ghost", true)
    l.expect({ topic = EVENT, action = FOUND, subscription = NAME })
    l.send({ topic = EVENT, action = ACCEPT, name = "^s91/l/", subscription = NAME })
    t:run_until(function() return redis:command({ "GET", "ms:l:event:o:" .. NAME }) == t.server.cluster.id end)
    assert.same({}, l.drain())
  end)
  after_each(function()
    l.ws:close_handshake(1000)
    t:stop()
  end)

  it("drops a subscription the other node no longer has (its unsubscription was lost)", function()
    -- this test plays node "ghost": it hears what the node asks it
    local asked, up = {}, false
    local ghost = core.redis(t.loop, {
      host = "127.0.0.1", port = redis.port, password = redis.password, max_reply = 1024 * 1024,
      on_state = function(u) up = u end,
      on_message = function(_, data) asked[#asked + 1] = json.decode(data) end,
    })
    ghost:subscribe("ms:c:n:ghost")
    t:run_until(function() return up and redis:command({ "PUBSUB", "NUMSUB", "ms:c:n:ghost" })[2] == 1 end)
    t.server.cluster_listen:reregister()
    t:run_until(function() return #asked > 0 end)
    assert.same({ v = "subs?", k = "event", n = "", p = "listen", f = t.server.cluster.id }, asked[1])
    -- ghost's answer: it subscribes to nothing (its "unsub" never arrived here)
    t.server.cluster_listen:_message({ v = "subs", k = "event", n = "", f = "ghost", names = {} })
    l.expect({ topic = EVENT, action = REMOVED, subscription = NAME })
    t:run_until(function() return redis:command({ "EXISTS", "ms:l:event:o:" .. NAME }) == 0 end)
    -- and asked the same by ghost, the node answers with its own names
    t.server.cluster_listen:_message({ v = "subs?", k = "event", n = "", f = "ghost" })
    t:run_until(function() return #asked > 1 end)
    assert.equal("subs", asked[2].v)
    assert.same({}, asked[2].names)
    ghost:close()
  end)

  it("keeps a subscription the other node's set still holds", function()
    redis:command({ "SADD", "ms:l:event:ns:ghost", NAME })
    t.server.cluster_listen:reregister()
    t:run_until(function() return t.server.cluster.commands:waiting() == 0 end)
    assert.same({}, l.drain())
    assert.equal(t.server.cluster.id, redis:command({ "GET", "ms:l:event:o:" .. NAME }))
    redis:command({ "DEL", "ms:l:event:ns:ghost" })
  end)

  it("stops its provider when another node took the claim meanwhile (one provider per name)", function()
    redis:command({ "SADD", "ms:l:event:ns:ghost", NAME })
    redis:command({ "SET", "ms:l:event:o:" .. NAME, "other-node" })
    t.server.cluster_listen:reregister()
    l.expect({ topic = EVENT, action = REMOVED, subscription = NAME })
    t:run_until(function() return t.server.cluster.commands:waiting() == 0 end)
    assert.equal("other-node", redis:command({ "GET", "ms:l:event:o:" .. NAME }), "that node's claim stays")
    assert.is_nil(listen.claimed[NAME])
    redis:command({ "DEL", "ms:l:event:ns:ghost", "ms:l:event:o:" .. NAME })
  end)
end)
