-- Runs a validated batch of commands in order, each seeing the effects of the
-- ones before it. Most commands finish at once; an RPC handler may wait, and
-- a record command waits when its store answers later (Redis, in cluster
-- mode): then the batch goes on when it answers, and the loop serves other
-- requests meanwhile. The
-- response is sent when every command has a result and the batch's writes
-- are durable (group commit, see record_engine.lua), or when requestTimeout passes.
--
-- Results join a batch of the record engine (csrc/engine.c) in order: record
-- and list commands run there, and the engine writes the answer (its overall
-- result, the texts of writes whose sync failed, the bound on record data).
local json = require "moonstream.json"
local metrics = require "moonstream.metrics"

local M = {}
local Dispatcher = {}
local mt = { __index = Dispatcher }

local encode = json.encode

local TIMEOUT = "Request exceeded timeout before a response was received."

-- parts: records (record_engine.lua), events, rpc, presence, loop, request_timeout (ms),
-- permit (optional function(ctx, topic, action, name, cmd) -> true | false, denied_action)
-- on_emit (optional function(name, data, ctx): realtime subscribers)
function M.new(parts)
  return setmetatable({
    records = parts.records,
    events = parts.events,
    rpc = parts.rpc,
    presence = parts.presence,
    loop = parts.loop,
    request_timeout = parts.request_timeout,
    permit = parts.permit,
    on_emit = parts.on_emit,
  }, mt)
end

-- The one emit: Lua listeners, then realtime subscribers. POST /api (both
-- paths) and handlers' ctx.emit come here.
function Dispatcher:emit(name, data, ctx)
  self.events:emit(name, data, ctx)
  if self.on_emit then self.on_emit(name, data, ctx) end
end

-- A result made in Lua joins the batch as JSON text.
local function add(job, result)
  local text, err = encode(result)
  if not text then
    job.broken = err
    return job.batch:ok() -- a placeholder: the answer becomes a 500
  end
  job.batch:add(result.success, text)
end

-- Per topic and action: function(dispatcher, cmd, ctx, batch) adds one
-- result and returns non-nil, or returns nil when the record store answers
-- later (the batch's continuation then goes on: see execute)
local run = { event = {}, record = {}, list = {}, presence = {} }

function run.event.emit(d, cmd, ctx, job)
  d:emit(cmd.eventName, cmd.data, ctx)
  job.batch:ok()
  return true
end

function run.record.read(d, cmd, _, job) return d.records:read(job.batch, "record", cmd.recordName) end
function run.record.head(d, cmd, _, job) return d.records:head(job.batch, "record", cmd.recordName) end
function run.record.write(d, cmd, _, job)
  return d.records:write(job.batch, "record", cmd.recordName, cmd.data, cmd.path, cmd.version)
end
function run.record.delete(d, cmd, _, job) return d.records:delete(job.batch, "record", cmd.recordName) end
function run.record.notify(d, cmd, _, job) return d.records:notify(job.batch, cmd.recordNames) end

function run.list.read(d, cmd, _, job) return d.records:read(job.batch, "list", cmd.listName) end
function run.list.write(d, cmd, _, job)
  return d.records:write(job.batch, "list", cmd.listName, cmd.data, nil, cmd.version)
end
function run.list.delete(d, cmd, _, job) return d.records:delete(job.batch, "list", cmd.listName) end

function run.presence.query(d, cmd, _, job)
  if cmd.names ~= nil then
    add(job, { success = true, users = d.presence:query(cmd.names) })
  else
    add(job, { success = true, users = json.array(d.presence:users()) })
  end
  return true
end

local NAME_FIELD = { event = "eventName", record = "recordName", list = "listName", rpc = "rpcName" }

-- Sends the response once: after the batch's writes are durable. A failed
-- sync turns the batch's changes into storage errors (the engine's texts).
function Dispatcher:_finish(job)
  if job.finished then return end
  job.finished = true
  if job.timer then job.timer:cancel(); job.timer = nil end
  local function send(sync_err)
    local batch = job.batch
    metrics.commands(job.commands, batch, job.n)
    if job.broken then
      job.respond(nil, job.broken)
    else
      job.respond(batch:response(sync_err))
    end
    batch:close()
  end
  if not self.records:has_pending() then return send() end
  self.records:after_flush(function(ok, err)
    send(not ok and tostring(err) or nil)
  end)
end

-- The commands from i on that have no result yet time out.
function Dispatcher:_time_out(job)
  for _ = job.batch_n + 1, job.n do job.batch:fail("connection", "HTTP_REQUEST_TIMEOUT", TIMEOUT) end
  job.batch_n = job.n
  self:_finish(job)
end

function Dispatcher:_run(job, i)
  local commands, ctx, permit = job.commands, job.ctx, self.permit
  while i <= job.n do
    if job.finished then return end
    local cmd = commands[i]
    local topic, action = cmd.topic, cmd.action
    local allowed, denied_action = true, nil
    if permit then allowed, denied_action = permit(ctx, topic, action, cmd[NAME_FIELD[topic]], cmd) end
    if not allowed then
      job.batch:fail(topic, "MESSAGE_DENIED", "Message denied. Action \"" .. (denied_action or action)
        .. "\" is not permitted.")
    elseif topic == "rpc" then
      local index = i
      local result = self.rpc:make(cmd.rpcName, cmd.data, { user = ctx.user }, function(res)
        if job.finished then return end
        add(job, res)
        job.batch_n = index
        self:_run(job, index + 1)
      end)
      if result == nil then
        if not job.timer then
          job.timer = self.loop:timer(self.request_timeout, function()
            job.timer = nil
            self:_time_out(job)
          end)
        end
        return -- resumes in the callback above
      end
      add(job, result)
    elseif run[topic][action](self, cmd, ctx, job) == nil then
      job.at = i
      return -- resumes in the batch's continuation (execute)
    end
    job.batch_n = i
    i = i + 1
  end
  self:_finish(job)
end

-- Runs commands (already validated) for ctx (user = { id, data }, ...).
-- respond(json_text) is called exactly once, possibly before this returns;
-- respond(nil, err) when a result could not be encoded.
function Dispatcher:execute(commands, ctx, respond)
  local job = { commands = commands, n = #commands, batch_n = 0, ctx = ctx, respond = respond }
  -- a record command the store answered later has joined the batch: go on
  job.batch = self.records:batch(function()
    if job.finished then return end
    job.batch_n = job.at
    self:_run(job, job.at + 1)
  end)
  self:_run(job, 1)
end

return M
