-- WebSocket transport (csrc/ws.c): libmicrohttpd's upgrade, RFC 6455 framing,
-- the socket in moonstream's loop. A raw client (spec/support/ws_client.lua,
-- LuaSocket) talks to an in-process server on port 0; when node and the
-- reference's `ws` package are installed, the `ws` client library too.
local core = require "moonstream.core"
local WS = require "support.ws_client"

local OP = WS.OP
local MODE = os.getenv("MOONSTREAM_TEST_MODE") or "plain"

local function rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local function open_fds()
  local p = io.popen("ls /proc/" .. (io.open("/proc/self/stat"):read("n")) .. "/fd | wc -l")
  local n = p:read("n")
  p:close()
  return n
end

describe("WebSocket transport", function()
  local loop, srv, port
  local opts        -- per test: options for req:upgrade
  local log         -- events seen by the server: { "open", id } { "message", data, is_binary } { "close", code, reason }
  local conns       -- server-side WebSocket objects by order of upgrade
  local on_message  -- per test: replaces the echo

  local function run_until(done, what)
    for _ = 1, 2000 do
      if done() then return end
      loop:run_once(5)
    end
    error("timed out waiting for " .. (what or "a condition"))
  end

  local function find(kind)
    for _, e in ipairs(log) do
      if e[1] == kind then return e end
    end
  end

  before_each(function()
    loop = assert(core.loop())
    opts, log, conns, on_message = {}, {}, {}, nil
    srv = assert(core.http_server(loop, { port = 0, handler = function(req)
      if req:path() ~= "/ws" then return req:respond(404, "not found") end
      local ws, err = req:upgrade(opts)
      if not ws then return req:respond(400, err) end
      conns[#conns + 1] = ws
      ws:on_open(function(w) log[#log + 1] = { "open", w:id() } end)
      ws:on_message(function(data, is_binary, w)
        log[#log + 1] = { "message", data, is_binary }
        if on_message then return on_message(data, is_binary, w) end
        if is_binary then w:send_binary(data) else w:send_text(data) end
      end)
      ws:on_close(function(code, reason) log[#log + 1] = { "close", code, reason } end)
    end }))
    port = srv:port()
  end)

  after_each(function()
    srv:close()
    loop:close()
  end)

  describe("handshake", function()
    it("answers 101 with the RFC 6455 accept value and opens the connection", function()
      local c = WS.connect(loop, port, "/ws", { headers = { ["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ==" } })
      assert.are.equal(101, c.status)
      assert.are.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", c.headers["sec-websocket-accept"])
      assert.are.equal("websocket", c.headers["upgrade"]:lower())
      assert.are.equal("upgrade", c.headers["connection"]:lower())
      run_until(function() return find("open") end, "on_open")
      assert.are.equal("127.0.0.1", conns[1]:remote_address())
      assert.are.equal("open", conns[1]:state())
      assert.are.equal(0, srv:stats().active) -- an upgraded request is not in flight
    end)

    it("answers 400 to bad handshakes and keeps serving", function()
      local cases = {
        { headers = { ["Sec-WebSocket-Key"] = false }, err = "invalid Sec-WebSocket-Key" },
        { headers = { ["Sec-WebSocket-Key"] = "short==" }, err = "invalid Sec-WebSocket-Key" },
        { headers = { ["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZR==" }, err = "invalid Sec-WebSocket-Key" },
        { headers = { ["Sec-WebSocket-Version"] = "8" }, err = "unsupported Sec-WebSocket-Version (13 expected)" },
        { headers = { ["Sec-WebSocket-Version"] = false }, err = "unsupported Sec-WebSocket-Version (13 expected)" },
        { headers = { Upgrade = false }, err = 'missing "Upgrade: websocket"' },
        { headers = { Upgrade = "h2c" }, err = 'missing "Upgrade: websocket"' },
        { headers = { Connection = "keep-alive" }, err = 'missing "Connection: Upgrade"' },
        { method = "POST", headers = { ["Content-Length"] = "0" }, err = "a WebSocket handshake must be a GET request" },
      }
      for i, case in ipairs(cases) do
        local c = WS.connect(loop, port, "/ws", case)
        assert.are.equal(400, c.status, "case " .. i)
        assert.are.equal(case.err, c.body, "case " .. i)
        c:shutdown()
      end
      -- Connection may list several tokens, in any case
      local c = WS.connect(loop, port, "/ws", { headers = { Connection = "keep-alive, UPGRADE", Upgrade = "WebSocket" } })
      assert.are.equal(101, c.status)
      run_until(function() return find("open") end, "on_open")
      assert.are.equal(1, #conns)
    end)

    it("delivers frames sent together with the handshake", function()
      local c = WS.connect(loop, port, "/ws", { extra = WS.frame(OP.TEXT, "early") })
      assert.are.equal(101, c.status)
      assert.are.equal("early", (c:read_message()))
    end)

    it("sends what Lua queued before the socket was handed over", function()
      on_message = nil
      local early = {}
      local c
      srv:close()
      srv = assert(core.http_server(loop, { port = 0, handler = function(req)
        local ws = assert(req:upgrade())
        assert.are.equal("connecting", ws:state())
        assert.is_true(ws:send_text("queued before open"))
        early[#early + 1] = ws
      end }))
      c = WS.connect(loop, srv:port(), "/ws")
      assert.are.equal(101, c.status)
      assert.are.equal("queued before open", (c:read_message()))
    end)
  end)

  describe("messages", function()
    it("echoes text and binary messages of every length class", function()
      local c = WS.connect(loop, port, "/ws")
      for _, n in ipairs({ 0, 1, 125, 126, 65535, 65536, 300000 }) do
        local text = ("é"):rep(n // 2) .. ("a"):rep(n % 2)
        assert(c:send_text(text))
        local got, op = c:read_message()
        assert.are.equal(OP.TEXT, op)
        assert.are.equal(text, got)
        local bin = ("\0\255"):rep(n // 2)
        assert(c:send_binary(bin))
        got, op = c:read_message()
        assert.are.equal(OP.BINARY, op)
        assert.are.equal(bin, got)
      end
      assert.are.equal("message", log[2][1])
      assert.are.equal(false, log[2][3])
      assert.are.equal(true, log[3][3])
    end)

    it("reassembles fragmented messages and answers a ping sent between fragments", function()
      local c = WS.connect(loop, port, "/ws")
      c:send_frame(OP.TEXT, "frag", { fin = false })
      c:send_frame(OP.CONT, "men", { fin = false })
      c:send_frame(OP.PING, "are you there")
      c:send_frame(OP.CONT, "ted")
      local f = assert(c:read_frame())
      assert.are.equal(OP.PONG, f.opcode)
      assert.are.equal("are you there", f.payload)
      assert.are.equal("fragmented", (c:read_message()))
      local messages = 0
      for _, e in ipairs(log) do if e[1] == "message" then messages = messages + 1 end end
      assert.are.equal(1, messages)
    end)

    it("delivers messages a client sent just before dropping the connection", function()
      local c = WS.connect(loop, port, "/ws")
      c:send_raw(WS.frame(OP.TEXT, "one") .. WS.frame(OP.TEXT, "two"))
      c:shutdown()
      run_until(function() return find("close") end)
      assert.are.same({ "message", "one", false }, log[2])
      assert.are.same({ "message", "two", false }, log[3])
      assert.are.equal(1006, log[4][2])
    end)

    it("keeps an idle WebSocket past the HTTP connection timeout", function()
      srv:close()
      srv = assert(core.http_server(loop, { port = 0, connection_timeout = 1, handler = function(req)
        local ws = assert(req:upgrade())
        ws:on_message(function(data, _, w) w:send_text(data) end)
      end }))
      local c = WS.connect(loop, srv:port(), "/ws")
      local waited = false
      loop:timer(1600, function() waited = true end)
      run_until(function() return waited end)
      c:send_text("still here")
      assert.are.equal("still here", (c:read_message()))
    end)

    it("answers pings with pongs carrying the same payload", function()
      local c = WS.connect(loop, port, "/ws")
      c:send_frame(OP.PING, "123")
      local f = assert(c:read_frame())
      assert.are.same({ OP.PONG, "123" }, { f.opcode, f.payload })
    end)

    it("reports send on a closed connection as an error, never raising", function()
      local c = WS.connect(loop, port, "/ws")
      run_until(function() return find("open") end)
      c:close_handshake(1000)
      run_until(function() return find("close") end)
      local ok, err = conns[1]:send_text("late")
      assert.is_nil(ok)
      assert.are.equal("closed", err)
      assert.is_false(conns[1]:close())
      assert.are.equal("closed", conns[1]:state())
    end)
  end)

  describe("closing", function()
    it("completes a close handshake started by the client", function()
      local c = WS.connect(loop, port, "/ws")
      local f = assert(c:close_handshake(1000, "bye"))
      assert.are.equal(1000, f.code)
      assert.is_true(c:wait_eof())
      run_until(function() return find("close") end)
      assert.are.same({ "close", 1000, "bye" }, find("close"))
    end)

    it("reports 1005 for a close frame without a code", function()
      local c = WS.connect(loop, port, "/ws")
      local f = assert(c:close_handshake())
      assert.are.equal(1005, f.code)
      run_until(function() return find("close") end)
      assert.are.same({ "close", 1005, "" }, find("close"))
    end)

    it("closes from the server with a code and reason, on_close after the client answers", function()
      on_message = function(data, _, w) w:close(4000, "done") end
      local c = WS.connect(loop, port, "/ws")
      c:send_text("please close")
      local f = assert(c:read_frame())
      assert.are.same({ OP.CLOSE, 4000, "done" }, { f.opcode, f.code, f.reason })
      assert.is_nil(find("close"))
      assert.are.equal("closing", conns[1]:state())
      c:send_frame(OP.CLOSE, string.pack(">I2", 4000))
      assert.is_true(c:wait_eof())
      run_until(function() return find("close") end)
      assert.are.same({ "close", 4000, "" }, find("close"))
    end)

    it("starts a normal close (1000) when a to-be-closed WebSocket leaves its scope through an error", function()
      on_message = function(_, _, w)
        pcall(function()
          local scoped <close> = w
          error("handler bug")
        end)
      end
      local c = WS.connect(loop, port, "/ws")
      c:send_text("x")
      local f = assert(c:read_frame())
      assert.are.same({ OP.CLOSE, 1000 }, { f.opcode, f.code })
      assert.are.equal("closing", conns[1]:state())
    end)

    it("drops a client that never answers the server's close after close_timeout", function()
      opts.close_timeout = 100
      on_message = function(_, _, w) w:close(1000) end
      local c = WS.connect(loop, port, "/ws")
      c:send_text("x")
      assert.are.equal(OP.CLOSE, assert(c:read_frame()).opcode)
      local t0 = core.now()
      assert.is_true(c:wait_eof())
      assert.is_true(core.now() - t0 >= 90)
      run_until(function() return find("close") end)
      assert.are.equal(1000, find("close")[2])
    end)

    it("reports 1006 when the client drops the TCP connection", function()
      local c = WS.connect(loop, port, "/ws")
      run_until(function() return find("open") end)
      c:shutdown()
      run_until(function() return find("close") end)
      assert.are.same({ "close", 1006, "" }, find("close"))
    end)

    it("calls on_close (1006) for a client that left before its deferred upgrade", function()
      srv:close()
      local pending_req
      srv = assert(core.http_server(loop, { port = 0, handler = function(req) pending_req = req end }))
      local sock = require("socket").tcp()
      sock:settimeout(0)
      sock:connect("127.0.0.1", srv:port())
      run_until(function() return sock:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        .. "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n") end)
      run_until(function() return pending_req end, "the request")
      sock:close()
      for _ = 1, 5 do loop:run_once(5) end
      local ws = assert(pending_req:upgrade())
      local closed
      ws:on_close(function(code) closed = code end)
      run_until(function() return closed end, "on_close")
      assert.are.equal(1006, closed)
      assert.are.equal("closed", ws:state())
      assert.are.equal(0, srv:stats().active)
    end)

    it("lets callbacks close the whole server (from on_message and from on_close)", function()
      local clients = {}
      for i = 1, 3 do clients[i] = WS.connect(loop, port, "/ws") end
      local closes = 0
      on_message = function() srv:close() end
      for _, w in ipairs(conns) do
        w:on_close(function() closes = closes + 1 srv:close() end)
      end
      clients[2]:send_text("stop the server")
      run_until(function() return closes == 3 end, "every on_close")
      assert.has.error(function() srv:port() end, "attempt to use a closed HTTP server")
      for _, c in ipairs(clients) do assert.is_true(c:wait_eof()) end
    end)

    it("closes every connection with 1001 when the server closes, and releases the sockets", function()
      local before = open_fds()
      local clients = {}
      for i = 1, 5 do clients[i] = WS.connect(loop, port, "/ws") end
      run_until(function() local n = 0 for _, e in ipairs(log) do if e[1] == "open" then n = n + 1 end end return n == 5 end)
      srv:close()
      local closes = 0
      for _, e in ipairs(log) do if e[1] == "close" then closes = closes + 1 assert.are.equal(1001, e[2]) end end
      assert.are.equal(5, closes)
      for _, c in ipairs(clients) do
        local f = assert(c:read_frame())
        assert.are.same({ OP.CLOSE, 1001 }, { f.opcode, f.code })
        assert.is_true(c:wait_eof())
        c:shutdown()
      end
      assert.is_true(open_fds() <= before, "server sockets left open")
      for _, w in ipairs(conns) do assert.are.equal("closed", w:state()) end
    end)
  end)

  describe("limits and bad input", function()
    it("hands MHD's connection back once upgraded: WebSockets do not count against its connection limit", function()
      srv:close()
      srv = assert(core.http_server(loop, { port = 0, connection_limit = 2, handler = function(req)
        if req:path() ~= "/ws" then return req:respond(200, "plain") end
        local ws = assert(req:upgrade())
        ws:on_message(function(data, _, w) w:send_text(data) end)
      end }))
      local clients = {}
      for i = 1, 5 do
        clients[i] = WS.connect(loop, srv:port(), "/ws")
        assert.are.equal(101, clients[i].status, "client " .. i)
      end
      for i, c in ipairs(clients) do
        c:send_text("echo " .. i)
        assert.are.equal("echo " .. i, (c:read_message()))
      end
    end)

    it("refuses WebSockets beyond max_connections until one closes", function()
      opts.max_connections = 2
      local a, b = WS.connect(loop, port, "/ws"), WS.connect(loop, port, "/ws")
      assert.are.same({ 101, 101 }, { a.status, b.status })
      local c = WS.connect(loop, port, "/ws")
      assert.are.equal(400, c.status)
      assert.are.equal("too many WebSocket connections", c.body)
      a:close_handshake(1000)
      run_until(function() return find("close") end)
      c = WS.connect(loop, port, "/ws")
      assert.are.equal(101, c.status)
    end)

    it("closes with 1009 when a message passes max_message_size", function()
      opts.max_message_size = 1000
      local c = WS.connect(loop, port, "/ws")
      c:send_text(("a"):rep(1000))
      assert.are.equal(1000, #(c:read_message()))
      c:send_text(("a"):rep(1001))
      local _, err, f = c:read_message()
      assert.are.equal("close", err)
      assert.are.equal(1009, f.code)
      run_until(function() return find("close") end)
      assert.are.equal(1009, find("close")[2])
    end)

    it("counts fragments together against max_message_size", function()
      opts.max_message_size = 1000
      local c = WS.connect(loop, port, "/ws")
      local f
      c:send_frame(OP.BINARY, ("b"):rep(400), { fin = false })
      c:send_frame(OP.CONT, ("b"):rep(400), { fin = false })
      c:send_frame(OP.CONT, ("b"):rep(400))
      repeat f = c:read_frame() until not f or f.opcode == OP.CLOSE
      assert.are.equal(1009, f.code)
      run_until(function() return find("close") end)
      assert.is_nil(find("message"))
    end)

    it("disconnects a client that stops reading once max_buffered is passed, and memory stays bounded", function()
      opts.max_buffered = 1024 * 1024
      local chunk = ("x"):rep(64 * 1024)
      local result = {}
      on_message = function(_, _, w)
        local sent, max_seen = 0, 0
        for _ = 1, 100000 do -- bounded: the drop must come long before
          local ok, err = w:send_binary(chunk)
          if not ok then result.err = err break end
          sent = sent + 1
          if w:buffered() > max_seen then max_seen = w:buffered() end
        end
        result.sent, result.max_seen = sent, max_seen
      end
      local function flood_once()
        result = {}
        local n = #log
        local c = WS.connect(loop, port, "/ws")
        c:send_text("flood") -- and never read
        run_until(function()
          for i = n + 1, #log do if log[i][1] == "close" then return true end end
        end, "the slow client to be dropped")
        c:shutdown()
        return result
      end
      local r = flood_once()
      assert.are.equal("send buffer full", r.err)
      assert.is_true(r.max_seen <= opts.max_buffered)
      assert.is_true(r.sent >= 1)
      assert.are.same({ "close", 1008, "send buffer full" }, log[#log])
      local rss0 = rss_kb()
      local total = 0
      for _ = 1, 10 do total = total + flood_once().sent end
      local grew = rss_kb() - rss0
      if os.getenv("WS_SPEC_VERBOSE") then print("flood", r.sent, r.max_seen, total, grew) end
      -- ten more slow clients were each sent at least ~1 MiB the socket did not take
      assert.is_true(total * #chunk >= 10 * opts.max_buffered)
      if MODE == "plain" then
        assert.is_true(grew < 8 * 1024, "RSS grew by " .. grew .. " kB")
      end
    end)

    it("closes with 1002 on protocol errors: unmasked frames, unknown opcodes, reserved bits, long control frames", function()
      local bad = {
        WS.frame(OP.TEXT, "hi", { mask = false }),
        WS.frame(3, "x"),
        WS.frame(OP.TEXT, "x", { rsv = 4 }),
        WS.frame(OP.PING, ("p"):rep(126)),
        WS.frame(OP.PING, "p", { fin = false }),
        WS.frame(OP.CONT, "orphan"),
      }
      for i, frame in ipairs(bad) do
        local c = WS.connect(loop, port, "/ws")
        c:send_raw(frame)
        local f
        repeat f = c:read_frame() until not f or f.opcode == OP.CLOSE
        assert(f, "case " .. i .. ": no close frame")
        assert.is_truthy(f.code == 1002 or (i >= 4 and i <= 5 and f.code == 1005), "case " .. i .. ": " .. f.code)
        assert.is_true(c:wait_eof(), "case " .. i)
      end
      run_until(function() local n = 0 for _, e in ipairs(log) do if e[1] == "close" then n = n + 1 end end return n == #bad end)
      for _, e in ipairs(log) do
        assert.are_not.equal("message", e[1])
        if e[1] == "close" then assert.are.equal(1002, e[2]) end
      end
    end)

    it("closes with 1007 on a text message that is not UTF-8", function()
      local c = WS.connect(loop, port, "/ws")
      for _, s in ipairs({ "\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\xe2\x82" }) do
        c = WS.connect(loop, port, "/ws")
        c:send_text(s)
        local _, err, f = c:read_message()
        assert.are.equal("close", err)
        assert.are.equal(1007, f.code)
      end
      c = WS.connect(loop, port, "/ws")
      c:send_text("€ 𝄞 ok")
      assert.are.equal("€ 𝄞 ok", (c:read_message()))
    end)

    it("survives random garbage on many connections", function()
      math.randomseed(7)
      local clients = {}
      for i = 1, 60 do
        local c = WS.connect(loop, port, "/ws")
        local n = math.random(1, 200)
        local b = {}
        for k = 1, n do b[k] = string.char(math.random(0, 255)) end
        -- half start with a valid frame header so the junk reaches deeper states
        local junk = table.concat(b)
        if i % 2 == 0 then junk = string.char(0x81, 0x80 | 20) .. junk end
        c:send_raw(junk)
        if i % 3 == 0 then c:shutdown() end
        clients[i] = c
      end
      for i, c in ipairs(clients) do
        if i % 3 ~= 0 then
          c:send_raw(WS.frame(OP.CLOSE, ""))
          c:wait_eof()
          c:shutdown()
        end
      end
      run_until(function()
        local opened, closed = 0, 0
        for _, e in ipairs(log) do
          if e[1] == "open" then opened = opened + 1 elseif e[1] == "close" then closed = closed + 1 end
        end
        return opened == 60 and closed == 60
      end, "every garbage connection to close")
      -- still serving
      local c = WS.connect(loop, port, "/ws")
      c:send_text("alive")
      assert.are.equal("alive", (c:read_message()))
    end)
  end)

  describe("with the `ws` client library of Node.js", function()
    -- installed by `make test` (make node-deps) from spec/support/node/package.json
    local WS_MODULE = "spec/support/node/node_modules/ws"

    it("talks to the server: text, binary, fragments, ping and close", function()
      assert(os.execute("command -v node >/dev/null 2>&1"), "node is missing (make test installs nodejs)")
      local have = assert(io.open(WS_MODULE .. "/package.json"), WS_MODULE .. " is missing (run make node-deps)")
      have:close()
      local out = os.tmpname()
      local script = [[
const WebSocket = require(require('path').resolve(process.argv[2]));
const ws = new WebSocket('ws://127.0.0.1:' + process.argv[3] + '/ws');
const got = [];
ws.on('open', () => {
  ws.send('hello');
  ws.send(Buffer.from([0, 1, 2, 255]));
  ws.send('fragmented', { fin: false });
  ws.send(' message', { fin: true });
  ws.ping('p');
});
ws.on('pong', (d) => got.push('pong:' + d.toString()));
ws.on('message', (m) => {  // ws 7: a string for text, a Buffer for binary
  got.push(typeof m === 'string' ? 'text:' + m : 'bin:' + m.toString('hex'));
  if (got.filter((g) => !g.startsWith('pong')).length === 3) ws.close(1000, 'done');
});
ws.on('close', (code) => { got.push('close:' + code); console.log(JSON.stringify(got)); });
ws.on('error', (e) => { console.log(JSON.stringify(['error:' + e.message])); process.exit(1); });
setTimeout(() => { console.log(JSON.stringify(['timeout'])); process.exit(1); }, 8000);
]]
      local js = os.tmpname()
      local f = assert(io.open(js, "w"))
      f:write(script)
      f:close()
      os.execute(string.format("env -u LD_PRELOAD node %s %s %d > %s 2>&1 &", js, WS_MODULE, port, out))
      local result
      run_until(function()
        local r = io.open(out)
        result = r and r:read("a")
        if r then r:close() end
        return result and result:find("\n")
      end, "the node client")
      os.remove(js)
      os.remove(out)
      local json = require "moonstream.json"
      local got = assert(json.decode(result))
      table.sort(got)
      assert.are.same({ "bin:000102ff", "close:1000", "pong:p", "text:fragmented message", "text:hello" }, got)
      run_until(function() return find("close") end)
      assert.are.same({ "close", 1000, "done" }, find("close"))
    end)
  end)
end)
