-- The cluster's messages between nodes, over Redis pub/sub, by interest: a
-- node SUBSCRIBEs only to the channels of the event and record names its
-- realtime clients and Lua listeners use (as Centrifugo does), never to a
-- channel carrying everything.
--
--   events   "ms:c:e:<name>"  "<node id>\n<user id as JSON>\n<data JSON or empty>"
--            (the format lives in csrc/redis.c, for this file and the C
--            fast path, which publishes its emits itself), published by the node that got the emit (HTTP, a realtime
--            client, ctx.emit), which has already delivered it to its own
--            subscribers: a node skips its own messages, so each emit reaches
--            every subscriber once.
--   records  "ms:c:r:<name>"  "<version> <text>" or "-1" (deleted), published
--            by the store's put script (csrc/redisstore.c) in the order Redis
--            applied the writes; changes.lua puts them and the node's own
--            changes in version order, once. "n <version> <text>" or "n -1":
--            a notify (the stored state told again), published by the node
--            that read it; every node with subscribers hears it there once,
--            the notifying node included, in order with the changes.
local core = require "moonstream.core"
local json = require "moonstream.json"
local log = require "moonstream.log"
local changes_mod = require "moonstream.cluster.changes"
local subscribers = require "moonstream.subscribers"

local M = {}
local Bus = {}
local mt = { __index = Bus }

local EVENT_PREFIX = core.redis_event_channel_prefix
local RECORD_PREFIX = core.redis_record_channel_prefix
local RECORD_KEY_PREFIX = core.redis_record_key_prefix

local function noop() end

-- cluster: cluster/init.lua's (connections); parts: loop, records (the
-- record engine: this node's changes, heard through its subscribe),
-- listeners (lua_listeners.lua), presence (cluster/presence.lua: its channel).
-- What the other nodes say reaches the parts built after the bus through
-- subscribe (record changes) and subscribe_events.
function M.new(cluster, parts)
  local self = setmetatable({
    cluster = cluster, listeners = parts.listeners,
    id = cluster.id, presence = parts.presence, count = {}, listened = {},
    changed = subscribers.new(), events = subscribers.new(),
  }, mt)
  local changed = self.changed
  self.changes = changes_mod.new(parts.loop, function(...) changed:publish(...) end)
  self.unsubscribe_records = parts.records:subscribe(function(name, version, text, origin, notified)
    self:record_changed(name, version, text, origin, notified)
  end)
  self.sub = cluster:subscriber(function(channel, data) self:_message(channel, data) end, function()
    self:_reread()
  end)
  cluster:on_reconnect(function() self:_reread() end)
  if self.presence then self.sub:subscribe(self.presence.CHANNEL) end -- every node answers presence queries
  self:sync_listeners()
  return self
end

-- fn(name, version|nil, text|nil, origin) hears every record change of the
-- names this node has interest in, this node's and the others', in version
-- order, once. Returns the function that ends the subscription.
function Bus:subscribe(fn)
  return self.changed:subscribe(fn)
end

-- fn(name, text|nil) hears every event emitted on another node (this node's
-- own emits are delivered where they are made). Returns the unsubscribe.
function Bus:subscribe_events(fn)
  return self.events:subscribe(fn)
end

local function channel_of(kind, name)
  return (kind == "record" and RECORD_PREFIX or EVENT_PREFIX) .. name
end

-- Runs the loop until the subscriber is up and its first subscriptions
-- (presence, listeners) reached Redis: a round trip on the commands
-- connection after it, which Redis serves later. At most max_ms.
function Bus:wait_ready(max_ms)
  local deadline = core.now() + max_ms
  local ponged = false
  while core.now() < deadline do
    if self.sub:up() then
      if self.cluster.commands:command({ "PING" }, function() ponged = true end) then
        while not ponged and core.now() < deadline do self.cluster.loop:run_once(10) end
        return ponged
      end
    end
    self.cluster.loop:run_once(10)
  end
  return false
end

-- A local client (or Lua listener) started (present) or stopped using name.
function Bus:interest(kind, name, present)
  local channel = channel_of(kind, name)
  local n = (self.count[channel] or 0) + (present and 1 or -1)
  if n <= 0 then
    self.count[channel] = nil
    self.sub:unsubscribe(channel)
    if kind == "record" then self.changes:forget(name) end
  else
    self.count[channel] = n
    if n == 1 and present then
      if kind == "record" then self.changes:watch(name) end
      self.sub:subscribe(channel)
    end
  end
end

