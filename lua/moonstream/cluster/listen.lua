-- Listening (active providers) across nodes, for realtime/listen.lua: a
-- listener on one node is asked about subscriptions made on any node, and
-- one provider is chosen cluster-wide per name.
--
--   "ms:l:<kind>:n"          set of the nodes with a listener (kind: event, record)
--   "ms:l:<kind>:ns:<node>"  set of the names node's clients subscribe to
--   "ms:l:<kind>:o:<name>"   the claim: the node that searches for (then
--                            provides) name; SET NX, so one node at a time
--   messages to a node (cluster/nodes.lua, part "listen"): { v, k = kind, f = sender, n = name }
--
-- A node whose clients start (stop) subscribing to a name tells every
-- listening node ("sub", "unsub"); a listening node joining reads the
-- "ns" sets. The claim's owner tells the subscribing nodes when the name
-- gains or loses its provider ("has", "hasnot"), and after a search that
-- found nobody releases the claim and hands the name on to the listening
-- nodes not tried yet ("retry", with the tried ones). A dead node
-- (cluster/presence.lua) loses its claims, subscriptions and listeners on
-- every node; a stopped one removes them itself; after a Redis
-- reconnection a node writes its part again, tells the listening nodes
-- the whole list of its names ("subs"), asks the nodes it knew of for
-- theirs ("subs?"), and gives up a claim another node took meanwhile.
local log = require "moonstream.log"

local M = {}
local Listen = {}
local mt = { __index = Listen }

M.CLOSE_SETTLE_MS = 1000
M.SCAN_COUNT = 500

local function nodes_key(kind) return "ms:l:" .. kind .. ":n" end
local function names_key(kind, node) return "ms:l:" .. kind .. ":ns:" .. node end
local function claim_key(kind, name) return "ms:l:" .. kind .. ":o:" .. name end

-- Deletes the claim only when `owner` holds it.
local RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

local function noop() end

-- cluster: cluster/init.lua's; nodes: cluster/nodes.lua's; topics: { event =
-- listen, record = listen } (realtime/listen.lua instances; each gets its
-- face by attach_cluster).
function M.new(cluster, nodes, topics)
  local self = setmetatable({ commands = cluster.commands, id = cluster.id, nodes = nodes, topics = topics }, mt)
  for kind, listen in pairs(topics) do
    listen:attach_cluster({
      subscribed = function(_, name, present) self:subscribed(kind, name, present) end,
      listening = function(_, present) self:listening(kind, present) end,
      claim = function(_, name, cb) self:claim(kind, name, cb) end,
      release = function(_, name) self:release(kind, name, self.id) end,
      hand_on = function(_, name, tried) self:hand_on(kind, name, tried) end,
      tell = function(_, name, has, node) self:tell(kind, name, has, node) end,
    })
  end
  nodes:on("listen", function(msg) self:_message(msg) end)
  cluster:on_reconnect(function() self:reregister() end)
  return self
end

function Listen:_send(args, cb)
  local ok, err = self.commands:command(args, cb or noop)
  if not ok then log.warn("cluster listen: %s not sent: %s", args[1], err) end
  return ok
end

function Listen:_publish(node, msg)
  self.nodes:send(node, "listen", msg)
end

-- fn(node) for every other listening node of kind.
function Listen:_each_listener(kind, fn)
  self:_send({ "SMEMBERS", nodes_key(kind) }, function(nodes)
    if type(nodes) ~= "table" then return end
    for _, node in ipairs(nodes) do
      if node ~= self.id then fn(node) end
    end
  end)
end

-- This node's clients started (present) or stopped subscribing to name.
function Listen:subscribed(kind, name, present)
  self:_send({ present and "SADD" or "SREM", names_key(kind, self.id), name })
  local msg = { v = present and "sub" or "unsub", k = kind, n = name }
  self:_each_listener(kind, function(node) self:_publish(node, msg) end)
end

-- This node's clients started (present) or stopped listening on kind.
function Listen:listening(kind, present)
  if not present then return self:_send({ "SREM", nodes_key(kind), self.id }) end
  self:_send({ "SADD", nodes_key(kind), self.id })
  self:_scan(kind, "0")
end

