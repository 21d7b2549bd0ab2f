-- The command line: moonstream start [config.lua] [--host H] [--port N] [--cluster-name NAME],
-- moonstream hash, moonstream token revoke, moonstream reload,
-- moonstream version, moonstream --help.
local M = {}

local USAGE = [[
Usage: moonstream <command> [options]

Commands:
  start [config.lua] [--host H] [--port N] [--cluster-name NAME]
                 serve the deepstream HTTP API in the foreground; without a
                 config file: 127.0.0.1:6020, data in ./data; --cluster-name
                 sets cluster.name (nodes sharing one config file)
  hash [password] [-c config.lua] [--hash NAME] [--iterations N] [--key-length N]
                 print a password hash for a users file (without a password
                 argument, reads one line from stdin, so it stays out of the
                 shell history); defaults: sha256, 100000 iterations, 32 bytes,
                 or the settings of the first file strategy of config.lua
  token revoke <token> [config.lua]
  token revoke --user ID [config.lua]
                 revoke one token, or every token of a user (in the running
                 server's store, or directly when no server runs)
  reload [config.lua]
                 make the running server reload its permissions and RPC
                 handler files (as SIGHUP does)
  version        print the version
  help           this text

Stop a running server with Ctrl-C or SIGTERM: it finishes in-flight requests,
closes the database and exits 0.
]]

local function fail(msg)
  io.stderr:write("moonstream: ", msg, "\n")
  return 1
end

-- Splits args into options that take a value (the names in `valued`, kept
-- in the order given) and at most one positional argument (`what`, for the
-- error). Returns options, positional; or nil, error text.
local function parse_args(args, valued, what)
  local opts, positional, i = {}, nil, 1
  while i <= #args do
    local a = args[i]
    if valued[a] then
      local v = args[i + 1]
      if not v then return nil, a .. " needs a value" end
      opts[#opts + 1] = { a, v }
      i = i + 2
    elseif a:sub(1, 1) == "-" then
      return nil, "unknown option '" .. a .. "' (see moonstream --help)"
    elseif positional then
      return nil, "only one " .. what .. " can be given"
    else
      positional = a
      i = i + 1
    end
  end
  return opts, positional
end

-- The configuration at path, or the defaults.
local function load_config(path)
  local config = require "moonstream.config"
  if path then return config.load(path) end
  return config.validate({})
end

local function start(args)
  local config = require "moonstream.config"
  local server = require "moonstream.server"
  local opts, path = parse_args(args, { ["--host"] = true, ["--port"] = true, ["--cluster-name"] = true },
    "configuration file")
  if not opts then return fail(path) end
  local overrides = {}
  for _, o in ipairs(opts) do
    local a, v = o[1], o[2]
    if a == "--port" then
      local n = math.tointeger(tonumber(v))
      if not n then return fail("--port must be a number (got '" .. v .. "')") end
      overrides.port = n
    elseif a == "--cluster-name" then
      overrides.cluster = { name = v }
    else
      overrides.host = v
    end
  end
  local cfg, err = load_config(path)
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

local function hash(args)
  local file = require "moonstream.auth.file"
  local settings = { hash = file.DEFAULTS.hash, iterations = file.DEFAULTS.iterations,
                     keyLength = file.DEFAULTS.keyLength }
  local opts, password = parse_args(args, { ["-c"] = true, ["--config"] = true, ["--hash"] = true,
    ["--iterations"] = true, ["--key-length"] = true }, "password")
  if not opts then return fail(password) end
  local overrides = {}
  for _, o in ipairs(opts) do
    local a, v = o[1], o[2]
    if a == "-c" or a == "--config" then
      local cfg, err = load_config(v)
      if not cfg then return fail(err) end
      local found
      for _, s in ipairs(cfg.auth) do
        if s.type == "file" then found = s.options or s break end
      end
      if not found then return fail(v .. " has no file auth strategy") end
      for _, k in ipairs({ "hash", "iterations", "keyLength" }) do
        if found[k] ~= nil then settings[k] = found[k] end
      end
    elseif a == "--hash" then
      overrides.hash = v
    else
      local n = math.tointeger(tonumber(v))
      if not n or n < 1 then return fail(a .. " must be a positive integer (got '" .. v .. "')") end
      overrides[a == "--iterations" and "iterations" or "keyLength"] = n
    end
  end
  for k, v in pairs(overrides) do settings[k] = v end
  if password == nil then password = io.stdin:read("l") end
  if password == nil or password == "" then return fail("no password given") end
  if settings.iterations > 10000000 or settings.keyLength > 1024 then
    return fail("iterations at most 10000000, key length at most 1024")
  end
  local text, err = file.make_hash(password, settings)
  if not text then return fail(err) end
  io.stdout:write(text, "\n")
  return 0
end

-- True when dir holds a LevelDB store (opening it would create one otherwise).
local function has_store(dir)
  local f = io.open(dir .. "/CURRENT")
  if f then f:close() end
  return f ~= nil
end

local REQUEST_WAIT_S = 10

-- Revokes tokens: directly in the store when no server holds it, else
-- through the running server (control.lua).
local function token(args)
  if args[1] ~= "revoke" then return fail("usage: moonstream token revoke <token> | --user ID [config.lua]") end
  local tokens_mod = require "moonstream.tokens"
  local control = require "moonstream.control"
  local core = require "moonstream.core"
  local what, user, path
  local i = 2
  while i <= #args do
    local a = args[i]
    if a == "--user" then
      user = args[i + 1]
      if not user or user == "" then return fail("--user needs a user id") end
      i = i + 2
    elseif what == nil and user == nil and not a:match("%.lua$") then
      what = a
      i = i + 1
    elseif path == nil then
      path = a
      i = i + 1
    else
      return fail("usage: moonstream token revoke <token> | --user ID [config.lua]")
    end
  end
  if not what and not user then return fail("usage: moonstream token revoke <token> | --user ID [config.lua]") end
  local cfg, err = load_config(path)
  if not cfg then return fail(err) end
  local dir = cfg.storage.path
  if not has_store(dir) then return fail("no moonstream store at storage.path '" .. dir .. "'") end
  local store, serr = core.store_open(dir, {})
  if store then
    local tokens = tokens_mod.new(store, { ttl = cfg.tokenTTL })
    local n, rerr
    if user then n, rerr = tokens:revoke_user(user) else n = tokens:revoke(what) and 1 or 0 end
    store:close()
    if not n then return fail("cannot revoke: " .. tostring(rerr)) end
    io.stdout:write(("revoked %d token(s)\n"):format(n))
    return 0
  end
  if not serr:find("lock", 1, true) then return fail(serr) end
  local pid = control.read_pid(dir)
  if not pid then return fail("the store is in use but " .. dir .. "/moonstream.pid is missing") end
  local id
  id, err = control.submit(dir, user and "revoke-user " .. user or "revoke-token " .. tokens_mod.hash(what))
  if not id then return fail("cannot queue the request: " .. tostring(err)) end
  if not os.execute("kill -HUP " .. pid) then return fail("cannot signal the server (pid " .. pid .. ")") end
  local deadline = os.time() + REQUEST_WAIT_S
  while os.time() <= deadline do
    local answer = control.result(dir, id)
    if answer then
      local n = math.tointeger(tonumber(answer:match("^%d+")))
      if not n then return fail("the server answered: " .. answer) end
      io.stdout:write(("revoked %d token(s)\n"):format(n))
      return 0
    end
    os.execute("sleep 0.05") -- polling the server's answer file, bounded by REQUEST_WAIT_S
  end
  return fail("the server (pid " .. pid .. ") did not answer within " .. REQUEST_WAIT_S .. " s")
end

local function reload(args)
  local control = require "moonstream.control"
  if #args > 1 then return fail("usage: moonstream reload [config.lua]") end
  local cfg, err = load_config(args[1])
  if not cfg then return fail(err) end
  -- A pid file outlives a killed server, and its pid may be reused: signal
  -- only while some process holds the store's lock.
  if not has_store(cfg.storage.path) then
    return fail("no moonstream store at storage.path '" .. cfg.storage.path .. "'")
  end
  local store = require("moonstream.core").store_open(cfg.storage.path, {})
  if store then
    store:close()
    return fail("no running server for storage.path '" .. cfg.storage.path .. "'")
  end
  local pid = control.read_pid(cfg.storage.path)
  if not pid then return fail("no running server for storage.path '" .. cfg.storage.path .. "' (no moonstream.pid)") end
  if not os.execute("kill -HUP " .. pid) then return fail("cannot signal the server (pid " .. pid .. ")") end
  io.stdout:write("sent SIGHUP to moonstream (pid ", pid, ")\n")
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
  elseif cmd == "hash" then
    return hash({ table.unpack(args, 2) })
  elseif cmd == "token" then
    return token({ table.unpack(args, 2) })
  elseif cmd == "reload" then
    return reload({ table.unpack(args, 2) })
  end
  return fail("unknown command '" .. cmd .. "' (see moonstream --help)")
end

return M
