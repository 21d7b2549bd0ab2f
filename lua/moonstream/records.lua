-- Records: versioned JSON documents in LevelDB, with group commit.
--
-- The versions, the overlay of changes not yet on disk and the group commit
-- live in C (csrc/records.c, `core.records`), shared with the HTTP fast path
-- (csrc/fastpath.c) so both see each other's writes: every write made while
-- the loop serves one iteration goes into one LevelDB batch, written with one
-- sync at the end of the iteration (records:flush(), called by the server's
-- iteration hook) on the store's writer thread while the next group gathers;
-- requests that wrote (or saw unsynced data) are answered after it.
-- This module adds what Lua needs: names kept in memory only
-- (storageExclusionPrefixes), the change hook for realtime subscribers and
-- the command semantics for the Lua path.
--
-- A stored value is "<version> <json>": the version, one space, the data as
-- JSON text. Record keys live under "r/" so other key spaces (tokens, internal
-- state) can never be reached by a record name.
local core = require "moonstream.core"
local json = require "moonstream.json"
local paths = require "moonstream.paths"
local log = require "moonstream.log"

local encode, decode, raw = json.encode, json.decode, json.raw
local tonumber, type, find, sub = tonumber, type, string.find, string.sub
local math_type = math.type

local M = {}
local Records = {}
local mt = { __index = Records }

local KEY_PREFIX = "r/"
M.KEY_PREFIX = KEY_PREFIX

-- opts: sync (default true), exclusion_prefixes (list of name prefixes kept in
-- memory only), loop (write on the store's writer thread; without it flush
-- writes at once)
function M.new(store, opts)
  opts = opts or {}
  local self = setmetatable({
    store = store,
    loop = opts.loop,
    core = core.records(store, opts.loop, {
      sync = opts.sync ~= false,
      on_error = function(err) log.error("storage write failed: %s", err) end,
    }),
    exclusions = opts.exclusion_prefixes or {},
    memory = {},   -- excluded names -> { version, json }
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
  if #self.exclusions > 0 and excluded(self, name) then
    local m = self.memory[name]
    if m then return m[1], m[2] end
    return nil
  end
  return self.core:get(name)
end

-- Queues a write of version/json_text (no checks: callers decided).
-- Every change, whoever makes it (HTTP, a Lua handler, a realtime client),
-- goes through put or remove (or the fast path, which calls the same hook),
-- which tell records.on_change(name, version, text) (version nil: deleted)
-- so realtime subscribers hear about it.
function Records:put(name, version, text)
  if #self.exclusions > 0 and excluded(self, name) then
    self.memory[name] = { version, text }
  else
    self.core:put(name, version, text)
  end
  if self.on_change then self.on_change(name, version, text) end
end

function Records:remove(name)
  if #self.exclusions > 0 and excluded(self, name) then
    self.memory[name] = nil
  else
    self.core:remove(name)
  end
  if self.on_change then self.on_change(name, nil) end
end

-- True when writes are not on disk yet (gathering or being written).
function Records:has_pending()
  return self.core:has_pending()
end

-- Calls fn(ok, err) once the pending writes are on disk (or failed; err is
-- then the client-safe text).
function Records:after_flush(fn)
  self.core:after_flush(fn)
end

-- Groups written so far (for specs and stats).
function Records:syncs()
  return self.core:syncs()
end

-- A storage error as clients may see it: LevelDB names the file that failed
-- ("IO error: /srv/data/000003.log: No space left on device"); the path
-- stays in the server log, the client gets "IO error: No space left on device".
-- (csrc/records.c does the same for the errors it hands to waiters.)
function M.public_error(err)
  return (tostring(err):gsub("/[^%s:]*: ", ""))
end
local public_error = M.public_error

-- Writes the pending group with one sync (see the top). Called by the loop
-- around every wait; cheap when nothing is pending. Returns true when it did
-- something (then the loop takes another turn before sleeping).
function Records:flush()
  return self.core:flush()
end

-- Runs the loop until every write is on disk (shutdown). Bounded.
function Records:drain(max_ms)
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
-- Command semantics, shared by record and list commands.
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
