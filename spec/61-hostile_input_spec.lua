-- Hostile input through the whole HTTP stack: a structure-aware fuzz of the
-- dispatcher (random and mutated JSON commands: right and wrong types, huge
-- and deep values, unicode, numbers at the limits) and the extreme cases of
-- a hostile client (100 000 '[', huge strings, numbers beyond 2^53). Every request must
-- get a 200 with one result per command or a 4xx with a readable text, never
-- a 5xx, a hang or a crash; a value that is accepted must read back exactly;
-- no answer may show a file path or a stack trace.
--
-- Bounded and reproducible: MOONSTREAM_FUZZ_SEED (default 6) and
-- MOONSTREAM_FUZZ_REQUESTS (default 1500) pick the run; a longer one:
--   MOONSTREAM_FUZZ_REQUESTS=50000 busted spec/61-hostile_input_spec.lua
local json = require "moonstream.json"
local log = require "moonstream.log"
local H = require "spec.support.helpers"

local SEED = tonumber(os.getenv("MOONSTREAM_FUZZ_SEED")) or 6
local REQUESTS = tonumber(os.getenv("MOONSTREAM_FUZZ_REQUESTS")) or 1500
local PARALLEL = 50

-- Things no answer may contain: file paths of the server's code or data and
-- Lua stack traces.
local LEAKS = { "%.lua:%d", "stack traceback", "/tmp/", "/work/", "moonstream/[%w_]+%.lua", "%.so:" }

local function assert_no_leak(text, what)
  for _, pattern in ipairs(LEAKS) do
    assert(not text:find(pattern), what .. " leaks '" .. pattern .. "': " .. text:sub(1, 300))
  end
end

---------------------------------------------------------------------------
-- Generators (a seeded math.random; each returns a Lua value or JSON text)
---------------------------------------------------------------------------

local rnd = math.random

