-- The configuration's schema: every key moonstream reads, its default and its
-- check, in the order keys are checked and errors reported. This table is the
-- one place a default is set (defaults() is built from it); the auth
-- strategies' options are checked with their own schemas (auth/*.lua OPTIONS).
local type, next, pairs, ipairs, rawget = type, next, pairs, ipairs, rawget
local math_type = math.type
local format = string.format
local C = require "moonstream.config.checks"
local D = require "moonstream.config.describe"
local engine = require "moonstream.config.engine"
local files = require "moonstream.config.files"
local strategies = require "moonstream.auth.strategies"
local log = require "moonstream.log"

local describe, describe_value, describe_key, deep_copy, sorted_keys =
  D.describe, D.describe_value, D.describe_key, D.deep_copy, D.sorted_keys
local failure = engine.failure

local M = {}

local MAX_MESSAGE_SIZE = 1024 * 1024 * 1024

local check_log_format = C.one_of(log.FORMATS)
local check_level_name = C.one_of(log.LEVEL_NAMES)

-- deepstream's names and deepstream 9's numbers too, stored as ours ("info").
local function check_log_level(v)
  local name = log.parse_level(v)
  if name then return name end
  local _, err = check_level_name(v)
  return nil, (err:gsub("^must be one of ([^(]*) ", "must be one of %1, their upper-case forms or 0 to 3 ", 1))
end

local function check_storage_path(v, ctx)
  local p, err = C.nonempty_string(v)
  if not p then
    return nil, err
  end
  return files.resolve_path(ctx.dir, p)
end

-- rpc.handlers and events.listeners: a folder of <name>.lua files, or a table
-- name -> function | file path. Files and folders must exist now, not at the
-- first call.
local function script_map(names)
  local shape = format("a folder path or a table of %s -> function or file path", names)
  return function(v, ctx)
    if type(v) == "string" and v ~= "" then
      return C.existing(ctx, v, files.check_folder)
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
        local file, why = C.existing(ctx, h, files.check_file)
        if not file then return nil, why, { name } end
        out[name] = file
      else
        return nil, format("must be a function or a file path (got %s)", describe_value(h)), { name }
      end
    end
    return out
  end
end

-- staticFiles: a folder served by GET (static.lua); it must exist now.
local function check_static_folder(v, ctx)
  if type(v) ~= "string" or v == "" then
    return nil, format("must be a folder path (got %s)", describe_value(v))
  end
  return C.existing(ctx, v, files.check_folder)
end

local check_auth_type = C.one_of(strategies.NAMES)

-- One entry of the auth list: its type, then its options against the
-- strategy's own option schema. Returns nil | text, key path (from the entry).
local function check_strategy(strategy, ctx)
  local _, err = check_auth_type(rawget(strategy, "type"))
  if err then
    return err, { "type" }
  end
  local options, nested, where = strategies.options_of(strategy)
  if not options then
    return nested, where
  end
  local text, path = engine.check_options(options, strategies.module(strategy.type).OPTIONS, ctx)
  if text and nested then table.insert(path, 1, "options") end
  return text, path
end

-- A list of strategy tables, each checked by check_strategy; kept as given.
local function check_auth(v, ctx)
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
      local got = strategy == nil and "nothing" or describe(strategy)
      return nil, format("must be a strategy table (got %s)", got), { i }
    end
    local text, path = check_strategy(strategy, ctx)
    if text then
      table.insert(path, 1, i)
      return nil, text, path
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
M.PERMISSION_OPTIONS = PERMISSION_OPTIONS
local function check_permission_option(k, x, ctx)
  if k == "path" then
    local value, err = C.nonempty_string(x)
    if value then value, err = C.existing(ctx, value, files.check_file) end
    return value, err
  elseif k == "permissions" then
    if type(x) ~= "table" then return nil, format("must be a table of Valve rules (got %s)", describe(x)) end
    return deep_copy(x)
  end
  return C.positive(x)
end

