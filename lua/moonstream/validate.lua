-- Validation of POST /api requests.
--
-- It runs on every request, so the success path builds no strings and creates
-- no closures: each topic/action has a table of allowed properties, built once
-- below, and every property one checker. Texts are only built for a failure.
--
--   envelope(msg, opts) -> nil | text    checks 1-4 of section 3 (a 400 body)
--   command(cmd)        -> nil | reason  one command of the body
--   batch(body)         -> nil | text    "Failed to parse JIF object at index N. Reason: ..."
local json = require "moonstream.json"

local type, pairs, ipairs, next, getmetatable = type, pairs, ipairs, next, getmetatable
local math_type, tointeger = math.type, math.tointeger
local format, sub = string.format, string.sub
local is_array, is_object = json.is_array, json.is_object
local null = json.null

local M = {}

local BODY_MISSING = 'Invalid message: the "body" parameter must exist.'
local BODY_NOT_ARRAY = 'Invalid message: the "body" parameter must be a non-empty array of Objects.'
local AUTHDATA_DISABLED = "Authentication using authData is disabled. Try using a token instead."
local AUTHDATA_NOT_OBJECT = 'Invalid message: the "authData" parameter must be an object'
local TOKEN_NOT_STRING = 'Invalid message: the "token" parameter must be a non-empty string'

local NOT_AN_OBJECT = "the command must be an object"
local TOPIC_NOT_STRING = "property 'topic' must be a non-empty string"
local ACTION_NOT_STRING = "property 'action' must be a non-empty string"

-- Client text echoed in a reason is cut, so a 1 MB topic name does not come
-- back as a 1 MB error.
local ECHO_MAX = 64

