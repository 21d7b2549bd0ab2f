-- Real @deepstream/client instances for the specs: spec/support/node/driver.js
-- runs in a Node.js child process (without LD_PRELOAD) and talks to this
-- module over a loopback TCP socket, one JSON line per command, answer or
-- observation (see driver.js). Every wait runs `step` (the in-process
-- server's loop, or a short select when the server is another process) until
-- what it waits for has arrived, bounded by a deadline: nothing sleeps.
--
--   local D = require "support.rt_driver"
--   local drv = D.start(function() loop:run_once(5) end)
--   drv:call("connect", { c = "a", url = "ws://127.0.0.1:PORT/deepstream-json", json = true })
--   local id = drv:send("record.get", { c = "a", name = "r" }) ... drv:reply(id)
--   drv:wait(D.frame("a", "<", { topic = "RECORD", action = "HEAD_RESPONSE_BULK" }))
--   drv:close()
local socket = require "socket"
local json = require "moonstream.json"

local M = {}
local Driver = {}
Driver.__index = Driver

local DEADLINE_S = tonumber(os.getenv("MOONSTREAM_RT_DEADLINE") or "") or 30
local NODE_DIR = "spec/support/node"

-- The node_modules the driver needs; make test (make node-deps) installs them.
function M.available()
  local f = io.open(NODE_DIR .. "/node_modules/@deepstream/client/package.json")
  if f then f:close() end
  return f ~= nil and os.execute("command -v node >/dev/null 2>&1") == true
end

-- step(): advances whatever serves the clients; called in every wait.
function M.start(step, opts)
  opts = opts or {}
  assert(M.available(), "node or " .. NODE_DIR .. "/node_modules missing: run `make node-deps`")
  local server = assert(socket.bind("127.0.0.1", 0))
  server:settimeout(0)
  local _, port = server:getsockname()
  local log = os.tmpname()
  local driver = opts.driver or (NODE_DIR .. "/driver.js")
  os.execute(string.format("env -u LD_PRELOAD node %s %d >%s 2>&1 &", driver, port, log))
  local self = setmetatable({ step = step, buf = "", events = {}, replies = {}, seq = 0, log = log,
    trace = opts.trace }, Driver)
  local deadline = socket.gettime() + DEADLINE_S
  while not self.sock do
    self.sock = server:accept()
    if not self.sock then
      assert(socket.gettime() < deadline, "the node driver did not connect: " .. self:node_log())
      step()
    end
  end
  server:close()
  self.sock:settimeout(0)
  self.sock:setoption("tcp-nodelay", true)
  return self
end

function Driver:node_log()
  local f = io.open(self.log)
  local s = f and f:read("a") or ""
  if f then f:close() end
  return s
end

-- Reads what has arrived; dispatches complete lines.
function Driver:pump()
  local data, err, partial = self.sock:receive(65536)
  local chunk = data or partial
  if chunk and #chunk > 0 then self.buf = self.buf .. chunk end
  if err == "closed" then self.dead = true end
  while true do
    local i = self.buf:find("\n", 1, true)
    if not i then break end
    local line = self.buf:sub(1, i - 1)
    self.buf = self.buf:sub(i + 1)
    local m = assert(json.decode(line))
    if m.id ~= nil then
      self.replies[m.id] = m
    else
      self.events[#self.events + 1] = m
      if self.trace then self.trace(m) end
    end
  end
end

-- Runs until done() returns a value; returns it.
function Driver:run_until(done, what)
  local deadline = socket.gettime() + DEADLINE_S
  while true do
    self:pump()
    local v = done()
    if v ~= nil and v ~= false then return v end
    assert(not self.dead, "the node driver exited: " .. self:node_log())
    assert(socket.gettime() < deadline, "timed out waiting for " .. tostring(what))
    self.step()
  end
end

-- Sends a command; returns its id (the answer comes later: reply(id)).
function Driver:send(op, args)
  self.seq = self.seq + 1
  local cmd = { id = self.seq, op = op }
  for k, v in pairs(args or {}) do cmd[k] = v end
  local line = assert(json.encode(cmd)) .. "\n"
  local i = 1
  self:run_until(function()
    local sent, err, last = self.sock:send(line, i)
    if sent then return true end
    assert(err ~= "closed", "the node driver closed the control socket")
    i = (last or i - 1) + 1
    return false
  end, "the control socket")
  return self.seq
end

-- The answer to command id: result, or nil, error text.
function Driver:reply(id)
  local r = self:run_until(function() return self.replies[id] end, "the answer to command " .. id)
  self.replies[id] = nil
  if r.error ~= nil then return nil, r.error end
  return r.result
end

-- Sends a command and waits for its answer; an error answer raises.
function Driver:call(op, args)
  local id = self:send(op, args)
  local result, err = self:reply(id)
  if err ~= nil then error(op .. " failed: " .. tostring(err), 2) end
  return result
end

-- Like call, returning nil, error instead of raising.
function Driver:try(op, args)
  return self:reply(self:send(op, args))
end

-- The first observation not taken yet that pred accepts (it is taken).
function Driver:take(pred)
  for i, e in ipairs(self.events) do
    if not e.taken and pred(e) then
      e.taken = true
      return e, i
    end
  end
  return nil
end

-- Marks everything observed so far as taken: later waits see only what
-- comes after (e.g. the OPEN of a reconnection, not of the first connection).
function Driver:mark()
  self:pump()
  for _, e in ipairs(self.events) do e.taken = true end
end

function Driver:wait(pred, what)
  return self:run_until(function() return self:take(pred) end, what or "an observation")
end

-- Whether an observation pred accepts has arrived (nothing is taken).
function Driver:seen(pred)
  for _, e in ipairs(self.events) do
    if pred(e) then return e end
  end
  return nil
end

-- Every observation so far that pred accepts, in order.
function Driver:all(pred)
  local out = {}
  for _, e in ipairs(self.events) do
    if pred(e) then out[#out + 1] = e end
  end
  return out
end

function Driver:close()
  if self.sock then
    pcall(self.send, self, "exit", {})
    self.sock:close()
    self.sock = nil
  end
  os.remove(self.log)
end

-- Predicates

local function fields_match(t, fields)
  for k, v in pairs(fields) do
    if type(v) == "table" and type(t[k]) == "table" then
      if not fields_match(t[k], v) then return false end
    elseif t[k] ~= v then
      return false
    end
  end
  return true
end
M.fields_match = fields_match

-- A protocol message of client c in direction dir (">" sent, "<" received)
-- whose fields include `fields`.
function M.frame(c, dir, fields)
  return function(e)
    return e.ev == "frame" and e.c == c and e.dir == dir and fields_match(e.msg, fields)
  end
end

-- An observation `ev` of client c with these fields.
function M.event(ev, c, fields)
  return function(e)
    return e.ev == ev and e.c == c and fields_match(e, fields or {})
  end
end

return M
