-- Finding the line of a key in the user's Lua file, so a mistake is reported
-- as "file:LINE: message" (config files, permission files).
local type, ipairs, select = type, ipairs, select
local math_type = math.type
local format, byte, sub, find, match, gsub = string.format, string.byte, string.sub, string.find, string.match,
  string.gsub
local io_open = io.open

local M = {}

-- A small Lua lexer: names, strings (contents), symbols, with line numbers;
-- comments and whitespace dropped, so a commented-out key or a key inside a
-- string is never "found". It never fails: any text gives some tokens.

local function count_lines(text, i, j)
  return select(2, gsub(sub(text, i, j), "\n", ""))
end

local function lex(text)
  local toks, n, i, line = {}, #text, 1, 1
  local function push(kind, value, at_line)
    toks[#toks + 1] = { kind = kind, value = value, line = at_line or line }
  end
  if sub(text, 1, 1) == "#" then -- shebang line, skipped by Lua too
    i = find(text, "\n", 1, true) or n + 1
  end
  while i <= n do
    local c = byte(text, i)
    if c == 10 then
      line, i = line + 1, i + 1
    elseif c == 32 or (c >= 9 and c <= 13) then
      i = i + 1
    elseif c == 45 and byte(text, i + 1) == 45 then -- "--"
      local level = match(text, "^%[(=*)%[", i + 2)
      local stop
      if level then
        stop = select(2, find(text, "]" .. level .. "]", i + 4 + #level, true)) or n
      else
        stop = (find(text, "\n", i, true) or n + 1) - 1
      end
      line, i = line + count_lines(text, i, stop), stop + 1
    elseif find(text, "^[%a_]", i) then
      local name = match(text, "^[%a_][%w_]*", i)
      push("name", name)
      i = i + #name
    elseif find(text, "^%.?%d", i) then
      i = i + #match(text, "^[%w_.]+", i)
    elseif c == 34 or c == 39 then -- short string
      local j, start_line = i + 1, line
      while j <= n do
        local d = byte(text, j)
        if d == c then
          break
        elseif d == 92 then
          if byte(text, j + 1) == 10 then line = line + 1 end
          j = j + 2
        else
          if d == 10 then line = line + 1 end
          j = j + 1
        end
      end
      push("string", sub(text, i + 1, j - 1), start_line)
      i = j + 1
    elseif find(text, "^%[=*%[", i) then -- long string
      local level = match(text, "^%[(=*)%[", i)
      local open_end = i + #level + 1
      local close_start, close_end = find(text, "]" .. level .. "]", open_end + 1, true)
      close_start, close_end = close_start or n + 1, close_end or n
      local body = sub(text, open_end + 1, close_start - 1)
      push("string", (gsub(body, "^\r?\n", "")))
      line, i = line + count_lines(text, i, close_end), close_end + 1
    else
      local op = match(text, "^[=~<>]=", i) or match(text, "^%.%.%.?", i) or match(text, "^::", i)
        or match(text, "^//", i) or sub(text, i, i)
      push("symbol", op)
      i = i + #op
    end
  end
  return toks
end

local function is_symbol(t, value)
  return t ~= nil and t.kind == "symbol" and t.value == value
end

-- Where a field constructor or assignment usually starts.
local FIELD_PREVIOUS = { ["{"] = true, [","] = true, [";"] = true, ["."] = true }

-- First `key =` or `["key"] =` in toks[lo..hi], preferring one in a field
-- position over, say, `local key =`. Returns the key's token index and the
-- index of the value's first token.
local function find_field(toks, key, lo, hi)
  local loose_at, loose_value
  for j = lo, hi do
    local t, value_at = toks[j], nil
    if t.kind == "name" and t.value == key and is_symbol(toks[j + 1], "=") then
      value_at = j + 2
    elseif is_symbol(t, "[") and toks[j + 1] and toks[j + 1].kind == "string" and toks[j + 1].value == key
      and is_symbol(toks[j + 2], "]") and is_symbol(toks[j + 3], "=") then
      value_at = j + 4
    end
    if value_at then
      local prev = toks[j - 1]
      local field_position = prev == nil or (prev.kind == "symbol" and FIELD_PREVIOUS[prev.value])
        or (prev.kind == "name" and t.kind == "symbol") -- cfg["key"] =
      if field_position then
        return j, value_at
      end
      if not loose_at then
        loose_at, loose_value = j, value_at
      end
    end
  end
  return loose_at, loose_value
end

local OPENERS = { ["{"] = 1, ["("] = 1, ["["] = 1, ["}"] = -1, [")"] = -1, ["]"] = -1 }

-- Index of the "}" closing the "{" at toks[open] (#toks + 1 when unbalanced).
local function closing_brace(toks, open)
  local depth = 0
  for j = open, #toks do
    local t = toks[j]
    if t.kind == "symbol" then
      if t.value == "{" then
        depth = depth + 1
      elseif t.value == "}" then
        depth = depth - 1
        if depth == 0 then
          return j
        end
      end
    end
  end
  return #toks + 1
end

-- First token of the n-th item of the constructor whose contents are toks[lo..hi].
local function nth_item(toks, n, lo, hi)
  if lo > hi then
    return nil
  end
  if n == 1 then
    return lo
  end
  local depth, item = 0, 1
  for j = lo, hi do
    local t = toks[j]
    if t.kind == "symbol" then
      local step = OPENERS[t.value]
      if step then
        depth = depth + step
      elseif depth == 0 and (t.value == "," or t.value == ";") then
        item = item + 1
        if item == n then
          return j + 1 <= hi and j + 1 or nil
        end
      end
    end
  end
end

-- The line where the key path `where` is written: each component is searched
-- inside the table constructor of the previous one when it has one, else in
-- the whole file. Returns the deepest line found, nil if not even the first.
local function find_line(text, where)
  local toks = lex(text)
  local lo, hi, inside = 1, #toks, false
  local line
  for _, comp in ipairs(where) do
    local at, value_at
    if type(comp) == "string" then
      at, value_at = find_field(toks, comp, lo, hi)
    elseif math_type(comp) == "integer" and inside then
      at = nth_item(toks, comp, lo, hi)
      value_at = at
    end
    if not at then
      break
    end
    line = toks[at].line
    if is_symbol(toks[value_at], "{") then
      lo, hi, inside = value_at + 1, closing_brace(toks, value_at) - 1, true
    else
      lo, hi, inside = 1, #toks, false
    end
  end
  return line
end
M.find_line = find_line

local function read_text(path)
  local f = io_open(path, "rb")
  if not f then
    return nil
  end
  local text = f:read("a")
  f:close()
  return text
end

-- "source:LINE: msg" with the line where the key path `where` is written in
-- the Lua file source (text: its contents, read from source when nil), or
-- "source: msg" when the key is not found there; msg alone without a source.
function M.locate(source, where, msg, text)
  if not source then
    return msg
  end
  text = text or read_text(source)
  local line = text and find_line(text, where)
  if line then
    return format("%s:%d: %s", source, line, msg)
  end
  return format("%s: %s", source, msg)
end

return M
