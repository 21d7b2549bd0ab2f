-- Helpers for the cluster specs (spec/8x): a real redis-server (a free port
-- on 127.0.0.1, a temporary directory, AOF with fsync on every write) and
-- real moonstream nodes (bin/moonstream as child processes). Readiness is a
-- real signal: Redis answering PING, a node's "listening on" log line.
-- Nothing is skipped when redis-server is missing: the specs fail loudly.
local socket = require "socket"
local H = require "spec.support.helpers"

local C = {}

local DEADLINE_S = 20

-- In a describe block: one Redis for the block and two in-process nodes on
-- it for each test, configured by config_of(redis); got(redis, a, b) hears
-- them (a and b nil at the block's setup), and each test's nodes stop after it.
function C.two_nodes(config_of, got)
  local busted = require "busted" -- its block functions, which only spec files see as globals
  local redis, a, b
  busted.setup(function() redis = C.redis(); got(redis) end)
  busted.teardown(function() redis:stop() end)
  busted.before_each(function()
    local cfg = config_of(redis)
    a, b = H.start(cfg), H.start(cfg)
    got(redis, a, b)
  end)
  busted.after_each(function()
    a:stop()
    b:stop()
  end)
end

-- A port the kernel says is free now (bind to 0, read it, close).
function C.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- One command over RESP, synchronously (for the specs' own checks). Returns
-- the reply (string, integer, table, nil) or nil, err.
local function read_reply(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then return nil, rest end
  if kind == ":" then return math.tointeger(tonumber(rest)) end
  if kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return nil end
    local data = c:receive(n + 2)
    return data and data:sub(1, n)
  end
  if kind == "*" then
    local out = {}
    for i = 1, tonumber(rest) do out[i] = read_reply(c) or false end
    return out
  end
  return nil, "bad reply " .. line
end

function C.command(port, args, password)
  local c = socket.tcp()
  c:settimeout(5)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then return nil, err end
  local function send(list)
    local parts = { "*" .. #list .. "\r\n" }
    for _, a in ipairs(list) do
      a = tostring(a)
      parts[#parts + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    return c:send(table.concat(parts))
  end
  if password then
    send({ "AUTH", password })
    read_reply(c)
  end
  send(args)
  local r, rerr = read_reply(c)
  c:close()
  return r, rerr
end

local Redis = {}
Redis.__index = Redis

-- Starts redis-server; opts.password sets requirepass, opts.appendfsync
-- overrides "always" (to see the warning), opts.port reuses a port (restart).
function C.redis(opts)
  opts = opts or {}
  local self = setmetatable({ dir = opts.dir or H.tmpdir(), password = opts.password, opts = opts }, Redis)
  self:start(opts.port)
  return self
end

function Redis:start(port)
  self.port = port or C.free_port()
  local args = {
    "--port", self.port, "--bind", "127.0.0.1", "--dir", self.dir, "--daemonize", "no",
    "--appendonly", "yes", "--appendfsync", self.opts.appendfsync or "always", "--save", "''",
    "--logfile", self.dir .. "/redis.log",
  }
  if self.password then args[#args + 1] = "--requirepass " .. self.password end
  local cmd = "sh -c 'echo $$; exec env -u LD_PRELOAD redis-server " .. table.concat(args, " "):gsub("'", "'\\''")
    .. "' 2>&1"
  local pipe = assert(io.popen(cmd, "r"))
  self.pid = assert(tonumber(pipe:read("l")), "no pid")
  self.pipe = pipe
  local deadline = socket.gettime() + DEADLINE_S
  while true do
    local r = C.command(self.port, { "PING" }, self.password)
    if r == "PONG" then break end
    assert(socket.gettime() < deadline, "redis-server did not answer PING (see " .. self.dir .. "/redis.log)")
    socket.select(nil, nil, 0.02) -- polling a readiness signal with a deadline
  end
  self.url = "redis://127.0.0.1:" .. self.port .. "/0"
end

function Redis:command(args)
  return C.command(self.port, args, self.password)
end

local function wait_exit(pid)
  local deadline = socket.gettime() + DEADLINE_S
  while os.execute("kill -0 " .. pid .. " 2>/dev/null") do
    assert(socket.gettime() < deadline, "process " .. pid .. " did not exit")
    socket.select(nil, nil, 0.02)
  end
end

-- kill -9, then wait until it is gone.
function Redis:kill9()
  os.execute("kill -9 " .. self.pid)
  wait_exit(self.pid)
  if self.pipe then self.pipe:close() end
  self.pipe = nil
end

-- Restarts on the same port and directory (the AOF replays).
function Redis:restart()
  self:start(self.port)
end

function Redis:stop()
  if self.pipe then
    os.execute("kill " .. self.pid)
    wait_exit(self.pid)
    self.pipe:close()
    self.pipe = nil
  end
  H.rmdir(self.dir)
end

-- Starts bin/moonstream with config_path, --port 0 and --cluster-name name.
-- Returns { pid, port, url, pipe, lines = the log read so far }.
function C.node(config_path, name)
  local cmd = "sh -c 'echo $$; exec env -u LD_PRELOAD lua5.4 bin/moonstream start " .. config_path
    .. " --port 0 --cluster-name " .. name .. "' 2>&1"
  local pipe = assert(io.popen(cmd, "r"))
  local pid = assert(tonumber(pipe:read("l")), "no pid")
  local lines, port = {}, nil
  for line in pipe:lines() do
    lines[#lines + 1] = line
    port = line:match("listening on http://127%.0%.0%.1:(%d+)")
    if port then break end
  end
  assert(port, "node " .. name .. " did not start:\n" .. table.concat(lines, "\n"))
  return { pid = pid, port = tonumber(port), url = "http://127.0.0.1:" .. port, pipe = pipe, lines = lines }
end

function C.stop_node(n, signal)
  os.execute("kill -" .. (signal or "TERM") .. " " .. n.pid)
  wait_exit(n.pid)
  n.pipe:close()
end

return C
