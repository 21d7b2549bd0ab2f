-- The /deepstream (ws-binary) wire codec: @deepstream/protobuf 1.0.9 frames
-- <-> the message tables of realtime/message.lua. Hand-written and
-- table-driven: one table per topic maps
-- field numbers to names and types.
--
--   decode(bytes) -> msg | nil, err   never raises, whatever the bytes
--   encode(msg)   -> bytes            raises on a message it cannot encode
--                                     (unknown topic name: a programming error)
--
-- Frame = varint(len(outer)) outer; outer = Message { topic = 2 (varint),
-- message = 3 (bytes) }; message = the topic's message. As the reference:
-- one message per frame, trailing bytes ignored, unknown fields skipped.
-- Field presence is kept both ways (section 13.3): a decoded table has only
-- the fields on the wire (topic and action default to code 0, proto3), and
-- the encoder writes every field the table has, zero values included.
-- int32 fields (version, actions) are 10-byte varints when negative.
local message = require "moonstream.realtime.message"
local json = require "moonstream.json"

local M = {}

local byte, char, sub, concat, sort = string.byte, string.char, string.sub, table.concat, table.sort
local type, pairs, ipairs, error, tostring, setmetatable = type, pairs, ipairs, error, tostring, setmetatable
local unpack, tointeger = table.unpack, math.tointeger
local math_type = math.type
local topic_code, action_code = message.topic_code, message.action_code
local TOPIC_NAME, ACTION_NAME = message.TOPIC_NAME, message.ACTION_NAME
local json_encode, array_mt = json.encode, json.array_mt

-- Field kinds: wire type 0 ("action", "origaction", "topic", "int32", "bool")
-- or 2 ("string", "names" (repeated string), "versions" (map<string,int32>)).
local WIRE = { action = 0, origaction = 0, topic = 0, int32 = 0, bool = 0, string = 2, names = 2, versions = 2 }

