-- JSON values as moonstream sees them, shared by the dispatcher, the store and
-- user scripts. The codec is C (csrc/json.c): Debian's lua-cjson 2.1.0 cannot
-- keep [] apart from {}, prints at most 14 significant digits and reads every
-- number as a float, which breaks the exact round-trip of JSON values.
--
-- Conventions:
--   * JSON arrays are tables with the metatable json.array_mt (an empty array
--     stays an array); plain tables that are sequences 1..n also encode as arrays.
--   * JSON objects are plain tables; an empty plain table encodes as {}.
--   * JSON null is json.null (a light userdata), so null keys and holes survive.
--   * Integers that fit in 64 bits are Lua integers, other numbers floats.
local core = require "moonstream.core"

local M = {
  null = core.json_null,
  array_mt = core.json_array_mt,
  decode = core.json_decode, -- (text [, max_depth]) -> value | nil, err
  encode = core.json_encode, -- (value) -> text | nil, err
  raw = core.json_raw,       -- (trusted JSON text) -> value encoded verbatim
}

local getmetatable, setmetatable, type = getmetatable, setmetatable, type
local array_mt = M.array_mt

-- Marks t (default: a new table) as a JSON array and returns it.
function M.array(t)
  return setmetatable(t or {}, array_mt)
end

function M.is_array(v)
  return type(v) == "table" and getmetatable(v) == array_mt
end

function M.is_object(v)
  return type(v) == "table" and getmetatable(v) == nil
end

return M
