-- RPC across nodes (lua/moonstream/cluster/rpc.lua, realtime/rpc.lua): a
-- real redis-server and three real nodes (child processes); providers and
-- requesters are deepstream clients (json transport) and HTTP on different
-- nodes, and the real @deepstream/client in the last test. Every wait is a
-- real signal or a poll with a deadline.
local json = require "moonstream.json"
local N = require "spec.support.cluster_nodes"

local RPC = 6
local REQUEST, ACCEPT, RESPONSE, REJECT, REQUEST_ERROR, PROVIDE = 2, 4, 5, 6, 7, 8
local NO_RPC_PROVIDER, ACCEPT_TIMEOUT, RESPONSE_TIMEOUT = 100, 101, 104

describe("RPC across cluster nodes", function()
  local cl, redis, dir, nodes

  setup(function()
    cl = N.new("rpc = { ackTimeout = 1000, responseTimeout = 3000, "
      .. "handlers = { ['s87/lua'] = function(data) return { by = 'lua', data = data } end } }")
    redis, dir, nodes = cl.redis, cl.dir, cl.nodes
    cl:start_node("a"); cl:start_node("b"); cl:start_node("c")
  end)

  teardown(function() cl:close() end)

  local function poll(what, fn) return cl:poll(what, fn) end
  local function client(name, user) return cl:client(name, user) end
  local function start_node(name) return cl:start_node(name) end
  local function stop_node(name, signal) return cl:stop_node(name, signal) end

  -- c provides rpc name; returns once Redis holds count providing nodes of it
  local function provide(c, name, count)
    c.send({ topic = RPC, action = PROVIDE, names = { name }, correlationId = "p" })
    c.expect({ topic = RPC, action = PROVIDE, isAck = true })
    cl:redis_equals("providers of " .. name .. " in Redis", { "SCARD", "ms:rpc:p:" .. name }, count)
  end

  -- POST /api make on node `name`: starts it; returns a function giving the result once there
  local function make(name, rpc, data)
    return cl:api(name, { topic = "rpc", action = "make", rpcName = rpc, data = data })
  end

  it("reaches a provider on another node from HTTP and from a client, answers as the provider sent them", function()
    local p = client("c", "prov")
    provide(p, "s87/add", 1)
    -- HTTP on a
    local result = make("a", "s87/add", { x = 1, y = 2 })
    local req = p.expect({ topic = RPC, action = REQUEST, name = "s87/add" })
    assert.same({ x = 1, y = 2 }, json.decode(req.data))
    p.send({ topic = RPC, action = ACCEPT, name = "s87/add", correlationId = req.correlationId })
    p.send({ topic = RPC, action = RESPONSE, name = "s87/add", correlationId = req.correlationId, data = "3" })
    assert.same({ success = true, data = 3 }, result())
    -- a client on b: ACCEPT, then REQUEST_ERROR as sent
    local r = client("b", "req")
    r.send({ topic = RPC, action = REQUEST, name = "s87/add", correlationId = "q1", data = "[5]" })
    req = p.expect({ topic = RPC, action = REQUEST, name = "s87/add", correlationId = "q1", data = "[5]" })
    p.send({ topic = RPC, action = ACCEPT, name = "s87/add", correlationId = "q1" })
    r.expect({ topic = RPC, action = ACCEPT, name = "s87/add", correlationId = "q1" })
    p.send({ topic = RPC, action = REQUEST_ERROR, name = "s87/add", correlationId = "q1", data = '"bad input"' })
    r.expect({ topic = RPC, action = REQUEST_ERROR, name = "s87/add", correlationId = "q1", data = '"bad input"' })
    -- and a response with data
    r.send({ topic = RPC, action = REQUEST, name = "s87/add", correlationId = "q2", data = "[1,2]" })
    p.expect({ topic = RPC, action = REQUEST, correlationId = "q2" })
    p.send({ topic = RPC, action = ACCEPT, name = "s87/add", correlationId = "q2" })
    r.expect({ topic = RPC, action = ACCEPT, correlationId = "q2" })
    p.send({ topic = RPC, action = RESPONSE, name = "s87/add", correlationId = "q2", data = '{"sum":3}' })
    r.expect({ topic = RPC, action = RESPONSE, correlationId = "q2", data = '{"sum":3}' })
    -- an HTTP error from the provider is an RPC_ERROR with its text
    result = make("b", "s87/add")
    req = p.expect({ topic = RPC, action = REQUEST, name = "s87/add" })
    p.send({ topic = RPC, action = REQUEST_ERROR, name = "s87/add", correlationId = req.correlationId, data = '"nope"' })
    local got = result()
    assert.same({ false, "RPC_ERROR", "nope" }, { got.success, got.errorEvent, got.error })
    p.ws:close_handshake(1000)
    r.ws:close_handshake(1000)
    poll("the provider gone from Redis", function() return redis:command({ "SCARD", "ms:rpc:p:s87/add" }) == 0 end)
  end)

  it("runs the Lua handler of the node that got the request before any client provider", function()
    local p = client("c", "prov")
    provide(p, "s87/lua", 1)
    assert.same({ success = true, data = { by = "lua", data = 1 } }, make("a", "s87/lua", 1)())
    local r = client("b", "req")
    r.send({ topic = RPC, action = REQUEST, name = "s87/lua", correlationId = "l1", data = "2" })
    local m = r.expect({ topic = RPC, action = RESPONSE, correlationId = "l1" })
    assert.same({ by = "lua", data = 2 }, json.decode(m.data))
    assert.same({}, p.drain(), "the client provider on c was not asked")
    p.ws:close_handshake(1000)
    r.ws:close_handshake(1000)
  end)

  it("moves a rejected request to a provider on another node, then answers NO_RPC_PROVIDER", function()
    local pb, pc = client("b", "pb"), client("c", "pc")
    provide(pb, "s87/rej", 1)
    provide(pc, "s87/rej", 2)
    local r = client("a", "req")
    for round = 1, 2 do
      local id = "r" .. round
      r.send({ topic = RPC, action = REQUEST, name = "s87/rej", correlationId = id, data = "1" })
      -- whichever gets it first rejects; the other must get it then
      local first = cl:first_to_hear("a REQUEST at b or c", { pb, pc })
      first.expect({ topic = RPC, action = REQUEST, name = "s87/rej", correlationId = id })
      local other = first == pb and pc or pb
      first.send({ topic = RPC, action = REJECT, name = "s87/rej", correlationId = id })
      other.expect({ topic = RPC, action = REQUEST, name = "s87/rej", correlationId = id })
      if round == 1 then
        other.send({ topic = RPC, action = ACCEPT, name = "s87/rej", correlationId = id })
        r.expect({ topic = RPC, action = ACCEPT, correlationId = id })
        other.send({ topic = RPC, action = RESPONSE, name = "s87/rej", correlationId = id, data = '"second"' })
        r.expect({ topic = RPC, action = RESPONSE, correlationId = id, data = '"second"' })
      else
        other.send({ topic = RPC, action = REJECT, name = "s87/rej", correlationId = id })
        r.expect({ topic = RPC, action = NO_RPC_PROVIDER, name = "s87/rej", correlationId = id })
      end
    end
    assert.same({}, pb.drain())
    assert.same({}, pc.drain())
    for _, c in ipairs({ pb, pc, r }) do c.ws:close_handshake(1000) end
  end)

  it("ends with ACCEPT_TIMEOUT and RESPONSE_TIMEOUT on the requester's node", function()
    local p = client("c", "slow")
    provide(p, "s87/slow", 1)
    local r = client("a", "req")
    r.send({ topic = RPC, action = REQUEST, name = "s87/slow", correlationId = "t1", data = "1" })
    p.expect({ topic = RPC, action = REQUEST, correlationId = "t1" })
    r.expect({ topic = RPC, action = ACCEPT_TIMEOUT, name = "s87/slow", correlationId = "t1" })
    r.send({ topic = RPC, action = REQUEST, name = "s87/slow", correlationId = "t2", data = "1" })
    p.expect({ topic = RPC, action = REQUEST, correlationId = "t2" })
    p.send({ topic = RPC, action = ACCEPT, name = "s87/slow", correlationId = "t2" })
    r.expect({ topic = RPC, action = ACCEPT, correlationId = "t2" })
    r.expect({ topic = RPC, action = RESPONSE_TIMEOUT, name = "s87/slow", correlationId = "t2" })
    -- HTTP: the same failures, with the texts rpc.lua gives them
    local result = make("b", "s87/slow")
    p.expect({ topic = RPC, action = REQUEST, name = "s87/slow" })
    local got = result()
    assert.same({ false, "ACCEPT_TIMEOUT" }, { got.success, got.errorEvent })
    assert.equal("The RPC accept timeout was exceeded by the provider.", got.error)
    p.ws:close_handshake(1000)
    r.ws:close_handshake(1000)
  end)

  it("forgets a provider whose node was killed with -9, and one whose node stopped, at once", function()
    for _, how in ipairs({ "KILL", "TERM" }) do
      local name = "d-" .. how
      start_node(name)
      local p = client(name, "prov")
      provide(p, "s87/gone-" .. how, 1)
      local result = make("a", "s87/gone-" .. how, 1)
      local req = p.expect({ topic = RPC, action = REQUEST })
      p.send({ topic = RPC, action = ACCEPT, correlationId = req.correlationId, name = "s87/gone-" .. how })
      p.send({ topic = RPC, action = RESPONSE, correlationId = req.correlationId, name = "s87/gone-" .. how, data = "1" })
      assert.is_true(result().success)
      stop_node(name, how)
      if how == "TERM" then
        assert.equal(0, redis:command({ "SCARD", "ms:rpc:p:s87/gone-" .. how }), "a graceful stop says so at once")
      end
      -- kill -9: another node's heartbeat check finds it dead (cluster/presence.lua)
      poll("the dead node's provider forgotten", function()
        return redis:command({ "SCARD", "ms:rpc:p:s87/gone-" .. how }) == 0
      end)
      local got = make("b", "s87/gone-" .. how)()
      assert.same({ false, "NO_RPC_PROVIDER" }, { got.success, got.errorEvent })
    end
  end)

  it("lets the real client on node a provide what the real client on node c makes", function()
    local out = dir .. "/real.out"
    local script = io.popen("env -u LD_PRELOAD node spec/support/cluster_rpc.js " .. nodes.a.port .. " "
      .. nodes.c.port .. " > " .. out, "w")
    local function output()
      local f = io.open(out)
      local text = f and f:read("a") or ""
      if f then f:close() end
      return text
    end
    poll("the provider ready", function() return output():find("ready", 1, true) end)
    poll("the provider in Redis", function() return redis:command({ "SCARD", "ms:rpc:p:s87/real" }) == 1 end)
    script:write("go\n")
    script:close() -- waits for the script to end
    local text = output()
    local got = assert(json.decode((assert(text:match("\n(%b{})"), text))))
    assert.is_nil(got.error, text)
    assert.same({ sum = 42, by = "ann" }, got.ok.result)
    assert.equal(json.null, got.ok.err)
    assert.same({ err = "no 1" }, got.failed)
    assert.equal(2, got.seen)
  end)

  it("re-registers providers by itself after Redis restarts empty", function()
    local p = client("b", "prov")
    provide(p, "s87/again", 1)
    cl:restart_redis_empty() -- only re-registration brings the provider back
    poll("the provider re-registered", function()
      return redis:command({ "SCARD", "ms:rpc:p:s87/again" }) == 1
    end)
    -- and node b's channel is subscribed again: a make from c reaches it
    poll("node b subscribed again", function()
      local n = 0
      for _, ch in ipairs(redis:command({ "PUBSUB", "CHANNELS", "ms:c:n:*" }) or {}) do n = n + (ch and 1 or 0) end
      return n == 3
    end)
    local result = make("c", "s87/again", 7)
    local req = p.expect({ topic = RPC, action = REQUEST, name = "s87/again" })
    p.send({ topic = RPC, action = ACCEPT, correlationId = req.correlationId, name = "s87/again" })
    p.send({ topic = RPC, action = RESPONSE, correlationId = req.correlationId, name = "s87/again", data = "8" })
    assert.same({ success = true, data = 8 }, result())
    p.ws:close_handshake(1000)
  end)
end)
