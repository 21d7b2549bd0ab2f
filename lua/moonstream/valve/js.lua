-- The JavaScript value semantics Valve rules need, over moonstream's JSON
-- values (lua/moonstream/json.lua): undefined is nil, null is json.null,
-- arrays carry json.array_mt, objects are plain tables, numbers are Lua
-- numbers computed as doubles. Strings are Lua byte strings: the string
-- methods and comparisons are exact for ASCII (`length` counts UTF-16 units).
--
-- A JavaScript exception (reading a property of null, calling what is not a
-- function) is raised as a JsError table, so the rule runner can tell it from
-- a bug; both deny.
local json = require "moonstream.json"
local rex = require "rex_pcre2"

local type, tostring, tonumber, getmetatable, setmetatable, rawlen, next, error =
  type, tostring, tonumber, getmetatable, setmetatable, rawlen, next, error
local format, sub, find, match, upper, lower, byte, rep =
  string.format, string.sub, string.find, string.match, string.upper, string.lower, string.byte, string.rep
local math_type, huge, floor, fmod = math.type, math.huge, math.floor, math.fmod
local null, array_mt = json.null, json.array_mt

local M = {}

local JsError = {}
JsError.__index = JsError
JsError.__tostring = function(e) return e.name .. ": " .. e.message end
M.JsError = JsError

local function throw(name, message)
  error(setmetatable({ name = name, message = message }, JsError), 0)
end

-- Values that are not JSON: the `_` function and regular expressions.
local Function = { kind = "function" }
M.Function = Function
local RegExp = {}
RegExp.__index = RegExp

local function is_array(v)
  local mt = getmetatable(v)
  if mt == array_mt then return true end
  -- a Lua sequence (a users.lua serverData list) reads as an array
  return mt == nil and rawlen(v) > 0 and math_type(next(v)) == "integer"
end

-- typeof
function M.typeof(v)
  local t = type(v)
  if v == nil then return "undefined" end
  if v == null then return "object" end
  if t == "boolean" or t == "number" or t == "string" then return t end
  if v == Function then return "function" end
  return "object"
end

function M.truthy(v)
  if v == nil or v == false or v == null or v == "" then return false end
  if type(v) == "number" then return v == v and v ~= 0 end
  return true
end

-- Number -> string as JavaScript's Number::toString: the shortest digits
-- that read back as the same double, in fixed form from 1e-6 to 1e21.
local function number_to_string(x)
  if x ~= x then return "NaN" end
  if x == huge then return "Infinity" end
  if x == -huge then return "-Infinity" end
  if x == 0 then return "0" end
  if math_type(x) == "integer" then return format("%d", x) end
  local sign = ""
  if x < 0 then sign, x = "-", -x end
  local s
  for p = 0, 16 do
    s = format("%." .. p .. "e", x)
    if tonumber(s) == x then break end
  end
  local d1, rest, e = match(s, "^(%d)%.?(%d*)e([-+]%d+)$")
  local digits = (d1 .. rest):gsub("0+$", "")
  if digits == "" then digits = "0" end
  local k, n = #digits, tonumber(e) + 1
  if k <= n and n <= 21 then return sign .. digits .. rep("0", n - k) end
  if 0 < n and n <= 21 then return sign .. sub(digits, 1, n) .. "." .. sub(digits, n + 1) end
  if -6 < n and n <= 0 then return sign .. "0." .. rep("0", -n) .. digits end
  local exp = n - 1
  local es = exp >= 0 and ("+" .. exp) or tostring(exp)
  if k == 1 then return sign .. digits .. "e" .. es end
  return sign .. sub(digits, 1, 1) .. "." .. sub(digits, 2) .. "e" .. es
end

local to_string

local function array_join(v)
  local parts = {}
  for i = 1, rawlen(v) do
    local x = v[i]
    parts[i] = (x == nil or x == null) and "" or to_string(x)
  end
  return table.concat(parts, ",")
end

-- ToPrimitive for the values rules see: arrays join, objects are "[object Object]".
local function to_primitive(v)
  if type(v) ~= "table" then return v end
  if getmetatable(v) == RegExp then return "/" .. v.source .. "/" .. v.flags end
  if v == Function then return "function () { [native code] }" end
  if is_array(v) then return array_join(v) end
  return "[object Object]"
end

function to_string(v)
  local t = type(v)
  if t == "string" then return v end
  if v == nil then return "undefined" end
  if v == null then return "null" end
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then return number_to_string(v) end
  return to_string(to_primitive(v))
end
M.to_string = to_string

local WS = "[ \t\n\v\f\r]"

