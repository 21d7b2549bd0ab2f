-- The command line: start, check, hash, token revoke, reload, version, help.
-- Arguments are parsed by argparse (Debian's lua-argparse); every command
-- has --help. Exit status: 0 done, 1 a run-time failure (a broken config, a
-- store in use, ...), 2 a usage error (an unknown command or option, a
-- malformed value).
local argparse = require "argparse"

local M = {}

local USAGE_ERROR, FAILURE = 2, 1

local function fail(msg)
  io.stderr:write("moonstream: ", msg, "\n")
  return FAILURE
end

-- An integer option value, or nil and the reason (argparse prints it).
local function integer(name, min)
  return function(v)
    local n = math.tointeger(tonumber(v))
    if not n or (min and n < min) then
      return nil, ("%s must be %s (got '%s')"):format(name, min and "a positive integer" or "a number", v)
    end
    return n
  end
end

-- The configuration file: a positional argument or -c/--config, not both.
local function add_config(cmd, positional)
  if positional then cmd:argument("config", "Configuration file (as -c)."):args("?") end
  cmd:option("-c --config", "Configuration file: a Lua file returning a table with deepstream's key names.")
    :target("config_option"):argname("<file>")
  cmd:help_description_margin(28)
end

-- The parser, and the parser of each command by its words ("token revoke").
local function build_parser()
  local p = argparse("moonstream", "A realtime data server speaking the deepstream HTTP API and realtime protocol.")
    :command_target("command"):require_command(false)
    :help_max_width(100)
    :epilog("Without a configuration file: 127.0.0.1:6020, data in ./data.\n"
      .. "`moonstream <command> --help` describes a command. Exit status: 0 done, 1 failed, 2 usage error.")
  p:flag("-v --version", "Print the version and exit.")

  local start = p:command("start", "Serve in the foreground until SIGINT or SIGTERM (it then finishes "
    .. "in-flight requests, closes the database and exits 0; SIGHUP reloads permissions and RPC handlers).")
  add_config(start, true)
  start:option("--host", "Address to bind (overrides the config's host).")
  start:option("--port", "Port to listen on, 0 for any free port (overrides the config's port).")
    :convert(integer("--port"))
  start:option("--cluster-name", "This node's name in the cluster (overrides cluster.name), so that nodes can "
    .. "share one configuration file.")

  local check = p:command("check", "Validate a configuration and the permission, RPC handler, event listener "
    .. "and users files it names, without starting (like nginx -t). Exits 0 when it would start.")
  add_config(check, true)

  local hash = p:command("hash", "Print a password hash for a users file. Without a password argument it reads "
    .. "one line from stdin, which keeps it out of the shell history. Defaults: sha256, 100000 iterations, "
    .. "32 bytes, or the settings of the first file auth strategy of the configuration given with -c.")
  hash:argument("password", "The password (else read from stdin)."):args("?")
  add_config(hash, false)
  hash:option("--hash", "Hash function (sha256, sha512, md5, ...).")
  hash:option("--iterations", "PBKDF2 iterations."):convert(integer("--iterations", 1))
  hash:option("--key-length", "Derived key length in bytes."):convert(integer("--key-length", 1))

  local token = p:command("token", "Manage tokens."):command_target("token_command")
  local revoke = token:command("revoke", "Revoke one token, or every token of a user (--user), in the running "
    .. "server's store or directly when no server runs.")
  revoke:argument("token", "The token, then optionally the configuration file."):args("0-2")
    :argname({ "<token>", "<config>" })
  revoke:option("--user", "Revoke every token of this user id.")
  add_config(revoke, false)

  local reload = p:command("reload", "Make the running server reload its permissions and RPC handler files "
    .. "(as SIGHUP does).")
  add_config(reload, true)

  local version = p:command("version", "Print the version.")
  local help = p:command("help", "Print this help, or a command's: moonstream help start.")
  help:argument("topic", "The command."):args("*")
  return p, { start = start, check = check, hash = hash, token = token, ["token revoke"] = revoke,
              reload = reload, version = version, help = help }
end

-- The configuration at path, or the defaults. Every command loads its
-- configuration here, through the config module's loader.
local function load_config(path)
  local config = require "moonstream.config"
  if path then return config.load(path) end
  return config.validate({})
end

-- true and the configuration path of parsed arguments (nil: the defaults),
-- or nil and a usage error.
local function config_path(a)
  if a.config and a.config_option then return nil, "give the configuration file once (either -c or the argument)" end
  return true, a.config or a.config_option
end

local function start(a)
  local config = require "moonstream.config"
  local server = require "moonstream.server"
  local cfg, err = load_config(a.path)
  if not cfg then return fail(err) end
  cfg, err = config.apply_overrides(cfg, {
    host = a.host, port = a.port, cluster = a.cluster_name and { name = a.cluster_name } or nil,
  })
  if not cfg then return fail(err) end
  local srv
  srv, err = server.new(cfg, true)
  if not srv then return fail(err) end
  local ok
  ok, err = srv:start()
  if not ok then return fail(err) end
  return 0
end

-- Builds the server without listening: that loads and checks every file the
-- configuration names (auth users and scripts, permissions, RPC handlers,
-- event listeners) but opens no store and no socket, so a running server on
-- the same configuration does not stand in the way.
local function check(a)
  local server = require "moonstream.server"
  local cfg, err = load_config(a.path)
  if not cfg then return fail(err) end
  local srv
  srv, err = server.new(cfg, true)
  if not srv then return fail(err) end
  local exposed = server.exposure_warning(cfg)
  if exposed then io.stdout:write("warning: ", exposed, "\n") end
  io.stdout:write(("moonstream: configuration %s is valid\n"):format(a.path or "(the defaults)"))
  return 0
end

local function hash(a)
  local file = require "moonstream.auth.file"
  local strategies = require "moonstream.auth.strategies"
  local settings = { hash = file.DEFAULTS.hash, iterations = file.DEFAULTS.iterations,
                     keyLength = file.DEFAULTS.keyLength }
  if a.path then
    local cfg, err = load_config(a.path)
    if not cfg then return fail(err) end
    local found
    for _, s in ipairs(cfg.auth) do
      if s.type == "file" then found = strategies.options_of(s) break end
    end
    if not found then return fail(a.path .. " has no file auth strategy") end
    for _, k in ipairs({ "hash", "iterations", "keyLength" }) do
      if found[k] ~= nil then settings[k] = found[k] end
    end
  end
  settings.hash = a.hash or settings.hash
  settings.iterations = a.iterations or settings.iterations
  settings.keyLength = a.key_length or settings.keyLength
  local password = a.password
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

-- Asks the running server (pid) that holds dir to run a control request;
-- prints its answer. Returns the exit status.
local function revoke_through_server(dir, request)
  local control = require "moonstream.control"
  local pid = control.read_pid(dir)
  if not pid then return fail("the store is in use but " .. dir .. "/moonstream.pid is missing") end
  local id, err = control.submit(dir, request)
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

-- Revokes tokens: directly in the store when no server holds it, else
-- through the running server (control.lua).
local function revoke(a)
  local tokens_mod = require "moonstream.tokens"
  local core = require "moonstream.core"
  local user, what = a.user, nil
  if user == "" then return USAGE_ERROR, "--user needs a user id" end
  local path = a.path
  for _, v in ipairs(a.token) do
    -- the token comes first; a .lua file (or anything after the token, or
    -- anything given with --user) is the configuration file
    if what == nil and user == nil and not v:match("%.lua$") then what = v
    elseif path == nil then path = v
    else return USAGE_ERROR, "too many arguments" end
  end
  if (what == nil) == (user == nil) then return USAGE_ERROR, "give either a token or --user ID" end
  local cfg, err = load_config(path)
  if not cfg then return fail(err) end
  local dir = cfg.storage.path
  if not has_store(dir) then return fail("no moonstream store at storage.path '" .. dir .. "'") end
  local store, serr = core.store_open(dir, {})
  if not store then
    if not serr:find("lock", 1, true) then return fail(serr) end
    return revoke_through_server(dir, user and "revoke-user " .. user or "revoke-token " .. tokens_mod.hash(what))
  end
  local tokens = tokens_mod.new(store, { ttl = cfg.tokenTTL })
  local n, rerr
  if user then n, rerr = tokens:revoke_user(user) else n = tokens:revoke(what) and 1 or 0 end
  store:close()
  if not n then return fail("cannot revoke: " .. tostring(rerr)) end
  io.stdout:write(("revoked %d token(s)\n"):format(n))
  return 0
end

local function reload(a)
  local control = require "moonstream.control"
  local cfg, err = load_config(a.path)
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

local RUN = { start = start, check = check, hash = hash, reload = reload }

-- The parser of the longest command that the leading words name.
local function command_parser(parser, commands, words)
  local found, name = parser, nil
  for _, w in ipairs(words) do
    name = name and name .. " " .. w or w
    if not commands[name] then break end
    found = commands[name]
  end
  return found
end

-- -h/--help anywhere (before "--") asks for the help of the command named
-- before it; answered before parsing, so a broken rest of the line still
-- gets help.
local function help_request(args)
  local words = {}
  for _, v in ipairs(args) do
    if v == "--" then return nil end
    if v == "-h" or v == "--help" then return words end
    if v:sub(1, 1) ~= "-" then words[#words + 1] = v end
  end
  return nil
end

local function usage_error(parser, msg)
  io.stderr:write(parser:get_usage(), "\n\nmoonstream: ", msg, "\n")
  return USAGE_ERROR
end

-- Runs the CLI with an argument list; returns the exit status.
function M.main(args)
  local parser, commands = build_parser()
  local words = help_request(args)
  if words then
    io.stdout:write(command_parser(parser, commands, words):get_help(), "\n")
    return 0
  end
  local ok, a = parser:pparse(args)
  if not ok then return usage_error(command_parser(parser, commands, args), a) end
  if a.version or a.command == "version" then
    io.stdout:write("moonstream ", require("moonstream").VERSION, "\n")
    return 0
  elseif a.command == "help" then
    io.stdout:write(command_parser(parser, commands, a.topic):get_help(), "\n")
    return 0
  elseif not a.command then
    return usage_error(parser, "a command is required (see moonstream --help)")
  end
  local cmd = a.token_command or a.command
  local sub = command_parser(parser, commands, { a.command, a.token_command })
  local path_ok, path = config_path(a)
  if not path_ok then return usage_error(sub, path) end
  a.path = path
  if cmd == "revoke" then
    local status, err = revoke(a)
    if status == USAGE_ERROR then return usage_error(sub, err) end
    return status
  end
  return RUN[cmd](a)
end

return M
