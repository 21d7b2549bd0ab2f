-- Permissions written in Lua: rule selection (longest pattern, $var, no rule
-- = deny), rule contexts, create-then-write, the HTTP denials, rule errors,
-- loading errors and reload.
local json = require "moonstream.json"
local log = require "moonstream.log"
local permissions = require "moonstream.permissions"
local H = require "spec.support.helpers"

log.set_level("error")

local function user(id, data) return { user = { id = id, data = data, isAuthenticated = true } } end

local write_file, capture_log = H.write_file, H.capture_log

-- A records stand-in with the one method permissions use.
local function fake_records(map)
  return { get = function(_, name)
    local v = map[name]
    if v == nil then return nil end
    return 1, json.encode(v)
  end }
end

describe("permissions patterns", function()
  it("compile '*' to anything and '$var' to one segment", function()
    local p, vars = permissions.compile_pattern("users/$id/items/*")
    assert.same({ "id" }, vars)
    assert.equal("ann", ("users/ann/items/a/b"):match(p))
    assert.is_nil(("users/a/b/items/x"):match(p))
    p = permissions.compile_pattern("a.b(c)%[d]-e+?^")
    assert.truthy(("a.b(c)%[d]-e+?^"):match(p))
    assert.is_nil(("aXb(c)%[d]-e+?^"):match(p))
  end)
end)

