-- Topic and action names as the realtime modules write them: T.EVENT is
-- "EVENT", A.EVENT.SUBSCRIBE is "SUBSCRIBE" (message.lua's message tables
-- carry names). A misspelt name raises at once instead of matching nothing.
local message = require "moonstream.realtime.message"

local M = { T = {}, A = {} }

local strict = { __index = function(_, k) error("unknown realtime name '" .. tostring(k) .. "'", 2) end }

for topic in pairs(message.TOPIC) do M.T[topic] = topic end
for topic, actions in pairs(message.ACTION) do
  local t = {}
  for action in pairs(actions) do t[action] = action end
  M.A[topic] = setmetatable(t, strict)
end
setmetatable(M.T, strict)
setmetatable(M.A, strict)

-- The names a bulk message is about: `names`, or the single `name`.
function M.names_of(msg)
  local list = msg.names
  if type(list) == "table" then return list end
  if type(msg.name) == "string" then return { msg.name } end
  return {}
end

return M
