-- The auth strategies moonstream has, in the order they are listed in
-- messages, and the two shapes a strategy entry of the config's `auth` list
-- may take. Each strategy module (auth/<name>.lua) exports OPTIONS, its
-- option schema, checked by the config's schema engine (config/schema.lua),
-- and new(options, env) (auth.lua).
local pairs, type = pairs, type

local M = {}

M.NAMES = { "open", "file", "webhook", "lua" }

function M.module(name)
  return require("moonstream.auth." .. name)
end

-- deepstream's shape { type, options = {...} }, or the options beside type.
-- Returns options, nested (true: inside `options`) | nil, text, key path
-- (relative to the entry).
function M.options_of(entry)
  local options = entry.options
  if options == nil then
    options = {}
    for k, v in pairs(entry) do if k ~= "type" then options[k] = v end end
    return options, false
  end
  for k in pairs(entry) do
    if k ~= "type" and k ~= "options" then
      return nil, ": put strategy options inside 'options'", { k }
    end
  end
  if type(options) ~= "table" then return nil, "must be a table", { "options" } end
  return options, true
end

return M
