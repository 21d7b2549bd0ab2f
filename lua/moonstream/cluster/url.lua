-- The Redis URL of `cluster.redis`: redis://[[user]:password@]host[:port][/db]
-- (user is accepted and ignored: Redis 7's default user). One parser for the
-- config check and the connection.
local M = {}

M.DEFAULT_PORT = 6379

-- digits -> integer, default when empty, nil when too big for an integer
-- (tonumber gives a float then, which must not pass as the default).
local function integer(digits, default)
  if digits == "" then return default end
  return math.tointeger(tonumber(digits))
end

-- url -> { host, port, db, password|nil } | nil, reason
function M.parse(url)
  if type(url) ~= "string" then return nil, "must be a string redis://host[:port][/db]" end
  local rest = url:match("^redis://(.+)$")
  if not rest then return nil, "must start with redis:// (got '" .. url .. "')" end
  local password
  local auth, after = rest:match("^([^@/]*)@(.+)$")
  if auth then
    password = auth:match("^[^:]*:(.+)$") or (auth ~= "" and not auth:find(":", 1, true) and auth or nil)
    rest = after
  end
  local hostport, db = rest:match("^([^/]+)/?(%d*)$")
  if not hostport then return nil, "has no host or a bad database number (got '" .. url .. "')" end
  local host, port = hostport:match("^%[(.+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]+):?(%d*)$") end
  if not host then return nil, "has a bad host or port (got '" .. url .. "')" end
  port = integer(port, M.DEFAULT_PORT)
  if not port or port < 1 or port > 65535 then return nil, "has a port out of range (got '" .. url .. "')" end
  db = integer(db, 0)
  if not db then return nil, "has a bad database number (got '" .. url .. "')" end
  return { host = host, port = port, db = db, password = password }
end

return M
