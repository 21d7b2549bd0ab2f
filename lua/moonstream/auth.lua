-- Authentication: the configured strategies (auth/open.lua, auth/file.lua,
-- auth/webhook.lua, auth/lua.lua), tried in order; the first that recognises
-- the auth data decides. Logins get a token (tokens.lua); failed attempts are
-- counted per client address and refused for a while once too many.
--
-- A strategy module (auth/strategies.lua) has OPTIONS (its option schema),
-- new(options, env) -> strategy | nil, err and
-- strategy:authenticate(auth_data, connection_data, done) calling, once,
-- done(user) to accept (user = { id, clientData, data = serverData [, token] }),
-- done(false, reason) to refuse, or done(nil) to leave it to the next one.
--
-- Callbacks here get (user) or (nil, reason [, retry_after_seconds]) with
-- reason "invalid" (refused, unknown or expired token), "missing" (no
-- credentials where they are needed), "limited" (too many failures from the
-- address) or "error" (the token could not be stored). Reasons never carry
-- the credentials; nothing here logs auth data.
local core = require "moonstream.core"
local config = require "moonstream.config"
local metrics = require "moonstream.metrics"
local strategies = require "moonstream.auth.strategies"

local type, ipairs, pairs, format = type, ipairs, pairs, string.format

local M = {}
local Auth = {}
local mt = { __index = Auth }

local PRUNE_ABOVE = 10000 -- addresses tracked before expired ones are dropped

-- What strategies get besides their options: where to report errors, the
-- loop, the rpc runner (for waiting Lua functions), the worker pool (for
-- CPU-heavy work such as password hashes), the config's folder.
local function strategy_env(i, opts, nested)
  local prefix = format("config key 'auth[%d].%s", i, nested and "options." or "")
  local env = { loop = opts.loop, rpc = opts.rpc, workers = opts.workers }
  function env.key(name) return prefix .. name .. "'" end
  function env.resolve(path) return config.resolve_path(opts.config_dir, path) end
  return env
end

