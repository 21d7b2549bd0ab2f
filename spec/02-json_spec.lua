-- The JSON codec of moonstream.core (csrc/json.c) through moonstream.json.
local json = require "moonstream.json"

local null = json.null

-- Deep equality that also tells integers from floats, -0.0 from 0.0 and
-- arrays (json.array_mt) from objects.
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return false end
    if a == 0 and b == 0 then return 1 / a == 1 / b end
    return a == b
  end
  if type(a) ~= "table" then return a == b end
  if getmetatable(a) ~= getmetatable(b) then return false end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- decode -> encode -> decode; returns the first decoded value, the text and
-- the value decoded again.
local function round_trip(text)
  local v1, err1 = json.decode(text)
  assert(err1 == nil, err1)
  local encoded, err2 = json.encode(v1)
  assert(encoded, err2)
  local v2, err3 = json.decode(encoded)
  assert(err3 == nil, err3)
  return v1, encoded, v2
end

describe("moonstream.core json", function()
  describe("decode", function()
    it("returns Lua values for every JSON type", function()
      local v, err = json.decode('{"s":"x","i":42,"f":1.5,"t":true,"f2":false,"n":null,"a":[1,"two"],"o":{"k":"v"}}')
      assert.is_nil(err)
      assert.equal("x", v.s)
      assert.equal("integer", math.type(v.i))
      assert.equal(42, v.i)
      assert.equal("float", math.type(v.f))
      assert.equal(1.5, v.f)
      assert.is_true(v.t)
      assert.is_false(v.f2)
      assert.equal(null, v.n)
      assert.is_true(json.is_array(v.a))
      assert.same({ 1, "two" }, { v.a[1], v.a[2] })
      assert.is_true(json.is_object(v.o))
      assert.equal("v", v.o.k)
    end)

    it("round-trips every JSON type exactly", function()
      for _, text in ipairs({
        '{"s":"x","i":42,"f":1.5,"t":true,"f2":false,"n":null,"a":[1,"two",[],{}],"o":{"k":{"d":[[null]]}}}',
        "[]", "{}", '""', "0", "-1", "3.25", "true", "false", "null", '[[[]],{"":{}}]',
      }) do
        local v1, _, v2 = round_trip(text)
        assert.is_true(same(v1, v2), text)
      end
    end)

    it("keeps empty arrays apart from empty objects", function()
      local v, text, again = round_trip('{"a":[],"b":{}}')
      assert.is_true(json.is_array(v.a))
      assert.is_true(json.is_object(v.b))
      assert.truthy(text:find('"a":[]', 1, true))
      assert.truthy(text:find('"b":{}', 1, true))
      assert.is_true(same(v, again))
    end)

    it("keeps nulls in arrays and objects, in place", function()
      local v, text = round_trip('[null,1,null,{"k":null,"a":[null]},null]')
      assert.equal(5, #v)
      assert.equal(null, v[1])
      assert.equal(1, v[2])
      assert.equal(null, v[3])
      assert.equal(null, v[4].k)
      assert.equal(null, v[4].a[1])
      assert.equal(null, v[5])
      local again = json.decode(text)
      assert.equal(null, again[4].k)
      assert.truthy(text:find('"k":null', 1, true))
      assert.equal("[null,1,null,", text:sub(1, 13))
    end)

    it("returns top-level scalars (null as json.null)", function()
      assert.equal(7, json.decode(" 7 "))
      assert.equal("s", json.decode('"s"'))
      assert.is_true(json.decode("true"))
      assert.equal(null, json.decode("null"))
    end)

    it("keeps the last value of a duplicate key", function()
      local v = json.decode('{"a":1,"a":2}')
      assert.equal(2, v.a)
    end)

    it("reads integers up to int64 exactly, as integers", function()
      for _, text in ipairs({ "9007199254740991", "-9007199254740991", "9007199254740993",
                              "9223372036854775807", "-9223372036854775808", "0", "-0" }) do
        local v, err = json.decode(text)
        assert.is_nil(err)
        assert.equal("integer", math.type(v))
        assert.equal(text == "-0" and "0" or text, json.encode(v))
      end
      assert.equal(math.maxinteger, json.decode("9223372036854775807"))
      assert.equal(math.mininteger, json.decode("-9223372036854775808"))
    end)

    it("reads floats to the nearest double and writes them back exactly", function()
      local cases = {
        { "0.30000000000000004", 0.1 + 0.2, "0.30000000000000004" },
        { "1e300", 1e300, "1e+300" },
        { "5e-324", 5e-324, nil },
        { "0.1", 0.1, "0.1" },
        { "-2.5E-3", -0.0025, "-0.0025" },
        { "1.7976931348623157e308", 1.7976931348623157e308, "1.7976931348623157e+308" },
      }
      for _, c in ipairs(cases) do
        local v1, text, v2 = round_trip(c[1])
        assert.equal("float", math.type(v1))
        assert.equal(c[2], v1)
        assert.equal(c[2], v2)
        if c[3] then assert.equal(c[3], text) end
      end
    end)

    it("keeps the sign of -0.0", function()
      local v, text, again = round_trip("-0.0")
      assert.equal("float", math.type(v))
      assert.equal(-math.huge, 1 / v)
      assert.equal("-0.0", text)
      assert.equal(-math.huge, 1 / again)
    end)

    it("decodes escapes, and \\u escapes (surrogate pairs included) to UTF-8", function()
      local v = json.decode([["q\" b\\ s\/ \b\f\n\r\t \u00e9 \ud83d\ude00 \u0000 \u20AC"]])
      assert.equal('q" b\\ s/ \b\f\n\r\t \xc3\xa9 \xf0\x9f\x98\x80 \0 \xe2\x82\xac', v)
      local _, _, again = round_trip([["q\" b\\ s\/ \b\f\n\r\t \u00e9 \ud83d\ude00 \u0000"]])
      assert.equal('q" b\\ s/ \b\f\n\r\t \xc3\xa9 \xf0\x9f\x98\x80 \0', again)
    end)

    it("keeps raw UTF-8 byte for byte", function()
      local s = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xef\xbf\xbf\xf4\x8f\xbf\xbf"
      local v, text = round_trip('"' .. s .. '"')
      assert.equal(s, v)
      assert.equal('"' .. s .. '"', text)
    end)

    it("rejects invalid UTF-8 and unpaired surrogates with the offset", function()
      local cases = {
        { '"a\xffb"', "invalid UTF-8 in string at byte 2" },
        { '["ok","\xc3\x28"]', "invalid UTF-8 in string at byte 7" },
        { '"\xc0\x80"', "invalid UTF-8 in string at byte 1" },        -- overlong NUL
        { '"\xed\xa0\x80"', "invalid UTF-8 in string at byte 1" },    -- encoded surrogate
        { '"\xf4\x90\x80\x80"', "invalid UTF-8 in string at byte 1" }, -- above U+10FFFF
        { '"\xe2\x82"', "invalid UTF-8 in string at byte 1" },        -- truncated
        { '"\xe2\x82', "unexpected end of input at byte 3" },        -- cut by the end
        { '"x\\ud800"', "unpaired UTF-16 surrogate in \\u escape at byte 2" },
        { '"\\udc00\\ud800"', "unpaired UTF-16 surrogate in \\u escape at byte 1" },
        { '"\\ud800\\u0041"', "unpaired UTF-16 surrogate in \\u escape at byte 1" },
        { '"\\ud800"', "unpaired UTF-16 surrogate in \\u escape at byte 1" },
        { '"\\ud800\\"', "unpaired UTF-16 surrogate in \\u escape at byte 1" },
        { "[\xff]", "unexpected character 0xFF at byte 1" },
      }
      for _, c in ipairs(cases) do
        local v, err = json.decode(c[1])
        assert.is_nil(v)
        assert.equal(c[2], err)
      end
    end)

    it("accepts an escaped backslash before 'u' as text", function()
      assert.equal("\\ud800", json.decode([["\\ud800"]]))
    end)

    it("returns nil and a message with the byte offset for malformed text", function()
      local cases = {
        { "", "unexpected end of input at byte 0" },
        { "  \n ", "unexpected end of input at byte 4" },
        { '{"a":[1,2', "unexpected end of input at byte 9" },
        { '{"a":"tex', "unexpected end of input at byte 9" },
        { "tru", "unexpected end of input at byte 3" },
        { "-", "unexpected end of input at byte 1" },
        { "[1.", "unexpected end of input at byte 3" },
        { '"\\u12', "unexpected end of input at byte 5" },
        { '"ab\\', "unexpected end of input at byte 4" },
        { '"\\ud83d\\ude', "unexpected end of input at byte 11" },
        { "hello", "unexpected character 'h' at byte 0" },
        { '{"body": [}', "unexpected character '}' at byte 10" },
        { '{"a":1} x', "unexpected character 'x' after the value at byte 8" },
        { "[1] [2]", "unexpected character '[' after the value at byte 4" },
        { "1 2", "unexpected character '2' after the value at byte 2" },
        { '1"', "unexpected character '\"' after the value at byte 1" },     -- yajl 2.1 alone accepts these
        { '"a" "b', "unexpected character '\"' after the value at byte 4" },
        { '{} "\xff', "unexpected character '\"' after the value at byte 3" },
        { "[1 2]", "expected ',' or ']' at byte 3" },
        { '{"a":1 "b":2}', "expected ',' or '}' at byte 7" },
        { '{"a" 1}', "expected ':' at byte 5" },
        { '{"a":1,}', "expected a string key at byte 7" },
        { "{'a':1}", "unexpected character \"'\" at byte 1" },
        { '{"a":1,2:3}', "expected a string key at byte 7" },
        { "[1,]", "unexpected character ']' at byte 3" },
        { "[01]", "expected ',' or ']' at byte 2" },
        { "[1.]", "expected a digit at byte 3" },
        { "[+1]", "unexpected character '+' at byte 1" },
        { "[NaN]", "unexpected character 'N' at byte 1" },
        { "[trux]", "unexpected character 'x' at byte 4" },
        { '["a\tb"]', "unescaped control character in string at byte 3" },
        { '["a\\qb"]', "invalid escape in string at byte 3" },
        { '["\\u12x4"]', "invalid \\u escape in string at byte 2" },
        { "[1] // comment", "unexpected character '/' after the value at byte 4" },
        { "/* c */ 1", "unexpected character '/' at byte 0" },
        { "[1,\v2]", "unexpected character 0x0B at byte 3" },
        { "\xef\xbb\xbf{}", "unexpected character 0xEF at byte 0" },
      }
      for _, c in ipairs(cases) do
        local v, err = json.decode(c[1])
        assert.is_nil(v)
        assert.equal(c[2], err)
        assert.truthy(err:find("at byte %d+$"))
      end
    end)

    it("rejects numbers outside int64 or outside the double range", function()
      local cases = {
        { "9223372036854775808", "number out of range at byte 0" },
        { "-9223372036854775809", "number out of range at byte 0" },
        { '{"n":123456789012345678901234567890}', "number out of range at byte 5" },
        { "1e400", "number out of range at byte 0" },
        { "[0,-1e400]", "number out of range at byte 3" },
      }
      for _, c in ipairs(cases) do
        local v, err = json.decode(c[1])
        assert.is_nil(v)
        assert.equal(c[2], err)
      end
      -- underflow is not out of range: it rounds to zero
      assert.equal(0.0, json.decode("1e-400"))
    end)

    it("rejects 100000 '[' quickly, at the depth limit", function()
      local started = os.clock()
      local v, err = json.decode(string.rep("[", 100000))
      assert.is_nil(v)
      assert.equal("nesting deeper than 128 at byte 128", err)
      assert.is_true(os.clock() - started < 0.5)
      v, err = json.decode(string.rep("{\"a\":", 200) .. "1" .. string.rep("}", 200))
      assert.is_nil(v)
      assert.equal("nesting deeper than 128 at byte 640", err)
    end)

    it("accepts nesting up to the limit, which max_depth sets", function()
      local ok = string.rep("[", 128) .. string.rep("]", 128)
      assert.is_not_nil(json.decode(ok))
      local v, err = json.decode("[" .. ok .. "]")
      assert.is_nil(v)
      assert.equal("nesting deeper than 128 at byte 128", err)
      assert.is_not_nil(json.decode("[" .. ok .. "]", 129))
      v, err = json.decode('[{"a":1}]', 1)
      assert.is_nil(v)
      assert.equal("nesting deeper than 1 at byte 1", err)
      assert.equal(5, json.decode("5", 0))
    end)

    it("raises on misuse", function()
      assert.has_error(function() json.decode() end)
      assert.has_error(function() json.decode({}) end)
      assert.has_error(function() json.decode("1", -1) end)
    end)
  end)

  describe("encode", function()
    it("writes scalars", function()
      assert.equal("null", json.encode(nil))
      assert.equal("null", json.encode(null))
      assert.equal("true", json.encode(true))
      assert.equal("false", json.encode(false))
      assert.equal("-42", json.encode(-42))
      assert.equal("9223372036854775807", json.encode(math.maxinteger))
      assert.equal("-9223372036854775808", json.encode(math.mininteger))
      assert.equal('"x"', json.encode("x"))
    end)

    it("writes the shortest float text that reads back the same", function()
      assert.equal("0.1", json.encode(0.1))
      assert.equal("0.30000000000000004", json.encode(0.1 + 0.2))
      assert.equal("1e+300", json.encode(1e300))
      assert.equal("9007199254740992", json.encode(2.0 ^ 53))
      assert.equal("100", json.encode(100.0))
      assert.equal("-0.0", json.encode(-0.0))
      assert.equal(5e-324, json.decode(json.encode(5e-324)))
      for _, f in ipairs({ math.pi, 1 / 3, 2 ^ -1074, 1.7976931348623157e308, 123456.789e-17 }) do
        assert.equal(f, json.decode(json.encode(f)))
      end
    end)

    it("escapes quotes, backslashes and control bytes only", function()
      assert.equal([["a\"b\\c/d"]], json.encode('a"b\\c/d'))
      assert.equal([["\b\f\n\r\t"]], json.encode("\b\f\n\r\t"))
      assert.equal([["\u0000\u0001\u001f\u000b"]], json.encode("\0\1\31\v"))
      assert.equal('"\x7f\xff\xc3\xa9"', json.encode("\x7f\xff\xc3\xa9"))
      local long = string.rep("abcdefgh", 100) .. "\n" .. string.rep("\"", 9)
      assert.equal(long, json.decode(json.encode(long)))
      local bytes = {}
      for i = 0, 127 do bytes[#bytes + 1] = string.char(i) end
      local all = table.concat(bytes)
      assert.equal(all, json.decode(json.encode(all)))
    end)

    it("writes sequences as arrays and sparse or keyed tables as objects", function()
      assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
      assert.equal('[["a"],{}]', json.encode({ { "a" }, {} }))
      assert.equal("{}", json.encode({}))
      assert.equal('{"2":"x"}', json.encode({ [2] = "x" }))
      local sparse = json.decode(json.encode({ [1] = "a", [3] = "c" }))
      assert.is_true(json.is_object(sparse))
      assert.same({ ["1"] = "a", ["3"] = "c" }, sparse)
      local mixed = json.decode(json.encode({ 1, 2, x = 3 }))
      assert.same({ ["1"] = 1, ["2"] = 2, x = 3 }, mixed)
    end)

    it("writes tables with json.array_mt as arrays, null holes included", function()
      assert.equal("[]", json.encode(json.array()))
      assert.equal("[1,null,3]", json.encode(json.array({ 1, null, 3 })))
      local text = json.encode({ a = json.array(), b = {} })
      assert.truthy(text == '{"a":[],"b":{}}' or text == '{"b":{},"a":[]}', text)
    end)

    it("writes tables with another metatable as objects", function()
      local t = setmetatable({ 1, 2 }, { __index = {} })
      assert.same({ ["1"] = 1, ["2"] = 2 }, json.decode(json.encode(t)))
    end)

    it("writes json.raw text verbatim", function()
      local stored = '{"x":[1,2.5,"y"],"z":{}}'
      assert.equal(stored, json.encode(json.raw(stored)))
      assert.equal('[' .. stored .. ',1]', json.encode(json.array({ json.raw(stored), 1 })))
      assert.equal('{"data":' .. stored .. '}', json.encode({ data = json.raw(stored) }))
      assert.equal(stored, json.raw(stored)[1])
      assert.has_error(function() json.raw({}) end)
      local broken = json.raw(stored)
      broken[1] = 5
      local text, err = json.encode({ broken })
      assert.is_nil(text)
      assert.equal("json_raw value must hold a string", err)
    end)

    it("returns nil and a message for cycles and deep nesting", function()
      local t = {}
      t.self = t
      local text, err = json.encode(t)
      assert.is_nil(text)
      assert.equal("nesting deeper than 128 (or a cycle)", err)
      local a = json.array()
      a[1] = { list = a }
      text, err = json.encode(a)
      assert.is_nil(text)
      assert.equal("nesting deeper than 128 (or a cycle)", err)
      local deep = json.decode(string.rep("[", 128) .. string.rep("]", 128))
      assert.equal(string.rep("[", 128) .. string.rep("]", 128), json.encode(deep))
      text, err = json.encode({ deep })
      assert.is_nil(text)
      assert.equal("nesting deeper than 128 (or a cycle)", err)
    end)

    it("returns nil and a message for values JSON cannot hold", function()
      local cases = {
        { print, "cannot encode a value of type function" },
        { { f = print }, "cannot encode a value of type function" },
        { { coroutine.create(print) }, "cannot encode a value of type thread" },
        { { io.stdout }, "cannot encode a value of type userdata" },
        { 0 / 0, "cannot encode non-finite number" },
        { math.huge, "cannot encode non-finite number" },
        { { x = { -math.huge } }, "cannot encode non-finite number" },
        { { [true] = 1 }, "table key must be a string" },
        { { [1.5] = 1 }, "table key must be a string" },
      }
      for _, c in ipairs(cases) do
        local text, err = json.encode(c[1])
        assert.is_nil(text)
        assert.equal(c[2], err)
      end
      -- a failure leaves the encoder usable
      assert.equal("[1]", json.encode({ 1 }))
    end)

    it("writes integer keys as their decimal string", function()
      local v = json.decode(json.encode({ [10] = "ten", [-1] = "minus", k = "v" }))
      assert.same({ ["10"] = "ten", ["-1"] = "minus", k = "v" }, v)
    end)

    it("handles large documents", function()
      local big = json.array()
      for i = 1, 20000 do
        big[i] = { id = i, name = "item " .. i, tags = json.array({ "a", "b\n" }), score = i / 7 + 0.5 }
      end
      local text = assert(json.encode(big))
      assert.is_true(#text > 256 * 1024)
      local back = assert(json.decode(text))
      assert.is_true(same(big, back))
      assert.equal("[1]", json.encode({ 1 }))
      local s = string.rep("\xc3\xa9\"", 300000)
      assert.equal(s, json.decode(json.encode(s)))
    end)
  end)
end)
