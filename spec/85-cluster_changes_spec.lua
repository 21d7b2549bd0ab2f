-- The record change sequencer (lua/moonstream/cluster/changes.lua): per
-- watched record, changes are delivered in version order, once, whichever
-- of the node's engine and Redis brings them first; a gap is waited for at
-- most GAP_MS (a timer on the loop), then skipped; a deletion is delivered
-- once and lets the record start anew.
local core = require "moonstream.core"
local changes_mod = require "moonstream.cluster.changes"

describe("record changes in version order", function()
  local loop, got, ch
  before_each(function()
    loop = core.loop()
    got = {}
    ch = changes_mod.new(loop, function(name, version, text, origin)
      got[#got + 1] = { name, version or "deleted", text, origin }
    end)
    ch:watch("r")
  end)
  after_each(function()
    ch:close()
    loop:close()
  end)

  it("drops what it delivered already, keeping the first origin it heard", function()
    ch:change("r", 1, "a", "conn")   -- the engine, at once
    ch:change("r", 1, "a", nil)      -- Redis' copy
    ch:change("r", 2, "b", nil)      -- Redis first
    ch:change("r", 2, "b", "conn")   -- the engine's answer after
    assert.same({ { "r", 1, "a", "conn" }, { "r", 2, "b" } }, got)
  end)

  it("holds a version that skips ahead until the ones before it come", function()
    ch:change("r", 1, "a")
    ch:change("r", 3, "c")
    ch:change("r", 4, "d")
    assert.equal(1, #got)
    ch:change("r", 2, "b")
    assert.same({ 1, 2, 3, 4 }, { got[1][2], got[2][2], got[3][2], got[4][2] })
  end)

  it("skips a gap that never fills after GAP_MS", function()
    ch:change("r", 1, "a")
    ch:change("r", 3, "c")
    local deadline = core.now() + 10 * changes_mod.GAP_MS
    while #got < 2 and core.now() < deadline do loop:run_once(changes_mod.GAP_MS) end
    assert.same({ "r", 3, "c" }, got[2])
    ch:change("r", 2, "late")
    assert.equal(2, #got)
  end)

  it("delivers a deletion once, then the record's new life", function()
    ch:change("r", 5, "x")
    ch:change("r", nil, nil, "conn")
    ch:change("r", nil, nil)
    ch:change("r", 1, "again")
    assert.same({ { "r", 5, "x" }, { "r", "deleted", nil, "conn" }, { "r", 1, "again" } }, got)
  end)

  it("delivers a notify of the version delivered last again, drops one older, orders one newer", function()
    ch:change("r", 1, "a")
    ch:change("r", 2, "b")
    ch:notify("r", 2, "b")         -- the stored state told again
    ch:notify("r", 1, "a")         -- read before version 2 was written: stale
    ch:notify("r", 4, "d")         -- read after a change this node has not heard yet
    assert.equal(3, #got)
    ch:change("r", 3, "c")
    ch:change("r", 4, "d")         -- the change the notify read: heard already
    assert.same({ 1, 2, 2, 3, 4 }, { got[1][2], got[2][2], got[3][2], got[4][2], got[5][2] })
    ch:notify("r", nil, nil)       -- no longer stored
    ch:notify("r", nil, nil)
    ch:notify("other", 9, "t")     -- nobody here watches it: passed on
    assert.same({ { "r", "deleted" }, { "other", 9, "t" } }, { got[6], got[7] })
    assert.equal(7, #got)
  end)

  it("catches up with the stored state after the subscriber was away", function()
    ch:change("r", 1, "a")
    ch:change("r", 3, "c")         -- 2 was lost while the subscriber was away
    ch:catch_up("r", 1, "a")       -- not newer
    ch:catch_up("r", 4, "d")       -- the stored state: 3 is dropped, 4 delivered at once
    ch:change("r", 5, "e")
    ch:catch_up("other", 9, "t")   -- nobody here watches it
    assert.same({ { "r", 1, "a" }, { "r", 4, "d" }, { "r", 5, "e" } }, got)
  end)

  it("passes on changes of records nobody here watches", function()
    ch:change("other", 7, "t")
    ch:change("other", 7, "t")
    assert.equal(2, #got)
    ch:forget("r")
    ch:change("r", 1, "a")
    ch:change("r", 1, "a")
    assert.equal(4, #got)
  end)
end)

describe("notify across nodes", function()
  local H = require "spec.support.helpers"
  local C = require "spec.support.cluster"
  local json = require "moonstream.json"
  local redis, a, b
  C.two_nodes(function(r) return { cluster = { redis = r.url }, storageExclusionPrefixes = { "s85mem/" } } end,
    function(r, x, y) redis, a, b = r, x, y end)

  local function until_true(t, done, what)
    for _ = 1, 1000 do
      if done() then return end
      t.loop:run_once(10)
    end
    error("timed out waiting for " .. what)
  end

  -- Subscribes c to name (creating it) and waits until Redis counts n
  -- subscribers of its channel.
  local function subscribe(c, name, n)
    c.send({ topic = 5, action = 23, names = { name }, correlationId = "0" })
    c.expect({ isAck = true })
    c.expect({ action = 4 })
    until_true(a, function()
      b.loop:run_once(0)
      return redis:command({ "PUBSUB", "NUMSUB", "ms:c:r:" .. name })[2] == n
    end, n .. " subscriber(s) of " .. name)
  end

  it("tells subscribers on every node the stored state once, from HTTP and from a client", function()
    local ca, cb = H.realtime_client(a), H.realtime_client(b)
    ca.login("ann"); cb.login("bob")
    subscribe(ca, "s85/n", 1)
    subscribe(cb, "s85/n", 2)
    local _, r = b:api({ { topic = "record", action = "write", recordName = "s85/n", data = { x = 1 } } })
    assert.is_true(r.body[1].success)
    for _, c in ipairs({ ca, cb }) do c.expect({ topic = 5, action = 18, name = "s85/n", version = 1 }) end
    -- the record changed behind the servers' backs (as in Redis directly)
    assert.equal(0, redis:command({ "HSET", "ms:r:s85/n", "d", '{"x":"behind"}' }))
    _, r = a:api({ { topic = "record", action = "notify", recordNames = { "s85/n" } } })
    assert.is_true(r.body[1].success)
    for _, c in ipairs({ ca, cb }) do
      local m = c.expect({ topic = 5, action = 18, name = "s85/n", version = 1 })
      assert.same({ x = "behind" }, json.decode(m.data))
      assert.same({}, c.drain(), "once")
    end
    -- a client's notify on b
    cb.send({ topic = 5, action = 2, names = { "s85/n" }, correlationId = "n1" })
    cb.expect({ topic = 5, action = 2, isAck = true })
    for _, c in ipairs({ cb, ca }) do
      c.expect({ topic = 5, action = 18, name = "s85/n", version = 1 })
      assert.same({}, c.drain(), "once")
    end
    -- no longer stored: every node's subscribers hear it was deleted
    assert.equal(1, redis:command({ "DEL", "ms:r:s85/n" }))
    a:api({ { topic = "record", action = "notify", recordNames = { "s85/n" } } })
    for _, c in ipairs({ ca, cb }) do
      c.expect({ topic = 5, action = 13, name = "s85/n" })
      assert.same({}, c.drain(), "once")
    end
  end)

  it("keeps a notify of a record kept in memory on its node", function()
    local ca, cb = H.realtime_client(a), H.realtime_client(b)
    ca.login("ann"); cb.login("bob")
    subscribe(ca, "s85mem/m", 1)
    subscribe(cb, "s85mem/m", 2)
    a:api({ { topic = "record", action = "notify", recordNames = { "s85mem/m" } } })
    local m = ca.expect({ topic = 5, action = 18, name = "s85mem/m", version = 0 })
    assert.same({}, json.decode(m.data))
    assert.same({}, ca.drain(), "once")
    assert.same({}, cb.drain(), "b's copy is b's own")
  end)
end)
