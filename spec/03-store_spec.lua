-- moonstream.core store: LevelDB bindings (store_open, Store, Batch, iterate).
local core = require "moonstream.core"

-- A fresh, empty directory path for one test; the store creates it.
local function temp_dir()
  local path = os.tmpname()
  os.remove(path)
  return path .. "-store"
end

local function collect(st, prefix)
  local keys, values = {}, {}
  for k, v in st:iterate(prefix) do
    keys[#keys + 1] = k
    values[#values + 1] = v
  end
  return keys, values
end

describe("moonstream.core store", function()
  local dir, st

  before_each(function()
    dir = temp_dir()
    local err
    st, err = core.store_open(dir)
    assert.is_nil(err)
    assert.is_not_nil(st)
  end)

  after_each(function()
    if st then st:close() end
    st = nil
    collectgarbage()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  describe("open", function()
    it("returns an open store that is not closed", function()
      assert.is_false(st:is_closed())
      assert.matches("^moonstream.Store", tostring(st))
    end)

    it("returns nil and LevelDB's lock error when the path is already open", function()
      local st2, err = core.store_open(dir)
      assert.is_nil(st2)
      assert.is_string(err)
      assert.matches("lock", err:lower())
    end)

    it("returns nil and a message when the directory is missing and create_if_missing is false", function()
      local st2, err = core.store_open(dir .. "/missing", { create_if_missing = false })
      assert.is_nil(st2)
      assert.is_string(err)
      assert.matches("does not exist", err)
    end)

    it("accepts every documented option", function()
      local other = dir .. "-opts"
      local st2, err = core.store_open(other, {
        create_if_missing = true, cache_size = 1024 * 1024, bloom_bits = 0,
        write_buffer_size = 1024 * 1024, max_open_files = 100, paranoid_checks = true,
      })
      assert.is_nil(err)
      assert.is_true(st2:put("k", "v"))
      assert.equal("v", st2:get("k"))
      st2:close()
      os.execute("rm -rf '" .. other .. "'")
    end)

    it("raises on a path with a zero byte", function()
      assert.has.error(function() core.store_open(dir .. "\0x") end,
        "bad argument #1 to 'store_open' (path contains a zero byte)")
    end)

    it("raises on a badly typed option", function()
      assert.has.error(function() core.store_open(dir .. "-x", { cache_size = "big" }) end,
        "bad option 'cache_size' (expected an integer from 1 to " .. math.maxinteger .. ")")
      assert.has.error(function() core.store_open(dir .. "-x", { create_if_missing = 1 }) end,
        "bad option 'create_if_missing' (expected a boolean)")
    end)
  end)

  describe("get/put/delete", function()
    it("returns nil when the key is missing", function()
      local v, err = st:get("missing")
      assert.is_nil(v)
      assert.is_nil(err)
    end)

    it("returns the value that was put", function()
      local ok, err = st:put("a", "1")
      assert.is_true(ok)
      assert.is_nil(err)
      assert.equal("1", st:get("a"))
      assert.is_true(st:put("a", "2", false))
      assert.equal("2", st:get("a"))
    end)

    it("keeps binary keys and values with zero bytes exactly", function()
      local key, value = "k\0ey\255", "\0v\0a\1l\0"
      assert.is_true(st:put(key, value))
      assert.equal(value, st:get(key))
      assert.is_nil(st:get("k"))
      assert.is_nil(st:get("k\0ey"))
      assert.is_true(st:put("empty", ""))
      assert.equal("", st:get("empty"))
    end)

    it("returns nil for a key after delete", function()
      assert.is_true(st:put("a", "1"))
      local ok, err = st:delete("a")
      assert.is_true(ok)
      assert.is_nil(err)
      assert.is_nil(st:get("a"))
      assert.is_true(st:delete("never-there", false))
    end)

    it("raises on a non-string key", function()
      assert.has.error(function() st:get({}) end)
      assert.has.error(function() st:put("a") end)
    end)
  end)

  describe("batch", function()
    it("makes puts and deletes visible together only after write", function()
      assert.is_true(st:put("gone", "x"))
      local b = st:batch()
      b:put("a", "1")
      b:put("b", "2")
      b:delete("gone")
      assert.equal(3, b:count())
      assert.is_nil(st:get("a"))
      assert.equal("x", st:get("gone"))
      local ok, err = st:write(b)
      assert.is_true(ok)
      assert.is_nil(err)
      assert.equal("1", st:get("a"))
      assert.equal("2", st:get("b"))
      assert.is_nil(st:get("gone"))
      b:close()
    end)

    it("keeps its operations after write and forgets them after clear", function()
      local b = st:batch()
      b:put("a", "1")
      assert.is_true(st:write(b, false))
      assert.equal(1, b:count())
      assert.is_true(st:delete("a"))
      assert.is_true(st:write(b))
      assert.equal("1", st:get("a"))
      b:clear()
      assert.equal(0, b:count())
      b:put("c", "3")
      assert.equal(1, b:count())
      assert.is_true(st:write(b))
      assert.equal("3", st:get("c"))
      b:close()
    end)

    it("raises when used after close and closes twice", function()
      local b = st:batch()
      b:close()
      b:close()
      assert.has.error(function() b:put("a", "1") end, "attempt to use a closed batch")
      assert.has.error(function() st:write(b) end, "attempt to use a closed batch")
    end)

    it("works as a <close> variable", function()
      local b2
      do
        local b <close> = st:batch()
        b:put("a", "1")
        b2 = b
      end
      assert.has.error(function() b2:count() end, "attempt to use a closed batch")
    end)
  end)

  describe("iterate", function()
    before_each(function()
      local b = st:batch()
      for _, k in ipairs { "r:b", "q:z", "r:a", "s:a", "r:c", "r", "r:\0" } do
        b:put(k, "v" .. k)
      end
      assert.is_true(st:write(b))
      b:close()
    end)

    it("yields the keys with the prefix in key order", function()
      local keys, values = collect(st, "r:")
      assert.same({ "r:\0", "r:a", "r:b", "r:c" }, keys)
      assert.same({ "vr:\0", "vr:a", "vr:b", "vr:c" }, values)
    end)

    it("yields every key without a prefix", function()
      local keys = collect(st)
      assert.same({ "q:z", "r", "r:\0", "r:a", "r:b", "r:c", "s:a" }, keys)
    end)

    it("yields nothing when no key has the prefix", function()
      assert.same({}, (collect(st, "zz")))
      assert.same({}, (collect(st, "r:d")))
    end)

    it("closes the iterator on break so the store closes cleanly", function()
      local seen = 0
      for _ in st:iterate("r:") do
        seen = seen + 1
        if seen == 2 then break end
      end
      assert.equal(2, seen)
      assert.is_true(st:close())
      assert.is_true(st:is_closed())
      -- LevelDB releases its lock only on a clean close: reopening proves it.
      local err
      st, err = core.store_open(dir)
      assert.is_nil(err)
      assert.equal("vr:a", st:get("r:a"))
    end)

    it("closes the iterator when the loop body raises", function()
      local ok = pcall(function()
        for _ in st:iterate() do error("boom") end
      end)
      assert.is_false(ok)
      st:close()
      local err
      st, err = core.store_open(dir)
      assert.is_nil(err)
    end)

    it("is safe when the iterator outlives its closed store", function()
      local step, state, ctl, closing = st:iterate("r:")
      assert.equal("r:\0", (step(state, ctl)))
      st:close()
      assert.has.error(function() step(state, ctl) end, "attempt to use a closed store")
      closing:close()
      closing:close()
      step, state, ctl, closing = nil, nil, nil, nil
      collectgarbage()
    end)

    it("is safe when an unclosed iterator and its store are collected together", function()
      local other = dir .. "-gc"
      do
        local st2 = assert(core.store_open(other))
        assert.is_true(st2:put("a", "1"))
        local step, state = st2:iterate()
        assert.equal("a", (step(state)))
      end
      collectgarbage()
      collectgarbage()
      -- Both finalizers ran, so the lock is free again.
      local st3, err = core.store_open(other)
      assert.is_nil(err)
      assert.equal("1", st3:get("a"))
      st3:close()
      os.execute("rm -rf '" .. other .. "'")
    end)

    it("returns nil again when stepped after it finished", function()
      local step, state = st:iterate("s:")
      assert.equal("s:a", (step(state)))
      assert.is_nil(step(state))
      assert.is_nil(step(state))
    end)
  end)

  describe("corruption", function()
    -- Writes keys, lets recovery flush them into a table file, then overwrites
    -- bytes of its first data block.
    local function corrupt_table()
      for i = 1, 200 do assert.is_true(st:put(("k%04d"):format(i), ("x"):rep(100) .. i)) end
      st:close()
      assert(core.store_open(dir)):close()
      local ls = assert(io.popen("ls '" .. dir .. "'/*.ldb"))
      local name = ls:read("l")
      ls:close()
      assert.is_string(name)
      local f = assert(io.open(name, "r+b"))
      f:seek("set", 100)
      f:write(("\255"):rep(50))
      f:close()
      local err
      st, err = core.store_open(dir)
      assert.is_nil(err)
    end

    it("returns nil and LevelDB's message from get on a corrupt block", function()
      corrupt_table()
      local v, err = st:get("k0001")
      assert.is_nil(v)
      assert.matches("^Corruption", err)
    end)

    it("raises from the iterator on a corrupt block and leaves the store closable", function()
      corrupt_table()
      local ok, err = pcall(function()
        for _ in st:iterate() do end
      end)
      assert.is_false(ok)
      assert.matches("^store iteration failed: Corruption", err)
      assert.is_true(st:close())
    end)
  end)

  describe("close", function()
    it("keeps data across close and reopen", function()
      assert.is_true(st:put("durable", "yes"))
      local b = st:batch()
      b:put("batched", "too")
      assert.is_true(st:write(b))
      b:close()
      assert.is_true(st:close())
      local err
      st, err = core.store_open(dir)
      assert.is_nil(err)
      assert.equal("yes", st:get("durable"))
      assert.equal("too", st:get("batched"))
    end)

    it("raises when a closed store is used", function()
      st:close()
      assert.is_true(st:is_closed())
      assert.matches("closed", tostring(st))
      assert.has.error(function() st:get("a") end, "attempt to use a closed store")
      assert.has.error(function() st:put("a", "1") end, "attempt to use a closed store")
      assert.has.error(function() st:delete("a") end, "attempt to use a closed store")
      assert.has.error(function() st:batch() end, "attempt to use a closed store")
      assert.has.error(function() st:iterate() end, "attempt to use a closed store")
    end)

    it("is safe twice", function()
      assert.is_true(st:close())
      assert.is_true(st:close())
      assert.is_true(st:is_closed())
    end)

    it("keeps a batch usable after its store is closed", function()
      local b = st:batch()
      st:close()
      b:put("a", "1")
      assert.equal(1, b:count())
      b:close()
    end)

    it("closes a <close> store at the end of its scope", function()
      st:close()
      local inner
      do
        local s2 <close> = assert(core.store_open(dir))
        assert.is_true(s2:put("a", "1"))
        inner = s2
      end
      assert.is_true(inner:is_closed())
      local err
      st, err = core.store_open(dir)
      assert.is_nil(err)
      assert.equal("1", st:get("a"))
    end)
  end)
end)
