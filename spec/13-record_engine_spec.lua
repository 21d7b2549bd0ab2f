-- moonstream.record_engine: the record engine's commands (csrc/engine.c), the
-- pending overlay and group commit on a real LevelDB (csrc/records.c), and
-- storage failures through a store that fails on purpose.
local core = require "moonstream.core"
local json = require "moonstream.json"
local records_mod = require "moonstream.record_engine"
local H = require "spec.support.helpers"

local MAX = 16777216

describe("moonstream.record_engine", function()
  local dir, store, records

  before_each(function()
    dir, store, records = H.record_engine({ max_response = MAX })
  end)

  after_each(function()
    store:close()
    H.rmdir(dir)
  end)

  -- a command without a batch: ok, then its result as JSON text (decoded here)
  local function result(ok, text)
    local r = json.decode(text)
    assert.equal(ok, r.success)
    return r
  end
  local function write(name, data, version, path, on)
    return result((on or records):write(nil, "record", name, data, path, version))
  end
  local function cmd(op, name, on)
    on = on or records
    return result(on[op](on, nil, "record", name))
  end

  it("creates a record at version 1 and counts versions up", function()
    assert.is_true(write("a", { n = 1 }).success)
    assert.is_true(write("a", { n = 2 }, 2).success)
    assert.is_true(write("a", { n = 3 }, -1).success)
    local r = cmd("read", "a")
    assert.equal(3, r.version)
    assert.same({ n = 3 }, r.data)
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
    for key, value in store:iterate("r/many/") do
      n = n + 1
      assert.matches("^1 ", value)
      assert.matches("^r/many/%d+$", key)
    end
    assert.equal(50, n)
  end)

  it("deletes records; a later write starts again at version 1", function()
    write("d", { n = 1 })
    write("d", { n = 2 })
    assert.is_true(cmd("delete", "d").success)
    assert.equal(-1, cmd("head", "d").version)
    assert.equal("RECORD_NOT_FOUND", cmd("read", "d").errorEvent)
    write("d", { n = 3 })
    records:flush()
    assert.equal('1 {"n":3}', store:get("r/d"))
  end)

  it("keeps excluded names in memory only", function()
    local mem = records_mod.new(store, { exclusion_prefixes = { "tmp/" }, max_response = MAX })
    assert.is_true(write("tmp/x", { a = 1 }, nil, nil, mem).success)
    assert.is_false(mem:has_pending())
    assert.equal(1, cmd("read", "tmp/x", mem).version)
    assert.is_nil(store:get("r/tmp/x"))
  end)

  it("reports a corrupt entry as an error on that record only", function()
    assert(store:put("r/bad", "not a version"))
    assert.equal("RECORD_LOAD_ERROR", cmd("read", "bad").errorEvent)
    assert(store:put("r/negative", "-5 {}")) -- versions start at 1
    assert.equal("RECORD_LOAD_ERROR", cmd("read", "negative").errorEvent)
    assert.equal("RECORD_UPDATE_ERROR", write("bad", { x = 1 }, 2).errorEvent)
    assert.is_true(cmd("delete", "bad").success) -- a corrupt entry can be removed
    records:flush()
    assert.is_nil(store:get("r/bad"))
    write("good", { n = 1 })
    assert.is_true(cmd("read", "good").success)
  end)

  it("tells every subscriber every change, with the caller's origin, until it unsubscribes", function()
    local seen, others = {}, 0
    local r = records_mod.new(store, { max_response = MAX })
    r:subscribe(function(name, version, text, origin) seen[#seen + 1] = { name, version, text, origin } end)
    local unsubscribe = r:subscribe(function() others = others + 1 end)
    local me = {}
    assert.is_true((r:write(nil, "record", "o", { a = 1 }, nil, nil, me)))
    assert.is_true((r:write(nil, "record", "o", 2, "a")))
    unsubscribe()
    assert.is_true((r:delete(nil, "record", "o", me)))
    assert.is_true((r:create("fresh")))
    assert.same({
      { "o", 1, '{"a":1}', me }, { "o", 2, '{"a":2}', nil }, { "o", nil, nil, me }, { "fresh", 0, "{}", nil },
    }, seen)
    assert.equal(2, others)
  end)

  it("notifies each named record, a missing one as deleted, however many names there are", function()
    local n, deleted = 0, 0
    local r = records_mod.new(store, { max_response = MAX })
    r:subscribe(function(_, version)
      if version == nil then deleted = deleted + 1 else n = n + 1 end
    end)
    r:write(nil, "record", "x", { v = 1 })
    n = 0
    local names = {}
    for i = 1, 200000 do names[i] = i % 2 == 0 and "x" or "missing" end
    local ok, text = r:notify(nil, names)
    assert.is_true(ok)
    assert.equal('{"success":true}', text)
    assert.equal(100000, n)
    assert.equal(100000, deleted)
  end)

  it("bounds the record data of one batch's answer by max_response", function()
    local r = records_mod.new(store, { max_response = 30 })
    r:write(nil, "record", "big", { text = "0123456789" }) -- 21 bytes of JSON: one fits, two do not
    local b = r:batch()
    assert.is_true(r:read(b, "record", "big"))
    assert.is_false(r:read(b, "record", "big"))
    local answer = json.decode(b:response())
    assert.equal("PARTIAL_SUCCESS", answer.result)
    assert.equal('Record read failed. Record "big" does not fit in this response (maxResponseSize is 30 bytes).',
      answer.body[2].error)
    assert.is_true((r:read(nil, "record", "big"))) -- a single command is not bounded
    b:close()
  end)

  it("writes on the store's writer thread while the next group gathers", function()
    local loop = core.loop()
    local r = records_mod.new(store, { loop = loop, max_response = MAX })
    r:write(nil, "record", "a", { n = 1 })
    local first, second
    r:after_flush(function(ok) first = ok end)
    assert.is_true(r:flush())
    assert.is_true(r.core:in_flight())
    -- while the first group is being written: reads see it, new writes gather
    assert.equal(1, (r:get("a")))
    assert.is_true(r:has_pending())
    r:write(nil, "record", "a", { n = 2 })
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
    r:write(nil, "record", "b", { n = 1 })
    r:drain()
    assert.is_false(r:has_pending())
    assert.equal('1 {"n":1}', store:get("r/b"))
    loop:close()
  end)

  it("answers a waiter that saw only the group in flight when it lands, with the next group already writing", function()
    local loop = core.loop()
    local r = records_mod.new(store, { loop = loop, max_response = MAX })
    r:write(nil, "record", "a", { n = 1 })
    assert.is_true(r:flush())
    local seen = {}
    -- nothing gathered since the flush: the group in flight holds every change
    r:after_flush(function(ok) seen[#seen + 1] = { "first", ok, r.core:in_flight(), r:syncs() } end)
    r:write(nil, "record", "b", { n = 1 })
    r:after_flush(function(ok) seen[#seen + 1] = { "second", ok, r.core:in_flight(), r:syncs() } end)
    -- no flush() here: the first group's return hands the second to the writer
    for _ = 1, 500 do
      if #seen == 2 then break end
      loop:run_once(10)
    end
    assert.same({ { "first", true, true, 2 }, { "second", true, false, 2 } }, seen)
    assert.equal('1 {"n":1}', store:get("r/b"))
    loop:close()
  end)

  it("hands a failed sync to the waiters", function()
    -- (a full disk is spec/60-disk_spec.lua; here the store is closed under the records)
    local dir = os.tmpname()
    os.remove(dir)
    local other = assert(core.store_open(dir))
    local r = records_mod.new(other, { max_response = MAX })
    r:write(nil, "record", "x", { a = 1 })
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
