-- moonstream.records: versions, the pending overlay and group commit on a
-- real LevelDB, and storage failures through a store that fails on purpose.
local core = require "moonstream.core"
local json = require "moonstream.json"
local records_mod = require "moonstream.records"
local H = require "spec.support.helpers"

describe("moonstream.records", function()
  local dir, store, records

  before_each(function()
    dir = H.tmpdir()
    store = assert(core.store_open(dir .. "/db"))
    records = records_mod.new(store)
  end)

  after_each(function()
    store:close()
    H.rmdir(dir)
  end)

  local function write(name, data, version, path)
    return records:cmd_write(name, data, path, version, "record")
  end

  it("creates a record at version 1 and counts versions up", function()
    assert.is_true(write("a", { n = 1 }).success)
    assert.is_true(write("a", { n = 2 }, 2).success)
    assert.is_true(write("a", { n = 3 }, -1).success)
    local r = records:cmd_read("a", "record")
    assert.equal(3, r.version)
    assert.equal('{"n":3}', r.data[1])
  end)

  it("reports VERSION_EXISTS and INVALID_VERSION with the stored state", function()
    write("v", { n = 1 })
    local r = write("v", { n = 9 }, 1)
    assert.equal("VERSION_EXISTS", r.errorEvent)
    assert.equal('Record update failed. Version 1 exists for record "v".', r.error)
    assert.equal(1, r.currentVersion)
    r = write("v", { n = 9 }, 5)
    assert.equal("INVALID_VERSION", r.errorEvent)
    assert.equal('Record update failed. Version 5 is not valid for record "v".', r.error)
    assert.is_true(write("v", { n = 2 }, 2).success)
  end)

  it("treats version 0 as an existing version, even for a new record", function()
    local r = write("zero", { n = 1 }, 0)
    assert.equal("VERSION_EXISTS", r.errorEvent)
    assert.equal(0, r.currentVersion)
    assert.equal(json.null, r.currentData)
    assert.is_nil((records:get("zero")))
  end)

  it("refuses non-container data without a path, and a path with only dots counts as none", function()
    assert.equal("INVALID_MESSAGE_DATA", write("s", "text").errorEvent)
    assert.equal("INVALID_MESSAGE_DATA", write("s", "text", nil, " . ").errorEvent)
    assert.is_nil((records:get("s")))
  end)

  it("applies path writes to the stored record", function()
    write("p", { keep = true })
    assert.is_true(write("p", 5, nil, "a.b[1]").success)
    local _, text = records:get("p")
    assert.same({ keep = true, a = { b = json.array({ json.null, 5 }) } }, json.decode(text))
  end)

  it("sees pending writes before they are flushed, and not on disk until then", function()
    write("g", { n = 1 })
    assert.is_true(records:has_pending())
    assert.equal(1, (records:get("g")))
    assert.is_nil(store:get("r/g"))
    local woke
    records:after_flush(function(ok) woke = ok end)
    assert.is_true(records:flush())
    assert.is_true(woke)
    assert.equal('1 {"n":1}', store:get("r/g"))
    assert.is_false(records:flush())
  end)

  it("commits many writes with one sync", function()
    for i = 1, 50 do write("many/" .. i, { i = i }) end
    records:flush()
    assert.equal(1, records:syncs())
    local n = 0
    for name, version in records:each("many/") do
      n = n + 1
      assert.equal(1, version)
      assert.matches("^many/%d+$", name)
    end
    assert.equal(50, n)
  end)

  it("deletes records; a later write starts again at version 1", function()
    write("d", { n = 1 })
    write("d", { n = 2 })
    assert.is_true(records:cmd_delete("d", "record").success)
    assert.equal(-1, records:cmd_head("d", "record").version)
    assert.equal("RECORD_NOT_FOUND", records:cmd_read("d", "record").errorEvent)
    write("d", { n = 3 })
    records:flush()
    assert.equal('1 {"n":3}', store:get("r/d"))
  end)

  it("keeps excluded names in memory only", function()
    local mem = records_mod.new(store, { exclusion_prefixes = { "tmp/" } })
    assert.is_true(mem:cmd_write("tmp/x", { a = 1 }, nil, nil, "record").success)
    assert.is_false(mem:has_pending())
    assert.equal(1, mem:cmd_read("tmp/x", "record").version)
    assert.is_nil(store:get("r/tmp/x"))
  end)

  it("reports a corrupt entry as an error on that record only", function()
    assert(store:put("r/bad", "not a version"))
    assert.equal("RECORD_LOAD_ERROR", records:cmd_read("bad", "record").errorEvent)
    assert(store:put("r/negative", "-5 {}")) -- versions start at 1
    assert.equal("RECORD_LOAD_ERROR", records:cmd_read("negative", "record").errorEvent)
    assert.equal("RECORD_UPDATE_ERROR", write("bad", { x = 1 }, 2).errorEvent)
    write("good", { n = 1 })
    assert.is_true(records:cmd_read("good", "record").success)
  end)

  it("writes on the store's writer thread while the next group gathers", function()
    local loop = core.loop()
    local r = records_mod.new(store, { loop = loop })
    r:cmd_write("a", { n = 1 }, nil, nil, "record")
    local first, second
    r:after_flush(function(ok) first = ok end)
    assert.is_true(r:flush())
    assert.is_true(store:write_pending())
    -- while the first group is being written: reads see it, new writes gather
    assert.equal(1, (r:get("a")))
    assert.is_true(r:has_pending())
    r:cmd_write("a", { n = 2 }, nil, nil, "record")
    r:after_flush(function(ok) second = ok end)
    assert.is_false(r:flush())
    for _ = 1, 500 do
      if first and second then break end
      loop:run_once(10)
      r:flush()
    end
    assert.is_true(first)
    assert.is_true(second)
    assert.equal(2, r:syncs())
    assert.equal('2 {"n":2}', store:get("r/a"))
    r:cmd_write("b", { n = 1 }, nil, nil, "record")
    r:drain()
    assert.is_false(r:has_pending())
    assert.equal('1 {"n":1}', store:get("r/b"))
    loop:close()
  end)

  it("refuses a second write_async while one is in flight", function()
    local loop = core.loop()
    local b1, b2 = store:batch(), store:batch()
    b1:put("x", "1")
    local done
    assert(store:write_async(loop, b1, true, function(ok) done = ok end))
    assert.has_error(function() b1:put("y", "2") end, "attempt to use a batch while it is being written")
    assert.has_error(function() store:write_async(loop, b2, true, function() end) end, "a write is already in flight")
    for _ = 1, 500 do
      if done then break end
      loop:run_once(10)
    end
    assert.is_true(done)
    assert.equal("1", store:get("x"))
    loop:close()
  end)

  it("hands a failed sync to the waiters", function()
    -- (a full disk is spec/60-disk_spec.lua; here the store is closed under the records)
    local dir = os.tmpname()
    os.remove(dir)
    local other = assert(core.store_open(dir))
    local r = records_mod.new(other)
    r:cmd_write("x", { a = 1 }, nil, nil, "record")
    local got_ok, got_err
    r:after_flush(function(ok, err) got_ok, got_err = ok, err end)
    other:close()
    r:flush()
    assert.is_nil(got_ok)
    assert.matches("closed", got_err)
    assert.is_false(r:has_pending())
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)
