-- RPC handlers written in Lua.
--
-- A handler is function(data, ctx) and may
--   * return a value (the result's data; nothing means no data key),
--   * return nil, err (an RPC_ERROR with err as the text),
--   * raise (an RPC_ERROR with the message, without the file:line prefix,
--     which is logged but never sent to the client),
--   * wait: it runs in a coroutine, and ctx.sleep(ms) / ctx.await(fn) yield
--     until a timer or a callback resumes it; the server keeps serving.
-- rpc.responseTimeout ends a handler that takes too long (RESPONSE_TIMEOUT);
-- its coroutine is then abandoned and whatever it returns later is dropped.
local json = require "moonstream.json"
local log = require "moonstream.log"
local metrics = require "moonstream.metrics"

local M = {}
local RpcHandlers = {}
local mt = { __index = RpcHandlers }

local create, resume, status, running, yield =
  coroutine.create, coroutine.resume, coroutine.status, coroutine.running, coroutine.yield
local encode, raw = json.encode, json.raw
local pack, unpack = table.pack, table.unpack

local calls = setmetatable({}, { __mode = "k" }) -- coroutine -> call in progress

local function failure(event, message)
  return { success = false, error = message, errorTopic = "rpc", errorEvent = event }
end
M.failure = failure

-- The texts of the failures that are not the handler's or the provider's
-- own, by errorEvent (realtime/rpc_topic.lua answers POST /api with these too).
local FAILURE_TEXTS = {
  NO_RPC_PROVIDER = function(name) return "No provider was available to handle the RPC \"" .. name .. "\"." end,
  RESPONSE_TIMEOUT = function() return "The RPC response timeout was exceeded by the provider." end,
  ACCEPT_TIMEOUT = function() return "The RPC accept timeout was exceeded by the provider." end,
}

-- The result of a call to `name` that ended with `event` (a FAILURE_TEXTS key).
function M.failed(event, name)
  return failure(event, FAILURE_TEXTS[event](name))
end

-- loop: the server's loop (timers); opts.response_timeout in ms;
-- opts.api: table of functions every handler context can use (records, emit...);
-- opts.providers: rpc_providers.lua, asked about names no Lua handler has
-- (realtime client providers)
function M.new(loop, opts)
  local self = setmetatable({
    loop = loop,
    handlers = {},
    response_timeout = opts.response_timeout, -- the default is config/schema.lua's
    providers = opts.providers,
  }, mt)
  local api = {}
  for k, v in pairs(opts.api or {}) do api[k] = v end

  -- ctx.await(register): register(callback) arranges for callback(...) to be
  -- called later; await returns those values. The callback may fire at once.
  function api.await(register)
    local co, main = running()
    local call = calls[co]
    if main or not call then error("ctx.await must be called from inside an RPC handler", 2) end
    local state = { pending = true, inside = true }
    register(function(...)
      if not state.pending then return end
      state.pending = false
      if state.inside then
        state.values = table.pack(...)
      else
        self:_continue(call, ...)
      end
    end)
    if not state.pending then
      return table.unpack(state.values, 1, state.values.n)
    end
    state.inside = false
    return yield()
  end

  -- ctx.sleep(ms): waits without blocking the server.
  function api.sleep(ms)
    return api.await(function(resume_fn) loop:timer(ms, resume_fn) end)
  end
  self.api_mt = { __index = api }
  return self
end

-- ctx.await when the running coroutine is a handler's call (ctx.records'
-- commands wait through it: server.lua), else nil.
function RpcHandlers:awaiter()
  local co, main = running()
  if main or not calls[co] then return nil end
  return self.api_mt.__index.await
end

function RpcHandlers:register(name, fn)
  if type(name) ~= "string" or name == "" then error("rpc name must be a non-empty string", 2) end
  if type(fn) ~= "function" then error("rpc handler must be a function", 2) end
  self.handlers[name] = fn