local function pick(list) return list[rnd(#list)] end

local NUMBERS = {
  0, -1, 1, 2 ^ 53, 2 ^ 53 + 1, 9007199254740993, 9223372036854775807, math.mininteger,
  1e308, -1e308, 5e-324, -0.0, 0.1, 1.7976931348623157e308, 2.2250738585072014e-308, 123456789.125,
}

local STRINGS = {
  "", "a", "users/ann", "a.b.c", "a[0]", "[0]", "x[99999999999]", "a..b", ".", "[", "]", "a[-1]",
  "Ünïcödé ✓", "😀", "\u{10FFFF}", "null", "__proto__", "constructor", "r/", "r/../x", "\0",
  "line\nbreak", "tab\t", "quote\"", "back\\slash", string.rep("é", 1000),
}

local value -- forward

local function random_string()
  local r = rnd(10)
  if r <= 6 then return pick(STRINGS) end
  if r <= 8 then
    local t = {}
    for i = 1, rnd(40) do t[i] = utf8.char(pick({ rnd(32, 126), rnd(128, 0x7FF), rnd(0x800, 0xD7FF), rnd(0x10000, 0x10FFFF) })) end
    return table.concat(t)
  end
  if r == 9 then return string.rep("x", rnd(1, 20000)) end
  return string.rep("ab", rnd(1, 200))
end

local function random_table(depth)
  if rnd(2) == 1 then
    local a = json.array()
    for i = 1, rnd(0, 6) do a[i] = value(depth + 1) end
    return a
  end
  local o = {}
  for _ = 1, rnd(0, 6) do o[random_string()] = value(depth + 1) end
  return o
end

function value(depth)
  depth = depth or 0
  local r = rnd(depth > 6 and 5 or 8)
  if r == 1 then return pick(NUMBERS) end
  if r == 2 then return random_string() end
  if r == 3 then return pick({ true, false, json.null }) end
  if r == 4 then return rnd(-1000, 1000) end
  if r == 5 then return rnd() * 10 ^ rnd(-300, 300) end
  return random_table(depth)
end

local function nested(n, open, close, inner)
  return string.rep(open, n) .. (inner or "") .. string.rep(close, n)
end

local TOPICS = { "record", "list", "event", "rpc", "presence" }
local ACTIONS = { "read", "write", "head", "delete", "notify", "emit", "make", "query", "subscribe", "" }
local VALID_ACTIONS = {
  record = { "read", "write", "head", "delete", "notify", "write", "write" }, list = { "read", "write", "delete" },
  event = { "emit" }, rpc = { "make" }, presence = { "query" },
}

local function wrong_type()
  return pick({ 1, 1.5, true, json.null, json.array(), {}, "", string.rep("t", 5000) })
end

-- A command: mostly well-formed with one property of a random kind.
local function command()
  local topic = pick(TOPICS)
  local cmd = { topic = topic, action = rnd(10) == 1 and pick(ACTIONS) or pick(VALID_ACTIONS[topic]) }
  local write = cmd.action == "write"
  if topic == "record" then
    cmd.recordName = "f/" .. pick({ "a", "b", "c", "a.b", random_string() })
    if write then
      if rnd(3) == 1 then cmd.path = random_string() end
      if rnd(3) == 1 then cmd.version = pick({ -1, 0, 1, 2, 3, 2 ^ 53, math.maxinteger, -2, 1.5 }) end
      cmd.data = (cmd.path or rnd(4) == 1) and value() or random_table(0)
    end
    if cmd.action == "notify" then
      cmd.recordName = nil
      cmd.recordNames = json.array({ random_string(), random_string() })
    end
  elseif topic == "list" then
    cmd.listName = "l/" .. pick({ "a", "b", random_string() })
    if write then cmd.data = rnd(4) > 1 and json.array({ random_string(), random_string() }) or value() end
  elseif topic == "event" then
    cmd.eventName = random_string()
    cmd.data = value()
  elseif topic == "rpc" then
    cmd.rpcName = pick({ "echo", "boom", "nil-error", "missing", random_string() })
    cmd.data = value()
  elseif topic == "presence" then
    if rnd(2) == 1 then cmd.names = json.array({ random_string() }) end
  end
  -- one property replaced by something of the wrong kind, or an extra one
  local r = rnd(16)
  if r == 1 then
    local keys = {}
    for k in pairs(cmd) do keys[#keys + 1] = k end
    table.sort(keys)
    cmd[pick(keys)] = wrong_type()
  elseif r == 2 then
    cmd[random_string()] = value()
  end
  return cmd
end

-- The text of one request body: a structured batch, or a mutated one.
local function request_body()
  local msg = { body = json.array() }
  for i = 1, rnd(1, 4) do msg.body[i] = command() end
  local r = rnd(30)
  if r == 1 then msg.body = wrong_type() end
  if r == 2 then msg.token = wrong_type() end
  if r == 3 then msg.authData = value() end
  local text = assert(json.encode(msg))
  r = rnd(12)
  if r == 1 then
    -- byte mutations: flip, insert, delete, truncate
    local b = { text:byte(1, -1) }
    for _ = 1, rnd(1, 4) do
      if #b == 0 then break end
      local at = rnd(#b)
      local m = rnd(4)
      if m == 1 then b[at] = rnd(0, 255)
      elseif m == 2 then table.insert(b, at, pick({ 0x5B, 0x7B, 0x22, 0x5C, 0x2C, 0xFF, 0xC3 }))
      elseif m == 3 then table.remove(b, at)
      else for k = #b, at, -1 do b[k] = nil end end
    end
    local parts = {}
    for i = 1, #b, 4096 do parts[#parts + 1] = string.char(table.unpack(b, i, math.min(i + 4095, #b))) end
    text = table.concat(parts)
  elseif r == 2 then
    -- splice raw number literals that Lua values cannot express
    text = text:gsub("%d+", function(d)
      if rnd(4) == 1 then return pick({ "18446744073709551616", "1e400", "-1e400", "0.0000000000000000000001",
        "9223372036854775808", "-9223372036854775809", "1E2", "-0", "00", "1.", ".5", "+1" }) end
      return d
    end, 3)
  elseif r == 3 then
    text = '{"body":[' .. nested(rnd(100, 400), "[", "]") .. "]}"
  end
  return text
end

---------------------------------------------------------------------------

local function check_answer(res, body_text)
  local what = "request " .. body_text:sub(1, 200)
  assert(res.status, "no answer (" .. tostring(res.error) .. ") to " .. what)
  assert(res.status < 500, "status " .. res.status .. " (" .. tostring(res.body) .. ") for " .. what)
  assert_no_leak(res.body, "answer to " .. what)
  if res.status ~= 200 then
    assert(#res.body > 0 and #res.body < 4096, "an unclear " .. res.status .. " text for " .. what)
    return nil
  end
  local msg = assert(json.decode(res.body))
  assert.is_true(json.is_array(msg.body))
  for _, r in ipairs(msg.body) do
    assert.is_boolean(r.success)
    if not r.success then assert(type(r.error) == "string" and #r.error > 0, "a failure without a text") end
  end
  return msg
end

describe("hostile input", function()
  local t, logged

  before_each(function()
    -- failing handlers log on purpose; keep the lines for the leak check
    logged = {}
    log.set_sink(function(line) logged[#logged + 1] = line end)
    t = H.start({ requestTimeout = 5000, logLevel = "warn" }, function(server)
      server:rpc("echo", function(data) return data end)
      server:rpc("boom", function() error("handler exploded") end)
      server:rpc("nil-error", function() return nil, "no luck" end)
      server:on_event("f", function() error("listener exploded") end)
    end)
  end)

  after_each(function()
    t:stop()
    log.set_sink(nil)
  end)

  it("answers every fuzzed command batch with a 200 or a clear 4xx", function()
    math.randomseed(SEED)
    local counts, done = {}, 0
    while done < REQUESTS do
      local list, texts = {}, {}
      for i = 1, math.min(PARALLEL, REQUESTS - done) do
        texts[i] = request_body()
        list[i] = { body = texts[i] }
      end
      local results = t:request_all(list)
      for i, res in ipairs(results) do
        local msg = check_answer(res, texts[i])
        local key = res.status == 200 and msg.result or tostring(res.status)
        counts[key] = (counts[key] or 0) + 1
      end
      done = done + #list
    end
    -- the mix reached every kind of answer (else the generator is broken)
    assert.is_true((counts.SUCCESS or 0) > 0, "no batch succeeded")
    assert.is_true((counts.FAILURE or 0) + (counts.PARTIAL_SUCCESS or 0) > 0, "no command failed")
    assert.is_true((counts["400"] or 0) > 0, "no request was rejected")
    local summary = {}
    for k, n in pairs(counts) do summary[#summary + 1] = k .. "=" .. n end
    table.sort(summary)
    print(("\nfuzzed %d requests (seed %d): %s"):format(REQUESTS, SEED, table.concat(summary, " ")))
    -- and the server still works
    local _, msg = t:api({ { topic = "record", action = "write", recordName = "after", data = { ok = true } },
                           { topic = "record", action = "read", recordName = "after" } })
    assert.equal("SUCCESS", msg.result)
  end)

  it("reads back every record a fuzzed write stored, exactly", function()
    math.randomseed(SEED + 1)
    local checked = 0
    for _ = 1, 60 do
      local name = "exact/" .. random_string()
      local data = random_table(0)
      local res, msg = t:api({ { topic = "record", action = "write", recordName = name, data = data },
                               { topic = "record", action = "read", recordName = name } })
      assert.equal(200, res.status)
      if msg.body[1].success then
        -- compared as JSON texts re-encoded from both sides: same values,
        -- same numbers (the codec's round trip is exact), same [] and {}
        local sent = json.decode(assert(json.encode(data)))
        assert.same(sent, msg.body[2].data)
        checked = checked + 1
      end
    end
    assert.is_true(checked >= 50)
  end)

  it("answers 100 000 nested '[' with a clear 400", function()
    local res = t:request({ body = '{"body":' .. string.rep("[", 100000) })
    assert.equal(400, res.status)
    assert.matches("nest", res.body)
    res = t:request({ body = '{"body":[{"topic":"record","action":"write","recordName":"deep","data":'
      .. nested(100000, "[", "]") .. "}]}" })
    assert.equal(400, res.status)
    assert.matches("nest", res.body)
    -- 128 levels in all is accepted and reads back
    local data = nested(124, "[", "]", "1")
    res = t:request({ body = '{"body":[{"topic":"record","action":"write","recordName":"deep","data":'
      .. data .. '},{"topic":"record","action":"read","recordName":"deep"}]}' })
    assert.equal(200, res.status)
    assert.truthy(res.body:find(data, 1, true))
  end)

  it("stores a string of almost maxMessageSize and reads it back; 413 above it", function()
    local big = string.rep("é", 400000) .. "end" -- 800 kB of UTF-8
    local res, msg = t:api({ { topic = "record", action = "write", recordName = "huge", data = { s = big } },
                             { topic = "record", action = "read", recordName = "huge" } })
    assert.equal(200, res.status)
    assert.equal(big, msg.body[2].data.s)
    res = t:request({ body = json.encode({ body = { { topic = "event", action = "emit", eventName = "x",
      data = string.rep("x", 1048577) } } }) })
    assert.equal(413, res.status)
  end)

  it("keeps numbers beyond 2^53 exact and rejects what no double or int64 holds", function()
    local cases = {
      "9007199254740993", "-9007199254740993", "9223372036854775807", "-9223372036854775808",
      "1.7976931348623157e+308", "5e-324", "0.1", "-0.0", "1e+300", "123456789.125",
    }
    for _, literal in ipairs(cases) do
      local res = t:request({ body = '{"body":[{"topic":"record","action":"write","recordName":"n","data":{"v":'
        .. literal .. '}},{"topic":"record","action":"read","recordName":"n"}]}' })
      assert.equal(200, res.status)
      local v = assert(json.decode(res.body)).body[2].data.v
      assert.equal(assert(json.decode(literal)), v)
      -- the text read back parses to the very same number
      local text = res.body:match('"data":{"v":([^}]+)}')
      assert.equal(json.decode(literal), json.decode(text), literal .. " came back as " .. text)
    end
    for _, literal in ipairs({ "18446744073709551616", "9223372036854775808", "-9223372036854775809", "1e400", "-1e400" }) do
      local res = t:request({ body = '{"body":[{"topic":"record","action":"write","recordName":"n","data":{"v":'
        .. literal .. '}}]}' })
      assert.equal(400, res.status, literal)
      assert.matches("range", res.body)
    end
  end)

  it("cuts echoed client text between characters, never inside one", function()
    -- byte 64 falls inside a two-byte character in both texts
    local long = "a" .. string.rep("é", 40)
    local res, msg = t:api({ { topic = "record", action = "write", recordName = "u", data = json.array() },
                             { topic = "record", action = "write", recordName = "u", path = long, data = 1 } })
    assert.equal(200, res.status)
    assert.truthy(msg, "the answer is not valid JSON")
    assert.matches("^path part 'a" .. string.rep("é", 31) .. "%.%.%.'", msg.body[2].error)
    res = t:request({ body = json.encode({ body = { { topic = long, action = "x" } } }) })
    assert.equal(400, res.status)
    assert.truthy(utf8.len(res.body), "the 400 text is not valid UTF-8")
  end)

  it("tells RPC and listener failures without file names or tracebacks", function()
    local res, msg = t:api({ { topic = "rpc", action = "make", rpcName = "boom" },
                             { topic = "rpc", action = "make", rpcName = "nil-error" },
                             { topic = "event", action = "emit", eventName = "f", data = 1 } })
    assert.equal(200, res.status)
    assert_no_leak(res.body, "rpc answer")
    assert.equal("handler exploded", msg.body[1].error)
    assert.equal("no luck", msg.body[2].error)
    assert.is_true(msg.body[3].success)
    -- the server log has the details the client does not
    local all = table.concat(logged, "\n")
    assert.matches("handler exploded", all)
    assert.matches("listener exploded", all)
  end)

  it("keeps record names inside their key space", function()
    -- names that look like other LevelDB key spaces are just record names
    for _, name in ipairs({ "t/abc", "../r/x", "\0r/x", "r/", "" .. string.rep("/", 10) }) do
      local _, msg = t:api({ { topic = "record", action = "write", recordName = name, data = { n = name } } })
      assert.equal("SUCCESS", msg.result)
    end
    local keys = {}
    local step, it, _, closer = t.server.store:iterate("")
    for k in step, it do keys[#keys + 1] = k end
    if closer then closer:close() end
    for _, k in ipairs(keys) do
      if k:sub(1, 2) ~= "r/" then
        -- anything else belongs to the server itself (tokens, internal state)
        assert.is_nil(k:find("abc", 1, true), "a record name escaped its key space: " .. k)
      end
    end
  end)
end)
