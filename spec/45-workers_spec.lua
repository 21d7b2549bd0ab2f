-- The worker pool (csrc/workers.c) and file-auth logins hashed on it: results
-- equal core.pbkdf2's, callbacks run only from the loop, the loop answers
-- other requests while a hash is outstanding, the per-address failure limit
-- holds for attempts in flight at once, and close drains. Ordering is shown
-- with pool:hold (no job starts while held), never with timing.
local core = require "moonstream.core"
local json = require "moonstream.json"
local H = require "spec.support.helpers"

local REFERENCE_USERS = "spec/support/deepstream-users.yml"
local FILE_AUTH = { { type = "file", options = { users = REFERENCE_USERS, hash = "md5", iterations = 100, keyLength = 32 } } }

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

describe("worker pool (csrc/workers.c)", function()
  local loop, pool
  before_each(function()
    loop = core.loop()
    pool = core.workers(loop, 2)
  end)
  after_each(function()
    pool:close()
    loop:close()
  end)

  local function run_until(done)
    for _ = 1, 600 do
      if done() then return end
      loop:run_once(50)
    end
    error("no result after 600 loop turns")
  end

  it("hashes as core.pbkdf2 does and calls back only from the loop", function()
    local got = {}
    for i = 1, 8 do
      assert.is_true(pool:pbkdf2("password", "salt", 4096, 20, "sha1", function(key) got[i] = key end))
    end
    assert.equal(8, pool:pending())
    assert.same({}, got) -- nothing runs Lua but the loop
    run_until(function() return pool:pending() == 0 end)
    for i = 1, 8 do assert.equal("4b007901b765489abead49d926f721d065a429c1", hex(got[i])) end
    assert.equal(core.pbkdf2("pw", "s", 10, 64, "sha512"), (function()
      local k
      pool:pbkdf2("pw", "s", 10, 64, "sha512", function(key) k = key end)
      run_until(function() return k ~= nil end)
      return k
    end)())
  end)

  it("refuses bad arguments as core.pbkdf2 does", function()
    local ok, err = pool:pbkdf2("a", "b", 1, 16, "nope", error)
    assert.is_nil(ok)
    assert.equal("unknown digest 'nope'", err)
    assert.has.error(function() pool:pbkdf2("a", "b", 0, 16, "sha256", error) end)
    assert.has.error(function() pool:pbkdf2("a", "b", 1, 0, "sha256", error) end)
    assert.has.error(function() pool:pbkdf2("a", "b", 1, 16, "sha256") end)
    assert.equal(0, pool:pending())
  end)

  it("writes synced puts into a store off the loop thread", function()
    local dir = H.tmpdir()
    local st = assert(core.store_open(dir .. "/db"))
    local results = {}
    for i = 1, 20 do
      assert.is_true(pool:put(st, "k" .. i, "v" .. i, function(ok, err) results[i] = ok or err end))
    end
    run_until(function() return pool:pending() == 0 end)
    for i = 1, 20 do
      assert.is_true(results[i])
      assert.equal("v" .. i, st:get("k" .. i))
    end
    st:close()
    assert.has.error(function() pool:put(st, "k", "v", error) end) -- a closed store is misuse
    H.rmdir(dir)
  end)

  it("runs a put on its own thread, not behind the hashes queued before it", function()
    local one = core.workers(loop, 1)
    local dir = H.tmpdir()
    local st = assert(core.store_open(dir .. "/db"))
    local order = {}
    -- six hashes of 100 000 iterations (~0.15 s on one thread, far more under valgrind) before one put
    for i = 1, 6 do
      assert.is_true(one:pbkdf2("pw", "salt", 100000, 32, "sha256", function() order[#order + 1] = "hash" .. i end))
    end
    assert.is_true(one:put(st, "token", "t", function(ok) order[#order + 1] = ok and "put" or "put failed" end))
    while one:pending() > 0 do loop:run_once(50) end
    one:close()
    st:close()
    H.rmdir(dir)
    assert.equal(7, #order)
    assert.equal("hash6", order[7], table.concat(order, " "))  -- a single FIFO queue would end with the put
    assert.truthy(table.concat(order, " "):find("put", 1, true))
  end)

  it("drains on close: held jobs still run and call back; then it is closed", function()
    pool:hold(true)
    local got = 0
    for _ = 1, 3 do pool:pbkdf2("a", "b", 10, 8, "sha256", function(key) got = got + #key end) end
    pool:close()
    assert.equal(24, got)
    assert.equal(0, pool:pending())
    local ok, err = pool:pbkdf2("a", "b", 1, 8, "sha256", error)
    assert.is_nil(ok)
    assert.equal("closed", err)
    pool:close() -- twice is fine
  end)
end)

describe("file-auth logins on the worker pool", function()
  local t, pool
  before_each(function()
    t = H.start({ maxAuthAttempts = 3, auth = FILE_AUTH })
    pool = t.server.workers
  end)
  after_each(function() t:stop() end)

  -- Starts POST /api/auth requests; returns the table their responses fill.
  local function start_logins(list)
    local results = { n = 0 }
    for i, auth_data in ipairs(list) do
      assert(t.client:request({ method = "POST", url = t.url .. "/api/auth", body = json.encode(auth_data),
        headers = { ["Content-Type"] = "application/json", Expect = false }, timeout = 30000 }, function(res, err)
        results[i] = res or { error = err }
        results.n = results.n + 1
      end))
    end
    return results
  end

  it("answers other requests while a login's hash is outstanding", function()
    local first = start_logins({ { username = "fred", password = "y4b4d4b4d00" } })
    t:run_until(function() return first.n == 1 end)
    local token = json.decode(first[1].body).token
    local written = t:api({ token = token, body = { { topic = "record", action = "write", recordName = "r", data = { a = 1 } } } })
    assert.equal(200, written.status)
    pool:hold(true)
    local logins = start_logins({ { username = "fred", password = "y4b4d4b4d00" } })
    t:run_until(function() return pool:pending() == 1 end)
    assert.equal(200, t:request({ method = "GET", path = "/health-check" }).status)
    local res, body = t:api({ token = token, body = { { topic = "record", action = "read", recordName = "r" } } })
    assert.equal(200, res.status)
    assert.equal("SUCCESS", body.result, json.encode(body))
    assert.same({ a = 1 }, body.body[1].data)
    assert.equal(0, logins.n) -- the login is still waiting for its hash
    pool:hold(false)
    t:run_until(function() return logins.n == 1 end)
    assert.equal(200, logins[1].status)
    assert.is_true(json.decode(logins[1].body).success)
  end)

  it("keeps the failure limit for attempts in flight at once", function()
    pool:hold(true)
    local bad = {}
    for i = 1, 5 do bad[i] = { username = "fred", password = "guess" .. i } end
    local results = start_logins(bad)
    t:run_until(function() return pool:pending() == 3 end)
    t:request({ method = "GET", path = "/health-check" }) -- every login has reached the server by now
    assert.equal(3, pool:pending()) -- only as many hashes as the limit allows
    pool:hold(false)
    t:run_until(function() return results.n == 5 end)
    local count = {}
    for i = 1, 5 do count[results[i].status] = (count[results[i].status] or 0) + 1 end
    assert.same({ [401] = 3, [429] = 2 }, count)
  end)

  it("lets every good login of one address through, a few at a time", function()
    pool:hold(true)
    local good = {}
    for i = 1, 7 do good[i] = { username = "fred", password = "y4b4d4b4d00" } end
    local results = start_logins(good)
    t:run_until(function() return pool:pending() == 3 end)
    pool:hold(false)
    t:run_until(function() return results.n == 7 end)
    for i = 1, 7 do assert.equal(200, results[i].status) end
  end)

  it("stops cleanly with a login waiting for its hash", function()
    pool:hold(true)
    start_logins({ { username = "fred", password = "y4b4d4b4d00" } })
    t:run_until(function() return pool:pending() == 1 end)
    t.server:close()
    assert.equal(0, pool:pending())
  end)
end)
