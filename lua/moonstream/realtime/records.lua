-- Realtime records (spec §7): subscribe-create-read, update/patch/erase with
-- versions, write acknowledgements, snapshot/has/head, delete, discard.
--
-- Writes go through records.lua's cmd_write/cmd_delete, the same storage and
-- version rules as POST /api. Subscribers learn about every change from
-- records.lua's change hook (on_change), whoever made it: a client's write is
-- forwarded as the client sent it (UPDATE or PATCH, to every subscriber but
-- the writer), any other write (HTTP, Lua handler) as a full UPDATE.
local json = require "moonstream.json"
local registry = require "moonstream.realtime.registry"
local listen = require "moonstream.realtime.listen"
local names = require "moonstream.realtime.names"

local encode = json.encode
local type, math_type = type, math.type

local T, A = names.T, names.A
local RECORD, RA = T.RECORD, A.RECORD

local M = {}
local Records = {}
local mt = { __index = Records }

local names_of = names.names_of

function M.new(rt)
  local self = setmetatable({ rt = rt, subs = registry.new(), writing = nil }, mt)
  self.listen = listen.new(rt, RECORD, RA, self.subs, "record")
  return self
end

-- Installs the change hook on the store (called by the server once the
-- store is open).
function Records:attach(store_records)
  self.store = store_records
  store_records.on_change = function(name, version, text) self:changed(name, version, text) end
end

local function error_reply(msg, action, name, is_error)
  local r = { topic = RECORD, action = action, originalAction = msg.action, name = name, isError = is_error or nil }
  if msg.isWriteAck then
    r.isWriteAck = true
    r.correlationId = msg.correlationId
  elseif msg.correlationId ~= nil and (msg.action == RA.SUBSCRIBECREATEANDREAD) then
    r.correlationId = msg.correlationId
  end
  return r
end

-- A record changed in the store (version nil: deleted).
function Records:changed(name, version, text)
  local rt, w = self.rt, self.writing
  local from = w and w.name == name and w.c or nil
  if version == nil then
    local set = self.subs:remove_name(name)
    if set then
      rt:broadcast(set, { topic = RECORD, action = RA.DELETED, name = name }, from)
      self.listen:unsubscribed(name)
    end
    return
  end
  local set = self.subs:subscribers(name)
  if not set then return end
  local out
  if from then
    local msg = w.msg
    if w.path then
      out = { topic = RECORD, action = RA.PATCH, name = name, version = version, path = w.path,
        data = w.text, isWriteAck = false }
    else
      out = { topic = RECORD, action = RA.UPDATE, name = name, version = version, data = w.text, isWriteAck = false }
    end
  else
    out = { topic = RECORD, action = RA.UPDATE, name = name, version = version, data = text, isWriteAck = false }
  end
  rt:broadcast(set, out, from)
end

-- POST /api "notify": subscribers re-read the records.
function Records:notify(name)
  local version, text = self.store:get(name)
  local set = self.subs:subscribers(name)
  if version == nil or not set then return end
  self.rt:broadcast(set, { topic = RECORD, action = RA.UPDATE, name = name, version = version, data = text, isWriteAck = false })
end

function Records:_read_response(c, name)
  local version, text, err = self.store:get(name)
  if err then
    return c:send({ topic = RECORD, action = RA.RECORD_LOAD_ERROR, name = name, isError = true })
  end
  return c:send({ topic = RECORD, action = RA.READ_RESPONSE, name = name, version = version, data = text })
end

function Records:subscribe_create_read(c, msg)
  local rt, store, subs = self.rt, self.store, self.subs
  local list = names_of(msg)
  c:send({ topic = RECORD, action = msg.action, names = msg.names, correlationId = msg.correlationId, isAck = true })
  for _, name in ipairs(list) do
    if type(name) == "string" and name ~= "" then
      local version, _, err = store:get(name)
      local missing = version == nil and not err
      local ok, denial = rt:permit(c, "record", "read", name, nil)
      if ok and missing then ok, denial = rt:permit(c, "record", "create", name, nil) end
      if not ok then
        c:send({ topic = RECORD, action = denial, originalAction = msg.action, name = name,
          isError = true, correlationId = msg.correlationId })
      else
        if missing then store:put(name, 0, "{}") end
        local added, first = subs:add(name, c)
        if added and first then self.listen:subscribed(name) end
        if not c.open then return end
        self:_read_response(c, name)
      end
    end
  end
end

function Records:unsubscribe(c, msg)
  for _, name in ipairs(names_of(msg)) do
    local removed, last = self.subs:remove(name, c)
    if removed and last then self.listen:unsubscribed(name) end
  end
  c:send({ topic = RECORD, action = msg.action, correlationId = msg.correlationId, isAck = true })
end

-- The name of a record the client may read, or nil (a denial was sent).
function Records:_readable(c, msg)
  local name = msg.name
  if type(name) ~= "string" then return nil end
  local ok, denial = self.rt:permit(c, "record", "read", name, nil)
  if not ok then
    c:send(error_reply(msg, denial, name, true))
    return nil
  end
  return name
end

function Records:read(c, msg)
  local name = self:_readable(c, msg)
  if not name then return end
  local version, _, err = self.store:get(name)
  if version == nil and not err then
    return c:send(error_reply(msg, RA.RECORD_NOT_FOUND, name, true))
  end
  self:_read_response(c, name)
end

