-- Three (or more) real nodes on one real redis-server for the cluster specs
-- that drive deepstream clients (json transport) and HTTP against child
-- processes (spec/87, spec/88): one loop in the spec process runs the
-- clients; every wait is a real signal or a poll with a deadline.
local core = require "moonstream.core"
local json = require "moonstream.json"
local socket = require "socket"
local H = require "spec.support.helpers"
local C = require "spec.support.cluster"

local N = {}
N.__index = N

N.DEADLINE_S = 20

-- extra: Lua source of more config keys for every node (e.g. "rpc = { ackTimeout = 1000 }").
function N.new(extra)
  local self = setmetatable({ nodes = {}, extra = extra or "" }, N)
  self.redis = C.redis()
  self.dir = H.tmpdir()
  self.loop = core.loop()
  self.http = assert(core.http_client(self.loop))
  return self
end

function N:start_node(name)
  local config = H.write_file(self.dir .. "/" .. name .. ".lua", string.format(
    "return { storage = { path = %q }, cluster = { redis = %q }, %s }",
    self.dir .. "/data-" .. name, self.redis.url, self.extra))
  local n = C.node(config, name)
  self.nodes[name] = n
  return n
end

-- signal: TERM (graceful) or KILL
function N:stop_node(name, signal)
  local n = self.nodes[name]
  self.nodes[name] = nil
  if n then C.stop_node(n, signal) end
end

function N:close()
  for name in pairs(self.nodes) do self:stop_node(name) end
  self.http:close()
  self.loop:close()
  self.redis:stop()
  H.rmdir(self.dir)
end

-- Kills Redis with -9 and starts it again on the same port with nothing:
-- what the nodes had written is gone (they must write it again).
function N:restart_redis_empty()
  local old = self.redis.dir
  self.redis:kill9()
  self.redis.dir = H.tmpdir()
  self.redis:restart()
  H.rmdir(old)
end

-- Runs the loop until fn() gives a true value (returned), at most DEADLINE_S.
function N:poll(what, fn)
  local deadline = socket.gettime() + N.DEADLINE_S
  while true do
    local v = fn()
    if v then return v end
    assert(socket.gettime() < deadline, "deadline passed waiting for " .. what)
    self.loop:run_once(20)
  end
end

-- A logged-in deepstream client (json transport) on node `name`.
function N:client(name, user)
  local n = assert(self.nodes[name], name)
  local c = H.realtime_client({ loop = self.loop, server = { port = function() return n.port end } })
  c.login(user or name)
  return c
end

-- Polls until Redis' reply to args equals want.
function N:redis_equals(what, args, want)
  return self:poll(what, function() return self.redis:command(args) == want end)
end

-- The first of clients to have something to read (without waiting on any one).
function N:first_to_hear(what, clients)
  return self:poll(what, function()
    for _, c in ipairs(clients) do
      c.ws:fill()
      if #c.ws.buf > 0 then return c end
    end
  end)
end

-- POST /api on node `name` with one command: starts it; returns a function
-- that gives the command's result once it is there.
function N:api(name, command)
  local res
  assert(self.http:request({
    method = "POST", url = self.nodes[name].url .. "/api", timeout = 30000,
    headers = { ["Content-Type"] = "application/json", Expect = false },
    body = json.encode({ body = { command } }),
  }, function(r, err) res = r or { error = err } end))
  return function()
    self:poll("the HTTP answer", function() return res end)
    assert(res.status, res.error)
    return json.decode(res.body).body[1]
  end
end

return N
