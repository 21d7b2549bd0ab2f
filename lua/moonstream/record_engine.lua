-- RecordEngine: the Lua face of the record engine (csrc/engine.c) and of the
-- LevelDB store under it (csrc/records.c).
--
-- The engine owns every record rule (versions, texts, bounds, result shapes,
-- storageExclusionPrefixes); the HTTP fast path, dispatch.lua, the realtime
-- protocol and handlers' ctx.records all run their commands there. The store
-- groups the writes made while the loop serves one iteration into one
-- LevelDB batch, written with one sync at the end of the iteration
-- (records:flush(), called by the server's iteration hook) on the store's
-- writer thread while the next group gathers; requests that wrote (or saw
-- unsynced data) are answered after it (records:after_flush).
--
-- What stays in Lua is the path syntax (paths.lua): a path write hands the
-- engine a patch function that makes the new text from the stored one.
local core = require "moonstream.core"
local json = require "moonstream.json"
local paths = require "moonstream.paths"
local log = require "moonstream.log"
local subscribers = require "moonstream.subscribers"

local encode, decode = json.encode, json.decode
local type, tonumber, tostring, math_type = type, tonumber, tostring, math.type

local M = {}
local RecordEngine = {}
local mt = { __index = RecordEngine }

-- store: the open core store. opts: max_response (bytes of record data one
-- POST /api answer may carry: maxResponseSize), sync (default true),
-- exclusion_prefixes (names kept in memory only), loop (write on the store's
-- writer thread; without it flush writes at once), durable (the cluster's
-- Redis store, core.redis_records, instead of LevelDB records over store).
-- Changes are heard through subscribe.
function M.new(store, opts)
  local durable = opts.durable or core.records(store, opts.loop, {
    sync = opts.sync ~= false,
    on_error = function(_, err) log.error("storage write failed: %s", err) end,
  })
  local changed = subscribers.new()
  return setmetatable({
    loop = opts.loop,
    core = durable,
    immediate = opts.durable == nil, -- LevelDB answers at once; Redis later
    changed = changed,
    engine = core.engine(durable, {
      max_response = opts.max_response, exclusions = opts.exclusion_prefixes,
      on_change = function(...) changed:publish(...) end,
    }),
  }, mt)
end

-- fn(name, version|nil, text|nil, origin, notified) hears every change,
-- whoever made it: version nil: deleted; origin: what the command's caller
-- passed; notified: "shared" | "local" when a notify told the stored state
-- again, of a record in the durable store or kept in memory. Returns the
-- function that ends the subscription.
function RecordEngine:subscribe(fn)
  return self.changed:subscribe(fn)
end

-- Current state of a record: version, json_text; nil when it does not exist;
-- nil, nil, err when the store failed or the entry is corrupt.
function RecordEngine:get(name)
  return self.engine:get(name)
end

-- Removes the value at tokens under root (a realtime ERASE, or a PATCH
-- without data): an object key disappears, an array element becomes null as
-- JavaScript's delete leaves it. A path that leads nowhere changes nothing.
local function erase(root, tokens)
  if type(root) ~= "table" or root == json.null then return {} end
  local n = #tokens
  local parent = root
  if n > 1 then parent = paths.get(root, table.move(tokens, 1, n - 1, 1, {})) end
  if type(parent) ~= "table" or parent == json.null then return root end
  local tok = tokens[n]
  if getmetatable(parent) == json.array_mt then
    local i = math.tointeger(tonumber(tok))
    if i and parent[i + 1] ~= nil then parent[i + 1] = json.null end
  else
    parent[math_type(tok) == "integer" and tostring(tok) or tok] = nil
  end
  return root
end

-- The engine's patch for a write of data (nil: erase) at path: text (the
-- stored JSON, nil when missing) -> new_text | nil, "whole" | "corrupt" | "invalid", message
local function patcher(path, data)
  return function(text)
    local tokens, perr = paths.parse(path)
    if not tokens then return nil, "invalid", perr end
    if #tokens == 0 then return nil, "whole" end -- " . " has no parts: no path
    local root
    if text then
      local derr
      root, derr = decode(text)
      if derr then return nil, "corrupt" end
    end
    local serr
    if data == nil then
      root = erase(root, tokens)
    else
      root, serr = paths.set(root, tokens, data)
    end
    if root == nil then return nil, "invalid", serr end
    local new_text, eerr = encode(root)
    if not new_text then return nil, "invalid", eerr end
    return new_text
  end
end

-- write: data (a Lua value; nil with a path erases that path: realtime
-- clients only), optional path (the command's string), optional version
-- (integer >= -1; nil or -1 = forced). batch: the dispatcher's (the result
-- joins it; returns ok), or nil (returns ok, result_text). Durable at the
-- next flush.
function RecordEngine:write(batch, topic, name, data, path, version, origin)
  local text, err
  if data ~= nil then text, err = encode(data) end
  local patch = path ~= nil and path ~= "" and patcher(path, data) or nil
  return self.engine:write(batch, topic, name, text, err, version, patch, origin)
