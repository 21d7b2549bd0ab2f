-- Where the realtime scenarios (spec/support/rt_scenarios.lua) run: an
-- in-process moonstream (the specs), or a server in another process
-- (tests/realtime_compare.lua: the deepstream reference, or bin/moonstream).
-- An environment has:
--   env.url(transport)    ws URL for "json" | "binary"
--   env.api(commands)     POST /api with these commands; the decoded answer
--   env.step()            advances the server (in-process) or waits a moment
--   env.restart(offline)  stops the server, runs offline() while it is down
--                         (offline gets an `api` that writes to the stored
--                         data), starts it again on the same port and data
--   env.stop()
local socket = require "socket"
local json = require "moonstream.json"
local H = require "spec.support.helpers"

local M = {}

local PATHS = { json = "/deepstream-json", binary = "/deepstream" }
M.PATHS = PATHS

local function merge(into, from)
  for k, v in pairs(from or {}) do
    if type(v) == "table" and type(into[k]) == "table" then merge(into[k], v) else into[k] = v end
  end
  return into
end

-- An in-process moonstream with config cfg (quiet logs, its own data dir).
function M.moonstream(cfg)
  local env = { dir = H.tmpdir() }
  local data = env.dir .. "/data"
  local function start(port)
    env.t = H.start(merge({ port = port, storage = { path = data } }, cfg))
    env.port = env.t.server:port()
  end
  start(0)
  function env.url(transport)
    return "ws://127.0.0.1:" .. env.port .. assert(PATHS[transport])
  end
  function env.api(commands)
    local res, body = env.t:api({ body = commands })
    assert(res.status == 200, "POST /api answered " .. tostring(res.status))
    return body
  end
  env.idle = function() socket.select(nil, nil, 0.005) end
  function env.step()
    if env.t then env.t.loop:run_once(5) else env.idle() end
  end
  function env.restart(offline)
    env.t:stop()
    env.t = nil
    if offline then
      -- the same data, written by a server on another port the clients do not know
      local side = H.start(merge({ port = 0, storage = { path = data } }, cfg))
      offline(function(commands)
        local res, body = side:api({ body = commands })
        assert(res.status == 200)
        return body
      end)
      side:stop()
    end
    start(env.port)
  end
  function env.stop()
    if env.t then env.t:stop() end
    env.t = nil
    H.rmdir(env.dir)
  end
  return env
end

-- A server in another process at 127.0.0.1:port; restart(offline) calls
-- hooks.stop(), offline(api) (api: nil when the server keeps no data while
-- stopped), hooks.start().
function M.external(port, hooks)
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local env = { port = port }
  function env.url(transport)
    return "ws://127.0.0.1:" .. port .. assert(PATHS[transport])
  end
  function env.api(commands)
    local body = assert(json.encode({ body = commands }))
    local out = {}
    local _, code = http.request({
      url = "http://127.0.0.1:" .. port .. "/api", method = "POST",
      headers = { ["Content-Type"] = "application/json", ["Content-Length"] = #body },
      source = ltn12.source.string(body), sink = ltn12.sink.table(out),
    })
    assert(code == 200, "POST /api answered " .. tostring(code))
    return json.decode(table.concat(out))
  end
  function env.step() socket.select(nil, nil, 0.005) end
  env.idle = env.step
  function env.restart(offline)
    hooks.stop()
    if offline then offline(hooks.offline_api) end
    hooks.start()
  end
  function env.stop() end
  return env
end

-- Runs scenario(s, ...) against an in-process moonstream with config cfg,
-- real clients speaking `transport`; cleans up whatever happens.
function M.run(cfg, transport, scenario, ...)
  local D = require "support.rt_driver"
  local env = M.moonstream(cfg)
  local ok, drv = pcall(D.start, env.step)
  if not ok then env.stop(); error(drv, 0) end
  local s = { env = env, drv = drv, tr = transport, p = "s/", ack_flag = true }
  local done, err = xpcall(scenario, debug.traceback, s, ...)
  drv:close()
  env.stop()
  if not done then error(err, 0) end
end

return M
