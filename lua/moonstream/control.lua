-- Talking to a running server from the command line. LevelDB admits one
-- process, so `moonstream token revoke` cannot open the store while the server
-- runs; instead it leaves a request file in <storage.path>/control/ and sends
-- SIGHUP to the pid written in <storage.path>/moonstream.pid. On SIGHUP the
-- server reloads permissions and RPC handlers and answers each request with a
-- ".done" file. Requests carry token hashes, never tokens.
--
--   control.write_pid(dir) / control.remove_pid(dir) / control.read_pid(dir) -> pid | nil
--   control.submit(dir, line) -> request id | nil, err
--   control.result(dir, id)   -> text of the answer | nil (not yet)
--   control.process(dir, fn)  the server: fn(line) -> answer text, for each request
local core = require "moonstream.core"
local lfs = require "lfs"

local M = {}

local function pid_path(dir) return dir .. "/moonstream.pid" end
local function control_dir(dir) return dir .. "/control" end

local function write_atomic(path, text)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then return nil, err end
  f:write(text)
  f:close()
  return os.rename(tmp, path)
end

-- This process's pid: the first field of /proc/self/stat (plain Lua has no getpid).
local function own_pid()
  local f = io.open("/proc/self/stat", "r")
  if not f then return nil end
  local pid = f:read("n")
  f:close()
  return pid
end

function M.write_pid(dir)
  local pid = own_pid()
  if pid then write_atomic(pid_path(dir), pid .. "\n") end
end

function M.remove_pid(dir)
  os.remove(pid_path(dir))
end

function M.read_pid(dir)
  local f = io.open(pid_path(dir), "r")
  if not f then return nil end
  local pid = f:read("n")
  f:close()
  return math.tointeger(pid)
end

function M.submit(dir, line)
  local cdir = control_dir(dir)
  if not lfs.attributes(cdir) then
    local ok, err = lfs.mkdir(cdir)
    if not ok then return nil, err end
  end
  local id = (core.random_bytes(8):gsub(".", function(c) return string.format("%02x", c:byte()) end))
  local ok, err = write_atomic(cdir .. "/" .. id .. ".req", line .. "\n")
  if not ok then return nil, err end
  return id
end

function M.result(dir, id)
  local path = control_dir(dir) .. "/" .. id .. ".done"
  local f = io.open(path, "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  os.remove(path)
  return text
end

function M.process(dir, fn)
  local cdir = control_dir(dir)
  if not lfs.attributes(cdir) then return end
  local ids = {}
  for entry in lfs.dir(cdir) do
    local id = entry:match("^(%x+)%.req$")
    if id then ids[#ids + 1] = id end
  end
  for _, id in ipairs(ids) do
    local path = cdir .. "/" .. id .. ".req"
    local f = io.open(path, "r")
    if f then
      local line = f:read("l") or ""
      f:close()
      os.remove(path)
      write_atomic(cdir .. "/" .. id .. ".done", fn(line) .. "\n")
    end
  end
end

return M
