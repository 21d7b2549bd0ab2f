-- YAML (and JSON, which libyaml reads as YAML) documents with the line of
-- every key and the order keys are written in, for the files taken over from
-- deepstream (config.yml, permissions.yml): their errors name the line, and
-- Valve breaks ties between equally long paths by file order.
--
-- Built on lyaml's event parser (Debian lua-yaml): lyaml.load gives neither
-- lines nor order. Plain scalars are resolved as js-yaml (deepstream's YAML
-- library) resolves them with its core schema: true/false, null/~/empty,
-- integers (decimal, 0x, 0o), floats (.inf, .nan); anything quoted is a string.
--
--   yamldoc.parse(text [, name]) -> value, meta | nil, err
--     value: sequences are json arrays, null is json.null
--     meta[tbl] = { keys = { key1, key2, ... }, lines = { key = line } } for
--     every mapping, { lines = { [i] = line } } for every sequence (lines are
--     1-based), meta[tbl].line its own first line
--   yamldoc.line(meta, root, path) -> the line of the key path (or of the
--     deepest key of it found), nil when not even the first is there
local yaml = require "yaml"
local json = require "moonstream.json"

local type, tonumber, format, match, lower, gsub = type, tonumber, string.format, string.match, string.lower, string.gsub
local math_type = math.type

local M = {}

local MAX_NODES = 1000000
local MAX_DEPTH = 64

local NULLS = { [""] = true, ["~"] = true, null = true, Null = true, NULL = true }
local BOOLS = { ["true"] = true, True = true, TRUE = true, ["false"] = false, False = false, FALSE = false }

local function plain_scalar(s)
  if NULLS[s] then return json.null end
  local b = BOOLS[s]
  if b ~= nil then return b end
  if match(s, "^[-+]?[0-9]+$") then
    return math.tointeger(tonumber(s)) or tonumber(s)
  end
  if match(s, "^0x[0-9a-fA-F]+$") then return tonumber(s) end
  if match(s, "^0o[0-7]+$") then return tonumber(s:sub(3), 8) end
  if match(s, "^[-+]?%.?[0-9][0-9]*%.?[0-9]*([eE][-+]?[0-9]+)?$") and match(s, "[0-9]") then
    return tonumber(s)
  end
  local l = lower(s)
  if l == ".inf" or l == "+.inf" then return math.huge end
  if l == "-.inf" then return -math.huge end
  if l == ".nan" then return 0 / 0 end
  return s
end

local function scalar(ev)
  if ev.tag == "tag:yaml.org,2002:str" then return ev.value end
  if ev.style ~= "PLAIN" then return ev.value end
  return plain_scalar(ev.value)
end

-- A key as a Lua table key: strings stay, numbers and booleans become their
-- text (JavaScript objects have string keys only).
local function key_of(v)
  if type(v) == "string" then return v end
  if math_type(v) == "integer" then return format("%d", v) end
  if v == json.null then return "null" end
  return tostring(v)
end

function M.parse(text, name)
  name = name or "document"
  local meta, anchors = {}, {}
  local budget = MAX_NODES
  local ok, result = pcall(function()
    local next_event = yaml.parser(text)
    local function node(ev, depth)
      budget = budget - 1
      if budget < 0 then error(format("more than %d values", MAX_NODES), 0) end
      if depth > MAX_DEPTH then error(format("nested deeper than %d", MAX_DEPTH), 0) end
      local t = ev.type
      local v
      if t == "SCALAR" then
        v = scalar(ev)
      elseif t == "ALIAS" then
        v = anchors[ev.anchor]
        if v == nil then error(format("line %d: unknown alias *%s", ev.start_mark.line + 1, ev.anchor), 0) end
      elseif t == "SEQUENCE_START" then
        v = json.array()
        local m = { lines = {}, line = ev.start_mark.line + 1 }
        meta[v] = m
        for e in next_event do
          if e.type == "SEQUENCE_END" then break end
          m.lines[#v + 1] = e.start_mark.line + 1
          v[#v + 1] = node(e, depth + 1)
        end
      elseif t == "MAPPING_START" then
        v = {}
        local m = { keys = {}, lines = {}, line = ev.start_mark.line + 1 }
        meta[v] = m
        for e in next_event do
          if e.type == "MAPPING_END" then break end
          local k = key_of(node(e, depth + 1))
          local line = e.start_mark.line + 1
          local value_ev = next_event()
          if v[k] == nil then m.keys[#m.keys + 1] = k end
          m.lines[k] = line
          v[k] = node(value_ev, depth + 1)
        end
      else
        error("unexpected " .. tostring(t), 0)
      end
      if ev.anchor then anchors[ev.anchor] = v end
      return v
    end
    local root
    for ev in next_event do
      if ev.type == "DOCUMENT_START" then
        local e = next_event()
        if e.type ~= "DOCUMENT_END" then
          root = node(e, 0)
          next_event() -- DOCUMENT_END
        end
        break
      end
    end
    return root
  end)
  if not ok then
    local msg = gsub(tostring(result), "^.-:%d+: ", "")
    return nil, format("%s is not valid YAML: %s", name, msg)
  end
  if result == nil then result = json.null end
  return result, meta
end

function M.line(meta, root, path)
  local t, line = root, nil
  for _, k in ipairs(path) do
    local m = type(t) == "table" and meta[t]
    if not m or not m.lines[k] then break end
    line = m.lines[k]
    t = t[k]
  end
  return line
end

return M
