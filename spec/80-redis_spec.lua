-- The Redis connection (csrc/redis.c, redis_lua.c) against a real
-- redis-server: commands on the server's loop, errors, pub/sub, a bound on
-- replies, a wrong password, reconnection (with resubscription) after Redis
-- was killed and restarted, and close with commands in flight.
local core = require "moonstream.core"
local C = require "spec.support.cluster"

local MAX_TURNS = 2000 -- run_once(10) each: a stuck wait fails instead of hanging

local function run_until(loop, done, what)
  local n = 0
  while not done() do
    n = n + 1
    assert(n <= MAX_TURNS, "timed out waiting for " .. (what or "a condition"))
    loop:run_once(10)
  end
end

local function connect(loop, redis, extra)
  local state = { up = false }
  local opts = {
    host = "127.0.0.1", port = redis.port, max_reply = 1024 * 1024, password = redis.password,
    on_state = function(up, err) state.up, state.err = up, err; state.changes = (state.changes or 0) + 1 end,
  }
  for k, v in pairs(extra or {}) do opts[k] = v end
  local conn = core.redis(loop, opts)
  return conn, state
end

describe("the Redis connection", function()
  local redis, loop
  setup(function() redis = C.redis() end)
  teardown(function() redis:stop() end)
  before_each(function() loop = core.loop() end)
  after_each(function() loop:close() end)

  it("runs commands on the loop and converts replies", function()
    local conn, state = connect(loop, redis)
    run_until(loop, function() return state.up end, "up")
    local got = {}
    assert.is_true(conn:command({ "SET", "spec80:a", "v1" }, function(r, e) got.set = { r, e } end))
    conn:command({ "GET", "spec80:a" }, function(r, e) got.get = { r, e } end)
    conn:command({ "GET", "spec80:missing" }, function(r, e) got.missing = { r, e } end)
    conn:command({ "INCR", "spec80:n" }, function(r, e) got.incr = { r, e } end)
    conn:command({ "LRANGE", "spec80:none", 0, -1 }, function(r, e) got.list = { r, e } end)
    conn:command({ "NOSUCHCOMMAND" }, function(r, e) got.err = { r, e } end)
    run_until(loop, function() return got.err ~= nil end, "replies")
    assert.same({ "OK" }, got.set)
    assert.same({ "v1" }, got.get)
    assert.same({}, got.missing)
    assert.equal("number", math.type(got.incr[1]) and "number")
    assert.same({ {} }, got.list)
    assert.is_nil(got.err[1])
    assert.matches("unknown command", got.err[2])
    assert.equal(0, conn:waiting())
    conn:close()
  end)

  it("delivers messages of subscribed channels only", function()
    local msgs = {}
    local sub, sstate = connect(loop, redis, { on_message = function(ch, data) msgs[#msgs + 1] = ch .. "=" .. data end })
    local pub, pstate = connect(loop, redis)
    run_until(loop, function() return sstate.up and pstate.up end, "up")
    sub:subscribe("spec80:ch1")
    -- PUBLISH answers how many subscribers got it: wait until ours is there
    local n
    repeat
      n = nil
      pub:command({ "PUBLISH", "spec80:ch1", "probe" }, function(r) n = r end)
      run_until(loop, function() return n ~= nil end, "publish")
    until n == 1
    pub:command({ "PUBLISH", "spec80:ch2", "not for us" }, function() end)
    pub:command({ "PUBLISH", "spec80:ch1", "hello" }, function() end)
    run_until(loop, function() return msgs[#msgs] == "spec80:ch1=hello" end, "message")
    for _, m in ipairs(msgs) do assert.matches("^spec80:ch1=", m) end
    sub:close()
    pub:close()
  end)

  it("refuses commands while down and says why", function()
    local conn, state = connect(loop, { port = C.free_port() })
    local ok, err = conn:command({ "PING" }, function() error("must not run") end)
    assert.is_nil(ok)
    assert.is_string(err)
    loop:run_once(10)
    assert.is_false((conn:up()))
    assert.is_false(state.up)
    conn:close()
  end)

  it("drops the connection when a reply exceeds max_reply", function()
    local conn, state = connect(loop, redis, { max_reply = 4096 })
    run_until(loop, function() return state.up end, "up")
    local got
    conn:command({ "SET", "spec80:big", string.rep("x", 100000) }, function() end)
    conn:command({ "GET", "spec80:big" }, function(r, e) got = { r, e } end)
    run_until(loop, function() return got ~= nil end, "the big reply")
    assert.is_nil(got[1])
    assert.matches("size limit", got[2])
    -- and it comes back by itself
    run_until(loop, function() return state.up end, "reconnection")
    conn:close()
  end)

  it("reports a wrong password and keeps trying", function()
    local locked = C.redis({ password = "s3cret" })
    local conn, state = connect(loop, { port = locked.port, password = "wrong" })
    run_until(loop, function() return (select(2, conn:up())):find("WRONGPASS") ~= nil end, "the AUTH error")
    assert.is_false(state.up)
    conn:close()
    local good, gstate = connect(loop, locked)
    run_until(loop, function() return gstate.up end, "up with the right password")
    good:close()
    locked:stop()
  end)

  it("reconnects with backoff and resubscribes after Redis was killed", function()
    local own = C.redis()
    local msgs = {}
    local sub, sstate = connect(loop, own, { on_message = function(_, data) msgs[#msgs + 1] = data end })
    local conn, state = connect(loop, own)
    run_until(loop, function() return state.up and sstate.up end, "up")
    sub:subscribe("spec80:re")
    local failed
    conn:command({ "BLPOP", "spec80:never", 0 }, function(r, e) failed = { r, e } end)
    own:kill9()
    run_until(loop, function() return failed ~= nil and not state.up and not sstate.up end, "down")
    assert.is_nil(failed[1])
    assert.is_string(failed[2])
    own:restart()
    run_until(loop, function() return state.up and sstate.up end, "reconnection")
    local n
    repeat
      n = nil
      conn:command({ "PUBLISH", "spec80:re", "again" }, function(r) n = r end)
      run_until(loop, function() return n ~= nil end, "publish")
    until n == 1
    run_until(loop, function() return msgs[#msgs] == "again" end, "a message after resubscribing")
    sub:close()
    conn:close()
    own:stop()
  end)

  it("close fails waiting commands without calling Lua, and is safe twice", function()
    local conn, state = connect(loop, redis)
    run_until(loop, function() return state.up end, "up")
    local called = false
    conn:command({ "BLPOP", "spec80:never", 0 }, function() called = true end)
    conn:close()
    conn:close()
    loop:run_once(10)
    assert.is_false(called)
    assert.has_error(function() conn:command({ "PING" }, function() end) end,
      "attempt to use a closed Redis connection")
    local c2 <close> = connect(loop, redis)
  end)
end)
