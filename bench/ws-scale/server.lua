-- The server for bench/ws-scale/run: moonstream on its default configuration
-- (plus what the run passes), in this process so that the run can ask it for
-- its own memory figures. Every 100 ms it looks for <dir>/measure; when there,
-- it collects Lua garbage fully and writes "<VmRSS kB> <Lua heap kB>" to
-- <dir>/stats (then removes the request).
--   lua5.4 bench/ws-scale/server.lua DIR PORT_FILE HEARTBEAT_MS
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local moonstream = require "moonstream"
local dir, port_file, heartbeat = arg[1], arg[2], tonumber(arg[3])

local server = assert(moonstream.new({
  port = 0, logLevel = os.getenv("WS_SCALE_LOG") or "warn", storage = { path = dir .. "/data" },
  connectionLimit = 60000, realtime = { heartbeatInterval = heartbeat },
}))

local function rss_kb()
  local f = assert(io.open("/proc/self/status"))
  local kb = f:read("a"):match("VmRSS:%s*(%d+)")
  f:close()
  return tonumber(kb)
end

local function check()
  local req = io.open(dir .. "/measure")
  if req then
    req:close()
    os.remove(dir .. "/measure")
    collectgarbage("collect")
    collectgarbage("collect")
    local f = assert(io.open(dir .. "/stats.tmp", "w"))
    f:write(string.format("%d %.0f\n", rss_kb(), collectgarbage("count")))
    f:close()
    os.rename(dir .. "/stats.tmp", dir .. "/stats")
  end
  server.loop:timer(100, check)
end
server.loop:timer(0, function()
  local f = assert(io.open(port_file, "w"))
  f:write(server:port(), "\n")
  f:close()
  check()
end)
assert(server:start())
