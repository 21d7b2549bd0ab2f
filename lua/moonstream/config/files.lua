-- Paths written in a configuration: resolved against the config file's
-- folder, and checked to exist when the server is made (plain Lua: io.open
-- only).
local type, tostring = type, tostring
local io_open = io.open
local format, sub, find, match, gsub = string.format, string.sub, string.find, string.match, string.gsub

local M = {}

local ENOENT = 2
-- Files a configuration names (config.yml, permissions, users) are read
-- whole; past this size they are refused, not loaded into memory.
M.MAX_FILE_BYTES = 16 * 1024 * 1024

-- The directory of a config file, "." for a bare file name.
function M.dir_of(path)
  local dir = match(path, "^(.*)/[^/]*$")
  if dir == nil then
    return "."
  end
  if dir == "" then
    return "/"
  end
  return dir
end

-- p, relative to dir unless absolute (or dir is nil / ".").
function M.resolve_path(dir, p)
  if dir == nil or dir == "." or sub(p, 1, 1) == "/" then
    return p
  end
  -- "./data" under "conf" reads better as "conf/data" than "conf/./data".
  while find(p, "^%./") do
    p = gsub(p, "^%./+", "", 1)
  end
  if p == "" or p == "." then
    return dir
  end
  if sub(dir, -1) == "/" then
    return dir .. p
  end
  return dir .. "/" .. p
end

-- io.open's messages are "path: reason"; the path is already in ours.
function M.reason_of(err, p)
  if type(err) == "string" and sub(err, 1, #p + 2) == p .. ": " then
    return sub(err, #p + 3)
  end
  return tostring(err)
end
local reason_of = M.reason_of

-- "dir/." opens only when dir is a directory (ENOTDIR for a file).
local function is_folder(p)
  local f = io_open(p .. "/.", "r")
  if f then
    f:close()
    return true
  end
  return false
end

function M.check_folder(p)
  if is_folder(p) then
    return true
  end
  local f, err, code = io_open(p, "r")
  if f then
    f:close()
    return nil, format("'%s' is not a folder", p)
  end
  if code == ENOENT then
    return nil, format("folder '%s' does not exist", p)
  end
  return nil, format("folder '%s' cannot be opened (%s)", p, reason_of(err, p))
end

function M.check_file(p)
  local f, err, code = io_open(p, "r")
  if not f then
    if code == ENOENT then
      return nil, format("file '%s' does not exist", p)
    end
    return nil, format("file '%s' cannot be read (%s)", p, reason_of(err, p))
  end
  -- Linux opens a directory for reading; the first read is what fails.
  local _, rerr = f:read(0)
  f:close()
  if rerr then
    if is_folder(p) then
      return nil, format("'%s' is a folder, not a file", p)
    end
    return nil, format("file '%s' cannot be read (%s)", p, rerr)
  end
  return true
end

-- The whole text of p (at most MAX_FILE_BYTES) | nil, err [, true when it is
-- too large]; err is io.open's or read's message otherwise.
function M.read_text(p)
  local f, err = io_open(p, "rb")
  if not f then
    return nil, err
  end
  local text, rerr = f:read(M.MAX_FILE_BYTES + 1)
  f:close()
  if rerr then
    return nil, rerr
  end
  text = text or ""
  if #text > M.MAX_FILE_BYTES then
    return nil, format("%s: larger than %d bytes", p, M.MAX_FILE_BYTES), true
  end
  return text
end

return M