local function string_to_number(s)
  s = match(s, "^" .. WS .. "*(.-)" .. WS .. "*$")
  if s == "" then return 0 end
  if s == "Infinity" or s == "+Infinity" then return huge end
  if s == "-Infinity" then return -huge end
  local hex = match(s, "^0[xX](%x+)$")
  if hex then return tonumber(hex, 16) + 0.0 end
  local oct = match(s, "^0[oO]([0-7]+)$")
  if oct then return tonumber(oct, 8) + 0.0 end
  local bin = match(s, "^0[bB]([01]+)$")
  if bin then return tonumber(bin, 2) + 0.0 end
  if match(s, "^[-+]?%d+%.?%d*$") or match(s, "^[-+]?%.%d+$")
    or match(s, "^[-+]?%d+%.?%d*[eE][-+]?%d+$") or match(s, "^[-+]?%.%d+[eE][-+]?%d+$") then
    return tonumber(s) + 0.0
  end
  return 0 / 0
end

local function to_number(v)
  local t = type(v)
  if t == "number" then return v end
  if v == nil then return 0 / 0 end
  if v == null or v == false then return 0 end
  if v == true then return 1 end
  if t == "string" then return string_to_number(v) end
  return to_number(to_primitive(v))
end

-- ===
function M.strict_eq(a, b)
  if type(a) == "number" and type(b) == "number" then return a == b end
  return a == b
end
local strict_eq = M.strict_eq

-- ==
local function loose_eq(a, b)
  local ta, tb = type(a), type(b)
  local na, nb = (a == nil or a == null), (b == nil or b == null)
  if na or nb then return na and nb end
  if ta == tb then return a == b end
  if ta == "boolean" then return loose_eq(to_number(a), b) end
  if tb == "boolean" then return loose_eq(a, to_number(b)) end
  if ta == "number" and tb == "string" then return a == to_number(b) end
  if ta == "string" and tb == "number" then return to_number(a) == b end
  if ta == "table" and tb ~= "table" then return loose_eq(to_primitive(a), b) end
  if tb == "table" and ta ~= "table" then return loose_eq(a, to_primitive(b)) end
  return false
end
M.loose_eq = loose_eq

-- Doubles: Lua integers would wrap where JavaScript rounds.
local function num(v) return to_number(v) + 0.0 end

function M.add(a, b)
  a, b = to_primitive(a), to_primitive(b)
  if type(a) == "string" or type(b) == "string" then return to_string(a) .. to_string(b) end
  return num(a) + num(b)
end
function M.sub(a, b) return num(a) - num(b) end
function M.mul(a, b) return num(a) * num(b) end
function M.div(a, b) return num(a) / num(b) end
function M.mod(a, b)
  local x, y = num(a), num(b)
  if y == 0 or x ~= x or y ~= y or x == huge or x == -huge then return 0 / 0 end
  if y == huge or y == -huge then return x end
  return fmod(x, y)
end
function M.neg(a) return -num(a) end
function M.pos(a) return num(a) end

-- a < b: true, false, or nil when a number is NaN (every comparison false).
local function less(a, b)
  a, b = to_primitive(a), to_primitive(b)
  if type(a) == "string" and type(b) == "string" then return a < b end
  local x, y = num(a), num(b)
  if x ~= x or y ~= y then return nil end
  return x < y
end
function M.lt(a, b) return less(a, b) == true end
function M.gt(a, b) return less(b, a) == true end
function M.le(a, b) return less(b, a) == false end
function M.ge(a, b) return less(a, b) == false end

-- UTF-16 length of a UTF-8 string (bytes when it is not UTF-8).
local function str_length(s)
  local n = utf8.len(s)
  if not n then return #s end
  local astral = 0
  for _ in s:gmatch("[\240-\247]") do astral = astral + 1 end
  return n + astral
end

-- The index a property key names in an array/string, or nil.
local function index_of_key(k)
  if math_type(k) == "integer" then return k >= 0 and k or nil end
  if type(k) == "number" then
    if k >= 0 and k == floor(k) and k < 2 ^ 53 then return math.tointeger(k) end
    return nil
  end
  if type(k) == "string" and match(k, "^%d+$") and (k == "0" or byte(k) ~= 48) then return tonumber(k) end
end

local function describe_base(v) return v == nil and "undefined" or "null" end

-- obj[key] / obj.key
function M.get(obj, key)
  if obj == nil or obj == null then
    throw("TypeError", format("Cannot read properties of %s (reading '%s')", describe_base(obj), to_string(key)))
  end
  local t = type(obj)
  if t == "string" then
    if key == "length" then return str_length(obj) end
    local i = index_of_key(key)
    if i and i < #obj then return sub(obj, i + 1, i + 1) end
    return nil
  end
  if t ~= "table" or obj == Function or getmetatable(obj) == RegExp then return nil end
  if is_array(obj) then
    if key == "length" then return rawlen(obj) end
    local i = index_of_key(key)
    if i then return obj[i + 1] end
    return nil
  end
  if type(key) ~= "string" then key = to_string(key) end
  return obj[key]
