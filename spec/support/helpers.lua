-- Helpers for the HTTP specs: an in-process server on port 0 with its own
-- LevelDB directory, and a real HTTP client (libcurl, moonstream.core's
-- http_client) on the server's own loop, so both sides run on one thread
-- without blocking each other.
local core = require "moonstream.core"
local json = require "moonstream.json"
local WS = require "support.ws_client"
local OP = WS.OP
local luassert = require "luassert" -- busted's assert, for helpers that check answers
local lfs = require "lfs"

local H = {}

local MAX_ITERATIONS = 600 -- run_once(50) each: a stuck request fails instead of hanging

function H.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(lfs.mkdir(p))
  return p
end

function H.rmdir(p)
  if p and p:match("^/tmp/") then os.execute("rm -rf '" .. p .. "'") end
end

-- Deep copy of config tables (the server keeps its own).
local function merge(into, from)
  for k, v in pairs(from) do
    if type(v) == "table" and type(into[k]) == "table" then merge(into[k], v) else into[k] = v end
  end
  return into
end

local T = {}
T.__index = T

-- Starts a server with cfg (port 0, a fresh data dir, quiet logs unless
-- given). Returns the test handle: t.server, t.url, t:request, t:api, t:stop.
function H.start(cfg, setup)
  local moonstream = require "moonstream"
  local dir = H.tmpdir()
  local full = merge({ port = 0, logLevel = "error", storage = { path = dir .. "/data" } }, cfg or {})
  local server = assert(moonstream.new(full))
  if setup then setup(server) end
  assert(server:listen())
  local t = setmetatable({ server = server, dir = dir, loop = server.loop }, T)
  t.url = "http://127.0.0.1:" .. server:port()
  t.client = assert(core.http_client(server.loop))
  return t
end

-- Runs the server's loop until done() is true (bounded).
function T:run_until(done)
  local n = 0
  while not done() do
    n = n + 1
    assert(n <= MAX_ITERATIONS, "no answer after " .. MAX_ITERATIONS .. " loop iterations")
    self.loop:run_once(50)
  end
end

-- Sends several requests at once; returns their responses in order.
function T:request_all(list)
  local results, left = {}, #list
  for i, opts in ipairs(list) do
    local o = { method = opts.method or "POST", url = self.url .. (opts.path or "/api"),
                body = opts.body, headers = opts.headers, timeout = opts.timeout or 30000 }
    if o.method == "POST" and not (o.headers and (o.headers["Content-Type"] ~= nil)) then
      o.headers = o.headers or {}
      o.headers["Content-Type"] = "application/json"
    end
    if o.headers and o.headers.Expect == nil then o.headers.Expect = false end
    assert(self.client:request(o, function(res, err)
      results[i] = res or { error = err }
      left = left - 1
    end))
  end
  self:run_until(function() return left == 0 end)
  return results
end

-- One request: opts = { method, path, body (string), headers }.
-- Returns { status, body, headers } or { error = text }.
function T:request(opts)
  return self:request_all({ opts })[1]
end

-- POST /api with the given commands (or a whole message when it has `body`).
-- Returns the response and its decoded JSON.
function T:api(msg)
  if msg.body == nil then msg = { body = msg } end
  local res = self:request({ body = assert(json.encode(msg)) })
  assert(res.status, res.error)
  return res, json.decode(res.body)
end

function T:stop()
  if self.client then self.client:close() end
  self.server:close()
  self.loop:close()
  H.rmdir(self.dir)
end

-- Starts bin/moonstream on port 0 (args: what follows `start`, e.g. the
-- config path); the log line with the URL is the readiness signal.
-- LD_PRELOAD (ASan runs) is not passed on. opts.exit_status: the output ends
-- with "exit=N", the command's exit status.
function H.spawn_cli(args, opts)
  local cmd = "sh -c 'echo $$; exec env -u LD_PRELOAD lua5.4 bin/moonstream start " .. args .. " --port 0' 2>&1"
  if opts and opts.exit_status then cmd = cmd .. "; echo \"exit=$?\"" end
  local pipe = assert(io.popen(cmd, "r"))
  local pid = assert(tonumber(pipe:read("l")), "no pid")
  local port
  for line in pipe:lines() do
    port = line:match("listening on http://127%.0%.0%.1:(%d+)")
    if port then break end
  end
  assert(port, "server did not start")
  return { pipe = pipe, pid = pid, port = tonumber(port) }
