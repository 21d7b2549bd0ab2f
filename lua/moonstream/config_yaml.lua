-- deepstream's config.yml, read as a moonstream configuration. The file is
-- prepared as deepstream prepares it (${ENV_VAR} replaced by the variable's
-- value or nothing, before YAML parsing), then every key is looked up in SPEC
-- below: mapped to moonstream's key, ignored with one warning naming the key
-- and why (its feature has no meaning in a one-node server with LevelDB
-- storage), or refused (an error: moonstream cannot do what it asks, and
-- starting anyway would mislead). Unknown keys are errors. The mapped table
-- then goes through config.lua's validation like a Lua config; its errors
-- name the deepstream key and its line.
--
-- `fileLoad(x)` (auth users, permission permissions) and `file(x)` are paths
-- relative to the config file's folder, as in deepstream; moonstream reads the
-- file itself (so a reload reads it again). A top-level `moonstream:` section
-- holds moonstream's own keys (storage.path, ...), merged as in a Lua config.
--
--   config_yaml.translate(text, source) -> user table, warnings, locate | nil, err
--   config_yaml.load(path, validate) -> cfg | nil, err   (validate: config.lua's)
--   config_yaml.key_lists() -> { mapped = {...}, ignored = {...}, refused = {...} }
local yamldoc = require "moonstream.yamldoc"
local json = require "moonstream.json"
local log = require "moonstream.log"
local files = require "moonstream.config.files"

local type, pairs, ipairs, tostring, format, gsub, match, concat, sort =
  type, pairs, ipairs, tostring, string.format, string.gsub, string.match, table.concat, table.sort
local math_type = math.type

local M = {}

-- SPEC entries ---------------------------------------------------------------

local function map(to, convert) return { kind = "map", to = to, convert = convert } end
local function ignore(why, harmless) return { kind = "ignore", why = why, harmless = harmless } end
local function refuse(why, ok) return { kind = "refuse", why = why, ok = ok } end

local SINGLE_NODE = "moonstream is a single node"
local NO_TLS = "moonstream does not terminate TLS: put a TLS proxy in front"
-- enabledFeatures.<topic>: only `true` (the default) is accepted.
local function topic_on(topic)
  return refuse("moonstream cannot switch the " .. topic .. " topic off (use permissions)", true)
end

local LOG_LEVELS = { DEBUG = "debug", INFO = "info", WARN = "warn", ERROR = "error", FATAL = "error", OFF = "error" }
local function log_level(v)
  if type(v) == "string" and LOG_LEVELS[v:upper()] then return LOG_LEVELS[v:upper()] end
  return v -- config.lua says what is wrong with it
end

-- The WebSocket endpoint options (ws-binary, ws-json).
local function ws_options(url_key)
  return {
    urlPath = map("realtime." .. url_key),
    heartbeatInterval = map("realtime.heartbeatInterval"),
    unauthenticatedClientTimeout = map("realtime.unauthenticatedClientTimeout"),
    maxAuthAttempts = map("realtime.maxAuthAttempts"),
    maxMessageSize = map("maxMessageSize"),
    outgoingBufferTimeout = ignore("moonstream sends each message at once", 0),
    maxBufferByteSize = ignore("moonstream flushes per loop iteration (see realtime.maxBufferedBytes)"),
    logInvalidAuthData = ignore("auth data never goes to moonstream's log", false),
    headers = ignore("no headers are forwarded to auth", {}),
  }
end

local SPEC = {
  serverName = ignore(SINGLE_NODE .. "; the name is not used"),
  showLogo = ignore("moonstream prints no logo", false),
  logLevel = map("logLevel", log_level),
  dependencyInitializationTimeout = ignore("moonstream has no plugins to wait for"),
  libDir = ignore("moonstream loads no plugin libraries"),
  exitOnFatalError = ignore("moonstream stops on any start error and keeps serving after a failed request"),
  enabledFeatures = {
    record = topic_on("record"),
    event = topic_on("event"),
    rpc = topic_on("rpc"),
    presence = topic_on("presence"),
    monitoring = ignore("moonstream has no monitoring plugins"),
  },
  telemetry = ignore("moonstream sends no telemetry"),
  rpc = {
    ackTimeout = map("rpc.ackTimeout"),
    responseTimeout = map("rpc.responseTimeout"),
    provideRequestorName = ignore("providers are not told who made the request", false),
    provideRequestorData = ignore("providers are not told who made the request", false),
  },
  record = {
    storageExclusionPrefixes = map("storageExclusionPrefixes"),
    storageHotPathPrefixes = ignore("every write goes to LevelDB with group commit", {}),
    cacheRetrievalTimeout = ignore("records are read from the local LevelDB store, no cache plugin"),
    storageRetrievalTimeout = ignore("records are read from the local LevelDB store, no storage plugin"),
  },
  storageExclusionPrefixes = map("storageExclusionPrefixes"),
  listen = {
    responseTimeout = map("listen.responseTimeout"),
    shuffleProviders = map("listen.shuffleProviders"),
    rematchInterval = map("listen.rematchInterval"),
    matchCooldown = map("listen.matchCooldown"),
  },
  httpServer = {
    type = { kind = "accept", values = { default = true, uws = true } },
    options = {
      host = map("host"),
      port = map("port"),
      healthCheckPath = map("healthCheckPath"),
      allowAllOrigins = map("allowAllOrigins"),
      origins = map("origins"),
      maxMessageSize = map("maxMessageSize"),
      headers = ignore("no headers are forwarded to auth", {}),
      ssl = refuse(NO_TLS),
      sslKey = refuse(NO_TLS),
      sslCert = refuse(NO_TLS),
      sslCa = refuse(NO_TLS),
      sslDHParams = refuse(NO_TLS),
      sslPassphrase = refuse(NO_TLS),
    },
  },
  connectionEndpoints = { kind = "typed_list", types = {
    ["ws-binary"] = { options = ws_options("urlPath") },
    ["ws-json"] = { options = ws_options("jsonUrlPath") },
    ["ws-text"] = ignore("the deepstream v3 text protocol is not served"),
    mqtt = ignore("MQTT is not served"),
    http = { options = {
      allowAuthData = map("allowAuthData"),
      enableAuthEndpoint = map("enableAuthEndpoint"),
      postPath = map("apiPath"),
      authPath = map("authPath"),
      requestTimeout = map("requestTimeout"),
      getPath = ignore("GET requests to the API are not served"),
      logInvalidAuthData = ignore("auth data never goes to moonstream's log", false),
    } },
  } },
  logger = ignore("moonstream logs to stderr (set logLevel)"),
  auth = { kind = "auth" },
  permission = { kind = "permission" },
  cache = ignore("records live in LevelDB with its block cache (moonstream key storage.cacheSize)"),
  storage = ignore("records live in LevelDB (moonstream key storage.path)"),
  monitoring = { type = { kind = "accept", values = { none = true } }, options = ignore("no monitoring plugins", {}) },
  locks = ignore(SINGLE_NODE .. ": no cluster locks"),
  clusterNode = ignore(SINGLE_NODE),
  clusterRegistry = ignore(SINGLE_NODE),
  clusterStates = ignore(SINGLE_NODE),
  subscriptions = ignore(SINGLE_NODE .. ": subscriptions are kept in memory"),
  plugins = ignore("moonstream loads no plugins (RPC handlers and event listeners are Lua files)", {}),
  moonstream = { kind = "native" },
}

-- auth strategies: deepstream type -> moonstream type and the options kept.
local AUTH = {
  none = { to = "open", options = {} },
  file = { to = "file", options = { users = "users", path = "users", hash = "hash", iterations = "iterations",
                                    keyLength = "keyLength" },
           ignored = { reportInvalidParameters = "errors are always reported" } },
  http = { to = "webhook", options = { endpointUrl = "endpointUrl", permittedStatusCodes = "permittedStatusCodes",
                                       requestTimeout = "requestTimeout", retryStatusCodes = "retryStatusCodes",
                                       retryAttempts = "retryAttempts", retryInterval = "retryInterval",
                                       promoteToHeader = "promoteToHeader" },
           ignored = { reportInvalidParameters = "errors are always reported",
                       fieldsToPass = "the whole auth data and connection data are sent" } },
}
M.AUTH = AUTH

-- the keys of the `permission` section's options (config/schema.lua's)
local PERMISSION_OPTIONS = require("moonstream.config.schema").PERMISSION_OPTIONS

