-- RPC across nodes: which nodes provide an RPC name, and the node-addressed
-- messages that carry a call between the node that got the request and a
-- node whose clients provide the name.
--
--   "ms:rpc:p:<name>"  set of the node ids with a client providing name
--   "ms:rpc:n:<node>"  set of the names that node provides (so a node found
--                      dead is removed from every "ms:rpc:p:" set it was in)
--   messages to a node (cluster/nodes.lua, part "rpc"):
--                      { t = kind, f = sender, k = call key, ... }
--
-- The requester's node asks Redis for the providing nodes once per call and
-- offers the call to a local provider or to a node, one at a time; it keeps
-- the timers (realtime/rpc_topic.lua). A node is told only about calls for names
-- its clients provide. A node that stops gracefully removes its names at
-- once; one that dies is removed by the node that finds it dead
-- (cluster/presence.lua's heartbeats), and every node forgets its calls
-- there. After a Redis reconnection a node writes its names again.
local log = require "moonstream.log"
local subscribers = require "moonstream.subscribers"

local M = {}
local Rpc = {}
local mt = { __index = Rpc }

local function providers_key(name) return "ms:rpc:p:" .. name end
local function names_key(node) return "ms:rpc:n:" .. node end

M.CLOSE_SETTLE_MS = 1000

local function noop() end

-- cluster: cluster/init.lua's; nodes: cluster/nodes.lua's. The realtime RPC
-- topic, built after it, hears the calls' messages and the nodes gone
-- through subscribe.
function M.new(cluster, nodes)
  local self = setmetatable({
    commands = cluster.commands, id = cluster.id, nodes_channel = nodes,
    names = {}, -- names this node's clients provide
    messages = subscribers.new(), gone = subscribers.new(),
  }, mt)
  nodes:on("rpc", function(msg) self:_message(msg) end)
  cluster:on_reconnect(function() self:reregister() end)
  return self
end

-- on_message(msg) hears every call message from another node; on_gone(node)
-- every node found dead or stopped. Returns the function that ends both.
function Rpc:subscribe(on_message, on_gone)
  local stop_messages, stop_gone = self.messages:subscribe(on_message), self.gone:subscribe(on_gone)
  return function() stop_messages(); stop_gone() end
end

function Rpc:_send(args)
  local ok, err = self.commands:command(args, noop)
  if not ok then log.warn("cluster rpc: %s not sent: %s", args[1], err) end
end

-- This node's clients started (present) or stopped providing name.
function Rpc:providing(name, present)
  if present then
    self.names[name] = true
    self:_send({ "SADD", providers_key(name), self.id })
    self:_send({ "SADD", names_key(self.id), name })
  else
    self.names[name] = nil
    self:_send({ "SREM", providers_key(name), self.id })
    self:_send({ "SREM", names_key(self.id), name })
  end
end

-- cb(list of the other nodes providing name); Redis down: an empty list
-- (the call goes to local providers only).
function Rpc:nodes(name, cb)
  local ok = self.commands:command({ "SMEMBERS", providers_key(name) }, function(reply)
    local out = {}
    if type(reply) == "table" then
      for _, node in ipairs(reply) do
        if node ~= self.id then out[#out + 1] = node end
      end
    end
    cb(out)
  end)
  if not ok then cb({}) end
end

-- Sends msg (a table; f is set to this node) to node.
function Rpc:send(node, msg)
  return self.nodes_channel:send(node, "rpc", msg)
end

function Rpc:_message(msg)
  if type(msg.t) == "string" and math.type(msg.k) == "integer" then self.messages:publish(msg) end
end

-- A node found dead or stopped (cluster/presence.lua): it provides nothing
-- any more (every node that hears of it removes it; removing twice is harmless).
function Rpc:node_gone(node)
  if node == self.id then return end
  self.commands:command({ "SMEMBERS", names_key(node) }, function(names)
    if type(names) ~= "table" then return end
    for _, name in ipairs(names) do self:_send({ "SREM", providers_key(name), node }) end
    self:_send({ "DEL", names_key(node) })
  end)
  self.gone:publish(node)
end

-- After a reconnection: Redis may have lost this node's names, or another
-- node may have removed them while this one could not beat.
function Rpc:reregister()
  for name in pairs(self.names) do
    self:_send({ "SADD", providers_key(name), self.id })
    self:_send({ "SADD", names_key(self.id), name })
  end
end

-- A graceful stop: this node's names go at once.
function Rpc:close()
  if self.closed then return end
  self.closed = true
  for name in pairs(self.names) do self:_send({ "SREM", providers_key(name), self.id }) end
  self:_send({ "DEL", names_key(self.id) })
  if self.commands:waiting() > 0 then self.commands:settle(M.CLOSE_SETTLE_MS) end
end

return M
