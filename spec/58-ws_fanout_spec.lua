-- The fan-out in C (core.ws_fanout, csrc/ws.c) behind Realtime:broadcast:
-- one message to every subscriber, encoded once per transport and only for
-- the transports present, written without Lua per subscriber; small frames
-- are corked and written once per loop turn, so several emits in one turn
-- arrive whole and in order.
local binary = require "moonstream.realtime.binary"
local json = require "moonstream.json"
local core = require "moonstream.core"
local H = require "spec.support.helpers"

local connect = H.realtime_client

describe("WebSocket fan-out in C", function()
  local t

  after_each(function()
    if t then t:stop() end
    t = nil
  end)

  local function subscribe(c, name)
    c.send({ topic = 4, action = 3, names = { name }, correlationId = "0" })
    c.expect({ isAck = true })
  end

  local function binary_subscriber(name)
    local c = connect(t, "/deepstream")
    local function send(m) assert(c.ws:send_binary(binary.encode(m))) end
    local function recv() return assert(binary.decode(assert(c.ws:read_message()))) end
    send({ topic = "CONNECTION", action = "CHALLENGE" })
    assert.equal("ACCEPT", recv().action)
    send({ topic = "AUTH", action = "REQUEST", data = '{"username":"bin"}' })
    assert.equal("AUTH_SUCCESSFUL", recv().action)
    send({ topic = "EVENT", action = "SUBSCRIBE", names = json.array({ name }), correlationId = "0" })
    assert.is_true(recv().isAck)
    return recv
  end

  it("encodes once per transport present and reaches every subscriber but the one excluded", function()
    t = H.start()
    local rt = t.server.realtime
    local a, b, c = connect(t), connect(t), connect(t)
    a.login("a"); b.login("b"); c.login("c")
    for _, x in ipairs({ a, b, c }) do subscribe(x, "news") end
    local conns = rt.events.subs:subscribers("news")
    local except
    for conn in pairs(conns) do if conn.user and conn.user.id == "c" then except = conn end end
    local encoded = {}
    local sent, failed = core.ws_fanout(conns, except, function(is_binary)
      encoded[#encoded + 1] = is_binary
      return '{"topic":4,"action":2,"name":"news","data":"1"}'
    end)
    assert.equal(2, sent)
    assert.is_nil(failed)
    assert.same({ false }, encoded) -- json only: no binary subscriber, no binary encoding
    a.expect({ topic = 4, action = 2, name = "news", data = "1" })
    b.expect({ topic = 4, action = 2, name = "news", data = "1" })
    assert.same({}, c.drain())
    -- a binary subscriber joins: one encoding each
    local brecv = binary_subscriber("news")
    encoded = {}
    sent = core.ws_fanout(rt.events.subs:subscribers("news"), nil, function(is_binary)
      encoded[#encoded + 1] = is_binary
      return is_binary and binary.encode({ topic = "EVENT", action = "EMIT", name = "news", data = "2" })
        or '{"topic":4,"action":2,"name":"news","data":"2"}'
    end)
    assert.equal(4, sent)
    table.sort(encoded, function(x, y) return not x and y end)
    assert.same({ false, true }, encoded)
    local m = brecv()
    assert.same({ "EMIT", "news", "2" }, { m.action, m.name, m.data })
  end)

  it("reports a closed connection instead of writing to it, and skips one no longer open", function()
    t = H.start()
    local rt = t.server.realtime
    local a, b = connect(t), connect(t)
    a.login("a"); b.login("b")
    subscribe(a, "x"); subscribe(b, "x")
    local conns = rt.events.subs:subscribers("x")
    local ca, cb
    for conn in pairs(conns) do if conn.user.id == "a" then ca = conn else cb = conn end end
    ca.ws:close(1000)           -- ws.c closing, the realtime layer not told yet
    local sent, failed = core.ws_fanout(conns, nil, function() return "{}" end)
    assert.equal(1, sent)
    assert.same({ [ca] = "closed" }, failed)
    cb.open = false             -- the realtime layer forgot it: not even tried
    sent, failed = core.ws_fanout({ [cb] = true }, nil, function() error("not needed") end)
    assert.equal(0, sent)
    assert.is_nil(failed)
    cb.open = true
  end)

  it("delivers many emits of one loop turn whole and in order", function()
    t = H.start()
    local a, b = connect(t), connect(t, "/deepstream-json")
    a.login("a"); b.login("b")
    subscribe(a, "seq"); subscribe(b, "seq")
    local events = t.server.realtime.events
    -- 300 emits in one turn: about 15 KB corked per subscriber, small and large frames mixed
    for i = 1, 300 do
      assert(events:emit_from_server("seq", { i = i, pad = string.rep("p", i % 7 == 0 and 5000 or 10) }))
    end
    for _, c in ipairs({ a, b }) do
      for i = 1, 300 do
        local m = c.expect({ topic = 4, action = 2, name = "seq" })
        assert.equal(i, (json.decode(m.data) or m.parsedData).i)
      end
    end
  end)
end)
