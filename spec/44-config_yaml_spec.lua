-- deepstream's config.yml: deepstream's default conf/ folder starts moonstream
-- unchanged; each key is mapped, ignored with a warning or refused; ${ENV},
-- fileLoad() and relative paths; errors name the file, line and key.
local lfs = require "lfs"
local config = require "moonstream.config"
local config_yaml = require "moonstream.config_yaml"
local log = require "moonstream.log"
local H = require "spec.support.helpers"

log.set_level("error")

local FIXTURE = "spec/fixtures/deepstream-conf"

local function copy_fixture(dir)
  for _, f in ipairs({ "config.yml", "permissions.yml", "users.yml" }) do
    local src = assert(io.open(FIXTURE .. "/" .. f, "rb"))
    H.write_file(dir .. "/" .. f, src:read("a"))
    src:close()
  end
end

local function translate(text)
  return config_yaml.translate(text, "config.yml")
end

describe("deepstream's default conf/ folder", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
    copy_fixture(dir)
  end)
  after_each(function() H.rmdir(dir) end)

  it("loads, with one warning per key that has no meaning here", function()
    local cfg, err
    local logged = H.capture_log(function() cfg, err = config.load(dir .. "/config.yml") end)
    assert(cfg, err)
    assert.equal(10000, cfg.rpc.responseTimeout)
    assert.equal(1000, cfg.rpc.ackTimeout)
    assert.same({ shuffleProviders = true, responseTimeout = 500, rematchInterval = 60000, matchCooldown = 10000 },
      cfg.listen)
    assert.equal("/deepstream", cfg.realtime.urlPath)
    assert.equal("/api", cfg.apiPath)
    assert.equal(1048576, cfg.maxMessageSize)
    assert.equal("info", cfg.logLevel)
    assert.same({ { type = "open" } }, cfg.auth)
    assert.equal("config", cfg.permission.type)
    assert.equal(dir .. "/permissions.yml", cfg.permission.options.path)
    assert.equal(3, cfg.permission.options.maxRuleIterations)
    assert.is_nil(cfg.origins) -- ignored while allowAllOrigins is true, as deepstream does
    for _, key in ipairs({ "serverName", "showLogo", "dependencyInitializationTimeout", "exitOnFatalError",
      "telemetry", "record.cacheRetrievalTimeout", "logger",
      "connectionEndpoints[0].options.maxBufferByteSize", "connectionEndpoints[1].options.getPath",
      "httpServer.options.origins" }) do
      assert.matches("deepstream key '" .. key:gsub("%p", "%%%0") .. "'", logged)
    end
    assert.matches(dir:gsub("%p", "%%%0") .. "/config.yml:3: deepstream key 'serverName' is ignored: ", logged)
  end)

  it("starts `moonstream start config.yml` from a copy and serves with its permissions", function()
    -- run from the folder: storage ./data lands in the temp copy
    local cmd = "cd '" .. dir .. "' && sh -c 'echo $$; exec env -u LD_PRELOAD -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 lua5.4 " .. lfs.currentdir()
      .. "/bin/moonstream start config.yml --port 0' 2>&1"
    local pipe = assert(io.popen(cmd, "r"))
    local pid = assert(tonumber(pipe:read("l")))
    local port, lines = nil, {}
    for line in pipe:lines() do
      lines[#lines + 1] = line
      port = line:match("listening on http://127%.0%.0%.1:(%d+)")
      if port then break end
    end
    assert(port, table.concat(lines, "\n"))
    local out = io.popen("env -u LD_PRELOAD curl -s -X POST -H 'Content-Type: application/json' http://127.0.0.1:" .. port
      .. "/api -d '{\"body\":[{\"topic\":\"record\",\"action\":\"write\",\"recordName\":\"a\",\"data\":{\"x\":1}},"
      .. "{\"topic\":\"record\",\"action\":\"read\",\"recordName\":\"a\"}]}'"):read("a")
    os.execute("kill -TERM " .. pid)
    for _ in pipe:lines() do end
    pipe:close()
    assert.same({ body = { { success = true }, { success = true, version = 1, data = { x = 1 } } }, result = "SUCCESS" },
      require("moonstream.json").decode(out))
  end)
end)

