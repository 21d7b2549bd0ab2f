-- Who answers an RPC that no Lua handler has: the realtime clients that
-- provide it (realtime/rpc_topic.lua). The RPC handlers exist from
-- moonstream.new() on, the realtime server only once the server listens, so
-- this registry is made first and given to both: the handlers ask it, the
-- realtime server's RPC topic registers itself in it when it is built.
local M = {}
local RpcProviders = {}
local mt = { __index = RpcProviders }

function M.new()
  return setmetatable({ list = {} }, mt)
end

-- provider:make_from_server(name, data, done) -> false (it has no provider
-- of name) | result | nil (done(result) is called later). Returns the
-- function that takes it out again.
function RpcProviders:register(provider)
  local list = self.list
  list[#list + 1] = provider
  return function()
    for i = #list, 1, -1 do
      if list[i] == provider then table.remove(list, i) return end
    end
  end
end

-- As provider:make_from_server, asking each registered provider in turn:
-- false when none has the name.
function RpcProviders:make(name, data, done)
  for _, provider in ipairs(self.list) do
    local result = provider:make_from_server(name, data, done)
    if result ~= false then return result end
  end
  return false
end

return M
