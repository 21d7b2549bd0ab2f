-- Realtime wire codecs: messages per second for decode and encode, binary
-- (lua/moonstream/realtime/binary.lua) and json (json_codec.lua), on typical
-- frames. Run by hand after `make`: lua5.4 bench/codec.lua [seconds per case]
package.path = "lua/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local core = require "moonstream.core"
local binary = require "moonstream.realtime.binary"
local json_codec = require "moonstream.realtime.json_codec"

local SECONDS = tonumber(arg[1]) or 1

local messages = {
  { "event emit", { topic = "EVENT", action = "EMIT", name = "chat/room-1", data = '{"user":"ann","text":"hello there"}' } },
  { "record update", { topic = "RECORD", action = "UPDATE", name = "cars/1", version = 12,
    data = '{"brand":"bmw","year":2020,"tags":["a","b"]}', isWriteAck = false } },
  { "subscribe ack", { topic = "EVENT", action = "SUBSCRIBE", correlationId = "17", isAck = true } },
  { "rpc request", { topic = "RPC", action = "REQUEST", name = "add-two", correlationId = "mwzck7p4-1kjzlfej4hc",
    data = '{"numA":1,"numB":2}' } },
}

local function rate(fn)
  local n, t0 = 0, core.now()
  local deadline = t0 + SECONDS * 1000
  repeat
    for _ = 1, 1000 do fn() end
    n = n + 1000
  until core.now() >= deadline
  return n / ((core.now() - t0) / 1000)
end

print(string.format("%-14s %12s %12s %12s %12s", "message", "bin decode/s", "bin encode/s", "json decode/s", "json encode/s"))
for _, case in ipairs(messages) do
  local name, msg = case[1], case[2]
  local bframe, jframe = binary.encode(msg), json_codec.encode(msg)
  print(string.format("%-14s %12.0f %12.0f %12.0f %12.0f", name,
    rate(function() binary.decode(bframe) end), rate(function() binary.encode(msg) end),
    rate(function() json_codec.decode(jframe) end), rate(function() json_codec.encode(msg) end)))
end
