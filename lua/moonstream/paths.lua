-- Record path writes (deepstream's `path` on record writes).
--
-- A path is split on '.', each part trimmed and empty parts skipped; a part is
-- a key, optionally followed by array indexes: `name`, `name[2]`, `name[ 2 ]`,
-- `m[1][0]`, or `[3]` alone (an index into the value reached so far).
-- `items.0` is the object key "0". Tokens are a sequence of strings (keys) and
-- integers (0-based indexes, as written in the path).
--
--   parse(path)             -> tokens | nil, err
--   set(root, tokens, val)  -> root | nil, err     (mutates tables in place)
--   get(root, tokens)       -> value | nil
--
-- An HTTP body of a few bytes must not make the server allocate gigabytes, so
-- an index is at most MAX_INDEX, the indexes of one path add up to at most
-- MAX_INDEX (each can create an array that long), and a path has at most
-- MAX_TOKENS tokens, well inside the JSON codec's nesting limit (128), so the
-- record written stays encodable unless the data itself is deeply nested.
local json = require "moonstream.json"

local type, tostring, tonumber, error = type, tostring, tonumber, error
local getmetatable, setmetatable = getmetatable, setmetatable
local math_type = math.type
local find, match, sub, byte, format = string.find, string.match, string.sub, string.byte, string.format

local null, array_mt = json.null, json.array_mt

local M = {}

local MAX_INDEX = 100000
local MAX_TOKENS = 64
M.MAX_TOKENS = MAX_TOKENS

-- The same few paths arrive again and again. Bounded in entries and in the
-- length of the paths kept, so the cache cannot grow with hostile input.
local CACHE_ENTRIES = 1000
local CACHE_PATH_BYTES = 256
local cache, cached = {}, 0

-- Harmless in Lua, but the contract refuses them (they pollute JavaScript
-- clients that apply the same path to their copy of the record).
local FORBIDDEN = { __proto__ = true, constructor = true, prototype = true }

-- Client text echoed in an error is cut (the same rule as validation).
local echo = require("moonstream.validate").echo

local function is_space(b)
  return b == 32 or (b >= 9 and b <= 13)
end

-- s[i..j] without the whitespace around it. A byte loop rather than a
-- pattern: `^%s*(.-)%s*$` is quadratic on long runs of inner spaces.
local function trim(s, i, j)
  while i <= j and is_space(byte(s, i)) do
    i = i + 1
  end
  while j >= i and is_space(byte(s, j)) do
    j = j - 1
  end
  return sub(s, i, j)
end

local function too_large(digits)
  return format("array index %s is too large (limit %d)", echo(digits), MAX_INDEX)
end

local function invalid_part(part)
  return format("invalid path part '%s' (expected name, name[N] or [N] with N a whole number)", echo(part))
end

-- Appends the tokens of one trimmed, non-empty part to tokens[1..n].
-- Returns the new n and the new sum of indexes, or nil, err.
local function parse_part(part, tokens, n, sum)
  local bracket = find(part, "[", 1, true)
  local key = bracket and trim(part, 1, bracket - 1) or part
  if find(key, "]", 1, true) then
    return nil, invalid_part(part)
  end
  if key ~= "" then
    if FORBIDDEN[key] then
      return nil, format("path part '%s' is not allowed", key)
    end
    n = n + 1
    tokens[n] = key
  end
  if bracket then
    local pos, len = bracket, #part
    repeat
      local digits, after = match(part, "^%[%s*(%d+)%s*%]()", pos)
      if not digits then
        return nil, invalid_part(part)
      end
      -- tonumber gives an integer for small values (leading zeros too) and a
      -- float for the rest, which the limit rejects.
      local index = tonumber(digits)
      if index > MAX_INDEX then
        return nil, too_large(digits)
      end
      sum = sum + index
      if sum > MAX_INDEX then
        return nil, format("array indexes in the path add up to more than %d", MAX_INDEX)
      end
      n = n + 1
      tokens[n] = index
      pos = after
    until pos > len or n > MAX_TOKENS
  end
  return n, sum
end

local function parse_path(path)
  local tokens, n, sum = {}, 0, 0
  local start = 1
  repeat
    local dot = find(path, ".", start, true)
    local part = trim(path, start, dot and dot - 1 or #path)
    if part ~= "" then
      n, sum = parse_part(part, tokens, n, sum)
      if not n then
        return nil, sum
      end
      if n > MAX_TOKENS then
        return nil, format("path has more than %d parts", MAX_TOKENS)
      end
    end
    start = dot and dot + 1
  until not dot
  return tokens
end

-- Parses a path. Returns its tokens (shared with the cache: never modify
-- them), or nil and an INVALID_MESSAGE_DATA-worthy text. A path without parts
-- ("", " . ") gives no tokens; the caller treats it as no path.
function M.parse(path)
  if type(path) ~= "string" then
    error("bad argument #1 to 'parse' (string expected, got " .. type(path) .. ")", 2)
  end
  local hit = cache[path]
  if hit ~= nil then
    if type(hit) == "string" then
      return nil, hit
    end
    return hit
  end
  local tokens, err = parse_path(path)
  if #path <= CACHE_PATH_BYTES then
    if cached >= CACHE_ENTRIES then
      cache, cached = {}, 0
    end
    cache[path] = tokens or err
    cached = cached + 1
  end
  if not tokens then
    return nil, err
  end
  return tokens
end

-- The Lua key that token tok addresses in table node, or nil, err. An index
-- on an object is the key "N", and a key that is a canonical index ("0",
-- "12") reaches an array's element, as JavaScript clients see it.
local function slot(node, tok)
  if getmetatable(node) == array_mt then
    if math_type(tok) == "integer" then
      return tok + 1
    end
    if tok == "0" or match(tok, "^[1-9]%d*$") then
      local index = tonumber(tok)
      if index > MAX_INDEX then
        return nil, too_large(tok)
      end
      return index + 1
    end
    return nil, format("path part '%s' is a key, but the value it applies to is an array", echo(tok))
  end
  if math_type(tok) == "integer" then
    return tostring(tok)
  end
  return tok
end

-- Sets node[key], filling an array's holes before key with null.
local function store(node, key, value)
  if getmetatable(node) == array_mt then
    for i = #node + 1, key - 1 do
      node[i] = null
    end
  end
  node[key] = value
end

-- Sets the value at tokens under root and returns the root: root itself, or a
-- new {} when root is not a table (a path write to a missing record). Missing
-- or primitive (null included) intermediates become {}, or an array when the
-- next token is an index. No tokens: returns value (the whole record).
-- Fails with nil, err only for a key applied to an existing array, and then
-- before changing anything. value must not be nil (use json.null).
function M.set(root, tokens, value)
  if value == nil then
    error("bad argument #3 to 'set' (value expected, use json.null for null)", 2)
  end
  local n = #tokens
  if n == 0 then
    return value
  end
  if type(root) ~= "table" or root == null then
    root = {}
  end
  -- Only existing nodes can refuse a token: once one child is created, every
  -- later node is new and of the kind its token needs, so a failure always
  -- comes before the first change.
  local node = root
  for i = 1, n - 1 do
    local key, err = slot(node, tokens[i])
    if key == nil then
      return nil, err
    end
    local child = node[key]
    if type(child) ~= "table" or child == null then
      if math_type(tokens[i + 1]) == "integer" then
        child = setmetatable({}, array_mt)
      else
        child = {}
      end
      store(node, key, child)
    end
    node = child
  end
  local key, err = slot(node, tokens[n])
  if key == nil then
    return nil, err
  end
  store(node, key, value)
  return root
end

-- The value at tokens under root (json.null if null is stored there), or nil
-- when the path leads nowhere.
function M.get(root, tokens)
  local node = root
  for i = 1, #tokens do
    if type(node) ~= "table" or node == null then
      return nil
    end
    local key = slot(node, tokens[i])
    if key == nil then
      return nil
    end
    node = node[key]
  end
  return node
end

return M