function M.echo(s)
  if #s > ECHO_MAX then
    -- cut before a character, never inside one: the text goes into JSON
    local cut = ECHO_MAX
    while cut > 0 and (string.byte(s, cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
    return sub(s, 1, cut) .. "..."
  end
  return s
end
local echo = M.echo

-- Checkers: (value) -> ok [, replacement]. value is never nil.

local function check_any()
  return true
end

local function check_string(v)
  return type(v) == "string"
end

local function check_name(v)
  return type(v) == "string" and v ~= ""
end

-- JSON has one number type: 2.0 is the integer 2, and comes back as one so the
-- records code can print and compare it as an integer.
local function check_version(v)
  local t = math_type(v)
  if t == "integer" then
    return v >= -1
  elseif t == "float" then
    local i = tointeger(v)
    if i and i >= -1 then
      return true, i
    end
  end
  return false
end

-- True when v is an array of strings (of non-empty ones when nonempty).
local function array_of_strings(v, nonempty)
  if not is_array(v) then
    return false
  end
  for i = 1, #v do
    local s = v[i]
    if type(s) ~= "string" or (nonempty and s == "") then
      return false
    end
  end
  return true
end

local function check_strings(v) return array_of_strings(v, false) end
local function check_names(v) return array_of_strings(v, true) end

-- A property: its checker, whether it is required, and the reason given when
-- it is missing (if required) or fails its checker.
local function prop(name, check, required, fault)
  return {
    name = name,
    check = check,
    required = required,
    reason = format("property '%s' %s", name, fault),
  }
end

local NAME = "must be a non-empty string"
local DATA = prop("data", check_any, true, "is required")
local DATA_OPTIONAL = prop("data", check_any, false, "is required")
local VERSION = prop("version", check_version, false, "must be an integer >= -1")

-- Section 4's table. Each action lists its properties in the order they are
-- checked, so the reason for a command with several faults is stable.
local COMMANDS = {
  event = {
    emit = { prop("eventName", check_name, true, NAME), DATA_OPTIONAL },
  },
  record = {
    read = { prop("recordName", check_name, true, NAME) },
    head = { prop("recordName", check_name, true, NAME) },
    delete = { prop("recordName", check_name, true, NAME) },
    write = {
      prop("recordName", check_name, true, NAME),
      DATA,
      prop("path", check_string, false, "must be a string"),
      VERSION,
    },
    notify = { prop("recordNames", check_names, true, "must be an array of non-empty strings") },
  },
  list = {
    read = { prop("listName", check_name, true, NAME) },
    delete = { prop("listName", check_name, true, NAME) },
    write = {
      prop("listName", check_name, true, NAME),
      prop("data", check_strings, true, "must be an array of strings"),
      VERSION,
    },
  },
  rpc = {
    make = { prop("rpcName", check_name, true, NAME), DATA_OPTIONAL },
  },
  presence = {
    query = { prop("names", check_strings, false, "must be an array of strings") },
  },
}

-- Each action's list becomes its rules: props (the ordered list), allowed
-- (property name -> its prop, or true for topic and action) and required (how
-- many props are required). Per topic, the union of its actions' names tells a
-- property that belongs to another action of the topic from one that belongs
-- nowhere.
local RULES, KNOWN = {}, {}
for topic, actions in pairs(COMMANDS) do
  local known = { topic = true, action = true }
  RULES[topic] = {}
  for action, props in pairs(actions) do
    local allowed, required = { topic = true, action = true }, 0
    for _, p in ipairs(props) do
      allowed[p.name] = p
      known[p.name] = true
      if p.required then
        required = required + 1
      end
    end
    RULES[topic][action] = { props = props, allowed = allowed, required = required }
  end
  KNOWN[topic] = known
end

-- The reason why a command with a known topic and action is invalid, or nil.
-- Faults are looked for in a fixed order (extra properties, first in byte
-- order, then the props in their listed order), so a command with several
-- faults always gets the same reason whatever the table's traversal order.
local function command_fault(cmd, topic, action)
  local rules = RULES[topic][action]
  local allowed = rules.allowed
  local extra
  for k in pairs(cmd) do
    if not allowed[k] then
      -- JSON keys are strings; a command built in Lua may have others.
      k = type(k) == "string" and k or tostring(k)
      if extra == nil or k < extra then
        extra = k
      end
    end
  end
  if extra ~= nil then
    if KNOWN[topic][extra] then
      return format("property '%s' is not allowed for action '%s' of topic '%s'", extra, action, topic)
    end
    return format("unknown property '%s' for topic '%s'", echo(extra), topic)
  end
  local props = rules.props
  for i = 1, #props do
    local p = props[i]
    local v = cmd[p.name]
    if v == nil then
      if p.required then
        return p.reason
      end
    elseif not p.check(v) then
      return p.reason
    end
  end
  return nil
end

-- Checks the body's top level (section 3, checks 1-4, in that order).
-- msg: the decoded top-level object; opts.allowAuthData (default true).
-- Returns nil when fine, else the text of the 400 answer.
function M.envelope(msg, opts)
  local body = msg.body
  if body == nil or body == null then
    return BODY_MISSING
  end
  if not is_array(body) or #body == 0 then
    return BODY_NOT_ARRAY
  end
  local auth = msg.authData
  if auth ~= nil then
    if opts and opts.allowAuthData == false then
      return AUTHDATA_DISABLED
    end
    if not is_object(auth) then
      return AUTHDATA_NOT_OBJECT
    end
  end
  local token = msg.token
  if token ~= nil and (type(token) ~= "string" or token == "") then
    return TOKEN_NOT_STRING
  end
  return nil
end

-- Checks one command. Returns nil when it is valid, else the reason.
-- (is_object inlined: this runs for every command.)
-- An integral float `version` (2.0) is replaced in cmd by the integer.
function M.command(cmd)
  if type(cmd) ~= "table" or getmetatable(cmd) ~= nil then
    return NOT_AN_OBJECT
  end
  local topic = cmd.topic
  if type(topic) ~= "string" or topic == "" then
    return TOPIC_NOT_STRING
  end
  local actions = RULES[topic]
  if not actions then
    return format("unknown topic '%s'", echo(topic))
  end
  local action = cmd.action
  if type(action) ~= "string" or action == "" then
    return ACTION_NOT_STRING
  end
  local rules = actions[action]
  if not rules then
    return format("unknown action '%s' for topic '%s'", echo(action), topic)
  end
  -- One pass over the command's properties; any fault sends it to
  -- command_fault, which finds the reason in a stable order.
  local allowed = rules.allowed
  local required = 0
  for k, v in next, cmd do
    local p = allowed[k]
    if p == nil then
      return command_fault(cmd, topic, action)
    elseif p ~= true then
      local ok, replacement = p.check(v)
      if not ok then
        return command_fault(cmd, topic, action)
      end
      if replacement ~= nil then
        cmd[k] = replacement -- assigning an existing field is allowed while traversing
      end
      if p.required then
        required = required + 1
      end
    end
  end
  if required < rules.required then
    return command_fault(cmd, topic, action)
  end
  return nil
end

local command = M.command

-- The properties of every command as data, for the C fast path
-- (csrc/fastpath.c), which takes a command only when this table allows it:
-- { topic = { action = { { name =, kind =, required = }, ... } } }, kind being
-- "any", "string", "name" (non-empty string), "version" (integer >= -1),
-- "strings" or "names" (arrays of those).
local KIND = {
  [check_any] = "any", [check_string] = "string", [check_name] = "name", [check_version] = "version",
  [check_strings] = "strings", [check_names] = "names",
}
function M.rules()
  local out = {}
  for topic, actions in pairs(COMMANDS) do
    out[topic] = {}
    for action, props in pairs(actions) do
      local list = {}
      for i, p in ipairs(props) do list[i] = { name = p.name, kind = KIND[p.check], required = p.required } end
      out[topic][action] = list
    end
  end
  return out
end

-- Checks every command of body (an array, as envelope() accepted it) before
-- any runs. Returns nil, or the 400 text naming the first invalid command by
-- its 0-based index.
function M.batch(body)
  for i = 1, #body do
    local reason = command(body[i])
    if reason then
      return format("Failed to parse JIF object at index %d. Reason: %s", i - 1, reason)
    end
  end
  return nil
end

return M
