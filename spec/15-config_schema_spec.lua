-- The seams of the configuration code: the schema table as the one home of
-- the defaults, the auth strategies' option schemas checked by the same
-- engine as the rest of the config (errors with file and line), and the one
-- loader that runs every user Lua file (config, permission, users and script
-- files).
local H = require "spec.support.helpers"
local config = require "moonstream.config"
local schema = require "moonstream.config.schema"
local engine = require "moonstream.config.engine"
local loader = require "moonstream.config.loader"
local locate = require "moonstream.config.locate"
local suggest = require "moonstream.config.suggest"
local strategies = require "moonstream.auth.strategies"
local auth = require "moonstream.auth"
local permissions = require "moonstream.permissions"
local scripts = require "moonstream.scripts"

local write = H.write_file

local function esc(s)
  return (s:gsub("%p", "%%%0"))
end

describe("config/schema.lua", function()
  it("is where every default comes from: a key's default is its schema field's", function()
    local d = config.defaults()
    local seen = 0
    for _, field in ipairs(schema.SCHEMA) do
      if field.fields then
        for _, f in ipairs(field.fields) do
          if not field.off and f.default ~= nil then
            assert.same(f.default, d[field.key][f.key], field.key .. "." .. f.key)
            seen = seen + 1
          end
        end
      elseif field.default ~= nil then
        assert.same(field.default, d[field.key], field.key)
        seen = seen + 1
      end
    end
    assert.is_true(seen > 40, "only " .. seen .. " defaults")
    -- copies: changing one leaves the schema as it was
    d.metrics.allow[1] = "changed"
    assert.equal("127.0.0.1", config.defaults().metrics.allow[1])
  end)

  it("gives auth its login limits and its strategy list", function()
    local d = config.defaults()
    local a = assert(auth.new(nil, {}))
    assert.equal(d.maxAuthAttempts, a.max_attempts)
    assert.equal(d.authAttemptsWindow, a.window)
    assert.is_true(a.open)
    local cfg = assert(config.validate({ maxAuthAttempts = 2, authAttemptsWindow = 5 }))
    a = assert(auth.new(cfg.auth, { max_attempts = cfg.maxAuthAttempts, attempts_window = cfg.authAttemptsWindow }))
    assert.equal(2, a.max_attempts)
    assert.equal(5, a.window)
  end)
end)

describe("auth strategy option schemas", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmdir(dir) end)

  it("list the strategy types once: the config's message is built from auth/strategies.lua", function()
    local quoted = {}
    for i, name in ipairs(strategies.NAMES) do
      quoted[i] = "'" .. name .. "'"
      local m = strategies.module(name)
      assert.is_table(m.OPTIONS, name)
      assert.is_function(m.new, name)
    end
    local _, err = config.validate({ auth = { { type = "ldap" } } })
    assert.equal("config key 'auth[1].type' must be one of " .. table.concat(quoted, ", ") .. " (got 'ldap')", err)
  end)

  it("report a strategy's option error with the file and line of the key", function()
    local path = dir .. "/moonstream.lua"
    write(path, table.concat({
      "return {",
      "  auth = {",
      "    { type = 'open' },",
      "    { type = 'file', options = {",
      "      users = {},",
      "      hash = 'nope',",
      "    } },",
      "  },",
      "}",
    }, "\n"))
    local cfg, err = config.load(path)
    assert.is_nil(cfg)
    assert.equal(path .. ":6: config key 'auth[2].options.hash' must be a digest name such as 'sha256' or 'md5'"
      .. " (got 'nope')", err)
  end)

  it("check unknown, required and combined options in the engine, beside type or inside options", function()
    local cases = {
      { { type = "open", color = 1 },
        "config key 'auth[1].color' is not an option of the 'open' strategy (options: none)" },
      { { type = "webhook", options = { endpointUrl = "http://x", retryAtempts = 1 } },
        "config key 'auth[1].options.retryAtempts' is not an option of the 'webhook' strategy (options: endpointUrl,"
        .. " permittedStatusCodes, requestTimeout, retryStatusCodes, retryAttempts, retryInterval, promoteToHeader)" },
      { { type = "webhook", options = {} },
        "config key 'auth[1].options.endpointUrl' must be an http:// or https:// URL (got nil)" },
      { { type = "webhook", endpointUrl = "http://x", permittedStatusCodes = { 200, 99 } },
        "config key 'auth[1].permittedStatusCodes[2]' must be an HTTP status code (got 99)" },
      { { type = "webhook", options = { endpointUrl = "http://x", retryAttempts = -1 } },
        "config key 'auth[1].options.retryAttempts' must be an integer >= 0 (got -1)" },
      { { type = "file", options = { users = {}, iterations = 0 } },
        "config key 'auth[1].options.iterations' must be an integer from 1 to 10000000 (got 0)" },
      { { type = "file" }, "config key 'auth[1].users' must be a file path or a table of users" },
      { { type = "lua", options = {} },
        "config key 'auth[1].options.path' must name a Lua file that returns the auth function (or give options.fn)" },
      { { type = "lua", fn = "x" }, "config key 'auth[1].fn' must be a function" },
      { { type = "open", options = 1 }, "config key 'auth[1].options' must be a table" },
      { { type = "open", options = {}, x = 1 }, "config key 'auth[1].x': put strategy options inside 'options'" },
    }
    for _, case in ipairs(cases) do
      local cfg, err = config.validate({ auth = { case[1] } })
      assert.is_nil(cfg)
      assert.equal(case[2], err)
    end
  end)

  it("give the strategies their defaults (file's are `moonstream hash`'s too)", function()
    local file = require "moonstream.auth.file"
    assert.same({ hash = "sha256", iterations = 100000, keyLength = 32 }, file.DEFAULTS)
    local o = engine.with_defaults({ endpointUrl = "http://x", retryAttempts = 2 },
      require("moonstream.auth.webhook").OPTIONS.fields)
    assert.same({ endpointUrl = "http://x", permittedStatusCodes = { 200 }, requestTimeout = 2000,
      retryStatusCodes = {}, retryAttempts = 2, retryInterval = 1000, promoteToHeader = {} }, o)
  end)
