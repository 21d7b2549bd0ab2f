-- moonstream's configuration: a Lua file that returns a table whose keys are
-- deepstream's, so a deepstream user recognises
-- them. The table is data; a schema below checks it before the server binds a
-- port, and a mistake is reported with the key's dotted path and, when it came
-- from a file, the line where that key is written (Kong's plugin schemas).
--
--   defaults()                    -> a fresh table of the embedded defaults
--   validate(t [, source])        -> cfg | nil, err   defaults merged with t
--   load(path)                    -> cfg | nil, err   runs the file, then validate
--                                    (a .yml/.yaml path: deepstream's config.yml,
--                                    mapped by config_yaml.lua, then validate)
--   apply_overrides(cfg, o)       -> cfg | nil, err   CLI options (--host, --port)
--   resolve_path(dir, p)          -> p, relative to dir unless absolute
--
-- The returned cfg is always a new table: the sections rpc, storage and events
-- are merged key by key, every other key replaces its default; tables given by
-- the user (auth, permissions, origins, ...) are copied, functions are kept.
-- Relative file paths written in a config file (storage.path, rpc.handlers,
-- events.listeners, permissions) are resolved against the file's directory,
-- which is also kept as cfg.configDir for the modules that read further files
-- (auth strategies); without a source they stay relative to the current
-- directory and cfg.configDir is nil. Defaults are never resolved.
--
-- A config file runs in an environment of its own holding only: assert, error,
-- ipairs, next, pairs, pcall, select, tonumber, tostring, type, xpcall, copies
-- of string, math, table and utf8, and os.getenv (as os.getenv). No require,
-- io, load or print: a config describes, it does not act. Functions defined in
-- the file (inline RPC handlers, event listeners) keep that environment.
local type, next, pairs, ipairs, tostring, select = type, next, pairs, ipairs, tostring, select
local error, pcall, xpcall, load, rawget = error, pcall, xpcall, load, rawget
local getmetatable = getmetatable
local io_open = io.open
local math_type, tointeger, huge = math.type, math.tointeger, math.huge
local format, byte, sub, find, match, gsub, lower =
  string.format, string.byte, string.sub, string.find, string.match, string.gsub, string.lower
local concat, sort = table.concat, table.sort
local getinfo = debug.getinfo

local M = {}

local MAX_MESSAGE_SIZE = 1024 * 1024 * 1024
local AUTH_TYPES = { "open", "file", "webhook", "lua" }
local log = require "moonstream.log"
local ENOENT = 2

function M.defaults()
  return {
    host = "127.0.0.1",
    port = 6020,
    apiPath = "/api",
    authPath = "/api/auth",
    healthCheckPath = "/health-check",
    enableAuthEndpoint = true,
    allowAuthData = true,
    maxMessageSize = 1048576,
    maxResponseSize = 16777216, -- record data in one POST /api answer
    requestTimeout = 20000,
    allowAllOrigins = true,
    origins = nil,
    rpc = { responseTimeout = 10000, ackTimeout = 1000, handlers = nil },
    -- writeBufferSize: LevelDB's memtable; 1 MiB rather than its 4 MiB: small
    -- JSON records, 5 MB less memory and ~6 % faster writes (bench/RESULTS.md)
    storage = { path = "./data", sync = true, cacheSize = 8388608, writeBufferSize = 1048576 },
    storageExclusionPrefixes = {},
    tokenTTL = 86400000,
    auth = { { type = "open" } },
    permissions = nil,
    events = { listeners = nil },
    -- WebSocket endpoints (deepstream's ws-binary / ws-json endpoint options)
    realtime = {
      urlPath = "/deepstream", jsonUrlPath = "/deepstream-json",
      heartbeatInterval = 30000, unauthenticatedClientTimeout = 180000, maxAuthAttempts = 3,
      maxBufferedBytes = 4194304,
    },
    -- listen providers (deepstream's listen section; realtime/listen.lua)
    listen = { shuffleProviders = true, responseTimeout = 500, rematchInterval = 30000, matchCooldown = 10000 },
    logLevel = "info",
    logFormat = "text",
    -- Prometheus text on GET metrics.path, for clients whose address is in
    -- `allow` (loopback) and, when `token` is set, that send it as a bearer
    -- token; `metrics = false` turns it off (README "Metrics")
    metrics = { path = "/metrics", allow = { "127.0.0.1", "::1", "::ffff:127.0.0.1" }, token = nil },
    -- deepstream's HTTP monitoring endpoint: off unless configured
    monitoring = nil,
    connectionLimit = 1024,
    connectionTimeout = 30,
    connectionLimitPerIp = 0,
    -- 16 KiB of request line and headers, as node (deepstream) allows; MHD
    -- zeroes the whole pool for every request, so a larger one costs time
    connectionMemoryLimit = 16384,
    -- POST /api batches that need no Lua policy answered in C (csrc/fastpath.c)
    fastPath = true,
  }
end

-- Helpers

-- Tables are copied without their metatables; functions and other values are
-- shared. `seen` keeps cycles and shared subtables as they were.
local function deep_copy(v, seen)
  if type(v) ~= "table" then
    return v
  end
  seen = seen or {}
  local done = seen[v]
  if done then
    return done
  end
  local out = {}
  seen[v] = out
  for k, x in next, v do
    out[deep_copy(k, seen)] = deep_copy(x, seen)
  end
  return out
end

-- A total order on keys of any type, so errors come out the same every run.
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    return ta < tb
  end
  if ta == "number" or ta == "string" then
    return a < b
  end
  return tostring(a) < tostring(b)
end

local function sorted_keys(t)
  local keys = {}
  for k in next, t do
    keys[#keys + 1] = k
  end
  sort(keys, key_less)
  return keys
end

-- Numbers show their value, anything else its type: "(got 70000)", "(got string)".
local function describe(v)
  if math_type(v) then
    return tostring(v)
  end
  return type(v)
end

-- Where the value itself helps (enumerations, URL paths) a short printable
-- string is shown quoted; a long or binary one only as "string".
local function describe_value(v)
  if type(v) == "string" then
    if v == "" then
      return "an empty string"
    end
    if #v <= 60 and not find(v, "[%c']") then
      return "'" .. v .. "'"
    end
  end
  return describe(v)
end

local function describe_key(k)
  if type(k) == "string" then
    return describe_value(k)
  end
  return describe(k)
end

-- {"rpc", "handlers", "add-two"} -> rpc.handlers.add-two; {"auth", 2, "type"} -> auth[2].type
local function format_path(path)
  local out = {}
  for i, c in ipairs(path) do
    if math_type(c) == "integer" then
      out[#out + 1] = "[" .. c .. "]"
    elseif type(c) == "string" and find(c, "^[%w_][%w_%-]*$") then
      out[#out + 1] = (i > 1 and "." or "") .. c
    else
      local text = type(c) == "string" and format("%q", c) or tostring(c)
      out[#out + 1] = "[" .. gsub(text, "\\\n", "\\n") .. "]"
    end
  end
  return concat(out)
end

local function append(path, extra)
  local out = {}
  for i, c in ipairs(path) do
    out[i] = c
  end
  if extra then
    for _, c in ipairs(extra) do
      out[#out + 1] = c
    end
  end
  return out
end

-- An error found while checking: the whole message, and the key path whose
-- line is looked up in the config file.
local function failure(path, text, where)
  local sep = sub(text, 1, 1) == ":" and "" or " "
  return { msg = format("config key '%s'%s%s", format_path(path), sep, text), where = where or path }
end

-- Optimal string alignment distance (Levenshtein plus transpositions, so
-- 'prot' is one edit from 'port').
local function edit_distance(a, b)
  local la, lb = #a, #b
  local prev2, prev, cur = {}, {}, {}
  for j = 0, lb do
    prev[j] = j
  end
  for i = 1, la do
    cur[0] = i
    local ca = byte(a, i)
    for j = 1, lb do
      local cb = byte(b, j)
      local cost = ca == cb and 0 or 1
      local d = prev[j] + 1
      if cur[j - 1] + 1 < d then d = cur[j - 1] + 1 end
      if prev[j - 1] + cost < d then d = prev[j - 1] + cost end
      if i > 1 and j > 1 and ca == byte(b, j - 1) and byte(a, i - 1) == cb and prev2[j - 2] + 1 < d then
        d = prev2[j - 2] + 1
      end
      cur[j] = d
    end
    prev2, prev, cur = prev, cur, prev2
  end
  return prev[lb]
end

-- candidates: list of { name = compared text, full = suggested key }. Case is
-- ignored; a suggestion needs at most one edit per three letters (max 3), or
-- else one of the two words must start the other.
local function suggest(word, candidates)
  if #word > 100 then
    return nil
  end
  local w = lower(word)
  local limit = #w // 3
  if limit < 1 then limit = 1 elseif limit > 3 then limit = 3 end
  local best, best_distance = nil, huge
  for _, c in ipairs(candidates) do
    local d = edit_distance(w, lower(c.name))
    if d < best_distance then
      best, best_distance = c.full, d
    end
  end
  if best_distance <= limit then
    return best
  end
  -- 'warning' for 'warn', 'hostname' for 'host': one name starts the other.
  for _, c in ipairs(candidates) do
    local name = lower(c.name)
    if #name >= 3 and #w >= 3 and (sub(w, 1, #name) == name or sub(name, 1, #w) == w) then
      return c.full
    end
  end
end

local function did_you_mean(word, candidates)
  local s = type(word) == "string" and suggest(word, candidates)
  return s and format(" (did you mean '%s'?)", s) or ""
end

-- Files and folders (plain Lua: io.open only)

-- The directory of a config file, "." for a bare file name.
local function dir_of(path)
  local dir = match(path, "^(.*)/[^/]*$")
  if dir == nil then
    return "."
  end
  if dir == "" then
    return "/"
  end
  return dir
end

local function resolve_path(dir, p)
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
M.resolve_path = resolve_path

-- io.open's messages are "path: reason"; the path is already in ours.
local function reason_of(err, p)
  if type(err) == "string" and sub(err, 1, #p + 2) == p .. ": " then
    return sub(err, #p + 3)
  end
  return tostring(err)
end

-- "dir/." opens only when dir is a directory (ENOTDIR for a file).
local function is_folder(p)
  local f = io_open(p .. "/.", "r")
  if f then
    f:close()
    return true
  end
  return false
end

local function check_folder(p)
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

local function check_file(p)
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

-- Value checkers
-- check(value, ctx) -> normalized value | nil, text[, extra path]. `text` is
-- what follows "config key 'k'"; one starting with ":" is joined without a
-- space. ctx.dir is the directory relative paths are resolved against.

local function integer_in(lo, hi, wording)
  return function(v)
    -- math.tointeger alone would also take the string "3".
    local n = math_type(v) and tointeger(v)
    if n and n >= lo and (hi == nil or n <= hi) then
      return n
    end
    return nil, format("must be %s (got %s)", wording, describe(v))
  end
end

local check_port = integer_in(0, 65535, "an integer from 0 to 65535")
local check_positive = integer_in(1, nil, "a positive integer")
local check_non_negative = integer_in(0, nil, "a non-negative integer")
local check_message_size = integer_in(1, MAX_MESSAGE_SIZE, "an integer from 1 to " .. MAX_MESSAGE_SIZE)

-- A timeout that `false` switches off (deepstream's unauthenticatedClientTimeout).
local function check_positive_or_false(v)
  if v == false then
    return false
  end
  local n = math_type(v) and tointeger(v)
  if n and n >= 1 then
    return n
  end
  return nil, format("must be a positive integer or false (got %s)", describe(v))
end

local function check_boolean(v)
  if type(v) == "boolean" then
    return v
  end
  return nil, format("must be a boolean (got %s)", describe(v))
end

local function check_nonempty_string(v)
  if type(v) == "string" and v ~= "" then
    return v
  end
  return nil, format("must be a non-empty string (got %s)", v == "" and "an empty string" or describe(v))
end

local function check_url_path(v)
  if type(v) == "string" and sub(v, 1, 1) == "/" then
    return v
  end
  return nil, format("must be a string starting with '/' (got %s)", describe_value(v))
end

local function one_of(values)
  local quoted, candidates, allowed = {}, {}, {}
  for i, v in ipairs(values) do
    quoted[i] = "'" .. v .. "'"
    candidates[i] = { name = v, full = v }
    allowed[v] = true
  end
  local wording = "must be one of " .. concat(quoted, ", ")
  return function(v)
    if allowed[v] then
      return v
    end
    local s = type(v) == "string" and suggest(v, candidates)
    return nil, format("%s (got %s%s)", wording, describe_value(v), s and "; did you mean '" .. s .. "'?" or "")
  end
end

local check_log_format = one_of(log.FORMATS)
local check_level_name = one_of(log.LEVEL_NAMES)

-- deepstream's names and deepstream 9's numbers too, stored as ours ("info").
local function check_log_level(v)
  local name = log.parse_level(v)
  if name then return name end
  local _, err = check_level_name(v)
  return nil, (err:gsub("^must be one of ([^(]*) ", "must be one of %1, their upper-case forms or 0 to 3 ", 1))
end

local check_auth_type = one_of(AUTH_TYPES)

local function check_string_list(v)
  if type(v) ~= "table" then
    return nil, format("must be a list of strings (got %s)", describe(v))
  end
  local n = 0
  for k in next, v do
    if math_type(k) ~= "integer" or k < 1 then
      return nil, format("must be a list of strings (got key %s)", describe_key(k))
    end
    n = n + 1
  end
  local out = {}
  for i = 1, n do
    local s = rawget(v, i)
    if type(s) ~= "string" then
      return nil, format("must be a list of strings (item %d is %s)", i, s == nil and "missing" or "a " .. type(s))
    end
    out[i] = s
  end
  return out
end

local function check_storage_path(v, ctx)
  local p, err = check_nonempty_string(v)
  if not p then
    return nil, err
  end
  return resolve_path(ctx.dir, p)
end

-- A path written in the config, resolved against the config file's folder and
-- checked now (check_folder or check_file): path | nil, ": why".
local function existing(ctx, v, check)
  local path = resolve_path(ctx.dir, v)
  local ok, why = check(path)
  if not ok then return nil, ": " .. why end
  return path
end

-- rpc.handlers and events.listeners: a folder of <name>.lua files, or a table
-- name -> function | file path. Files and folders must exist now, not at the
-- first call.
local function script_map(names)
  local shape = format("a folder path or a table of %s -> function or file path", names)
  return function(v, ctx)
    if type(v) == "string" and v ~= "" then
      return existing(ctx, v, check_folder)
    elseif type(v) ~= "table" then
      return nil, format("must be %s (got %s)", shape, describe_value(v))
    end
    local out = {}
    for _, name in ipairs(sorted_keys(v)) do
      if type(name) ~= "string" or name == "" then
        return nil, format("must be %s (got key %s)", shape, describe_key(name))
      end
      local h = rawget(v, name)
      if type(h) == "function" then
        out[name] = h
      elseif type(h) == "string" and h ~= "" then
        local file, why = existing(ctx, h, check_file)
        if not file then return nil, why, { name } end
        out[name] = file
      else
        return nil, format("must be a function or a file path (got %s)", describe_value(h)), { name }
      end
    end
    return out
  end
end

local check_handlers = script_map("RPC names")
local check_listeners = script_map("event names")

-- staticFiles: a folder served by GET (static.lua); it must exist now.
local function check_static_folder(v, ctx)
  if type(v) ~= "string" or v == "" then
    return nil, format("must be a folder path (got %s)", describe_value(v))
  end
  return existing(ctx, v, check_folder)
end

-- Strategy options belong to the auth module; only the list shape and each
-- strategy's type are checked here.
local function check_auth(v)
  local shape = "must be a list of strategy tables"
  if type(v) ~= "table" then
    return nil, format("%s (got %s)", shape, describe(v))
  end
  if rawget(v, "type") ~= nil then
    return nil, shape .. ' (got a single strategy; write auth = { { type = ... } })'
  end
  local n = 0
  for k in next, v do
    if math_type(k) ~= "integer" or k < 1 then
      return nil, format("%s (got key %s)", shape, describe_key(k))
    end
    n = n + 1
  end
  if n == 0 then
    return nil, shape .. " with at least one strategy (got an empty table)"
  end
  local out = {}
  for i = 1, n do
    local strategy = rawget(v, i)
    if type(strategy) ~= "table" then
      return nil, format("must be a strategy table (got %s)", strategy == nil and "nothing" or describe(strategy)), { i }
    end
    local _, err = check_auth_type(rawget(strategy, "type"))
    if err then
      return nil, err, { i, "type" }
    end
    out[i] = deep_copy(strategy)
  end
  return out
end

-- deepstream's permission section: { type = "config", options = { path (a
-- Valve file) | permissions (its rules as a table), maxRuleIterations,
-- cacheEvacuationInterval } } or { type = "none" }. The rules are compiled by
-- permissions.lua when the server is made.
local PERMISSION_OPTIONS = {
  path = true, permissions = true, maxRuleIterations = true, cacheEvacuationInterval = true,
}
local function check_permission(v, ctx)
  local shape = 'must be { type = "config", options = { path = "permissions.yml" } } or { type = "none" }'
  if type(v) ~= "table" then return nil, format("%s (got %s)", shape, describe(v)) end
  for k in pairs(v) do
    if k ~= "type" and k ~= "options" then return nil, "unknown key (type, options)", { k } end
  end
  if v.type == "none" then return { type = "none" } end
  if v.type ~= "config" then return nil, format("must be 'config' or 'none' (got %s)", describe_value(v.type)), { "type" } end
  local o = v.options
  if type(o) ~= "table" then return nil, format("must be a table (got %s)", describe(o)), { "options" } end
  local out = {}
  for k, x in pairs(o) do
    if not PERMISSION_OPTIONS[k] then
      return nil, "unknown key (path, permissions, maxRuleIterations, cacheEvacuationInterval)", { "options", k }
    end
    local value, err = x, nil
    if k == "path" then
      value, err = check_nonempty_string(x)
      if value then value, err = existing(ctx, value, check_file) end
    elseif k == "permissions" then
      if type(x) ~= "table" then err = format("must be a table of Valve rules (got %s)", describe(x)) end
      value = deep_copy(x)
    else
      value, err = check_positive(x)
    end
    if err then return nil, err, { "options", k } end
    out[k] = value
  end
  if (out.path == nil) == (out.permissions == nil) then
    return nil, "needs either path (a Valve file) or permissions (the rules)", { "options" }
  end
  return { type = "config", options = out }
end

local function check_permissions(v, ctx)
  if type(v) == "table" then
    return deep_copy(v)
  elseif type(v) == "string" and v ~= "" then
    return existing(ctx, v, check_file)
  end
  return nil, format("must be a file path or a table (got %s)", describe_value(v))
end

-- A table section that may also be `false` (off): its keys are checked with
-- the given fields and merged over the default; `required` keys must be
-- given (when the default is nil).
local function optional_section(name, fields, required, combined)
  local index, candidates = {}, {}
  for _, f in ipairs(fields) do
    index[f.key] = f
    candidates[#candidates + 1] = { name = f.key, full = name .. "." .. f.key }
  end
  return function(v, ctx)
    if v == false then return false end
    if type(v) ~= "table" then return nil, format("must be a table or false (got %s)", describe(v)) end
    for _, k in ipairs(sorted_keys(v)) do
      if type(k) ~= "string" or not index[k] then
        return nil, format(": unknown key %s%s", describe_key(k), did_you_mean(k, candidates))
      end
    end
    local out = deep_copy(M.defaults()[name]) or {}
    for _, f in ipairs(fields) do
      local sv = rawget(v, f.key)
      if sv ~= nil then
        local value, text = f.check(sv, ctx)
        if text then return nil, text, { f.key } end
        out[f.key] = value
      end
    end
    for _, k in ipairs(required) do
      if out[k] == nil and not (combined and combined(out, k)) then
        return nil, "must be given", { k }
      end
    end
    return out
  end
end

local check_metrics = optional_section("metrics", {
  { key = "path", check = check_url_path },
  { key = "allow", check = check_string_list },
  { key = "token", check = check_nonempty_string },
}, {})

-- deepstream refuses to start without headerKey and headerValue unless
-- allowOpenPermissions is set (its monitoring-http plugin).
local check_monitoring = optional_section("monitoring", {
  { key = "url", check = check_url_path },
  { key = "headerKey", check = check_nonempty_string },
  { key = "headerValue", check = check_nonempty_string },
  { key = "allowOpenPermissions", check = check_boolean },
}, { "url", "headerKey", "headerValue" }, function(out, k) return k ~= "url" and out.allowOpenPermissions end)

local function check_redis_url(v)
  local ok, why = require("moonstream.cluster.url").parse(v)
  if ok then return v end
  return nil, why
end

-- The schema, in the order keys are checked and errors reported.
local SCHEMA = {
  { key = "host", check = check_nonempty_string },
  { key = "port", check = check_port },
  { key = "apiPath", check = check_url_path },
  { key = "authPath", check = check_url_path },
  { key = "healthCheckPath", check = check_url_path },
  { key = "enableAuthEndpoint", check = check_boolean },
  { key = "allowAuthData", check = check_boolean },
  { key = "maxMessageSize", check = check_message_size },
  { key = "maxResponseSize", check = integer_in(1024, 1073741824, "an integer from 1024 to 1073741824") },
  { key = "requestTimeout", check = check_positive },
  { key = "allowAllOrigins", check = check_boolean },
  { key = "origins", check = check_string_list },
  { key = "rpc", fields = {
    { key = "responseTimeout", check = check_positive },
    { key = "ackTimeout", check = check_positive },
    { key = "handlers", check = check_handlers },
  } },
  { key = "storage", fields = {
    { key = "path", check = check_storage_path },
    { key = "sync", check = check_boolean },
    { key = "cacheSize", check = check_non_negative },
    { key = "writeBufferSize", check = integer_in(65536, 1073741824, "an integer from 65536 to 1073741824") },
  } },
  { key = "storageExclusionPrefixes", check = check_string_list },
  { key = "tokenTTL", check = check_positive },
  { key = "auth", check = check_auth },
  -- failed logins per client address within authAttemptsWindow ms, then 429
  -- (defaults in auth.lua: 10 per 60000)
  { key = "maxAuthAttempts", check = check_positive },
  { key = "authAttemptsWindow", check = check_positive },
  { key = "permissions", check = check_permissions },
  { key = "permission", check = check_permission },
  { key = "events", fields = {
    { key = "listeners", check = check_listeners },
  } },
  { key = "staticFiles", check = check_static_folder },
  { key = "realtime", fields = {
    { key = "urlPath", check = check_url_path },
    { key = "jsonUrlPath", check = check_url_path },
    { key = "heartbeatInterval", check = check_positive },
    { key = "unauthenticatedClientTimeout", check = check_positive_or_false },
    { key = "maxAuthAttempts", check = check_positive },
    { key = "maxBufferedBytes", check = check_positive },
  } },
  { key = "listen", fields = {
    { key = "shuffleProviders", check = check_boolean },
    { key = "responseTimeout", check = check_positive },
    { key = "rematchInterval", check = check_positive },
    { key = "matchCooldown", check = check_non_negative },
  } },
  { key = "logLevel", check = check_log_level },
  { key = "logFormat", check = check_log_format },
  { key = "metrics", check = check_metrics },
  { key = "monitoring", check = check_monitoring },
  { key = "connectionLimit", check = check_positive },
  { key = "connectionTimeout", check = check_non_negative },
  { key = "connectionLimitPerIp", check = integer_in(0, 1000000, "an integer from 0 to 1000000") },
  { key = "connectionMemoryLimit", check = integer_in(4096, 16777216, "an integer from 4096 to 16777216") },
  { key = "fastPath", check = check_boolean },
  -- cluster mode (README "Cluster"): nil = one node on LevelDB
  { key = "cluster", fields = {
    { key = "redis", check = check_redis_url },
    { key = "name", check = check_nonempty_string },
    { key = "password", check = check_nonempty_string },
  } },
}

-- Lookups by key, and the names an unknown key is compared with: a section's
-- own keys; at the top, the top keys plus every nested key both as "leaf" and
-- as "section.leaf" (so `responseTimeout = 500` suggests 'rpc.responseTimeout').
local FIELDS, TOP_CANDIDATES = {}, {}
for _, field in ipairs(SCHEMA) do
  FIELDS[field.key] = field
  TOP_CANDIDATES[#TOP_CANDIDATES + 1] = { name = field.key, full = field.key }
  if field.fields then
    field.index, field.candidates = {}, {}
    for _, sub_field in ipairs(field.fields) do
      local full = field.key .. "." .. sub_field.key
      field.index[sub_field.key] = sub_field
      field.candidates[#field.candidates + 1] = { name = sub_field.key, full = full }
    end
  end
end
for _, field in ipairs(SCHEMA) do
  for _, sub_field in ipairs(field.fields or {}) do
    local full = field.key .. "." .. sub_field.key
    TOP_CANDIDATES[#TOP_CANDIDATES + 1] = { name = sub_field.key, full = full }
    TOP_CANDIDATES[#TOP_CANDIDATES + 1] = { name = full, full = full }
  end
end

local function check_unknown(t, index, prefix, candidates)
  for _, k in ipairs(sorted_keys(t)) do
    if type(k) ~= "string" or not index[k] then
      local path = append(prefix, { k })
      return {
        msg = format("unknown config key '%s'%s", format_path(path), did_you_mean(k, candidates)),
        where = path,
      }
    end
  end
end

-- Checks the user's value v of one schema field and stores it in cfg (whose
-- sections already exist). Returns an error object or nil.
local function merge_field(cfg, field, v, ctx)
  if not field.fields then
    local value, text, extra = field.check(v, ctx)
    if text then
      return failure(append({ field.key }, extra), text)
    end
    cfg[field.key] = value
    return nil
  end
  if type(v) ~= "table" then
    return failure({ field.key }, format("must be a table (got %s)", describe(v)))
  end
  local e = check_unknown(v, field.index, { field.key }, field.candidates)
  if e then
    return e
  end
  local section = cfg[field.key]
  if section == nil then -- a section without defaults (cluster)
    section = {}
    cfg[field.key] = section
  end
  for _, sub_field in ipairs(field.fields) do
    local sv = rawget(v, sub_field.key)
    if sv ~= nil then
      local value, text, extra = sub_field.check(sv, ctx)
      if text then
        return failure(append({ field.key, sub_field.key }, extra), text)
      end
      section[sub_field.key] = value
    end
  end
end

-- Rules that involve more than one key, on the merged configuration.
local function check_combined(cfg)
  if cfg.cluster and cfg.cluster.redis == nil then
    return failure({ "cluster", "redis" }, "is required when 'cluster' is set (redis://host:port/db)")
  end
  if cfg.permissions ~= nil and cfg.permission ~= nil then
    return failure({ "permission" }, "and 'permissions' cannot both be given")
  end
  if cfg.allowAllOrigins == false and cfg.origins == nil then
    return failure({ "origins" }, "must be given when 'allowAllOrigins' is false", { "allowAllOrigins" })
  end
  -- A list that would be silently ignored is a CORS policy the user believes
  -- in but does not have.
  if cfg.allowAllOrigins and cfg.origins ~= nil then
    return failure({ "origins" }, "has no effect while 'allowAllOrigins' is true (set allowAllOrigins = false)")
  end
  -- the operator endpoints are answered before the API's routing: a shared
  -- path would hide an endpoint
  local taken = {
    [cfg.apiPath] = "apiPath", [cfg.authPath] = "authPath", [cfg.healthCheckPath] = "healthCheckPath",
    [cfg.realtime.urlPath] = "realtime.urlPath", [cfg.realtime.jsonUrlPath] = "realtime.jsonUrlPath",
  }
  for _, e in ipairs({ { "metrics", "path" }, { "monitoring", "url" } }) do
    local section = cfg[e[1]]
    if section then
      local owner = taken[section[e[2]]]
      if owner then return failure(e, "is the path of '" .. owner .. "' already") end
      taken[section[e[2]]] = e[1] .. "." .. e[2]
    end
  end
end

-- Finding the line of a key
-- A small Lua lexer: names, strings (contents), symbols, with line numbers;
-- comments and whitespace dropped, so a commented-out key or a key inside a
-- string is never "found". It never fails: any text gives some tokens.

local function count_lines(text, i, j)
  return select(2, gsub(sub(text, i, j), "\n", ""))
end

local function lex(text)
  local toks, n, i, line = {}, #text, 1, 1
  local function push(kind, value, at_line)
    toks[#toks + 1] = { kind = kind, value = value, line = at_line or line }
  end
  if sub(text, 1, 1) == "#" then -- shebang line, skipped by Lua too
    i = find(text, "\n", 1, true) or n + 1
  end
  while i <= n do
    local c = byte(text, i)
    if c == 10 then
      line, i = line + 1, i + 1
    elseif c == 32 or (c >= 9 and c <= 13) then
      i = i + 1
    elseif c == 45 and byte(text, i + 1) == 45 then -- "--"
      local level = match(text, "^%[(=*)%[", i + 2)
      local stop
      if level then
        stop = select(2, find(text, "]" .. level .. "]", i + 4 + #level, true)) or n
      else
        stop = (find(text, "\n", i, true) or n + 1) - 1
      end
      line, i = line + count_lines(text, i, stop), stop + 1
    elseif find(text, "^[%a_]", i) then
      local name = match(text, "^[%a_][%w_]*", i)
      push("name", name)
      i = i + #name
    elseif find(text, "^%.?%d", i) then
      i = i + #match(text, "^[%w_.]+", i)
    elseif c == 34 or c == 39 then -- short string
      local j, start_line = i + 1, line
      while j <= n do
        local d = byte(text, j)
        if d == c then
          break
        elseif d == 92 then
          if byte(text, j + 1) == 10 then line = line + 1 end
          j = j + 2
        else
          if d == 10 then line = line + 1 end
          j = j + 1
        end
      end
      push("string", sub(text, i + 1, j - 1), start_line)
      i = j + 1
    elseif find(text, "^%[=*%[", i) then -- long string
      local level = match(text, "^%[(=*)%[", i)
      local open_end = i + #level + 1
      local close_start, close_end = find(text, "]" .. level .. "]", open_end + 1, true)
      close_start, close_end = close_start or n + 1, close_end or n
      local body = sub(text, open_end + 1, close_start - 1)
      push("string", (gsub(body, "^\r?\n", "")))
      line, i = line + count_lines(text, i, close_end), close_end + 1
    else
      local op = match(text, "^[=~<>]=", i) or match(text, "^%.%.%.?", i) or match(text, "^::", i)
        or match(text, "^//", i) or sub(text, i, i)
      push("symbol", op)
      i = i + #op
    end
  end
  return toks
end

local function is_symbol(t, value)
  return t ~= nil and t.kind == "symbol" and t.value == value
end

-- Where a field constructor or assignment usually starts.
local FIELD_PREVIOUS = { ["{"] = true, [","] = true, [";"] = true, ["."] = true }

-- First `key =` or `["key"] =` in toks[lo..hi], preferring one in a field
-- position over, say, `local key =`. Returns the key's token index and the
-- index of the value's first token.
local function find_field(toks, key, lo, hi)
  local loose_at, loose_value
  for j = lo, hi do
    local t, value_at = toks[j], nil
    if t.kind == "name" and t.value == key and is_symbol(toks[j + 1], "=") then
      value_at = j + 2
    elseif is_symbol(t, "[") and toks[j + 1] and toks[j + 1].kind == "string" and toks[j + 1].value == key
      and is_symbol(toks[j + 2], "]") and is_symbol(toks[j + 3], "=") then
      value_at = j + 4
    end
    if value_at then
      local prev = toks[j - 1]
      local field_position = prev == nil or (prev.kind == "symbol" and FIELD_PREVIOUS[prev.value])
        or (prev.kind == "name" and t.kind == "symbol") -- cfg["key"] =
      if field_position then
        return j, value_at
      end
      if not loose_at then
        loose_at, loose_value = j, value_at
      end
    end
  end
  return loose_at, loose_value
end

local OPENERS = { ["{"] = 1, ["("] = 1, ["["] = 1, ["}"] = -1, [")"] = -1, ["]"] = -1 }

-- Index of the "}" closing the "{" at toks[open] (#toks + 1 when unbalanced).
local function closing_brace(toks, open)
  local depth = 0
  for j = open, #toks do
    local t = toks[j]
    if t.kind == "symbol" then
      if t.value == "{" then
        depth = depth + 1
      elseif t.value == "}" then
        depth = depth - 1
        if depth == 0 then
          return j
        end
      end
    end
  end
  return #toks + 1
end

-- First token of the n-th item of the constructor whose contents are toks[lo..hi].
local function nth_item(toks, n, lo, hi)
  if lo > hi then
    return nil
  end
  if n == 1 then
    return lo
  end
  local depth, item = 0, 1
  for j = lo, hi do
    local t = toks[j]
    if t.kind == "symbol" then
      local step = OPENERS[t.value]
      if step then
        depth = depth + step
      elseif depth == 0 and (t.value == "," or t.value == ";") then
        item = item + 1
        if item == n then
          return j + 1 <= hi and j + 1 or nil
        end
      end
    end
  end
end

-- The line where the key path `where` is written: each component is searched
-- inside the table constructor of the previous one when it has one, else in
-- the whole file. Returns the deepest line found, nil if not even the first.
local function find_line(text, where)
  local toks = lex(text)
  local lo, hi, inside = 1, #toks, false
  local line
  for _, comp in ipairs(where) do
    local at, value_at
    if type(comp) == "string" then
      at, value_at = find_field(toks, comp, lo, hi)
    elseif math_type(comp) == "integer" and inside then
      at = nth_item(toks, comp, lo, hi)
      value_at = at
    end
    if not at then
      break
    end
    line = toks[at].line
    if is_symbol(toks[value_at], "{") then
      lo, hi, inside = value_at + 1, closing_brace(toks, value_at) - 1, true
    else
      lo, hi, inside = 1, #toks, false
    end
  end
  return line
end

local function read_text(path)
  local f = io_open(path, "rb")
  if not f then
    return nil
  end
  local text = f:read("a")
  f:close()
  return text
end

-- "source:LINE: msg", or "source: msg" when the key is not found in the file.
local function located(e, source, text)
  if not source then
    return e.msg
  end
  text = text or read_text(source)
  local line = text and find_line(text, e.where)
  if line then
    return format("%s:%d: %s", source, line, e.msg)
  end
  return format("%s: %s", source, e.msg)
end

-- "source:LINE: msg" with the line where the key path `where` is written in
-- the Lua file source (permissions files report their mistakes this way).
function M.locate(source, where, msg)
  return located({ msg = msg, where = where }, source)
end

-- Validation

-- locate: nil (a Lua file: the line is found in text) or function(e) -> the
-- message (config.yml: config_yaml.lua names the deepstream key and line).
local function validate(user, source, text, locate)
  if type(user) ~= "table" then
    local msg = format("the configuration must be a table (got %s)", describe(user))
    return nil, source and format("%s: %s", source, msg) or msg
  end
  local ctx = { dir = source and dir_of(source) }
  local cfg = M.defaults()
  local e = check_unknown(user, FIELDS, {}, TOP_CANDIDATES)
  if not e then
    for _, field in ipairs(SCHEMA) do
      local v = rawget(user, field.key)
      if v ~= nil then
        e = merge_field(cfg, field, v, ctx)
        if e then
          break
        end
      end
    end
  end
  e = e or check_combined(cfg)
  if e then
    if locate then return nil, locate(e) end
    return nil, located(e, source, text)
  end
  cfg.configDir = ctx.dir
  return cfg
end

function M.validate(user, source)
  if source ~= nil and type(source) ~= "string" then
    error(format("bad argument #2 to 'validate' (string expected, got %s)", type(source)), 2)
  end
  return validate(user, source, nil)
end

-- Loading a file

local function sandbox()
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

-- The same restricted environment for other data-like Lua files (permissions).
M.sandbox = sandbox

-- Lua shortens a long chunk name to "...<end of path>" in messages (LUA_IDSIZE);
-- the user gets the whole path back.
local function expand_chunk_name(msg, path)
  local tail, rest = match(msg, "^%.%.%.(.-)(:%d+:.*)$")
  if tail and tail ~= "" and sub(path, -#tail) == tail then
    return path .. rest
  end
  return msg
end

-- xpcall handler for running a config file: a string message located in the
-- file. An error raised without a position (error(x, 0), a bad argument to a
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

function M.load(path)
  if type(path) ~= "string" then
    error(format("bad argument #1 to 'load' (string expected, got %s)", type(path)), 2)
  end
  if find(path, "%.ya?ml$") then -- deepstream's config.yml
    return require("moonstream.config_yaml").load(path, function(user, source, locate)
      return validate(user, source, nil, locate)
    end)
  end
  local f, err = io_open(path, "rb")
  if not f then
    return nil, format("cannot read configuration file '%s': %s", path, reason_of(err, path))
  end
  local text, rerr = f:read("a")
  f:close()
  if not text then
    return nil, format("cannot read configuration file '%s': %s", path, tostring(rerr))
  end
  -- As luaL_loadfile: a UTF-8 BOM and a "#" first line are skipped (the line
  -- itself is kept empty so line numbers stay right).
  local code = gsub(text, "^\239\187\191", "", 1)
  if sub(code, 1, 1) == "#" then
    code = gsub(code, "^[^\n]*", "", 1)
  end
  local chunk, lerr = load(code, "@" .. path, "t", sandbox())
  if not chunk then
    return nil, expand_chunk_name(lerr, path)
  end
  local ok, result = xpcall(chunk, runtime_error_handler(path))
  if not ok then
    return nil, result
  end
  if type(result) ~= "table" then
    return nil, format("%s: the configuration file must return a table (got %s)", path, type(result))
  end
  return validate(result, path, text)
end

-- Command-line options over a validated configuration: each is checked like
-- the same key in a file (sections merged key by key), relative paths stay
-- relative to the current directory, and nil options are skipped.
function M.apply_overrides(cfg, overrides)
  if type(cfg) ~= "table" then
    error(format("bad argument #1 to 'apply_overrides' (table expected, got %s)", type(cfg)), 2)
  end
  if overrides ~= nil and type(overrides) ~= "table" then
    error(format("bad argument #2 to 'apply_overrides' (table expected, got %s)", type(overrides)), 2)
  end
  local out = deep_copy(cfg)
  if overrides == nil then
    return out
  end
  local e = check_unknown(overrides, FIELDS, {}, TOP_CANDIDATES)
  if e then
    return nil, e.msg
  end
  local ctx = { dir = nil }
  for _, field in ipairs(SCHEMA) do
    local v = rawget(overrides, field.key)
    if v ~= nil then
      if field.fields and type(out[field.key]) ~= "table" then
        out[field.key] = {}
      end
      e = merge_field(out, field, v, ctx)
      if e then
        return nil, e.msg
      end
    end
  end
  e = check_combined(out)
  if e then
    return nil, e.msg
  end
  return out
end

return M
