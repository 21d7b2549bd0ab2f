-- How configuration values, keys and key paths are written in messages, and
-- the table helpers every part of the config code shares (copies, a stable
-- key order).
local type, next, ipairs, tostring = type, next, ipairs, tostring
local math_type = math.type
local format, find, gsub = string.format, string.find, string.gsub
local concat, sort = table.concat, table.sort

local M = {}

-- Tables are copied without their metatables; functions and other values are
-- shared. `seen` keeps cycles and shared subtables as they were.
local function deep_copy(v, seen)
  if type(v) ~= "table" then
    return v
  end
  seen = seen or {}
  local done = seen[v]
  if done then
    return done
  end
  local out = {}
  seen[v] = out
  for k, x in next, v do
    out[deep_copy(k, seen)] = deep_copy(x, seen)
  end
  return out
end
M.deep_copy = deep_copy

-- A total order on keys of any type, so errors come out the same every run.
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    return ta < tb
  end
  if ta == "number" or ta == "string" then
    return a < b
  end
  return tostring(a) < tostring(b)
end

function M.sorted_keys(t)
  local keys = {}
  for k in next, t do
    keys[#keys + 1] = k
  end
  sort(keys, key_less)
  return keys
end

-- Numbers show their value, anything else its type: "(got 70000)", "(got string)".
local function describe(v)
  if math_type(v) then
    return tostring(v)
  end
  return type(v)
end
M.describe = describe

-- Where the value itself helps (enumerations, URL paths) a short printable
-- string is shown quoted; a long or binary one only as "string".
local function describe_value(v)
  if type(v) == "string" then
    if v == "" then
      return "an empty string"
    end
    if #v <= 60 and not find(v, "[%c']") then
      return "'" .. v .. "'"
    end
  end
  return describe(v)
end
M.describe_value = describe_value

function M.describe_key(k)
  if type(k) == "string" then
    return describe_value(k)
  end
  return describe(k)
end

-- {"rpc", "handlers", "add-two"} -> rpc.handlers.add-two; {"auth", 2, "type"} -> auth[2].type
function M.format_path(path)
  local out = {}
  for i, c in ipairs(path) do
    if math_type(c) == "integer" then
      out[#out + 1] = "[" .. c .. "]"
    elseif type(c) == "string" and find(c, "^[%w_][%w_%-]*$") then
      out[#out + 1] = (i > 1 and "." or "") .. c
    else
      local text = type(c) == "string" and format("%q", c) or tostring(c)
      out[#out + 1] = "[" .. gsub(text, "\\\n", "\\n") .. "]"
    end
  end
  return concat(out)
end

-- path followed by the components of extra (nil: none), as a new list.
function M.append(path, extra)
  local out = {}
  for i, c in ipairs(path) do
    out[i] = c
  end
  if extra then
    for _, c in ipairs(extra) do
      out[#out + 1] = c
    end
  end
  return out
end

return M