-- Lua listeners' names count as interest too (lua_listeners.lua's on_change).
function Bus:sync_listeners()
  local now = self.listeners and self.listeners.listeners or {}
  for name in pairs(self.listened) do
    if not now[name] then self.listened[name] = nil; self:interest("event", name, false) end
  end
  for name in pairs(now) do
    if not self.listened[name] then self.listened[name] = true; self:interest("event", name, true) end
  end
end

-- The emitter's user id as the event messages carry it.
function M.uid_json(user)
  local uid = user and user.id
  return json.encode(uid == nil and json.null or uid) or "null"
end

-- An emit made on this node (already delivered here): to the other nodes.
-- text: the data as JSON text, or nil; user: { id } of the emitter or nil.
function Bus:publish_event(name, text, user)
  local ok, err = self.cluster.commands:publish_event(self.id, M.uid_json(user), name, text)
  if not ok then log.warn("cluster: event '%s' not sent to the other nodes: %s", name, err) end
end

-- The same for a Lua value (POST /api, ctx.emit).
function Bus:publish_value(name, data, user)
  local text
  if data ~= nil then
    local err
    text, err = json.encode(data)
    if not text then return log.warn("cluster: event '%s' not sent to the other nodes: %s", name, err) end
  end
  self:publish_event(name, text, user)
end

-- A record changed through this node's engine; notified: a notify's reading
-- of a record in Redis ("shared": for every node) or in this node's memory
-- ("local": storageExclusionPrefixes, for this node alone).
function Bus:record_changed(name, version, text, origin, notified)
  if notified == "shared" then return self:_publish_notify(name, version, text) end
  if notified then return self.changes:notify(name, version, text) end
  self.changes:change(name, version, text, origin)
end

-- This node hears its own notify from Redis, as the others do (when it has
-- subscribers of the record); when it cannot be sent they hear it at once.
function Bus:_publish_notify(name, version, text)
  local payload = version and ("n " .. version .. " " .. text) or "n -1"
  local ok, err = self.cluster.commands:command({ "PUBLISH", RECORD_PREFIX .. name, payload }, noop)
  if ok then return end
  log.warn("cluster: notify of '%s' not sent to the other nodes: %s", name, err)
  self.changes:notify(name, version, text)
end

-- Once both the subscriber and the commands connection are back after
-- either was down: what was said meanwhile is lost, so what this node's
-- clients follow is read again.
function Bus:_reread()
  if not (self.sub and self.sub:up() and self.cluster.up.commands) then return end
  if self.presence then self.presence:resync() end
  self:_catch_up()
end

-- The watched records' stored state, after the subscriber came back. A
-- record missing there is left alone (it may be one kept in memory): a
-- deletion made while the subscriber was away is not caught up.
function Bus:_catch_up()
  for channel in pairs(self.count) do
    if channel:sub(1, #RECORD_PREFIX) == RECORD_PREFIX then
      local name = channel:sub(#RECORD_PREFIX + 1)
      self.cluster.commands:command({ "HMGET", RECORD_KEY_PREFIX .. name, "v", "d" }, function(reply)
        local version = type(reply) == "table" and reply[1] and math.tointeger(tonumber(reply[1]))
        if version and type(reply[2]) == "string" then self.changes:catch_up(name, version, reply[2]) end
      end)
    end
  end
end

function Bus:_message(channel, data)
  if self.presence and channel == self.presence.CHANNEL then return self.presence:message(data) end
  if channel:sub(1, #RECORD_PREFIX) == RECORD_PREFIX then
    local name = channel:sub(#RECORD_PREFIX + 1)
    if data == "-1" then return self.changes:change(name, nil, nil, nil) end
    if data == "n -1" then return self.changes:notify(name, nil, nil) end
    local notified, version, text = data:match("^(n?) ?(%d+) (.*)$")
    version = version and math.tointeger(tonumber(version))
    if not version then return end -- not "<version> <text>", or a version too big: not a deletion
    if notified == "n" then return self.changes:notify(name, version, text) end
    return self.changes:change(name, version, text, nil)
  end
  local name = channel:sub(#EVENT_PREFIX + 1)
  local from, uid, text = core.redis_event_parse(data)
  if not from or from == self.id then return end
  self.events:publish(name, text)
  if self.listeners and self.listeners.listeners[name] then
    local value = text and json.decode(text)
    local id = json.decode(uid)
    self.listeners:emit(name, value, { user = { id = id ~= json.null and id or nil } })
  end
end

function Bus:close()
  self.unsubscribe_records()
  self.changes:close()
  self.sub:close()
end

return M
