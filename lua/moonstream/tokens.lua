-- Login tokens: 256 random bits from the OS, handed to the client once and
-- kept in LevelDB only as their SHA-256, so a copy of the database does not
-- reveal a usable token. Each entry holds the user (id, clientData,
-- serverData) and its expiry; entries live under their own key prefix "t/",
-- apart from records ("r/"), and are written with sync (on the worker pool's
-- threads: the loop never waits for the disk), so a token the client got
-- survives a crash and a restart. In cluster mode the store is Redis
-- (cluster/kv.lua, the same calls), shared by every node.
--
--   tokens.new(store, { ttl = ms, now = fn, workers = pool })   -> tokens
--   tokens:issue(user, token, done)  done(token) | done(nil, err) once stored
--                                    (token: supplied by a strategy, or nil)
--   tokens:lookup_later(token, k)    k(user | nil), from the loop in cluster mode
--   tokens:lookup(token)          -> user | nil          (unknown or expired: nil)
--   tokens:revoke(token)          -> true if it existed
--   tokens:revoke_hash(hex)       -> true if it existed  (the CLI passes hashes, never tokens)
--   tokens:revoke_user(id)        -> number revoked
--   tokens:sweep()                -> number of expired entries removed
local core = require "moonstream.core"
local json = require "moonstream.json"

local sha256, random_bytes = core.sha256, core.random_bytes
local encode, decode = json.encode, json.decode
local format, byte, gsub = string.format, string.byte, string.gsub
local type = type

local M = {}
local Tokens = {}
local mt = { __index = Tokens }

local KEY_PREFIX = "t/"
M.KEY_PREFIX = KEY_PREFIX
local TOKEN_BYTES = 32
local MAX_TOKEN_LENGTH = 4096 -- a client's token longer than this is not one of ours

local function hex(s)
  return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end
M.hex = hex

-- The LevelDB key of a token: its SHA-256 in hex.
function M.hash(token)
  return hex(sha256(token))
end

-- opts.ttl: lifetime in ms; opts.now: clock in ms (specs move it forward).
function M.new(store, opts)
  return setmetatable({
    store = store,
    workers = opts.workers, -- core.workers: LevelDB writes off the loop; nil: the store's own put
    ttl = opts.ttl,
    now = opts.now or function() return core.now() end,
    wall = opts.wall or function() return os.time() * 1000 end,
  }, mt)
end

-- Expiry is wall-clock time (ms since the epoch) so it means the same after a
-- restart; the monotonic loop clock restarts with the process.
local function entry(self, user)
  local text, err = encode({
    id = user.id,
    clientData = user.clientData == nil and json.null or user.clientData,
    serverData = user.data == nil and json.null or user.data,
    expires = self.wall() + self.ttl,
  })
  return text, err
end

-- Stores a token for user ({ id, clientData, data = serverData }) and calls
-- done(token) once it is on disk. A strategy (webhook) may supply its own
-- token; it is stored the same way.
function Tokens:issue(user, token, done)
  if token == nil then
    local bytes, rerr = random_bytes(TOKEN_BYTES)
    if not bytes then return done(nil, rerr) end
    token = hex(bytes)
  end
  local text, err = entry(self, user)
  if not text then return done(nil, "cannot store the token: " .. tostring(err)) end
  local key = KEY_PREFIX .. M.hash(token)
  if not self.workers then -- the cluster's Redis (cluster/kv.lua): answers from the loop
    return self.store:put_later(key, text, function(ok, perr)
      if ok then done(token) else done(nil, perr) end
    end)
  end
  local ok, perr = self.workers:put(self.store, key, text, function(stored, werr)
    if stored then done(token) else done(nil, werr) end
  end)
  if not ok then done(nil, perr) end
end

local function parse(text)
  local t = decode(text)
  if type(t) ~= "table" or type(t.id) ~= "string" or math.type(t.expires) == nil then return nil end
  return t
end

-- The stored key of a token, or nil when it cannot be one.
local function key_of(token)
  if type(token) ~= "string" or token == "" or #token > MAX_TOKEN_LENGTH then return nil end
  return KEY_PREFIX .. M.hash(token)
end

-- The user of the stored text of key, or nil (unknown, expired).
local function user_of(self, key, text)
  if not text then return nil end
  local t = parse(text)
  if not t then return nil end
  if t.expires <= self.wall() then
    self.store:delete(key, false) -- expired: gone at the next lookup or sweep anyway
    return nil
  end
  return {
    id = t.id,
    clientData = t.clientData ~= json.null and t.clientData or nil,
    data = t.serverData ~= json.null and t.serverData or nil,
    isAuthenticated = true,
  }
end

-- The user a token belongs to, or nil (unknown, expired, or not a string).
function Tokens:lookup(token)
  local key = key_of(token)
  return key and user_of(self, key, (self.store:get(key)))
end

-- As lookup, answering k(user | nil): from the loop when the store answers
-- later (the cluster's Redis), which serves everything else meanwhile.
function Tokens:lookup_later(token, k)
  local key = key_of(token)
  if not key then return k(nil) end
  if not self.store.get_later then return k(user_of(self, key, (self.store:get(key)))) end
  self.store:get_later(key, function(text) k(user_of(self, key, text)) end)
end

function Tokens:revoke_hash(hash)
  local key = KEY_PREFIX .. hash
  if not self.store:get(key) then return false end
  assert(self.store:delete(key, true))
  return true
end

function Tokens:revoke(token)
  if type(token) ~= "string" then return false end
  return self:revoke_hash(M.hash(token))
end

-- Removes every entry for which drop(entry) is true; returns how many.
local function remove_where(self, drop)
  local doomed = {}
  local step, it, _, closer = self.store:iterate(KEY_PREFIX)
  if not step then return nil, it end -- the cluster's store (cluster/kv.lua): Redis failed
  for k, v in step, it do
    local t = parse(v)
    if t == nil or drop(t) then doomed[#doomed + 1] = k end
  end
  if closer then closer:close() end
  if #doomed == 0 then return 0 end
  local batch = self.store:batch()
  for _, k in ipairs(doomed) do batch:delete(k) end
  local ok, err = self.store:write(batch, true)
  batch:close()
  if not ok then return nil, err end
  return #doomed
end

function Tokens:revoke_user(id)
  return remove_where(self, function(t) return t.id == id end)
end

function Tokens:sweep()
  local now = self.wall()
  return remove_where(self, function(t) return t.expires <= now end)
end

return M
