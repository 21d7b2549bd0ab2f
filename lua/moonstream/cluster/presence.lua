-- Presence across nodes. Each node keeps its own users in its local
-- registry (core.presence: connections per user) and in Redis (the set
-- "ms:p:n:<node>"), tells the others on the channel "ms:c:p" ("+ node seq user",
-- "- node seq user", "x node" = that node is gone, "r node" = that node wrote
-- its users again: read them), and heartbeats: the key "ms:p:alive:<node>"
-- expires DEAD_MS after the last beat. Every node checks the others' keys at
-- each beat and removes a dead node with its users (one script: a node that
-- beat in between stays). Each node holds the cluster-wide view (user ->
-- nodes), so queries answer at once, and a user on two nodes is online once.
--
-- After Redis was away, each node writes its users again (reregister: they
-- may have changed meanwhile, or Redis lost them), and reads every node's
-- users again once its subscriber and commands connection are both back
-- (resync, called by bus.lua: messages sent while it was away are lost). A
-- node that finds itself missing from the node set at a beat (another
-- removed it as dead while it could not beat) writes itself again.
--
-- A node's set and its sequence number "ms:p:seq:<node>" change together (a
-- script, or MULTI for the rewrite), and every join or leave message carries
-- the number it made. A snapshot of a node's users is read with its number
-- in one step, so a reader applies a snapshot only if it is not older than
-- the messages it already applied, and a message only if it is newer than
-- the snapshot: replies and messages arrive on two connections, in either
-- order, and neither may undo the other.
--
-- It has the local registry's calls (join, leave, users, query, is_online),
-- so dispatch.lua and the realtime presence topic use it unchanged.
local log = require "moonstream.log"
local subscribers = require "moonstream.subscribers"

local M = {}
local Presence = {}
local mt = { __index = Presence }

M.CHANNEL = "ms:c:p"
M.HEARTBEAT_MS = 1000
M.DEAD_MS = 3000 -- a node silent this long is removed with its users
local NODES = "ms:p:nodes"
local function users_key(node) return "ms:p:n:" .. node end
local function alive_key(node) return "ms:p:alive:" .. node end
local function seq_key(node) return "ms:p:seq:" .. node end

local function noop() end

-- KEYS: the node's alive key, its users' set, the node set; ARGV: the node,
-- the channel. 1 when the node was removed.
local REMOVE_DEAD = [[
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'x ' .. ARGV[1])
return 1
]]

-- KEYS: the node's users' set, its sequence key; ARGV: "+" or "-", the node,
-- the user, the channel. The set, the number and the message in one step.
local CHANGE = [[
if ARGV[1] == '+' then redis.call('SADD', KEYS[1], ARGV[3]) else redis.call('SREM', KEYS[1], ARGV[3]) end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. seq .. ' ' .. ARGV[3])
return seq
]]

-- KEYS: the node's sequence key, its users' set: { seq, users } read at one moment.
local SNAPSHOT = [[
return { tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('SMEMBERS', KEYS[2]) }
]]

