-- The realtime server: deepstream's WebSocket protocol
-- for the unmodified @deepstream/client. One codec per transport at the edge
-- (json_codec.lua for /deepstream-json, binary.lua for /deepstream) turns
-- frames into the message tables of message.lua; everything behind it is
-- shared, so a json client and a binary client see each other's events,
-- records, RPCs and presence.
--
-- This module owns the connection lifecycle (challenge, login, heartbeats,
-- timeouts, slow consumers; after login csrc/ws.c answers PINGs and drops
-- silent connections without Lua work) and routes authenticated messages to one module
-- per topic: event_topic.lua (with listen.lua), record_topic.lua, rpc_topic.lua, presence.lua.
--
--   local rt = realtime.new(parts)       -- parts: see M.new
--   rt:accept(ws_conn, "json" | "binary")
--   rt:close()                           -- closes every connection
local core = require "moonstream.core"
local json = require "moonstream.json"
local log = require "moonstream.log"
local names = require "moonstream.realtime.names"
local message = require "moonstream.realtime.message"
local metrics = require "moonstream.metrics"

local encode = json.encode
local ws_fanout = core.ws_fanout
local next, pairs = next, pairs

local M = {}
local Realtime = {}
local mt = { __index = Realtime }
local Conn = {}
local conn_mt = { __index = Conn }

local T, A = names.T, names.A
local CONNECTION, AUTH, PARSER = T.CONNECTION, T.AUTH, T.PARSER

-- How many messages a connection may send while its login is being checked
-- (an asynchronous strategy): they are replayed after AUTH_SUCCESSFUL.
local MAX_PENDING_WHILE_AUTH = 64

