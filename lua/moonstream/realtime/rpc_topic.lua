-- Realtime RPC: clients provide RPCs; a make from a client or from
-- POST /api goes to the Lua handler registered under that name when there is
-- one, else to a client provider chosen at random. A REJECT (or a provider
-- closing) moves the request on to a provider not tried yet, and when none is
-- left the requester gets NO_RPC_PROVIDER. rpc.ackTimeout bounds the wait for
-- ACCEPT (ACCEPT_TIMEOUT), rpc.responseTimeout the whole call
-- (RESPONSE_TIMEOUT); ACCEPT, RESPONSE and REQUEST_ERROR reach the requester
-- as the provider sent them.
--
-- In a cluster (rt.cluster_rpc: cluster/rpc.lua) the candidates are this
-- node's providers and the other nodes that have one; a node counts as one
-- candidate and is asked again after each of its providers rejects, until
-- it answers that none of its providers is left untried. The requester's
-- node keeps both timers; the provider's node keeps only the provider's
-- side of the call (a "remote" call), forgotten after rpc.responseTimeout.
local json = require "moonstream.json"
local log = require "moonstream.log"
local metrics = require "moonstream.metrics"
local rpc_results = require "moonstream.rpc_handlers"
local registry = require "moonstream.realtime.registry"
local names = require "moonstream.realtime.names"

local T, A = names.T, names.A
local RPC, RA = T.RPC, A.RPC
local random = math.random

local M = {}
local RpcTopic = {}
local mt = { __index = RpcTopic }

local names_of = names.names_of
local failure, failed = rpc_results.failure, rpc_results.failed

-- What POST /api gets for the actions that end a call without the provider's data.
local HTTP_FAILURES = {
  [RA.NO_RPC_PROVIDER] = "NO_RPC_PROVIDER",
  [RA.RESPONSE_TIMEOUT] = "RESPONSE_TIMEOUT",
  [RA.ACCEPT_TIMEOUT] = "ACCEPT_TIMEOUT",
}

-- The provider's answers as they travel between nodes (cluster/rpc.lua).
local TO_NODE = { [RA.ACCEPT] = "acc", [RA.RESPONSE] = "res", [RA.REQUEST_ERROR] = "err" }
local FROM_NODE = { res = RA.RESPONSE, err = RA.REQUEST_ERROR }

function M.new(rt)
  local self
  self = setmetatable({
    rt = rt,
    -- rpc name -> providing connections; the cluster hears of the first and the last
    providers = registry.new(nil, function(name, present)
      if self.cluster then self.cluster:providing(name, present) end
    end),
    by_provider = {},           -- provider conn -> { [correlationId] = call }
    by_requester = {},          -- requester conn -> { [correlationId] = call }
    by_key = {},                -- cluster: call key -> call made here
    remote = {},                -- cluster: "<node>|<key>" -> call made on that node
    http_seq = 0,
    key_seq = 0,
  }, mt)
  if rt.rpc_providers then rt.rpc_providers:register(self) end -- POST /api's calls no Lua handler takes
  -- cluster: cluster/rpc.lua (providing, nodes, send), built before
  self.cluster = rt.cluster_rpc
  if self.cluster then
    self.cluster:subscribe(function(msg) self:from_node(msg) end, function(node) self:node_gone(node) end)
  end
  return self
end

local function index_add(index, c, id, call)
  local t = index[c]
  if not t then t = {}; index[c] = t end
  t[id] = call
end

local function index_remove(index, c, id)
  local t = index[c]
  if not t then return end
  t[id] = nil
  if next(t) == nil then index[c] = nil end
end

-- Ends a call: cancels its timers and forgets it; a node still holding it
-- is told (it drops it).
function RpcTopic:_finish(call)
  if call.finished then return end
  call.finished = true
  if call.accept_timer then call.accept_timer:cancel(); call.accept_timer = nil end
  if call.response_timer then call.response_timer:cancel(); call.response_timer = nil end
  if call.provider then index_remove(self.by_provider, call.provider, call.id) end
  if call.requester then index_remove(self.by_requester, call.requester, call.id) end
  if call.key then self.by_key[call.key] = nil end
  if call.remote then self.remote[call.remote] = nil end
  if call.at_node then self.cluster:send(call.at_node, { t = "end", k = call.key }) end
end

