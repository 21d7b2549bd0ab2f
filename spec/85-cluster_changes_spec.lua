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