-- list: the config's `auth` ({ { type = "file", options = {...} }, ...}),
-- checked by config.lua (each strategy's OPTIONS); opts: loop, rpc, workers
-- (core.workers), config_dir, max_attempts, attempts_window (ms), now (ms
-- clock). Missing ones are the config's defaults.
function M.new(list, opts)
  opts = opts or {}
  local defaults = config.defaults()
  list = list or defaults.auth
  local chain, has_open = {}, false
  for i, s in ipairs(list) do
    local options, nested = strategies.options_of(s)
    local strategy, err = strategies.module(s.type).new(options, strategy_env(i, opts, nested))
    if not strategy then return nil, err end
    chain[#chain + 1] = strategy
    if s.type == "open" then has_open = true end
  end
  return setmetatable({
    chain = chain,
    open = has_open,
    tokens = nil, -- set by the server once the store is open
    max_attempts = opts.max_attempts or defaults.maxAuthAttempts,
    window = opts.attempts_window or defaults.authAttemptsWindow,
    now = opts.now or core.now,
    failures = {}, -- address -> { count, reset_at }
    running = {}, -- address -> attempts in the strategies now
    waiting = {}, -- address -> { first, last, [i] = { auth_data, connection, callback } }
    tracked = 0,
  }, mt)
end

function Auth:set_tokens(tokens)
  self.tokens = tokens
end

-- Seconds until address may try again, or nil when it may now.
function Auth:_limited(address)
  local f = address and self.failures[address]
  if not f then return nil end
  local now = self.now()
  if now >= f.reset_at then return nil end
  if f.count < self.max_attempts then return nil end
  return math.max(1, math.ceil((f.reset_at - now) / 1000))
end

function Auth:_failed(address)
  if not address then return end
  local now = self.now()
  local f = self.failures[address]
  if not f or now >= f.reset_at then
    if not f then
      self.tracked = self.tracked + 1
      if self.tracked > PRUNE_ABOVE then self:_prune(now) end
    end
    f = { count = 0, reset_at = now + self.window }
    self.failures[address] = f
  end
  f.count = f.count + 1
end

function Auth:_prune(now)
  local n = 0
  for address, f in pairs(self.failures) do
    if now >= f.reset_at then self.failures[address] = nil else n = n + 1 end
  end
  self.tracked = n
end

-- Runs the chain from strategy i: done(user) or done(nil).
local function run_chain(chain, i, auth_data, connection, done)
  local s = chain[i]
  if not s then return done(nil) end
  s:authenticate(auth_data, connection, function(user)
    if user == nil then return run_chain(chain, i + 1, auth_data, connection, done) end
    if user == false then return done(nil) end
    user.isAuthenticated = true
    done(user)
  end)
end

-- Whether another attempt from address may start now: the failures counted
-- plus the attempts still running stay below the limit, so attempts that
-- finish later (hashing runs off the loop thread) can never exceed it.
function Auth:_may_start(address)
  local f = self.failures[address]
  local failed = (f and self.now() < f.reset_at) and f.count or 0
  return failed + (self.running[address] or 0) < self.max_attempts
end

function Auth:_attempt(address, auth_data, connection, callback)
  if address then self.running[address] = (self.running[address] or 0) + 1 end
  run_chain(self.chain, 1, auth_data, connection, function(user)
    if address then
      local n = self.running[address] - 1
      self.running[address] = n > 0 and n or nil
    end
    if not user then self:_failed(address) end
    -- the waiting attempts first: an error in callback must not strand them
    if address then self:_next(address) end
    if user then callback(user) else callback(nil, "invalid") end
  end)
end

-- Starts (or refuses, once limited) the attempts of address that waited.
function Auth:_next(address)
  local q = self.waiting[address]
  while q and q.first <= q.last do
    local wait = self:_limited(address)
    if not wait and not self:_may_start(address) then return end
    local w = q[q.first]
    q[q.first] = nil
    q.first = q.first + 1
    if q.first > q.last then self.waiting[address] = nil end
    if wait then w[3](nil, "limited", wait) else self:_attempt(address, w[1], w[2], w[3]) end
    q = self.waiting[address]
  end
end

-- Checks auth_data with the strategies, without issuing a token (realtime
-- logins). callback(user) | callback(nil, reason [, retry_after]). Attempts
-- from one address beyond what the limit allows in flight wait their turn.
-- endpoint, for moonstream_logins_total: "http" (POST /api/auth, the
-- default), "api" (authData in a POST /api) or "websocket".
function Auth:authenticate(auth_data, connection, callback, endpoint)
  endpoint = endpoint or "http"
  local address = connection and connection.remoteAddress
  local wait = self:_limited(address)
  if wait then
    metrics.login(endpoint, "limited")
    return callback(nil, "limited", wait)
  end
  local function counted(user, reason, retry_after)
    metrics.login(endpoint, user and "success" or (reason == "limited" and "limited" or "failure"))
    return callback(user, reason, retry_after)
  end
  if address and (self.waiting[address] or not self:_may_start(address)) then
    local q = self.waiting[address] or { first = 1, last = 0 }
    self.waiting[address] = q
    q.last = q.last + 1
    q[q.last] = { auth_data, connection, counted }
    return
  end
  self:_attempt(address, auth_data, connection, counted)
end

-- A POST /api/auth body: as authenticate, and the user gets user.token (the
-- strategy's own, or a new one), stored for tokenTTL.
function Auth:login(auth_data, connection, callback)
  self:authenticate(auth_data, connection, function(user, reason, wait)
    if not user then return callback(nil, reason, wait) end
    if not self.tokens then return callback(user) end
    self.tokens:issue(user, user.token, function(token)
      if not token then return callback(nil, "error") end
      user.token = token
      callback(user)
    end)
  end)
end

-- A POST /api request: authData wins over token; with an open strategy in
-- the chain no credentials are needed (and an unknown token is no error).
function Auth:request(token, auth_data, connection, callback)
  if auth_data ~= nil then return self:authenticate(auth_data, connection, callback, "api") end
  if token ~= nil then
    local address = connection and connection.remoteAddress
    local wait = self:_limited(address)
    if wait then return callback(nil, "limited", wait) end
    local function looked_up(user)
      if user then return callback(user) end
      if self.open then return callback({ id = "open", isAuthenticated = true }) end
      self:_failed(address)
      callback(nil, "invalid")
    end
    if not self.tokens then return looked_up(nil) end
    return self.tokens:lookup_later(token, looked_up) -- cluster mode: answered from the loop
  end
  if self.open then return callback({ id = "open", isAuthenticated = true }) end
  callback(nil, "missing")
end

-- The user of a request without credentials: the open strategy's anonymous
-- user (a fresh table: handlers may keep or change it), or nil when no open
-- strategy is configured.
function Auth:anonymous()
  if self.open then return { id = "open", isAuthenticated = true } end
  return nil
end

function Auth:close()
  for _, s in ipairs(self.chain) do
    if s.close then s:close() end
  end
end

return M
