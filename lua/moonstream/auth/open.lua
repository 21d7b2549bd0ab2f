-- open: everyone is accepted; the user id is `username` when it is a
-- non-empty string, else "open". No options.
local M = {}
local Open = {}
local mt = { __index = Open }

function M.new(options, env)
  local ok, err = env.check_keys(options, {})
  if not ok then return nil, err end
  return setmetatable({}, mt)
end

function Open:authenticate(auth_data, _, done)
  local id = type(auth_data) == "table" and auth_data.username
  if type(id) ~= "string" or id == "" then id = "open" end
  done({ id = id })
end

return M
