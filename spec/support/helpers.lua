-- Helpers for the HTTP specs: an in-process server on port 0 with its own
-- LevelDB directory, and a real HTTP client (libcurl, moonstream.core's
-- http_client) on the server's own loop, so both sides run on one thread
-- without blocking each other.
local core = require "moonstream.core"
local json = require "moonstream.json"
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

return H