-- Learns what the other nodes subscribe to (one SCAN step per reply).
function Listen:_scan(kind, cursor)
  local prefix = names_key(kind, "")
  local pattern = prefix:gsub("[%*%?%[%]\\]", "\\%0") .. "*"
  self:_send({ "SCAN", cursor, "MATCH", pattern, "COUNT", M.SCAN_COUNT }, function(reply)
    if type(reply) ~= "table" then return end
    for _, key in ipairs(reply[2] or {}) do
      local node = key:sub(#prefix + 1)
      if node ~= self.id then
        self:_send({ "SMEMBERS", key }, function(names)
          if type(names) ~= "table" then return end
          for _, name in ipairs(names) do self.topics[kind]:remote_subscribed(name, node, true) end
        end)
      end
    end
    if reply[1] ~= "0" then self:_scan(kind, reply[1]) end
  end)
end

-- cb(true) when this node now holds name's claim.
function Listen:claim(kind, name, cb)
  if not self:_send({ "SET", claim_key(kind, name), self.id, "NX" }, function(reply) cb(reply == "OK") end) then
    cb(false)
  end
end

function Listen:release(kind, name, owner, cb)
  self:_send({ "EVAL", RELEASE, "1", claim_key(kind, name), owner }, cb)
end

-- A search here found nobody: the next listening nodes try.
function Listen:hand_on(kind, name, tried)
  self:release(kind, name, self.id)
  local list, seen = {}, { [self.id] = true }
  for _, node in ipairs(tried) do
    if type(node) == "string" then list[#list + 1] = node; seen[node] = true end
  end
  list[#list + 1] = self.id
  self:_each_listener(kind, function(node)
    if not seen[node] then self:_publish(node, { v = "retry", k = kind, n = name, tried = list }) end
  end)
end

-- This node's listener provides name (has) or stopped: the subscribing
-- nodes (or only `node`) hear it.
function Listen:tell(kind, name, has, node)
  local msg = { v = has and "has" or "hasnot", k = kind, n = name }
  if node then return self:_publish(node, msg) end
  for other in pairs(self.topics[kind].remote[name] or {}) do self:_publish(other, msg) end
end

function Listen:_message(msg)
  if type(msg.n) ~= "string" then return end
  local listen = self.topics[msg.k]
  if not listen then return end
  local v = msg.v
  if v == "sub" or v == "unsub" then return listen:remote_subscribed(msg.n, msg.f, v == "sub") end
  if v == "has" or v == "hasnot" then return listen:remote_provided(msg.n, v == "has", msg.f) end
  if v == "retry" and type(msg.tried) == "table" then return listen:handed_on(msg.n, msg.tried) end
  if type(msg.f) ~= "string" then return end
  if v == "subs" and type(msg.names) == "table" then return self:_subs_of(msg.k, msg.f, msg.names) end
  if v == "subs?" then return self:_tell_subs(msg.k, msg.f, (listen:cluster_state())) end
end

-- Node `node` subscribes to `names` and nothing else (its reconnection).
function Listen:_subs_of(kind, node, names)
  local listen = self.topics[kind]
  local now = {}
  for _, name in ipairs(names) do if type(name) == "string" then now[name] = true end end
  local gone = {}
  for name, set in pairs(listen.remote) do
    if set[node] and not now[name] then gone[#gone + 1] = name end
  end
  for _, name in ipairs(gone) do listen:remote_subscribed(name, node, false) end
  for name in pairs(now) do listen:remote_subscribed(name, node, true) end
end

-- A node found dead or stopped (cluster/presence.lua): what it subscribed
-- to, listened on and claimed goes; its names are searched for again.
function Listen:node_gone(node)
  if node == self.id then return end
  for kind, listen in pairs(self.topics) do
    self:_send({ "SREM", nodes_key(kind), node })
    self:_send({ "DEL", names_key(kind, node) })
    listen:node_gone(node)
    for _, name in ipairs(listen:_subscribed_names()) do
      self:release(kind, name, node, function() listen:search(name) end)
    end
  end
end

-- After a reconnection: Redis may have lost this node's part, or another
-- node may have removed it as dead, or kept what this node said before
-- (an unsubscription sent while Redis was down is lost). So this node's
-- names set is written anew (and the listening nodes hear the whole list),
-- its claims are taken again unless another node took one meanwhile (then
-- its provider here stops: one provider per name), and a listening node
-- reads every node's set again (_scan).
function Listen:reregister()
  for kind, listen in pairs(self.topics) do
    local subscribed, provided, listening = listen:cluster_state()
    if listening then self:_send({ "SADD", nodes_key(kind), self.id }) end
    for _, name in ipairs(provided) do self:_retake(kind, name) end
    self:_rewrite_names(kind, subscribed)
    if listening then
      self:_scan(kind, "0")
      -- the nodes this one knew of say again what they subscribe to: an
      -- "unsub" sent while this node's connection was down is lost, and a
      -- set read from a Redis that restarted empty says nothing yet
      local asked = {}
      for _, set in pairs(listen.remote) do
        for node in pairs(set) do
          if not asked[node] then asked[node] = true; self:_publish(node, { v = "subs?", k = kind, n = "" }) end
        end
      end
    end
  end
end

-- The claim's holder: this node when it was free (or its own already).
local RETAKE = "local h = redis.call('GET', KEYS[1]) if h then return h end"
  .. " redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]"

function Listen:_retake(kind, name)
  self:_send({ "EVAL", RETAKE, "1", claim_key(kind, name), self.id }, function(holder)
    if type(holder) == "string" and holder ~= self.id then
      log.info("cluster listen: %s '%s' is provided by node %s now; its provider here stops", kind, name, holder)
      self.topics[kind]:claim_lost(name)
    end
  end)
end

-- This node's names set is `names`, and the listening nodes hear so ("subs").
function Listen:_rewrite_names(kind, names)
  local key = names_key(kind, self.id)
  self:_send({ "MULTI" })
  self:_send({ "DEL", key })
  if #names > 0 then self:_send(table.move(names, 1, #names, 3, { "SADD", key })) end
  self:_send({ "EXEC" })
  self:_each_listener(kind, function(node) self:_tell_subs(kind, node, names) end)
end

function Listen:_tell_subs(kind, node, names)
  self:_publish(node, { v = "subs", k = kind, n = "", names = names })
end

-- A graceful stop: this node's part goes at once.
function Listen:close()
  if self.closed then return end
  self.closed = true
  for kind, listen in pairs(self.topics) do
    local _, provided = listen:cluster_state()
    for _, name in ipairs(provided) do self:release(kind, name, self.id) end
    self:_send({ "SREM", nodes_key(kind), self.id })
    self:_send({ "DEL", names_key(kind, self.id) })
  end
  if self.commands:waiting() > 0 then self.commands:settle(M.CLOSE_SETTLE_MS) end
end

return M
