-- file: users with hashed passwords, clientData and serverData, read at start
-- from a Lua file, a JSON file or deepstream's own users.yml, unchanged.
--
--   { type = "file", options = { users = "users.yml", hash = "md5", iterations = 100, keyLength = 32 } }
--
-- A stored password is deepstream's format: base64(PBKDF2(password, salt,
-- iterations, keyLength, hash)) followed by the salt, where the salt is the
-- text after the first 4 * ceil(keyLength / 3) characters, used as is (its
-- bytes, not base64-decoded: deepstream passes the string to Node's pbkdf2).
-- The parameters are not in the hash, so the options must be the ones the
-- hashes were made with: deepstream's `deepstream hash` used md5, 100, 32 in
-- its sample config; `moonstream hash` uses DEFAULTS below.
--
-- Recognises auth data with string `username` and `password` of a known user;
-- a wrong password refuses. Anything else is left to the next strategy.
local core = require "moonstream.core"
local checks = require "moonstream.config.checks"
local engine = require "moonstream.config.engine"
local json = require "moonstream.json"
local loader = require "moonstream.config.loader"
local files = require "moonstream.config.files"

local pbkdf2, base64_encode, equal, random_bytes = core.pbkdf2, core.base64_encode, core.equal, core.random_bytes
local type, pairs, next, tostring, format, sub = type, pairs, next, tostring, string.format, string.sub

local M = {}
local File = {}
local mt = { __index = File }

local function check_users(v)
  if (type(v) == "string" and v ~= "") or type(v) == "table" then return v end
  return nil, "must be a file path or a table of users"
end

local function check_hash(v)
  if type(v) == "string" and pbkdf2("", "", 1, 1, v) then return v end
  return nil, format("must be a digest name such as 'sha256' or 'md5' (got %s)",
    type(v) == "string" and "'" .. v .. "'" or type(v))
end

local function integer_up_to(limit)
  return checks.integer_in(1, limit, "an integer from 1 to " .. limit)
end

-- The options, checked by the config's schema engine. The defaults are
-- moonstream's, for `moonstream hash` too: PBKDF2-HMAC-SHA256, 100000
-- iterations (about 25 ms per login on a current core: slow for someone
-- guessing; the server hashes on worker threads, once per login, and then
-- works with the token), 32-byte key.
M.OPTIONS = { name = "the 'file' strategy", fields = {
  { key = "users", required = true, check = check_users },
  { key = "hash", default = "sha256", check = check_hash },
  { key = "iterations", default = 100000, check = integer_up_to(10000000) },
  { key = "keyLength", default = 32, check = integer_up_to(1024) },
} }
M.DEFAULTS = engine.defaults_of(M.OPTIONS.fields)

local SALT_BYTES = 16

local function base64_key_length(key_length)
  return 4 * ((key_length + 2) // 3)
end

-- The stored form of password: base64(key) .. salt, salt = base64 of 16
-- random bytes (as deepstream's createHash). Returns text | nil, err.
function M.make_hash(password, settings)
  local salt_bytes, err = random_bytes(SALT_BYTES)
  if not salt_bytes then return nil, err end
  local salt = base64_encode(salt_bytes)
  local key
  key, err = pbkdf2(password, salt, settings.iterations, settings.keyLength, settings.hash)
  if not key then return nil, err end
  return base64_encode(key) .. salt
end

-- The salt of stored, the base64 key it expects, and whether it is long
-- enough to hold both (deepstream's format for settings).
local function parts(stored, settings)
  local n = base64_key_length(settings.keyLength)
  return sub(stored, n + 1), sub(stored, 1, n), #stored > n
end

local function matches(key, expected, well_formed)
  return key ~= nil and well_formed and equal(base64_encode(key), expected)
end

-- True when password matches stored, hashed on the calling thread (the CLI,
-- the specs); logins use File:_verify.
function M.verify(password, stored, settings)
  local salt, expected, well_formed = parts(stored, settings)
  return matches(pbkdf2(password, salt, settings.iterations, settings.keyLength, settings.hash), expected, well_formed)
end

-- Reads a users file: .yml/.yaml (deepstream), .json, or a Lua file that
-- returns the table (run with an empty environment: it is data).
local function load_users(path)
  local text, err = files.read_text(path)
  if not text then return nil, "cannot read users file: " .. err end
  if path:match("%.ya?ml$") then
    -- lyaml is needed only for YAML users files: without it, an error, not a
    -- raise. yamldoc keeps an empty list `[]` an array (lyaml makes it {}),
    -- which Valve rules see in user.data (bounded in size and depth as below)
    local found, yamldoc = pcall(require, "moonstream.yamldoc")
    if not found then
      return nil, format("users file '%s' needs the lyaml rock (Debian: lua-yaml), which is not installed", path)
    end
    local doc, yerr = yamldoc.parse(text, format("users file '%s'", path))
    if doc == nil then return nil, yerr end
    return doc
  elseif path:match("%.json$") then
    local doc, jerr = json.decode(text)
    if jerr then return nil, format("users file '%s' is not valid JSON: %s", path, jerr) end
    return doc
  end
  local ok, result, stage = loader.run(text, path, {})
  if ok then return result end
  if stage == "syntax" then return nil, "users file " .. result end
  return nil, format("users file '%s' failed to load: %s", path, result)
end

local function value(v)
  if v == json.null then return nil end
  return v
end

-- Checks the users table: name -> { password = string, clientData?, serverData? }.
local function check_user_table(users, where)
  if type(users) ~= "table" or json.is_array(users) then
    return nil, where .. " must be a table of user name -> { password = ..., clientData, serverData }"
  end
  local out, count = {}, 0
  for name, u in pairs(users) do
    if type(name) ~= "string" then return nil, format("%s: user names must be strings (got %s)", where, type(name)) end
    if type(u) ~= "table" or type(u.password) ~= "string" or u.password == "" then
      return nil, format("%s: user '%s' has no password", where, name)
    end
    for k in pairs(u) do
      if k ~= "password" and k ~= "clientData" and k ~= "serverData" then
        return nil, format("%s: user '%s' has an unknown key '%s' (password, clientData, serverData)", where, name,
          tostring(k))
      end
    end
    out[name] = { password = u.password, clientData = value(u.clientData), serverData = value(u.serverData) }
    count = count + 1
  end
  if count == 0 then return nil, where .. " has no users" end
  return out
end

-- options: checked by the config (OPTIONS); env: auth.lua's.
function M.new(options, env)
  local o = engine.with_defaults(options, M.OPTIONS.fields)
  local settings = { hash = o.hash, iterations = o.iterations, keyLength = o.keyLength }
  local users, err = o.users, nil
  local where = env.key("users")
  if type(users) == "string" then
    local path = env.resolve(users)
    users, err = load_users(path)
    if users == nil and err then return nil, where .. ": " .. err end
    where = "users file '" .. path .. "'"
  end
  users, err = check_user_table(users, where)
  if not users then return nil, err end
  -- A known user's hash, to spend the same time on unknown names.
  local _, any = next(users)
  -- Hashing runs on the server's worker threads (csrc/workers.c): a login
  -- costs the loop thread nothing while PBKDF2 runs, so a storm of logins
  -- leaves every other request and message flowing.
  return setmetatable({ users = users, settings = settings, decoy = any.password, workers = env.workers }, mt)
end

-- done(true | false): whether password matches stored, hashed off the loop
-- thread. A pool that cannot take the job (closed, "busy") refuses.
function File:_verify(password, stored, done)
  local s = self.settings
  local salt, expected, well_formed = parts(stored, s)
  local ok = self.workers:pbkdf2(password, salt, s.iterations, s.keyLength, s.hash, function(key)
    done(matches(key, expected, well_formed))
  end)
  if not ok then done(false) end
end

function File:authenticate(auth_data, _, done)
  if type(auth_data) ~= "table" then return done(nil) end
  local name, password = auth_data.username, auth_data.password
  if type(name) ~= "string" or type(password) ~= "string" then return done(nil) end
  local user = self.users[name]
  -- an unknown name costs a hash of the decoy: no timing oracle
  self:_verify(password, user and user.password or self.decoy, function(good)
    if not user then return done(nil) end
    if not good then return done(false, "wrong password") end
    done({ id = name, clientData = user.clientData, data = user.serverData })
  end)
end

return M
