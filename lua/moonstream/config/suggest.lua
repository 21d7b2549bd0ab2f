-- "Did you mean": the known name closest to a mistyped one.
local type, ipairs = type, ipairs
local huge = math.huge
local format, byte, sub, lower = string.format, string.byte, string.sub, string.lower

local M = {}

-- Optimal string alignment distance (Levenshtein plus transpositions, so
-- 'prot' is one edit from 'port').
local function edit_distance(a, b)
  local la, lb = #a, #b
  local prev2, prev, cur = {}, {}, {}
  for j = 0, lb do
    prev[j] = j
  end
  for i = 1, la do
    cur[0] = i
    local ca = byte(a, i)
    for j = 1, lb do
      local cb = byte(b, j)
      local cost = ca == cb and 0 or 1
      local d = prev[j] + 1
      if cur[j - 1] + 1 < d then d = cur[j - 1] + 1 end
      if prev[j - 1] + cost < d then d = prev[j - 1] + cost end
      if i > 1 and j > 1 and ca == byte(b, j - 1) and byte(a, i - 1) == cb and prev2[j - 2] + 1 < d then
        d = prev2[j - 2] + 1
      end
      cur[j] = d
    end
    prev2, prev, cur = prev, cur, prev2
  end
  return prev[lb]
end
M.edit_distance = edit_distance

-- candidates: list of { name = compared text, full = suggested key }. Case is
-- ignored; a suggestion needs at most one edit per three letters (max 3), or
-- else one of the two words must start the other.
local function suggest(word, candidates)
  if #word > 100 then
    return nil
  end
  local w = lower(word)
  local limit = #w // 3
  if limit < 1 then limit = 1 elseif limit > 3 then limit = 3 end
  local best, best_distance = nil, huge
  for _, c in ipairs(candidates) do
    local d = edit_distance(w, lower(c.name))
    if d < best_distance then
      best, best_distance = c.full, d
    end
  end
  if best_distance <= limit then
    return best
  end
  -- 'warning' for 'warn', 'hostname' for 'host': one name starts the other.
  for _, c in ipairs(candidates) do
    local name = lower(c.name)
    if #name >= 3 and #w >= 3 and (sub(w, 1, #name) == name or sub(name, 1, #w) == w) then
      return c.full
    end
  end
end
M.suggest = suggest

-- " (did you mean 'x'?)" for word (any value), or "".
function M.did_you_mean(word, candidates)
  local s = type(word) == "string" and suggest(word, candidates)
  return s and format(" (did you mean '%s'?)", s) or ""
end

return M
