-- The /deepstream-json (ws-json) wire codec: one JSON object per text frame
-- <-> the message tables of
-- realtime/message.lua.
--
--   decode(text) -> msg | nil, err   never raises. err when the text is not
--                   JSON (the reference then closes the socket). Valid JSON
--                   that is no object (an array, a number) gives an empty
--                   msg {} (no topic: the reference answers INVALID_MESSAGE).
--                   Fields of the wrong type are dropped, unknown keys
--                   ignored; topic/action stay nil when absent or not
--                   integers, unknown codes stay integers.
--   encode(msg)  -> text             raises on a message it cannot encode
--                   (unknown topic or action name: a programming error)
--
-- Payload: a non-empty `data` string wins and is kept as text (msg.data),
-- else a `parsedData` key gives msg.parsedData (null -> json.null); the
-- encoder sends parsedData as a JSON value, or data text as "data" (the
-- client JSON.parses it when parsedData is absent).
local message = require "moonstream.realtime.message"
local json = require "moonstream.json"

local M = {}

local type, pairs, error, tostring, getmetatable, setmetatable =
  type, pairs, error, tostring, getmetatable, setmetatable
local math_type = math.type
local json_decode, json_encode, array_mt = json.decode, json.encode, json.array_mt
local topic_code, action_code = message.topic_code, message.action_code
local TOPIC_NAME, ACTION_NAME = message.TOPIC_NAME, message.ACTION_NAME

local STRING_FIELDS = {
  "name", "correlationId", "subscription", "path", "pattern", "url", "protocolVersion", "sdkVersion",
  "sdkType", "requestorName", "requestorData",
}
local BOOL_FIELDS = { "isAck", "isError", "isWriteAck" }

local function integer(v)
  if math_type(v) == "integer" then return v end
  if math_type(v) == "float" and v == v // 1 and v >= -2 ^ 53 and v <= 2 ^ 53 then return math.tointeger(v) end
  return nil
end

local function string_array(v)
  if type(v) ~= "table" or getmetatable(v) ~= array_mt then return nil end
  for i = 1, #v do
    if type(v[i]) ~= "string" then return nil end
  end
  return v
end

function M.decode(text)
  if type(text) ~= "string" then return nil, "not a string" end
  local t, err = json_decode(text)
  if err then return nil, err end
  local msg = {}
  if type(t) ~= "table" or getmetatable(t) ~= nil then return msg end
  local topic = integer(t.topic)
  local tname = topic and TOPIC_NAME[topic]
  msg.topic = tname or topic
  local action = integer(t.action)
  if action then
    local names = tname and ACTION_NAME[tname]
    msg.action = names and names[action] or action
  end
  for i = 1, #STRING_FIELDS do
    local k = STRING_FIELDS[i]
    local v = t[k]
    if type(v) == "string" then msg[k] = v end
  end
  for i = 1, #BOOL_FIELDS do
    local k = BOOL_FIELDS[i]
    local v = t[k]
    if type(v) == "boolean" then msg[k] = v end
  end
  msg.names = string_array(t.names)
  msg.version = integer(t.version)
  local ot = integer(t.originalTopic)
  if ot then msg.originalTopic = TOPIC_NAME[ot] or ot end
  local oa = integer(t.originalAction)
  if oa then
    local names = ACTION_NAME[type(msg.originalTopic) == "string" and msg.originalTopic or tname]
    msg.originalAction = names and names[oa] or oa
  end
  local versions = t.versions
  if type(versions) == "table" and getmetatable(versions) == nil then
    local ok = true
    for k, v in pairs(versions) do
      if type(k) ~= "string" or not integer(v) then ok = false break end
    end
    if ok then msg.versions = versions end
  end
  local data = t.data
  if type(data) == "string" and data ~= "" then
    msg.data = data
  elseif t.parsedData ~= nil then
    msg.parsedData = t.parsedData
  end
  return msg
end

local function encode_error(what, v)
  error("json_codec.encode: " .. what .. " " .. tostring(v), 3)
end

function M.encode(msg)
  local topic = topic_code(msg.topic)
  if not topic then encode_error("unknown topic", msg.topic) end
  local tname = TOPIC_NAME[topic]
  local out = { topic = topic }
  if msg.action ~= nil then
    out.action = action_code(tname or topic, msg.action)
    if not out.action then encode_error("unknown action", msg.action) end
  end
  for i = 1, #STRING_FIELDS do
    local k = STRING_FIELDS[i]
    out[k] = msg[k]
  end
  for i = 1, #BOOL_FIELDS do
    local k = BOOL_FIELDS[i]
    out[k] = msg[k]
  end
  local names = msg.names
  if names ~= nil then
    if getmetatable(names) ~= array_mt then names = setmetatable(names, array_mt) end
    out.names = names
  end
  out.version = msg.version
  local ot = msg.originalTopic
  if ot ~= nil then
    out.originalTopic = topic_code(ot)
    if not out.originalTopic then encode_error("unknown originalTopic", ot) end
  end
  local oa = msg.originalAction
  if oa ~= nil then
    local ott = ot ~= nil and (TOPIC_NAME[out.originalTopic] or out.originalTopic) or tname or topic
    out.originalAction = action_code(ott, oa)
    if not out.originalAction then encode_error("unknown originalAction", oa) end
  end
  if msg.versions ~= nil then
    -- an object in message.versions_keys order (a Lua table has none)
    local parts = {}
    for i, key in ipairs(message.versions_keys(msg)) do
      parts[i] = json_encode(key) .. ":" .. json_encode(msg.versions[key])
    end
    out.versions = json.raw("{" .. table.concat(parts, ",") .. "}")
  end
  if msg.parsedData ~= nil then
    out.parsedData = msg.parsedData
  elseif type(msg.data) == "string" then
    out.data = msg.data
  end
  local text, err = json_encode(out)
  if not text then error("json_codec.encode: " .. tostring(err), 2) end
  return text
end

-- deepstream's heartbeat, answered in C once a client is logged in
-- (ws:answer_pings in csrc/ws.c; realtime/init.lua's logged_in): the client's PING frame byte for byte as @deepstream/client sends it on
-- this transport (spec/ws-protocol.md 2), and the PONG we answer.
-- Any other spelling of a PING still reaches the Lua handler.
M.heartbeat = {
  ping = '{"topic":2,"action":2,"isAck":false}',
  pong = M.encode({ topic = "CONNECTION", action = "PONG" }),
}

return M
