-- Tokens: random, stored only as hashes, expiring after tokenTTL, valid
-- across restarts, revocable from Lua and from the command line (with and
-- without a running server).
local core = require "moonstream.core"
local json = require "moonstream.json"
local tokens_mod = require "moonstream.tokens"
local control = require "moonstream.control"
local H = require "spec.support.helpers"
local AUTH, login, emit_with = H.TOKEN_AUTH, H.login_token, H.emit_with




local function stored_tokens(store)
  local out = {}
  local step, it, _, closer = store:iterate(tokens_mod.KEY_PREFIX)
  for k, v in step, it do out[#out + 1] = { key = k, value = v } end
  if closer then closer:close() end
  return out
end

describe("tokens", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmdir(dir) end)

  it("are 256 random bits, different every time, and accepted on POST /api", function()
    local t = H.start({ auth = AUTH })
    local a, b = login(t, { username = "ann" }), login(t, { username = "ann" })
    assert.matches("^%x+$", a)
    assert.equal(64, #a)
    assert.not_equal(a, b)
    assert.equal(200, emit_with(t, a).status)
    local altered = (a:sub(1, 1) == "0" and "1" or "0") .. a:sub(2) -- one hex digit changed
    local res = emit_with(t, altered)
    assert.equal(401, res.status)
    assert.equal("Unsuccessful authentication attempt.", res.body)
    t:stop()
  end)

  it("are kept as SHA-256 hashes under t/, with the user, clientData, serverData and expiry", function()
    local t = H.start({ auth = { { type = "lua", options = { fn = function()
      return true, "ann", { c = 1 }, { role = "r" } end } } } })
    local token = login(t, { username = "ann" })
    local entries = stored_tokens(t.server.store)
    assert.equal(1, #entries)
    assert.equal("t/" .. tokens_mod.hash(token), entries[1].key)
    assert.is_nil(entries[1].key:find(token, 1, true))
    assert.is_nil(entries[1].value:find(token, 1, true))
    local v = json.decode(entries[1].value)
    assert.equal("ann", v.id)
    assert.same({ c = 1 }, v.clientData)
    assert.same({ role = "r" }, v.serverData)
    assert.is_true(v.expires > os.time() * 1000)
    t:stop()
  end)

  it("expire after tokenTTL", function()
    local t = H.start({ auth = AUTH, tokenTTL = 5000 })
    local wall = os.time() * 1000
    t.server.tokens.wall = function() return wall end
    local token = login(t, { username = "ann" })
    wall = wall + 4999
    assert.equal(200, emit_with(t, token).status)
    wall = wall + 1
    assert.equal(401, emit_with(t, token).status)
    assert.equal(0, #stored_tokens(t.server.store)) -- an expired entry is removed when seen
    t:stop()
  end)

  it("survive a restart, and expired ones are swept at start", function()
    local data = dir .. "/data"
    local t = H.start({ auth = AUTH, storage = { path = data } })
    local token = login(t, { username = "ann" })
    local short_lived
    t.server.tokens:issue({ id = "old" }, nil, function(tok) short_lived = tok end)
    t:run_until(function() return short_lived ~= nil end)
    -- make the second one expired by rewriting its expiry
    local key = "t/" .. tokens_mod.hash(short_lived)
    local v = json.decode(t.server.store:get(key))
    v.expires = 1
    assert(t.server.store:put(key, json.encode(v)))
    t.server:close()
    t.loop:close()
    t.client = nil

    local t2 = H.start({ auth = AUTH, storage = { path = data } })
    assert.equal(200, emit_with(t2, token).status)
    assert.equal(1, #stored_tokens(t2.server.store))
    t2:stop()
    H.rmdir(t.dir)
  end)

  it("are revoked from Lua: one token, or every token of a user", function()
    local t = H.start({ auth = AUTH })
    local a1, a2, b = login(t, { username = "ann" }), login(t, { username = "ann" }), login(t, { username = "bob" })
    assert.equal(1, t.server:revoke_token(a1))
    assert.equal(0, t.server:revoke_token(a1))
    assert.equal(401, emit_with(t, a1).status)
    assert.equal(200, emit_with(t, a2).status)
    assert.equal(1, t.server:revoke_token({ user = "ann" }))
    assert.equal(401, emit_with(t, a2).status)
    assert.equal(200, emit_with(t, b).status)
    t:stop()
  end)
end)

-- The command line against a store, with the server stopped and running.
describe("moonstream token revoke", function()
  local dir, config_path

  local function run(cmd)
    local pipe = assert(io.popen("exec env -u LD_PRELOAD " .. cmd .. " 2>&1", "r"))
    local out = pipe:read("a")
    local ok, _, code = pipe:close()
    return out, ok and 0 or code
  end

  before_each(function()
    dir = H.tmpdir()
    config_path = dir .. "/config.lua"
    local f = assert(io.open(config_path, "w"))
    f:write([[
return {
  port = 0, logLevel = "info", storage = { path = "data" }, -- info: "listening on" is the readiness signal
  auth = { { type = "lua", options = { fn = function(a) return type(a.username) == "string", a.username end } } },
}
]])
    f:close()
  end)
  after_each(function() H.rmdir(dir) end)

  it("revokes in the store when no server runs", function()
    local t = H.start({ auth = AUTH, storage = { path = dir .. "/data" } })
    local token, other = login(t, { username = "ann" }), login(t, { username = "bob" })
    t.server:close()
    t.loop:close()
    t.client = nil
    H.rmdir(t.dir)
    local out, code = run("bin/moonstream token revoke " .. token .. " " .. config_path)
    assert.equal(0, code, out)
    assert.equal("revoked 1 token(s)\n", out)
    out = run("bin/moonstream token revoke --user bob " .. config_path)
    assert.equal("revoked 1 token(s)\n", out)
    local store = assert(core.store_open(dir .. "/data", {}))
    local tokens = tokens_mod.new(store, { ttl = 1000 })
    assert.is_nil(tokens:lookup(token))
    assert.is_nil(tokens:lookup(other))
    store:close()
  end)

  it("asks the running server (pid file, SIGHUP) and the token stops working", function()
    local server = assert(io.popen("exec env -u LD_PRELOAD bin/moonstream start " .. config_path .. " 2>&1", "r"))
    local port, seen = nil, {}
    for _ = 1, 20 do -- the log lines before "listening on" (warnings) are few
      local line = server:read("l")
      if not line then break end
      seen[#seen + 1] = line
      port = line:match("listening on http://127%.0%.0%.1:(%d+)")
      if port then break end
    end
    assert(port, "server did not start: " .. table.concat(seen, "\n"))
    local pid = control.read_pid(dir .. "/data")
    assert.is_number(pid)
    finally(function() os.execute("kill -TERM " .. pid .. " 2>/dev/null") end) -- also when an assertion fails
    local loop = core.loop()
    local client = core.http_client(loop)
    local function post(path, body)
      local out
      client:request({ method = "POST", url = "http://127.0.0.1:" .. port .. path, body = json.encode(body),
        headers = { ["Content-Type"] = "application/json", Expect = false } }, function(r) out = r end)
      for _ = 1, 300 do
        if out then break end
        loop:run_once(50)
      end
      return assert(out)
    end
    local token = json.decode(post("/api/auth", { username = "ann" }).body).token
    local batch = { token = token, body = { { topic = "event", action = "emit", eventName = "e" } } }
    assert.equal(200, post("/api", batch).status)
    local out, code = run("bin/moonstream token revoke " .. token .. " " .. config_path)
    assert.equal(0, code, out)
    assert.equal("revoked 1 token(s)\n", out)
    assert.equal(401, post("/api", batch).status)
    out = run("bin/moonstream reload " .. config_path)
    assert.equal("sent SIGHUP to moonstream (pid " .. pid .. ")\n", out)
    client:close()
    loop:close()
    os.execute("kill -TERM " .. pid)
    server:read("a") -- until it exits
    assert.is_true(server:close())
    assert.is_nil(control.read_pid(dir .. "/data")) -- removed at stop
  end)
end)
