-- moonstream: a realtime data server speaking the deepstream HTTP API.
--   local moonstream = require "moonstream"
--   local server = assert(moonstream.new({ port = 6020 }))
--   server:rpc("add-two", function(data) return data.numA + data.numB end)
--   assert(server:start())
local server = require "moonstream.server"
local config = require "moonstream.config"

local M = {
  VERSION = "0.2.0",
  json = require "moonstream.json",
}

-- moonstream.new(config_table) -> server | nil, err
function M.new(cfg)
  return server.new(cfg)
end

-- moonstream.load(path) -> server | nil, err: a server from a config file.
function M.load(path)
  local cfg, err = config.load(path)
  if not cfg then return nil, err end
  return server.new(cfg, true)
end

return M
