-- The realtime protocol's message: one Lua table shape shared by both wire
-- codecs (realtime/json_codec.lua for /deepstream-json, realtime/binary.lua
-- for /deepstream) and everything behind them. Codes are those of
-- @deepstream/protobuf 1.0.9 (its .proto).
--
-- Message table (every field optional except topic and action):
--   topic          "CONNECTION" | "AUTH" | "EVENT" | "RECORD" | "RPC" |
--                  "PRESENCE" | "PARSER" | ... (M.TOPIC); an unknown code
--                  stays an integer (e.g. 42) so PARSER.UNKNOWN_TOPIC can echo it
--   action         the bare action name within the topic ("SUBSCRIBE",
--                  "UPDATE", "REQUEST", ...; M.ACTION[topic]); unknown: integer
--   name           string       event/record/rpc name, listen pattern, user
--   names          array of strings (json.array_mt set by the decoders)
--   correlationId  string
--   subscription, path, pattern, url, protocolVersion, sdkVersion, sdkType,
--   requestorName, requestorData                              strings
--   version        integer (int32; -1 allowed; 0 is a value and is encoded)
--   isAck, isError, isWriteAck   booleans (absent = not on the wire)
--   originalTopic  topic name (or integer), for CONNECTION/AUTH.INVALID_MESSAGE
--                  and PARSER.UNKNOWN_TOPIC
--   originalAction action name within the message's topic (or integer;
--                  for CONNECTION/AUTH invalid-message replies it is an action
--                  of originalTopic: encoders accept an integer there)
--   versions       { [name] = integer }  (RECORD HEAD_RESPONSE_BULK; binary map)
--   versionsOrder  the names of `versions` in the order to send them
--                  (encoders only; without it: sorted)
--   data           the payload as JSON TEXT (string), as received
--   parsedData     the payload as a decoded JSON VALUE (json.null for null)
--
-- Payload rules:
--   * decoders set `data` to the JSON text when the frame carries a non-empty
--     `data` string (binary: always its `data` field), else `parsedData` when
--     a json frame has that key (null -> json.null); nothing else is decoded:
--     use M.value(msg) to get the value (it parses `data` on demand).
--   * encoders write `parsedData` if the table has it, else `data` (text); the
--     json encoder sends the value as "parsedData", or text as "data" (the
--     client parses it); the binary encoder sends JSON text in `data`
--     (encoding parsedData). Set exactly one of them; none = no payload.
--   * acknowledgements carry isAck = true (section 4.4).
--
-- Helpers:
--   M.TOPIC[name] -> code, M.TOPIC_NAME[code] -> name
--   M.ACTION[topic][name] -> code, M.ACTION_NAME[topic][code] -> name
--   M.topic_code(v), M.action_code(topic, v)   name or integer -> integer | nil
--   M.topic_name(code), M.action_name(topic, code)   -> name, or the code itself
--   M.value(msg) -> true, value | true, nil (no payload) | false, err (bad JSON)
--   M.text(msg)  -> JSON text of the payload | nil (encodes parsedData)
local json = require "moonstream.json"

local M = {}

local type, pairs = type, pairs
local json_decode, json_encode = json.decode, json.encode

M.TOPIC = {
  UNKNOWN = 0, PARSER = 1, CONNECTION = 2, AUTH = 3, EVENT = 4, RECORD = 5, RPC = 6,
  PRESENCE = 7, MONITORING = 8, CLUSTER = 9, LOCK = 10, STATE_REGISTRY = 11, ERROR = 100,
}

