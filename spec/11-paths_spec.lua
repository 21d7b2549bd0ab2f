local json = require "moonstream.json"
local paths = require "moonstream.paths"

local array, null = json.array, json.null

-- Canonical JSON text (sorted keys) that tells arrays from objects, so a
-- comparison also checks that each table has the right kind.
local function canon(v)
  if v == null then
    return "null"
  elseif type(v) == "string" then
    return ("%q"):format(v)
  elseif type(v) ~= "table" then
    return tostring(v)
  elseif json.is_array(v) then
    local parts = {}
    for i = 1, #v do
      parts[i] = canon(v[i])
    end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do
    assert(type(k) == "string", "object key that is not a string: " .. tostring(k))
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for i, k in ipairs(keys) do
    keys[i] = ("%q:%s"):format(k, canon(v[k]))
  end
  return "{" .. table.concat(keys, ",") .. "}"
end

-- Parses path and sets value under root; fails the test on a parse error.
local function write(root, path, value)
  local tokens, err = paths.parse(path)
  assert(tokens, err)
  return paths.set(root, tokens, value)
end

describe("moonstream.paths", function()
  describe("parse", function()
    it("returns keys and 0-based integer indexes", function()
      local tokens, err = paths.parse("a.list[1].name")
      assert.is_nil(err)
      assert.same({ "a", "list", 1, "name" }, tokens)
      assert.equal("integer", math.type(tokens[3]))
    end)

    it("trims parts and skips empty ones", function()
      assert.same({ "a", "b" }, (paths.parse("a..b")))
      assert.same({ "a", "b", "c" }, (paths.parse(" a . b\t.. c ")))
      assert.same({ "first name" }, (paths.parse("first name")))
    end)

    it("reads name[2], name[ 2 ], name [2], several indexes and a bare index", function()
      assert.same({ "name", 2 }, (paths.parse("name[2]")))
      assert.same({ "name", 2 }, (paths.parse("name[ 2 ]")))
      assert.same({ "name", 2 }, (paths.parse("name [2]")))
      assert.same({ "m", 1, 0 }, (paths.parse("m[1][0]")))
      assert.same({ 3, "x" }, (paths.parse("[3].x")))
      assert.same({ "a", 7 }, (paths.parse("a[007]")))
    end)

    it("reads items.0 as the key \"0\"", function()
      local tokens = paths.parse("items.0")
      assert.same({ "items", "0" }, tokens)
      assert.equal("string", type(tokens[2]))
    end)

    it("returns no tokens for a path without parts", function()
      assert.same({}, (paths.parse("")))
      assert.same({}, (paths.parse(" . .. ")))
    end)

    it("refuses the parts __proto__, constructor and prototype", function()
      local tokens, err = paths.parse("__proto__.polluted")
      assert.is_nil(tokens)
      assert.equal("path part '__proto__' is not allowed", err)
      tokens, err = paths.parse("a.constructor")
      assert.is_nil(tokens)
      assert.equal("path part 'constructor' is not allowed", err)
      tokens, err = paths.parse("a.prototype.b")
      assert.is_nil(tokens)
      assert.equal("path part 'prototype' is not allowed", err)
      tokens, err = paths.parse("a. prototype [1]")
      assert.is_nil(tokens)
      assert.equal("path part 'prototype' is not allowed", err)
    end)

    it("refuses malformed indexes", function()
      for _, path in ipairs { "a[x]", "a[]", "a[-1]", "a[1", "a]", "a[1]b", "a[1]]", "a[ 1 2 ]" } do
        local tokens, err = paths.parse(path)
        assert.is_nil(tokens, path)
        assert.equal(("invalid path part '%s' (expected name, name[N] or [N] with N a whole number)"):format(path), err)
      end
      local tokens, err = paths.parse("a[1.5]")
      assert.is_nil(tokens)
      assert.equal("invalid path part 'a[1' (expected name, name[N] or [N] with N a whole number)", err)
    end)

    it("refuses an index above the limit without allocating", function()
      local tokens, err = paths.parse("a[1000000]")
      assert.is_nil(tokens)
      assert.equal("array index 1000000 is too large (limit 100000)", err)
      tokens, err = paths.parse("a[" .. ("9"):rep(500) .. "]")
      assert.is_nil(tokens)
      assert.equal("array index " .. ("9"):rep(64) .. "... is too large (limit 100000)", err)
      assert.same({ "a", 100000 }, (paths.parse("a[100000]")))
    end)

    it("refuses indexes that add up to more than the limit", function()
      local tokens, err = paths.parse("a[60000].b[40001]")
      assert.is_nil(tokens)
      assert.equal("array indexes in the path add up to more than 100000", err)
      assert.same({ "a", 60000, "b", 40000 }, (paths.parse("a[60000].b[40000]")))
    end)

    it("refuses a path with more than MAX_TOKENS tokens", function()
      local tokens, err = paths.parse(("a."):rep(paths.MAX_TOKENS + 1))
      assert.is_nil(tokens)
      assert.equal(("path has more than %d parts"):format(paths.MAX_TOKENS), err)
      assert.equal(paths.MAX_TOKENS, #paths.parse(("a."):rep(paths.MAX_TOKENS)))
      tokens, err = paths.parse(("a[0]."):rep(paths.MAX_TOKENS // 2 + 1))
      assert.is_nil(tokens)
      assert.equal(("path has more than %d parts"):format(paths.MAX_TOKENS), err)
      tokens, err = paths.parse("a" .. ("[0]"):rep(300000))
      assert.is_nil(tokens)
      assert.equal(("path has more than %d parts"):format(paths.MAX_TOKENS), err)
    end)

    it("parses long hostile paths in linear time", function()
      local spaces = (" "):rep(200000)
      local start = os.clock()
      assert.same({ "a" .. spaces .. "b" }, (paths.parse("a" .. spaces .. "b")))
      assert.is_nil((paths.parse("a[" .. spaces .. ("1"):rep(200000) .. spaces .. "x")))
      assert.is_true(os.clock() - start < 1)
    end)

    it("returns the cached tokens for a path seen before, up to a bounded number of paths", function()
      local first = paths.parse("cached.path[1]")
      assert.equal(first, paths.parse("cached.path[1]"))
      for i = 1, 1000 do
        paths.parse("other" .. i)
      end
      local again = paths.parse("cached.path[1]")
      assert.are_not.equal(first, again)
      assert.same(first, again)
    end)

    it("caches refusals too", function()
      local _, err1 = paths.parse("x.__proto__")
      local tokens, err2 = paths.parse("x.__proto__")
      assert.is_nil(tokens)
      assert.equal(err1, err2)
    end)

    it("raises when the path is not a string", function()
      assert.has.error(function() paths.parse(5) end, "bad argument #1 to 'parse' (string expected, got number)")
    end)
  end)

  describe("set", function()
    it("sets one key and keeps the rest", function()
      local root = { firstname = "Alan", lastname = "Smith" }
      local result = write(root, "firstname", "Bob")
      assert.equal(root, result)
      assert.equal('{"firstname":"Bob","lastname":"Smith"}', canon(result))
    end)

    it("creates missing objects along a nested path", function()
      assert.equal('{"a":{"b":{"c":42}},"x":1}', canon(write({ x = 1 }, "a.b.c", 42)))
    end)

    it("replaces a subtree with object data", function()
      local root = { a = { b = { c = 1 }, d = 2 } }
      assert.equal('{"a":{"b":{"z":1},"d":2}}', canon(write(root, "a.b", { z = 1 })))
    end)

    it("creates a missing array with null holes for an index", function()
      assert.equal('{"arr":[null,"x"],"k":1}', canon(write({ k = 1 }, "arr[1]", "x")))
    end)

    it("sets an element of an existing array", function()
      assert.equal('{"arr":["first",2,3]}', canon(write({ arr = array { 1, 2, 3 } }, "arr[0]", "first")))
    end)

    it("fills the gap past the end of an array with null", function()
      assert.equal('{"arr":["a",null,null,"d"]}', canon(write({ arr = array { "a" } }, "arr[3]", "d")))
    end)

    it("creates an array for an index in the middle of a path", function()
      assert.equal('{"a":{"list":[null,{"name":"n"}]}}', canon(write({}, "a.list[1].name", "n")))
      assert.equal('{"m":[[null,"x"]]}', canon(write({}, "m[0][1]", "x")))
    end)

    it("replaces primitive and null intermediates", function()
      assert.equal('{"a":{"b":1}}', canon(write({ a = 5 }, "a.b", 1)))
      assert.equal('{"a":{"b":1}}', canon(write({ a = null }, "a.b", 1)))
      assert.equal('{"a":[null,1]}', canon(write({ a = "s" }, "a[1]", 1)))
      assert.equal('{"a":[{"b":1}]}', canon(write({ a = array { null } }, "a[0].b", 1)))
    end)

    it("stores null", function()
      local root = { firstname = "Bob", lastname = "Smith" }
      assert.equal('{"firstname":"Bob","lastname":null}', canon(write(root, "lastname", null)))
    end)

    it("creates the root from {} when there is none", function()
      assert.equal('{"x":{"y":1}}', canon(write(nil, "x.y", 1)))
      assert.equal('{"x":1}', canon(write(null, "x", 1)))
      assert.equal('{"x":1}', canon(write("str", "x", 1)))
    end)

    it("sets the key \"0\" for items.0 on an object and a missing value", function()
      assert.equal('{"items":{"0":"a"}}', canon(write({}, "items.0", "a")))
      assert.equal('{"items":{"0":"a","k":1}}', canon(write({ items = { k = 1 } }, "items.0", "a")))
    end)

    it("uses an index on an existing object as its key", function()
      assert.equal('{"o":{"2":"x","k":1}}', canon(write({ o = { k = 1 } }, "o[2]", "x")))
    end)

    it("reaches an array's element with a key that is an index", function()
      assert.equal('{"items":["a","z"]}', canon(write({ items = array { "a", "b" } }, "items.1", "z")))
      assert.equal('{"items":["a",null,"z"]}', canon(write({ items = array { "a" } }, "items.2", "z")))
      assert.equal('["x",2]', canon(write(array { 1, 2 }, "0", "x")))
      assert.equal('[1,"y"]', canon(write(array { 1, 2 }, "[1]", "y")))
    end)

    it("refuses a key on an existing array and changes nothing", function()
      local root = { arr = array { 1 } }
      local result, err = write(root, "arr.name.deep", 1)
      assert.is_nil(result)
      assert.equal("path part 'name' is a key, but the value it applies to is an array", err)
      result, err = write(root, "arr.01", 1)
      assert.is_nil(result)
      assert.equal("path part '01' is a key, but the value it applies to is an array", err)
      assert.equal('{"arr":[1]}', canon(root))
    end)

    it("refuses a key-index above the limit on an existing array and changes nothing", function()
      local root = { arr = array {} }
      local result, err = write(root, "arr.1000000", 1)
      assert.is_nil(result)
      assert.equal("array index 1000000 is too large (limit 100000)", err)
      assert.equal('{"arr":[]}', canon(root))
    end)

    it("returns the value itself for no tokens", function()
      local value = { k = 1 }
      assert.equal(value, paths.set({ old = true }, {}, value))
    end)

    it("raises when the value is nil", function()
      assert.has.error(function() paths.set({}, { "a" }, nil) end,
        "bad argument #3 to 'set' (value expected, use json.null for null)")
    end)
  end)

  describe("get", function()
    local root = { a = { list = array { null, { name = "n" } } }, o = { ["2"] = "two" }, arr = array { "x" } }

    it("returns the value at a path", function()
      assert.equal("n", paths.get(root, paths.parse("a.list[1].name")))
      assert.equal("two", paths.get(root, paths.parse("o[2]")))
      assert.equal("x", paths.get(root, paths.parse("arr.0")))
      assert.equal(root, paths.get(root, paths.parse("")))
    end)

    it("returns json.null for a stored null", function()
      assert.equal(null, paths.get(root, paths.parse("a.list[0]")))
    end)

    it("returns nil when the path leads nowhere", function()
      assert.is_nil(paths.get(root, paths.parse("a.list[0].name")))
      assert.is_nil(paths.get(root, paths.parse("a.list[5]")))
      assert.is_nil(paths.get(root, paths.parse("arr.name")))
      assert.is_nil(paths.get(root, paths.parse("missing.x")))
      assert.is_nil(paths.get(nil, paths.parse("x")))
    end)
  end)
end)
