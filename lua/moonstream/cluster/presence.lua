-- Presence across nodes. Each node keeps its own users in its local
-- registry (core.presence: connections per user) and in Redis (the set
-- "ms:p:n:<node>"), tells the others on the channel "ms:c:p" ("+ node user",
-- "- node user", "x node" = that node is gone), and heartbeats: the key
-- "ms:p:alive:<node>" expires DEAD_MS after the last beat. Every node checks
-- the others' keys at each beat and removes a dead node with its users.
-- Each node holds the cluster-wide view (user -> nodes), so queries answer
-- at once, and a user on two nodes is online once.
--
-- It has the local registry's calls (join, leave, users, query, is_online),
-- so dispatch.lua and the realtime presence topic use it unchanged.
local log = require "moonstream.log"

local M = {}
local Presence = {}
local mt = { __index = Presence }

M.CHANNEL = "ms:c:p"
M.HEARTBEAT_MS = 1000
M.DEAD_MS = 3000 -- a node silent this long is removed with its users
local NODES = "ms:p:nodes"
local function users_key(node) return "ms:p:n:" .. node end
local function alive_key(node) return "ms:p:alive:" .. node end

local function noop() end

-- parts: loop, commands (core.redis), id (this node's), registry (core.presence),
-- announce (function(user, joined): the realtime presence topic)
function M.new(parts)
  local self = setmetatable({
    CHANNEL = M.CHANNEL,
    loop = parts.loop, commands = parts.commands, id = parts.id, registry = parts.registry,
    announce = parts.announce,
    nodes = {},   -- node -> { user = true }
    online = {},  -- user -> number of nodes
    order = {},   -- users in the order they came online
    gone_fns = {}, -- on_node_gone's
  }, mt)
  self:_beat()
  return self
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
  local set = self.nodes[node]
  if not set then return end
  for user in pairs(set) do
    if self:_remove(node, user) then self.announce(user, false) end
  end
end

-- ---- the local registry's calls ----

function Presence:join(user)
  if not self.registry:join(user) then return false end
  self:_send({ "SADD", users_key(self.id), user })
  self:_send({ "PUBLISH", M.CHANNEL, "+ " .. self.id .. " " .. user })
  return self:_add(self.id, user)
end

function Presence:leave(user)
  local gone, err = self.registry:leave(user)
  if not gone then return gone, err end
  self:_send({ "SREM", users_key(self.id), user })
  self:_send({ "PUBLISH", M.CHANNEL, "- " .. self.id .. " " .. user })
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
  local kind, node, user = data:match("^([%+%-]) (%S+) (.+)$")
  if kind and node ~= self.id then
    if kind == "+" and self:_add(node, user) then self.announce(user, true) end
    if kind == "-" and self:_remove(node, user) then self.announce(user, false) end
    return
  end
  node = data:match("^x (%S+)$")
  if node and node ~= self.id then self:_gone(node) end
end

-- Learns another node's users (at start, and when a node is first seen alive).
function Presence:_load(node)
  self.commands:command({ "SMEMBERS", users_key(node) }, function(users)
    if type(users) ~= "table" then return end
    for _, user in ipairs(users) do
      if self:_add(node, user) then self.announce(user, true) end
    end
  end)
end

-- The heartbeat: this node is alive; every other node is checked.
function Presence:_beat()
  if self.closed then return end
  self:_send({ "SET", alive_key(self.id), "1", "PX", M.DEAD_MS })
  self:_send({ "SADD", NODES, self.id })
  self.commands:command({ "SMEMBERS", NODES }, function(nodes)
    if type(nodes) ~= "table" then return end
    for _, node in ipairs(nodes) do
      if node ~= self.id then
        self.commands:command({ "EXISTS", alive_key(node) }, function(alive)
          if alive == 0 then
            log.info("cluster presence: node %s stopped beating: removing its users", node)
            self:_send({ "DEL", users_key(node) })
            self:_send({ "SREM", NODES, node })
            self:_send({ "PUBLISH", M.CHANNEL, "x " .. node })
            self:_gone(node)
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
  self:_send({ "DEL", users_key(self.id) })
  for _, user in ipairs(self.registry:users()) do
    self:_send({ "SADD", users_key(self.id), user })
    self:_send({ "PUBLISH", M.CHANNEL, "+ " .. self.id .. " " .. user })
  end
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
