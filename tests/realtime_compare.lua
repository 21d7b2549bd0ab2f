-- Runs the realtime scenarios of spec/support/rt_scenarios.lua with the real
-- @deepstream/client against the deepstream reference server and against
-- moonstream, and prints both frame sequences (every message each client
-- sent and received, decoded and normalised by spec/support/node/driver.js)
-- with a diff, plus each run's assertion result.
--
--   make all node-deps && ../shared/reference/setup   (once)
--   lua5.4 tests/realtime_compare.lua [scenario ...] [--transport json|binary]
--
-- The reference runs from /tmp/moonstream-reference (../shared/reference/setup)
-- with its conf-open or conf-file config.yml plus the scenario's settings, on
-- a free port; moonstream runs in this process with the same settings.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath

local socket = require "socket"
local json = require "moonstream.json"
local H = require "spec.support.helpers"
local D = require "support.rt_driver"
local E = require "support.rt_env"
local S = require "support.rt_scenarios"

local REF = os.getenv("MOONSTREAM_REFERENCE") or "/tmp/moonstream-reference"

-- name -> { run = function(s), profile = "open" | "file", yml = extra config, cfg = moonstream config }
local SCENARIOS = {
  { name = "resync", run = S.resync },
  { name = "read_only", run = S.read_only },
  { name = "notify", run = S.notify },
  { name = "set_data", run = S.set_data },
  { name = "auth_timer", profile = "file", yml = "unauth",
    cfg = S.config.auth_timer, auth = true,
    run = function(s)
      S.auth_timer(s, { username = "fred", password = "wrong" }, { username = "fred", password = "y4b4d4b4d00" })
    end },
  { name = "listen_order", yml = "listen", cfg = S.config.listen_order, run = S.listen_order },
  { name = "listen_record_provider", run = S.listen_record_provider },
  { name = "listen_shuffle", run = function(s) S.listen_shuffle(s, 12) end },
  { name = "listen_rematch", yml = "listen", cfg = S.config.listen_rematch,
    run = function(s) S.listen_rematch(s, require("moonstream.config").validate(S.config.listen_rematch)) end },
  { name = "restart", run = S.restart },
}

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

-- The reference's config.yml for a scenario: the profile's, with the
-- scenario's listen / unauthenticatedClientTimeout settings.
local function reference_config(sc, dir)
  local profile = sc.profile or "open"
  local f = assert(io.open(REF .. "/conf-" .. profile .. "/config.yml"))
  local text = f:read("a")
  f:close()
  local cfg = sc.cfg or {}
  if cfg.realtime and cfg.realtime.unauthenticatedClientTimeout then
    text = text:gsub("unauthenticatedClientTimeout: %d+", "unauthenticatedClientTimeout: " .. cfg.realtime.unauthenticatedClientTimeout)
  end
  if cfg.listen then
    text = text .. "\nlisten:\n"
    for k, v in pairs(cfg.listen) do text = text .. "  " .. k .. ": " .. tostring(v) .. "\n" end
  end
  os.execute("cp -r " .. REF .. "/conf-" .. profile .. "/. " .. dir .. "/")
  H.write_file(dir .. "/config.yml", text)
  return dir .. "/config.yml"
end

local function reference_env(sc)
  local dir = H.tmpdir()
  local conf = reference_config(sc, dir)
  local port = free_port()
  local pidfile = dir .. "/pid"
  local http = require "socket.http"
  local function start()
    os.execute(string.format("node %s/node_modules/@deepstream/server/dist/bin/deepstream.js start -c %s "
      .. "--host 127.0.0.1 --port %d >>%s/log 2>&1 & echo $! > %s", REF, conf, port, dir, pidfile))
    local deadline = socket.gettime() + 30
    while true do
      local _, code = http.request("http://127.0.0.1:" .. port .. "/health-check")
      if code == 200 then return end
      if socket.gettime() > deadline then error("the reference did not start: " .. sh("tail -5 " .. dir .. "/log")) end
      socket.select(nil, nil, 0.1)
    end
  end
  local function stop()
    local pid = sh("cat " .. pidfile):match("%d+")
    os.execute("kill " .. pid .. " 2>/dev/null")
    local deadline = socket.gettime() + 15
    while os.execute("kill -0 " .. pid .. " 2>/dev/null") do
      assert(socket.gettime() < deadline, "the reference did not stop")
      socket.select(nil, nil, 0.05)
    end
  end
  start()
  -- the reference keeps no data while stopped (noop storage): no offline writes
  local env = E.external(port, { start = start, stop = stop, offline_api = nil })
  env.stop = function() stop(); H.rmdir(dir) end
  return env