local function check_permission(v, ctx)
  local shape = 'must be { type = "config", options = { path = "permissions.yml" } } or { type = "none" }'
  if type(v) ~= "table" then return nil, format("%s (got %s)", shape, describe(v)) end
  for k in pairs(v) do
    if k ~= "type" and k ~= "options" then return nil, "unknown key (type, options)", { k } end
  end
  if v.type == "none" then return { type = "none" } end
  if v.type ~= "config" then
    return nil, format("must be 'config' or 'none' (got %s)", describe_value(v.type)), { "type" }
  end
  local o = v.options
  if type(o) ~= "table" then return nil, format("must be a table (got %s)", describe(o)), { "options" } end
  local out = {}
  for k, x in pairs(o) do
    if not PERMISSION_OPTIONS[k] then
      return nil, "unknown key (path, permissions, maxRuleIterations, cacheEvacuationInterval)", { "options", k }
    end
    local value, err = check_permission_option(k, x, ctx)
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
    return C.existing(ctx, v, files.check_file)
  end
  return nil, format("must be a file path or a table (got %s)", describe_value(v))
end

local function check_redis_url(v)
  local ok, why = require("moonstream.cluster.url").parse(v)
  if ok then return v end
  return nil, why
end

local positive, non_negative, boolean, url_path, nonempty = C.positive, C.non_negative, C.boolean, C.url_path,
  C.nonempty_string

