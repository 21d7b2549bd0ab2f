-- Realtime presence: a login with a user id joins the server's
-- presence registry (refcounted: a user with two connections leaves when the
-- last one closes); SUBSCRIBE_ALL and per-user subscribers hear JOIN/LEAVE
-- (the *_ALL notice first); QUERY and QUERY_ALL answer from the registry,
-- which POST /api presence queries read too.
local json = require "moonstream.json"
local registry = require "moonstream.realtime.registry"
local names = require "moonstream.realtime.names"

local T, A = names.T, names.A
local PRESENCE, PA = T.PRESENCE, A.PRESENCE
local ALL = "" -- the registry name of SUBSCRIBE_ALL subscribers (user names are non-empty)

local M = {}
local Presence = {}
local mt = { __index = Presence }

local names_of = names.names_of

function M.new(rt)
  return setmetatable({ rt = rt, subs = registry.new() }, mt)
end

function Presence:_announce(id, all_action, one_action, except)
  local rt = self.rt
  rt:broadcast(self.subs:subscribers(ALL), { topic = PRESENCE, action = all_action, name = id }, except)
  rt:broadcast(self.subs:subscribers(id), { topic = PRESENCE, action = one_action, name = id }, except)
end

-- A user came online (joined) or went offline on another node (cluster mode).
function Presence:remote(id, joined)
  if joined then
    self:_announce(id, PA.PRESENCE_JOIN_ALL, PA.PRESENCE_JOIN, nil)
  else
    self:_announce(id, PA.PRESENCE_LEAVE_ALL, PA.PRESENCE_LEAVE, nil)
  end
end

-- c has just logged in.
function Presence:login(c)
  local id = c.user and c.user.id
  if type(id) ~= "string" or id == "" then return end
  c.presence_id = id
  if self.rt.presence:join(id) then
    self:_announce(id, PA.PRESENCE_JOIN_ALL, PA.PRESENCE_JOIN, c)
  end
end

function Presence:disconnect(c)
  self.subs:remove_conn(c)
  local id = c.presence_id
  if not id then return end
  c.presence_id = nil
  if self.rt.presence:leave(id) then
    self:_announce(id, PA.PRESENCE_LEAVE_ALL, PA.PRESENCE_LEAVE, c)
  end
end

local function deny(c, msg, name, denial)
  c:send({ topic = PRESENCE, action = denial, originalAction = msg.action, name = name,
    isError = true, correlationId = msg.correlationId })
end

function Presence:handle(c, msg)
  local rt, action, subs = self.rt, msg.action, self.subs
  if action == PA.SUBSCRIBE_ALL or action == PA.UNSUBSCRIBE_ALL then
    if action == PA.SUBSCRIBE_ALL then
      local ok, denial = rt:permit(c, "presence", "subscribe", nil, nil)
      if not ok then return deny(c, msg, nil, denial) end
      subs:add(ALL, c)
    else
      subs:remove(ALL, c)
    end
    return c:send({ topic = PRESENCE, action = action, isAck = true })
  elseif action == PA.SUBSCRIBE or action == PA.UNSUBSCRIBE then
    for _, name in ipairs(names_of(msg)) do
      if type(name) == "string" and name ~= "" then
        if action == PA.UNSUBSCRIBE then
          subs:remove(name, c)
        else
          local ok, denial = rt:permit(c, "presence", "subscribe", name, nil)
          if ok then subs:add(name, c) else deny(c, msg, name, denial) end
        end
      end
    end
    return c:send({ topic = PRESENCE, action = action, correlationId = msg.correlationId, isAck = true })
  elseif action == PA.QUERY_ALL then
    local ok, denial = rt:permit(c, "presence", "query", nil, nil)
    if not ok then return deny(c, msg, nil, denial) end
    local out, own = json.array(), c.presence_id
    for _, user in ipairs(rt.presence:users()) do
      if user ~= own then out[#out + 1] = user end
    end
    return c:send({ topic = PRESENCE, action = PA.QUERY_ALL_RESPONSE, names = out })
  elseif action == PA.QUERY then
    local ok, denial = rt:permit(c, "presence", "query", nil, nil)
    if not ok then return deny(c, msg, nil, denial) end
    local wanted = {}
    for _, name in ipairs(names_of(msg)) do
      if type(name) == "string" then wanted[#wanted + 1] = name end
    end
    local text = json.encode(rt.presence:query(wanted))
    return c:send({ topic = PRESENCE, action = PA.QUERY_RESPONSE, correlationId = msg.correlationId, data = text })
  end
end

return M