end

function RpcHandlers:unregister(name)
  self.handlers[name] = nil
end

function RpcHandlers:has(name)
  return self.handlers[name] ~= nil
end

-- Strips Lua's "file:line: " position from a raised message.
local function client_message(err)
  if type(err) ~= "string" then
    local ok, s = pcall(tostring, err)
    return ok and s or "RPC handler failed"
  end
  return (err:gsub("^[^\n]-:%d+: ", "", 1))
end

-- Turns a finished handler's outcome into the command result.
local function outcome(call, ok, value, err)
  if not ok then
    log.warn("rpc '%s' raised: %s", call.name, debug.traceback(call.co, tostring(value)))
    return failure("RPC_ERROR", client_message(value))
  end
  if value == nil then
    if err ~= nil then return failure("RPC_ERROR", client_message(err)) end
    return { success = true }
  end
  local text, eerr = encode(value)
  if not text then
    log.warn("rpc '%s' returned a value that is not JSON: %s", call.name, eerr)
    return failure("RPC_ERROR", "The RPC handler returned a value that cannot be sent as JSON.")
  end
  return { success = true, data = raw(text) }
end

local function finish(call, result)
  call.finished = true
  calls[call.co] = nil
  if call.timer then call.timer:cancel() end
  if call.done then call.done(result) end
end

-- Resumes a waiting handler with the values its await produced.
function RpcHandlers:_continue(call, ...)
  if call.finished then return end
  local r = pack(resume(call.co, ...))
  if status(call.co) == "dead" or not r[1] then
    finish(call, call.outcome(call, unpack(r, 1, r.n)))
  end
end

-- Runs the handler for `name`. Returns the result at once when the handler
-- finishes without waiting; otherwise returns nil and calls done(result)
-- later (exactly once). ctx_fields: user, and anything else for ctx.
-- Either way the outcome is counted once (moonstream_rpcs_total).
function RpcHandlers:make(name, data, ctx_fields, done)
  local result = self:_make(name, data, ctx_fields, function(res)
    metrics.rpc(res)
    if done then done(res) end
  end)
  if result ~= nil then metrics.rpc(result) end
  return result
end

function RpcHandlers:_make(name, data, ctx_fields, done)
  local fn = self.handlers[name]
  if not fn then
    -- realtime clients that provide the name (realtime/rpc_topic.lua); false: none does
    if self.providers then
      local result = self.providers:make(name, data, done)
      if result ~= false then return result end
    end
    return M.failed("NO_RPC_PROVIDER", name)
  end
  return self:run(name, fn, data, ctx_fields, outcome, function()
    log.warn("rpc '%s' exceeded rpc.responseTimeout (%d ms)", name, self.response_timeout)
    return M.failed("RESPONSE_TIMEOUT", name)
  end, done)
end

-- Runs fn(arg, ctx) the way a handler runs (a coroutine with ctx.await and
-- ctx.sleep, ended after rpc.responseTimeout), for handlers and for other user
-- functions that may wait (the lua auth strategy). convert(call, ok, ...)
-- turns the coroutine's outcome into the result; on_timeout() gives the
-- result when it takes too long. Returns the result at once, or nil and calls
-- done(result) later (exactly once).
function RpcHandlers:run(name, fn, arg, ctx_fields, convert, on_timeout, done)
  local ctx = setmetatable(ctx_fields or {}, self.api_mt)
  ctx.name = name
  local co = create(fn)
  local call = { name = name, co = co, outcome = convert }
  calls[co] = call
  local r = pack(resume(co, arg, ctx))
  if status(co) == "dead" or not r[1] then
    calls[co] = nil
    call.finished = true
    return convert(call, unpack(r, 1, r.n))
  end
  call.done = done
  call.timer = self.loop:timer(self.response_timeout, function()
    call.timer = nil
    finish(call, on_timeout())
  end)
  return nil
end

return M
