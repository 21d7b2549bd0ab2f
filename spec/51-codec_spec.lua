-- The two realtime wire codecs against the frames captured between the real
-- @deepstream/client 7.0.5 and the deepstream 7.0.2 reference server
-- (spec/fixtures/realtime-vectors, see its README),
-- the crash frames of section 12, and malformed input.
local json = require "moonstream.json"
local binary = require "moonstream.realtime.binary"
local json_codec = require "moonstream.realtime.json_codec"
local message = require "moonstream.realtime.message"

local VECTORS = "spec/fixtures/realtime-vectors"

local function unhex(h)
  return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- The frames of one vector file: { dir, kind, hex|text, decoded, line }.
local function frames(name)
  local list = {}
  local f = assert(io.open(VECTORS .. "/" .. name .. ".jsonl"))
  local n = 0
  for line in f:lines() do
    n = n + 1
    local e = assert(json.decode(line))
    if e.ev == "frame" then
      e.line = name .. ":" .. n
      list[#list + 1] = e
    end
  end
  f:close()
  return list
end

-- Plain comparable copy: metatables dropped, arrays marked so [] ~= {}.
local function plain(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = plain(x) end
  if json.is_array(v) then t["<array>"] = true end
  return t
end

-- A message table in wire form: codes instead of names (what "decoded" holds).
local function wire_form(msg)
  local t = {}
  for k, v in pairs(msg) do t[k] = v end
  local tname = message.topic_name(message.topic_code(msg.topic))
  t.topic = message.topic_code(msg.topic)
  if msg.action ~= nil then t.action = message.action_code(tname, msg.action) end
  if msg.originalTopic ~= nil then t.originalTopic = message.topic_code(msg.originalTopic) end
  if msg.originalAction ~= nil then
    local ot = msg.originalTopic and message.topic_name(message.topic_code(msg.originalTopic)) or tname
    t.originalAction = message.action_code(ot, msg.originalAction)
  end
  return plain(t)
end

-- A JSON frame as the client sees it: payload = data parsed if it is a
-- non-empty string, else parsedData; both keys replaced.
local function json_view(obj)
  local t = plain(obj)
  if type(obj.data) == "string" and obj.data ~= "" then
    local v, err = json.decode(obj.data)
    t.value = err and { ["<not JSON>"] = obj.data } or plain(v)
  elseif obj.parsedData ~= nil then
    t.value = plain(obj.parsedData)
  end
  t.data, t.parsedData = nil, nil
  return t
end

local BINARY_FILES = { "binary-open", "binary-file", "binary-timeouts" }
local JSON_FILES = { "json-open", "json-file", "json-timeouts" }

-- Frames the reference's own parser could not read: it logs them as an
-- internal PARSER.ERROR (topic 1, action 6), which is not their content.
local function reference_parse_error(e)
  local d = e.decoded and e.decoded[1]
  return e.dir == "C>S" and d and d.topic == 1 and d.action == 6
end

describe("realtime binary codec", function()
  it("decodes every captured frame to its recorded form and re-encodes the same bytes", function()
    local checked, special = 0, 0
    for _, file in ipairs(BINARY_FILES) do
      for _, e in ipairs(frames(file)) do
        if e.kind == "binary" and not reference_parse_error(e) then
          local bytes = unhex(e.hex)
          local msg, err = binary.decode(bytes)
          assert(msg, e.line .. ": " .. tostring(err))
          assert.are.same(plain(e.decoded[1]), wire_form(msg), e.line)
          local again = hex(binary.encode(msg))
          if again ~= e.hex then
            -- only the frame with two messages concatenated may differ: the
            -- first message is kept, trailing bytes are ignored
            assert.are.equal(e.hex:sub(1, #again), again, e.line)
            special = special + 1
          end
          checked = checked + 1
        end
      end
    end
    assert.is_true(checked >= 440, "only " .. checked .. " frames checked")
    assert.are.equal(1, special)
  end)

  it("never fails on the frames the reference could not parse", function()
    local seen = 0
    for _, file in ipairs(BINARY_FILES) do
      for _, e in ipairs(frames(file)) do
        if e.kind == "binary" and reference_parse_error(e) then
          seen = seen + 1
          local msg, err = binary.decode(unhex(e.hex))
          if msg then
            -- 04102a1a00: topic 42 with an empty message: an unknown topic code
            assert.are.equal(42, msg.topic)
          else
            assert.is_string(err)
          end
        end
      end
    end
    assert.are.equal(2, seen)
  end)

  it("decodes the frames that crash the reference (section 12.2) and reports their bad data", function()
    -- AUTH.REQUEST with data "{bad"
    local msg = assert(binary.decode(unhex("0c10031a08080212047b626164")))
    assert.are.same({ topic = "AUTH", action = "REQUEST", data = "{bad" }, msg)
    local ok, err = message.value(msg)
    assert.is_false(ok)
    assert.is_string(err)
    -- RECORD.UPDATE name "x" version 1 data "{bad"
    msg = assert(binary.decode(unhex("1110051a0d081212047b6261643201786801")))
    assert.are.same({ topic = "RECORD", action = "UPDATE", data = "{bad", name = "x", version = 1 }, msg)
    assert.is_false((message.value(msg)))
  end)

  it("encodes version 0 and false booleans (field presence), and -1 as a 10-byte varint", function()
    local bytes = binary.encode({ topic = "RECORD", action = "READ_RESPONSE", name = "cars/1", version = 0, data = "{}" })
    assert.are.equal("1410051a10080412027b7d3206636172732f316800", hex(bytes))
    bytes = binary.encode({ topic = "RECORD", action = "HEAD_RESPONSE", name = "n", version = -1 })
    assert.is_truthy(hex(bytes):find("68ffffffffffffffffff01", 1, true))
    assert.are.equal(-1, binary.decode(bytes).version)
    bytes = binary.encode({ topic = "RECORD", action = "UPDATE", name = "n", version = 2, isWriteAck = false,
      parsedData = { a = 1 } })
    local back = binary.decode(bytes)
    assert.is_false(back.isWriteAck)
    assert.are.equal('{"a":1}', back.data)
  end)

  it("encodes an ack with isAck true (section 4.4)", function()
    local bytes = binary.encode({ topic = "EVENT", action = "SUBSCRIBE", correlationId = "0", isAck = true })
    assert.are.equal("0b10041a0708031a01302801", hex(bytes))
  end)

  it("skips unknown fields and ignores trailing bytes", function()
    -- EVENT SUBSCRIBE names ["news"] correlationId "0", plus field 15 (varint)
    -- and field 20 (string) that EventMessage does not have
    local inner = unhex("08031a0130" .. "3a046e657773" .. "7805" .. "a20102" .. "6869")
    local outer = "\x10\x04\x1a" .. string.char(#inner) .. inner
    local frame = string.char(#outer) .. outer .. "trailing garbage"
    local msg = assert(binary.decode(frame))
    assert.are.same({ topic = "EVENT", action = "SUBSCRIBE", correlationId = "0",
      names = { "news", ["<array>"] = true } }, plain(msg))
  end)

  it("keeps the versions map of HEAD_RESPONSE_BULK", function()
    local bytes = binary.encode({ topic = "RECORD", action = "HEAD_RESPONSE_BULK", versions = { a = 3, b = -1 } })
    assert.are.same({ a = 3, b = -1 }, binary.decode(bytes).versions)
  end)

  it("rejects truncated and malformed frames with an error, never raising", function()
    local good = binary.encode({ topic = "RECORD", action = "UPDATE", name = "cars/1", version = 3, data = '{"a":1}' })
    for cut = 0, #good - 1 do
      local msg, err = binary.decode(good:sub(1, cut))
      assert(msg == nil and type(err) == "string", "prefix of " .. cut .. " bytes")
    end
    assert.is_nil((binary.decode(unhex("ffffffffffffffffffffff01"))))  -- 11-byte varint
    assert.is_nil((binary.decode(unhex("0610021a020a00"))))             -- action with wire type 2
    assert.is_nil((binary.decode(unhex("04100218"))))                   -- group wire type
  end)

  it("survives random and mutated frames: decode never raises, and what it returns encodes", function()
    local seeds = {}
    for _, e in ipairs(frames("binary-open")) do
      if e.kind == "binary" then seeds[#seeds + 1] = unhex(e.hex) end
    end
    math.randomseed(4242)
    local decoded = 0
    for i = 1, 20000 do
      local s
      if i % 2 == 0 then
        local n = math.random(0, 40)
        local b = {}
        for k = 1, n do b[k] = string.char(math.random(0, 255)) end
        s = table.concat(b)
      else
        s = seeds[math.random(#seeds)]
        local pos = math.random(#s)
        s = s:sub(1, pos - 1) .. string.char(math.random(0, 255)) .. s:sub(pos + 1)
      end
      local ok, msg = pcall(binary.decode, s)
      assert(ok, "decode raised on " .. hex(s) .. ": " .. tostring(msg))
      if msg then
        decoded = decoded + 1
        local eok, eerr = pcall(binary.encode, msg)
        assert(eok, "encode raised on the decoding of " .. hex(s) .. ": " .. tostring(eerr))
      end
    end
    assert.is_true(decoded > 1000)
  end)
end)

describe("realtime json codec", function()
  it("decodes every captured frame and re-encodes what the client reads from it", function()
    local checked = 0
    for _, file in ipairs(JSON_FILES) do
      for _, e in ipairs(frames(file)) do
        local obj = e.kind == "text" and json.decode(e.text)
        if json.is_object(obj) then
          local msg, err = json_codec.decode(e.text)
          assert(msg, e.line .. ": " .. tostring(err))
          local expected = json_view(obj)
          local msg_view = wire_form(msg)
          local ok, value = message.value(msg)
          if ok then msg_view.value = plain(value) else msg_view.value = { ["<not JSON>"] = msg.data } end
          msg_view.data, msg_view.parsedData = nil, nil
          assert.are.same(expected, msg_view, e.line)
          local again = json.decode(json_codec.encode(msg))
          assert.are.same(expected, json_view(again), e.line)
          checked = checked + 1
        end
      end
    end
    assert.is_true(checked >= 440, "only " .. checked .. " frames checked")
  end)

  it("tells text that is not JSON from JSON that is not a message (section 5.3)", function()
    local msg, err = json_codec.decode("hello")
    assert.is_nil(msg)
    assert.is_string(err)
    msg = assert(json_codec.decode('[{"topic":2,"action":5},{"topic":2,"action":2}]'))
    assert.is_nil(msg.topic)
    msg = assert(json_codec.decode('{"topic":42,"action":1}'))
    assert.are.equal(42, msg.topic)
    msg = assert(json_codec.decode('{"topic":4,"action":99,"name":5,"names":["a",1],"version":"x"}'))
    assert.are.same({ topic = "EVENT", action = 99 }, msg)
  end)

  it("keeps falsy payloads and gives data precedence over parsedData", function()
    for _, v in ipairs({ "0", "false", '""', "null" }) do
      local msg = assert(json_codec.decode('{"topic":4,"action":2,"name":"f","parsedData":' .. v .. '}'))
      local ok, value = message.value(msg)
      assert.is_true(ok)
      assert.are.equal(json.decode(v), value)
    end
    local msg = assert(json_codec.decode('{"topic":5,"action":18,"name":"x","version":1,"data":"{bad","parsedData":{}}'))
    assert.are.equal("{bad", msg.data)
    assert.is_false((message.value(msg)))
  end)

  it("encodes acks with isAck true, names as an array even when empty, and no payload as no keys", function()
    local text = json_codec.encode({ topic = "RECORD", action = "SUBSCRIBECREATEANDREAD", names = {},
      correlationId = "0", isAck = true })
    assert.are.same({ topic = 5, action = 23, names = {}, correlationId = "0", isAck = true }, json.decode(text))
    assert.is_truthy(text:find('"names":[]', 1, true))
    assert.are.same({ topic = 4, action = 2, name = "n" }, json.decode(json_codec.encode({ topic = "EVENT", action = "EMIT", name = "n" })))
    assert.are.same({ topic = 2, action = 101, originalTopic = 4, originalAction = 3 }, json.decode(json_codec.encode(
      { topic = "CONNECTION", action = "INVALID_MESSAGE", originalTopic = "EVENT", originalAction = "SUBSCRIBE" })))
  end)

  it("carries every client frame through the binary codec unchanged (both transports share messages)", function()
    local checked = 0
    for _, e in ipairs(frames("json-open")) do
      local obj = e.kind == "text" and e.dir == "C>S" and json.decode(e.text)
      if json.is_object(obj) and obj.topic >= 2 and obj.topic <= 7 then
        local msg = assert(json_codec.decode(e.text))
        local via = assert(binary.decode(binary.encode(msg)))
        local a, b = wire_form(msg), wire_form(via)
        local _, va = message.value(msg)
        local _, vb = message.value(via)
        a.data, a.parsedData, b.data, b.parsedData = nil, nil, nil, nil
        a.originalTopic = nil -- CONNECTION/AUTH have no such protobuf field (section 12.5)
        assert.are.same(a, b, e.line)
        assert.are.same(plain(va), plain(vb), e.line)
        checked = checked + 1
      end
    end
    assert.is_true(checked > 150)
  end)

  it("survives random and mutated text: decode never raises", function()
    math.randomseed(99)
    local sample = '{"topic":5,"action":18,"name":"cars/1","version":1,"parsedData":{"a":[1,2]},"data":"{\\"a\\":[1,2]}"}'
    for i = 1, 5000 do
      local s = sample
      for _ = 1, math.random(1, 4) do
        local pos = math.random(#s)
        s = s:sub(1, pos - 1) .. string.char(math.random(0, 255)) .. s:sub(pos + 1)
      end
      local ok, msg = pcall(json_codec.decode, s)
      assert(ok, "decode raised: " .. tostring(msg))
      if msg and msg.topic then
        local eok, err = pcall(json_codec.encode, msg)
        assert(eok, tostring(err))
      end
    end
  end)
end)
