-- Realtime RPC: clients provide RPCs; a make from a client or from
-- POST /api goes to the Lua handler registered under that name when there is
-- one, else to a client provider chosen at random. A REJECT (or a provider
-- closing) moves the request on to a provider not tried yet, and when none is
-- left the requester gets NO_RPC_PROVIDER. rpc.ackTimeout bounds the wait for
-- ACCEPT (ACCEPT_TIMEOUT), rpc.responseTimeout the whole call
-- (RESPONSE_TIMEOUT); ACCEPT, RESPONSE and REQUEST_ERROR reach the requester
-- as the provider sent them.
local json = require "moonstream.json"
local log = require "moonstream.log"
local metrics = require "moonstream.metrics"
local registry = require "moonstream.realtime.registry"
local names = require "moonstream.realtime.names"

local T, A = names.T, names.A
local RPC, RA = T.RPC, A.RPC
local random = math.random

local M = {}
local RpcTopic = {}
local mt = { __index = RpcTopic }

local names_of = names.names_of

local function failure(event, message)
  return { success = false, error = message, errorTopic = "rpc", errorEvent = event }
end

local HTTP_ERRORS = {
  [RA.NO_RPC_PROVIDER] = function(name)
    return failure("NO_RPC_PROVIDER", "No provider was available to handle the RPC \"" .. name .. "\".")
  end,
  [RA.RESPONSE_TIMEOUT] = function()
    return failure("RESPONSE_TIMEOUT", "The RPC response timeout was exceeded by the provider.")
  end,
  [RA.ACCEPT_TIMEOUT] = function()
    return failure("ACCEPT_TIMEOUT", "The RPC accept timeout was exceeded by the provider.")
  end,
}

function M.new(rt)
  return setmetatable({
    rt = rt,
    providers = registry.new(), -- rpc name -> providing connections
    by_provider = {},           -- provider conn -> { [correlationId] = call }
    by_requester = {},          -- requester conn -> { [correlationId] = call }
    http_seq = 0,
  }, mt)
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

-- Ends a call: cancels its timers and forgets it.
function RpcTopic:_finish(call)
  if call.finished then return end
  call.finished = true
  if call.accept_timer then call.accept_timer:cancel(); call.accept_timer = nil end
  if call.response_timer then call.response_timer:cancel(); call.response_timer = nil end
  if call.provider then index_remove(self.by_provider, call.provider, call.id) end
  if call.requester then index_remove(self.by_requester, call.requester, call.id) end
end

-- Sends `action` (with optional payload text) to whoever made the call.
function RpcTopic:_reply(call, action, text)
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
  elseif HTTP_ERRORS[action] then
    done(HTTP_ERRORS[action](call.name))
  end
end

-- Offers the call to a provider not tried yet, or ends it with NO_RPC_PROVIDER.
function RpcTopic:_route(call)
  if call.provider then
    index_remove(self.by_provider, call.provider, call.id)
    call.provider = nil
  end
  if call.accept_timer then call.accept_timer:cancel(); call.accept_timer = nil end
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
  if #candidates == 0 then
    self:_reply(call, RA.NO_RPC_PROVIDER)
    return self:_finish(call)
  end
  local provider = candidates[random(#candidates)]
  call.tried[provider] = true
  call.provider = provider
  index_add(self.by_provider, provider, call.id, call)
  local rt = self.rt
  call.accept_timer = rt.loop:timer(rt.rpc_ack_timeout, function()
    call.accept_timer = nil
    if call.finished or call.accepted then return end
    self:_reply(call, RA.ACCEPT_TIMEOUT)
    self:_finish(call)
  end)
  provider:send({ topic = RPC, action = RA.REQUEST, name = call.name, correlationId = call.id, data = call.text })
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
  self:_route(call)
  return call
end

-- POST /api (rpc_handlers.lua's fallback when no Lua handler has the name): returns
-- false when no client provides it (rpc_handlers.lua answers NO_RPC_PROVIDER), else
-- nil and calls done(result) later.
function RpcTopic:make_from_server(name, data, done)
  if not self.providers:subscribers(name) then return false end
  local text
  if data ~= nil then
    local err
    text, err = json.encode(data)
    if not text then return failure("INVALID_MESSAGE_DATA", err) end
  end
  self.http_seq = self.http_seq + 1
  self:_start(name, "http-" .. self.http_seq, text, nil, done)
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
    call.accepted = false
    return self:_route(call)
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
        local ok, err = pcall(self._route, self, call)
        if not ok then log.error("rpc reroute failed: %s", tostring(err)) end
      end
    end
  end
end

return M
