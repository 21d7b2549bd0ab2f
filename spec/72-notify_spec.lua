-- systemd's Type=notify protocol: `moonstream start` sends READY=1 to the
-- datagram socket named by $NOTIFY_SOCKET once it listens, and STOPPING=1
-- when SIGTERM starts the shutdown. The socket here is a real AF_UNIX
-- datagram socket (luasocket's socket.unix.dgram), as systemd's is.
local H = require "spec.support.helpers"
local socket = require "socket"
local unix = require "socket.unix"
local core = require "moonstream.core"

local WAIT_SECONDS = 60 -- a deadline for a shared, slow machine, not a sleep

local function lines_of(datagram)
  local set = {}
  for line in datagram:gmatch("[^\n]+") do set[#set + 1] = line end
  return set
end

describe("systemd notify", function()
  local dir, pid, sock

  before_each(function()
    dir = H.tmpdir()
  end)

  after_each(function()
    if pid then os.execute("kill -9 " .. pid .. " 2>/dev/null") end
    if sock then sock:close() end
    pid, sock = nil, nil
    H.rmdir(dir)
  end)

  it("does nothing without $NOTIFY_SOCKET", function()
    assert.is_nil(os.getenv("NOTIFY_SOCKET"))
    assert.is_false(core.notify("READY=1"))
  end)

  it("sends READY=1 once listening and STOPPING=1 on SIGTERM", function()
    local path = dir .. "/notify.sock"
    sock = assert(unix.dgram())
    assert(sock:bind(path))
    sock:settimeout(WAIT_SECONDS)
    local cfg = H.write_file(dir .. "/config.lua",
      'return { port = 0, logLevel = "info", storage = { path = "' .. dir .. '/data" } }\n')
    local pidfile = dir .. "/pid"
    assert(os.execute("sh -c 'echo $$ > " .. pidfile .. "; exec env -u LD_PRELOAD NOTIFY_SOCKET=" .. path
      .. " lua5.4 bin/moonstream start " .. cfg .. "' > " .. dir .. "/log 2>&1 &"))

    local ready = assert(sock:receive())
    local f = assert(io.open(pidfile))
    pid = assert(tonumber(f:read("l")))
    f:close()
    local lines = lines_of(ready)
    assert.equal("READY=1", lines[1])
    local port = assert(tonumber(lines[2]:match("^STATUS=listening on http://127%.0%.0%.1:(%d+)$")), ready)
    -- ready means listening: a connection is accepted at once
    local tcp = assert(socket.connect("127.0.0.1", port))
    tcp:close()

    assert(os.execute("kill -TERM " .. pid))
    assert.equal("STOPPING=1", assert(sock:receive()))
    -- and the process goes on to exit 0 (the log's last line says so)
    local deadline = socket.gettime() + WAIT_SECONDS
    while os.execute("kill -0 " .. pid .. " 2>/dev/null") do
      assert(socket.gettime() < deadline, "the server did not exit after SIGTERM")
      socket.select(nil, nil, 0.05)
    end
    pid = nil
    local log = assert(io.open(dir .. "/log")):read("a")
    assert.matches("moonstream stopped", log, 1, true)
  end)
end)
