-- Full disk and unwritable data directory: writes answer RECORD_UPDATE_ERROR
-- (status 200, the batch's other results intact), reads keep working, the
-- server neither crashes nor leaks file paths in its answers, and it starts
-- again on the same data once space is back. Uses a small tmpfs mounted for
-- the test (needs root and mount(2); the tests are pending otherwise).
local log = require "moonstream.log"
local H = require "spec.support.helpers"

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  return ok == true
end

local function can_mount()
  local probe = H.tmpdir()
  local ok = sh("mount -t tmpfs -o size=1m tmpfs '" .. probe .. "'")
  if ok then sh("umount '" .. probe .. "'") end
  H.rmdir(probe)
  return ok
end

local MOUNT_OK = can_mount()

-- 60 kB of letters LevelDB's compression cannot shrink: the tables fill the
-- disk, not only the log (which is dropped each time the memtable is written)
local function pad(n)
  local rng, t = n * 7919 + 1, {}
  for i = 1, 60000 do
    rng = (rng * 1103515245 + 12345) % 2147483648
    t[i] = string.char(97 + rng // 65536 % 26)
  end
  return table.concat(t)
end

local function write_cmd(name, n)
  return { topic = "record", action = "write", recordName = name, data = { n = n, pad = pad(n) } }
end

local function read_cmd(name)
  return { topic = "record", action = "read", recordName = name }
end

describe("storage failures", function()
  local mnt, t, logged

  before_each(function()
    logged = {}
    log.set_sink(function(line) logged[#logged + 1] = line end)
    if not MOUNT_OK then return end
    mnt = H.tmpdir()
    assert(sh("mount -t tmpfs -o size=2m tmpfs '" .. mnt .. "'"), "mount failed")
  end)

  after_each(function()
    log.set_sink(nil)
    if t then t:stop(); t = nil end
    if mnt then
      sh("umount '" .. mnt .. "'")
      H.rmdir(mnt)
      mnt = nil
    end
  end)

  -- Writes 60 kB records until one fails; returns the names acknowledged and
  -- the failing result.
  local function fill(server)
    local acked = {}
    for i = 1, 200 do
      local name = "fill/" .. i
      local res, msg = server:api({ write_cmd(name, i) })
      assert.equal(200, res.status)
      local r = msg.body[1]
      if not r.success then return acked, r end
      acked[#acked + 1] = name
    end
    error("2 MB of tmpfs never filled up")
  end

  it("answers RECORD_UPDATE_ERROR on a full disk, keeps reads, restarts once space is back", function()
    if not MOUNT_OK then return pending("needs root and tmpfs mounts") end
    local data = mnt .. "/data"
    t = H.start({ storage = { path = data } })
    local acked, failed = fill(t)
    assert.is_true(#acked >= 1)
    assert.equal("RECORD_UPDATE_ERROR", failed.errorEvent)
    assert.equal("record", failed.errorTopic)
    -- the client is told what failed, never where on disk
    assert.is_nil(failed.error:find(mnt, 1, true), failed.error)
    assert.is_nil(failed.error:find("/", 1, true), failed.error)
    assert.matches("No space left on device", failed.error)
    -- the operator's log has the file
    assert.matches("storage write failed: IO error: " .. mnt:gsub("%p", "%%%0"), table.concat(logged, "\n"))

    -- reads of acknowledged records keep working, with their versions
    local _, msg = t:api({ read_cmd(acked[1]), read_cmd(acked[#acked]) })
    assert.is_true(msg.body[1].success)
    assert.equal(1, msg.body[1].version)
    assert.equal(1, msg.body[1].data.n)
    assert.equal(#acked, msg.body[2].data.n)
    -- a batch mixing a read and a failing write: the read still succeeds
    local res
    res, msg = t:api({ write_cmd("more", 0), read_cmd(acked[1]) })
    assert.equal(200, res.status)
    assert.equal("PARTIAL_SUCCESS", msg.result)
    assert.equal("RECORD_UPDATE_ERROR", msg.body[1].errorEvent)
    assert.is_true(msg.body[2].success)
    assert.equal(200, t:request({ method = "GET", path = "/health-check" }).status)
    t:stop()
    t = nil

    -- space is back: the same data directory opens, nothing acknowledged is lost
    assert(sh("mount -o remount,size=64m '" .. mnt .. "'"))
    t = H.start({ storage = { path = data } })
    local reads = {}
    for i, name in ipairs(acked) do reads[i] = read_cmd(name) end
    _, msg = t:api(reads)
    for i, r in ipairs(msg.body) do
      assert.is_true(r.success, acked[i])
      assert.equal(i, r.data.n)
    end
    _, msg = t:api({ write_cmd("after", 1), read_cmd("after") })
    assert.equal("SUCCESS", msg.result)
    assert.equal(1, msg.body[2].version)
  end)

  it("answers RECORD_UPDATE_ERROR when the data directory becomes read-only", function()
    if not MOUNT_OK then return pending("needs root and tmpfs mounts") end
    -- An empty read-only tmpfs mounted over the data directory while the
    -- server runs: the files LevelDB has open stay writable, every file it
    -- creates by name from then on fails (the kernel refuses to remount a
    -- file system with files open for writing read-only).
    assert(sh("mount -o remount,size=64m '" .. mnt .. "'"))
    local data = mnt .. "/data"
    t = H.start({ storage = { path = data } })
    local _, msg = t:api({ write_cmd("before", 1) })
    assert.equal("SUCCESS", msg.result)
    assert(sh("mount -t tmpfs -o ro,size=1m tmpfs '" .. data .. "'"))
    local ok, err = pcall(function()
      -- enough data to make LevelDB start a new log file
      local failed
      for i = 1, 200 do
        _, msg = t:api({ write_cmd("ro/" .. i, i) })
        if not msg.body[1].success then failed = msg.body[1]; break end
      end
      assert.is_table(failed, "no write failed on a read-only directory")
      assert.equal("RECORD_UPDATE_ERROR", failed.errorEvent)
      assert.is_nil(failed.error:find("/", 1, true), failed.error)
      _, msg = t:api({ read_cmd("before"), { topic = "record", action = "head", recordName = "before" } })
      assert.equal("SUCCESS", msg.result)
      assert.equal(1, msg.body[1].version)
      -- later writes keep failing cleanly
      _, msg = t:api({ write_cmd("again", 1) })
      assert.equal("RECORD_UPDATE_ERROR", msg.body[1].errorEvent)
      t:stop()
      t = nil
    end)
    sh("umount '" .. data .. "'")
    assert(ok, err)
  end)

  it("refuses to start on a read-only data directory with a clear message", function()
    if not MOUNT_OK then return pending("needs root and tmpfs mounts") end
    t = H.start({ storage = { path = mnt .. "/data" } })
    t:stop()
    t = nil
    assert(sh("mount -o remount,ro '" .. mnt .. "'"))
    local moonstream = require "moonstream"
    local server = assert(moonstream.new({ port = 0, logLevel = "error", storage = { path = mnt .. "/data" } }))
    local ok, err = server:listen()
    assert.is_nil(ok)
    assert.matches("cannot open storage.path", err)
    assert.matches("Read%-only file system", err)
    server:close()
  end)
end)
