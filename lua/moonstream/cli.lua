-- The command line: moonstream start [config.lua] [--host H] [--port N],
-- moonstream version, moonstream --help.
local M = {}

local USAGE = [[
Usage: moonstream <command> [options]

Commands:
  start [config.lua] [--host H] [--port N]
                 serve the deepstream HTTP API in the foreground; without a
                 config file: 127.0.0.1:6020, data in ./data
  version        print the version
  help           this text

Stop a running server with Ctrl-C or SIGTERM: it finishes in-flight requests,
closes the database and exits 0.
]]

local function fail(msg)
  io.stderr:write("moonstream: ", msg, "\n")
  return 1
end

local function start(args)
  local config = require "moonstream.config"
  local server = require "moonstream.server"
  local path, overrides = nil, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--host" or a == "--port" then
      local v = args[i + 1]
      if not v then return fail(a .. " needs a value") end
      if a == "--port" then
        local n = math.tointeger(tonumber(v))
        if not n then return fail("--port must be a number (got '" .. v .. "')") end
        overrides.port = n
      else
        overrides.host = v
      end
      i = i + 2
    elseif a:sub(1, 1) == "-" then
      return fail("unknown option '" .. a .. "' (see moonstream --help)")
    elseif path then
      return fail("only one configuration file can be given")
    else
      path = a
      i = i + 1
    end
  end
  local cfg, err
  if path then cfg, err = config.load(path) else cfg, err = config.validate({}) end
  if not cfg then return fail(err) end
  cfg, err = config.apply_overrides(cfg, overrides)
  if not cfg then return fail(err) end
  local srv
  srv, err = server.new(cfg, true)
  if not srv then return fail(err) end
  local ok
  ok, err = srv:start()
  if not ok then return fail(err) end
  return 0
end

-- Runs the CLI with an argument list; returns the exit status.
function M.main(args)
  local cmd = args[1]
  if cmd == nil or cmd == "help" or cmd == "--help" or cmd == "-h" then
    io.stdout:write(USAGE)
    return cmd == nil and 1 or 0
  elseif cmd == "version" or cmd == "--version" then
    io.stdout:write("moonstream ", require("moonstream").VERSION, "\n")
    return 0
  elseif cmd == "start" then
    return start({ table.unpack(args, 2) })
  end
  return fail("unknown command '" .. cmd .. "' (see moonstream --help)")
end

return M
