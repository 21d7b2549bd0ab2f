-- The server: owns the loop, the store, the HTTP daemon and the Lua parts,
-- and their order of start and stop.
--
--   local server = assert(moonstream.new(config))
--   server:rpc("add-two", function(data, ctx) return data.numA + data.numB end)
--   server:on_event("chat", function(data, ctx) ... end)
--   server:start()            -- serves until SIGINT/SIGTERM or server:stop()
--
-- Embedding: server:listen() then server:step(timeout_ms) repeatedly, then
-- server:close(); server.loop is the event loop to add timers or clients to.
local core = require "moonstream.core"
local config = require "moonstream.config"
local log = require "moonstream.log"
local records_mod = require "moonstream.records"
local events_mod = require "moonstream.events"
local rpc_mod = require "moonstream.rpc"
local dispatch = require "moonstream.dispatch"
local auth_mod = require "moonstream.auth"
local tokens_mod = require "moonstream.tokens"
local permissions_mod = require "moonstream.permissions"
local control = require "moonstream.control"
local httpapi = require "moonstream.httpapi"
local realtime_mod = require "moonstream.realtime"
local scripts = require "moonstream.scripts"
local json = require "moonstream.json"

local M = {}
local Server = {}
local mt = { __index = Server }

local DRAIN_TIMEOUT_MS = 10000

-- Context API every RPC handler and listener gets (ctx.records, ctx.emit...).
local function handler_api(self)
  local records = {}
  -- records.read(name) -> data, version | nil (missing) | nil, err
  function records.read(name)
    local version, text, err = self.records:get(name)
    if err then return nil, err end
    if version == nil then return nil end
    return json.decode(text), version
  end
  function records.head(name)
    local version, _, err = self.records:get(name)
    if err then return nil, err end
    return version or -1
  end
  -- records.write(name, data [, path [, version]]) -> true | nil, err (durable at the next flush)
  function records.write(name, data, path, version)
    local r = self.records:cmd_write(name, data, path, version, "record")
    if r.success then return true end
    return nil, r.error, r.errorEvent
  end
  function records.delete(name)
    self.records:cmd_delete(name, "record")
    return true
  end
  return {
    records = records,
    emit = function(name, data) self.dispatcher:execute({ { topic = "event", action = "emit", eventName = name, data = data } }, { user = { id = "server" } }, function() end) end,
    log = log,
    json = json,
  }
end

-- config: a table with deepstream's keys (validated here) or nil for the
-- embedded defaults; validated = true when it comes from config.load.
-- Returns a server, or nil and an error naming the key.
function M.new(cfg, validated)
  local err
  if not validated then
    cfg, err = config.validate(cfg or {})
    if not cfg then return nil, err end
  end
  log.set_level(cfg.logLevel)
  -- errors raised by Lua callbacks that C calls (request handlers, timers)
  debug.getregistry()["moonstream.error_reporter"] = function(msg) log.error("%s", msg) end
  local self = setmetatable({ config = cfg, state = "new" }, mt)
  self.loop = core.loop()
  self.presence = core.presence()
  local api = handler_api(self)
  self.listeners = events_mod.new(api)
  self.handlers = rpc_mod.new(self.loop, { response_timeout = cfg.rpc.responseTimeout, api = api })
  self.auth, err = auth_mod.new(cfg.auth, {
    loop = self.loop, rpc = self.handlers, config_dir = cfg.configDir,
    max_attempts = cfg.maxAuthAttempts, attempts_window = cfg.authAttemptsWindow,
  })
  if not self.auth then return nil, err end
  self.permissions, err = permissions_mod.new(cfg.permissions or cfg.permission)
  if not self.permissions then
    return nil, string.format("config key '%s': %s", cfg.permission and "permission" or "permissions", err)
  end

  local handlers
  handlers, err = scripts.load_spec(cfg.rpc.handlers, "rpc handler")
  if not handlers then return nil, "config key 'rpc.handlers': " .. err end
  for name, fn in pairs(handlers) do self.handlers:register(name, fn) end
  self.file_handlers = handlers -- replaced by reload()
  local listeners
  listeners, err = scripts.load_spec(cfg.events.listeners, "event listener")
  if not listeners then return nil, "config key 'events.listeners': " .. err end
  for name, fn in pairs(listeners) do self.listeners:on(name, fn) end
  return self
end

function Server:rpc(name, fn)
  self.handlers:register(name, fn)
  return self
end

-- Revokes a token (a string) or every token of a user ({ user = id }).
-- Returns the number revoked; the server must be listening (tokens live in the store).
function Server:revoke_token(what)
  assert(self.tokens, "revoke_token needs a listening server")
  if type(what) == "table" then return self.tokens:revoke_user(what.user) end
  return self.tokens:revoke(what) and 1 or 0
end

