-- The frames bench/fanout/client.c sends, made by the server's own codecs:
-- challenge, login, subscription to EVENT, and the client's PING; printed
-- as comma-separated hex.  lua5.4 bench/fanout/frames.lua json|binary EVENT
package.path = "lua/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local json = require "moonstream.json"
local codec = require(arg[1] == "json" and "moonstream.realtime.json_codec" or "moonstream.realtime.binary")
local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
print(table.concat({
  hex(codec.encode({ topic = "CONNECTION", action = "CHALLENGE" })),
  hex(codec.encode({ topic = "AUTH", action = "REQUEST", data = '{"username":"fanout"}' })),
  hex(codec.encode({ topic = "EVENT", action = "SUBSCRIBE", names = json.array({ arg[2] }), correlationId = "0" })),
  hex(codec.heartbeat.ping),
}, ","))