M.ACTION = {
  PARSER = {
    UNKNOWN = 0, UNKNOWN_TOPIC = 1, UNKNOWN_ACTION = 2, INVALID_MESSAGE = 3, MESSAGE_PARSE_ERROR = 4,
    MAXIMUM_MESSAGE_SIZE_EXCEEDED = 5, ERROR = 6, INVALID_META_PARAMS = 7,
  },
  CONNECTION = {
    UNKNOWN = 0, ERROR = 1, PING = 2, PONG = 3, ACCEPT = 4, CHALLENGE = 5, REJECT = 6, REDIRECT = 7,
    CLOSING = 8, CLOSED = 9, AUTHENTICATION_TIMEOUT = 100, INVALID_MESSAGE = 101,
  },
  AUTH = {
    UNKNOWN = 0, ERROR = 1, REQUEST = 2, AUTH_SUCCESSFUL = 3, AUTH_UNSUCCESSFUL = 4,
    TOO_MANY_AUTH_ATTEMPTS = 100, INVALID_MESSAGE = 101, INVALID_MESSAGE_DATA = 102,
  },
  EVENT = {
    UNKNOWN = 0, ERROR = 1, EMIT = 2, SUBSCRIBE = 3, UNSUBSCRIBE = 4, LISTEN = 5, UNLISTEN = 6,
    LISTEN_ACCEPT = 7, LISTEN_REJECT = 8, SUBSCRIPTION_HAS_PROVIDER = 9, SUBSCRIPTION_HAS_NO_PROVIDER = 10,
    SUBSCRIPTION_FOR_PATTERN_FOUND = 11, SUBSCRIPTION_FOR_PATTERN_REMOVED = 12, INVALID_LISTEN_REGEX = 100,
    LISTEN_RESPONSE_TIMEOUT = 101, LISTEN_UNSUCCESSFUL = 102, MESSAGE_PERMISSION_ERROR = 103,
    MESSAGE_DENIED = 104, INVALID_MESSAGE_DATA = 105, MULTIPLE_SUBSCRIPTIONS = 106, NOT_SUBSCRIBED = 107,
  },
  RECORD = {
    UNKNOWN = 0, ERROR = 1, NOTIFY = 2, READ = 3, READ_RESPONSE = 4, HEAD = 5, HEAD_RESPONSE = 6,
    HEAD_BULK = 7, HEAD_RESPONSE_BULK = 8, DELETE = 9, DELETE_SUCCESS = 10, DELETE_BULK = 11,
    DELETE_BULK_SUCCESS = 12, DELETED = 13, WRITE_ACKNOWLEDGEMENT = 14, CREATE = 15, CREATEANDUPDATE = 16,
    CREATEANDPATCH = 17, UPDATE = 18, PATCH = 19, ERASE = 20, SUBSCRIBEANDHEAD = 21, SUBSCRIBEANDREAD = 22,
    SUBSCRIBECREATEANDREAD = 23, SUBSCRIBECREATEANDUPDATE = 24, SUBSCRIBE = 25, UNSUBSCRIBE = 26,
    LISTEN = 27, UNLISTEN = 28, LISTEN_ACCEPT = 29, LISTEN_REJECT = 30, SUBSCRIPTION_HAS_PROVIDER = 31,
    SUBSCRIPTION_HAS_NO_PROVIDER = 32, SUBSCRIPTION_FOR_PATTERN_FOUND = 33,
    SUBSCRIPTION_FOR_PATTERN_REMOVED = 34, CACHE_RETRIEVAL_TIMEOUT = 100, STORAGE_RETRIEVAL_TIMEOUT = 101,
    VERSION_EXISTS = 102, RECORD_LOAD_ERROR = 103, RECORD_CREATE_ERROR = 104, RECORD_UPDATE_ERROR = 105,
    RECORD_DELETE_ERROR = 106, RECORD_NOT_FOUND = 107, INVALID_VERSION = 108, INVALID_PATCH_ON_HOTPATH = 109,
    INVALID_LISTEN_REGEX = 110, LISTEN_RESPONSE_TIMEOUT = 111, LISTEN_UNSUCCESSFUL = 112,
    RECORD_NOTIFY_ERROR = 113, MESSAGE_PERMISSION_ERROR = 114, MESSAGE_DENIED = 115,
    INVALID_MESSAGE_DATA = 116, MULTIPLE_SUBSCRIPTIONS = 117, NOT_SUBSCRIBED = 118,
  },
  RPC = {
    UNKNOWN = 0, ERROR = 1, REQUEST = 2, ACCEPT = 4, RESPONSE = 5, REJECT = 6, REQUEST_ERROR = 7,
    PROVIDE = 8, UNPROVIDE = 9, NO_RPC_PROVIDER = 100, ACCEPT_TIMEOUT = 101, MULTIPLE_ACCEPT = 102,
    INVALID_RPC_CORRELATION_ID = 103, RESPONSE_TIMEOUT = 104, MULTIPLE_RESPONSE = 105,
    MESSAGE_PERMISSION_ERROR = 106, MESSAGE_DENIED = 107, INVALID_MESSAGE_DATA = 108,
    MULTIPLE_PROVIDERS = 109, NOT_PROVIDED = 110,
  },
  PRESENCE = {
    UNKNOWN = 0, ERROR = 1, QUERY_ALL = 2, QUERY_ALL_RESPONSE = 3, QUERY = 4, QUERY_RESPONSE = 5,
    PRESENCE_JOIN = 6, PRESENCE_JOIN_ALL = 7, PRESENCE_LEAVE = 8, PRESENCE_LEAVE_ALL = 9, SUBSCRIBE = 10,
    UNSUBSCRIBE = 11, SUBSCRIBE_ALL = 12, UNSUBSCRIBE_ALL = 13, INVALID_PRESENCE_USERS = 100,
    MESSAGE_PERMISSION_ERROR = 101, MESSAGE_DENIED = 102, MULTIPLE_SUBSCRIPTIONS = 103, NOT_SUBSCRIBED = 104,
  },
  MONITORING = { UNKNOWN = 0 },
  CLUSTER = { UNKNOWN = 0, REMOVE = 1, STATUS = 2 },
  LOCK = { UNKNOWN = 0, ERROR = 1, REQUEST = 2, RESPONSE = 3, RELEASE = 4 },
}