-- Reloads the permissions file and the RPC handler files (SIGHUP, `moonstream
-- reload`); a broken file keeps what was loaded before, and the reason is
-- logged. Then answers the command line's queued requests (token revocation).
-- Returns true | nil, err.
function Server:reload()
  local ok, err = self.permissions:reload()
  self:_update_fast_path() -- rules may have appeared
  local handlers, herr = scripts.load_spec(self.config.rpc.handlers, "rpc handler")
  if handlers then
    for name in pairs(self.file_handlers) do self.handlers:unregister(name) end
    for name, fn in pairs(handlers) do self.handlers:register(name, fn) end
    self.file_handlers = handlers
  else
    log.error("rpc handlers not reloaded, the old ones stay: %s", herr)
    ok, err = nil, err or herr
  end
  if self.tokens then
    control.process(self.config.storage.path, function(line)
      local kind, arg = line:match("^(%S+) (.+)$")
      if kind == "revoke-token" and arg:match("^%x+$") then
        return self.tokens:revoke_hash(arg) and "1" or "0"
      elseif kind == "revoke-user" then
        return tostring(self.tokens:revoke_user(arg))
      end
      return "error: unknown request"
    end)
  end
  return ok, err
end

function Server:on_event(name, fn)
  return self.listeners:on(name, fn)
end

function Server:accepting()
  return self.state == "running"
end

-- Opens the store and starts listening. Returns true | nil, err.
function Server:listen()
  if self.state ~= "new" then error("server already started", 2) end
  local cfg = self.config
  local store, err = core.store_open(cfg.storage.path, {
    cache_size = cfg.storage.cacheSize, write_buffer_size = cfg.storage.writeBufferSize,
  })
  if not store then
    if err:find("lock", 1, true) then
      return nil, "storage.path '" .. cfg.storage.path .. "' is in use by another moonstream process (" .. err .. ")"
    end
    return nil, "cannot open storage.path '" .. cfg.storage.path .. "': " .. err
  end
  self.store = store
  self.records = records_mod.new(store, {
    sync = cfg.storage.sync, exclusion_prefixes = cfg.storageExclusionPrefixes, loop = self.loop,
  })
  self.tokens = tokens_mod.new(store, { ttl = cfg.tokenTTL })
  local _, sweep_err = self.tokens:sweep()
  if sweep_err then -- e.g. a full disk: expired tokens are refused anyway, so start
    log.warn("could not remove expired tokens: %s", records_mod.public_error(sweep_err))
  end
  self.auth:set_tokens(self.tokens)
  self.permissions.records = self.records
  if not self.permissions:configured() then
    log.warn("no permissions configured (config key 'permissions'): every user may do everything")
  end
  self.dispatcher = dispatch.new({
    records = self.records, events = self.listeners, rpc = self.handlers, presence = self.presence,
    loop = self.loop, request_timeout = cfg.requestTimeout, permit = self.permissions:permit(),
    max_response = cfg.maxResponseSize,
  })
  -- realtime clients (WebSocket): HTTP emits, record changes and RPCs reach them
  self.realtime = realtime_mod.new({
    loop = self.loop, presence = self.presence, auth = self.auth, records = self.records,
    listeners = self.listeners, handlers = self.handlers, config = cfg,
    permit = function() return self.dispatcher.permit end,
  })
  local realtime = self.realtime
  realtime.record_topic:attach(self.records)
  self.dispatcher.on_emit = function(name, data) realtime.events:emit_from_server(name, data) end
  self.dispatcher.on_record_change = function(name) realtime.record_topic:notify(name) end
  self.handlers.fallback = function(name, data, _, done) return realtime.rpc:make_from_server(name, data, done) end
  self.api = httpapi.new(cfg, { dispatcher = self.dispatcher, auth = self.auth, server = self, realtime = realtime })
  local api = self.api
  local http
  http, err = core.http_server(self.loop, {
    host = cfg.host, port = cfg.port, max_body = cfg.maxMessageSize,
    connection_limit = cfg.connectionLimit, connection_timeout = cfg.connectionTimeout,
    per_ip_limit = cfg.connectionLimitPerIp, memory_limit = cfg.connectionMemoryLimit,
    handler = function(req) return api:handle(req) end,
  })
  if not http then
    store:close()
    self.store = nil
    return nil, err
  end
  self.http = http
  if cfg.fastPath then self:_fast_path() end
  local records = self.records
  self.loop:on_iteration(function() return records:flush() end)
  self.state = "running"
  -- only a server that handles SIGHUP advertises its pid, before it says it listens
  if self.handles_signals then control.write_pid(cfg.storage.path) end
  self.url = "http://" .. (cfg.host:find(":", 1, true) and "[" .. cfg.host .. "]" or cfg.host) .. ":" .. http:port()
  local exposed = M.exposure_warning(cfg)
  if exposed then log.warn("%s", exposed) end
  log.info("moonstream listening on %s (storage: %s)", self.url, cfg.storage.path)
  return true
