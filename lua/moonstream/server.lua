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
-- Inside another event loop: watch server:fd() for reading and call
-- server:step(0) whenever it is readable (README "Embedding").
local core = require "moonstream.core"
local config = require "moonstream.config"
local log = require "moonstream.log"
local record_engine = require "moonstream.record_engine"
local lua_listeners = require "moonstream.lua_listeners"
local rpc_handlers = require "moonstream.rpc_handlers"
local dispatch = require "moonstream.dispatch"
local auth_mod = require "moonstream.auth"
local tokens_mod = require "moonstream.tokens"
local permissions_mod = require "moonstream.permissions"
local control = require "moonstream.control"
local httpapi = require "moonstream.httpapi"
local realtime_mod = require "moonstream.realtime"
local scripts = require "moonstream.scripts"
local json = require "moonstream.json"
local metrics = require "moonstream.metrics"
local monitoring = require "moonstream.monitoring"
local validate = require "moonstream.validate"
local subscribers = require "moonstream.subscribers"
local rpc_providers = require "moonstream.rpc_providers"
local cluster_mod = require "moonstream.cluster"
local bus_mod = require "moonstream.cluster.bus"
local cluster_presence = require "moonstream.cluster.presence"
local cluster_nodes = require "moonstream.cluster.nodes"
local cluster_rpc = require "moonstream.cluster.rpc"
local cluster_listen = require "moonstream.cluster.listen"

local M = {}
local Server = {}
local mt = { __index = Server }

local DRAIN_TIMEOUT_MS = 10000
local CLUSTER_WAIT_MS = 5000 -- at start, for Redis; then the node serves anyway

