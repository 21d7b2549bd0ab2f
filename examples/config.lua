-- An example configuration: RPC handlers from a folder, event listeners,
-- and a few of deepstream's keys. Start it with
--   bin/moonstream start examples/config.lua
return {
  host = "127.0.0.1",
  port = 6020,
  storage = { path = "./data" },          -- relative to this file's folder
  maxMessageSize = 1048576,
  requestTimeout = 20000,
  rpc = {
    handlers = "handlers",                -- handlers/<rpc-name>.lua, each returning a function
    responseTimeout = 10000,
  },
  events = {
    listeners = { chat = "listeners/chat.lua" },
  },
  storageExclusionPrefixes = { "tmp/" }, -- records named tmp/... live in memory only
  logLevel = "info",
}