-- The schema, in the order keys are checked and errors reported.
M.SCHEMA = {
  { key = "host", default = "127.0.0.1", check = nonempty },
  { key = "port", default = 6020, check = C.port },
  { key = "apiPath", default = "/api", check = url_path },
  { key = "authPath", default = "/api/auth", check = url_path },
  { key = "healthCheckPath", default = "/health-check", check = url_path },
  { key = "enableAuthEndpoint", default = true, check = boolean },
  { key = "allowAuthData", default = true, check = boolean },
  { key = "maxMessageSize", default = 1048576,
    check = C.integer_in(1, MAX_MESSAGE_SIZE, "an integer from 1 to " .. MAX_MESSAGE_SIZE) },
  -- record data in one POST /api answer
  { key = "maxResponseSize", default = 16777216,
    check = C.integer_in(1024, 1073741824, "an integer from 1024 to 1073741824") },
  { key = "requestTimeout", default = 20000, check = positive },
  { key = "allowAllOrigins", default = true, check = boolean },
  { key = "origins", check = C.string_list },
  { key = "rpc", fields = {
    { key = "responseTimeout", default = 10000, check = positive },
    { key = "ackTimeout", default = 1000, check = positive },
    { key = "handlers", check = script_map("RPC names") },
  } },
  { key = "storage", fields = {
    { key = "path", default = "./data", check = check_storage_path },
    { key = "sync", default = true, check = boolean },
    { key = "cacheSize", default = 8388608, check = non_negative },
    -- LevelDB's memtable; 1 MiB rather than its 4 MiB: small JSON records,
    -- 5 MB less memory and ~6 % faster writes (bench/RESULTS.md)
    { key = "writeBufferSize", default = 1048576,
      check = C.integer_in(65536, 1073741824, "an integer from 65536 to 1073741824") },
  } },
  { key = "storageExclusionPrefixes", default = {}, check = C.string_list },
  { key = "tokenTTL", default = 86400000, check = positive },
  { key = "auth", default = { { type = "open" } }, check = check_auth },
  -- failed logins per client address within authAttemptsWindow ms, then 429
  { key = "maxAuthAttempts", default = 10, check = positive },
  { key = "authAttemptsWindow", default = 60000, check = positive },
  { key = "permissions", check = check_permissions },
  { key = "permission", check = check_permission },
  { key = "events", fields = {
    { key = "listeners", check = script_map("event names") },
  } },
  { key = "staticFiles", check = check_static_folder },
  -- WebSocket endpoints (deepstream's ws-binary / ws-json endpoint options)
  { key = "realtime", fields = {
    { key = "urlPath", default = "/deepstream", check = url_path },
    { key = "jsonUrlPath", default = "/deepstream-json", check = url_path },
    { key = "heartbeatInterval", default = 30000, check = positive },
    { key = "unauthenticatedClientTimeout", default = 180000, check = C.positive_or_false },
    { key = "maxAuthAttempts", default = 3, check = positive },
    { key = "maxBufferedBytes", default = 4194304, check = positive },
  } },
  -- listen providers (deepstream's listen section; realtime/listen.lua)
  { key = "listen", fields = {
    { key = "shuffleProviders", default = true, check = boolean },
    { key = "responseTimeout", default = 500, check = positive },
    { key = "rematchInterval", default = 30000, check = positive },
    { key = "matchCooldown", default = 10000, check = non_negative },
  } },
  { key = "logLevel", default = "info", check = check_log_level },
  { key = "logFormat", default = "text", check = check_log_format },
  -- Prometheus text on GET metrics.path, for clients whose address is in
  -- `allow` (loopback) and, when `token` is set, that send it as a bearer
  -- token; `metrics = false` turns it off (README "Metrics")
  { key = "metrics", switch = true, fields = {
    { key = "path", default = "/metrics", check = url_path },
    { key = "allow", default = { "127.0.0.1", "::1", "::ffff:127.0.0.1" }, check = C.string_list },
    { key = "token", check = nonempty },
  } },
  -- deepstream's HTTP monitoring endpoint: off unless configured. deepstream
  -- refuses to start without headerKey and headerValue unless
  -- allowOpenPermissions is set (its monitoring-http plugin).
  { key = "monitoring", switch = true, off = true, fields = {
    { key = "url", check = url_path },
    { key = "headerKey", check = nonempty },
    { key = "headerValue", check = nonempty },
    { key = "allowOpenPermissions", check = boolean },
  }, missing = function(out)
    for _, k in ipairs({ "url", "headerKey", "headerValue" }) do
      if out[k] == nil and (k == "url" or not out.allowOpenPermissions) then return k end
    end
  end },
  { key = "connectionLimit", default = 1024, check = positive },
  { key = "connectionTimeout", default = 30, check = non_negative },
  { key = "connectionLimitPerIp", default = 0, check = C.integer_in(0, 1000000, "an integer from 0 to 1000000") },
  -- 16 KiB of request line and headers, as node (deepstream) allows; MHD
  -- zeroes the whole pool for every request, so a larger one costs time
  { key = "connectionMemoryLimit", default = 16384,
    check = C.integer_in(4096, 16777216, "an integer from 4096 to 16777216") },
  -- POST /api batches that need no Lua policy answered in C (csrc/fastpath.c)
  { key = "fastPath", default = true, check = boolean },
  -- cluster mode (README "Cluster"): nil = one node on LevelDB
  { key = "cluster", off = true, fields = {
    { key = "redis", check = check_redis_url },
    { key = "name", check = nonempty },
    { key = "password", check = nonempty },
  } },
}

M.FIELDS, M.TOP_CANDIDATES = engine.index(M.SCHEMA)

-- A fresh table of the embedded defaults.
function M.defaults()
  return engine.defaults_of(M.SCHEMA)
end

-- Rules that involve more than one key, on the merged configuration.
function M.check_combined(cfg)
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

-- Checks user (a table) over the defaults: cfg | nil, error object.
-- ctx.dir: the folder relative paths are resolved against.
function M.merge(cfg, user, ctx)
  local e = engine.check_unknown(user, M.FIELDS, {}, M.TOP_CANDIDATES)
  if e then return nil, e end
  for _, field in ipairs(M.SCHEMA) do
    local v = rawget(user, field.key)
    if v ~= nil then
      e = engine.merge_field(cfg, field, v, ctx)
      if e then return nil, e end
    end
  end
  e = M.check_combined(cfg)
  if e then return nil, e end
  return cfg
end

return M
