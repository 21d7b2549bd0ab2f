-- Authentication: the configured strategies, tried in order; the first that
-- recognises the auth data decides. This release has the open strategy
-- (everyone is accepted); file, webhook and Lua strategies plug in here.
local M = {}
local Auth = {}
local mt = { __index = Auth }

local urandom

-- 128 random bits from the OS, hex encoded.
local function new_token()
  urandom = urandom or assert(io.open("/dev/urandom", "rb"))
  local bytes = urandom:read(16)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
M.new_token = new_token

local strategies = {}

-- open: the user id is `username` when given, else "open".
function strategies.open(_, auth_data)
  local id = type(auth_data) == "table" and auth_data.username
  if type(id) ~= "string" or id == "" then id = "open" end
  return { id = id }
end

-- list: the config's `auth` list of strategy tables ({ type = "open" }, ...)
function M.new(list)
  local chain = {}
  for i, s in ipairs(list or { { type = "open" } }) do
    local fn = strategies[s.type]
    if not fn then return nil, "config key 'auth[" .. i .. "].type': strategy '" .. tostring(s.type) .. "' is not available" end
    chain[#chain + 1] = { fn = fn, options = s }
  end
  return setmetatable({ chain = chain, open = #chain > 0 and list[1].type == "open" }, mt)
end

-- Authenticates a POST /api/auth body. callback(user | nil), user = { id,
-- data = serverData, clientData, token }. May call back at once.
function Auth:login(auth_data, connection, callback)
  for _, s in ipairs(self.chain) do
    local user = s.fn(s.options, auth_data, connection)
    if user then
      user.token = user.token or new_token()
      return callback(user)
    end
  end
  callback(nil)
end

-- Authenticates a POST /api request from its token or authData.
-- callback(user | nil).
function Auth:request(token, auth_data, connection, callback)
  if auth_data ~= nil then
    for _, s in ipairs(self.chain) do
      local user = s.fn(s.options, auth_data, connection)
      if user then return callback(user) end
    end
    return callback(nil)
  end
  if self.open then return callback({ id = "open" }) end
  callback(nil)
end

return M
