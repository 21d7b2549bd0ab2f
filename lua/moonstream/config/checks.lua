-- Value checkers shared by the configuration schema (schema.lua) and the auth
-- strategies' option schemas.
--
-- check(value, ctx) -> normalized value | nil, text[, extra path]. `text` is
-- what follows "config key 'k'"; one starting with ":" is joined without a
-- space. ctx.dir is the directory relative paths are resolved against.
local type, next, ipairs, rawget = type, next, ipairs, rawget
local math_type, tointeger = math.type, math.tointeger
local format, sub, concat = string.format, string.sub, table.concat
local D = require "moonstream.config.describe"
local files = require "moonstream.config.files"
local suggest = require("moonstream.config.suggest").suggest

local describe, describe_value, describe_key = D.describe, D.describe_value, D.describe_key

local M = {}

function M.integer_in(lo, hi, wording)
  return function(v)
    -- math.tointeger alone would also take the string "3".
    local n = math_type(v) and tointeger(v)
    if n and n >= lo and (hi == nil or n <= hi) then
      return n
    end
    return nil, format("must be %s (got %s)", wording, describe(v))
  end
end

M.port = M.integer_in(0, 65535, "an integer from 0 to 65535")
M.positive = M.integer_in(1, nil, "a positive integer")
M.non_negative = M.integer_in(0, nil, "a non-negative integer")

-- A timeout that `false` switches off (deepstream's unauthenticatedClientTimeout).
function M.positive_or_false(v)
  if v == false then
    return false
  end
  local n = math_type(v) and tointeger(v)
  if n and n >= 1 then
    return n
  end
  return nil, format("must be a positive integer or false (got %s)", describe(v))
end

function M.boolean(v)
  if type(v) == "boolean" then
    return v
  end
  return nil, format("must be a boolean (got %s)", describe(v))
end

function M.nonempty_string(v)
  if type(v) == "string" and v ~= "" then
    return v
  end
  return nil, format("must be a non-empty string (got %s)", v == "" and "an empty string" or describe(v))
end

function M.url_path(v)
  if type(v) == "string" and sub(v, 1, 1) == "/" then
    return v
  end
  return nil, format("must be a string starting with '/' (got %s)", describe_value(v))
end

function M.one_of(values)
  local quoted, candidates, allowed = {}, {}, {}
  for i, v in ipairs(values) do
    quoted[i] = "'" .. v .. "'"
    candidates[i] = { name = v, full = v }
    allowed[v] = true
  end
  local wording = "must be one of " .. concat(quoted, ", ")
  return function(v)
    if allowed[v] then
      return v
    end
    local s = type(v) == "string" and suggest(v, candidates)
    return nil, format("%s (got %s%s)", wording, describe_value(v), s and "; did you mean '" .. s .. "'?" or "")
  end
end

function M.string_list(v)
  if type(v) ~= "table" then
    return nil, format("must be a list of strings (got %s)", describe(v))
  end
  local n = 0
  for k in next, v do
    if math_type(k) ~= "integer" or k < 1 then
      return nil, format("must be a list of strings (got key %s)", describe_key(k))
    end
    n = n + 1
  end
  local out = {}
  for i = 1, n do
    local s = rawget(v, i)
    if type(s) ~= "string" then
      return nil, format("must be a list of strings (item %d is %s)", i, s == nil and "missing" or "a " .. type(s))
    end
    out[i] = s
  end
  return out
end

-- A path written in the config, resolved against the config file's folder and
-- checked now (files.check_folder or files.check_file): path | nil, ": why".
function M.existing(ctx, v, check)
  local path = files.resolve_path(ctx.dir, v)
  local ok, why = check(path)
  if not ok then return nil, ": " .. why end
  return path
end

return M
