-- Group commit of a hot record (csrc/records.c): a group's LevelDB batch is
-- built from the pending overlay at flush, one put or delete per record
-- however often the record changed in the group, and the newest state is
-- what a reopened store holds.
local core = require "moonstream.core"
local json = require "moonstream.json"
local records_mod = require "moonstream.record_engine"
local H = require "spec.support.helpers"

local MAX = 16777216

-- bytes in the LevelDB write-ahead logs of the folder (the group's batch goes there first)
local function log_bytes(db)
  local total = 0
  for name in io.popen("ls " .. db):lines() do
    if name:match("%.log$") then
      local f = assert(io.open(db .. "/" .. name, "rb"))
      total = total + f:seek("end")
      f:close()
    end
  end
  return total
end

describe("hot-record group commit", function()
  local dir, db, store, records

  before_each(function()
    dir, store, records, db = H.record_engine({ max_response = MAX })
  end)

  after_each(function()
    store:close()
    H.rmdir(dir)
  end)

  local function ok(success, text)
    local r = json.decode(text)
    assert.is_true(success, text)
    return r
  end
  local function write(name, data, version)
    return ok(records:write(nil, "record", name, data, nil, version))
  end
  local function read(name)
    local _, text = records:read(nil, "record", name)
    return json.decode(text)
  end
  -- closes and reopens the store: what is on disk
  local function reopen()
    store:close()
    store = assert(core.store_open(db))
    records = records_mod.new(store, { max_response = MAX })
  end

  it("writes many changes of one record in a group as one entry of its newest version", function()
    local filler = string.rep("x", 2000)
    local before = log_bytes(db)
    for i = 1, 200 do write("hot", { n = i, filler = filler }, -1) end
    assert.equal(200, read("hot").version)  -- the overlay answers before the flush
    assert.equal(0, records:syncs())
    records:flush()
    assert.equal(1, records:syncs())
    -- one ~2 KB entry, not 200 of them (400 KB)
    local grew = log_bytes(db) - before
    assert.is_true(grew > 2000 and grew < 20000, "the log grew by " .. grew .. " bytes")
    reopen()
    local r = read("hot")
    assert.equal(200, r.version)
    assert.equal(200, r.data.n)
  end)

  it("keeps the last of a write and a delete of one record in a group", function()
    write("gone", { n = 1 })
    write("back", { n = 1 })
    records:flush()
    write("gone", { n = 2 }, 2)
    ok(records:delete(nil, "record", "gone"))
    ok(records:delete(nil, "record", "back"))
    write("back", { n = 9 }, -1)
    records:flush()
    reopen()
    assert.is_false(read("gone").success)
    local r = read("back")
    assert.equal(1, r.version)  -- recreated after its delete
    assert.same({ n = 9 }, r.data)
  end)

  it("continues a hot record's versions across groups", function()
    for i = 1, 50 do write("hot", { n = i }, -1) end
    records:flush()
    for i = 51, 120 do write("hot", { n = i }, -1) end
    records:flush()
    assert.equal(2, records:syncs())
    reopen()
    local r = read("hot")
    assert.equal(120, r.version)
    assert.same({ n = 120 }, r.data)
  end)
end)