describe("config.yml keys", function()
  it("maps every key moonstream has", function()
    local user, warnings = assert(translate([[
logLevel: DEBUG
rpc:
  ackTimeout: 200
  responseTimeout: 3000
record:
  storageExclusionPrefixes: [tmp/]
listen:
  responseTimeout: 700
httpServer:
  type: default
  options:
    host: 0.0.0.0
    port: 7000
    healthCheckPath: /hc
    allowAllOrigins: false
    origins: [https://a.example]
    maxMessageSize: 4096
connectionEndpoints:
  - type: ws-binary
    options:
      urlPath: /ws
      heartbeatInterval: 5000
      unauthenticatedClientTimeout: 1000
      maxAuthAttempts: 2
  - type: ws-json
    options:
      urlPath: /ws-json
  - type: http
    options:
      allowAuthData: false
      enableAuthEndpoint: false
      postPath: /post
      authPath: /login
      requestTimeout: 900
auth:
  - type: file
    options:
      users: fileLoad(users.yml)
      hash: md5
      iterations: 100
      keyLength: 32
  - type: http
    options:
      endpointUrl: http://127.0.0.1:9/check
      permittedStatusCodes: [200]
      requestTimeout: 2000
  - type: none
permission:
  type: config
  options:
    permissions: fileLoad(permissions.yml)
    maxRuleIterations: 5
    cacheEvacuationInterval: 1000
monitoring:
  type: none
]]))
    assert.same({}, warnings)
    assert.same({
      logLevel = "debug", rpc = { ackTimeout = 200, responseTimeout = 3000 }, storageExclusionPrefixes = { "tmp/" },
      listen = { responseTimeout = 700 },
      realtime = { urlPath = "/ws", heartbeatInterval = 5000,
                   unauthenticatedClientTimeout = 1000, maxAuthAttempts = 2, jsonUrlPath = "/ws-json" },
      host = "0.0.0.0", port = 7000, healthCheckPath = "/hc", allowAllOrigins = false,
      origins = { "https://a.example" }, maxMessageSize = 4096,
      allowAuthData = false, enableAuthEndpoint = false, apiPath = "/post", authPath = "/login", requestTimeout = 900,
      auth = {
        { type = "file", options = { users = "users.yml", hash = "md5", iterations = 100, keyLength = 32 } },
        { type = "webhook", options = { endpointUrl = "http://127.0.0.1:9/check", permittedStatusCodes = { 200 },
                                        requestTimeout = 2000 } },
        { type = "open" },
      },
      permission = { type = "config", options = { path = "permissions.yml", maxRuleIterations = 5,
                                                  cacheEvacuationInterval = 1000 } },
    }, (require("moonstream.config").defaults() and user))
  end)

  it("replaces ${VAR} as deepstream does (unset: nothing)", function()
    local user = assert(translate("httpServer:\n  options:\n    healthCheckPath: /h${HOME}\n"
      .. "    host: 'x${MOONSTREAM_SURELY_UNSET_VAR}y'\n"))
    assert.equal("/h" .. os.getenv("HOME"), user.healthCheckPath)
    assert.equal("xy", user.host)
  end)

  it("warns once per ignored key, naming it and why", function()
    local _, warnings = assert(translate("showLogo: true\ncache:\n  type: redis\nlocks: {}\nrpc:\n"
      .. "  provideRequestorName: true\n"))
    assert.same({
      "config.yml:1: deepstream key 'showLogo' is ignored: moonstream prints no logo",
      "config.yml:2: deepstream key 'cache' is ignored: records live in LevelDB with its block cache (moonstream key storage.cacheSize)",
      "config.yml:4: deepstream key 'locks' is ignored: moonstream is a single node: no cluster locks",
      "config.yml:6: deepstream key 'rpc.provideRequestorName' is ignored: providers are not told who made the request",
    }, warnings)
  end)

  -- text, the error expected
  local ERRORS = {
    { "serverName: a\nprot: 6020\n", "config.yml:2: deepstream key 'prot' is not a deepstream config key moonstream knows" },
    { "enabledFeatures:\n  rpc: false\n",
      "config.yml:2: deepstream key 'enabledFeatures.rpc' cannot be used: moonstream cannot switch the rpc topic off (use permissions)" },
    { "httpServer:\n  options:\n    sslCert: fileLoad(c.pem)\n",
      "config.yml:3: deepstream key 'httpServer.options.sslCert' cannot be used: moonstream does not terminate TLS: put a TLS proxy in front" },
    { "auth:\n  - type: storage\n", "config.yml:2: deepstream key 'auth[0].type' auth type 'storage' is not supported (none, file, http)" },
    { "connectionEndpoints:\n  - type: ws-binary\n    options:\n      urlPat: /x\n",
      "config.yml:4: deepstream key 'connectionEndpoints[0].options.urlPat' is not a deepstream config key moonstream knows" },
    { "permission:\n  type: custom\n", "config.yml:2: deepstream key 'permission.type' permission type 'custom' is not supported (config, none)" },
    { "httpServer:\n  type: spdy\n", "config.yml:2: deepstream key 'httpServer.type' 'spdy' is not supported (default, uws)" },
    { "rpc: [1]\n", "config.yml:1: deepstream key 'rpc' must be a section (a mapping)" },
    { "rpc:\n  a: [\n", "config.yml is not valid YAML: did not find expected node content at document: 1, line: 3, column: 1\nwhile parsing a flow node at line: 3, column: 1\n" },
  }
  for _, c in ipairs(ERRORS) do
    it(c[2], function()
      local user, err = translate(c[1])
      assert.is_nil(user)
      assert.equal(c[2], err)
    end)
  end

  it("runs the Lua config's validation, naming the deepstream key and its line", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/c.yml", "logLevel: INFO\nhttpServer:\n  options:\n    port: high\n")
    local cfg, err = config.load(dir .. "/c.yml")
    assert.is_nil(cfg)
    assert.equal(dir .. "/c.yml:4: deepstream key 'httpServer.options.port' (moonstream's 'port') must be an integer "
      .. "from 0 to 65535 (got string)", err)
    H.write_file(dir .. "/c.yml", "permission:\n  type: config\n  options:\n    permissions: fileLoad(nope.yml)\n")
    cfg, err = config.load(dir .. "/c.yml")
    assert.is_nil(cfg)
    assert.equal(dir .. "/c.yml:4: deepstream key 'permission.options.permissions' (moonstream's "
      .. "'permission.options.path'): file '" .. dir .. "/nope.yml' does not exist", err)
    H.rmdir(dir)
  end)

  it("lists the keys mapped, ignored and refused", function()
    local lists = config_yaml.key_lists()
    assert.truthy(#lists.mapped > 30 and #lists.ignored > 25 and #lists.refused > 5)
    local function has(list, k) for _, x in ipairs(list) do if x == k then return true end end return false end
    assert.is_true(has(lists.mapped, "connectionEndpoints[type=http].options.postPath"))
    assert.is_true(has(lists.ignored, "telemetry"))
    assert.is_true(has(lists.refused, "httpServer.options.sslKey"))
  end)
end)

describe("the permission key in a Lua config", function()
  it("takes deepstream's shape and a Valve file path", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/p.yml", "x: 1\n")
    local cfg = assert(config.validate({ permission = { type = "config", options = { path = dir .. "/p.yml",
      maxRuleIterations = 2 } } }))
    assert.same({ type = "config", options = { path = dir .. "/p.yml", maxRuleIterations = 2 } }, cfg.permission)
    local _, err = config.validate({ permission = { type = "config", options = { maxRuleIterations = 0 } } })
    assert.equal("config key 'permission.options.maxRuleIterations' must be a positive integer (got 0)", err)
    _, err = config.validate({ permission = { type = "config", options = {} } })
    assert.equal("config key 'permission.options' needs either path (a Valve file) or permissions (the rules)", err)
    _, err = config.validate({ permission = { type = "none" }, permissions = {} })
    assert.equal("config key 'permission' and 'permissions' cannot both be given", err)
    H.rmdir(dir)
  end)
end)