end

-- The C fast path (csrc/fastpath.c) answers POST /api batches that need no
-- policy: it runs while the configuration has none to apply (open auth for
-- requests without credentials, no permission rules, every origin allowed)
-- and asks Lua about emits only while a listener or subscriber exists.
function Server:_fast_path()
  local cfg, records, listeners, dispatcher = self.config, self.records, self.listeners, self.dispatcher
  local auth = self.auth
  local fast = core.fast_path(records.core, {
    api_path = cfg.apiPath,
    exclusions = cfg.storageExclusionPrefixes,
    max_response = cfg.maxResponseSize,
    -- the same hooks the Lua path runs (dispatch.lua's emit, records.lua's put/remove)
    emit_hook = function(name, text)
      local data = text and json.decode(text)
      local ctx = { user = auth:anonymous() }
      listeners:emit(name, data, ctx)
      if dispatcher.on_emit then dispatcher.on_emit(name, data, ctx) end
    end,
    change_hook = function(name, version, text)
      if records.on_change then records.on_change(name, version, text) end
    end,
  })
  local subs = self.realtime and self.realtime.events.subs
  local function watch()
    fast:watch_emits(listeners:any() or (subs ~= nil and next(subs.by_name) ~= nil))
  end
  listeners.on_change = watch
  if subs then subs.on_used = watch end
  watch()
  self.fast = fast
  self:_update_fast_path()
  self.http:set_fast_path(fast)
end

function Server:_update_fast_path()
  if not self.fast then return end
  local cfg = self.config
  self.fast:enable(cfg.allowAllOrigins and not self.permissions:configured() and self.auth:anonymous() ~= nil)
end

-- True for addresses only this machine can reach.
function M.is_loopback(host)
  return host == "localhost" or host == "::1" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- The warning for open auth on an address others can reach (loopback is
-- fine: binding elsewhere is an explicit choice, made loudly), or nil.
function M.exposure_warning(cfg)
  if M.is_loopback(cfg.host) then return nil end
  for _, strategy in ipairs(cfg.auth or {}) do
    if strategy.type == "open" then
      return "open auth on " .. cfg.host .. ": anyone who can reach this address may log in"
        .. " (set 'auth' and 'permissions', or bind to 127.0.0.1)"
    end
  end
  return nil
end

function Server:port()
  return self.http and self.http:port()
end

-- Runs one loop iteration, waiting at most timeout_ms (default 0).
function Server:step(timeout_ms)
  return self.loop:run_once(timeout_ms or 0)
end

-- Graceful stop: stop accepting, let in-flight requests finish (bounded),
-- answer what is left, close the daemon and then LevelDB.
function Server:stop()
  if self.state ~= "running" then return end
  self.state = "stopping"
  log.info("moonstream stopping: draining %d in-flight request(s)", self.http:stats().active)
  self.http:quiesce()
  local deadline = core.now() + DRAIN_TIMEOUT_MS
  local running = self.loop_running
  if not running then
    while self.http:stats().active > 0 and core.now() < deadline do
      self.loop:run_once(50)
    end
    self:close()
  else
    -- inside server:start(): drain from the loop, then stop it
    local function check()
      if self.http:stats().active == 0 or core.now() >= deadline then
        self.loop:stop()
      else
        self.loop:timer(20, check)
      end
    end
    check()
  end
end

-- Closes everything at once (pending writes are flushed first).
function Server:close()
  if self.state == "closed" then return end
  if self.realtime then self.realtime:close() end -- WebSocket clients, their timers
  if self.http then
    self.http:close()      -- answers suspended requests, stops the daemon
    self.loop:run_once(0)  -- flushes writes made by their completion
  end
  if self.records then self.records:drain() end
  self.loop:on_iteration(nil)
  self.auth:close()
  if self.store then
    control.remove_pid(self.config.storage.path)
    self.store:close()
  end
  self.loop:signals(nil)
  self.state = "closed"
  log.info("moonstream stopped")
end

-- Listens and serves until SIGINT/SIGTERM (or server:stop()). Returns true,
-- or nil, err when it could not start.
function Server:start(opts)
  if not (opts and opts.signals == false) then
    self.loop:signals(function(sig)
      if sig == "HUP" then
        log.info("SIGHUP received: reloading permissions and rpc handlers")
        self:reload()
      else
        log.info("SIG%s received", sig)
        self:stop()
      end
    end)
    self.handles_signals = true -- listen() writes the pid file for `moonstream reload`
  end
  local ok, err = self:listen()
  if not ok then
    self.loop:signals(nil)
    return nil, err
  end
  self.loop_running = true
  self.loop:run()
  self.loop_running = false
  self:close()
  return true
end

return M
