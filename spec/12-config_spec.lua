local config = require "moonstream.config"

-- Each test that touches files gets its own directory.
local function make_dir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  return dir
end

local function remove_dir(dir)
  assert(dir:match("^/tmp/"), dir)
  os.execute("rm -rf '" .. dir .. "'")
end

local write = require("spec.support.helpers").write_file

-- One test a case { config table, the error validate returns for it }.
local function refusals(cases)
  for _, case in ipairs(cases) do
    it("returns \"" .. case[2] .. "\"", function()
      local cfg, err = config.validate(case[1])
      assert.is_nil(cfg)
      assert.equal(case[2], err)
    end)
  end
end

local function mkdir(path)
  assert(os.execute("mkdir -p '" .. path .. "'"))
end

describe("moonstream.config", function()
  local tmp

  before_each(function()
    tmp = make_dir()
  end)

  after_each(function()
    remove_dir(tmp)
  end)

  describe("defaults()", function()
    it("returns the embedded defaults", function()
      local d = config.defaults()
      assert.same({
        host = "127.0.0.1", port = 6020, apiPath = "/api", authPath = "/api/auth",
        healthCheckPath = "/health-check", enableAuthEndpoint = true, allowAuthData = true,
        maxMessageSize = 1048576, maxResponseSize = 16777216, requestTimeout = 20000, allowAllOrigins = true,
        rpc = { responseTimeout = 10000, ackTimeout = 1000 }, storage = { path = "./data", sync = true, cacheSize = 8388608, writeBufferSize = 1048576 },
        realtime = {
          urlPath = "/deepstream", jsonUrlPath = "/deepstream-json", heartbeatInterval = 30000,
          unauthenticatedClientTimeout = 180000, maxAuthAttempts = 3, maxBufferedBytes = 4194304,
        },
        listen = { shuffleProviders = true, responseTimeout = 500, rematchInterval = 30000, matchCooldown = 10000 },
        storageExclusionPrefixes = {}, tokenTTL = 86400000, auth = { { type = "open" } },
        maxAuthAttempts = 10, authAttemptsWindow = 60000,
        events = {}, logLevel = "info", connectionLimit = 1024, connectionTimeout = 30,
        connectionLimitPerIp = 0, connectionMemoryLimit = 16384, fastPath = true,
        logFormat = "text", metrics = { path = "/metrics", allow = { "127.0.0.1", "::1", "::ffff:127.0.0.1" } },
      }, d)
      assert.is_nil(d.origins)
      assert.is_nil(d.permissions)
    end)

    it("returns a fresh table each call", function()
      local a = config.defaults()
      a.rpc.responseTimeout = 1
      a.auth[1].type = "file"
      local b = config.defaults()
      assert.equal(10000, b.rpc.responseTimeout)
      assert.equal("open", b.auth[1].type)
    end)
  end)

  describe("validate()", function()
    it("returns the defaults for an empty table", function()
      local cfg, err = config.validate({})
      assert.is_nil(err)
      assert.same(config.defaults(), cfg)
    end)

    it("returns a new table with nested sections merged key by key", function()
      local user = { port = 0, rpc = { responseTimeout = 500 }, storage = { sync = false } }
      local cfg, err = config.validate(user)
      assert.is_nil(err)
      assert.equal(0, cfg.port)
      assert.equal(500, cfg.rpc.responseTimeout)
      assert.is_false(cfg.storage.sync)
      assert.equal("./data", cfg.storage.path)
      assert.equal(8388608, cfg.storage.cacheSize)
      assert.equal("/api", cfg.apiPath)
      assert.are_not.equal(user, cfg)
      assert.are_not.equal(user.rpc, cfg.rpc)
      assert.is_nil(user.rpc.handlers)
      assert.is_nil(user.host)
    end)

    it("copies the user's tables so later changes do not leak in", function()
      local user = {
        allowAllOrigins = false, origins = { "http://a.example" },
        auth = { { type = "file", users = { fred = "x" } } },
        permissions = { record = { ["*"] = true } },
      }
      local cfg = assert(config.validate(user))
      user.origins[1] = "http://evil.example"
      user.auth[1].users.fred = "y"
      user.permissions.record["*"] = false
      assert.same({ "http://a.example" }, cfg.origins)
      assert.equal("x", cfg.auth[1].users.fred)
      assert.is_true(cfg.permissions.record["*"])
    end)

    it("keeps functions and converts integral floats to integers", function()
      local fn = function() end
      local cfg = assert(config.validate({ port = 8080.0, rpc = { handlers = { echo = fn } } }))
      assert.equal(8080, cfg.port)
      assert.equal("integer", math.type(cfg.port))
      assert.equal(fn, cfg.rpc.handlers.echo)
    end)

    it("accepts a full valid configuration", function()
      local cfg, err = config.validate({
        host = "0.0.0.0", port = 65535, apiPath = "/x", authPath = "/x/auth", healthCheckPath = "/h",
        enableAuthEndpoint = false, allowAuthData = false, maxMessageSize = 1024 * 1024 * 1024,
        requestTimeout = 1, allowAllOrigins = false, origins = {}, storageExclusionPrefixes = { "tmp/" },
        tokenTTL = 1, auth = { { type = "open" }, { type = "lua", fn = print } }, permissions = {},
        logLevel = "debug", connectionLimit = 1, connectionTimeout = 0, storage = { cacheSize = 0 },
      })
      assert.is_nil(err)
      assert.equal(1073741824, cfg.maxMessageSize)
      assert.same({}, cfg.origins)
      assert.equal(print, cfg.auth[2].fn)
    end)

    it("returns an error for a value that is not a table", function()
      local cfg, err = config.validate("port = 1")
      assert.is_nil(cfg)
      assert.equal("the configuration must be a table (got string)", err)
    end)

    it("raises when source is not a string", function()
      assert.has.error(function() config.validate({}, 1) end,
        "bad argument #2 to 'validate' (string expected, got number)")
    end)

    describe("unknown keys", function()
      local cases = {
        { { prot = 1 }, "unknown config key 'prot' (did you mean 'port'?)" },
        { { apipath = "/a" }, "unknown config key 'apipath' (did you mean 'apiPath'?)" },
        { { requestTimout = 1 }, "unknown config key 'requestTimout' (did you mean 'requestTimeout'?)" },
        { { hostname = "x" }, "unknown config key 'hostname' (did you mean 'host'?)" },
        { { responseTimeout = 5 }, "unknown config key 'responseTimeout' (did you mean 'rpc.responseTimeout'?)" },
        { { serverName = "x" }, "unknown config key 'serverName'" },
        { { [1] = "x" }, "unknown config key '[1]'" },
        { { ["a b"] = 1 }, [[unknown config key '["a b"]']] },
        { { rpc = { responseTimout = 5 } }, "unknown config key 'rpc.responseTimout' (did you mean 'rpc.responseTimeout'?)" },
        { { storage = { paht = "x" } }, "unknown config key 'storage.paht' (did you mean 'storage.path'?)" },
        { { events = { listener = {} } }, "unknown config key 'events.listener' (did you mean 'events.listeners'?)" },
      }
      refusals(cases)
    end)

    describe("wrong values", function()
      local long = string.rep("x", 100)
      local cases = {
        { { host = 1 }, "config key 'host' must be a non-empty string (got 1)" },
        { { host = "" }, "config key 'host' must be a non-empty string (got an empty string)" },
        { { port = "6020" }, "config key 'port' must be an integer from 0 to 65535 (got string)" },
        { { port = 65536 }, "config key 'port' must be an integer from 0 to 65535 (got 65536)" },
        { { port = -1 }, "config key 'port' must be an integer from 0 to 65535 (got -1)" },
        { { port = 80.5 }, "config key 'port' must be an integer from 0 to 65535 (got 80.5)" },
        { { apiPath = "api" }, "config key 'apiPath' must be a string starting with '/' (got 'api')" },
        { { authPath = 5 }, "config key 'authPath' must be a string starting with '/' (got 5)" },
        { { healthCheckPath = long }, "config key 'healthCheckPath' must be a string starting with '/' (got string)" },
        { { enableAuthEndpoint = "true" }, "config key 'enableAuthEndpoint' must be a boolean (got string)" },
        { { allowAuthData = 1 }, "config key 'allowAuthData' must be a boolean (got 1)" },
        { { maxMessageSize = 0 }, "config key 'maxMessageSize' must be an integer from 1 to 1073741824 (got 0)" },
        { { maxMessageSize = 1073741825 },
          "config key 'maxMessageSize' must be an integer from 1 to 1073741824 (got 1073741825)" },
        { { requestTimeout = 0 }, "config key 'requestTimeout' must be a positive integer (got 0)" },
        { { tokenTTL = math.huge }, "config key 'tokenTTL' must be a positive integer (got inf)" },
        { { rpc = { responseTimeout = "10" } }, "config key 'rpc.responseTimeout' must be a positive integer (got string)" },
        { { rpc = 5 }, "config key 'rpc' must be a table (got 5)" },
        { { storage = "./data" }, "config key 'storage' must be a table (got string)" },
        { { storage = { path = "" } }, "config key 'storage.path' must be a non-empty string (got an empty string)" },
        { { storage = { sync = "yes" } }, "config key 'storage.sync' must be a boolean (got string)" },
        { { storage = { cacheSize = -1 } }, "config key 'storage.cacheSize' must be a non-negative integer (got -1)" },
        { { storage = { writeBufferSize = 1024 } },
          "config key 'storage.writeBufferSize' must be an integer from 65536 to 1073741824 (got 1024)" },
        { { allowAllOrigins = false, origins = "http://a" },
          "config key 'origins' must be a list of strings (got string)" },
        { { allowAllOrigins = false, origins = { "http://a", 3 } },
          "config key 'origins' must be a list of strings (item 2 is a number)" },
        { { allowAllOrigins = false, origins = { [1] = "a", [3] = "c" } },
          "config key 'origins' must be a list of strings (item 2 is missing)" },
        { { allowAllOrigins = false, origins = { a = "x" } },
          "config key 'origins' must be a list of strings (got key 'a')" },
        { { allowAllOrigins = false }, "config key 'origins' must be given when 'allowAllOrigins' is false" },
        { { origins = { "http://a" } },
          "config key 'origins' has no effect while 'allowAllOrigins' is true (set allowAllOrigins = false)" },
        { { storageExclusionPrefixes = { true } },
          "config key 'storageExclusionPrefixes' must be a list of strings (item 1 is a boolean)" },
        { { auth = "open" }, "config key 'auth' must be a list of strategy tables (got string)" },
        { { auth = { type = "open" } },
          "config key 'auth' must be a list of strategy tables (got a single strategy; write auth = { { type = ... } })" },
        { { auth = {} }, "config key 'auth' must be a list of strategy tables with at least one strategy (got an empty table)" },
        { { auth = { { type = "open" }, "file" } }, "config key 'auth[2]' must be a strategy table (got string)" },
        { { auth = { { type = "ldap" } } },
          "config key 'auth[1].type' must be one of 'open', 'file', 'webhook', 'lua' (got 'ldap')" },
        { { auth = { { type = "opne" } } },
          "config key 'auth[1].type' must be one of 'open', 'file', 'webhook', 'lua' (got 'opne'; did you mean 'open'?)" },
        { { auth = { { path = "x" } } },
          "config key 'auth[1].type' must be one of 'open', 'file', 'webhook', 'lua' (got nil)" },
        { { permissions = 5 }, "config key 'permissions' must be a file path or a table (got 5)" },
        { { permissions = "" }, "config key 'permissions' must be a file path or a table (got an empty string)" },
        { { logLevel = "warning" },
          "config key 'logLevel' must be one of 'debug', 'info', 'warn', 'error', their upper-case forms or 0 to 3"
            .. " (got 'warning'; did you mean 'warn'?)" },
        { { logLevel = "verbose" }, "config key 'logLevel' must be one of 'debug', 'info', 'warn', 'error',"
          .. " their upper-case forms or 0 to 3 (got 'verbose')" },
        { { connectionLimit = 0 }, "config key 'connectionLimit' must be a positive integer (got 0)" },
        { { connectionTimeout = -1 }, "config key 'connectionTimeout' must be a non-negative integer (got -1)" },
        { { rpc = { handlers = 5 } },
          "config key 'rpc.handlers' must be a folder path or a table of RPC names -> function or file path (got 5)" },
        { { rpc = { handlers = { [1] = print } } },
          "config key 'rpc.handlers' must be a folder path or a table of RPC names -> function or file path (got key 1)" },
        { { rpc = { handlers = { echo = true } } },
          "config key 'rpc.handlers.echo' must be a function or a file path (got boolean)" },
        { { events = { listeners = false } },
          "config key 'events.listeners' must be a folder path or a table of event names -> function or file path (got boolean)" },
        { { events = { listeners = { ["chat/x"] = 1 } } },
          [[config key 'events.listeners["chat/x"]' must be a function or a file path (got 1)]] },
      }
      refusals(cases)

      it("reports unknown keys before wrong values", function()
        local cfg, err = config.validate({ port = "x", prot = 1 })
        assert.is_nil(cfg)
        assert.equal("unknown config key 'prot' (did you mean 'port'?)", err)
      end)
    end)

    describe("handler and listener files", function()
      it("returns an error when the rpc.handlers folder does not exist", function()
        local cfg, err = config.validate({ rpc = { handlers = tmp .. "/rpc" } })
        assert.is_nil(cfg)
        assert.equal("config key 'rpc.handlers': folder '" .. tmp .. "/rpc' does not exist", err)
      end)

      it("returns an error when the rpc.handlers folder is a file", function()
        write(tmp .. "/rpc", "")
        local cfg, err = config.validate({ rpc = { handlers = tmp .. "/rpc" } })
        assert.is_nil(cfg)
        assert.equal("config key 'rpc.handlers': '" .. tmp .. "/rpc' is not a folder", err)
      end)

      it("accepts an existing rpc.handlers folder", function()
        mkdir(tmp .. "/rpc")
        local cfg, err = config.validate({ rpc = { handlers = tmp .. "/rpc" } })
        assert.is_nil(err)
        assert.equal(tmp .. "/rpc", cfg.rpc.handlers)
      end)

      it("returns an error when a named handler file does not exist", function()
        local cfg, err = config.validate({ rpc = { handlers = { ["add-two"] = tmp .. "/add.lua" } } })
        assert.is_nil(cfg)
        assert.equal("config key 'rpc.handlers.add-two': file '" .. tmp .. "/add.lua' does not exist", err)
      end)

      it("returns an error when a named handler file is a folder", function()
        mkdir(tmp .. "/add.lua")
        local cfg, err = config.validate({ rpc = { handlers = { ["add-two"] = tmp .. "/add.lua" } } })
        assert.is_nil(cfg)
        assert.equal("config key 'rpc.handlers.add-two': '" .. tmp .. "/add.lua' is a folder, not a file", err)
      end)

      it("accepts named handler files and functions together", function()
        write(tmp .. "/add.lua", "return function() end")
        local cfg, err = config.validate({ rpc = { handlers = { ["add-two"] = tmp .. "/add.lua", echo = print } } })
        assert.is_nil(err)
        assert.same({ ["add-two"] = tmp .. "/add.lua", echo = print }, cfg.rpc.handlers)
      end)

      it("returns an error when an events.listeners file or folder does not exist", function()
        local cfg, err = config.validate({ events = { listeners = { news = tmp .. "/news.lua" } } })
        assert.is_nil(cfg)
        assert.equal("config key 'events.listeners.news': file '" .. tmp .. "/news.lua' does not exist", err)
        cfg, err = config.validate({ events = { listeners = tmp .. "/events" } })
        assert.is_nil(cfg)
        assert.equal("config key 'events.listeners': folder '" .. tmp .. "/events' does not exist", err)
      end)

      it("returns an error when the permissions file does not exist", function()
        local cfg, err = config.validate({ permissions = tmp .. "/perm.lua" })
        assert.is_nil(cfg)
        assert.equal("config key 'permissions': file '" .. tmp .. "/perm.lua' does not exist", err)
      end)
    end)

    describe("with a source file", function()
      it("prefixes the error with the file and the line of the key", function()
        local path = tmp .. "/config.lua"
        write(path, "return {\n  host = 'x',\n  prot = 80,\n}\n")
        local cfg, err = config.validate({ host = "x", prot = 80 }, path)
        assert.is_nil(cfg)
        assert.equal(path .. ":3: unknown config key 'prot' (did you mean 'port'?)", err)
      end)

      it("omits the line when the key is not written in the file", function()
        local path = tmp .. "/config.lua"
        write(path, "return t\n")
        local cfg, err = config.validate({ port = "x" }, path)
        assert.is_nil(cfg)
        assert.equal(path .. ": config key 'port' must be an integer from 0 to 65535 (got string)", err)
      end)

      it("omits the line when the file cannot be read", function()
        local path = tmp .. "/missing.lua"
        local cfg, err = config.validate({ port = "x" }, path)
        assert.is_nil(cfg)
        assert.equal(path .. ": config key 'port' must be an integer from 0 to 65535 (got string)", err)
      end)
    end)
  end)

  describe("load()", function()
    local function load_text(text, name)
      local path = tmp .. "/" .. (name or "config.lua")
      write(path, text)
      return path, config.load(path)
    end

    -- text (the file named name) is refused with path .. message
    local function refused(text, message, name)
      local path, cfg, err = load_text(text, name)
      assert.is_nil(cfg)
      assert.equal(path .. message, err)
    end

    it("returns the validated configuration of a file", function()
      local path, cfg, err = load_text("return { port = 7000, rpc = { responseTimeout = 500 } }\n")
      assert.is_nil(err)
      assert.equal(7000, cfg.port)
      assert.equal(500, cfg.rpc.responseTimeout)
      assert.equal(10000, config.defaults().rpc.responseTimeout)
      assert.equal(tmp, cfg.configDir)
      assert.truthy(path)
    end)

    it("returns the line of an unknown key", function()
      local path, cfg, err = load_text([[
-- prot = 1 in a comment is not the key
local note = "prot = 2 in a string is not either"
return {
  host = "127.0.0.1",
  prot = 6020,
}
]])
      assert.is_nil(cfg)
      assert.equal(path .. ":5: unknown config key 'prot' (did you mean 'port'?)", err)
    end)

    it("returns the line of a nested key inside its section", function()
      local path, cfg, err = load_text([[
return {
  requestTimeout = 1000,
  rpc = {
    responseTimeout = "fast",
  },
}
]])
      assert.is_nil(cfg)
      assert.equal(path .. ":4: config key 'rpc.responseTimeout' must be a positive integer (got string)", err)
    end)

    it("returns the line of a bracketed key and of a list item", function()
      local path, cfg, err = load_text([==[
return {
  rpc = {
    handlers = {
      echo = function(data) return data end,
      ["add-two"] = "handlers/add-two.lua",
    },
  },
}
]==])
      assert.is_nil(cfg)
      assert.equal(path .. ":5: config key 'rpc.handlers.add-two': file '" .. tmp
        .. "/handlers/add-two.lua' does not exist", err)

      path, cfg, err = load_text([==[
return {
  auth = {
    { type = "open" },
    --[[ a long comment
         type = "x" ]]
    { type = "ldap",
      url = "x" },
  },
}
]==])
      assert.is_nil(cfg)
      assert.equal(path .. ":6: config key 'auth[2].type' must be one of 'open', 'file', 'webhook', 'lua' (got 'ldap')", err)
    end)

    it("returns the line of allowAllOrigins when origins is missing", function()
      refused("return {\n  port = 1,\n  allowAllOrigins = false,\n}\n",
        ":3: config key 'origins' must be given when 'allowAllOrigins' is false")
    end)

    it("resolves relative paths against the directory of the file", function()
      mkdir(tmp .. "/conf/rpc")
      write(tmp .. "/conf/perm.lua", "return {}")
      write(tmp .. "/conf/news.lua", "return function() end")
      local _, cfg, err = load_text([[
return {
  storage = { path = "./db" },
  rpc = { handlers = "rpc" },
  events = { listeners = { news = "news.lua", abs = "/dev/null" } },
  permissions = "perm.lua",
}
]], "conf/config.lua")
      assert.is_nil(err)
      assert.equal(tmp .. "/conf/db", cfg.storage.path)
      assert.equal(tmp .. "/conf/rpc", cfg.rpc.handlers)
      assert.equal(tmp .. "/conf/news.lua", cfg.events.listeners.news)
      assert.equal("/dev/null", cfg.events.listeners.abs)
      assert.equal(tmp .. "/conf/perm.lua", cfg.permissions)
      assert.equal(tmp .. "/conf", cfg.configDir)
    end)

    it("keeps the default storage path and relative paths without a source", function()
      local _, cfg = load_text("return {}")
      assert.equal("./data", cfg.storage.path)
      cfg = assert(config.validate({ storage = { path = "db" } }))
      assert.equal("db", cfg.storage.path)
      assert.is_nil(cfg.configDir)
    end)

    it("returns a syntax error with file and line", function()
      refused("return {\n  port = 1\n  host = 'x',\n}\n", ":3: '}' expected (to close '{' at line 1) near 'host'")
    end)

    it("returns the whole path of a long file name in a syntax error", function()
      local dir = tmp .. "/" .. string.rep("d", 80)
      mkdir(dir)
      refused("return {\n  port = = 1,\n}\n", ":2: unexpected symbol near '='", string.rep("d", 80) .. "/config.lua")
    end)

    it("returns a runtime error with file and line", function()
      refused("local t = {}\nreturn { port = t.x.y }\n", ":2: attempt to index a nil value (field 'x')")
    end)

    it("adds the line to an error raised without a position", function()
      refused("local x = 1\nerror('boom', 0)\n", ":2: boom")
      refused("local x = 1\n\nerror({})\n", ":3: (error object is a table value)")
    end)

    it("runs the file without require, io or print but with os.getenv", function()
      local _, cfg, err = load_text("return { host = os.getenv('HOME') and 'ok' or 'no-home' }\n")
      assert.is_nil(err)
      assert.equal(os.getenv("HOME") and "ok" or "no-home", cfg.host)
      refused("local x = 1\nlocal json = require 'cjson'\n", ":2: attempt to call a nil value (global 'require')")
      _, cfg, err = load_text("return { host = io and 'io' or print and 'print' or string.format('%s', 'none') }\n")
      assert.is_nil(err)
      assert.equal("none", cfg.host)
    end)

    it("does not let a file change the real string library", function()
      local _, cfg = load_text("string.format = nil\nreturn {}\n")
      assert.truthy(cfg)
      assert.is_function(string.format)
    end)

    it("skips a shebang line and keeps the line numbers", function()
      refused("#!/usr/bin/env moonstream\nreturn {\n  port = 'x',\n}\n",
        ":3: config key 'port' must be an integer from 0 to 65535 (got string)")
    end)

    it("returns an error when the file does not return a table", function()
      refused("return 42\n", ": the configuration file must return a table (got number)")
      refused("local port = 1\n", ": the configuration file must return a table (got nil)")
    end)

    it("returns an error when the file does not exist", function()
      local path = tmp .. "/nope.lua"
      local cfg, err = config.load(path)
      assert.is_nil(cfg)
      assert.equal("cannot read configuration file '" .. path .. "': No such file or directory", err)
    end)

    it("returns an error when the path is a folder", function()
      local cfg, err = config.load(tmp)
      assert.is_nil(cfg)
      assert.equal("cannot read configuration file '" .. tmp .. "': Is a directory", err)
    end)

    it("raises when path is not a string", function()
      assert.has.error(function() config.load(nil) end, "bad argument #1 to 'load' (string expected, got nil)")
    end)
  end)

  describe("apply_overrides()", function()
    it("returns a new configuration with host and port replaced", function()
      local cfg = assert(config.validate({ port = 7000, rpc = { responseTimeout = 500 } }))
      local out, err = config.apply_overrides(cfg, { host = "0.0.0.0", port = 0 })
      assert.is_nil(err)
      assert.equal("0.0.0.0", out.host)
      assert.equal(0, out.port)
      assert.equal(500, out.rpc.responseTimeout)
      assert.equal(7000, cfg.port)
      assert.equal("127.0.0.1", cfg.host)
      assert.are_not.equal(cfg.rpc, out.rpc)
    end)

    it("skips options that are not given", function()
      local cfg = assert(config.validate({ port = 7000 }))
      local out = assert(config.apply_overrides(cfg, { host = nil, port = nil }))
      assert.equal(7000, out.port)
      out = assert(config.apply_overrides(cfg, nil))
      assert.equal(7000, out.port)
    end)

    it("returns the same errors as a configuration file", function()
      local cfg = assert(config.validate({}))
      local out, err = config.apply_overrides(cfg, { port = 70000 })
      assert.is_nil(out)
      assert.equal("config key 'port' must be an integer from 0 to 65535 (got 70000)", err)
      out, err = config.apply_overrides(cfg, { hots = "x" })
      assert.is_nil(out)
      assert.equal("unknown config key 'hots' (did you mean 'host'?)", err)
      out, err = config.apply_overrides(cfg, { allowAllOrigins = false })
      assert.is_nil(out)
      assert.equal("config key 'origins' must be given when 'allowAllOrigins' is false", err)
    end)

    it("merges a section key by key", function()
      local cfg = assert(config.validate({ rpc = { responseTimeout = 500 } }))
      local out = assert(config.apply_overrides(cfg, { storage = { sync = false } }))
      assert.is_false(out.storage.sync)
      assert.equal("./data", out.storage.path)
      assert.equal(500, out.rpc.responseTimeout)
    end)
  end)
end)
