-- Listening (active providers) across nodes (lua/moonstream/cluster/listen.lua,
-- realtime/listen.lua): a real redis-server and three real nodes (child
-- processes); listeners and subscribers are deepstream clients (json
-- transport) on different nodes. Every wait is a real signal or a poll with
-- a deadline; an absence is shown by drain() (everything sent before a PONG).
local N = require "spec.support.cluster_nodes"

local EVENT, RECORD = 4, 5
local E = { SUBSCRIBE = 3, UNSUBSCRIBE = 4, LISTEN = 5, ACCEPT = 7, REJECT = 8, FOUND = 11, REMOVED = 12 }
local R = { SUBSCRIBE = 25, LISTEN = 27, ACCEPT = 29, HAS_PROVIDER = 31, HAS_NO_PROVIDER = 32, FOUND = 33 }

describe("listen across cluster nodes", function()
  local cl, redis

  setup(function()
    -- no rematch sweeps (as deepstream): only the cluster's messages bring a second search
    cl = N.new("listen = { shuffleProviders = false, responseTimeout = 2000, rematchInterval = 1000 }")
    redis = cl.redis
    cl:start_node("a"); cl:start_node("b"); cl:start_node("c")
  end)

  teardown(function() cl:close() end)

  -- c listens on pattern (topic EVENT or RECORD); returns once Redis knows count listening nodes
  local function listen(c, topic, pattern, count)
    c.send({ topic = topic, action = topic == EVENT and E.LISTEN or R.LISTEN, name = pattern })
    c.expect({ topic = topic, action = topic == EVENT and E.LISTEN or R.LISTEN, name = pattern, isAck = true })
    cl:redis_equals("listening nodes", { "SCARD", "ms:l:" .. (topic == EVENT and "event" or "record") .. ":n" }, count)
  end

  local function subscribe_event(c, name)
    c.send({ topic = EVENT, action = E.SUBSCRIBE, names = { name }, correlationId = "s" })
    c.expect({ topic = EVENT, action = E.SUBSCRIBE, isAck = true })
  end

  local function unsubscribe_event(c, name)
    c.send({ topic = EVENT, action = E.UNSUBSCRIBE, names = { name }, correlationId = "u" })
    c.expect({ topic = EVENT, action = E.UNSUBSCRIBE, isAck = true })
  end

  it("asks a listener on another node; removed once the last subscriber on any node leaves", function()
    local l = cl:client("c", "listener")
    listen(l, EVENT, "^s88/one/.*", 1)
    local sa, sb = cl:client("a", "sa"), cl:client("b", "sb")
    subscribe_event(sa, "s88/one/x")
    l.expect({ topic = EVENT, action = E.FOUND, name = "^s88/one/.*", subscription = "s88/one/x" })
    l.send({ topic = EVENT, action = E.ACCEPT, name = "^s88/one/.*", subscription = "s88/one/x" })
    cl:redis_equals("the claim", { "EXISTS", "ms:l:event:o:s88/one/x" }, 1)
    subscribe_event(sb, "s88/one/x") -- a second node: the provider is not asked again
    cl:poll("b's subscription in Redis", function() return #redis:command({ "KEYS", "ms:l:event:ns:*" }) == 2 end)
    unsubscribe_event(sa, "s88/one/x") -- b still subscribes
    cl:poll("a's unsubscription in Redis", function()
      local keys = redis:command({ "KEYS", "ms:l:event:ns:*" })
      return #keys == 1
    end)
    assert.same({}, l.drain())
    unsubscribe_event(sb, "s88/one/x")
    l.expect({ topic = EVENT, action = E.REMOVED, name = "^s88/one/.*", subscription = "s88/one/x" })
    cl:redis_equals("the claim released", { "EXISTS", "ms:l:event:o:s88/one/x" }, 0)
    for _, c in ipairs({ l, sa, sb }) do c.ws:close_handshake(1000) end
    cl:redis_equals("no listening node", { "SCARD", "ms:l:event:n" }, 0)
  end)

  it("chooses one provider cluster-wide; a reject moves the name to the listener on another node", function()
    local lb, lc = cl:client("b", "lb"), cl:client("c", "lc")
    listen(lb, RECORD, "^s88/rec/", 1)
    listen(lc, RECORD, "^s88/rec/", 2)
    local s = cl:client("a", "sub")
    s.send({ topic = RECORD, action = R.SUBSCRIBE, names = { "s88/rec/1" }, correlationId = "s" })
    local first = cl:first_to_hear("one listener asked", { lb, lc })
    local other = first == lb and lc or lb
    first.expect({ topic = RECORD, action = R.FOUND, name = "^s88/rec/", subscription = "s88/rec/1" })
    assert.same({}, other.drain(), "only the claim's holder asks its listener")
    first.send({ topic = RECORD, action = 30, name = "^s88/rec/", subscription = "s88/rec/1" }) -- LISTEN_REJECT
    other.expect({ topic = RECORD, action = R.FOUND, name = "^s88/rec/", subscription = "s88/rec/1" })
    other.send({ topic = RECORD, action = R.ACCEPT, name = "^s88/rec/", subscription = "s88/rec/1" })
    -- the subscriber on a hears that its record has a provider
    cl:poll("HAS_PROVIDER on a", function()
      local m = s.recv()
      return m and m.topic == RECORD and m.action == R.HAS_PROVIDER and m.name == "s88/rec/1"
    end)
    assert.same({}, first.drain(), "the rejecting listener is not asked again")
    -- a second subscriber on b: told at once, nobody asked again
    local s2 = cl:client("b", "sub2")
    s2.send({ topic = RECORD, action = R.SUBSCRIBE, names = { "s88/rec/1" }, correlationId = "s" })
    cl:poll("HAS_PROVIDER on b", function()
      local m = s2.recv()
      return m and m.topic == RECORD and m.action == R.HAS_PROVIDER and m.name == "s88/rec/1"
    end)
    assert.same({}, first.drain())
    assert.same({}, other.drain())
    for _, c in ipairs({ lb, lc, s, s2 }) do c.ws:close_handshake(1000) end
    cl:redis_equals("no listening node", { "SCARD", "ms:l:record:n" }, 0)
  end)

  it("searches again when the providing node is killed with -9, or stopped (its claim goes at once)", function()
    for _, how in ipairs({ "KILL", "TERM" }) do
      local name, ev = "d-" .. how, "s88/gone/" .. how
      cl:start_node(name)
      local ld, lb = cl:client(name, "ld"), cl:client("b", "lb")
      listen(ld, EVENT, "^s88/gone/", 1)
      local s = cl:client("a", "sub")
      subscribe_event(s, ev)
      ld.expect({ topic = EVENT, action = E.FOUND, subscription = ev })
      ld.send({ topic = EVENT, action = E.ACCEPT, name = "^s88/gone/", subscription = ev })
      cl:redis_equals("d's claim", { "EXISTS", "ms:l:event:o:" .. ev }, 1)
      listen(lb, EVENT, "^s88/gone/", 2) -- d holds the name: b is not asked
      assert.same({}, lb.drain())
      cl:stop_node(name, how)
      if how == "TERM" then
        assert.equal(1, redis:command({ "SCARD", "ms:l:event:n" }), "a stopped node says so at once")
      end
      -- KILL: the heartbeats find d dead (cluster/presence.lua); either way its claim goes and b is asked
      lb.expect({ topic = EVENT, action = E.FOUND, name = "^s88/gone/", subscription = ev })
      lb.send({ topic = EVENT, action = E.ACCEPT, name = "^s88/gone/", subscription = ev })
      cl:redis_equals("d gone from the listening nodes", { "SCARD", "ms:l:event:n" }, 1)
      unsubscribe_event(s, ev)
      lb.expect({ topic = EVENT, action = E.REMOVED, subscription = ev })
      s.ws:close_handshake(1000)
      lb.ws:close_handshake(1000)
      cl:redis_equals("no listening node", { "SCARD", "ms:l:event:n" }, 0)
    end
  end)

  it("re-registers listeners and subscriptions by itself after Redis restarts empty", function()
    local l = cl:client("c", "listener")
    listen(l, EVENT, "^s88/again/", 1)
    local s = cl:client("a", "sub")
    subscribe_event(s, "s88/again/1")
    l.expect({ topic = EVENT, action = E.FOUND, subscription = "s88/again/1" })
    l.send({ topic = EVENT, action = E.ACCEPT, name = "^s88/again/", subscription = "s88/again/1" })
    cl:redis_equals("the claim", { "EXISTS", "ms:l:event:o:s88/again/1" }, 1)
    cl:restart_redis_empty()
    cl:redis_equals("the listener re-registered", { "SCARD", "ms:l:event:n" }, 1)
    cl:redis_equals("the claim re-registered", { "GET", "ms:l:event:o:s88/again/1" },
      redis:command({ "SMEMBERS", "ms:l:event:n" })[1])
    cl:poll("the nodes' channels subscribed again", function()
      return #(redis:command({ "PUBSUB", "CHANNELS", "ms:c:n:*" }) or {}) == 3
    end)
    -- a new subscription on b reaches the listener on c
    local s2 = cl:client("b", "sub2")
    subscribe_event(s2, "s88/again/2")
    l.expect({ topic = EVENT, action = E.FOUND, subscription = "s88/again/2" })
    for _, c in ipairs({ l, s, s2 }) do c.ws:close_handshake(1000) end
  end)
end)
