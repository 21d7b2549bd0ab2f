-- The one way moonstream runs a user's Lua file (config files, permission
-- files, users files, RPC handlers, event listeners, auth functions): read
-- it, compile it in the environment its caller gives, run it, and report a
-- mistake with the file's whole path and the line it happened on.
--
--   sandbox()                  -> the restricted environment of data-like files
--   run_file(path, env)        -> true, result, text | false, err, stage
--   run(text, path, env)       -> true, result       | false, err, stage
--
-- stage says what failed: "open" or "read" (err: the reason, without the
-- path), "syntax" or "runtime" (err: "path:LINE: message").
local type, pairs, tostring, pcall, xpcall, load = type, pairs, tostring, pcall, xpcall, load
local getmetatable = getmetatable
local io_open = io.open
local format, sub, find, match, gsub = string.format, string.sub, string.find, string.match, string.gsub
local getinfo = debug.getinfo
local reason_of = require("moonstream.config.files").reason_of

local M = {}

-- assert, error, ipairs, next, pairs, pcall, select, tonumber, tostring,
-- type, xpcall, copies of string, math, table and utf8, and os.getenv. No
-- require, io, load or print: such a file describes, it does not act.
function M.sandbox()
  local function copy(t)
    local c = {}
    for k, v in pairs(t) do
      c[k] = v
    end
    return c
  end
  -- Copies, so a config assigning string.format = nil breaks only itself.
  return {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
    select = select, tonumber = tonumber, tostring = tostring, type = type, xpcall = xpcall,
    string = copy(string), math = copy(math), table = copy(table), utf8 = copy(utf8),
    os = { getenv = os.getenv },
  }
end

-- Lua shortens a long chunk name to "...<end of path>" in messages (LUA_IDSIZE);
-- the user gets the whole path back.
local function expand_chunk_name(msg, path)
  local tail, rest = match(msg, "^%.%.%.(.-)(:%d+:.*)$")
  if tail and tail ~= "" and sub(path, -#tail) == tail then
    return path .. rest
  end
  return msg
end

-- xpcall handler for running a file: a string message located in the file.
-- An error raised without a position (error(x, 0), a bad argument to a
-- library function) gets the line of the innermost frame in the file.
local function runtime_error_handler(path)
  local source = "@" .. path
  return function(e)
    if type(e) ~= "string" then
      local mt = getmetatable(e)
      local ok, s = false, nil
      if type(mt) == "table" and mt.__tostring then
        ok, s = pcall(tostring, e)
      end
      e = (ok and type(s) == "string") and s or format("(error object is a %s value)", type(e))
    end
    e = expand_chunk_name(e, path)
    if find(e, "^:%d+:", #path + 1) and sub(e, 1, #path) == path then
      return e
    end
    for level = 2, 200 do
      local info = getinfo(level, "Sl")
      if not info then
        break
      end
      if info.source == source and info.currentline > 0 then
        return format("%s:%d: %s", path, info.currentline, e)
      end
    end
    return format("%s: %s", path, e)
  end
end

-- Compiles and runs text, the contents of path, in env.
function M.run(text, path, env)
  -- As luaL_loadfile: a UTF-8 BOM and a "#" first line are skipped (the line
  -- itself is kept empty so line numbers stay right).
  local code = gsub(text, "^\239\187\191", "", 1)
  if sub(code, 1, 1) == "#" then
    code = gsub(code, "^[^\n]*", "", 1)
  end
  local chunk, lerr = load(code, "@" .. path, "t", env)
  if not chunk then
    return false, expand_chunk_name(lerr, path), "syntax"
  end
  local ok, result = xpcall(chunk, runtime_error_handler(path))
  if not ok then
    return false, result, "runtime"
  end
  return true, result
end

-- Reads path whole, then run(); the text is returned too (to locate keys).
function M.run_file(path, env)
  local f, err = io_open(path, "rb")
  if not f then
    return false, reason_of(err, path), "open"
  end
  local text, rerr = f:read("a")
  f:close()
  if not text then
    return false, tostring(rerr), "read"
  end
  local ok, result, stage = M.run(text, path, env)
  if not ok then
    return false, result, stage
  end
  return true, result, text
end

return M
