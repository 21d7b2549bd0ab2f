-- Messages addressed to one node: each node SUBSCRIBEs to its own channel
-- "ms:c:n:<node id>" on one subscriber connection, and the parts that talk
-- to a given node (cluster/rpc.lua, cluster/listen.lua) send JSON objects
-- there: { p = part, f = sender, ... }. Only the node concerned hears a message.
local core = require "moonstream.core"
local json = require "moonstream.json"
local log = require "moonstream.log"

local M = {}
local Nodes = {}
local mt = { __index = Nodes }

M.CHANNEL_PREFIX = "ms:c:n:"

local function noop() end

-- cluster: cluster/init.lua's (commands, id, subscriber)
function M.new(cluster)
  local self = setmetatable({ cluster = cluster, commands = cluster.commands, id = cluster.id, parts = {} }, mt)
  self.sub = cluster:subscriber(function(_, data) self:_message(data) end)
  self.sub:subscribe(M.CHANNEL_PREFIX .. self.id)
  return self
end

-- handler(msg) for the messages of `part` from the other nodes (msg.f: the sender).
function Nodes:on(part, handler)
  self.parts[part] = handler
end

-- Sends msg (a table; p and f are set) to node. Returns whether it went out.
function Nodes:send(node, part, msg)
  msg.p, msg.f = part, self.id
  local ok, err = self.commands:command({ "PUBLISH", M.CHANNEL_PREFIX .. node, json.encode(msg) }, noop)
  if not ok then log.warn("cluster: %s message to node %s not sent: %s", part, node, err) end
  return ok
end

function Nodes:_message(data)
  local msg = json.decode(data)
  if type(msg) ~= "table" or type(msg.f) ~= "string" or msg.f == self.id then return end
  local handler = self.parts[msg.p]
  if handler then handler(msg) end
end

-- Runs the loop until the subscriber is up, at most max_ms (messages sent
-- to this node before then are lost; the senders' timeouts cover them).
function Nodes:wait_ready(max_ms)
  local deadline = core.now() + max_ms
  while not self.sub:up() do
    if core.now() >= deadline then return false end
    self.cluster.loop:run_once(10)
  end
  return true
end

function Nodes:close()
  self.sub:close()
end

return M
