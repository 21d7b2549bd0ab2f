-- Realtime records: subscribe-create-read, subscribe-read,
-- subscribe-and-head (the client's resubscription after a reconnect),
-- update/patch/erase with versions, write acknowledgements,
-- snapshot/has/head, delete, discard, notify. Actions deepstream does not
-- answer either (CREATE, SUBSCRIBECREATEANDUPDATE, HEAD_BULK, DELETE_BULK)
-- are ignored, as there.
--
-- Writes go through the record engine (record_engine.lua, csrc/engine.c), the same
-- storage and version rules as POST /api. Subscribers learn about every
-- change from the engine's change listener (changed), whoever made it: a
-- client's write carries its origin and is forwarded as the client sent it
-- (UPDATE or PATCH, to every subscriber but the writer), any other write
-- (HTTP, Lua handler, notify) as a full UPDATE.
local json = require "moonstream.json"
local registry = require "moonstream.realtime.registry"
local listen = require "moonstream.realtime.listen"
local names = require "moonstream.realtime.names"
local log = require "moonstream.log"

local type, math_type = type, math.type

local T, A = names.T, names.A
local RECORD, RA = T.RECORD, A.RECORD

local M = {}
local RecordTopic = {}
local mt = { __index = RecordTopic }

local names_of = names.names_of

function M.new(rt)
  local cluster = rt.cluster
  local self = setmetatable({ rt = rt, store = rt.records, queues = {}, subs = registry.new(nil, cluster and function(name, present)
    cluster.interest("record", name, present)
  end) }, mt)
  self.listen = listen.new(rt, RECORD, RA, self.subs, "record")
  rt.changes:subscribe(function(name, version, text, origin) self:changed(name, version, text, origin) end)
  return self
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

-- A record changed in the store (version nil: deleted). w: the origin of a
-- client's write or delete (see write and delete below), else nil.
function RecordTopic:changed(name, version, text, w)
  local rt = self.rt
  local from = w and w.c or nil
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

function RecordTopic:_read_response(c, name)
  local version, text, err = self.store:wait_get(name)
  if err then
    return c:send({ topic = RECORD, action = RA.RECORD_LOAD_ERROR, name = name, isError = true })
  end
  return c:send({ topic = RECORD, action = RA.READ_RESPONSE, name = name, version = version, data = text })
end

-- Subscribes c to name: MULTIPLE_SUBSCRIPTIONS when it already is (as
-- deepstream's subscription registry answers). Returns whether it was added.
function RecordTopic:_subscribe(c, msg, name)
  local added, first = self.subs:add(name, c)
  if not added then
    c:send({ topic = RECORD, action = RA.MULTIPLE_SUBSCRIPTIONS, originalAction = msg.action, name = name })
    return false
  end
  self.listen:subscribed(name, c, first)
  return true
end

-- The names of a bulk message that c may `rule` (read, notify); each other
-- name gets its own denial.
function RecordTopic:_permitted(c, msg, rule)
  local out = json.array()
  for _, name in ipairs(names_of(msg)) do
    if type(name) == "string" and name ~= "" then
      local ok, denial = self.rt:permit(c, "record", rule, name, nil)
      if ok then
        out[#out + 1] = name
      else
        c:send({ topic = RECORD, action = denial, originalAction = msg.action, name = name,
          isError = true, correlationId = msg.correlationId })
      end
    end
  end
  return out
end

-- SUBSCRIBECREATEANDREAD (getRecord: a missing record is created at version
-- 0) and SUBSCRIBEANDREAD (the client's recordReadOnlyMode: a missing record
-- is not created, its READ_RESPONSE has version -1 and {}). The ack (an
-- echo) comes first.
function RecordTopic:subscribe_read(c, msg)
  local rt, store = self.rt, self.store
  local create = msg.action == RA.SUBSCRIBECREATEANDREAD
  c:send({ topic = RECORD, action = msg.action, names = msg.names, correlationId = msg.correlationId, isAck = true })
  for _, name in ipairs(names_of(msg)) do
    if type(name) == "string" and name ~= "" then
      local version, _, err = store:wait_get(name)
      if not c.open then return end -- closed while the store answered
      local missing = version == nil and not err
      local ok, denial = rt:permit(c, "record", "read", name, nil)
      if ok and missing and create then ok, denial = rt:permit(c, "record", "create", name, nil) end
      if not ok then
        c:send({ topic = RECORD, action = denial, originalAction = msg.action, name = name,
          isError = true, correlationId = msg.correlationId })
      else
        if missing and create then store:wait_create(name) end
        self:_subscribe(c, msg, name)
        if not c.open then return end
        if missing and not create then
          c:send({ topic = RECORD, action = RA.READ_RESPONSE, name = name, version = -1, data = "{}" })
        else
          self:_read_response(c, name)
        end
      end
    end
  end
end

-- SUBSCRIBEANDHEAD: how a client re-subscribes the records it holds after a
-- reconnect. As deepstream: HEAD_RESPONSE_BULK with the versions of the
-- stored records, the subscriptions and their ack, then a HEAD_RESPONSE
-- (version -1) per record that is not stored. The client then reconciles
-- each record with what it holds (reading it, READ, when it must).
function RecordTopic:subscribe_head(c, msg)
  local names = self:_permitted(c, msg, "read")
  if #names == 0 then return end
  local store = self.store
  local versions, order, missing = {}, {}, {}
  for _, name in ipairs(names) do
    local version, _, err = store:wait_get(name)
    if version ~= nil then
      if versions[name] == nil then order[#order + 1] = name end
      versions[name] = version
    else
      missing[#missing + 1] = { name, err }
    end
  end
  if not c.open then return end -- closed while the store answered
  c:send({ topic = RECORD, action = RA.HEAD_RESPONSE_BULK, versions = versions, versionsOrder = order })
  for _, name in ipairs(names) do self:_subscribe(c, msg, name) end
  c:send({ topic = RECORD, action = msg.action, correlationId = msg.correlationId, isAck = true })
  for _, m in ipairs(missing) do
    if m[2] then
      c:send({ topic = RECORD, action = RA.RECORD_LOAD_ERROR, originalAction = RA.HEAD, name = m[1], isError = true })
    else
      c:send({ topic = RECORD, action = RA.HEAD_RESPONSE, name = m[1], version = -1 })
    end
  end
end

-- SUBSCRIBE: subscriptions alone, then the ack.
function RecordTopic:subscribe(c, msg)
  local names = self:_permitted(c, msg, "read")
  if #names == 0 then return end
  for _, name in ipairs(names) do self:_subscribe(c, msg, name) end
  c:send({ topic = RECORD, action = msg.action, correlationId = msg.correlationId, isAck = true })
end

-- NOTIFY (record.notify(names)): the records changed in storage behind the
-- server's back; the engine's notify tells their subscribers the stored
-- state (see changed: an UPDATE, or DELETED when no longer stored), then the
-- sender gets the ack, an echo of the names it may notify.
function RecordTopic:notify_request(c, msg)
  local names = self:_permitted(c, msg, "notify")
  if #names == 0 then return end
  self.store:wait_notify(names)
  c:send({ topic = RECORD, action = msg.action, names = names, correlationId = msg.correlationId, isAck = true })
end

function RecordTopic:unsubscribe(c, msg)
  for _, name in ipairs(names_of(msg)) do
    local removed, last = self.subs:remove(name, c)
    if removed and last then self.listen:unsubscribed(name) end
  end
  c:send({ topic = RECORD, action = msg.action, correlationId = msg.correlationId, isAck = true })
end

-- The name of a record the client may read, or nil (a denial was sent).
function RecordTopic:_readable(c, msg)
  local name = msg.name
  if type(name) ~= "string" then return nil end
  local ok, denial = self.rt:permit(c, "record", "read", name, nil)
  if not ok then
    c:send(error_reply(msg, denial, name, true))
    return nil
  end
  return name
end

function RecordTopic:read(c, msg)
  local name = self:_readable(c, msg)
  if not name then return end
  local version, _, err = self.store:wait_get(name)
  if version == nil and not err then
    return c:send(error_reply(msg, RA.RECORD_NOT_FOUND, name, true))
  end
  self:_read_response(c, name)
end

function RecordTopic:head(c, msg)
  local name = self:_readable(c, msg)
  if not name then return end
  local version, _, err = self.store:wait_get(name)
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
function RecordTopic:write(c, msg)
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
  elseif not path and not (text and store:whole_data(text)) then
    -- the engine's rule, asked before the existence check below (deepstream's reply order)
    return echo_invalid(c, msg, value)
  end
  local version = msg.version
  if CREATE_ACTIONS[action] or math_type(version) ~= "integer" or version < -1 then
    version = -1
  end
  -- UPDATE, PATCH and ERASE need an existing record, except with a write
  -- acknowledgement: deepstream then upserts (a missing record counts as {}
  -- at version 0), which is what the client's setDataWithAck(name, path)
  -- (an ERASE) relies on
  if not CREATE_ACTIONS[action] and not msg.isWriteAck then
    local current, _, err = store:wait_get(name)
    if current == nil and not err then
      return c:send({ topic = RECORD, action = RA.RECORD_UPDATE_ERROR, name = name, isError = true,
        isWriteAck = msg.isWriteAck and true or nil, correlationId = msg.isWriteAck and msg.correlationId or nil })
    end
  end
  local origin = { c = c, msg = msg, path = path, text = text }
  local written, result = store:wait_write("record", name, value, path, version, origin)
  if not written then
    local r = json.decode(result)
    local event = r.errorEvent
    if event == "VERSION_EXISTS" or event == "INVALID_VERSION" then
      -- the current version; VERSION_EXISTS carries the current data (the
      -- client merges with it: the stored text), INVALID_VERSION echoes what was sent
      local reply = error_reply(msg, RA[event], name, nil)
      reply.version = r.currentVersion
      reply.data = event == "VERSION_EXISTS" and (select(2, store:wait_get(name)) or "null") or text
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

function RecordTopic:delete(c, msg)
  local rt, store, name = self.rt, self.store, msg.name
  if type(name) ~= "string" or name == "" then return end
  local ok, denial = rt:permit(c, "record", "delete", name, nil)
  if not ok then
    return c:send(error_reply(msg, denial, name, true))
  end
  store:wait_delete("record", name, { c = c })
  store:after_flush(function(synced)
    if synced then
      c:send({ topic = RECORD, action = RA.DELETE_SUCCESS, name = name })
    else
      c:send(error_reply(msg, RA.RECORD_DELETE_ERROR, name, true))
    end
  end)
end

-- A store that answers later (Redis): a connection's record messages run
-- one after the other in a coroutine of their own, which waits for the
-- store (record_engine.lua wait_*) while the loop serves everything else; the
-- messages that arrive meanwhile queue behind it, so the replies keep the
-- order of the requests (at most MAX_WAITING: a client that sends more
-- while Redis is slow is disconnected). A store that answers at once needs
-- neither.
M.MAX_WAITING = 4096

function RecordTopic:handle(c, msg)
  if self.store.immediate then return self:_handle(c, msg) end
  local queue = self.queues[c]
  if queue then
    if queue.last - queue.at >= M.MAX_WAITING then
      log.warn("realtime: disconnected a client with %d record messages waiting for the store", M.MAX_WAITING)
      return c:close()
    end
    queue.last = queue.last + 1
    queue[queue.last] = msg
    return
  end
  queue = { msg, at = 1, last = 1 }
  self.queues[c] = queue
  local co = coroutine.create(function()
    while queue.at <= queue.last do
      local ok, err = pcall(self._handle, self, c, queue[queue.at]) -- the next ones run whatever happens
      if not ok then log.error("realtime record message failed: %s", err) end
      queue[queue.at] = nil
      queue.at = queue.at + 1
    end
    self.queues[c] = nil
  end)
  local ok, err = coroutine.resume(co)
  if not ok then
    self.queues[c] = nil
    log.error("realtime record message failed: %s", err)
  end
end

function RecordTopic:_handle(c, msg)
  local action = msg.action
  if action == RA.SUBSCRIBECREATEANDREAD or action == RA.SUBSCRIBEANDREAD then
    return self:subscribe_read(c, msg)
  elseif action == RA.SUBSCRIBEANDHEAD then return self:subscribe_head(c, msg)
  elseif action == RA.SUBSCRIBE then return self:subscribe(c, msg)
  elseif action == RA.NOTIFY then return self:notify_request(c, msg)
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

function RecordTopic:disconnect(c)
  self.listen:connection_closed(self.subs, c)
end

return M