end

local function moonstream_env(sc)
  local cfg = {}
  for k, v in pairs(sc.cfg or {}) do cfg[k] = v end
  local dir
  if sc.auth then
    dir = H.tmpdir()
    cfg.auth = { { type = "lua", options = { path = H.write_file(dir .. "/auth.lua",
      "local users = { fred = 'y4b4d4b4d00' } return function(a) if users[a.username] ~= a.password then "
      .. "return false end return true, a.username, { favouriteColor = 'red', id = 17 } end") } } }
  end
  local env = E.moonstream(cfg)
  local stop = env.stop
  env.stop = function() stop(); if dir then H.rmdir(dir) end end
  return env
end


local canonical = H.canonical_json

-- Frames as comparable lines: client, direction, message; values that differ
-- per run or per server port (RPC correlation ids, the client's url) replaced.
local function frames(drv)
  local out, ids = {}, {}
  for _, e in ipairs(drv.events) do
    if e.ev == "frame" then
      local m = e.msg
      m.url = nil
      if m.topic == "RPC" and m.correlationId then
        ids[m.correlationId] = ids[m.correlationId] or ("<rpc-id-" .. (#out + 1) .. ">")
        m.correlationId = ids[m.correlationId]
      end
      if m.topic == "RECORD" and m.action == "NOTIFY" then m.correlationId = "<notify-id>" end
      out[#out + 1] = string.format("%-5s %s %s", e.c, e.dir, canonical(m))
    end
  end
  return out
end

local function run(sc, transport, make_env)
  local env = make_env(sc)
  local drv = D.start(env.step)
  local s = { env = env, drv = drv, tr = transport, p = "s/" }
  local ok, err = xpcall(sc.run, debug.traceback, s)
  local lines = frames(drv)
  drv:close()
  env.stop()
  return ok, err, lines
end

local wanted, transports = {}, { "json", "binary" }
local i = 1
while arg[i] do
  if arg[i] == "--transport" then transports = { arg[i + 1] }; i = i + 1 else wanted[arg[i]] = true end
  i = i + 1
end

assert(io.open(REF .. "/node_modules/@deepstream/server/package.json"), "run ../shared/reference/setup first")
local differ = 0
for _, sc in ipairs(SCENARIOS) do
  if next(wanted) == nil or wanted[sc.name] then
    for _, tr in ipairs(transports) do
      print(string.format("==== %s (%s)", sc.name, tr))
      local results = {}
      for _, side in ipairs({ { "reference", reference_env }, { "moonstream", moonstream_env } }) do
        local ok, err, lines = run(sc, tr, side[2])
        print(string.format("---- %s: %s", side[1], ok and "scenario passed" or ("scenario failed: " .. tostring(err):match("[^\n]*"))))
        results[#results + 1] = lines
        local path = os.tmpname()
        H.write_file(path, table.concat(lines, "\n") .. "\n")
        results[side[1]] = path
      end
      local diff = sh(string.format("diff -u --label reference --label moonstream %s %s", results.reference, results.moonstream))
      if diff == "" then
        print("frames: identical (" .. #results[1] .. " messages)")
      else
        differ = differ + 1
        print(diff)
      end
      os.remove(results.reference)
      os.remove(results.moonstream)
    end
  end
end
print(string.format("%d scenario runs with different frames", differ))