function Records:head(c, msg)
  local name = self:_readable(c, msg)
  if not name then return end
  local version, _, err = self.store:get(name)
  if err then return c:send(error_reply(msg, RA.RECORD_LOAD_ERROR, name, true)) end
  c:send({ topic = RECORD, action = RA.HEAD_RESPONSE, name = name, version = version or -1 })
end

local PATH_ACTIONS = { [RA.PATCH] = true, [RA.ERASE] = true, [RA.CREATEANDPATCH] = true }
local CREATE_ACTIONS = { [RA.CREATEANDUPDATE] = true, [RA.CREATEANDPATCH] = true }

local function echo_invalid(c, msg, value)
  c:send({ topic = RECORD, action = RA.INVALID_MESSAGE_DATA, originalAction = msg.action, name = msg.name,
    version = msg.version, data = type(msg.data) == "string" and msg.data or nil,
    parsedData = type(msg.data) ~= "string" and value or nil, isWriteAck = msg.isWriteAck and true or nil,
    correlationId = msg.isWriteAck and msg.correlationId or nil })
end

-- UPDATE, PATCH, ERASE, CREATEANDUPDATE, CREATEANDPATCH.
function Records:write(c, msg)
  local rt, store, action, name = self.rt, self.store, msg.action, msg.name
  if type(name) ~= "string" or name == "" then return end
  local valid, value, text = rt.payload(msg)
  if not valid then -- data that is not JSON: only echoed, as the reference's json endpoint does
    return c:send({ topic = RECORD, action = RA.INVALID_MESSAGE_DATA, data = msg.data })
  end
  local path = nil
  if PATH_ACTIONS[action] and type(msg.path) == "string" and msg.path ~= "" then path = msg.path end
  -- patch: a PATCH of a subscribed record (Valve rules see the merged record)
  local ok, denial = rt:permit(c, "record", "write", name, { data = value, path = path, patch = action == RA.PATCH })
  if not ok then
    return c:send(error_reply(msg, denial, name, true))
  end
  if action == RA.ERASE then
    if not path then return echo_invalid(c, msg, nil) end
    value, text = nil, nil
  elseif not path and not (type(value) == "table" and (getmetatable(value) == nil or json.is_array(value))) then
    return echo_invalid(c, msg, value)
  end
  local version = msg.version
  if CREATE_ACTIONS[action] or math_type(version) ~= "integer" or version < -1 then
    version = -1
  end
  if not CREATE_ACTIONS[action] then
    local current, _, err = store:get(name)
    if current == nil and not err then
      return c:send({ topic = RECORD, action = RA.RECORD_UPDATE_ERROR, name = name, isError = true,
        isWriteAck = msg.isWriteAck and true or nil, correlationId = msg.isWriteAck and msg.correlationId or nil })
    end
  end
  self.writing = { name = name, c = c, msg = msg, path = path, text = text }
  local ok, r = pcall(store.cmd_write, store, name, value, path, version, "record")
  self.writing = nil
  if not ok then error(r, 0) end
  if not r.success then
    local event = r.errorEvent
    if event == "VERSION_EXISTS" or event == "INVALID_VERSION" then
      -- the current version; VERSION_EXISTS carries the current data (the
      -- client merges with it), INVALID_VERSION echoes what was sent
      local reply = error_reply(msg, RA[event], name, nil)
      reply.version = r.currentVersion
      reply.data = event == "VERSION_EXISTS" and encode(r.currentData) or text
      return c:send(reply)
    elseif event == "INVALID_MESSAGE_DATA" then
      return echo_invalid(c, msg, value)
    end
    return c:send(error_reply(msg, RA.RECORD_UPDATE_ERROR, name, true))
  end
  if msg.isWriteAck then
    store:after_flush(function(synced)
      if synced then
        c:send({ topic = RECORD, action = RA.WRITE_ACKNOWLEDGEMENT, name = name,
          correlationId = msg.correlationId, isWriteAck = true })
      else
        c:send(error_reply(msg, RA.RECORD_UPDATE_ERROR, name, true))
      end
    end)
  end
end

function Records:delete(c, msg)
  local rt, store, name = self.rt, self.store, msg.name
  if type(name) ~= "string" or name == "" then return end
  local ok, denial = rt:permit(c, "record", "delete", name, nil)
  if not ok then
    return c:send(error_reply(msg, denial, name, true))
  end
  self.writing = { name = name, c = c }
  local ok, err = pcall(store.cmd_delete, store, name, "record")
  self.writing = nil
  if not ok then error(err, 0) end
  store:after_flush(function(synced)
    if synced then
      c:send({ topic = RECORD, action = RA.DELETE_SUCCESS, name = name })
    else
      c:send(error_reply(msg, RA.RECORD_DELETE_ERROR, name, true))
    end
  end)
end

function Records:handle(c, msg)
  local action = msg.action
  if action == RA.SUBSCRIBECREATEANDREAD or action == RA.SUBSCRIBEANDREAD then
    return self:subscribe_create_read(c, msg)
  elseif action == RA.UNSUBSCRIBE then return self:unsubscribe(c, msg)
  elseif action == RA.READ then return self:read(c, msg)
  elseif action == RA.HEAD then return self:head(c, msg)
  elseif action == RA.DELETE then return self:delete(c, msg)
  elseif action == RA.UPDATE or action == RA.PATCH or action == RA.ERASE
    or action == RA.CREATEANDUPDATE or action == RA.CREATEANDPATCH then
    return self:write(c, msg)
  end
  return self.listen:handle(c, msg)
end

function Records:disconnect(c)
  self.listen:connection_closed(self.subs, c)
end

return M