end

-- Regular expressions (JavaScript's syntax is close to PCRE2's for the
-- patterns rules use).
local FLAG_BITS = { i = "i", m = "m", s = "s" }
function M.regexp(source, flags)
  local cf = ""
  for f in flags:gmatch(".") do
    if FLAG_BITS[f] then cf = cf .. FLAG_BITS[f]
    elseif f ~= "g" and f ~= "u" and f ~= "y" then return nil, "invalid flag '" .. f .. "'" end
  end
  local ok, re = pcall(rex.new, source, cf ~= "" and cf or nil)
  if not ok then return nil, tostring(re) end
  return setmetatable({ source = source, flags = flags, re = re, global = find(flags, "g", 1, true) ~= nil }, RegExp)
end

local dynamic_regexps, dynamic_count = {}, 0
local function regexp_of(v)
  if type(v) == "table" and getmetatable(v) == RegExp then return v end
  local source = v == nil and "(?:)" or to_string(v)
  local re = dynamic_regexps[source]
  if re then return re end
  local err
  re, err = M.regexp(source, "")
  if not re then throw("SyntaxError", "Invalid regular expression: /" .. source .. "/: " .. err) end
  if dynamic_count >= 1000 then dynamic_regexps, dynamic_count = {}, 0 end
  dynamic_regexps[source], dynamic_count = re, dynamic_count + 1
  return re
end

local function str_match(s, arg)
  local re = regexp_of(arg)
  if re.global then
    local out = json.array()
    local init = 1
    while init <= #s + 1 do
      local a, b = re.re:find(s, init)
      if not a then break end
      out[#out + 1] = sub(s, a, b)
      init = b >= a and b + 1 or a + 1
    end
    if #out == 0 then return null end
    return out
  end
  local r = { re.re:exec(s) }
  if r[1] == nil then return null end
  local out = json.array({ sub(s, r[1], r[2]) })
  local caps = r[3] or {}
  for i = 1, #caps, 2 do
    local a, b = caps[i], caps[i + 1]
    out[#out + 1] = a and sub(s, a, b) or null
  end
  return out
end

local function clamp_pos(p, len, default)
  if p == nil then return default end
  p = to_number(p)
  if p ~= p then return 0 end
  if p < 0 then return 0 end
  if p > len then return len end
  return floor(p)
end

local STRING_METHODS = {
  startsWith = function(s, search, pos)
    search = to_string(search)
    local p = clamp_pos(pos, #s, 0)
    return sub(s, p + 1, p + #search) == search
  end,
  endsWith = function(s, search, e)
    search = to_string(search)
    local p = clamp_pos(e, #s, #s)
    return p - #search >= 0 and sub(s, p - #search + 1, p) == search
  end,
  includes = function(s, search, pos)
    search = to_string(search)
    return find(s, search, clamp_pos(pos, #s, 0) + 1, true) ~= nil
  end,
  indexOf = function(s, search, pos)
    search = to_string(search)
    local at = find(s, search, clamp_pos(pos, #s, 0) + 1, true)
    return at and at - 1 or -1
  end,
  match = str_match,
  toUpperCase = function(s) return upper(s) end,
  toLowerCase = function(s) return lower(s) end,
  trim = function(s) return match(s, "^" .. WS .. "*(.-)" .. WS .. "*$") end,
}

-- SameValueZero (includes) and strict equality (indexOf).
local function same_value_zero(a, b)
  if type(a) == "number" and type(b) == "number" and a ~= a and b ~= b then return true end
  return strict_eq(a, b)
end

local ARRAY_METHODS = {
  includes = function(a, x)
    for i = 1, rawlen(a) do
      if same_value_zero(a[i], x) then return true end
    end
    return false
  end,
  indexOf = function(a, x)
    for i = 1, rawlen(a) do
      if strict_eq(a[i], x) then return i - 1 end
    end
    return -1
  end,
}

-- The methods a rule may call (deepstream's whitelist, besides `_`).
M.METHODS = { "startsWith", "endsWith", "includes", "indexOf", "match", "toUpperCase", "toLowerCase", "trim" }

-- obj.name(args...)
function M.call_method(obj, name, a1, a2)
  if obj == nil or obj == null then
    throw("TypeError", format("Cannot read properties of %s (reading '%s')", describe_base(obj), name))
  end
  local f
  if type(obj) == "string" then
    f = STRING_METHODS[name]
  elseif type(obj) == "table" and is_array(obj) then
    f = ARRAY_METHODS[name]
  end
  if not f then throw("TypeError", format("%s.%s is not a function", M.typeof(obj), name)) end
  return f(obj, a1, a2)
end

return M
