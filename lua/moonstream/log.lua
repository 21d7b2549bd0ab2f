-- Logging: one line per message on stderr, "time level message".
-- Messages never carry secrets: callers pass names, not credentials.
local M = {}

local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
local threshold = LEVELS.info
local out = io.stderr
local date, format = os.date, string.format

function M.set_level(name)
  threshold = assert(LEVELS[name], "unknown log level")
end

-- Redirects output (tests capture log lines): sink(line) or nil for stderr.
local sink
function M.set_sink(fn)
  sink = fn
end

local function emit(level, fmt, ...)
  if LEVELS[level] < threshold then return end
  local msg = select("#", ...) > 0 and format(fmt, ...) or fmt
  local line = date("!%Y-%m-%dT%H:%M:%SZ") .. " " .. level .. " " .. msg
  if sink then sink(line, level, msg) else out:write(line, "\n") end
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