end

-- A deepstream client speaking the json transport (or raw bytes on the
-- binary one). Every wait is bounded by ws_client's step limit.
function H.realtime_client(t, path)
  local c = WS.connect(t.loop, t.server:port(), path or "/deepstream-json")
  luassert.equal(101, c.status)
  local d = { ws = c }
  function d.send(msg)
    if type(msg) == "string" then return assert(c:send_text(msg)) end
    return assert(c:send_text(assert(json.encode(msg))))
  end
  -- next message, decoded; nil, "close" | "closed" | "timeout"
  function d.recv()
    local data, err = c:read_message()
    if not data then return nil, err end
    return assert(json.decode(data))
  end
  function d.expect(fields)
    local m, err = d.recv()
    assert(m, "expected a message, got " .. tostring(err))
    for k, v in pairs(fields) do
      luassert.same(v, m[k], "field " .. k .. " of " .. json.encode(m))
    end
    return m
  end
  -- Everything the server sent before our PING's PONG: proves an absence
  -- without sleeping (the server answers in order).
  function d.drain()
    d.send({ topic = 2, action = 2 })
    local got = {}
    while true do
      local m = assert(d.recv())
      if m.topic == 2 and m.action == 3 then return got end
      got[#got + 1] = m
    end
  end
  function d.login(username)
    d.send({ topic = 2, action = 5 })
    d.expect({ topic = 2, action = 4 })
    d.send({ topic = 3, action = 2, parsedData = { username = username } })
    return d.expect({ topic = 3, action = 3 })
  end
  function d.closed()
    while true do
      local f, err = c:read_frame()
      if not f then return err == "closed" end
      if f.opcode == OP.CLOSE then return true end
    end
  end
  return d
end

-- Writes text to path (a fresh file); returns the path.
-- JSON text with object keys sorted, so equal messages print the same (a
-- plain Lua sequence counts as an array).
function H.canonical_json(v)
  local json = require "moonstream.json"
  if type(v) ~= "table" or v == json.null then return json.encode(v) end
  if json.is_array(v) or (#v > 0 and next(v, #v) == nil) then
    local parts = {}
    for i = 1, #v do parts[i] = H.canonical_json(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = json.encode(k) .. ":" .. H.canonical_json(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- Token specs: an auth that needs credentials (a Lua function accepting any
-- username), a login that returns the token, and an emit carrying a token.
H.TOKEN_AUTH = { { type = "lua", options = { fn = function(a) return type(a.username) == "string", a.username end } } }

function H.login_token(t, auth_data)
  local res = t:request({ path = "/api/auth", body = require("moonstream.json").encode(auth_data) })
  assert(res.status == 200, "login answered " .. tostring(res.status) .. ": " .. tostring(res.body))
  return require("moonstream.json").decode(res.body).token
end

function H.emit_with(t, token)
  return t:request({ body = require("moonstream.json").encode({ token = token,
    body = { { topic = "event", action = "emit", eventName = "e" } } }) })
end

function H.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- Captures every log line (debug and up) while fn runs; the level goes back
-- to "error" (the specs' quiet default) afterwards.
function H.capture_log(fn)
  local log = require "moonstream.log"
  local lines = {}
  log.set_level("debug")
  log.set_sink(function(line) lines[#lines + 1] = line end)
  local ok, err = pcall(fn)
  log.set_sink(nil)
  log.set_level("error")
  assert(ok, err)
  return table.concat(lines, "\n")
end

-- A record engine over a LevelDB store in a new temporary folder (opts: the
-- engine's). Returns the folder, the store, the engine and the store's path.
function H.record_engine(opts)
  local dir = H.tmpdir()
  local db = dir .. "/db"
  local store = assert(core.store_open(db))
  return dir, store, require("moonstream.record_engine").new(store, opts), db
end

return H
