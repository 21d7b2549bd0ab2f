-- Logging: one line per message on stderr, in one of two formats:
--   text  "2026-12-05T18:31:30Z info message key=value ..."
--   json  {"time":"2026-12-05T18:31:30Z","level":"info","message":"...","fields":{...}}
-- (config key logFormat). Levels are deepstream's: debug, info, warn, error,
-- also written DEBUG..ERROR or as deepstream 9's numbers 0..3 (parse_level).
-- Messages never carry secrets: callers pass names, not credentials.
--
--   log.info(fmt, ...)                 printf-style message, no fields
--   log.event(level, message, fields)  a message and a flat table of fields
--   log.counts                         warn/error lines so far (monitoring)
local M = {}

local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
-- The names logLevel accepts: ours, deepstream's upper-case ones and deepstream 9's numbers.
local ALIASES = { DEBUG = "debug", INFO = "info", WARN = "warn", ERROR = "error",
                  [0] = "debug", [1] = "info", [2] = "warn", [3] = "error" }
M.LEVEL_NAMES = { "debug", "info", "warn", "error" }
M.FORMATS = { "text", "json" }

local threshold = LEVELS.info
local json_format = false
local out = io.stderr
local date, format, concat, sort = os.date, string.format, table.concat, table.sort
local math_type, tostring, type, pairs = math.type, tostring, type, pairs

-- Lines logged at warn and error since the start, whatever the threshold
-- (deepstream's monitoring counts them the same way).
M.counts = { warn = 0, error = 0 }

-- The canonical level name for v ("INFO", 1, "info" -> "info"), or nil.
function M.parse_level(v)
  if LEVELS[v] then return v end
  if math_type(v) == "float" and v == v // 1 then v = math.tointeger(v) end
  return ALIASES[v]
end

function M.set_level(name)
  threshold = assert(LEVELS[M.parse_level(name)], "unknown log level")
end

function M.set_format(name)
  assert(name == "text" or name == "json", "unknown log format")
  json_format = name == "json"
end

-- Redirects output (tests capture log lines): sink(line, level, msg) or nil for stderr.
local sink
function M.set_sink(fn)
  sink = fn
end

-- JSON text of a string: control characters, quotes and backslashes escaped,
-- bytes that are not UTF-8 replaced by U+FFFD, so every line is valid JSON
-- whatever a message carries. Never raises (log runs inside error handlers).
local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function escape_char(c)
  return ESCAPES[c] or format("\\u%04x", c:byte())
end
local function json_string(s)
  if not utf8.len(s) then
    local parts, i, n = {}, 1, #s
    while i <= n do
      if utf8.len(s, i, i) then
        local j = utf8.offset(s, 2, i) or n + 1
        parts[#parts + 1] = s:sub(i, j - 1)
        i = j
      else
        parts[#parts + 1] = "\239\191\189"
        i = i + 1
      end
    end
    s = concat(parts)
  end
  return '"' .. s:gsub('[%c"\\]', escape_char) .. '"'
end

local function json_value(v)
  local t = math_type(v)
  if t == "integer" then return tostring(v) end
  if t == "float" and v == v and v ~= math.huge and v ~= -math.huge then return format("%.17g", v) end
  if type(v) == "boolean" then return tostring(v) end
  return json_string(tostring(v))
end

local function sorted_keys(fields)
  local keys = {}
  for k in pairs(fields) do
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  sort(keys)
  return keys
end

-- The one place a line is formatted.
local function line_of(level, msg, fields)
  local time = date("!%Y-%m-%dT%H:%M:%SZ")
  if json_format then
    local parts = { '{"time":"', time, '","level":"', level, '","message":', json_string(msg), ',"fields":{' }
    if fields then
      for i, k in ipairs(sorted_keys(fields)) do
        parts[#parts + 1] = (i > 1 and "," or "") .. json_string(k) .. ":" .. json_value(fields[k])
      end
    end
    parts[#parts + 1] = "}}"
    return concat(parts)
  end
  local line = time .. " " .. level .. " " .. msg
  if fields then
    for _, k in ipairs(sorted_keys(fields)) do line = line .. " " .. k .. "=" .. tostring(fields[k]) end
  end
  return line
end

local function count(level)
  local counts = M.counts
  if counts[level] then counts[level] = counts[level] + 1 end
end

local function write(level, msg, fields)
  local line = line_of(level, msg, fields)
  if sink then sink(line, level, msg) else out:write(line, "\n") end
end

local function emit(level, fmt, ...)
  count(level)
  if LEVELS[level] < threshold then return end
  write(level, select("#", ...) > 0 and format(fmt, ...) or fmt)
end

function M.event(level, message, fields)
  level = assert(M.parse_level(level), "unknown log level")
  count(level)
  if LEVELS[level] >= threshold then write(level, tostring(message), fields) end
end

function M.debug(...) if threshold <= 1 then emit("debug", ...) end end
function M.info(...) emit("info", ...) end
function M.warn(...) emit("warn", ...) end
function M.error(...) emit("error", ...) end

-- Errors raised by Lua callbacks that C calls (request handlers, timers,
-- listeners: csrc/pcall.c's ms_pcall) go to this log, the one of the
-- process; installed once, here, rather than by each server.
debug.getregistry()["moonstream.error_reporter"] = function(msg) M.error("%s", msg) end

return M
