-- open: everyone is accepted; the user id is `username` when it is a
-- non-empty string, else "open". No options.
local M = {}
local Open = {}
local mt = { __index = Open }

-- No options: the config's schema engine refuses any.
M.OPTIONS = { name = "the 'open' strategy", fields = {} }

function M.new()
  return setmetatable({}, mt)
end

function Open:authenticate(auth_data, _, done)
  local id = type(auth_data) == "table" and auth_data.username
  if type(id) ~= "string" or id == "" then id = "open" end
  done({ id = id })
end

return M