describe("permissions:check", function()
  it("picks the longest matching pattern that defines the rule type", function()
    local p = assert(permissions.new({ record = {
      ["*"] = { read = true, write = true, create = true },
      ["a/*"] = { read = false },
      ["a/b/*"] = { read = true },
    } }))
    assert.is_true(p:check(user("u"), "record", "read", "x"))
    assert.same({ false, "read" }, { p:check(user("u"), "record", "read", "a/x") })
    assert.is_true(p:check(user("u"), "record", "read", "a/b/c"))
    -- a/* defines no write rule, so * decides
    assert.is_true(p:check(user("u"), "record", "write", "a/x"))
  end)

  it("denies when no pattern has the rule type", function()
    local p = assert(permissions.new({ record = { ["x"] = { read = true } }, event = {} }))
    assert.is_false(p:check(user("u"), "record", "read", "y"))
    assert.is_false(p:check(user("u"), "record", "delete", "x"))
    assert.is_false(p:check(user("u"), "event", "publish", "x"))
    assert.is_false(p:check(user("u"), "rpc", "request", "x"))
  end)

  it("allows everything when no permissions are configured", function()
    local p = assert(permissions.new(nil))
    assert.is_false(p:configured())
    assert.is_true(p:check(user("u"), "record", "delete", "anything"))
  end)

  it("gives function rules the user, name, $vars, data, oldData, now and read", function()
    local seen
    local p = assert(permissions.new({ record = {
      ["users/$id/$part"] = { write = function(ctx) seen = ctx; return ctx.user.id == ctx.vars.id end,
                              create = true },
    } }))
    p.records = fake_records({ ["users/ann/profile"] = { name = "Ann", age = 3 }, other = { x = 1 } })
    assert.is_true(p:check(user("ann", { role = "r" }), "record", "write", "users/ann/profile",
      { data = 4, path = "age" }))
    assert.equal("ann", seen.user.id)
    assert.same({ role = "r" }, seen.user.data)
    assert.is_true(seen.user.isAuthenticated)
    assert.equal("users/ann/profile", seen.name)
    assert.same({ id = "ann", part = "profile" }, seen.vars)
    assert.same({ name = "Ann", age = 4 }, seen.data) -- the record after the path write
    assert.same({ name = "Ann", age = 3 }, seen.oldData)
    assert.same({ x = 1 }, seen.read("other"))
    assert.is_nil(seen.read("missing"))
    assert.is_true(math.abs(seen.now - os.time() * 1000) <= 2000)
    assert.same({ false, "write" }, { p:check(user("bob"), "record", "write", "users/ann/profile", { data = {} }) })
  end)

  it("checks create then write for a missing record, write only for an existing one", function()
    local calls = {}
    local function rule(kind, answer) return function() calls[#calls + 1] = kind; return answer end end
    local p = assert(permissions.new({ record = { ["*"] = { create = rule("create", true), write = rule("write", true) },
      ["ro/*"] = { create = rule("create", false), write = rule("write", true) } } }))
    p.records = fake_records({ existing = { a = 1 }, ["ro/old"] = { a = 1 } })
    assert.is_true(p:check(user("u"), "record", "write", "new", { data = {} }))
    assert.same({ "create", "write" }, calls)
    calls = {}
    assert.is_true(p:check(user("u"), "record", "write", "existing", { data = {} }))
    assert.same({ "write" }, calls)
    calls = {}
    assert.same({ false, "create" }, { p:check(user("u"), "record", "write", "ro/new", { data = {} }) })
    assert.same({ "create" }, calls)
    -- a read-only user needs no create rule to write an existing record (deepstream #453)
    assert.is_true(p:check(user("u"), "record", "write", "ro/old", { data = {} }))
  end)

  it("denies and logs a rule that raises, with its file and line", function()
    local dir = H.tmpdir()
    local path = write_file(dir .. "/perms.lua", [[
return {
  event = {
    ["*"] = {
      publish = function(ctx)
        return ctx.data.missing.field
      end,
    },
  },
}
]])
    local p = assert(permissions.new(path))
    local result
    local logged = capture_log(function() result = { p:check(user("u"), "event", "emit", "e", { data = {} }) } end)
    assert.same({ false, "emit", true }, result)
    assert.matches('permission rule event%["%*"%]%.publish %(' .. dir:gsub("%p", "%%%0") .. "/perms%.lua:4%) raised", logged)
    assert.matches("perms%.lua:5: attempt to index a nil value", logged)
    H.rmdir(dir)
  end)
end)

describe("permissions files", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmdir(dir) end)

  it("report an unknown rule type or topic with file and line", function()
    local path = write_file(dir .. "/p.lua", "return {\n  record = {\n    ['*'] = {\n      wirte = true,\n    },\n  },\n}\n")
    local p, err = permissions.new(path)
    assert.is_nil(p)
    assert.equal(path .. ":4: permissions.record[\"*\"]: unknown rule type 'wirte' "
      .. "(create, write, read, delete, notify, listen)", err)
    write_file(path, "return {\n  records = {},\n}\n")
    p, err = permissions.new(path)
    assert.is_nil(p)
    assert.equal(path .. ":2: permissions: unknown topic 'records' (record, event, rpc, presence)", err)
    write_file(path, "return { rpc = { x = { request = 'yes' } } }")
    p, err = permissions.new(path)
    assert.is_nil(p)
    assert.equal(path .. ":1: permissions.rpc[\"x\"].request must be true, false or a function (got string)", err)
  end)

  it("reload: a good new file replaces the rules, a broken one keeps the old and says why", function()
    local path = write_file(dir .. "/p.lua", "return { event = { ['*'] = { publish = true } } }")
    local p = assert(permissions.new(path))
    assert.is_true(p:check(user("u"), "event", "emit", "x"))
    write_file(path, "return { event = { ['*'] = { publish = false } } }")
    assert.is_true(p:reload())
    assert.is_false(p:check(user("u"), "event", "emit", "x"))
    write_file(path, "return { event = { ['*'] = { publish = true } ")
    local ok, err
    local logged = capture_log(function() ok, err = p:reload() end)
    assert.is_nil(ok)
    assert.matches("p%.lua:1: '}' expected", err)
    assert.matches("permissions not reloaded, the old rules stay: .*p%.lua:1: '}' expected", logged)
    assert.is_false(p:check(user("u"), "event", "emit", "x"))
  end)
end)

describe("permissions over HTTP", function()
  local t, dir

  local RULES = [[
return {
  record = {
    ["*"] = { create = true, write = true, read = true, delete = true, notify = true },
    ["private/$owner/*"] = {
      read = function(ctx) return ctx.user.id == ctx.vars.owner end,
      write = function(ctx) return ctx.user.id == ctx.vars.owner and ctx.data.ok ~= false end,
    },
  },
  event = { ["*"] = { publish = true } },
  rpc = { ["*"] = { request = true }, ["admin/*"] = { request = function(ctx) return ctx.user.data == "admin" end } },
  presence = { ["*"] = { allow = false } },
}
]]

  before_each(function()
    dir = H.tmpdir()
    write_file(dir .. "/perms.lua", RULES)
    t = H.start({
      auth = { { type = "lua", options = { fn = function(a) return true, a.username, nil, a.role end } } },
      permissions = dir .. "/perms.lua",
    }, function(server) server:rpc("admin/x", function() return "done" end) end)
  end)
  after_each(function()
    t:stop()
    H.rmdir(dir)
  end)

  local function as(name, commands, role)
    local res = t:request({ body = json.encode({ authData = { username = name, role = role }, body = commands }) })
    assert.equal(200, res.status, res.body)
    return json.decode(res.body).body
  end

  local function denied(action, topic)
    return { success = false, errorTopic = topic or "record", errorEvent = "MESSAGE_DENIED",
             error = 'Message denied. Action "' .. action .. '" is not permitted.' }
  end

  it("uses $var captures, the data written and head as read", function()
    local r = as("ann", { { topic = "record", action = "write", recordName = "private/ann/x", data = { ok = true } } })
    assert.same({ success = true }, r[1])
    r = as("bob", {
      { topic = "record", action = "read", recordName = "private/ann/x" },
      { topic = "record", action = "head", recordName = "private/ann/x" },
      { topic = "record", action = "write", recordName = "private/ann/x", data = { ok = true } },
      { topic = "record", action = "read", recordName = "public" },
    })
    assert.same(denied("read"), r[1])
    assert.same(denied("head"), r[2])
    assert.same(denied("write"), r[3])
    assert.same({ success = false, errorTopic = "record", errorEvent = "RECORD_NOT_FOUND" },
      { success = r[4].success, errorTopic = r[4].errorTopic, errorEvent = r[4].errorEvent })
    -- ctx.data of a path write is the whole record after the change
    r = as("ann", { { topic = "record", action = "write", recordName = "private/ann/x", path = "ok", data = false } })
    assert.same(denied("write"), r[1])
    r = as("ann", { { topic = "record", action = "read", recordName = "private/ann/x" } })
    assert.same({ ok = true }, r[1].data)
  end)

  it("checks rpc requests with serverData, and presence", function()
    assert.same({ success = true, data = "done" },
      as("ann", { { topic = "rpc", action = "make", rpcName = "admin/x" } }, "admin")[1])
    assert.same(denied("make", "rpc"), as("bob", { { topic = "rpc", action = "make", rpcName = "admin/x" } }, "user")[1])
    assert.same(denied("query", "presence"), as("bob", { { topic = "presence", action = "query" } })[1])
  end)

  it("reloads the file on server:reload() and keeps the old rules when the new file is broken", function()
    local emit = { { topic = "event", action = "emit", eventName = "x" } }
    assert.same({ success = true }, as("ann", emit)[1])
    write_file(dir .. "/perms.lua", RULES:gsub('event = { %["%*"%] = { publish = true } }',
      'event = { ["*"] = { publish = false } }'))
    assert.is_true(t.server:reload())
    assert.same(denied("emit", "event"), as("ann", emit)[1])
    write_file(dir .. "/perms.lua", "return {")
    local logged = capture_log(function() assert.is_nil(t.server:reload()) end)
    assert.matches("permissions not reloaded", logged)
    assert.same(denied("emit", "event"), as("ann", emit)[1])
  end)

  it("warns at start when no permissions are configured, naming the config key", function()
    local logged = capture_log(function()
      log.set_level("warn")
      local t2 = H.start({ logLevel = "warn" })
      t2:stop()
    end)
    log.set_level("error")
    assert.matches("no permissions configured %(config key 'permissions'%): every user may do everything", logged)
  end)
end)

describe("rpc handler files", function()
  it("are reloaded by server:reload(); a broken file keeps the old handler", function()
    local dir = H.tmpdir()
    assert(require("lfs").mkdir(dir .. "/handlers"))
    write_file(dir .. "/handlers/v.lua", "return function() return 1 end")
    local t = H.start({ rpc = { handlers = dir .. "/handlers" } })
    local call = { { topic = "rpc", action = "make", rpcName = "v" } }
    local _, body = t:api(call)
    assert.equal(1, body.body[1].data)
    write_file(dir .. "/handlers/v.lua", "return function() return 2 end")
    write_file(dir .. "/handlers/w.lua", "return function() return 'new' end")
    assert.is_true(t.server:reload())
    _, body = t:api(call)
    assert.equal(2, body.body[1].data)
    _, body = t:api({ { topic = "rpc", action = "make", rpcName = "w" } })
    assert.equal("new", body.body[1].data)
    write_file(dir .. "/handlers/v.lua", "return function() return 3")
    local logged = capture_log(function() assert.is_nil(t.server:reload()) end)
    assert.matches("rpc handlers not reloaded, the old ones stay: .*v%.lua", logged)
    _, body = t:api(call)
    assert.equal(2, body.body[1].data)
    t:stop()
    H.rmdir(dir)
  end)
end)
