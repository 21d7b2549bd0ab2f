-- deepstream's heartbeat answered in C (csrc/ws.c, ws:answer_pings) and the
-- idle timeout kept there too (req:upgrade's idle_timeout): a logged-in
-- client's PING gets its PONG on both transports without the realtime
-- layer's message handler running (its `received` count stays put), a
-- silent client is still closed after two heartbeat intervals, and a client
-- that sends nothing but pings stays connected.
local binary = require "moonstream.realtime.binary"
local json = require "moonstream.json"
local core = require "moonstream.core"
local H = require "spec.support.helpers"
local WS = require "support.ws_client"

local OP = WS.OP
local connect = H.realtime_client

-- The exact frames @deepstream/client sends (spec/ws-protocol.md 2 and 5.4,
-- the captured binary PING), not the codecs' constants: what the server
-- matches must be what real clients send.
local JSON_PING = '{"topic":2,"action":2,"isAck":false}'
local BINARY_PING = "\x06\x10\x02\x1a\x02\x08\x02"

describe("WebSocket heartbeat in C", function()
  local t

  after_each(function()
    if t then t:stop() end
    t = nil
  end)

  local function received() return t.server.realtime.stats.received end

  -- A logged-in binary client: send(msg), raw() -> the next binary message,
  -- recv() -> it decoded.
  local function binary_client(name)
    local c = connect(t, "/deepstream")
    local b = { ws = c.ws }
    function b.send(m) assert(c.ws:send_binary(binary.encode(m))) end
    function b.raw()
      local data, op = c.ws:read_message()
      assert(data, "expected a message, got " .. tostring(op))
      assert.equal(OP.BINARY, op)
      return data
    end
    function b.recv() return assert(binary.decode(b.raw())) end
    b.send({ topic = "CONNECTION", action = "CHALLENGE" })
    assert.equal("ACCEPT", b.recv().action)
    b.send({ topic = "AUTH", action = "REQUEST", data = '{"username":"' .. name .. '"}' })
    assert.equal("AUTH_SUCCESSFUL", b.recv().action)
    return b
  end

  it("answers a json client's PING with PONG without the Lua handler", function()
    t = H.start()
    local a = connect(t)
    a.login("ann")
    local before = received()
    for _ = 1, 3 do
      assert(a.ws:send_text(JSON_PING))
      local data, op = a.ws:read_message()
      assert.equal(OP.TEXT, op)
      assert.same({ topic = 2, action = 3 }, json.decode(data))
    end
    assert.equal(before, received())
    -- another spelling of a PING still reaches the Lua handler, and is answered
    a.send('{"action":2,"topic":2}')
    a.expect({ topic = 2, action = 3 })
    assert.equal(before + 1, received())
  end)

  it("answers a binary client's PING with PONG without the Lua handler", function()
    t = H.start()
    local b = binary_client("bin")
    local before = received()
    for _ = 1, 3 do
      assert(b.ws:send_binary(BINARY_PING))
      local m = b.recv()
      assert.same({ "CONNECTION", "PONG" }, { m.topic, m.action })
    end
    assert.equal(before, received())
  end)

  it("ignores a PING before login and keeps answers in order after it", function()
    t = H.start()
    local a = connect(t)
    assert(a.ws:send_text(JSON_PING))
    a.send({ topic = 2, action = 5 })
    a.expect({ topic = 2, action = 4 }) -- the first answer is the challenge's
    a.send({ topic = 3, action = 2, parsedData = { username = "ann" } })
    a.expect({ topic = 3, action = 3 })
    -- a subscription then a PING, written together: the ack comes before the PONG
    a.send({ topic = 4, action = 3, names = { "x" }, correlationId = "1" })
    assert(a.ws:send_text(JSON_PING))
    a.expect({ topic = 4, action = 3, isAck = true })
    a.expect({ topic = 2, action = 3 })
  end)

  it("closes a silent client after two heartbeat intervals", function()
    t = H.start({ realtime = { heartbeatInterval = 40 } })
    local a = connect(t)
    a.login("ann")
    assert.equal(1, t.server.realtime:connections())
    local f = assert(a.ws:read_frame())
    assert.equal(OP.CLOSE, f.opcode)
    assert.equal("", f.payload) -- no status code, as deepstream closes
    assert.equal(0, t.server.realtime:connections())
  end)

  it("keeps clients that send only pings, while a silent one is closed", function()
    -- an interval long enough for a ping round trip on a loaded machine under ASan
    t = H.start({ realtime = { heartbeatInterval = 250 } })
    local pinger, silent, bin = connect(t), binary_client("silent"), nil
    pinger.login("ann")
    bin = binary_client("bin")
    local start, rounds = core.now(), 0
    -- pings as fast as the pongs come, for 6 intervals (3 idle timeouts)
    while core.now() - start < 1500 do
      assert(pinger.ws:send_text(JSON_PING))
      assert.same({ topic = 2, action = 3 }, json.decode(assert(pinger.ws:read_message())))
      assert(bin.ws:send_binary(BINARY_PING))
      assert.equal("PONG", bin.recv().action)
      rounds = rounds + 1
    end
    assert.is_true(rounds > 1)
    local f = assert(silent.ws:read_frame())
    assert.equal(OP.CLOSE, f.opcode)
    assert.equal(2, t.server.realtime:connections())
    pinger.send({ topic = 4, action = 3, names = { "still" }, correlationId = "2" })
    pinger.expect({ topic = 4, action = 3, isAck = true })
  end)
end)