-- The payload of an incoming message (message.lua's rules):
-- true, value, text (both nil when there is none), or false, err when
-- `data` is not JSON.
local function payload(msg)
  local ok, value = message.value(msg)
  if not ok then return false, value end
  if value == nil then return true, nil, nil end
  return true, value, message.text(msg)
end
M.payload = payload

-- The server

-- parts:
--   loop, presence (core registry), auth (auth.lua: login), records (record_engine.lua),
--   changes (where record changes come from, :subscribe(fn): the record
--   engine, or in cluster mode the bus, which orders every node's),
--   listeners (lua_listeners.lua), handlers (rpc_handlers.lua),
--   rpc_providers (optional: rpc_providers.lua, where the RPC topic registers
--   itself to take calls no Lua handler has),
--   permit (optional: the permission check the dispatcher runs too,
--   function(ctx, topic, action, name, cmd); nil: everything is allowed),
--   events_used (optional function(used): called with true when the first
--   event name gets a subscriber and false when the last one goes),
--   config (validated config: realtime.*, rpc.*, listen.*, maxMessageSize)
--   codecs (optional { json = codec, binary = codec }, each with encode/decode)
--   cluster (optional, cluster mode: interest(kind, name, present) hears which
--   event and record names local clients use; publish_event(name, text, user)
--   takes client emits to the other nodes)
--   cluster_rpc (optional, cluster mode: cluster/rpc.lua, RPCs across nodes)
--   remote_events (optional, cluster mode: the bus, whose subscribe_events
--   tells the other nodes' emits), remote_presence (optional, cluster mode:
--   cluster/presence.lua, whose subscribe tells joins and leaves elsewhere)
function M.new(parts)
  local cfg = parts.config
  local rcfg = cfg.realtime
  local self = setmetatable({
    loop = parts.loop,
    presence = parts.presence,
    auth = parts.auth,
    records = parts.records,
    changes = parts.changes,
    listeners = parts.listeners,
    handlers = parts.handlers,
    rpc_providers = parts.rpc_providers,
    cluster_rpc = parts.cluster_rpc,
    cluster = parts.cluster,
    permit_rules = parts.permit,
    events_used = parts.events_used,
    heartbeat_interval = rcfg.heartbeatInterval,
    auth_timeout = rcfg.unauthenticatedClientTimeout, -- false: none
    max_auth_attempts = rcfg.maxAuthAttempts,
    max_buffered = rcfg.maxBufferedBytes,
    max_message_size = cfg.maxMessageSize,
    -- once upgraded a connection leaves MHD's books: connectionLimit bounds WebSockets here
    max_connections = cfg.connectionLimit,
    rpc_ack_timeout = cfg.rpc.ackTimeout,
    rpc_response_timeout = cfg.rpc.responseTimeout,
    listen = cfg.listen, -- listen.lua: shuffleProviders, responseTimeout, rematchInterval, matchCooldown
    codecs = parts.codecs or {
      json = require "moonstream.realtime.json_codec",
      binary = require "moonstream.realtime.binary",
    },
    payload = payload,
    conns = {},       -- every open connection -> true
    count = 0,
    stats = { accepted = 0, closed = 0, slow = 0, received = 0, sent = 0 },
  }, mt)
  if cfg.listen.rematchInterval <= 1000 then
    log.warn("listen.rematchInterval of 1000 ms or less: listen providers are not asked again (as deepstream)")
  end
  self.presence_topic = require("moonstream.realtime.presence").new(self)
  self.events = require("moonstream.realtime.event_topic").new(self)
  self.record_topic = require("moonstream.realtime.record_topic").new(self)
  self.rpc = require("moonstream.realtime.rpc_topic").new(self)
  -- news from elsewhere, through the subscriptions of the parts built before
  if parts.remote_events then
    parts.remote_events:subscribe_events(function(name, text) self.events:deliver(name, text, nil, nil, nil) end)
  end
  if parts.remote_presence then
    parts.remote_presence:subscribe(function(user, joined) self.presence_topic:remote(user, joined) end)
  end
  self.routes = {
    [T.EVENT] = self.events,
    [T.RECORD] = self.record_topic,
    [T.RPC] = self.rpc,
    [T.PRESENCE] = self.presence_topic,
  }
  return self
end

-- The permission check (the one the dispatcher runs), for a WebSocket action (topic and
-- action as the permission rules name them: event subscribe/emit/listen,
-- record read/write/delete/listen, rpc make/provide, presence
-- subscribe/query). cmd: nil, or { data = decoded payload, path = path }
-- for writes, emits and RPCs. Returns true, or false and the error action
-- to answer with: MESSAGE_DENIED, or MESSAGE_PERMISSION_ERROR when a rule
-- failed to run.
function Realtime:permit(c, topic, action, name, cmd)
  local permit = self.permit_rules
  if not permit then return true end
  local ok, allowed, _, errored = pcall(permit, { user = c.user, realtime = true }, topic, action, name, cmd)
  if not ok then
    log.error("permission check for %s %s '%s' failed: %s", topic, action, tostring(name), tostring(allowed))
    return false, "MESSAGE_PERMISSION_ERROR"
  end
  if allowed then return true end
  return false, errored and "MESSAGE_PERMISSION_ERROR" or "MESSAGE_DENIED"
end

-- Sending

-- Sends msg to every connection in the set `conns` (a table conn -> true)
-- except `except`; returns the count. The message is encoded once per
-- transport (only for the transports present) and written to every socket by
-- csrc/ws.c's fan-out, without Lua work per subscriber; the few connections
-- it could not write to are handled here as Conn:send_frame would.
function Realtime:broadcast(conns, msg, except)
  if not conns or self.closing then return 0 end
  local codecs = self.codecs
  local function encode_for(binary)
    local kind = binary and "binary" or "json"
    local ok, frame = pcall(codecs[kind].encode, msg)
    if ok and frame then return frame end
    log.error("cannot encode a %s message: %s", kind, tostring(frame))
    return false
  end
  local n, failed = ws_fanout(conns, except, encode_for)
  self.stats.sent = self.stats.sent + n
  if failed then
    for c, err in next, failed do
      if err ~= "not a WebSocket" then
        c:send_failed(err)
      else
        local frame = encode_for(c.binary)
        if frame and c:send_frame(frame) then n = n + 1 end
      end
    end
  end
  metrics.ws_sent(msg, n)
  return n
end

-- Connections

-- ws: the WebSocket connection (csrc/ws.c): send_text, send_binary, close,
-- on_message, on_close, and buffered() when it can tell how much is queued.
-- transport: "json" or "binary".
function Realtime:accept(ws, transport, info)
  local codec = self.codecs[transport]
  if not codec then error("unknown realtime transport '" .. tostring(transport) .. "'", 2) end
  local c = setmetatable({
    rt = self,
    ws = ws,
    transport = transport,
    codec = codec,
    binary = transport == "binary",
    state = "challenge",      -- challenge -> auth -> (authenticating) -> open -> closed
    open = true,
    user = nil,
    auth_attempts = 0,
    info = info or {},
  }, conn_mt)
  self.conns[c] = true
  self.count = self.count + 1
  self.stats.accepted = self.stats.accepted + 1
  metrics.ws_opened(transport)
  ws:on_message(function(frame, is_binary) c:receive(frame, is_binary) end)
  ws:on_close(function(_, reason)
    if reason == "idle timeout" then
      log.debug("realtime: closed a connection silent for more than %d ms", 2 * self.heartbeat_interval)
    end
    c:closed()
  end)
  if self.auth_timeout then
    c.auth_timer = self.loop:timer(self.auth_timeout, function()
      c.auth_timer = nil
      if c.open and not c.user then
        c:send({ topic = CONNECTION, action = A.CONNECTION.AUTHENTICATION_TIMEOUT })
        c:close()
      end
    end)
  end
  return c
end

-- Turns a GET on a realtime path into a WebSocket connection speaking
-- `transport`. Returns the connection, or nil, err for a bad handshake (the
-- caller answers 400 with err).
function Realtime:upgrade(req, transport)
  -- heartbeat: any message counts; ws.c drops a connection silent for more
  -- than two intervals (checked every interval, as the reference does)
  local ws, err = req:upgrade({ max_message_size = self.max_message_size, max_buffered = self.max_buffered,
    max_connections = self.max_connections, idle_timeout = 2 * self.heartbeat_interval })
  if not ws then return nil, err end
  return self:accept(ws, transport, {
    remoteAddress = req:client_address(),
    headers = { ["user-agent"] = req:header("User-Agent"), origin = req:header("Origin") },
  })
end

-- Closes every connection (server stop).
function Realtime:close()
  -- nothing more is sent once stopping: the clients are about to lose the
  -- connection anyway (no SUBSCRIPTION_HAS_NO_PROVIDER or PRESENCE_LEAVE
  -- as the connections go one by one)
  self.closing = true
  for c in pairs(self.conns) do c:close() end
  self.events.listen:close()
  self.record_topic.listen:close()
end

function Realtime:connections()
  return self.count
end

-- Queues an encoded frame. A client that lets more than max_buffered bytes
-- pile up is disconnected by ws.c rather than allowed to grow the server's
-- memory (the limit is given to req:upgrade, see Realtime:upgrade).
function Conn:send_frame(frame)
  if not self.open or self.rt.closing then return false end
  local ws, rt = self.ws, self.rt
  local ok, err
  if self.binary then ok, err = ws:send_binary(frame) else ok, err = ws:send_text(frame) end
  if not ok then return self:send_failed(err) end
  rt.stats.sent = rt.stats.sent + 1
  return true
end

-- A send to this connection failed (err from ws.c): forget the connection.
-- "send buffer full": ws.c dropped a client that does not read (more than
-- realtime.maxBufferedBytes queued); on_close follows.
function Conn:send_failed(err)
  if err == "send buffer full" then
    self.rt.stats.slow = self.rt.stats.slow + 1
    log.warn("realtime: disconnected a slow client (send buffer full)")
  end
  self:closed()
  return false
end

function Conn:send(msg)
  if not self.open then return false end
  local ok, frame = pcall(self.codec.encode, msg)
  if not ok or not frame then
    log.error("cannot encode a %s message: %s", self.transport, tostring(frame))
    return false
  end
  metrics.ws_sent(msg)
  return self:send_frame(frame)
end

-- Closes the WebSocket (a close frame after what is queued) and forgets the
-- connection at once.
function Conn:close()
  if not self.open then return end
  self:closed()
  self.ws:close(0) -- no status code, as deepstream closes
end

-- The connection is gone (closed by us, by the peer or by an error): cancel
-- its timers and remove it from everything it subscribed to.
function Conn:closed()
  if not self.open then return end
  self.open = false
  self.state = "closed"
  local rt = self.rt
  if self.auth_timer then self.auth_timer:cancel(); self.auth_timer = nil end
  rt.conns[self] = nil
  rt.count = rt.count - 1
  rt.stats.closed = rt.stats.closed + 1
  if self.user then
    for _, topic in pairs(rt.routes) do
      local ok, err = pcall(topic.disconnect, topic, self)
      if not ok then log.error("realtime: cleanup after close failed: %s", tostring(err)) end
    end
  end
end

-- One frame from the client.
function Conn:receive(frame, is_binary)
  if not self.open then return end
  local rt = self.rt
  rt.stats.received = rt.stats.received + 1
  -- a binary frame on the json endpoint, or a text frame on the binary one
  if (is_binary and true or false) ~= self.binary then return self:close() end
  local msg, err = self.codec.decode(frame)
  if msg == nil then
    -- json: text that is not JSON closes; binary: bytes that do not decode
    -- are answered like a message without a topic (as the reference does)
    if self.binary and not self.user then
      return self:send({ topic = CONNECTION, action = A.CONNECTION.INVALID_MESSAGE })
    end
    log.debug("realtime: undecodable frame (%s), closing", tostring(err))
    return self:close()
  end
  metrics.ws_received(msg)
  local ok, perr = xpcall(self.handle, debug.traceback, self, msg)
  if not ok then log.error("realtime: handling a %s message failed: %s", tostring(msg.topic), perr) end
end

local function invalid_connection_message(c, msg)
  c:send({ topic = CONNECTION, action = A.CONNECTION.INVALID_MESSAGE,
    originalTopic = msg.topic, originalAction = msg.action })
end

function Conn:handle(msg)
  local state, topic, action = self.state, msg.topic, msg.action
  if state == "open" then
    if topic == CONNECTION then
      if action == A.CONNECTION.PING then
        return self:send({ topic = CONNECTION, action = A.CONNECTION.PONG })
      end
      return
    end
    local route = self.rt.routes[topic]
    if route then return route:handle(self, msg) end
    if topic == AUTH then return end
    return self:send({ topic = PARSER, action = A.PARSER.UNKNOWN_TOPIC, originalTopic = topic })
  elseif state == "challenge" then
    if topic == CONNECTION then
      if action == A.CONNECTION.CHALLENGE then
        self.state = "auth"
        return self:send({ topic = CONNECTION, action = A.CONNECTION.ACCEPT })
      end
      if action == A.CONNECTION.PING or action == A.CONNECTION.PONG then return end
    end
    return invalid_connection_message(self, msg)
  elseif state == "auth" then
    if topic == AUTH then
      if action ~= A.AUTH.REQUEST then
        self:send({ topic = AUTH, action = A.AUTH.INVALID_MESSAGE_DATA, originalAction = action })
        return self:close()
      end
      return self:login(msg)
    end
    if topic == CONNECTION then return end
    return self:send({ topic = AUTH, action = A.AUTH.INVALID_MESSAGE,
      originalTopic = topic, originalAction = action })
  elseif state == "authenticating" then
    local pending = self.pending
    if #pending < MAX_PENDING_WHILE_AUTH then pending[#pending + 1] = msg else self:close() end
  end
end

-- AUTH.REQUEST: the payload must be a JSON object; the configured strategies
-- decide (the same chain as POST /api/auth, rate limits included).
function Conn:login(msg)
  local rt = self.rt
  local _, auth_data = payload(msg)
  if not json.is_object(auth_data) then
    self:send({ topic = AUTH, action = A.AUTH.INVALID_MESSAGE_DATA, originalAction = msg.action })
    return self:close()
  end
  self.state = "authenticating"
  self.pending = {}
  local answered = false
  local function answer(user)
    if answered then return end
    answered = true
    if not self.open then return end
    -- the first answer to a login, a refusal included, ends the
    -- unauthenticated-client timeout (as deepstream does)
    if self.auth_timer then self.auth_timer:cancel(); self.auth_timer = nil end
    if user then return self:logged_in(user) end
    self.state = "auth"
    self.pending = nil
    self.auth_attempts = self.auth_attempts + 1
    local failed = { topic = AUTH, action = A.AUTH.AUTH_UNSUCCESSFUL }
    self:send(failed)
    if self.auth_attempts >= rt.max_auth_attempts then
      self:send({ topic = AUTH, action = A.AUTH.TOO_MANY_AUTH_ATTEMPTS })
      self:close()
    end
  end
  -- the configured strategies without issuing a token (a connection needs
  -- none); a strategy that raises is a failed login, not a connection stuck
  -- in "authenticating"
  local ok, err = pcall(rt.auth.authenticate, rt.auth, auth_data, self.info, answer, "websocket")
  if not ok then
    log.error("realtime login failed: %s", tostring(err))
    answer(nil)
  end
end

function Conn:logged_in(user)
  local rt = self.rt
  self.user = user
  self.state = "open"
  local reply = { topic = AUTH, action = A.AUTH.AUTH_SUCCESSFUL }
  if user.clientData ~= nil and user.clientData ~= json.null then
    local text = encode(user.clientData)
    if text then reply.data = text end
  end
  self:send(reply)
  -- from now on ws.c answers the client's PING itself (before login it is
  -- ignored, as the reference does); any other spelling still comes here
  local beat = self.codec.heartbeat
  if beat and self.ws.answer_pings then self.ws:answer_pings(beat.ping, beat.pong, self.binary) end
  rt.presence_topic:login(self)
  local pending = self.pending
  self.pending = nil
  for i = 1, #pending do
    if not self.open then break end
    self:handle(pending[i])
  end
end

return M
