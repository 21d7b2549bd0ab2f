-- moonstream.core loop: timers, fd watchers, the iteration hook, run/stop.
local core = require "moonstream.core"

describe("moonstream.core loop", function()
  local loop

  before_each(function() loop = assert(core.loop()) end)
  after_each(function() loop:close() end)

  -- Runs iterations until done() (bounded so a bug fails instead of hanging).
  local function run_until(done)
    for _ = 1, 1000 do
      if done() then return end
      loop:run_once(20)
    end
    error("loop did not get there")
  end

  it("fires timers in order of their due time", function()
    local order = {}
    loop:timer(30, function() order[#order + 1] = "c" end)
    loop:timer(10, function() order[#order + 1] = "a" end)
    loop:timer(20, function() order[#order + 1] = "b" end)
    run_until(function() return #order == 3 end)
    assert.same({ "a", "b", "c" }, order)
  end)

  it("fires timers with the same due time in creation order", function()
    local order = {}
    for i = 1, 5 do loop:timer(0, function() order[#order + 1] = i end) end
    run_until(function() return #order == 5 end)
    assert.same({ 1, 2, 3, 4, 5 }, order)
  end)

  it("does not fire a cancelled timer, and cancelling twice is harmless", function()
    local fired = false
    local t = loop:timer(5, function() fired = true end)
    assert.is_true(t:active())
    t:cancel()
    t:cancel()
    assert.is_false(t:active())
    local done = false
    loop:timer(20, function() done = true end)
    run_until(function() return done end)
    assert.is_false(fired)
  end)

  -- A later timer firing shows that an earlier due time has passed.
  local function run_past(ms)
    local done = false
    loop:timer(ms, function() done = true end)
    run_until(function() return done end)
  end

  it("closes a timer for good: it never fires, closing twice is harmless, using it raises", function()
    local fired = false
    local t = loop:timer(5, function() fired = true end)
    assert.matches("armed", tostring(t))
    t:close()
    t:close()
    assert.matches("closed", tostring(t))
    assert.has_error(function() t:cancel() end, "attempt to use a closed timer")
    assert.has_error(function() t:active() end, "attempt to use a closed timer")
    run_past(20)
    assert.is_false(fired)
  end)

  it("closes a to-be-closed timer when its scope ends, also through an error", function()
    local fired, kept = 0, nil
    do
      local t <close> = loop:timer(5, function() fired = fired + 1 end)
      kept = t
    end
    local ok, err = pcall(function()
      local t <close> = loop:timer(5, function() fired = fired + 1 end)
      error("left by an error")
    end)
    assert.is_false(ok)
    assert.matches("left by an error", err)
    run_past(20)
    assert.equal(0, fired)
    assert.has_error(function() kept:active() end, "attempt to use a closed timer")
  end)

  it("lets a timer close itself while it fires, and closes one whose loop is closed", function()
    local t
    t = loop:timer(0, function() t:close() end)
    run_until(function() return tostring(t):find("closed") ~= nil end)
    local other = loop:timer(50, function() end)
    loop:close()
    other:close()
    assert.has_error(function() other:cancel() end, "attempt to use a closed timer")
    loop = core.loop()
  end)

  it("does not starve fds when a timer re-arms itself at 0 ms", function()
    local count = 0
    local function again()
      count = count + 1
      if count < 100 then loop:timer(0, again) end
    end
    loop:timer(0, again)
    assert.equal(1, loop:run_once(0))
    assert.equal(1, count)
  end)

  it("keeps an armed timer alive when the caller drops it", function()
    local fired = false
    loop:timer(10, function() fired = true end)
    collectgarbage()
    collectgarbage()
    run_until(function() return fired end)
    assert.is_true(fired)
  end)

  it("reports an error raised by a timer callback and keeps running", function()
    local reported
    local reg = debug.getregistry()
    local saved = reg["moonstream.error_reporter"]
    reg["moonstream.error_reporter"] = function(msg) reported = msg end
    local after = false
    loop:timer(0, function() error("timer bug") end)
    loop:timer(5, function() after = true end)
    run_until(function() return after end)
    reg["moonstream.error_reporter"] = saved
    assert.matches("timer bug", reported)
  end)

  it("watches a file descriptor until unwatched", function()
    -- the read end of a pipe made by io.popen is not reachable from Lua, so use
    -- the loop's own facility on an eventfd-like fd: a FIFO opened read-write
    local path = os.tmpname()
    os.remove(path)
    assert(os.execute("mkfifo " .. path))
    local f = assert(io.open(path, "r+"))
    -- /proc/self/fd lists the descriptor numbers; find the one for the fifo
    local fd
    local p = io.popen("ls -l /proc/" .. io.open("/proc/self/stat"):read("n") .. "/fd 2>/dev/null")
    for line in p:lines() do
      local n, target = line:match("(%d+) %-> (.*)$")
      if target == path then fd = tonumber(n) end
    end
    p:close()
    assert.is_number(fd)
    local reads = 0
    assert(loop:watch(fd, "r", function(readable)
      if readable then
        reads = reads + 1
        f:read(1)
      end
    end))
    f:write("x"); f:flush()
    run_until(function() return reads == 1 end)
    loop:unwatch(fd)
    f:write("y"); f:flush()
    loop:run_once(20)
    assert.equal(1, reads)
    f:close()
    os.remove(path)
  end)

  it("serves a watch marked first before the other fds ready in the same turn", function()
    -- three FIFOs made ready in the order a, b, c; epoll reports them in that order
    local pid = io.open("/proc/self/stat"):read("n")
    local fifos, order = {}, {}
    for i, name in ipairs({ "a", "b", "c" }) do
      local path = os.tmpname()
      os.remove(path)
      assert(os.execute("mkfifo " .. path))
      fifos[i] = { name = name, path = path, f = assert(io.open(path, "r+")) }
    end
    local p = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
    for line in p:lines() do
      local n, target = line:match("(%d+) %-> (.*)$")
      for _, x in ipairs(fifos) do if target == x.path then x.fd = tonumber(n) end end
    end
    p:close()
    for _, x in ipairs(fifos) do
      assert.is_number(x.fd)
      assert(loop:watch(x.fd, "r", function(readable)
        if readable then order[#order + 1] = x.name; x.f:read(1) end
      end, x.name == "c"))
    end
    for _, x in ipairs(fifos) do x.f:write("x"); x.f:flush() end
    run_until(function() return #order == 3 end)
    assert.same({ "c", "a", "b" }, order)
    -- watching c again without the flag replaces it, as it replaces events and callback
    local c = fifos[3]
    assert(loop:watch(c.fd, "r", function(readable)
      if readable then order[#order + 1] = c.name; c.f:read(1) end
    end))
    order = {}
    for _, x in ipairs(fifos) do x.f:write("x"); x.f:flush() end
    run_until(function() return #order == 3 end)
    assert.same({ "a", "b", "c" }, order)
    for _, x in ipairs(fifos) do loop:unwatch(x.fd); x.f:close(); os.remove(x.path) end
  end)

  it("runs the iteration hook before waiting and after each iteration", function()
    local calls = 0
    loop:on_iteration(function() calls = calls + 1 end)
    loop:run_once(0)
    assert.equal(2, calls)
    loop:on_iteration(nil)
    loop:run_once(0)
    assert.equal(2, calls)
  end)

  it("runs until stop() and refuses to run re-entrantly", function()
    local inner_err
    loop:timer(5, function()
      local ok, err = pcall(loop.run_once, loop, 0)
      inner_err = not ok and err
      loop:stop()
    end)
    loop:run()
    assert.matches("already running", inner_err)
  end)

  it("raises when a closed loop is used, and closes twice", function()
    loop:close()
    loop:close()
    assert.has_error(function() loop:timer(1, function() end) end, "attempt to use a closed loop")
    loop = core.loop()
  end)
end)