end)

describe("config/loader.lua", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmdir(dir) end)

  it("tells which stage failed and skips a BOM and a #! line", function()
    local ok, err, stage = loader.run_file(dir .. "/none.lua", {})
    assert.same({ false, "No such file or directory", "open" }, { ok, err, stage })
    ok, err, stage = loader.run_file(dir, {})
    assert.same({ false, "read" }, { ok, stage })
    write(dir .. "/s.lua", "return {")
    ok, err, stage = loader.run_file(dir .. "/s.lua", {})
    assert.is_false(ok)
    assert.equal("syntax", stage)
    assert.matches("^" .. esc(dir) .. "/s%.lua:1: ", err)
    write(dir .. "/r.lua", "\239\187\191#!/usr/bin/env lua\nlocal x = 1\nerror('boom', 0)\n")
    ok, err, stage = loader.run_file(dir .. "/r.lua", { error = error })
    assert.same({ false, dir .. "/r.lua:3: boom", "runtime" }, { ok, err, stage })
    write(dir .. "/ok.lua", "#!/bin/sh\nreturn x")
    local result
    ok, result = loader.run_file(dir .. "/ok.lua", { x = 7 })
    assert.same({ true, 7 }, { ok, result })
  end)

  it("runs permission files in the sandbox, with the line of a runtime error", function()
    local path = dir .. "/perm.lua"
    write(path, "local x = 1\nlocal json = require 'json'\nreturn {}\n")
    local p, err = permissions.new(path)
    assert.is_nil(p)
    assert.matches("^permissions file '" .. esc(path) .. "' failed to load: " .. esc(path) .. ":2: .*'require'", err)
    write(path, "return { record = {\n ['*'] = { read = true, reed = true } } }\n")
    p, err = permissions.new(path)
    assert.is_nil(p)
    assert.equal(path .. ":2: permissions.record[\"*\"]: unknown rule type 'reed' (create, write, read, delete, notify, listen)",
      err)
    write(path, "error({}, 0)")
    _, err = permissions.new(path)
    assert.equal("permissions file '" .. path .. "' failed to load: " .. path .. ":1: (error object is a table value)",
      err)
  end)

  it("gives the whole path of a long file name, in permission and script files alike", function()
    local deep = dir .. "/" .. string.rep("d", 80)
    assert(require("lfs").mkdir(deep))
    local path = deep .. "/rules.lua"
    write(path, "return {\n  record = nil +\n}")
    local _, err = permissions.new(path)
    assert.matches("^" .. esc(path) .. ":3: ", err)
    write(path, "local a = nil\nreturn a.b")
    local fn
    fn, err = scripts.load_function(path, "rpc handler")
    assert.is_nil(fn)
    assert.matches("^rpc handler file '" .. esc(path) .. "' failed to load: " .. esc(path) .. ":2: ", err)
  end)

  it("runs Lua users files with an empty environment", function()
    local path = dir .. "/users.lua"
    write(path, "return { fred = { password = tostring(1) } }")
    local srv, err = require("moonstream").new({ auth = { { type = "file", options = { users = path } } } })
    assert.is_nil(srv)
    assert.equal("config key 'auth[1].options.users': users file '" .. path .. "' failed to load: " .. path
      .. ":1: attempt to call a nil value (global 'tostring')", err)
  end)
end)

describe("config/locate.lua and config/suggest.lua", function()
  it("find the line of a nested key path, skipping comments and strings", function()
    local text = table.concat({
      "-- auth = {",
      "local s = 'auth = {'",
      "return { auth = {",
      "  { type = 'open' },",
      "  { type = 'file',",
      "    options = { hash = 'x' } },",
      "} }",
    }, "\n")
    assert.equal(6, locate.find_line(text, { "auth", 2, "options", "hash" }))
    assert.equal(4, locate.find_line(text, { "auth", 1, "type" }))
    assert.equal("f.lua:6: m", locate.locate("f.lua", { "auth", 2, "options" }, "m", text))
    assert.equal("f.lua: m", locate.locate("f.lua", { "nowhere" }, "m", text))
    assert.equal("m", locate.locate(nil, { "auth" }, "m"))
  end)

  it("suggest the closest name", function()
    local c = { { name = "port", full = "port" }, { name = "host", full = "host" } }
    assert.equal(" (did you mean 'port'?)", suggest.did_you_mean("prot", c))
    assert.equal("", suggest.did_you_mean("zzzzzz", c))
    assert.equal(1, suggest.edit_distance("prot", "port"))
  end)
end)