-- Walking the document -------------------------------------------------------

local function dotted(path)
  local out = {}
  for i, c in ipairs(path) do
    if math_type(c) == "integer" then out[#out + 1] = "[" .. (c - 1) .. "]"
    else out[#out + 1] = (i > 1 and "." or "") .. tostring(c) end
  end
  return concat(out)
end

local function is_default(v, harmless)
  if harmless == nil then return false end
  if type(harmless) == "table" then return type(v) == "table" and next(v) == nil end
  return v == harmless
end

-- fileLoad(x) / file(x) -> x (a path relative to the config file's folder).
local function file_ref(v)
  if type(v) ~= "string" then return nil end
  return match(v, "^%s*fileLoad%((.-)%)%s*$") or match(v, "^%s*file%((.-)%)%s*$")
end

local function set_key(st, to, value, path)
  local t, parts = st.out, {}
  for part in to:gmatch("[^.]+") do parts[#parts + 1] = part end
  for i = 1, #parts - 1 do
    t[parts[i]] = t[parts[i]] or {}
    t = t[parts[i]]
  end
  local last = parts[#parts]
  local before = st.origin[to]
  if before and t[last] ~= nil then
    if t[last] ~= value then
      st.warn(path, format("sets moonstream's '%s' too, which %s already set to %s; the first value stays",
        to, dotted(before), tostring(t[last])))
    end
    return
  end
  t[last] = value
  st.origin[to] = path
end

local walk

local function walk_auth(st, v, path)
  if type(v) ~= "table" or not json.is_array(v) then
    return st.fail(path, "must be a list of { type, options } strategies")
  end
  local out = {}
  for i, s in ipairs(v) do
    local p = { path[1], i }
    if type(s) ~= "table" then return st.fail(p, "must be a { type, options } strategy") end
    local a = AUTH[s.type]
    if not a then
      return st.fail({ path[1], i, "type" }, format("auth type '%s' is not supported (none, file, http)",
        tostring(s.type)))
    end
    for k in pairs(s) do
      if k ~= "type" and k ~= "options" then return st.fail({ path[1], i, k }, "unknown strategy key") end
    end
    local options = {}
    for k, x in pairs(s.options or {}) do
      local kp = { path[1], i, "options", k }
      if a.options[k] then
        options[a.options[k]] = file_ref(x) or x
        st.origin["auth." .. i .. ".options." .. a.options[k]] = kp
      elseif a.ignored and a.ignored[k] then
        st.warn(kp, "is ignored: " .. a.ignored[k])
      else
        return st.fail(kp, format("is not an option of deepstream's '%s' auth that moonstream knows", s.type))
      end
    end
    out[i] = { type = a.to, options = next(options) and options or nil }
    st.origin["auth." .. i] = p
  end
  st.out.auth = out
  st.origin.auth = path
end

local function walk_permission(st, v, path)
  if type(v) ~= "table" then return st.fail(path, "must be { type, options }") end
  for k in pairs(v) do
    if k ~= "type" and k ~= "options" then return st.fail({ "permission", k }, "unknown permission key") end
  end
  if v.type == "none" then
    st.out.permission = { type = "none" }
    st.origin.permission = path
    return
  end
  if v.type ~= "config" then
    return st.fail({ "permission", "type" }, format("permission type '%s' is not supported (config, none)",
      tostring(v.type)))
  end
  local options = {}
  for k, x in pairs(v.options or {}) do
    if not PERMISSION_OPTIONS[k] then
      return st.fail({ "permission", "options", k }, "is not an option of deepstream's Valve permissions")
    end
    local to = k
    if k == "permissions" and (file_ref(x) or type(x) == "string") then
      to, x = "path", file_ref(x) or x
    end
    options[to] = x
    st.origin["permission.options." .. to] = { "permission", "options", k }
  end
  st.out.permission = { type = "config", options = options }
  st.origin.permission = path
end

function walk(st, spec, v, path)
  if spec.kind == "map" then
    local value = v
    if spec.convert then value = spec.convert(v) end
    return set_key(st, spec.to, value, path)
  elseif spec.kind == "ignore" then
    if not is_default(v, spec.harmless) then st.warn(path, "is ignored: " .. spec.why) end
    return
  elseif spec.kind == "refuse" then
    if v ~= spec.ok and v ~= json.null then return st.fail(path, "cannot be used: " .. spec.why) end
    return
  elseif spec.kind == "accept" then
    if not spec.values[v] then
      local names = {}
      for name in pairs(spec.values) do names[#names + 1] = name end
      sort(names)
      return st.fail(path, format("'%s' is not supported (%s)", tostring(v), concat(names, ", ")))
    end
    return
  elseif spec.kind == "auth" then
    return walk_auth(st, v, path)
  elseif spec.kind == "permission" then
    return walk_permission(st, v, path)
  elseif spec.kind == "native" then
    if type(v) ~= "table" then return st.fail(path, "must be a table of moonstream config keys") end
    for k, x in pairs(v) do
      st.out[k] = x
      st.origin[k] = { "moonstream", k }
    end
    return
  elseif spec.kind == "typed_list" then
    if type(v) ~= "table" or not json.is_array(v) then return st.fail(path, "must be a list of { type, options }") end
    for i, item in ipairs(v) do
      local p = { path[1], i }
      local t = type(item) == "table" and item.type
      local sub = t and spec.types[t]
      if not sub then
        return st.fail({ path[1], i, "type" }, format("endpoint type '%s' is not known", tostring(t)))
      end
      if sub.kind then
        walk(st, sub, item, p)
      else
        for k, x in pairs(item) do
          if k ~= "type" then
            local e = walk(st, sub[k] or { kind = "unknown" }, x, { path[1], i, k })
            if e then return e end
          end
        end
      end
    end
    return
  elseif spec.kind == "unknown" then
    return st.fail(path, "is not a deepstream config key moonstream knows")
  end
  -- a section: walk its keys
  if type(v) ~= "table" or json.is_array(v) then return st.fail(path, "must be a section (a mapping)") end
  local keys = st.meta[v] and st.meta[v].keys
  if not keys then
    keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    sort(keys)
  end
  for _, k in ipairs(keys) do
    local p = {}
    for i, c in ipairs(path) do p[i] = c end
    p[#p + 1] = k
    local e = walk(st, spec[k] or { kind = "unknown" }, v[k], p)
    if e then return e end
  end
end

-- deepstream's ${VAR}: the variable's value, or nothing when it is unset.
local function substitute_env(text)
  return (gsub(text, "%${([^}]+)}", function(name) return os.getenv(name) or "" end))
end

function M.translate(text, source)
  local doc, meta = yamldoc.parse(substitute_env(text), source)
  if doc == nil then return nil, meta end
  local function line_of(path) return yamldoc.line(meta, doc, path) end
  local function where(path)
    local line = line_of(path)
    return line and format("%s:%d", source, line) or source
  end
  local warnings = {}
  local st = { out = {}, origin = {}, meta = meta }
  function st.warn(path, text_)
    warnings[#warnings + 1] = format("%s: deepstream key '%s' %s", where(path), dotted(path), text_)
  end
  function st.fail(path, text_)
    return format("%s: deepstream key '%s' %s", where(path), dotted(path), text_)
  end
  if doc == json.null then doc = {} end
  local err = walk(st, SPEC, doc, {})
  if err then return nil, err end
  if st.out.allowAllOrigins ~= false and st.out.origins ~= nil then
    -- deepstream ignores origins while allowAllOrigins is true
    if next(st.out.origins) ~= nil then st.warn(st.origin.origins, "is ignored while allowAllOrigins is true") end
    st.out.origins = nil
  end
  -- config.lua's errors name moonstream's key: point them at deepstream's.
  local function locate(e)
    local key = concat(e.where, ".")
    local path
    for n = #e.where, 1, -1 do
      path = st.origin[concat(e.where, ".", 1, n)]
      if path then break end
    end
    path = path or {}
    local msg = e.msg
    if #path > 0 then
      msg = gsub(msg, "^config key '[^']*'", function() return format("deepstream key '%s' (moonstream's '%s')",
        dotted(path), key) end)
    end
    return format("%s: %s", where(path), msg)
  end
  return st.out, warnings, locate
end

-- Reads and validates a config.yml (validate: config.lua's, given the mapped
-- table, the file and the locate function). Warnings go to the log.
function M.load(path, validate)
  local text, rerr, too_large = files.read_text(path)
  if too_large then return nil, rerr end
  if not text then return nil, format("cannot read configuration file '%s': %s", path, tostring(rerr)) end
  local user, warnings, locate = M.translate(text, path)
  if not user then return nil, warnings end
  for _, w in ipairs(warnings) do log.warn("%s", w) end
  return validate(user, path, locate)
end

-- The three lists, for the README and the specs.
function M.key_lists()
  local lists = { mapped = {}, ignored = {}, refused = {} }
  local function add(kind, name) lists[kind][#lists[kind] + 1] = name end
  local function visit(spec, name)
    local kind = spec.kind
    if kind == "map" or kind == "accept" or kind == "native" then add("mapped", name)
    elseif kind == "ignore" then add("ignored", name)
    elseif kind == "refuse" then add("refused", name)
    elseif kind == "auth" then
      for t, a in pairs(AUTH) do
        add("mapped", name .. "[type=" .. t .. "]")
        for k in pairs(a.ignored or {}) do add("ignored", name .. "[type=" .. t .. "].options." .. k) end
      end
    elseif kind == "permission" then
      add("mapped", name .. ".type")
      for k in pairs(PERMISSION_OPTIONS) do add("mapped", name .. ".options." .. k) end
    elseif kind == "typed_list" then
      for t, sub in pairs(spec.types) do visit(sub, name .. "[type=" .. t .. "]") end
    else
      for k, s in pairs(spec) do visit(s, name == "" and k or name .. "." .. k) end
    end
  end
  visit(SPEC, "")
  for _, l in pairs(lists) do sort(l) end
  return lists
end

return M
