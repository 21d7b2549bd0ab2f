-- Authentication: the crypto primitives, each strategy (open, file, webhook
-- against a real local HTTP server, lua), the strategy chain, the limit on
-- failed attempts, and that credentials never reach the log.
local core = require "moonstream.core"
local json = require "moonstream.json"
local file_auth = require "moonstream.auth.file"
local H = require "spec.support.helpers"

-- deepstream's own users.yml, copied unchanged from the deepstream reference's conf-file/
-- (hashes made by `deepstream hash` with md5, 100 iterations, keyLength 32)
local REFERENCE_USERS = "spec/support/deepstream-users.yml"

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

local function login(t, auth_data, extra)
  local res = t:request({ path = "/api/auth", body = json.encode(auth_data), headers = extra })
  return res, res.status == 200 and json.decode(res.body) or nil
end

local function emit_as(t, msg)
  msg.body = { { topic = "event", action = "emit", eventName = "e" } }
  return t:request({ body = json.encode(msg) })
end

-- A file in a fresh folder; returns its path.
local function write_file(dir, name, text) return H.write_file(dir .. "/" .. name, text) end

local capture_log = H.capture_log

describe("crypto primitives (csrc/crypto.c)", function()
  it("computes PBKDF2 as RFC 6070 says", function()
    assert.equal("0c60c80f961f0e71f3a9b524af6012062fe037a6", hex(core.pbkdf2("password", "salt", 1, 20, "sha1")))
    assert.equal("4b007901b765489abead49d926f721d065a429c1", hex(core.pbkdf2("password", "salt", 4096, 20, "sha1")))
  end)

  it("reports an unknown digest and rejects out-of-range arguments", function()
    local key, err = core.pbkdf2("a", "b", 1, 16, "nope")
    assert.is_nil(key)
    assert.equal("unknown digest 'nope'", err)
    assert.has.error(function() core.pbkdf2("a", "b", 0, 16, "sha256") end)
    assert.has.error(function() core.pbkdf2("a", "b", 1, 0, "sha256") end)
  end)

  it("gives random bytes that differ, SHA-256 and a constant-time compare", function()
    local a, b = core.random_bytes(16), core.random_bytes(16)
    assert.equal(16, #a)
    assert.not_equal(a, b)
    assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", hex(core.sha256("")))
    assert.is_true(core.equal("abc", "abc"))
    assert.is_false(core.equal("abc", "abd"))
    assert.is_false(core.equal("abc", "ab"))
    assert.equal("aGVsbG8=", core.base64_encode("hello"))
  end)
end)

describe("open strategy", function()
  local t
  before_each(function() t = H.start({}) end)
  after_each(function() t:stop() end)

  it("accepts everyone: the id is username, else 'open', and the token remembers it", function()
    local _, body = login(t, { username = "ann" })
    assert.is_true(body.success)
    assert.equal(json.null, body.clientData)
    assert.equal("ann", t.server.tokens:lookup(body.token).id)
    local _, anon = login(t, {})
    assert.equal("open", t.server.tokens:lookup(anon.token).id)
  end)
end)

describe("file strategy", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmdir(dir) end)

  it("logs in deepstream's own users.yml (hashes made by `deepstream hash`, md5/100/32)", function()
    local t = H.start({ auth = { { type = "file", options = {
      users = REFERENCE_USERS, hash = "md5", iterations = 100, keyLength = 32 } } } })
    local res, body = login(t, { username = "fred", password = "y4b4d4b4d00" })
    assert.equal(200, res.status)
    assert.same({ favouriteColor = "red", id = 17 }, body.clientData)
    assert.same({ role = "admin" }, t.server.tokens:lookup(body.token).data)
    res, body = login(t, { username = "wilma", password = "pebbles" })
    assert.equal(200, res.status)
    assert.equal(json.null, body.clientData)
    res = login(t, { username = "wilma", password = "Pebbles" })
    assert.equal(401, res.status)
    assert.equal("Invalid authentication data.", res.body)
    t:stop()
  end)

  it("verifies what `moonstream hash` prints (sha256 defaults) from a Lua users file", function()
    local pipe = assert(io.popen("exec env -u LD_PRELOAD bin/moonstream hash 's3cret pass'", "r"))
    local hash = pipe:read("l")
    assert.is_true(pipe:close())
    assert.equal(44 + 24, #hash) -- base64 of 32 bytes, then base64 of a 16-byte salt
    assert.is_true(file_auth.verify("s3cret pass", hash, file_auth.DEFAULTS))
    assert.is_false(file_auth.verify("s3cret pas", hash, file_auth.DEFAULTS))
    local users = write_file(dir, "users.lua", ("return { bob = { password = %q, clientData = { n = 1 } } }"):format(hash))
    local t = H.start({ auth = { { type = "file", options = { users = users } } } })
    local res, body = login(t, { username = "bob", password = "s3cret pass" })
    assert.equal(200, res.status)
    assert.same({ n = 1 }, body.clientData)
    assert.equal(401, login(t, { username = "bob", password = "wrong" }).status)
    t:stop()
  end)

  it("`moonstream hash` takes the settings of a config's file strategy, or options", function()
    local ds = { hash = "md5", iterations = 100, keyLength = 32 }
    local cfg = write_file(dir, "config.lua", ("return { auth = { { type = 'file', options = { users = %q, "
      .. "hash = 'md5', iterations = 100, keyLength = 32 } } } }"):format(os.getenv("PWD") .. "/" .. REFERENCE_USERS))
    local pipe = assert(io.popen("exec env -u LD_PRELOAD bin/moonstream hash pw -c " .. cfg, "r"))
    local from_config = pipe:read("l")
    assert.is_true(pipe:close())
    assert.is_true(file_auth.verify("pw", from_config, ds))
    assert.is_false(file_auth.verify("pw", from_config, file_auth.DEFAULTS))
    pipe = assert(io.popen("exec env -u LD_PRELOAD bin/moonstream hash pw --hash md5 --iterations 100", "r"))
    local from_options = pipe:read("l")
    assert.is_true(pipe:close())
    assert.is_true(file_auth.verify("pw", from_options, ds))
  end)

  it("reads a hash made with other settings only with those settings", function()
    local hash = assert(file_auth.make_hash("pw", { hash = "sha512", iterations = 10, keyLength = 64 }))
    assert.is_true(file_auth.verify("pw", hash, { hash = "sha512", iterations = 10, keyLength = 64 }))
    assert.is_false(file_auth.verify("pw", hash, { hash = "sha512", iterations = 11, keyLength = 64 }))
  end)

  it("refuses a bad users file or bad options at start, naming the key", function()
    local srv, err = require("moonstream").new({ auth = { { type = "file", options = { users = dir .. "/none.yml" } } } })
    assert.is_nil(srv)
    assert.matches("config key 'auth%[1%]%.options%.users': cannot read users file", err)
    local bad = write_file(dir, "bad.yml", "fred: [")
    srv, err = require("moonstream").new({ auth = { { type = "file", options = { users = bad } } } })
    assert.is_nil(srv)
    assert.matches("is not valid YAML", err)
    srv, err = require("moonstream").new({ auth = { { type = "file", options = { users = {}, hash = "nope" } } } })
    assert.is_nil(srv)
    assert.equal("config key 'auth[1].options.hash' must be a digest name such as 'sha256' or 'md5' (got 'nope')", err)
    srv, err = require("moonstream").new({ auth = { { type = "file", options = { users = {}, color = 1 } } } })
    assert.is_nil(srv)
    assert.matches("'auth%[1%]%.options%.color' is not an option of the 'file' strategy", err)
  end)

  it("leaves unknown users and auth data without a password to the next strategy", function()
    local t = H.start({ auth = {
      { type = "file", options = { users = REFERENCE_USERS, hash = "md5", iterations = 100, keyLength = 32 } },
      { type = "open" },
    } })
    local _, body = login(t, { username = "barney", password = "x" })
    assert.equal("barney", t.server.tokens:lookup(body.token).id) -- open decided
    _, body = login(t, { username = "fred" })
    assert.equal("fred", t.server.tokens:lookup(body.token).id) -- no password: open decided
    -- a wrong password for a known user is decided by the file strategy
    assert.equal(401, login(t, { username = "fred", password = "nope" }).status)
    t:stop()
  end)
end)

describe("webhook strategy", function()
  local pipe, port, pid, t

  setup(function()
    pipe = assert(io.popen("exec env -u LD_PRELOAD python3 spec/support/webhook_server.py", "r"))
    local line = pipe:read("l")
    port, pid = (line or ""):match("^(%d+) (%d+)$")
    assert(port, "webhook server did not start: " .. tostring(line))
  end)

  teardown(function()
    os.execute("kill " .. pid)
    pipe:close()
  end)

  local function start(options)
    options.endpointUrl = "http://127.0.0.1:" .. port .. "/auth"
    t = H.start({ auth = { { type = "webhook", options = options } } })
  end

  after_each(function() if t then t:stop(); t = nil end end)

  -- What the webhook server saw last (GET /last on it).
  local function last_request()
    local out
    assert(t.client:request({ url = "http://127.0.0.1:" .. port .. "/last" }, function(r) out = r end))
    t:run_until(function() return out ~= nil end)
    return json.decode(out.body)
  end

  it("posts authData and connectionData and reads a JSON answer", function()
    start({ promoteToHeader = { "token" } })
    local res, body = login(t, { username = "ann", token = "abc" }, { ["User-Agent"] = "spec-agent" })
    assert.equal(200, res.status)
    assert.same({ c = 1 }, body.clientData)
    local user = t.server.tokens:lookup(body.token)
    assert.equal("ann-id", user.id)
    assert.same({ role = "admin" }, user.data)
    local got = last_request()
    assert.same({ username = "ann", token = "abc" }, got.body.authData)
    assert.equal("127.0.0.1", got.body.connectionData.remoteAddress)
    assert.equal("spec-agent", got.body.connectionData.headers["user-agent"])
    assert.equal("abc", got.headers.token)
    assert.matches("^application/json", got.headers["content-type"])
  end)

  it("takes a text body as the id, an empty body as authData.username, and a supplied token", function()
    start({})
    local _, body = login(t, { username = "plain" })
    assert.equal("plain-id", t.server.tokens:lookup(body.token).id)
    _, body = login(t, { username = "empty" })
    assert.equal("empty", t.server.tokens:lookup(body.token).id)
    _, body = login(t, { username = "supplier", token = "their-token-1" })
    assert.equal("their-token-1", body.token)
    assert.equal("sup", t.server.tokens:lookup("their-token-1").id)
    local res = emit_as(t, { token = "their-token-1" })
    assert.equal(200, res.status)
  end)

  it("refuses a status that is not permitted", function()
    start({})
    assert.equal(401, login(t, { username = "nobody" }).status)
    assert.equal(401, emit_as(t, { authData = { username = "nobody" } }).status)
  end)

  it("retries the retry status codes, and refuses when the attempts run out", function()
    start({ retryStatusCodes = { 504 }, retryAttempts = 2, retryInterval = 10 })
    local _, body = login(t, { username = "flaky", key = "k1", fail_times = 2 })
    assert.equal("flaky", t.server.tokens:lookup(body.token).id)
    assert.equal(401, login(t, { username = "flaky", key = "k2", fail_times = 3 }).status)
  end)

  it("refuses after requestTimeout", function()
    start({ requestTimeout = 100 })
    assert.equal(401, login(t, { username = "slow", ms = 2000 }).status)
  end)

  it("does not block the server: another request is answered while the webhook is slow", function()
    start({ requestTimeout = 5000 })
    local order = {}
    t.client:request({ method = "POST", url = t.url .. "/api/auth", headers = { ["Content-Type"] = "application/json" },
      body = json.encode({ username = "slow", ms = 800 }) }, function(res) order[#order + 1] = { "auth", res.status } end)
    local started = core.now()
    local other = t:request({ method = "GET", path = "/health-check" })
    local other_ms = core.now() - started
    assert.equal(200, other.status)
    t:run_until(function() return #order == 1 end)
    assert.same({ "auth", 200 }, order[1])
    -- the health check came back while the login still waited for the webhook
    assert.is_true(other_ms < 800, "health check took " .. other_ms .. " ms")
    assert.is_true(core.now() - started >= 800)
  end)

  it("refuses a bad endpointUrl at start", function()
    local srv, err = require("moonstream").new({ auth = { { type = "webhook", options = { endpointUrl = "ftp://x" } } } })
    assert.is_nil(srv)
    assert.equal("config key 'auth[1].options.endpointUrl' must be an http:// or https:// URL (got 'ftp://x')", err)
  end)
end)

describe("lua strategy", function()
  local dir, t
  before_each(function() dir = H.tmpdir() end)
  after_each(function()
    if t then t:stop(); t = nil end
    H.rmdir(dir)
  end)

  local AUTH_FILE = [[
return function(authData, connectionData, ctx)
  if authData.username == "wait" then
    ctx.sleep(30) -- waits like an RPC handler
    return true, "waited", { w = true }, { role = "x" }
  elseif authData.username == "boom" then
    error("auth exploded")
  elseif authData.username == "no" then
    return false
  elseif authData.username == "addr" then
    return true, connectionData.remoteAddress
  end
  return nil -- not recognised: the next strategy decides
end
]]

  it("runs a function from a file that may wait, refuse, raise or pass", function()
    local path = write_file(dir, "auth.lua", AUTH_FILE)
    t = H.start({ auth = { { type = "lua", options = { path = path } }, { type = "open" } } })
    local res, body = login(t, { username = "wait" })
    assert.equal(200, res.status)
    assert.same({ w = true }, body.clientData)
    local user = t.server.tokens:lookup(body.token)
    assert.equal("waited", user.id)
    assert.same({ role = "x" }, user.data)
    _, body = login(t, { username = "addr" })
    assert.equal("127.0.0.1", t.server.tokens:lookup(body.token).id)
    assert.equal(401, login(t, { username = "no" }).status)
    local logged = capture_log(function()
      assert.equal(401, login(t, { username = "boom" }).status)
    end)
    assert.matches("auth function raised: " .. dir:gsub("%p", "%%%0") .. "/auth.lua:6: auth exploded", logged)
    _, body = login(t, { username = "someone" }) -- nil: open decides
    assert.equal("someone", t.server.tokens:lookup(body.token).id)
  end)

  it("takes an inline function", function()
    t = H.start({ auth = { { type = "lua", options = { fn = function(a) return a.k == 1, "inline" end } } } })
    assert.equal(200, emit_as(t, { authData = { k = 1 } }).status)
    assert.equal(401, emit_as(t, { authData = { k = 2 } }).status)
  end)
end)

describe("failed attempts", function()
  local t, now
  before_each(function()
    now = 0
    t = H.start({ maxAuthAttempts = 3, authAttemptsWindow = 60000, auth = { { type = "file", options = {
      users = REFERENCE_USERS, hash = "md5", iterations = 100, keyLength = 32 } } } })
    t.server.auth.now = function() return now end
  end)
  after_each(function() t:stop() end)

  it("are limited per client address with a clear 429, until the window passes", function()
    for _ = 1, 3 do assert.equal(401, login(t, { username = "fred", password = "guess" }).status) end
    local res = login(t, { username = "fred", password = "y4b4d4b4d00" })
    assert.equal(429, res.status)
    assert.equal("Too many failed authentication attempts from this address. Try again in 60 seconds.", res.body)
    assert.equal("60", res.headers["Retry-After"] or res.headers["retry-after"])
    assert.equal(429, emit_as(t, { token = "unknown" }).status)
    now = 60000
    assert.equal(200, login(t, { username = "fred", password = "y4b4d4b4d00" }).status)
  end)

  it("count unknown tokens too, but not a good login", function()
    assert.equal(200, login(t, { username = "fred", password = "y4b4d4b4d00" }).status)
    assert.equal(401, emit_as(t, { token = "a" }).status)
    assert.equal(401, emit_as(t, { token = "b" }).status)
    assert.equal(401, emit_as(t, { authData = { username = "fred", password = "c" } }).status)
    assert.equal(429, emit_as(t, { token = "d" }).status)
  end)
end)

describe("logging", function()
  it("never writes passwords or tokens", function()
    local t = H.start({ auth = { { type = "file", options = {
      users = REFERENCE_USERS, hash = "md5", iterations = 100, keyLength = 32 } } } })
    local token
    local logged = capture_log(function()
      login(t, { username = "fred", password = "wrong-pass-XYZ" })
      local _, body = login(t, { username = "fred", password = "y4b4d4b4d00" })
      token = body.token
      emit_as(t, { token = token })
      emit_as(t, { token = "made-up-token-QQ" })
    end)
    t:stop()
    assert.is_nil(logged:find("wrong-pass-XYZ", 1, true))
    assert.is_nil(logged:find("y4b4d4b4d00", 1, true))
    assert.is_nil(logged:find(token, 1, true))
    assert.is_nil(logged:find("made-up-token-QQ", 1, true))
  end)
end)