end

-- read, head, delete, notify: as write (see csrc/engine_lua.c).
function RecordEngine:read(batch, topic, name) return self.engine:read(batch, topic, name) end
function RecordEngine:head(batch, topic, name) return self.engine:head(batch, topic, name) end
function RecordEngine:delete(batch, topic, name, origin) return self.engine:delete(batch, topic, name, origin) end
function RecordEngine:notify(batch, names) return self.engine:notify(batch, names) end

-- Creates name at version 0 with {} when it is missing (a realtime subscription).
function RecordEngine:create(name) return self.engine:create(name) end

-- ---- from a coroutine that may wait (the realtime protocol) ----
-- These answer as get, write, delete, create and notify do (with a nil
-- batch), but when the store answers later (Redis) the running coroutine
-- yields, the loop serves everything else, and it is resumed with the
-- answer. With a store that answers at once they are the plain calls.
-- await (optional): how to wait, as an RPC handler's ctx.await does
-- (await(register) -> the values register's callback got): for coroutines
-- someone else resumes (rpc_handlers.lua); by default the running coroutine
-- yields and the store's answer resumes it.

local function resume(co)
  local ok, err = coroutine.resume(co)
  if not ok then log.error("a command that waited for the store failed: %s", err) end
end

local function co_await(register)
  local co, waiting, res = coroutine.running(), false, nil
  register(function(...)
    res = table.pack(...)
    if waiting then resume(co) end
  end)
  if not res then
    waiting = true
    coroutine.yield()
  end
  return table.unpack(res, 1, res.n)
end

function RecordEngine:wait_get(name, await)
  if self.immediate then return self.engine:get(name) end
  return (await or co_await)(function(done)
    local first = table.pack(self.engine:get(name, done))
    if first[1] ~= false then done(table.unpack(first, 1, first.n)) end
  end)
end

-- Runs call(batch) (an engine command) on a batch of its own; returns ok,
-- result_text as the nil-batch call does.
local function wait_cmd(self, call, await)
  local batch
  ;(await or co_await)(function(done)
    batch = self.engine:batch(function() done() end)
    if call(batch) ~= nil then done() end
  end)
  local ok, text = batch:result(1)
  batch:close()
  return ok, text
end

function RecordEngine:wait_write(topic, name, data, path, version, origin, await)
  if self.immediate then return self:write(nil, topic, name, data, path, version, origin) end
  return wait_cmd(self, function(b) return self:write(b, topic, name, data, path, version, origin) end, await)
end

function RecordEngine:wait_delete(topic, name, origin, await)
  if self.immediate then return self:delete(nil, topic, name, origin) end
  return wait_cmd(self, function(b) return self:delete(b, topic, name, origin) end, await)
end

function RecordEngine:wait_notify(names)
  if self.immediate then return self:notify(nil, names) end
  return wait_cmd(self, function(b) return self:notify(b, names) end)
end

function RecordEngine:wait_create(name)
  if self.immediate then return self:create(name) end
  return (wait_cmd(self, function(b) return self.engine:create(name, b) end))
end

-- Whether JSON text may be a whole record's data (the engine's rule: an
-- object or an array), for callers that must answer before writing.
function RecordEngine.whole_data(_, text) return core.whole_record_data(text) end

-- A batch for one POST /api request (csrc/engine_lua.c). With k its
-- commands never wait for the store: one the store answers later returns
-- nil, and k(ok) runs once its result has joined the batch.
function RecordEngine:batch(k) return self.engine:batch(k) end

-- True when writes are not on disk yet (gathering or being written).
function RecordEngine:has_pending()
  return self.core:has_pending()
end

-- Calls fn(ok, err) once the pending writes are on disk (or failed; err is
-- then the client-safe text).
function RecordEngine:after_flush(fn)
  self.core:after_flush(fn)
end

-- Groups written so far (for specs and stats).
function RecordEngine:syncs()
  return self.core:syncs()
end

-- Writes the pending group with one sync (see the top). Called by the loop
-- around every wait; cheap when nothing is pending. Returns true when it did
-- something (then the loop takes another turn before sleeping).
function RecordEngine:flush()
  return self.core:flush()
end

-- Runs the loop until every write is on disk (shutdown). Bounded.
function RecordEngine:drain(max_ms)
  local c = self.core
  if not self.loop then return c:flush() end
  local deadline = self.loop:now() + (max_ms or 10000)
  while (c:has_pending() or c:waiting()) and self.loop:now() < deadline do
    c:flush()
    -- close() may run inside a loop callback: then the store's close waits
    -- for the write in flight, and nothing more can be served anyway
    if c:in_flight() and not pcall(self.loop.run_once, self.loop, 10) then break end
  end
end

-- A storage error as clients may see it (csrc/records.c removes LevelDB's
-- file paths: "IO error: No space left on device").
M.public_error = core.storage_public_error

return M
