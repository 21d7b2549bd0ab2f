-- Records: versioned JSON documents in LevelDB, with group commit.
--
-- Every write made while the loop serves one iteration goes into one LevelDB
-- write batch; the batch is written with sync = true at the end of the
-- iteration (records:flush(), called by the server's iteration hook), and only
-- then are the requests that wrote (or saw unsynced data) answered. Until the
-- flush, pending writes live in an overlay so later commands see them.
--
-- With a loop (the server's case) the synced write runs on the store's writer
-- thread while the loop keeps serving: the next group gathers in a second
-- batch meanwhile (double buffering) and is written when the first is on
-- disk. Without a loop, flush writes synchronously.
--
-- A stored value is "<version> <json>": the version, one space, the data as
-- JSON text. Record keys live under "r/" so other key spaces (tokens, internal
-- state) can never be reached by a record name.
local json = require "moonstream.json"
local paths = require "moonstream.paths"
local log = require "moonstream.log"

local encode, decode, raw = json.encode, json.decode, json.raw
local tonumber, type, find, sub, byte = tonumber, type, string.find, string.sub, string.byte
local math_type = math.type

local M = {}
local Records = {}
local mt = { __index = Records }

local KEY_PREFIX = "r/"
M.KEY_PREFIX = KEY_PREFIX

local DELETED = false -- overlay marker for a pending delete

-- opts: sync (default true), exclusion_prefixes (list of name prefixes kept in
-- memory only), loop (write on the store's writer thread; see above)
function M.new(store, opts)
  opts = opts or {}
  local self = setmetatable({
    store = store,
    loop = opts.loop,
    batch = store:batch(),
    inflight = nil, -- { pending = overlay } of the group being written
    sync = opts.sync ~= false,
    exclusions = opts.exclusion_prefixes or {},
    pending = {},  -- name -> { version, json } or DELETED, until the next flush
    memory = {},   -- excluded names -> { version, json }
    waiters = {},  -- functions(ok, err) to call after the next flush
    nwaiters = 0,
    dirty = false,
    syncs = 0,     -- batches written (for specs and stats)
  }, mt)
  return self
end

local function excluded(self, name)
  local ex = self.exclusions
  for i = 1, #ex do
    local p = ex[i]
    if sub(name, 1, #p) == p then return true end
  end
  return false
end

-- Current state of a record: version, json_text; nil when it does not exist;
-- nil, nil, err when the store failed or the entry is corrupt.
function Records:get(name)
  local p = self.pending[name]
  if p == nil and self.inflight then p = self.inflight.pending[name] end
  if p ~= nil then
    if p == DELETED then return nil end
    return p[1], p[2]
  end
  if #self.exclusions > 0 and excluded(self, name) then
    local m = self.memory[name]
    if m then return m[1], m[2] end
    return nil
  end
  local v, err = self.store:get(KEY_PREFIX .. name)
  if v == nil then return nil, nil, err end
  local sp = find(v, " ", 1, true)
  local version = sp and tonumber(sub(v, 1, sp - 1))
  if not version or math_type(version) ~= "integer" then
    return nil, nil, "corrupt entry for record \"" .. name .. "\""
  end
  return version, sub(v, sp + 1)
end

-- Queues a write of version/json_text (no checks: callers decided).
-- Every change, whoever makes it (HTTP, a Lua handler, a realtime client),
-- goes through put or remove, which tell records.on_change(name, version,
-- text) (version nil: deleted) so realtime subscribers hear about it.
function Records:put(name, version, text)
  if #self.exclusions > 0 and excluded(self, name) then
    self.memory[name] = { version, text }
  else
    self.pending[name] = { version, text }
    self.batch:put(KEY_PREFIX .. name, version .. " " .. text)
    self.dirty = true
  end
  if self.on_change then self.on_change(name, version, text) end
end

function Records:remove(name)
  if #self.exclusions > 0 and excluded(self, name) then
    self.memory[name] = nil
  else
    self.pending[name] = DELETED
    self.batch:delete(KEY_PREFIX .. name)
    self.dirty = true
  end
  if self.on_change then self.on_change(name, nil) end
end

-- True when writes are not on disk yet (gathering or being written).
function Records:has_pending()
  return self.dirty or self.inflight ~= nil
end

-- Calls fn(ok, err) once the pending writes are on disk (or failed).
function Records:after_flush(fn)
  local n = self.nwaiters + 1
  self.waiters[n] = fn
  self.nwaiters = n
end

-- A storage error as clients may see it: LevelDB names the file that failed
-- ("IO error: /srv/data/000003.log: No space left on device"); the path
-- stays in the server log, the client gets "IO error: No space left on device".
function M.public_error(err)
  return (tostring(err):gsub("/[^%s:]*: ", ""))
end
local public_error = M.public_error

-- Called with the outcome of writing one group: wakes its waiters.
local function wake(waiters, n, ok, err)
  if not ok then
    log.error("storage write failed: %s", err)
    err = public_error(err)
  end
  for i = 1, n do waiters[i](ok, err) end
end

-- Writes the pending batch with one sync and wakes the waiters. Called by
-- the loop around every wait; cheap when nothing is pending. Returns true
-- when it did something (then the loop takes another turn before sleeping).
function Records:flush()
  if self.inflight then return false end -- the next group waits for this one
  if not self.dirty and self.nwaiters == 0 then return false end
  local waiters, n = self.waiters, self.nwaiters
  self.waiters, self.nwaiters = {}, 0
  if not self.dirty then -- waiters that only saw data now on disk
    wake(waiters, n, true)
    return true
  end
  local batch = self.batch
  self.syncs = self.syncs + 1
  self.dirty = false
  if not self.loop then
    local ok, err = self.store:write(batch, self.sync)
    batch:clear()
    self.pending = {}
    wake(waiters, n, ok, err)
    return true
  end
  self.inflight = { pending = self.pending }
  self.pending = {}
  self.batch = self.spare or self.store:batch()
  self.spare = nil
  local function done(ok, err)
    self.inflight = nil
    batch:clear()
    self.spare = batch
    wake(waiters, n, ok, err)
  end
  local ok, err = self.store:write_async(self.loop, batch, self.sync, done)
  if not ok then done(nil, err) end
  return true
end

-- Runs the loop until every write is on disk (shutdown). Bounded.
function Records:drain(max_ms)
  if not self.loop then return self:flush() end
  local deadline = self.loop:now() + (max_ms or 10000)
  while (self.dirty or self.inflight or self.nwaiters > 0) and self.loop:now() < deadline do
    self:flush()
    -- close() may run inside a loop callback: then the store's close waits
    -- for the write in flight, and nothing more can be served anyway
    if self.inflight and not pcall(self.loop.run_once, self.loop, 10) then break end
  end
end

-- Iterates stored record names (not pending ones): for name, version, text in records:each(prefix)
function Records:each(prefix)
  local step, it, _, closer = self.store:iterate(KEY_PREFIX .. (prefix or ""))
  local plen = #KEY_PREFIX
  return function()
    local k, v = step(it)
    if k == nil then return nil end
    local sp = find(v, " ", 1, true)
    return sub(k, plen + 1), tonumber(sub(v, 1, sp - 1)), sub(v, sp + 1)
  end, nil, nil, closer
end

---------------------------------------------------------------------------
-- Command semantics (spec section 4), shared by record and list commands.
-- Each returns a result table; `topic` is "record" or "list" for errors.
---------------------------------------------------------------------------

local function failure(topic, event, message)
  return { success = false, error = message, errorTopic = topic, errorEvent = event }
end
M.failure = failure

local function storage_failure(topic, name, err)
  return failure(topic, "RECORD_LOAD_ERROR", "Record read failed. Record \"" .. name .. "\" could not be loaded: " .. public_error(err or "storage error") .. ".")
end

function Records:cmd_read(name, topic)
  local version, text, err = self:get(name)
  if err then return storage_failure(topic, name, err) end
  if version == nil then
    return failure(topic, "RECORD_NOT_FOUND", "Record read failed. Record \"" .. name .. "\" could not be found.")
  end
  return { success = true, version = version, data = raw(text) }
end

function Records:cmd_head(name, topic)
  local version, _, err = self:get(name)
  if err then return storage_failure(topic, name, err) end
  return { success = true, version = version or -1 }
end

local function version_failure(topic, event, message, version, text)
  local r = failure(topic, event, message)
  r.currentVersion = version
  r.currentData = text and raw(text) or json.null
  return r
end

local function is_container(v)
  return type(v) == "table" and (getmetatable(v) == nil or getmetatable(v) == json.array_mt)
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

-- write: data, optional path (the command's string), optional version
-- (integer >= -1; nil or -1 = forced write). data nil with a path erases
-- that path (realtime clients only: HTTP commands always carry data).
-- Returns the result table; the write itself becomes durable at the next flush.
function Records:cmd_write(name, data, path, version, topic)
  local current, text, err = self:get(name)
  if err then
    return failure(topic, "RECORD_UPDATE_ERROR", "Record update failed. Record \"" .. name .. "\" could not be loaded: " .. public_error(err) .. ".")
  end
  local cur = current or 0
  if version ~= nil and version ~= -1 then
    if version <= cur then
      return version_failure(topic, "VERSION_EXISTS",
        "Record update failed. Version " .. cur .. " exists for record \"" .. name .. "\".", current or 0, text)
    elseif version > cur + 1 then
      return version_failure(topic, "INVALID_VERSION",
        "Record update failed. Version " .. version .. " is not valid for record \"" .. name .. "\".", current or 0, text)
    end
  end
  local new_text
  local tokens
  if path ~= nil and path ~= "" then
    local perr
    tokens, perr = paths.parse(path)
    if not tokens then return failure(topic, "INVALID_MESSAGE_DATA", perr) end
    if #tokens == 0 then tokens = nil end -- " . " has no parts: no path
  end
  if tokens then
    local root
    if text then
      local derr
      root, derr = decode(text)
      if derr then
        return failure(topic, "RECORD_UPDATE_ERROR", "Record update failed. Record \"" .. name .. "\" is corrupt.")
      end
    end
    local serr
    if data == nil then
      root = erase(root, tokens)
    else
      root, serr = paths.set(root, tokens, data)
    end
    if root == nil then return failure(topic, "INVALID_MESSAGE_DATA", serr) end
    local eerr
    new_text, eerr = encode(root)
    if not new_text then return failure(topic, "INVALID_MESSAGE_DATA", eerr) end
  else
    if not is_container(data) then
      return failure(topic, "INVALID_MESSAGE_DATA",
        "Record update failed. The data of record \"" .. name .. "\" must be an object or an array.")
    end
    local eerr
    new_text, eerr = encode(data)
    if not new_text then return failure(topic, "INVALID_MESSAGE_DATA", eerr) end
  end
  self:put(name, cur + 1, new_text)
  return { success = true }
end

function Records:cmd_delete(name, topic)
  local current, _, err = self:get(name)
  -- a corrupt entry is removed too; a failing store reports at the flush
  if current ~= nil or err then self:remove(name) end
  return { success = true }
end

return M