-- parts: loop, commands (core.redis), id (this node's), registry (core.presence).
-- Joins and leaves on other nodes are heard through subscribe.
function M.new(parts)
  local announced = subscribers.new()
  local self = setmetatable({
    CHANNEL = M.CHANNEL,
    loop = parts.loop, commands = parts.commands, id = parts.id, registry = parts.registry,
    announced = announced,
    announce = function(user, joined) announced:publish(user, joined) end,
    nodes = {},   -- node -> { user = true }
    seq = {},     -- node -> the number of the last of its changes applied here
    online = {},  -- user -> number of nodes
    order = {},   -- users in the order they came online
    gone_fns = {}, -- on_node_gone's
  }, mt)
  self:_beat()
  return self
end

-- fn(user, joined) hears when a user comes online (joined true) or goes
-- offline everywhere through another node. Returns the unsubscribe.
function Presence:subscribe(fn)
  return self.announced:subscribe(fn)
end

function Presence:_send(args)
  local ok, err = self.commands:command(args, noop)
  if not ok then log.warn("cluster presence: %s not sent: %s", args[1], err) end
end

-- user came online on node (true: first anywhere)
function Presence:_add(node, user)
  local set = self.nodes[node]
  if not set then set = {}; self.nodes[node] = set end
  if set[user] then return false end
  set[user] = true
  local n = (self.online[user] or 0) + 1
  self.online[user] = n
  if n == 1 then self.order[#self.order + 1] = user end
  return n == 1
end

-- user left node (true: gone everywhere)
function Presence:_remove(node, user)
  local set = self.nodes[node]
  if not set or not set[user] then return false end
  set[user] = nil
  if next(set) == nil then self.nodes[node] = nil end
  local n = self.online[user] - 1
  if n > 0 then self.online[user] = n; return false end
  self.online[user] = nil
  for i, u in ipairs(self.order) do
    if u == user then table.remove(self.order, i); break end
  end
  return true
end

-- fn(node) when a node is found dead or stops (cluster/rpc.lua forgets its providers).
function Presence:on_node_gone(fn)
  self.gone_fns[#self.gone_fns + 1] = fn
end

function Presence:_gone(node)
  for _, fn in ipairs(self.gone_fns) do fn(node) end
  self.seq[node] = nil
  if self.loaded then self.loaded[node] = nil end -- read it again if it comes back
  local set = self.nodes[node]
  if not set then return end
  for user in pairs(set) do
    if self:_remove(node, user) then self.announce(user, false) end
  end
end

-- ---- the local registry's calls ----

function Presence:_change(op, user)
  self:_send({ "EVAL", CHANGE, "2", users_key(self.id), seq_key(self.id), op, self.id, user, M.CHANNEL })
end

function Presence:join(user)
  if not self.registry:join(user) then return false end
  self:_change("+", user)
  return self:_add(self.id, user)
end

function Presence:leave(user)
  local gone, err = self.registry:leave(user)
  if not gone then return gone, err end
  self:_change("-", user)
  return self:_remove(self.id, user)
end

function Presence:is_online(user)
  return self.online[user] ~= nil
end

function Presence:users()
  return table.move(self.order, 1, #self.order, 1, {})
end

function Presence:query(names)
  local out = {}
  for _, name in ipairs(names) do
    if type(name) ~= "string" then error("presence query names must be strings", 2) end
    out[name] = self.online[name] ~= nil
  end
  return out
end

function Presence:size()
  return #self.order
end

-- ---- between nodes ----

-- A message of the presence channel (bus.lua routes it here).
function Presence:message(data)
  local kind, node, seq, user = data:match("^([%+%-]) (%S+) (%d+) (.+)$")
  if kind and node ~= self.id then
    seq = tonumber(seq)
    if seq <= (self.seq[node] or 0) then return end -- a snapshot or an earlier message had it
    self.seq[node] = seq
    if kind == "+" and self:_add(node, user) then self.announce(user, true) end
    if kind == "-" and self:_remove(node, user) then self.announce(user, false) end
    return
  end
  kind, node = data:match("^([xr]) (%S+)$")
  if not node or node == self.id then return end
  if kind == "x" then self:_gone(node) else self:_load(node) end
end

-- Reads another node's users (when it is first seen alive, wrote its users
-- again, or this node's subscriber came back): they replace what this node
-- knew of them.
function Presence:_load(node)
  self.commands:command({ "EVAL", SNAPSHOT, "2", seq_key(node), users_key(node) }, function(snap)
    if type(snap) ~= "table" or math.type(snap[1]) ~= "integer" or type(snap[2]) ~= "table" or self.closed then
      return
    end
    -- read before changes applied already: read again (it has them now), as
    -- this one alone would lose the users the node had before them
    if snap[1] < (self.seq[node] or 0) then return self:_load(node) end
    self.seq[node] = snap[1]
    local users = snap[2]
    local now = {}
    for _, user in ipairs(users) do now[user] = true end
    for user in pairs(self.nodes[node] or {}) do
      if not now[user] and self:_remove(node, user) then self.announce(user, false) end
    end
    for _, user in ipairs(users) do
      if self:_add(node, user) then self.announce(user, true) end
    end
  end)
end

-- Every other node's users, read again (see the top). Their numbers are
-- forgotten first: a Redis that came back empty counts from 0 again.
function Presence:resync()
  self.seq = {}
  self.commands:command({ "SMEMBERS", NODES }, function(nodes)
    if type(nodes) ~= "table" or self.closed then return end
    for _, node in ipairs(nodes) do
      if node ~= self.id then self:_load(node) end
    end
  end)
end

function Presence:_remove_if_dead(node)
  self.commands:command({ "EVAL", REMOVE_DEAD, "3", alive_key(node), users_key(node), NODES, node, M.CHANNEL },
    function(removed)
      if removed ~= 1 then return end
      log.info("cluster presence: node %s stopped beating: removed with its users", node)
      self:_gone(node)
    end)
end

-- The heartbeat: this node is alive; every other node is checked.
function Presence:_beat()
  if self.closed then return end
  self:_send({ "SET", alive_key(self.id), "1", "PX", M.DEAD_MS })
  local first = not self.beaten
  self.beaten = true
  self.commands:command({ "SADD", NODES, self.id }, function(added)
    if added ~= 1 or self.closed then return end
    if not first then log.warn("cluster presence: this node was removed as dead: writing its users again") end
    self:reregister()
  end)
  self.commands:command({ "SMEMBERS", NODES }, function(nodes)
    if type(nodes) ~= "table" then return end
    for _, node in ipairs(nodes) do
      if node ~= self.id then
        self.commands:command({ "EXISTS", alive_key(node) }, function(alive)
          if alive == 0 then
            self:_remove_if_dead(node)
          elseif alive == 1 and not self.nodes[node] and not (self.loaded and self.loaded[node]) then
            self.loaded = self.loaded or {}
            self.loaded[node] = true
            self:_load(node)
          end
        end)
      end
    end
  end)
  self.timer = self.loop:timer(M.HEARTBEAT_MS, function() self:_beat() end)
end

-- After a reconnection: this node's users are written again (Redis may have
-- lost them, or another node may have removed this one as dead).
function Presence:reregister()
  self:_send({ "SET", alive_key(self.id), "1", "PX", M.DEAD_MS })
  -- one transaction: a reader never sees the set emptied and not yet refilled
  -- (nothing else is sent on this connection before EXEC: Lua runs on one thread)
  self:_send({ "MULTI" })
  self:_send({ "DEL", users_key(self.id) })
  local users = self.registry:users()
  for i = 1, #users, 1000 do -- bounded commands, however many users
    self:_send({ "SADD", users_key(self.id), table.unpack(users, i, math.min(i + 999, #users)) })
  end
  self:_send({ "INCR", seq_key(self.id) })
  self:_send({ "EXEC" })
  self:_send({ "SADD", NODES, self.id })
  self:_send({ "PUBLISH", M.CHANNEL, "r " .. self.id })
end

-- A graceful stop: this node's users leave at once.
function Presence:close()
  if self.closed then return end
  self.closed = true
  if self.timer then self.timer:cancel() end
  self:_send({ "DEL", users_key(self.id), alive_key(self.id) })
  self:_send({ "SREM", NODES, self.id })
  self:_send({ "PUBLISH", M.CHANNEL, "x " .. self.id })
  if self.commands:waiting() > 0 then self.commands:settle(1000) end -- said before the connection closes
end

return M