-- Sends `action` (with optional payload text) to whoever made the call.
function RpcTopic:_reply(call, action, text)
  if call.remote then
    local t = TO_NODE[action]
    if t then self.cluster:send(call.from, { t = t, k = call.from_key, d = text }) end
    return
  end
  local requester = call.requester
  if requester then
    metrics.rpc(action) -- a client's call to a client provider (HTTP calls count in rpc_handlers.lua)
    if requester.open then
      requester:send({ topic = RPC, action = action, name = call.name, correlationId = call.id, data = text })
    end
    return
  end
  local done = call.done
  if not done then return end
  if action == RA.RESPONSE then
    done(text and { success = true, data = json.raw(text) } or { success = true })
  elseif action == RA.REQUEST_ERROR then
    local ok, v = pcall(json.decode, text or "")
    local message = ok and type(v) == "string" and v or text or "RPC error"
    done(failure("RPC_ERROR", message))
  elseif HTTP_FAILURES[action] then
    done(failed(HTTP_FAILURES[action], call.name))
  end
end

-- Lets go of the provider (or node) the call was offered to.
function RpcTopic:_release(call)
  if call.provider then
    index_remove(self.by_provider, call.provider, call.id)
    call.provider = nil
  end
  call.at_node = nil
  if call.accept_timer then call.accept_timer:cancel(); call.accept_timer = nil end
end

