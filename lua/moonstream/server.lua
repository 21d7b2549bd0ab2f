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
local httpapi = require "moonstream.httpapi"
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
  self.auth, err = auth_mod.new(cfg.auth)
  if not self.auth then return nil, err end

  local handlers
  handlers, err = scripts.load_spec(cfg.rpc.handlers, "rpc handler")
  if not handlers then return nil, "config key 'rpc.handlers': " .. err end
  for name, fn in pairs(handlers) do self.handlers:register(name, fn) end
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
  local store, err = core.store_open(cfg.storage.path, { cache_size = cfg.storage.cacheSize })
  if not store then
    if err:find("lock", 1, true) then
      return nil, "storage.path '" .. cfg.storage.path .. "' is in use by another moonstream process (" .. err .. ")"
    end
    return nil, "cannot open storage.path '" .. cfg.storage.path .. "': " .. err
  end
  self.store = store
  self.records = records_mod.new(store, {
    sync = cfg.storage.sync, exclusion_prefixes = cfg.storageExclusionPrefixes,
  })
  self.dispatcher = dispatch.new({
    records = self.records, events = self.listeners, rpc = self.handlers, presence = self.presence,
    loop = self.loop, request_timeout = cfg.requestTimeout,
  })
  self.api = httpapi.new(cfg, { dispatcher = self.dispatcher, auth = self.auth, server = self })
  local api = self.api
  local http
  http, err = core.http_server(self.loop, {
    host = cfg.host, port = cfg.port, max_body = cfg.maxMessageSize,
    connection_limit = cfg.connectionLimit, connection_timeout = cfg.connectionTimeout,
    handler = function(req) return api:handle(req) end,
  })
  if not http then
    store:close()
    self.store = nil
    return nil, err
  end
  self.http = http
  local records = self.records
  self.loop:on_iteration(function() return records:flush() end)
  self.state = "running"
  self.url = "http://" .. (cfg.host:find(":", 1, true) and "[" .. cfg.host .. "]" or cfg.host) .. ":" .. http:port()
  log.info("moonstream listening on %s (storage: %s)", self.url, cfg.storage.path)
  return true
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
  if self.http then
    self.http:close()      -- answers suspended requests, stops the daemon
    self.loop:run_once(0)  -- flushes writes made by their completion
  end
  if self.records then self.records:flush() end
  self.loop:on_iteration(nil)
  if self.store then self.store:close() end
  self.loop:signals(nil)
  self.state = "closed"
  log.info("moonstream stopped")
end

-- Listens and serves until SIGINT/SIGTERM (or server:stop()). Returns true,
-- or nil, err when it could not start.
function Server:start(opts)
  local ok, err = self:listen()
  if not ok then return nil, err end
  if not (opts and opts.signals == false) then
    self.loop:signals(function(sig)
      if sig == "HUP" then
        log.info("SIGHUP received (nothing to reload in this release)")
      else
        log.info("SIG%s received", sig)
        self:stop()
      end
    end)
  end
  self.loop_running = true
  self.loop:run()
  self.loop_running = false
  self:close()
  return true
end

return M