local function fields(list)
  local by_num, by_order = {}, {}
  for i = 1, #list, 3 do
    local f = { num = list[i], name = list[i + 1], kind = list[i + 2] }
    f.wire = WIRE[f.kind]
    f.tag = f.num * 8 + f.wire
    by_num[f.num] = f
    by_order[#by_order + 1] = f
  end
  sort(by_order, function(a, b) return a.num < b.num end)
  return { by_num = by_num, order = by_order }
end

local FIELDS = {
  CONNECTION = fields { 1, "action", "action", 2, "data", "string", 3, "isError", "bool", 4, "isAck", "bool",
    5, "url", "string", 6, "protocolVersion", "string", 7, "sdkVersion", "string", 8, "sdkType", "string" },
  AUTH = fields { 1, "action", "action", 2, "data", "string", 3, "isError", "bool", 4, "isAck", "bool" },
  EVENT = fields { 1, "action", "action", 2, "data", "string", 3, "correlationId", "string", 4, "isError", "bool",
    5, "isAck", "bool", 6, "name", "string", 7, "names", "names", 8, "subscription", "string",
    10, "originalTopic", "topic", 11, "originalAction", "origaction" },
  RECORD = fields { 1, "action", "action", 2, "data", "string", 3, "correlationId", "string", 4, "isError", "bool",
    5, "isAck", "bool", 6, "name", "string", 7, "names", "names", 8, "pattern", "string",
    9, "subscription", "string", 10, "originalAction", "origaction", 11, "isWriteAck", "bool",
    12, "path", "string", 13, "version", "int32", 14, "versions", "versions" },
  RPC = fields { 1, "action", "action", 2, "data", "string", 3, "correlationId", "string", 4, "isError", "bool",
    5, "isAck", "bool", 6, "names", "names", 7, "name", "string", 9, "originalAction", "origaction",
    10, "requestorName", "string", 11, "requestorData", "string" },
  PRESENCE = fields { 1, "action", "action", 2, "originalTopic", "topic", 3, "originalAction", "origaction",
    4, "data", "string", 5, "correlationId", "string", 6, "isError", "bool", 7, "isAck", "bool",
    8, "name", "string", 9, "names", "names" },
  PARSER = fields { 1, "action", "action", 2, "data", "string", 8, "originalTopic", "topic",
    9, "originalAction", "origaction" },
  MONITORING = fields { 1, "action", "action", 2, "data", "string", 3, "correlationId", "string",
    4, "isError", "bool", 5, "isAck", "bool" },
  CLUSTER = fields { 1, "action", "action", 2, "data", "string", 3, "isError", "bool", 4, "isAck", "bool",
    5, "leaderScore", "int32", 7, "role", "string" },
  LOCK = fields { 1, "action", "action", 3, "locked", "bool" },
}
-- Topics without a message of their own (unknown codes): only the action.
local GENERIC = fields { 1, "action", "action" }

-- ---- decoding ----

-- Reads a varint at i (s has n bytes). Returns value (64-bit two's
-- complement), next index | nil when truncated or longer than 10 bytes.
local function read_varint(s, i, n)
  local v, shift = 0, 0
  for k = i, i + 9 do
    if k > n then return nil end
    local b = byte(s, k)
    v = v | ((b & 0x7f) << shift)
    if b < 0x80 then return v, k + 1 end
    shift = shift + 7
  end
  return nil
end

-- Low 32 bits, sign-extended (protobuf int32 / enum semantics).
local function int32(v)
  v = v & 0xffffffff
  if v >= 0x80000000 then v = v - 0x100000000 end
  return v
end

-- Skips a field of wire type wt at i; returns the next index or nil.
local function skip(s, i, n, wt)
  if wt == 0 then
    local _, j = read_varint(s, i, n)
    return j
  elseif wt == 1 then
    return i + 8 <= n + 1 and i + 8 or nil
  elseif wt == 2 then
    local len, j = read_varint(s, i, n)
    if not j or len < 0 or len > n - j + 1 then return nil end
    return j + len
  elseif wt == 5 then
    return i + 4 <= n + 1 and i + 4 or nil
  end
  return nil -- groups (3, 4) and 6, 7 do not exist in these messages
end

-- map<string,int32> entry at s[i..j): key = 1, value = 2.
local function decode_map_entry(s, i, j)
  local key, value = "", 0
  while i < j do
    local tag, k = read_varint(s, i, j - 1)
    if not k then return nil end
    local num, wt = tag >> 3, tag & 7
    if num == 1 and wt == 2 then
      local len, m = read_varint(s, k, j - 1)
      if not m or len < 0 or len > j - m then return nil end
      key = sub(s, m, m + len - 1)
      i = m + len
    elseif num == 2 and wt == 0 then
      local v, m = read_varint(s, k, j - 1)
      if not m then return nil end
      value = int32(v)
      i = m
    else
      i = skip(s, k, j - 1, wt)
      if not i or i > j then return nil end
    end
  end
  return key, value
end

-- Decodes the topic message s[i..j] into msg.
local function decode_inner(s, i, j, msg, tname)
  local spec = FIELDS[tname] or GENERIC
  local by_num = spec.by_num
  while i <= j do
    local tag, k = read_varint(s, i, j)
    if not k then return nil, "truncated field tag" end
    local num, wt = tag >> 3, tag & 7
    if num == 0 then return nil, "invalid field number 0" end
    local f = by_num[num]
    if f and f.wire ~= wt then return nil, "field " .. f.name .. " has wire type " .. wt end
    if not f then
      i = skip(s, k, j, wt)
      if not i then return nil, "truncated or invalid field " .. num end
    elseif wt == 0 then
      local v, m = read_varint(s, k, j)
      if not m then return nil, "truncated varint in field " .. f.name end
      i = m
      local kind = f.kind
      if kind == "bool" then
        msg[f.name] = v ~= 0
      elseif kind == "action" then
        msg.action = int32(v)
      elseif kind == "origaction" then
        msg.originalAction = int32(v)
      elseif kind == "topic" then
        local t = int32(v)
        msg.originalTopic = TOPIC_NAME[t] or t
      else
        msg[f.name] = int32(v)
      end
    else
      local len, m = read_varint(s, k, j)
      if not m or len < 0 or len > j - m + 1 then return nil, "truncated field " .. f.name end
      i = m + len
      local kind = f.kind
      if kind == "string" then
        msg[f.name] = sub(s, m, i - 1)
      elseif kind == "names" then
        local names = msg.names
        if not names then
          names = setmetatable({}, array_mt)
          msg.names = names
        end
        names[#names + 1] = sub(s, m, i - 1)
      else -- versions
        local key, value = decode_map_entry(s, m, i)
        if not key then return nil, "invalid versions entry" end
        local versions = msg.versions or {}
        versions[key] = value
        msg.versions = versions
      end
    end
  end
  return msg
end

function M.decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local n = #s
  local len, i = read_varint(s, 1, n)
  if not i then return nil, "truncated length prefix" end
  if len < 0 or len > n - i + 1 then return nil, "frame shorter than its length prefix" end
  local last = i + len - 1 -- trailing bytes after the first message are ignored
  local topic, inner_from, inner_to = 0, nil, nil
  while i <= last do
    local tag, k = read_varint(s, i, last)
    if not k then return nil, "truncated field tag" end
    local num, wt = tag >> 3, tag & 7
    if num == 0 then return nil, "invalid field number 0" end
    if num == 2 and wt == 0 then
      local v, m = read_varint(s, k, last)
      if not m then return nil, "truncated topic" end
      topic, i = int32(v), m
    elseif num == 3 and wt == 2 then
      local l, m = read_varint(s, k, last)
      if not m or l < 0 or l > last - m + 1 then return nil, "truncated message" end
      inner_from, inner_to, i = m, m + l - 1, m + l
    elseif num == 2 or num == 3 then
      return nil, "outer field " .. num .. " has wire type " .. wt
    else
      i = skip(s, k, last, wt)
      if not i then return nil, "truncated or invalid field " .. num end
    end
  end
  local tname = TOPIC_NAME[topic]
  local msg = { topic = tname or topic, action = 0 }
  if inner_from then
    local ok, err = decode_inner(s, inner_from, inner_to, msg, tname)
    if not ok then return nil, err end
  end
  local names = tname and ACTION_NAME[tname]
  msg.action = names and names[msg.action] or msg.action
  local oa = msg.originalAction
  if oa then
    local ot = msg.originalTopic
    local onames = ACTION_NAME[type(ot) == "string" and ot or tname]
    msg.originalAction = onames and onames[oa] or oa
  end
  return msg
end

-- ---- encoding ----

-- Appends the varint of v (int64 two's complement: negatives take 10 bytes).
local function varint(v)
  if v >= 0 and v < 0x80 then return char(v) end
  local out, n = {}, 0
  repeat
    local b = v & 0x7f
    v = v >> 7 -- logical shift: a negative value ends after 10 bytes
    n = n + 1
    out[n] = v ~= 0 and (b | 0x80) or b
  until v == 0
  return char(unpack(out, 1, n))
end

local function put_bytes(parts, tag, s)
  parts[#parts + 1] = char(tag)
  parts[#parts + 1] = varint(#s)
  parts[#parts + 1] = s
end

local function check_int(name, v)
  if math_type(v) ~= "integer" then
    if math_type(v) == "float" and v == v // 1 then return tointeger(v) end
    error("binary.encode: field " .. name .. " must be an integer, got " .. tostring(v), 3)
  end
  return v
end

function M.encode(msg)
  local topic = topic_code(msg.topic)
  if not topic then error("binary.encode: unknown topic " .. tostring(msg.topic), 2) end
  local tname = TOPIC_NAME[topic]
  local spec = FIELDS[tname] or GENERIC
  local parts = {}
  for _, f in ipairs(spec.order) do
    local name, kind = f.name, f.kind
    local v = msg[name]
    if name == "data" and v == nil and msg.parsedData ~= nil then
      v = json_encode(msg.parsedData)
    end
    if v ~= nil then
      if kind == "string" then
        if type(v) ~= "string" then error("binary.encode: field " .. name .. " must be a string", 2) end
        put_bytes(parts, f.tag, v)
      elseif kind == "bool" then
        parts[#parts + 1] = char(f.tag, v and 1 or 0)
      elseif kind == "action" then
        local code = action_code(tname or topic, v)
        if not code then error("binary.encode: unknown action " .. tostring(v) .. " for " .. tostring(tname), 2) end
        parts[#parts + 1] = char(f.tag) .. varint(code)
      elseif kind == "origaction" then
        local ot = msg.originalTopic
        local code = action_code(ot ~= nil and (TOPIC_NAME[topic_code(ot)] or ot) or tname or topic, v)
        if not code then error("binary.encode: unknown originalAction " .. tostring(v), 2) end
        parts[#parts + 1] = char(f.tag) .. varint(code)
      elseif kind == "topic" then
        local code = topic_code(v)
        if not code then error("binary.encode: unknown originalTopic " .. tostring(v), 2) end
        parts[#parts + 1] = char(f.tag) .. varint(code)
      elseif kind == "int32" then
        parts[#parts + 1] = char(f.tag) .. varint(check_int(name, v))
      elseif kind == "names" then
        for k = 1, #v do
          local s = v[k]
          if type(s) ~= "string" then error("binary.encode: names must be strings", 2) end
          put_bytes(parts, f.tag, s)
        end
      else -- versions, in message.versions_keys order
        for _, key in ipairs(message.versions_keys(msg)) do
          local entry = char(0x0a) .. varint(#key) .. key .. char(0x10) .. varint(check_int("versions", v[key]))
          put_bytes(parts, f.tag, entry)
        end
      end
    end
  end
  local inner = concat(parts)
  local outer = char(0x10) .. varint(topic) .. char(0x1a) .. varint(#inner) .. inner
  return varint(#outer) .. outer
end

-- deepstream's heartbeat, answered in C once a client is logged in
-- (ws:answer_pings in csrc/ws.c; realtime/init.lua's logged_in): the client's PING frame (the same bytes @deepstream/client sends: the
-- captured 0610021a020802), and the PONG we answer.
-- Any other spelling of a PING still reaches the Lua handler.
M.heartbeat = {
  ping = M.encode({ topic = "CONNECTION", action = "PING" }),
  pong = M.encode({ topic = "CONNECTION", action = "PONG" }),
}

return M