-- This node's providers of the call's name not tried yet.
function RpcTopic:_local_candidates(call)
  local candidates = {}
  local set = self.providers:subscribers(call.name)
  if set then
    for c in pairs(set) do
      if not call.tried[c] and c.open then
        local busy = self.by_provider[c]
        if not (busy and busy[call.id]) then candidates[#candidates + 1] = c end
      end
    end
  end
  return candidates
end

-- Offers the call to provider c.
function RpcTopic:_offer(call, provider)
  call.tried[provider] = true
  call.provider = provider
  index_add(self.by_provider, provider, call.id, call)
  provider:send({ topic = RPC, action = RA.REQUEST, name = call.name, correlationId = call.id, data = call.text })
end

-- Offers the call to a provider (or node) not tried yet, or ends it with
-- NO_RPC_PROVIDER (a remote call: tells its node none is left here).
function RpcTopic:_route(call)
  self:_release(call)
  local candidates = self:_local_candidates(call)
  if call.remote then
    if #candidates == 0 then
      self.cluster:send(call.from, { t = "none", k = call.from_key })
      return self:_finish(call)
    end
    return self:_offer(call, candidates[random(#candidates)])
  end
  for _, node in ipairs(call.nodes or {}) do
    if not call.exhausted[node] then candidates[#candidates + 1] = node end
  end
  if #candidates == 0 then
    self:_reply(call, RA.NO_RPC_PROVIDER)
    return self:_finish(call)
  end
  local pick = candidates[random(#candidates)]
  local rt = self.rt
  call.accept_timer = rt.loop:timer(rt.rpc_ack_timeout, function()
    call.accept_timer = nil
    if call.finished or call.accepted then return end
    self:_reply(call, RA.ACCEPT_TIMEOUT)
    self:_finish(call)
  end)
  if type(pick) == "string" then
    call.at_node = pick
    if not self.cluster:send(pick, { t = "req", k = call.key, i = call.id, n = call.name, d = call.text }) then
      call.exhausted[pick] = true
      return self:_route(call)
    end
  else
    self:_offer(call, pick)
  end
end

-- The provider the call was offered to rejected it (or closed).
function RpcTopic:_rejected(call)
  call.accepted = false
  if call.remote then
    self:_release(call)
    return self.cluster:send(call.from, { t = "rej", k = call.from_key })
  end
  return self:_route(call)
end

-- Starts a call to client providers. requester: a connection, or nil with
-- done(result) for POST /api.
function RpcTopic:_start(name, id, text, requester, done)
  local rt = self.rt
  local call = { name = name, id = id, text = text, requester = requester, done = done, tried = {} }
  if requester then index_add(self.by_requester, requester, id, call) end
  call.response_timer = rt.loop:timer(rt.rpc_response_timeout, function()
    call.response_timer = nil
    if call.finished then return end
    self:_reply(call, RA.RESPONSE_TIMEOUT)
    self:_finish(call)
  end)
  local cluster = self.cluster
  if not cluster then
    self:_route(call)
    return call
  end
  self.key_seq = self.key_seq + 1
  call.key, call.exhausted = self.key_seq, {}
  self.by_key[call.key] = call
  cluster:nodes(name, function(nodes)
    if call.finished then return end
    call.nodes = nodes
    self:_route(call)
  end)
  return call
end

-- ---- between nodes (cluster/rpc.lua) ----

-- A call made on another node, for this node's providers.
function RpcTopic:_remote_request(msg)
  local from_key = msg.f .. "|" .. msg.k
  local call = self.remote[from_key]
  if not call then
    if type(msg.n) ~= "string" or type(msg.i) ~= "string" then return end
    if msg.d ~= nil and type(msg.d) ~= "string" then return end
    call = { name = msg.n, id = msg.i, text = msg.d, from = msg.f, from_key = msg.k, remote = from_key, tried = {} }
    self.remote[from_key] = call
    -- the requester's node ends the call; this is only in case it never says so
    call.response_timer = self.rt.loop:timer(self.rt.rpc_response_timeout, function()
      call.response_timer = nil
      self:_finish(call)
    end)
  end
  self:_route(call)
end

-- What another node's provider did with a call made here.
function RpcTopic:_remote_answer(msg)
  local call = self.by_key[msg.k]
  if not call or call.finished or call.at_node ~= msg.f then return end
  local t = msg.t
  if t == "acc" then
    if call.accepted then return end
    call.accepted = true
    if call.accept_timer then call.accept_timer:cancel(); call.accept_timer = nil end
    return self:_reply(call, RA.ACCEPT)
  elseif t == "rej" then
    call.accepted = false
    return self:_route(call)
  elseif t == "none" then
    call.exhausted[msg.f] = true
    return self:_route(call)
  elseif FROM_NODE[t] then
    if msg.d ~= nil and type(msg.d) ~= "string" then return end
    call.at_node = nil -- it has forgotten the call already
    self:_reply(call, FROM_NODE[t], msg.d)
    return self:_finish(call)
  end
end

-- A message from another node: msg.t the kind, msg.f the sender, msg.k the call key.
function RpcTopic:from_node(msg)
  local t = msg.t
  if t == "req" then return self:_remote_request(msg) end
  if t == "end" then
    local call = self.remote[msg.f .. "|" .. msg.k]
    if call then self:_finish(call) end
    return
  end
  return self:_remote_answer(msg)
end

-- A node stopped or died: the calls it held go on elsewhere, its calls here end.
function RpcTopic:node_gone(node)
  local moving = {}
  for _, call in pairs(self.by_key) do
    call.exhausted[node] = true
    if call.at_node == node then moving[#moving + 1] = call end
  end
  for _, call in ipairs(moving) do
    call.at_node = nil
    if not call.finished then self:_route(call) end
  end
  local ending = {}
  for _, call in pairs(self.remote) do
    if call.from == node then ending[#ending + 1] = call end
  end
  for _, call in ipairs(ending) do self:_finish(call) end
end

-- POST /api (through rpc_providers.lua when no Lua handler has the name): returns
-- false when no client provides it (rpc_handlers.lua answers NO_RPC_PROVIDER), else
-- nil and calls done(result) later. In a cluster another node may provide
-- it: Redis is asked first.
function RpcTopic:make_from_server(name, data, done)
  if not self.providers:subscribers(name) and not self.cluster then return false end
  local text
  if data ~= nil then
    local err
    text, err = json.encode(data)
    if not text then return failure("INVALID_MESSAGE_DATA", err) end
  end
  self.http_seq = self.http_seq + 1
  -- the id a provider sees: unique among the calls this node makes (and, with the node's id, the cluster's)
  local id = "http-" .. (self.cluster and self.cluster.id .. "-" or "") .. self.http_seq
  self:_start(name, id, text, nil, done)
  return nil
end

-- A client's REQUEST: a Lua handler first, else client providers.
function RpcTopic:request(c, msg)
  local rt, name, id = self.rt, msg.name, msg.correlationId
  if type(name) ~= "string" or name == "" or type(id) ~= "string" then return end
  local valid, value, text = rt.payload(msg)
  if not valid then
    return c:send({ topic = RPC, action = RA.INVALID_MESSAGE_DATA, originalAction = msg.action, name = name,
      correlationId = id })
  end
  local allowed, denial = rt:permit(c, "rpc", "make", name, { data = value })
  if not allowed then
    return c:send({ topic = RPC, action = denial, originalAction = msg.action, name = name,
      isError = true, correlationId = id })
  end
  local mine = self.by_requester[c]
  if mine and mine[id] then
    return c:send({ topic = RPC, action = RA.INVALID_RPC_CORRELATION_ID, originalAction = msg.action,
      name = name, correlationId = id, isError = true })
  end
  local handlers = rt.handlers
  if handlers and handlers:has(name) then
    local function answer(result)
      if not c.open then return end
      if result.success then
        local out = result.data ~= nil and json.encode(result.data) or nil
        c:send({ topic = RPC, action = RA.RESPONSE, name = name, correlationId = id, data = out })
      elseif result.errorEvent == "RESPONSE_TIMEOUT" then
        c:send({ topic = RPC, action = RA.RESPONSE_TIMEOUT, name = name, correlationId = id })
      else
        c:send({ topic = RPC, action = RA.REQUEST_ERROR, name = name, correlationId = id,
          data = json.encode(result.error or "RPC error") })
      end
    end
    local result = handlers:make(name, value, { user = c.user }, answer)
    if result then answer(result) end
    return
  end
  self:_start(name, id, text, c, nil)
end

-- ACCEPT, REJECT, RESPONSE, REQUEST_ERROR from a provider.
function RpcTopic:from_provider(c, msg)
  local id, action = msg.correlationId, msg.action
  local mine = self.by_provider[c]
  local call = type(id) == "string" and mine and mine[id]
  if not call then
    return c:send({ topic = RPC, action = RA.INVALID_RPC_CORRELATION_ID, originalAction = action,
      name = msg.name, correlationId = id, isError = true })
  end
  if action == RA.ACCEPT then
    if call.accepted then
      return c:send({ topic = RPC, action = RA.MULTIPLE_ACCEPT, name = call.name, correlationId = id })
    end
    call.accepted = true
    if call.accept_timer then call.accept_timer:cancel(); call.accept_timer = nil end
    return self:_reply(call, RA.ACCEPT)
  elseif action == RA.REJECT then
    return self:_rejected(call)
  end
  -- RESPONSE or REQUEST_ERROR
  local _, _, text = self.rt.payload(msg)
  self:_reply(call, action, text)
  self:_finish(call)
end

function RpcTopic:provide(c, msg)
  local rt, any = self.rt, false
  for _, name in ipairs(names_of(msg)) do
    if type(name) == "string" and name ~= "" then
      if msg.action == RA.UNPROVIDE then
        self.providers:remove(name, c)
        any = true
      else
        local allowed, denial = rt:permit(c, "rpc", "provide", name, nil)
        if allowed then
          self.providers:add(name, c)
          any = true
        else
          c:send({ topic = RPC, action = denial, originalAction = msg.action, name = name,
            isError = true, correlationId = msg.correlationId })
        end
      end
    end
  end
  if any or msg.action == RA.UNPROVIDE then
    c:send({ topic = RPC, action = msg.action, correlationId = msg.correlationId, isAck = true })
  end
end

function RpcTopic:handle(c, msg)
  local action = msg.action
  if action == RA.REQUEST then return self:request(c, msg)
  elseif action == RA.PROVIDE or action == RA.UNPROVIDE then return self:provide(c, msg)
  elseif action == RA.ACCEPT or action == RA.REJECT or action == RA.RESPONSE or action == RA.REQUEST_ERROR then
    return self:from_provider(c, msg)
  end
end

-- A closing provider counts as a REJECT for its calls; a closing requester's
-- calls run on, their answers dropped.
function RpcTopic:disconnect(c)
  self.providers:remove_conn(c)
  local mine = self.by_requester[c]
  self.by_requester[c] = nil
  if mine then
    for _, call in pairs(mine) do call.requester = nil; call.dropped = true end
  end
  local serving = self.by_provider[c]
  self.by_provider[c] = nil
  if serving then
    for _, call in pairs(serving) do
      call.provider = nil
      if not call.finished then
        local ok, err = pcall(self._rejected, self, call)
        if not ok then log.error("rpc reroute failed: %s", tostring(err)) end
      end
    end
  end
end

return M