-- Context API every RPC handler and listener gets (ctx.records, ctx.emit...).
-- built: the parts listen() builds (records, dispatcher), filled in then,
-- and the RPC handlers. Inside an RPC handler a record command that waits
-- for the store (Redis) yields through ctx.await, so the node serves
-- everything else meanwhile; elsewhere (Lua listeners, plain calls) it still
-- settles the store.
local function handler_api(built)
  local records = {}
  local function await() return built.handlers and built.handlers:awaiter() end
  local function get(name)
    local a = await()
    if a then return built.records:wait_get(name, a) end
    return built.records:get(name)
  end
  -- records.read(name) -> data, version | nil (missing) | nil, err
  function records.read(name)
    local version, text, err = get(name)
    if err then return nil, err end
    if version == nil then return nil end
    return json.decode(text), version
  end
  function records.head(name)
    local version, _, err = get(name)
    if err then return nil, err end
    return version or -1
  end
  -- records.write(name, data [, path [, version]]) -> true | nil, err, event (durable at the next flush)
  function records.write(name, data, path, version)
    local a = await()
    local ok, text
    if a then ok, text = built.records:wait_write("record", name, data, path, version, nil, a)
    else ok, text = built.records:write(nil, "record", name, data, path, version) end
    if ok then return true end
    local r = json.decode(text)
    return nil, r.error, r.errorEvent
  end
  function records.delete(name)
    local a = await()
    if a then built.records:wait_delete("record", name, nil, a) else built.records:delete(nil, "record", name) end
    return true
  end
  return {
    records = records,
    emit = function(name, data) built.dispatcher:emit(name, data, { user = { id = "server" } }) end,
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
  log.set_format(cfg.logFormat)
  local self = setmetatable({ config = cfg, state = "new" }, mt)
  self.loop = core.loop()
  self.presence = core.presence()
  -- The parts built here exist before the storage does, so that handlers,
  -- listeners and a config error come before listen(). What they need of
  -- the parts listen() builds reaches them through objects made here and
  -- given to both: `built` (the record engine and the dispatcher, set by
  -- listen() for the handler API and the permission rules), the RPC
  -- providers (the realtime RPC topic registers there) and the news of
  -- listeners added or removed (the fast path and the cluster bus subscribe).
  local built = {}
  self.built = built
  local api = handler_api(built)
  local listeners_changed = subscribers.new()
  self.listeners_changed = listeners_changed
  self.listeners = lua_listeners.new(api, function() listeners_changed:publish() end)
  -- an RPC no Lua handler answers goes to realtime client providers
  self.rpc_providers = rpc_providers.new()
  self.handlers = rpc_handlers.new(self.loop, {
    response_timeout = cfg.rpc.responseTimeout, api = api, providers = self.rpc_providers,
  })
  built.handlers = self.handlers
  -- threads for work that must not stall the loop: password hashes, token writes
  self.workers = core.workers(self.loop)
  self.auth, err = auth_mod.new(cfg.auth, {
    loop = self.loop, rpc = self.handlers, config_dir = cfg.configDir, workers = self.workers,
    max_attempts = cfg.maxAuthAttempts, attempts_window = cfg.authAttemptsWindow,
  })
  if not self.auth then return nil, err end
  -- rules read records (oldData, ctx.read, Valve's _()) once the store is open; a rule is evaluated without
  -- yielding, so in cluster mode such a read still waits for Redis (README "Cluster")
  self.permissions, err = permissions_mod.new(cfg.permissions or cfg.permission, {
    records = { get = function(_, name) return built.records:get(name) end },
  })
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
-- The parts are built in the order they need each other: storage (the
-- record engine, tokens), presence, the realtime server, the cluster bus,
-- the dispatcher, then the HTTP daemon and the fast path in front of it.
function Server:listen()
  if self.state ~= "new" then error("server already started", 2) end
  local ok, err = self:_open_storage()
  if not ok then return nil, err end
  self:_assemble()
  ok, err = self:_serve_http()
  if not ok then return nil, err end
  self.state = "running"
  local cfg = self.config
  -- only a server that handles SIGHUP advertises its pid, before it says it listens
  if self.handles_signals then control.write_pid(cfg.storage.path) end
  local port = self.http:port()
  self.url = "http://" .. (cfg.host:find(":", 1, true) and "[" .. cfg.host .. "]" or cfg.host) .. ":" .. port
  local exposed = M.exposure_warning(cfg)
  if exposed then log.warn("%s", exposed) end
  if self.cluster then
    local node = self.cluster.name or (cfg.host .. ":" .. port)
    log.event("info", "moonstream listening on " .. self.url, { cluster_node = node, redis = self.cluster.url })
  else
    log.event("info", "moonstream listening on " .. self.url, { storage = cfg.storage.path })
  end
  self:_notify("READY=1\nSTATUS=listening on " .. self.url)
  return true
end

-- The store (LevelDB; in cluster mode Redis holds the records and tokens),
-- the record engine over it and the tokens. Returns true | nil, err.
function Server:_open_storage()
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
  if cfg.cluster then -- records live in Redis (lua/moonstream/cluster)
    self.cluster = cluster_mod.new(self.loop, cfg.cluster)
    local ready, why = self.cluster:wait_ready(CLUSTER_WAIT_MS)
    if not ready then
      log.warn("cluster: Redis %s is not reachable yet (%s): requests that need it fail until it is",
        self.cluster.url, why)
    end
  end
  self.records = record_engine.new(store, {
    durable = self.cluster and self.cluster:record_store(),
    sync = cfg.storage.sync, exclusion_prefixes = cfg.storageExclusionPrefixes, loop = self.loop,
    max_response = cfg.maxResponseSize,
  })
  self.built.records = self.records
  if self.cluster then
    self.tokens = tokens_mod.new(self.cluster:kv(), { ttl = cfg.tokenTTL })
  else
    self.tokens = tokens_mod.new(store, { ttl = cfg.tokenTTL, workers = self.workers })
  end
  local _, sweep_err = self.tokens:sweep()
  if sweep_err then -- e.g. a full disk: expired tokens are refused anyway, so start
    log.warn("could not remove expired tokens: %s", record_engine.public_error(sweep_err))
  end
  self.auth:set_tokens(self.tokens)
  return true
end

-- Who is online: this process's registry, or in cluster mode every node's
-- (lua/moonstream/cluster/presence.lua), whose subscribe tells the realtime
-- server built after it of remote joins and leaves.
function Server:_presence()
  if not self.cluster then return self.presence end
  local presence = cluster_presence.new({
    loop = self.loop, commands = self.cluster.commands, id = self.cluster.id, registry = self.presence,
  })
  self.cluster_presence = presence
  self.cluster:on_reconnect(function() presence:reregister() end)
  return presence
end

-- The cluster bus, the realtime server and the dispatcher, each built
-- after what it needs: record changes reach the realtime server through the
-- record engine's subscribe, or in cluster mode through the bus's (which
-- subscribes to the engine and puts every node's changes in order). One
-- permission check serves HTTP commands and realtime actions; an emit (POST
-- /api, the fast path, ctx.emit) reaches Lua listeners, realtime
-- subscribers and, in cluster mode, the other nodes.
function Server:_assemble()
  local cfg = self.config
  if not self.permissions:configured() then
    log.warn("no permissions configured (config key 'permissions'): every user may do everything")
  end
  local permit = self.permissions:permit()
  local presence = self:_presence()
  local bus = self.cluster and self:_bus()
  self.events_used = subscribers.new() -- an event name got its first subscriber or lost its last
  local events_used = self.events_used
  local realtime = realtime_mod.new({
    loop = self.loop, presence = presence, auth = self.auth, records = self.records, changes = bus or self.records,
    listeners = self.listeners, handlers = self.handlers, rpc_providers = self.rpc_providers,
    config = cfg, permit = permit,
    events_used = function(used) events_used:publish(used) end,
    cluster = bus and {
      interest = function(kind, name, present) bus:interest(kind, name, present) end,
      publish_event = function(name, text, user) bus:publish_event(name, text, user) end,
    },
    remote_events = bus, remote_presence = self.cluster_presence, cluster_rpc = self.cluster_rpc,
  })
  self.realtime = realtime
  if bus then self:_cluster_calls(bus, realtime) end
  local events = realtime.events
  self.dispatcher = dispatch.new({
    records = self.records, events = self.listeners, rpc = self.handlers, presence = presence,
    loop = self.loop, request_timeout = cfg.requestTimeout, permit = permit,
    on_emit = function(name, data, ctx)
      events:emit_from_server(name, data)
      -- cluster: the other nodes (the fast path's emits were published from C)
      if bus and not (ctx and ctx.published) then bus:publish_value(name, data, ctx and ctx.user) end
    end,
  })
  self.built.dispatcher = self.dispatcher
end

-- Cluster mode: the bus between the nodes (Lua listeners' names are
-- interest as realtime subscriptions are) and RPCs across nodes, over
-- messages to one node.
function Server:_bus()
  local bus = bus_mod.new(self.cluster, {
    loop = self.loop, records = self.records, listeners = self.listeners, presence = self.cluster_presence,
  })
  self.bus = bus
  self.listeners_changed:subscribe(function() bus:sync_listeners() end)
  self.cluster_nodes = cluster_nodes.new(self.cluster)
  self.cluster_rpc = cluster_rpc.new(self.cluster, self.cluster_nodes)
  return bus
end

-- Cluster mode, once the realtime server exists: listen (active providers)
-- across nodes, over messages to one node; then wait for Redis.
function Server:_cluster_calls(bus, realtime)
  if not bus:wait_ready(CLUSTER_WAIT_MS) then
    log.warn("cluster: not subscribed in Redis yet: messages from other nodes arrive once it is")
  end
  local nodes, rpc = self.cluster_nodes, self.cluster_rpc
  local listen = cluster_listen.new(self.cluster, nodes, {
    event = realtime.events.listen, record = realtime.record_topic.listen,
  })
  self.cluster_listen = listen
  self.cluster_presence:on_node_gone(function(node)
    rpc:node_gone(node)
    listen:node_gone(node)
  end)
  if not nodes:wait_ready(CLUSTER_WAIT_MS) then
    log.warn("cluster: this node's channel is not subscribed in Redis yet: RPCs and listen requests from other"
      .. " nodes reach it once it is")
  end
end

-- The HTTP daemon (POST /api, /api/auth, the WebSocket upgrade, the operator
-- endpoints), the fast path and the group commit on every loop iteration.
-- Returns true | nil, err (then the storage is closed again).
function Server:_serve_http()
  local cfg = self.config
  local get_handlers, endpoints = self:_operator_endpoints()
  local api = httpapi.new(cfg, {
    dispatcher = self.dispatcher, auth = self.auth, server = self, realtime = self.realtime,
    get_handlers = get_handlers,
  })
  self.api = api
  local http, err = core.http_server(self.loop, {
    endpoints = endpoints,
    host = cfg.host, port = cfg.port, max_body = cfg.maxMessageSize,
    connection_limit = cfg.connectionLimit, connection_timeout = cfg.connectionTimeout,
    per_ip_limit = cfg.connectionLimitPerIp, memory_limit = cfg.connectionMemoryLimit,
    handler = function(req) return api:handle(req) end,
  })
  if not http then
    if self.cluster then self.cluster:close(); self.cluster = nil end
    self.store:close()
    self.store = nil
    return nil, err
  end
  self.http = http
  if cfg.fastPath then self:_fast_path() end
  local records = self.records
  self.loop:on_iteration(function() return records:flush() end)
  return true
end

-- The metrics and monitoring endpoints (path -> handler), and the metrics
-- label of every configured path (http.c counts responses by it).
function Server:_operator_endpoints()
  local cfg = self.config
  local gauges = { realtime = self.realtime, presence = self.presence }
  local handlers = {}
  local endpoints = {
    [cfg.apiPath] = "api", [cfg.authPath] = "auth", [cfg.healthCheckPath] = "health_check",
    [cfg.realtime.urlPath] = "realtime", [cfg.realtime.jsonUrlPath] = "realtime",
  }
  if cfg.metrics then
    handlers[cfg.metrics.path] = metrics.handler(cfg.metrics, gauges)
    endpoints[cfg.metrics.path] = "metrics"
  end
  if cfg.monitoring then
    handlers[cfg.monitoring.url] = monitoring.handler(cfg.monitoring, gauges)
    endpoints[cfg.monitoring.url] = "monitoring"
  end
  return handlers, endpoints
end

-- systemd's Type=notify (csrc/notify.c): nothing happens without $NOTIFY_SOCKET.
function Server:_notify(state)
  local ok, err = core.notify(state)
  if not ok and err then log.warn("could not notify systemd: %s", err) end
end

-- The event loop's epoll fd, for a host event loop: when it is readable,
-- call server:step(0). (It also turns readable when a timer of moonstream's
-- is due, so nothing else needs watching.)
function Server:fd()
  return self.loop:fd()
end

-- The C fast path (csrc/fastpath.c) answers POST /api batches that need no
-- policy: it runs while the configuration has none to apply (open auth for
-- requests without credentials, no permission rules, every origin allowed)
-- and asks Lua about emits only while a listener or subscriber exists.
function Server:_fast_path()
  local cfg, dispatcher = self.config, self.dispatcher
  local auth = self.auth
  local fast = core.fast_path(self.records.engine, {
    api_path = cfg.apiPath,
    rules = validate.rules(), -- the commands it may take: validate.lua's table
    -- the emit the Lua path runs (record changes reach Lua through the engine's subscribe)
    emit_hook = function(name, text)
      dispatcher:emit(name, text and json.decode(text), { user = auth:anonymous(), published = self.bus ~= nil })
    end,
  })
  self.fast = fast
  if self.bus then fast:publish_emits(self.cluster.commands, self.cluster.id, bus_mod.uid_json(auth:anonymous())) end
  -- Emits reach Lua from the fast path only while a listener or a realtime
  -- subscriber exists (cluster: the fast path publishes every emit to the
  -- other nodes itself)
  local listeners, subs = self.listeners, self.realtime.events.subs
  local function watch()
    fast:watch_emits(listeners:any() or next(subs.by_name) ~= nil)
  end
  self.listeners_changed:subscribe(watch)
  self.events_used:subscribe(watch)
  watch()
  self:_update_fast_path()
  self.http:set_fast_path(fast, self.api:json_headers())
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
  self:_notify("STOPPING=1")
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
  if self.state == "running" then self:_notify("STOPPING=1") end -- closed without stop()
  if self.realtime then self.realtime:close() end -- WebSocket clients, their timers
  if self.http then
    self.http:close()      -- answers suspended requests, stops the daemon
    self.loop:run_once(0)  -- flushes writes made by their completion
  end
  if self.records then self.records:drain() end
  if self.cluster_rpc then self.cluster_rpc:close() end
  if self.cluster_listen then self.cluster_listen:close() end
  if self.cluster_nodes then self.cluster_nodes:close() end
  if self.cluster_presence then self.cluster_presence:close() end
  if self.bus then self.bus:close() end
  if self.cluster then self.cluster:close() end
  self.loop:on_iteration(nil)
  self.auth:close()
  self.workers:close() -- finishes queued hashes and token writes, before the store closes
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
