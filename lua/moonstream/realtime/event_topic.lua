-- Realtime events: bulk subscribe/unsubscribe, emit to every
-- subscriber but the sender, listen (listen.lua), and emits from POST /api or
-- Lua code reaching WebSocket subscribers. Lua listeners (events.listeners)
-- hear client emits too.
local json = require "moonstream.json"
local registry = require "moonstream.realtime.registry"
local listen = require "moonstream.realtime.listen"
local names = require "moonstream.realtime.names"

local T, A = names.T, names.A
local EVENT, EA = T.EVENT, A.EVENT

local M = {}
local EventTopic = {}
local mt = { __index = EventTopic }

function M.new(rt)
  local cluster = rt.cluster
  local self = setmetatable({ rt = rt, subs = registry.new(rt.events_used, cluster and function(name, present)
    cluster.interest("event", name, present)
  end) }, mt)
  self.listen = listen.new(rt, EVENT, EA, self.subs, "event")
  return self
end

local function deny(c, msg, name, correlation, denial)
  c:send({ topic = EVENT, action = denial, originalAction = msg.action, name = name,
    isError = true, correlationId = correlation })
end

local names_of = names.names_of

function EventTopic:subscribe(c, msg)
  local rt, subs, listener = self.rt, self.subs, self.listen
  local any = false
  for _, name in ipairs(names_of(msg)) do
    if type(name) == "string" and name ~= "" then
      local ok, denial = rt:permit(c, "event", "subscribe", name, nil)
      if not ok then
        deny(c, msg, name, msg.correlationId, denial)
      else
        any = true
        local added, first = subs:add(name, c)
        if not added then
          c:send({ topic = EVENT, action = EA.MULTIPLE_SUBSCRIPTIONS, originalAction = msg.action, name = name })
        else
          listener:subscribed(name, c, first)
        end
      end
    end
  end
  if any then c:send({ topic = EVENT, action = msg.action, correlationId = msg.correlationId, isAck = true }) end
end

function EventTopic:unsubscribe(c, msg)
  local subs, listener = self.subs, self.listen
  for _, name in ipairs(names_of(msg)) do
    local removed, last = subs:remove(name, c)
    if removed and last then listener:unsubscribed(name) end
  end
  c:send({ topic = EVENT, action = msg.action, correlationId = msg.correlationId, isAck = true })
end

-- Delivers an event to the WebSocket subscribers (except `except`). text: the
-- payload as JSON text or nil. (Lua listeners hear emits through
-- dispatch.lua's emit; value and from are not used here.)
function EventTopic:deliver(name, text, value, from, except)
  self.rt:broadcast(self.subs:subscribers(name), { topic = EVENT, action = EA.EMIT, name = name, data = text }, except)
end

function EventTopic:emit(c, msg)
  local rt, name = self.rt, msg.name
  if type(name) ~= "string" or name == "" then return end
  local valid, value, text = rt.payload(msg)
  if not valid then
    return c:send({ topic = EVENT, action = EA.INVALID_MESSAGE_DATA, originalAction = msg.action, name = name })
  end
  local ok, denial = rt:permit(c, "event", "emit", name, { data = value })
  if not ok then return deny(c, msg, name, nil, denial) end
  self:deliver(name, text, value, c, c)
  if rt.cluster then rt.cluster.publish_event(name, text, c.user) end
  if rt.listeners then
    rt.listeners:emit(name, value, { user = c.user })
  end
end

-- An emit from POST /api (or a Lua handler's ctx.emit): every subscriber.
function EventTopic:emit_from_server(name, data)
  -- most HTTP emits have no WebSocket subscriber: skip encoding for nobody
  if self.subs:subscribers(name) == nil then return true end
  local text
  if data ~= nil then
    local err
    text, err = json.encode(data)
    if not text then return nil, err end
  end
  self:deliver(name, text, data, nil, nil)
  return true
end

function EventTopic:handle(c, msg)
  local action = msg.action
  if action == EA.EMIT then return self:emit(c, msg)
  elseif action == EA.SUBSCRIBE then return self:subscribe(c, msg)
  elseif action == EA.UNSUBSCRIBE then return self:unsubscribe(c, msg)
  end
  return self.listen:handle(c, msg)
end

function EventTopic:disconnect(c)
  self.listen:connection_closed(self.subs, c)
end

return M
