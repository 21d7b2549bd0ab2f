-- Valve (deepstream's permission files): the expression compiler and its
-- JavaScript semantics, the load errors with their exact texts, rule
-- selection and running as deepstream runs rules (cross-references, oldData,
-- the iteration limit), and the same decisions on POST /api and realtime.
local json = require "moonstream.json"
local log = require "moonstream.log"
local rule = require "moonstream.valve.rule"
local js = require "moonstream.valve.js"
local valve = require "moonstream.valve"
local permissions = require "moonstream.permissions"
local H = require "spec.support.helpers"

log.set_level("error")
local null = json.null

local ENV = {
  user = { id = "ann", isAuthenticated = true, data = { role = "admin", tags = json.array({ "a", "b" }), n = 0 } },
  data = { title = " Hi ", n = 3, list = json.array({ 1, 2, 3 }), nothing = null, empty = "" },
  oldData = null, now = 1700000000000, action = 18, name = "users/ann/x", vars = { "ann" },
  xref = function(n) if n == "x" then return { owner = "ann" } end return null end,
}

local function eval(expr, rule_type)
  local r, err, col = rule.compile(expr, "record", rule_type or "write", { "$id" })
  assert(r, tostring(err) .. " at " .. tostring(col))
  return r.fn(ENV)
end

describe("valve expressions follow JavaScript", function()
  -- expression, expected value (a string names its type and value as JS prints it)
  local CASES = {
    { "true", true }, { "false", false }, { "1 + 2", 3 }, { "'a' + 1 + 2", "a12" }, { "1 + 2 + 'a'", "3a" },
    { "'3' * '4'", 12 }, { "7 % -3", 1 }, { "-7 % 3", -1 }, { "0.1 + 0.2", 0.30000000000000004 },
    { "'' + 1e21", "1e+21" }, { "'' + 0.000001", "0.000001" }, { "'' + 1e-7", "1e-7" }, { "'' + 1/3", "0.3333333333333333" },
    { "'' + 2/2", "1" }, { "'' + -0", "0" }, { "'' + 1/0", "Infinity" }, { "'' + 0/0 === 'NaN'", true },
    { "9007199254740993 === 9007199254740992", true },
    { "1 === 1", true }, { "1 === '1'", false }, { "1 == '1'", true }, { "0 == ''", true }, { "0 == '0'", true },
    { "'' == '0'", false }, { "null == undefined", true }, { "null === undefined", false }, { "null == 0", false },
    { "false == '0'", true }, { "true == 1", true }, { "true == 2", false }, { "NaN == NaN", false },
    { "NaN !== NaN", true }, { "data.list == '1,2,3'", true }, { "data.list === data.list", true },
    { "[1] == 1", true }, { "({}) == '[object Object]'", true },
    { "!''", true }, { "!'0'", false }, { "!0", true }, { "!NaN", true }, { "!null", true }, { "!undefined", true },
    { "![]", false }, { "!{}", false }, { "!data.nothing", true }, { "!data.missing", true }, { "!!data.empty", false },
    { "0 || 'x'", "x" }, { "'' && 1", "" }, { "1 && 2", 2 }, { "null || undefined", nil }, { "0 && data.missing.y", 0 },
    { "typeof 1", "number" }, { "typeof 'a'", "string" }, { "typeof true", "boolean" }, { "typeof null", "object" },
    { "typeof undefined", "undefined" }, { "typeof data.list", "object" }, { "typeof _", "function" },
    { "typeof data.missing", "undefined" }, { "typeof oldData", "object" },
    { "'abc' < 'abd'", true }, { "'10' < '9'", true }, { "10 < 9", false }, { "'10' < 9", false },
    { "null < 1", true }, { "undefined < 1", false }, { "undefined >= 1", false }, { "NaN <= NaN", false },
    { "data.n > 2 ? 'big' : 'small'", "big" }, { "1 ? 2 : 3 ? 4 : 5", 2 }, { "0 ? 2 : 0 ? 4 : 5", 5 },
    { "user.id === $id", true }, { "name", "users/ann/x" }, { "now > 0", true }, { "action", 18 },
    { "user.data['role']", "admin" }, { "user.data.tags[1]", "b" }, { "user.data.tags[5]", nil },
    { "user.data.tags.length", 2 }, { "data.title.length", 4 }, { "'abc'[1]", "b" }, { "(5).x", nil },
    { "data.title.trim()", "Hi" }, { "data.title.toUpperCase()", " HI " }, { "'AbC'.toLowerCase()", "abc" },
    { "name.startsWith('users/')", true }, { "name.startsWith('ann', 6)", true }, { "name.endsWith('/x')", true },
    { "name.endsWith('ann', 9)", true }, { "name.includes('ann')", true }, { "name.includes('bob')", false },
    { "name.indexOf('/')", 5 }, { "name.indexOf('/', 6)", 9 }, { "name.indexOf('z')", -1 },
    { "user.data.tags.includes('a')", true }, { "user.data.tags.indexOf('b')", 1 }, { "[1, 2].includes(2)", true },
    { "[NaN].includes(NaN)", true }, { "[NaN].indexOf(NaN)", -1 }, { "['x', 'y'].indexOf('y') >= 0", true },
    { "name.match(/^users\\/(\\w+)/)[1]", "ann" }, { "name.match(/nothing/)", null },
    { "name.match('ann') !== null", true }, { "'aXbx'.match(/x/gi).length", 2 },
    { "_('x').owner === user.id", true }, { "_('y')", null },
    { "(user.data || {}).role", "admin" }, { "({ a: 1, 'b': 2 }).b", 2 }, { "'\\x41\\u0042\\n'", "AB\n" },
    { "0x1f", 31 }, { ".5 + 1.5e1", 15.5 }, { "+'3'", 3 }, { "-'x'", "NaN" }, { "+' 12 '", 12 }, { "+''", 0 },
    { "+'0x10'", 16 }, { "+'1e3'", 1000 }, { "+[]", 0 }, { "+null", 0 }, { "+undefined", "NaN" },
  }
  for _, c in ipairs(CASES) do
    it(c[1], function()
      local v = eval(c[1])
      if c[2] == "NaN" then
        assert.is_true(v ~= v, c[1] .. " gave " .. js.to_string(v))
      elseif type(c[2]) == "table" or c[2] == null then
        assert.equal(c[2], v)
      else
        assert.same(c[2], v)
        assert.equal(js.typeof(c[2]), js.typeof(v))
      end
    end)
  end

  it("throws a TypeError reading a property of null or undefined, and calling what is no method", function()
    for _, expr in ipairs({ "oldData.x", "data.missing.x", "_('y').owner", "data.n.startsWith('a')",
      "user.data.tags.trim()", "null.x" }) do
      local r = assert(rule.compile(expr, "record", "write", {}))
      local ok, e = pcall(r.fn, ENV)
      assert.is_false(ok, expr)
      assert.equal(js.JsError, getmetatable(e), expr)
      assert.equal("TypeError", e.name)
    end
  end)

  it("notes which rules read data and oldData", function()
    local r = assert(rule.compile("data.a === oldData.a", "record", "write", {}))
    assert.is_true(r.data and r.oldData)
    r = assert(rule.compile("user.data.role === 'x'", "record", "read", {}))
    assert.is_false(r.data or r.oldData)
  end)

  it("gives rules no way out: no globals, no calls but _ and the methods", function()
    for _, expr in ipairs({ "os", "require('os')", "load('x')", "_G", "string.rep('a', 9)", "data.constructor('x')",
      "this", "globalThis" }) do
      assert.is_nil((rule.compile(expr, "record", "write", {})), expr)
    end
  end)
end)

describe("valve load errors", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmdir(dir) end)

  local BASE = {
    "presence:", "  '*':", "    allow: true", "event:", "  '*':", "    publish: true", "rpc:", "  '*':",
    "    request: true", "record:", "  '*':", "    read: true",
  }
  local function file(extra_lines, replace)
    local lines = {}
    for i, l in ipairs(BASE) do lines[i] = l end
    if replace then lines = replace end
    for _, l in ipairs(extra_lines or {}) do lines[#lines + 1] = l end
    local p = dir .. "/p.yml"
    H.write_file(p, table.concat(lines, "\n") .. "\n")
    return p
  end

  -- lines added under record '*' (line 13 on), expected error after "<file>:"
  local CASES = {
    { { "    write: 'user.id ==== 1'" }, [[13: record "*" write: unexpected '=' at column 12 of "user.id ==== 1"]] },
    { { "    write: 'foo.bar'" }, [[13: record "*" write: unknown identifier 'foo' at column 1 of "foo.bar"]] },
    { { "    write: 'new Date()'" }, [[13: record "*" write: the new keyword is not supported at column 1 of "new Date()"]] },
    { { "    write: 'data.x.map(f)'" }, [[13: record "*" write: function map is not supported at column 8 of "data.x.map(f)"]] },
    { { "    write: '(x => 1)'" }, [[13: record "*" write: user functions are not supported at column 4 of "(x => 1)"]] },
    { { "    write: 'function() { return true }'" },
      [[13: record "*" write: user functions are not supported at column 1 of "function() { return true }"]] },
    { { "    create: 'data.x'" }, [[13: record "*" create: rule create for record does not support data at column 1 of "data.x"]] },
    { { "    listen: 'oldData === null'" },
      [[13: record "*" listen: rule listen for record does not support oldData at column 1 of "oldData === null"]] },
    { { "    write: 'user.id === $id'" },
      [[13: record "*" write: unknown path variable $id (the path has none) at column 13 of "user.id === $id"]] },
    { { "    write: '/unclosed'" }, [[13: record "*" write: unexpected '/' at column 1 of "/unclosed"]] },
    { { "    write: 'name.match(/(/)'" },
      [[13: record "*" write: invalid regular expression: missing closing parenthesis (pattern offset: 2) at column 12 of "name.match(/(/)"]] },
    { { "    write: ''" }, [[13: record "*" write: rule can't be empty at column 1 of ""]] },
    { { "    write: 'a &&'" }, [[13: record "*" write: unexpected end of the expression at column 5 of "a &&"]] },
    { { "    write: 5" }, [[13: record "*" write: a rule must be true, false or an expression string]] },
    { { "    update: true" }, [[13: unknown rule type update in section record]] },
    { { "  'users/$id':", "    write: 'user.id === $idx'" },
      [[14: record "users/$id" write: unknown path variable $idx (the path has $id) at column 13 of "user.id === $idx"]] },
    { { "  '/abs':", "    read: true" }, [[13: path can't start with / for path /abs in section record]] },
    { { "  'a/$-b':", "    read: true" }, [[13: invalid variable name $- for path a/$-b in section record]] },
    { { "  'a':", "    - read" }, [[13: record "a" must be an object of rule type -> rule]] },
    { { "other:", "  '*':", "    read: true" }, [[13: unexpected configuration section "other"]] },
  }
  for _, c in ipairs(CASES) do
    it(c[2], function()
      local p = file(c[1])
      local index, err = valve.load(p)
      assert.is_nil(index)
      assert.equal(p .. ":" .. c[2], err)
    end)
  end

  it("needs every section, each with '*'", function()
    local p = file(nil, { "record:", "  '*':", "    read: true", "event:", "  '*':", "    publish: true",
      "rpc:", "  '*':", "    request: true" })
    assert.same({ nil, p .. ': missing configuration section "presence"' }, { valve.load(p) })
    p = file(nil, { "record:", "  'a':", "    read: true", "event:", "  '*':", "    publish: true",
      "rpc:", "  '*':", "    request: true", "presence:", "  '*':", "    allow: true" })
    assert.same({ nil, p .. ':1: missing root entry "*" for section record' }, { valve.load(p) })
    p = file(nil, { "record: {}", "event:", "  '*':", "    publish: true",
      "rpc:", "  '*':", "    request: true", "presence:", "  '*':", "    allow: true" })
    assert.same({ nil, p .. ':1: empty section "record"' }, { valve.load(p) })
    p = file(nil, { "record: [", "" })
    local _, err = valve.load(p)
    assert.matches("^" .. p:gsub("%p", "%%%0") .. " is not valid YAML: ", err)
  end)

  it("reads JSON files too", function()
    local p = dir .. "/p.json"
    H.write_file(p, json.encode({ record = { ["*"] = { read = "user.id === 'a'" } }, event = { ["*"] = { publish = true } },
      rpc = { ["*"] = { request = true } }, presence = { ["*"] = { allow = true } } }))
    local index = assert(valve.load(p))
    assert.equal("*", index.record.read[1].pattern)
  end)
end)

-- A records stand-in with the one method permissions use, counting reads.
local function fake_records(map)
  local r = { reads = 0 }
  function r.get(_, name)
    r.reads = r.reads + 1
    local v = map[name]
    if v == nil then return nil end
    return 1, json.encode(v)
  end
  return r
end

local function user(id, data) return { user = { id = id, data = data, isAuthenticated = true } } end

local function rules_file(dir, record_rules, extra)
  local p = dir .. "/permissions.yml"
  H.write_file(p, "presence:\n  '*':\n    allow: 'user.isAuthenticated'\nevent:\n  '*':\n    publish: true\n"
    .. "    subscribe: true\nrpc:\n  '*':\n    request: true\n    provide: true\nrecord:\n" .. record_rules .. (extra or ""))
  return p
end

describe("valve decisions", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmdir(dir) end)

  it("takes the longest matching path that has the rule type; equally long ones: the last written", function()
    local p = assert(permissions.new(rules_file(dir, table.concat({
      "  '*':", "    read: true", "    write: false",
      "  'a/$x':", "    read: false",
      "  '$y/b':", "    read: true",
      "  'a/*/c':", "    read: 'name === \"a/b/c\"'",
    }, "\n") .. "\n")))
    p.records = fake_records({})
    assert.is_true(p:check(user("u"), "record", "read", "x"))
    assert.is_false(p:check(user("u"), "record", "read", "a/q"))
    assert.is_true(p:check(user("u"), "record", "read", "a/b")) -- 'a/$x' and '$y/b' are as long: the last wins
    assert.is_true(p:check(user("u"), "record", "read", "a/b/c"))
    assert.is_false(p:check(user("u"), "record", "read", "a/x/c"))
    assert.is_false(p:check(user("u"), "record", "write", "a/q")) -- only '*' has write
    -- $ matches one segment only
    assert.is_true(p:check(user("u"), "record", "read", "a/q/r"))
  end)

  it("caches the rule chosen per name, and forgets on reload", function()
    local path = rules_file(dir, "  '*':\n    read: true\n  'x/*':\n    read: false\n")
    local p = assert(permissions.new(path))
    p.records = fake_records({})
    assert.is_false(p:check(user("u"), "record", "read", "x/1"))
    assert.is_not_nil(p.cache["record\0read"]["x/1"])
    rules_file(dir, "  '*':\n    read: true\n  'x/*':\n    read: true\n")
    assert.is_true(p:reload())
    assert.is_true(p:check(user("u"), "record", "read", "x/1"))
  end)

  it("runs cross-references as deepstream: null for a missing record, nested, at most maxRuleIterations runs", function()
    local records = fake_records({
      ["idx/1"] = { ref = "doc/1" }, ["doc/1"] = { public = true },
      ["a/1"] = { next = "b/1" }, ["b/1"] = { next = "c/1" }, ["c/1"] = { ok = true },
    })
    local p = assert(permissions.new(rules_file(dir, table.concat({
      "  '*':", "    read: true",
      "  'docs/$id':", "    read: '_(_(\"idx/\" + $id).ref).public === true'",
      "  'missing/$id':", "    read: '_(\"none/\" + $id) === null'",
      "  'deep/$id':", "    read: '_(_(_(\"a/\" + $id).next).next).ok === true'",
      "  'bad/*':", "    read: '_(5) === null'",
      "  'undef/*':", "    read: '_(undefined) === undefined && _(\"x-undefined\") === undefined'",
    }, "\n") .. "\n")))
    p.records = records
    assert.is_true(p:check(user("u"), "record", "read", "docs/1"))
    assert.same({ false, "read", true }, { p:check(user("u"), "record", "read", "docs/2") }) -- null.ref throws
    assert.is_true(p:check(user("u"), "record", "read", "missing/1"))
    -- three levels need four runs: over the limit of 3
    local errored = select(3, p:check(user("u"), "record", "read", "deep/1"))
    assert.is_true(errored)
    assert.same({ false, "read", true }, { p:check(user("u"), "record", "read", "bad/1") })
    assert.is_true(p:check(user("u"), "record", "read", "undef/1"))
    local p4 = assert(permissions.new({ type = "config", options = { path = dir .. "/permissions.yml",
      maxRuleIterations = 4 } }))
    p4.records = records
    assert.is_true(p4:check(user("u"), "record", "read", "deep/1"))
  end)

  it("gives oldData (null when missing), data, and only `true` allows", function()
    local p = assert(permissions.new(rules_file(dir, table.concat({
      "  '*':", "    read: true", "    create: true",
      "    write: 'oldData === null ? data.v === 1 : data.v === oldData.v + 1'",
      "  'truthy/*':", "    write: '1'", "    create: true",
    }, "\n") .. "\n")))
    p.records = fake_records({ n = { v = 1 } })
    assert.is_true(p:check(user("u"), "record", "write", "new", { data = { v = 1 } }))
    assert.is_false(p:check(user("u"), "record", "write", "new", { data = { v = 2 } }))
    assert.is_true(p:check(user("u"), "record", "write", "n", { data = { v = 2 } }))
    assert.is_false(p:check(user("u"), "record", "write", "n", { data = { v = 1 } }))
    -- a path write from POST /api shows the new value; a realtime PATCH the merged record
    assert.is_true(p:check(user("u"), "record", "write", "n", { data = { v = 2 }, path = "w" }))
    assert.is_true(p:check(user("u"), "record", "write", "n", { data = 2, path = "v", patch = true }))
    assert.is_false(p:check(user("u"), "record", "write", "truthy/1", { data = {} }))
  end)

  it("sees users as deepstream: isAuthenticated false for the anonymous 'open' user, data null", function()
    local p = assert(permissions.new(rules_file(dir, "  '*':\n    read: 'user.isAuthenticated'\n")))
    p.records = fake_records({})
    assert.is_true(p:check(user("ann"), "record", "read", "x"))
    assert.is_false(p:check(user("open"), "record", "read", "x"))
    -- and a user without serverData has user.data null (deepstream's file auth)
    local q = assert(permissions.new(rules_file(dir, "  '*':\n    read: 'user.data === null'\n")))
    q.records = fake_records({})
    assert.is_true(q:check(user("eve"), "record", "read", "x"))
    assert.is_false(q:check(user("ann", { role = "r" }), "record", "read", "x"))
  end)

  it("keeps the old rules when a reloaded file is broken", function()
    local path = rules_file(dir, "  '*':\n    read: true\n")
    local p = assert(permissions.new(path))
    rules_file(dir, "  '*':\n    read: 'oops('\n")
    local ok, err
    local logged = H.capture_log(function() ok, err = p:reload() end)
    assert.is_nil(ok)
    assert.matches("unexpected end of the expression", err)
    assert.matches("permissions not reloaded, the old rules stay", logged)
    assert.is_true(p:check(user("u"), "record", "read", "x"))
  end)
end)

describe("valve on POST /api and realtime", function()
  local dir, t
  before_each(function() dir = H.tmpdir() end)
  after_each(function()
    if t then t:stop() end
    t = nil
    H.rmdir(dir)
  end)

  it("makes the same decisions for both, from one check", function()
    local path = rules_file(dir, table.concat({
      "  '*':", "    read: true", "    create: true", "    write: true",
      "  'owned/$owner':", "    write: 'user.id === $owner && typeof data.v === \"number\"'",
      "    read: 'user.id === $owner'",
    }, "\n") .. "\n", "")
    t = H.start({ permission = { type = "config", options = { path = path } },
      auth = { { type = "open" } } })
    local _, body = t:api({ authData = { username = "ann" }, body = {
      { topic = "record", action = "write", recordName = "owned/ann", data = { v = 1 } },
      { topic = "record", action = "write", recordName = "owned/ann", data = { v = "1" } },
      { topic = "record", action = "write", recordName = "owned/bob", data = { v = 1 } },
      { topic = "record", action = "read", recordName = "owned/bob" },
    } })
    assert.is_true(body.body[1].success)
    assert.equal("MESSAGE_DENIED", body.body[2].errorEvent)
    assert.equal("MESSAGE_DENIED", body.body[3].errorEvent)
    assert.equal("MESSAGE_DENIED", body.body[4].errorEvent)
    -- the realtime side asks the same function
    assert.is_false((t.server.realtime:permit({ user = { id = "ann" } }, "record", "write", "owned/bob",
      { data = { v = 1 } })))
    assert.is_true((t.server.realtime:permit({ user = { id = "bob" } }, "record", "write", "owned/bob",
      { data = { v = 1 } })))
  end)
end)
