-- The realtime server (lua/moonstream/realtime): deepstream's WebSocket
-- protocol, driven frame by frame by a raw client (spec/support/ws_client.lua)
-- against an in-process server on port 0, both on the server's loop. The
-- frames are deepstream's; HTTP requests go through
-- the helpers' libcurl client so the cross-surface cases run on one thread.
local json = require "moonstream.json"
local H = require "spec.support.helpers"
local WS = require "support.ws_client"

local OP = WS.OP

local connect = H.realtime_client

-- POST /api with the commands; returns the decoded response.
local function api(t, ...)
  local res, body = t:api({ ... })
  assert.equal(200, res.status)
  return body
end

describe("realtime server", function()
  local t

  local function start(cfg, setup)
    t = H.start(cfg, setup)
    return t
  end

  -- A server and two logged-in JSON clients, ann (a) and bob (b).
  local function two_clients()
    start()
    local a, b = connect(t), connect(t)
    a.login("ann"); b.login("bob")
    return a, b
  end

  -- Both clients subscribe to record name (SUBSCRIBECREATEANDREAD: ack, then the record).
  local function subscribe_both(a, b, name)
    for _, c in ipairs({ a, b }) do
      c.send({ topic = 5, action = 23, names = { name }, correlationId = "0" })
      c.expect({ isAck = true }); c.expect({ action = 4 })
    end
  end

  after_each(function()
    if t then t:stop() end
    t = nil
  end)

  describe("connection lifecycle", function()
    it("accepts the challenge and logs in with open auth", function()
      start()
      local a = connect(t)
      a.send({ topic = 2, action = 5, url = "ws://x/deepstream-json", protocolVersion = "0.1a" })
      a.expect({ topic = 2, action = 4 })
      a.send({ topic = 3, action = 2, parsedData = {}, data = "{}", isAck = false })
      local m = a.expect({ topic = 3, action = 3 })
      assert.is_nil(m.parsedData)
      assert.is_nil(m.data)
    end)

    it("answers messages sent before the challenge with CONNECTION.INVALID_MESSAGE and stays open", function()
      start()
      local a = connect(t)
      a.send({ topic = 4, action = 3, names = { "x" }, correlationId = "0" })
      a.expect({ topic = 2, action = 101, originalTopic = 4, originalAction = 3 })
      a.send('[{"topic":4},{"topic":5}]')
      local m = a.expect({ topic = 2, action = 101 })
      assert.is_nil(m.originalTopic)
      a.login("ann")
    end)

    it("answers non-AUTH messages after ACCEPT with AUTH.INVALID_MESSAGE", function()
      start()
      local a = connect(t)
      a.send({ topic = 2, action = 5 })
      a.expect({ topic = 2, action = 4 })
      a.send({ topic = 4, action = 2, name = "e" })
      a.expect({ topic = 3, action = 101, originalTopic = 4, originalAction = 2 })
      a.send({ topic = 3, action = 2, parsedData = { username = "ann" } })
      a.expect({ topic = 3, action = 3 })
    end)

    it("closes after AUTH data that is not an object", function()
      start()
      local a = connect(t)
      a.send({ topic = 2, action = 5 })
      a.expect({ topic = 2, action = 4 })
      a.send({ topic = 3, action = 2, data = '"str"' })
      a.expect({ topic = 3, action = 102, originalAction = 2 })
      assert.is_true(a.closed())
    end)

    it("closes on a text frame that is not JSON", function()
      start()
      local a = connect(t)
      a.send("hello")
      assert.is_true(a.closed())
    end)

    it("closes a json connection that sends a binary frame", function()
      start()
      local a = connect(t)
      a.ws:send_binary("\6\16\2\26\2\8\5")
      assert.is_true(a.closed())
    end)

    it("counts failed logins and stops at realtime.maxAuthAttempts", function()
      start({ realtime = { maxAuthAttempts = 2 } }, function(server)
        local real = server.auth
        server.auth = setmetatable({
          authenticate = function(_, data, conn, cb)
            if data.password == "right" then return real:authenticate(data, conn, cb) end
            cb(nil)
          end,
        }, { __index = function(_, k) return function(_, ...) return real[k](real, ...) end end })
      end)
      local a = connect(t)
      a.send({ topic = 2, action = 5 })
      a.expect({ topic = 2, action = 4 })
      a.send({ topic = 3, action = 2, parsedData = { username = "ann", password = "wrong" } })
      a.expect({ topic = 3, action = 4 })
      -- still awaiting authentication: a good login works on the same connection
      local b = connect(t)
      b.send({ topic = 2, action = 5 })
      b.expect({ topic = 2, action = 4 })
      b.send({ topic = 3, action = 2, parsedData = { username = "bob", password = "wrong" } })
      b.expect({ topic = 3, action = 4 })
      b.send({ topic = 3, action = 2, parsedData = { username = "bob", password = "right" } })
      b.expect({ topic = 3, action = 3 })
      a.send({ topic = 3, action = 2, parsedData = { username = "ann", password = "wrong" } })
      a.expect({ topic = 3, action = 4 })
      a.expect({ topic = 3, action = 100 })
      assert.is_true(a.closed())
    end)

    it("sends AUTHENTICATION_TIMEOUT and closes when no login comes in time", function()
      start({ realtime = { unauthenticatedClientTimeout = 60 } })
      local a = connect(t)
      a.send({ topic = 2, action = 5 })
      a.expect({ topic = 2, action = 4 })
      a.expect({ topic = 2, action = 100 })
      assert.is_true(a.closed())
    end)

    it("answers PING with PONG only after login", function()
      start()
      local a = connect(t)
      a.send({ topic = 2, action = 2 })
      -- nothing for the PING: the first answer is the challenge's
      a.send({ topic = 2, action = 5 })
      a.expect({ topic = 2, action = 4 })
      a.send({ topic = 3, action = 2, parsedData = {} })
      a.expect({ topic = 3, action = 3 })
      a.send({ topic = 2, action = 2, isAck = false })
      a.expect({ topic = 2, action = 3 })
    end)

    it("drops a client silent for two heartbeat intervals", function()
      start({ realtime = { heartbeatInterval = 40 } })
      local a = connect(t)
      a.login("ann")
      local before = t.server.realtime:connections()
      assert.equal(1, before)
      assert.is_true(a.closed())
      assert.equal(0, t.server.realtime:connections())
    end)

    it("answers an unknown topic with PARSER.UNKNOWN_TOPIC", function()
      start()
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 42, action = 1 })
      a.expect({ topic = 1, action = 1, originalTopic = 42 })
    end)
  end)

  describe("events", function()
    it("delivers an emit to every subscriber but the sender, acks bulk subscriptions", function()
      local a, b = two_clients()
      a.send({ topic = 4, action = 3, names = { "news", "other" }, correlationId = "0", isAck = false })
      a.expect({ topic = 4, action = 3, correlationId = "0", isAck = true })
      b.send({ topic = 4, action = 3, names = { "news" }, correlationId = "0" })
      b.expect({ topic = 4, action = 3, correlationId = "0", isAck = true })
      b.send({ topic = 4, action = 2, name = "news", parsedData = { headline = "hi" }, data = '{"headline":"hi"}' })
      local m = a.expect({ topic = 4, action = 2, name = "news" })
      assert.same({ headline = "hi" }, json.decode(m.data) or m.parsedData)
      b.send({ topic = 4, action = 2, name = "news", parsedData = false })
      m = a.expect({ topic = 4, action = 2, name = "news" })
      assert.equal("false", m.data)
      b.send({ topic = 4, action = 2, name = "news" })
      m = a.expect({ topic = 4, action = 2, name = "news" })
      assert.is_nil(m.data)
      assert.is_nil(m.parsedData)
      assert.same({}, b.drain()) -- the sender got none of its own emits
    end)

    it("delivers between the json and the binary transport", function()
      local binary = require "moonstream.realtime.binary"
      start()
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 4, action = 3, names = { "mixed" }, correlationId = "0" })
      a.expect({ isAck = true })
      local b = connect(t, "/deepstream")
      local function bsend(m) assert(b.ws:send_binary(binary.encode(m))) end
      local function brecv()
        local data = assert(b.ws:read_message())
        return assert(binary.decode(data))
      end
      bsend({ topic = "CONNECTION", action = "CHALLENGE" })
      assert.equal("ACCEPT", brecv().action)
      bsend({ topic = "AUTH", action = "REQUEST", data = '{"username":"bin"}' })
      assert.equal("AUTH_SUCCESSFUL", brecv().action)
      bsend({ topic = "EVENT", action = "SUBSCRIBE", names = json.array({ "mixed" }), correlationId = "0" })
      local ack = brecv()
      assert.same({ "SUBSCRIBE", true }, { ack.action, ack.isAck })
      bsend({ topic = "EVENT", action = "EMIT", name = "mixed", data = '{"from":"binary"}' })
      local m = a.expect({ topic = 4, action = 2, name = "mixed" })
      assert.same({ from = "binary" }, json.decode(m.data))
      a.send({ topic = 4, action = 2, name = "mixed", parsedData = { from = "json" } })
      m = brecv()
      assert.same({ "EVENT", "EMIT", "mixed" }, { m.topic, m.action, m.name })
      assert.same({ from = "json" }, json.decode(m.data))
    end)

    it("reports a second subscription to the same name, then acks", function()
      start()
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 4, action = 3, names = { "dup" }, correlationId = "0" })
      a.expect({ topic = 4, action = 3, isAck = true })
      a.send({ topic = 4, action = 3, names = { "dup" }, correlationId = "1" })
      a.expect({ topic = 4, action = 106, originalAction = 3, name = "dup" })
      a.expect({ topic = 4, action = 3, correlationId = "1", isAck = true })
    end)

    it("stops delivering after unsubscribe", function()
      local a, b = two_clients()
      a.send({ topic = 4, action = 3, names = { "news" }, correlationId = "0" })
      a.expect({ isAck = true })
      a.send({ topic = 4, action = 4, names = { "news" }, correlationId = "1" })
      a.expect({ topic = 4, action = 4, correlationId = "1", isAck = true })
      b.send({ topic = 4, action = 2, name = "news", data = '"late"' })
      b.drain()
      assert.same({}, a.drain())
    end)

    it("delivers an HTTP emit to WebSocket subscribers and Lua listeners", function()
      local heard = {}
      start(nil, function(server) server:on_event("news", function(data) heard[#heard + 1] = data end) end)
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 4, action = 3, names = { "news" }, correlationId = "0" })
      a.expect({ isAck = true })
      local res = api(t, { topic = "event", action = "emit", eventName = "news", data = { n = 1, list = json.array() } })
      assert.equal("SUCCESS", res.result)
      local m = a.expect({ topic = 4, action = 2, name = "news" })
      local data = json.decode(m.data)
      assert.equal(1, data.n)
      assert.is_true(json.is_array(data.list)) -- [] stays an array on its way to the client
      assert.equal(1, #heard)
      -- and a client's emit reaches the Lua listener too
      a.send({ topic = 4, action = 2, name = "news", data = "7" })
      a.drain()
      assert.same({ { n = 1, list = json.array() }, 7 }, heard)
    end)

    it("tells a listener about matching subscriptions and their end", function()
      start()
      local p, s = connect(t), connect(t)
      p.login("provider"); s.login("sub")
      p.send({ topic = 4, action = 5, name = "weather/.*" })
      p.expect({ topic = 4, action = 5, name = "weather/.*", isAck = true })
      s.send({ topic = 4, action = 3, names = { "weather/london" }, correlationId = "0" })
      p.expect({ topic = 4, action = 11, name = "weather/.*", subscription = "weather/london" })
      p.send({ topic = 4, action = 7, name = "weather/.*", subscription = "weather/london" })
      s.expect({ isAck = true })
      s.send({ topic = 4, action = 4, names = { "weather/london" }, correlationId = "1" })
      p.expect({ topic = 4, action = 12, name = "weather/.*", subscription = "weather/london" })
    end)

    it("refuses a listen pattern it cannot match like JavaScript", function()
      start()
      local p = connect(t)
      p.login("provider")
      p.send({ topic = 4, action = 5, name = "(a|b)" })
      p.expect({ topic = 4, action = 100, name = "(a|b)" })
    end)
  end)

  describe("configuration", function()
    local config = require "moonstream.config"

    it("takes the realtime keys and checks them", function()
      local cfg = assert(config.validate({ realtime = { unauthenticatedClientTimeout = false, heartbeatInterval = 500 } }))
      assert.is_false(cfg.realtime.unauthenticatedClientTimeout)
      assert.equal(500, cfg.realtime.heartbeatInterval)
      assert.equal("/deepstream", cfg.realtime.urlPath) -- the rest of the section keeps its defaults
      local ok, err = config.validate({ realtime = { unauthenticatedClientTimeout = 0 } })
      assert.is_nil(ok)
      assert.equal("config key 'realtime.unauthenticatedClientTimeout' must be a positive integer or false (got 0)", err)
      ok, err = config.validate({ realtime = { urlPath = "deepstream" } })
      assert.is_nil(ok)
      assert.matches("realtime.urlPath", err, 1, true)
      ok, err = config.validate({ staticFiles = "/nonexistent/folder" })
      assert.is_nil(ok)
      assert.equal("config key 'staticFiles': folder '/nonexistent/folder' does not exist", err)
    end)

    it("serves static files from staticFiles, and nothing outside it", function()
      local dir = H.tmpdir()
      local f = assert(io.open(dir .. "/index.html", "w")); f:write("<p>hi</p>"); f:close()
      start({ staticFiles = dir })
      local res = t:request({ method = "GET", path = "/" })
      assert.equal(200, res.status)
      assert.equal("<p>hi</p>", res.body)
      for _, p in ipairs({ "/../etc/passwd", "/.hidden", "/nope.html", "/%2e%2e/x" }) do
        assert.equal(404, t:request({ method = "GET", path = p }).status, p)
      end
      -- a plain GET on a realtime path (no upgrade) is not found either
      assert.equal(404, t:request({ method = "GET", path = "/deepstream" }).status)
      H.rmdir(dir)
    end)
  end)

  describe("listen patterns", function()
    local translate = require("moonstream.realtime.listen").translate
    local function match(re, name) return name:find(assert(translate(re))) ~= nil end

    it("matches the JavaScript regex subset like JavaScript", function()
      assert.is_true(match("weather/.*", "weather/london"))
      assert.is_true(match("weather/.*", "xweather/"))     -- unanchored, as RegExp.test
      assert.is_false(match("^weather/.*", "xweather/"))
      assert.is_true(match("^car-\\d+$", "car-42"))
      assert.is_false(match("^car-\\d+$", "car-4x"))
      assert.is_true(match("a[b-d%]e", "a%e"))
      assert.is_true(match("a[b-d%]e", "ace"))
      assert.is_false(match("a[b-d%]e", "aae"))
      assert.is_true(match("1\\.5", "1.5"))
      assert.is_false(match("1\\.5", "125"))
    end)

    it("refuses what it cannot match the same way, or in bounded time", function()
      for _, re in ipairs({ "(a|b)", "a{2}", "a|b", "\\bword", "[abc", "*a", "a.*b.*c.*", "" }) do
        local lua_pattern, err = translate(re)
        assert.is_nil(lua_pattern, re)
        assert.is_string(err)
      end
    end)
  end)

  describe("records", function()
    it("creates a record at version 0 on subscribe, sends the ack first", function()
      start()
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 5, action = 23, names = { "cars/1", "cars/2" }, correlationId = "0" })
      a.expect({ topic = 5, action = 23, correlationId = "0", isAck = true })
      local m = a.expect({ topic = 5, action = 4, name = "cars/1", version = 0 })
      assert.equal("{}", m.data)
      a.expect({ topic = 5, action = 4, name = "cars/2", version = 0 })
    end)

    it("forwards updates and patches to other subscribers, not the writer", function()
      local a, b = two_clients()
      subscribe_both(a, b, "car")
      a.send({ topic = 5, action = 18, name = "car", version = 1, parsedData = { brand = "bmw", tags = { "a" } } })
      local m = b.expect({ topic = 5, action = 18, name = "car", version = 1, isWriteAck = false })
      assert.same({ brand = "bmw", tags = { "a" } }, json.decode(m.data))
      a.send({ topic = 5, action = 19, name = "car", version = 2, path = "tags[1]", data = '"b"' })
      b.expect({ topic = 5, action = 19, name = "car", version = 2, path = "tags[1]", data = '"b"' })
      a.send({ topic = 5, action = 20, name = "car", version = 3, path = "brand" })
      m = b.expect({ topic = 5, action = 19, name = "car", version = 3, path = "brand" })
      assert.is_nil(m.data)
      assert.same({}, a.drain())
      -- read back over HTTP: the same storage
      local res = api(t, { topic = "record", action = "read", recordName = "car" })
      assert.same({ success = true, version = 3, data = { tags = { "a", "b" } } }, res.body[1])
    end)

    it("acknowledges writes that ask for it, after they are stored", function()
      start()
      local a = connect(t)
      a.login("ann")
      local syncs = t.server.records:syncs()
      a.send({ topic = 5, action = 16, name = "other", version = -1, parsedData = { x = 1 },
        correlationId = "1", isWriteAck = true })
      a.expect({ topic = 5, action = 14, name = "other", correlationId = "1", isWriteAck = true })
      assert.is_true(t.server.records:syncs() > syncs) -- on disk before the ack
      a.send({ topic = 5, action = 17, name = "other", path = "y", version = -1, data = "2",
        correlationId = "2", isWriteAck = true })
      a.expect({ topic = 5, action = 14, correlationId = "2", isWriteAck = true })
      local res = api(t, { topic = "record", action = "read", recordName = "other" })
      assert.same({ x = 1, y = 2 }, res.body[1].data)
      assert.equal(2, res.body[1].version)
    end)

    it("answers version conflicts with the current version and data", function()
      start()
      local a = connect(t)
      a.login("ann")
      api(t, { topic = "record", action = "write", recordName = "raw/v", data = { 1, 2 } },
        { topic = "record", action = "write", recordName = "raw/v", data = { 1, 2 } })
      a.send({ topic = 5, action = 19, name = "raw/v", version = 2, path = "x", data = "1",
        isWriteAck = true, correlationId = "w2" })
      local m = a.expect({ topic = 5, action = 102, originalAction = 19, name = "raw/v", version = 2,
        isWriteAck = true, correlationId = "w2" })
      assert.same({ 1, 2 }, json.decode(m.data) or m.parsedData)
      a.send({ topic = 5, action = 18, name = "raw/v", version = 5, data = '{"a":5}' })
      a.expect({ topic = 5, action = 108, originalAction = 18, name = "raw/v", version = 2 })
      a.send({ topic = 5, action = 18, name = "raw/v", version = 3, data = '"str"' })
      a.expect({ topic = 5, action = 116, originalAction = 18, name = "raw/v" })
      a.send({ topic = 5, action = 19, name = "raw/none", version = 1, path = "x", data = "1" })
      a.expect({ topic = 5, action = 105, name = "raw/none", isError = true })
      -- a good write still goes through afterwards (no wedged record)
      a.send({ topic = 5, action = 18, name = "raw/v", version = 3, data = '{"ok":true}',
        isWriteAck = true, correlationId = "w3" })
      a.expect({ topic = 5, action = 14, correlationId = "w3" })
    end)

    it("answers snapshot, has and head", function()
      start()
      local a = connect(t)
      a.login("ann")
      api(t, { topic = "record", action = "write", recordName = "snap", data = { v = 2 } })
      a.send({ topic = 5, action = 3, name = "snap" })
      local m = a.expect({ topic = 5, action = 4, name = "snap", version = 1 })
      assert.same({ v = 2 }, json.decode(m.data))
      a.send({ topic = 5, action = 5, name = "snap" })
      a.expect({ topic = 5, action = 6, name = "snap", version = 1 })
      a.send({ topic = 5, action = 3, name = "nope" })
      a.expect({ topic = 5, action = 107, originalAction = 3, name = "nope", isError = true })
      a.send({ topic = 5, action = 5, name = "nope" })
      a.expect({ topic = 5, action = 6, name = "nope", version = -1 })
    end)

    it("sends an HTTP write to subscribed clients as an UPDATE with the new version", function()
      start()
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 5, action = 23, names = { "users/ann" }, correlationId = "0" })
      a.expect({ isAck = true }); a.expect({ action = 4, version = 0 })
      api(t, { topic = "record", action = "write", recordName = "users/ann", path = "address.city", data = "Oslo" })
      local m = a.expect({ topic = 5, action = 18, name = "users/ann", version = 1 })
      assert.same({ address = { city = "Oslo" } }, json.decode(m.data))
      api(t, { topic = "record", action = "delete", recordName = "users/ann" })
      a.expect({ topic = 5, action = 13, name = "users/ann" })
    end)

    it("deletes: DELETE_SUCCESS to the deleter, DELETED to the others", function()
      local a, b = two_clients()
      subscribe_both(a, b, "doomed")
      a.send({ topic = 5, action = 9, name = "doomed" })
      a.expect({ topic = 5, action = 10, name = "doomed" })
      b.expect({ topic = 5, action = 13, name = "doomed" })
      local res = api(t, { topic = "record", action = "head", recordName = "doomed" })
      assert.equal(-1, res.body[1].version)
    end)

    it("acks a discard and stops forwarding to that client", function()
      start()
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 5, action = 23, names = { "d" }, correlationId = "0" })
      a.expect({ isAck = true }); a.expect({ action = 4 })
      a.send({ topic = 5, action = 26, names = { "d" }, correlationId = "d" })
      a.expect({ topic = 5, action = 26, correlationId = "d", isAck = true })
      api(t, { topic = "record", action = "write", recordName = "d", data = { x = 1 } })
      assert.same({}, a.drain())
    end)
  end)

  describe("rpc", function()
    it("routes a make to a client provider and back; reject leads to NO_RPC_PROVIDER", function()
      start()
      local a, p = connect(t), connect(t)
      a.login("ann"); p.login("provider")
      p.send({ topic = 6, action = 8, names = { "add", "nope" }, correlationId = "0" })
      p.expect({ topic = 6, action = 8, correlationId = "0", isAck = true })
      a.send({ topic = 6, action = 2, name = "add", correlationId = "c1", parsedData = { a = 1, b = 2 } })
      local req = p.expect({ topic = 6, action = 2, name = "add", correlationId = "c1" })
      assert.same({ a = 1, b = 2 }, json.decode(req.data))
      p.send({ topic = 6, action = 4, name = "add", correlationId = "c1" })
      p.send({ topic = 6, action = 5, name = "add", correlationId = "c1", data = "3" })
      a.expect({ topic = 6, action = 4, name = "add", correlationId = "c1" })
      a.expect({ topic = 6, action = 5, name = "add", correlationId = "c1", data = "3" })
      a.send({ topic = 6, action = 2, name = "nope", correlationId = "c2", data = "1" })
      p.expect({ topic = 6, action = 2, correlationId = "c2" })
      p.send({ topic = 6, action = 6, name = "nope", correlationId = "c2" })
      a.expect({ topic = 6, action = 100, name = "nope", correlationId = "c2" })
      a.send({ topic = 6, action = 2, name = "nobody", correlationId = "c3", data = "1" })
      a.expect({ topic = 6, action = 100, name = "nobody", correlationId = "c3" })
      p.send({ topic = 6, action = 5, name = "x", correlationId = "nope", data = "1" })
      p.expect({ topic = 6, action = 103, correlationId = "nope", isError = true })
    end)

    it("prefers a Lua handler, and POST /api reaches client providers", function()
      start(nil, function(server) server:rpc("lua-add", function(d) return d.a + d.b end) end)
      local a, p = connect(t), connect(t)
      a.login("ann"); p.login("provider")
      a.send({ topic = 6, action = 2, name = "lua-add", correlationId = "c1", parsedData = { a = 2, b = 3 } })
      a.expect({ topic = 6, action = 5, name = "lua-add", correlationId = "c1", data = "5" })
      p.send({ topic = 6, action = 8, names = { "client-echo" }, correlationId = "0" })
      p.expect({ isAck = true })
      local done
      t.client:request({ method = "POST", url = t.url .. "/api", headers = { ["Content-Type"] = "application/json" },
        body = json.encode({ body = { { topic = "rpc", action = "make", rpcName = "client-echo", data = { x = 1 } } } }) },
        function(res) done = res end)
      local req = p.expect({ topic = 6, action = 2, name = "client-echo" })
      p.send({ topic = 6, action = 5, name = "client-echo", correlationId = req.correlationId, data = req.data })
      t:run_until(function() return done end)
      assert.same({ result = "SUCCESS", body = { { success = true, data = { x = 1 } } } }, json.decode(done.body))
    end)

    it("ends a call nobody accepts with ACCEPT_TIMEOUT", function()
      start({ rpc = { ackTimeout = 30 } })
      local a, p = connect(t), connect(t)
      a.login("ann"); p.login("provider")
      p.send({ topic = 6, action = 8, names = { "slow" }, correlationId = "0" })
      p.expect({ isAck = true })
      a.send({ topic = 6, action = 2, name = "slow", correlationId = "c1", data = "1" })
      p.expect({ topic = 6, action = 2, correlationId = "c1" })
      a.expect({ topic = 6, action = 101, name = "slow", correlationId = "c1" })
    end)

    it("moves a call on when its provider disconnects", function()
      start()
      local a, p1 = connect(t), connect(t)
      a.login("ann"); p1.login("p1")
      p1.send({ topic = 6, action = 8, names = { "r" }, correlationId = "0" })
      p1.expect({ isAck = true })
      a.send({ topic = 6, action = 2, name = "r", correlationId = "c1", data = "1" })
      p1.expect({ topic = 6, action = 2 })
      p1.ws:shutdown()
      a.expect({ topic = 6, action = 100, correlationId = "c1" })
    end)
  end)

  describe("presence", function()
    it("announces joins and leaves and answers queries, over WebSocket and HTTP", function()
      start()
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 7, action = 12 })
      a.expect({ topic = 7, action = 12, isAck = true })
      a.send({ topic = 7, action = 10, names = { "bob" }, correlationId = "0" })
      a.expect({ topic = 7, action = 10, correlationId = "0", isAck = true })
      local b1, b2 = connect(t), connect(t)
      b1.login("bob")
      a.expect({ topic = 7, action = 7, name = "bob" })
      a.expect({ topic = 7, action = 6, name = "bob" })
      b2.login("bob") -- a second connection of bob: nothing new
      a.send({ topic = 7, action = 2 })
      local m = a.expect({ topic = 7, action = 3 })
      assert.same({ "bob" }, m.names)
      a.send({ topic = 7, action = 4, names = { "bob", "dave" }, correlationId = "q" })
      m = a.expect({ topic = 7, action = 5, correlationId = "q" })
      assert.same({ bob = true, dave = false }, json.decode(m.data))
      local res = api(t, { topic = "presence", action = "query" })
      table.sort(res.body[1].users)
      assert.same({ "ann", "bob" }, res.body[1].users)
      b1.ws:close_handshake(1000)
      assert.same({}, a.drain())
      b2.ws:close_handshake(1000)
      a.expect({ topic = 7, action = 9, name = "bob" })
      a.expect({ topic = 7, action = 8, name = "bob" })
      res = api(t, { topic = "presence", action = "query", names = { "bob" } })
      assert.same({ bob = false }, res.body[1].users)
    end)
  end)

  describe("permissions", function()
    it("denies WebSocket actions the permission rules refuse", function()
      start({ permissions = {
        event = { ["*"] = { publish = true, subscribe = true }, ["forbidden/*"] = { publish = false, subscribe = false } },
        record = { ["*"] = { create = true, write = true, read = true }, ["forbidden/*"] = { create = false, write = false } },
        rpc = { ["*"] = { request = true, provide = true }, ["forbidden-rpc"] = { request = false } },
      } })
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 4, action = 3, names = { "forbidden/x" }, correlationId = "0" })
      a.expect({ topic = 4, action = 104, originalAction = 3, name = "forbidden/x", isError = true, correlationId = "0" })
      a.send({ topic = 4, action = 2, name = "forbidden/x", data = "1" })
      a.expect({ topic = 4, action = 104, originalAction = 2, name = "forbidden/x", isError = true })
      a.send({ topic = 5, action = 16, name = "forbidden/1", version = -1, data = '{"a":1}',
        correlationId = "1", isWriteAck = true })
      a.expect({ topic = 5, action = 115, originalAction = 16, isError = true, correlationId = "1", isWriteAck = true })
      a.send({ topic = 6, action = 2, name = "forbidden-rpc", correlationId = "r", data = "1" })
      a.expect({ topic = 6, action = 107, originalAction = 2, isError = true, correlationId = "r" })
      assert.is_nil(t.server.records:get("forbidden/1")) -- nothing was written
    end)
  end)

  describe("permissions from the config (permissions.lua rules)", function()
    it("apply to WebSocket subscribe, emit, write and RPC as to HTTP commands", function()
      start({ permissions = {
        event = { ["*"] = { publish = true, subscribe = true }, ["forbidden/*"] = { subscribe = false },
          ["boom/*"] = { publish = function() error("rule bug") end } },
        record = {
          ["*"] = { create = true, write = true, read = true, delete = true },
          ["users/$id"] = { write = function(ctx) return ctx.user.id == ctx.vars.id end },
          ["limits/*"] = { write = function(ctx) return type(ctx.data) ~= "table" or ctx.data.n == nil or ctx.data.n < 10 end },
          ["nocreate/*"] = { create = false, read = true },
        },
        rpc = { ["*"] = { request = true, provide = true }, ["admin/*"] = { request = false } },
        presence = { ["*"] = { allow = true } },
      } })
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 4, action = 3, names = { "forbidden/x", "fine" }, correlationId = "0" })
      a.expect({ topic = 4, action = 104, name = "forbidden/x", isError = true })
      a.expect({ topic = 4, action = 3, correlationId = "0", isAck = true })
      -- a rule that raises: MESSAGE_PERMISSION_ERROR, not MESSAGE_DENIED
      a.send({ topic = 4, action = 2, name = "boom/1", data = "1" })
      a.expect({ topic = 4, action = 103, originalAction = 2, name = "boom/1", isError = true })
      a.send({ topic = 5, action = 16, name = "users/bob", version = -1, data = '{"a":1}', correlationId = "1", isWriteAck = true })
      a.expect({ topic = 5, action = 115, name = "users/bob", correlationId = "1", isWriteAck = true })
      a.send({ topic = 5, action = 16, name = "users/ann", version = -1, data = '{"a":1}', correlationId = "2", isWriteAck = true })
      a.expect({ topic = 5, action = 14, name = "users/ann", correlationId = "2" })
      -- the rule sees the decoded data
      a.send({ topic = 5, action = 16, name = "limits/1", version = -1, data = '{"n":50}', correlationId = "3", isWriteAck = true })
      a.expect({ topic = 5, action = 115, name = "limits/1", correlationId = "3" })
      a.send({ topic = 5, action = 16, name = "limits/1", version = -1, data = '{"n":5}', correlationId = "4", isWriteAck = true })
      a.expect({ topic = 5, action = 14, name = "limits/1", correlationId = "4" })
      a.send({ topic = 6, action = 2, name = "admin/reset", correlationId = "r", data = "1" })
      a.expect({ topic = 6, action = 107, name = "admin/reset", correlationId = "r", isError = true })
      -- getRecord of a missing record needs create as well as read
      a.send({ topic = 5, action = 23, names = { "nocreate/1" }, correlationId = "5" })
      a.expect({ topic = 5, action = 23, correlationId = "5", isAck = true })
      a.expect({ topic = 5, action = 115, originalAction = 23, name = "nocreate/1", isError = true })
      assert.is_nil(t.server.records:get("nocreate/1"))
    end)
  end)

  describe("untrusted input", function()
    it("survives the frames that crash the reference server (binary endpoint)", function()
      start()
      local a = connect(t, "/deepstream")
      a.ws:send_binary(string.char(0x06, 0x10, 0x02, 0x1a, 0x02, 0x08, 0x05))
      local f = assert(a.ws:read_frame())
      assert.equal(OP.BINARY, f.opcode)
      -- AUTH.REQUEST whose data is "{bad"
      a.ws:send_binary(string.char(0x0c, 0x10, 0x03, 0x1a, 0x08, 0x08, 0x02, 0x12, 0x04) .. "{bad")
      f = assert(a.ws:read_frame())
      assert.equal(OP.BINARY, f.opcode) -- AUTH.INVALID_MESSAGE_DATA
      assert.is_true(a.closed())
      -- RECORD.UPDATE whose data is "{bad", after a good login
      local b = connect(t, "/deepstream")
      b.ws:send_binary(string.char(0x06, 0x10, 0x02, 0x1a, 0x02, 0x08, 0x05))
      assert(b.ws:read_frame())
      b.ws:send_binary(string.char(0x0a, 0x10, 0x03, 0x1a, 0x06, 0x08, 0x02, 0x12, 0x02) .. "{}")
      assert(b.ws:read_frame())
      b.ws:send_binary(string.char(0x11, 0x10, 0x05, 0x1a, 0x0d, 0x08, 0x12, 0x12, 0x04) .. "{bad"
        .. string.char(0x32, 0x01) .. "x" .. string.char(0x68, 0x01))
      f = assert(b.ws:read_frame())
      assert.equal(OP.BINARY, f.opcode) -- RECORD.INVALID_MESSAGE_DATA
      -- still serving
      local res = t:request({ method = "GET", path = "/health-check" })
      assert.equal(200, res.status)
    end)

    it("answers json RECORD.UPDATE data that is not JSON with INVALID_MESSAGE_DATA", function()
      start()
      local a = connect(t)
      a.login("ann")
      a.send({ topic = 5, action = 18, name = "x", version = 1, data = "{bad" })
      a.expect({ topic = 5, action = 116, data = "{bad" }) -- echoed as the reference's json endpoint does
      a.send({ topic = 2, action = 2 })
      a.expect({ topic = 2, action = 3 })
    end)

    it("disconnects a client that does not read instead of buffering without bound", function()
      start({ realtime = { maxBufferedBytes = 65536 } })
      local slow, fast = connect(t), connect(t)
      slow.login("slow"); fast.login("fast")
      for _, c in ipairs({ slow, fast }) do
        c.send({ topic = 4, action = 3, names = { "flood" }, correlationId = "0" })
        c.expect({ isAck = true })
      end
      local rt = t.server.realtime
      local payload = { text = string.rep("x", 1000) }
      -- emit until the slow client is dropped (bounded: 64 MiB at most)
      local n = 0
      while rt.stats.slow == 0 and n < 65536 do
        for _ = 1, 64 do rt.events:emit_from_server("flood", payload) end
        n = n + 64
        t.loop:run_once(0)
        -- the fast client keeps up
        while true do
          local f = fast.ws.sock:receive(65536)
          if not f then break end
        end
      end
      assert.equal(1, rt.stats.slow)
      assert.equal(1, rt:connections())
      assert.is_true(n * 1000 < 64 * 1024 * 1024)
    end)
  end)
end)
