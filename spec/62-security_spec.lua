-- Security properties (SECURITY.md) that no other spec owns: loopback detection
-- for the open-auth warning, tokens absent from the database in clear, and
-- the server's own failures answered without file names or tracebacks.
-- (Hashing, constant-time compares, rate limits and secret-free logs are in
-- spec/40-auth_spec.lua and spec/42-tokens_spec.lua; record key spaces,
-- RPC texts and storage error texts in spec/61-hostile_input_spec.lua and
-- spec/60-disk_spec.lua.)
local core = require "moonstream.core"
local json = require "moonstream.json"
local log = require "moonstream.log"
local server_mod = require "moonstream.server"
local H = require "spec.support.helpers"

describe("security", function()
  it("tells loopback addresses from others", function()
    for _, h in ipairs({ "127.0.0.1", "127.1.2.3", "::1", "localhost" }) do
      assert.is_true(server_mod.is_loopback(h), h)
    end
    for _, h in ipairs({ "0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", "127.0.0.1.example.com" }) do
      assert.is_false(server_mod.is_loopback(h), h)
    end
  end)

  it("warns about open auth on an address others can reach", function()
    local config = require "moonstream.config"
    local open = assert(config.validate({ host = "0.0.0.0" }))
    assert.equal("open auth on 0.0.0.0: anyone who can reach this address may log in"
      .. " (set 'auth' and 'permissions', or bind to 127.0.0.1)", server_mod.exposure_warning(open))
    assert.is_nil(server_mod.exposure_warning(assert(config.validate({}))))
    local users = { alice = { password = "x" } }
    local closed = assert(config.validate({ host = "0.0.0.0", auth = { { type = "file", options = { users = users } } } }))
    assert.is_nil(server_mod.exposure_warning(closed))
  end)

  it("keeps no token in clear in the database", function()
    local t = H.start()
    local tokens = {}
    for i = 1, 5 do
      local res = t:request({ path = "/api/auth", body = json.encode({ username = "user" .. i }) })
      assert.equal(200, res.status)
      local token = json.decode(res.body).token
      assert.matches("^%x+$", token)
      assert.is_true(#token >= 64, "a token of 256 bits at least")
      tokens[#tokens + 1] = token
    end
    assert.equal(5, #tokens)
    -- every key and value in LevelDB, with the tokens in hand
    local step, it, _, closer = t.server.store:iterate("")
    local entries = 0
    for k, v in step, it do
      entries = entries + 1
      for _, token in ipairs(tokens) do
        assert.is_nil(k:find(token, 1, true), "a token in clear in a key")
        assert.is_nil(v:find(token, 1, true), "a token in clear in a value")
      end
    end
    if closer then closer:close() end
    assert.is_true(entries >= 5)
    -- and a token still works: only its hash is needed
    local res = t:request({ body = json.encode({ token = tokens[1], body = {
      { topic = "record", action = "head", recordName = "x" } } }) })
    assert.equal(200, res.status)
    t:stop()
  end)

  it("limits connections per client address when connectionLimitPerIp is set", function()
    local socket = require "socket"
    local t = H.start({ connectionLimitPerIp = 3 })
    local port = t.server:port()
    local function open()
      local c = assert(socket.tcp())
      c:settimeout(2)
      assert(c:connect("127.0.0.1", port))
      c:settimeout(0)
      return c
    end
    -- state of a connection after the server had time to act: "open" or "closed"
    local function state(c)
      for _ = 1, 10 do t.loop:run_once(10) end
      local _, err = c:receive(1)
      return err == "timeout" and "open" or "closed"
    end
    local held = { open(), open(), open() }
    for _, c in ipairs(held) do assert.equal("open", state(c)) end
    local fourth = open()
    assert.equal("closed", state(fourth))
    fourth:close()
    held[1]:close()
    for _ = 1, 10 do t.loop:run_once(10) end
    local again = open()
    assert.equal("open", state(again))
    again:close()
    for _, c in ipairs(held) do c:close() end
    t:stop()
  end)

  it("answers a failing request handler with a bare 500 text", function()
    local logged = {}
    log.set_sink(function(line) logged[#logged + 1] = line end)
    local loop = core.loop()
    local srv = assert(core.http_server(loop, { port = 0, handler = function() error("secret detail in /srv/x.lua") end }))
    local client = core.http_client(loop)
    local res
    client:request({ url = "http://127.0.0.1:" .. srv:port() .. "/api" }, function(r) res = r end)
    for _ = 1, 200 do
      if res then break end
      loop:run_once(50)
    end
    client:close()
    srv:close()
    loop:close()
    log.set_sink(nil)
    assert.equal(500, res.status)
    assert.equal("Internal server error.", res.body)
    -- the detail is in the server's log, for the operator
    assert.matches("secret detail", table.concat(logged, "\n"))
  end)
end)
