-- Runs a validated batch of commands in order, each seeing the effects of the
-- ones before it. Most commands finish at once; an
-- RPC handler may wait, and then the batch goes on when it answers. The
-- response is sent when every command has a result and the batch's writes
-- are on disk (group commit, see records.lua), or when requestTimeout passes.
local json = require "moonstream.json"
local records_mod = require "moonstream.records"
local metrics = require "moonstream.metrics"

local M = {}
local Dispatcher = {}
local mt = { __index = Dispatcher }

local failure = records_mod.failure
local raw_mt = getmetatable(json.raw(""))
local OK = setmetatable({ success = true }, { __newindex = function() error("shared result is read-only", 2) end })

local TIMEOUT_RESULT = {
  success = false,
  error = "Request exceeded timeout before a response was received.",
  errorTopic = "connection",
  errorEvent = "HTTP_REQUEST_TIMEOUT",
}

local function denied(topic, action)
  return failure(topic, "MESSAGE_DENIED", "Message denied. Action \"" .. action .. "\" is not permitted.")
end
M.denied = denied

-- parts: records, events, rpc, presence, loop, request_timeout (ms),
-- max_response (bytes of record data one answer may carry),
-- permit (optional function(ctx, topic, action, name, cmd) -> true | false, denied_action)
-- on_emit / on_record_change (optional hooks for realtime subscribers)
function M.new(parts)
  return setmetatable({
    records = parts.records,
    events = parts.events,
    rpc = parts.rpc,
    presence = parts.presence,
    loop = parts.loop,
    request_timeout = parts.request_timeout or 20000,
    max_response = parts.max_response or 16777216,
    permit = parts.permit,
    on_emit = parts.on_emit,
    on_record_change = parts.on_record_change,
  }, mt)
end

-- Per topic and action: function(dispatcher, cmd, ctx) -> result, is_write
local run = { event = {}, record = {}, list = {}, presence = {} }

function run.event.emit(d, cmd, ctx)
  d.events:emit(cmd.eventName, cmd.data, ctx)
  if d.on_emit then d.on_emit(cmd.eventName, cmd.data, ctx) end
  return OK
end

function run.record.read(d, cmd) return d.records:cmd_read(cmd.recordName, "record") end
function run.record.head(d, cmd) return d.records:cmd_head(cmd.recordName, "record") end
function run.record.write(d, cmd)
  return d.records:cmd_write(cmd.recordName, cmd.data, cmd.path, cmd.version, "record"), true
end
function run.record.delete(d, cmd) return d.records:cmd_delete(cmd.recordName, "record"), true end
function run.record.notify(d, cmd)
  if d.on_record_change then
    for _, name in ipairs(cmd.recordNames) do d.on_record_change(name) end
  end
  return OK
end

function run.list.read(d, cmd) return d.records:cmd_read(cmd.listName, "list") end
function run.list.write(d, cmd)
  return d.records:cmd_write(cmd.listName, cmd.data, nil, cmd.version, "list"), true
end
function run.list.delete(d, cmd) return d.records:cmd_delete(cmd.listName, "list"), true end

function run.presence.query(d, cmd)
  if cmd.names ~= nil then
    return { success = true, users = d.presence:query(cmd.names) }
  end
  return { success = true, users = json.array(d.presence:users()) }
end

local NAME_FIELD = { event = "eventName", record = "recordName", list = "listName", rpc = "rpcName" }

-- Record data copied into one answer is bounded (maxResponseSize): a 1 MB
-- batch of reads of a 1 MB record would otherwise build a 16 GB answer. A
-- read that does not fit fails; a version conflict loses its currentData.
-- (csrc/fastpath.c counts the same bytes the same way.)
local function bound(d, job, result, topic, name)
  local field = result.data ~= nil and "data" or "currentData"
  local v = result[field]
  if type(v) ~= "table" or getmetatable(v) ~= raw_mt then return result end
  local size = #v[1]
  if job.bytes + size <= d.max_response then
    job.bytes = job.bytes + size
    return result
  end
  if field == "currentData" then
    result.currentData = json.null
    return result
  end
  return failure(topic, "RECORD_LOAD_ERROR", "Record read failed. Record \"" .. name
    .. "\" does not fit in this response (maxResponseSize is " .. d.max_response .. " bytes).")
end

local function overall(results, n)
  local ok = 0
  for i = 1, n do
    if results[i].success then ok = ok + 1 end
  end
  if ok == n then return "SUCCESS" elseif ok == 0 then return "FAILURE" end
  return "PARTIAL_SUCCESS"
end

-- Sends the response once: after the batch's writes are durable. A failed
-- sync turns the batch's write results into storage errors.
function Dispatcher:_finish(job)
  if job.finished then return end
  job.finished = true
  if job.timer then job.timer:cancel(); job.timer = nil end
  local function send()
    local results = job.results
    metrics.commands(job.commands, results, job.n)
    job.respond({ result = overall(results, job.n), body = json.array(results) })
  end
  if not self.records:has_pending() then return send() end
  self.records:after_flush(function(ok, err)
    if not ok then
      for _, i in ipairs(job.writes) do
        local cmd = job.commands[i]
        local delete = cmd.action == "delete"
        job.results[i] = failure(cmd.topic, delete and "RECORD_DELETE_ERROR" or "RECORD_UPDATE_ERROR",
          (delete and "Record delete failed" or "Record update failed") .. ": the storage could not save it ("
            .. tostring(err) .. ").")
      end
    end
    send()
  end)
end

function Dispatcher:_run(job, i)
  local commands, results, ctx, permit = job.commands, job.results, job.ctx, self.permit
  while i <= job.n do
    if job.finished then return end
    local cmd = commands[i]
    local topic, action = cmd.topic, cmd.action
    local allowed, denied_action = true, nil
    if permit then allowed, denied_action = permit(ctx, topic, action, cmd[NAME_FIELD[topic]], cmd) end
    if not allowed then
      results[i] = denied(topic, denied_action or action)
    elseif topic == "rpc" then
      local index = i
      local result = self.rpc:make(cmd.rpcName, cmd.data, { user = ctx.user }, function(res)
        if job.finished then return end
        results[index] = res
        self:_run(job, index + 1)
      end)
      if result == nil then
        if not job.timer then
          job.timer = self.loop:timer(self.request_timeout, function()
            job.timer = nil
            for k = 1, job.n do
              if results[k] == nil then results[k] = TIMEOUT_RESULT end
            end
            self:_finish(job)
          end)
        end
        return -- resumes in the callback above
      end
      results[i] = result
    else
      local result, is_write = run[topic][action](self, cmd, ctx)
      if result.data ~= nil or result.currentData ~= nil then
        result = bound(self, job, result, topic, cmd[NAME_FIELD[topic]])
      end
      results[i] = result
      if is_write and result.success then job.writes[#job.writes + 1] = i end
    end
    i = i + 1
  end
  self:_finish(job)
end

-- Runs commands (already validated) for ctx (user = { id, data }, ...).
-- respond(response_table) is called exactly once, possibly before this returns.
function Dispatcher:execute(commands, ctx, respond)
  local job = {
    commands = commands, n = #commands, results = {}, writes = {}, bytes = 0,
    ctx = ctx, respond = respond,
  }
  self:_run(job, 1)
end

return M