local function invert(t)
  local r = {}
  for k, v in pairs(t) do r[v] = k end
  return r
end

M.TOPIC_NAME = invert(M.TOPIC)
M.ACTION_NAME = {}
for topic, actions in pairs(M.ACTION) do M.ACTION_NAME[topic] = invert(actions) end

local TOPIC, TOPIC_NAME, ACTION, ACTION_NAME = M.TOPIC, M.TOPIC_NAME, M.ACTION, M.ACTION_NAME

-- name or integer -> integer code, nil when unknown
function M.topic_code(v)
  if type(v) == "number" then return v end
  return TOPIC[v]
end

function M.action_code(topic, v)
  if type(v) == "number" then return v end
  local actions = ACTION[topic] or ACTION[TOPIC_NAME[topic]]
  return actions and actions[v]
end

-- code -> name, or the code itself when it has no name
function M.topic_name(code)
  return TOPIC_NAME[code] or code
end

function M.action_name(topic, code)
  local names = ACTION_NAME[topic]
  return names and names[code] or code
end

-- The names of msg.versions in the order the encoders send them: deepstream
-- sends them in the order the client asked (the client then reads them in
-- that order), so a sender may give versionsOrder; otherwise sorted, so the
-- bytes are deterministic.
function M.versions_keys(msg)
  local order = msg.versionsOrder
  if order then return order end
  local keys = {}
  for key in pairs(msg.versions) do keys[#keys + 1] = key end
  table.sort(keys)
  return keys
end

-- The payload's value: true, value (json.null for null) | true, nil when the
-- message has none | false, err when `data` is not JSON.
function M.value(msg)
  local data = msg.data
  if type(data) == "string" and data ~= "" then
    local v, err = json_decode(data)
    if err then return false, err end
    return true, v
  end
  return true, msg.parsedData
end

-- The payload as JSON text, or nil without one.
function M.text(msg)
  local data = msg.data
  if type(data) == "string" and data ~= "" then return data end
  local v = msg.parsedData
  if v == nil then return nil end
  return (json_encode(v))
end

return M
