-- Replaces one generated part of RESULTS.md, keeping every other section.
-- usage: lua5.4 bench/splice.lua NAME FILE < part
-- The part goes between "<!-- NAME: generated -->" and "<!-- NAME: end -->";
-- without those markers yet, it is added after the title (or starts the file).
local name, path = arg[1], arg[2]
local BEGIN = "<!-- " .. name .. ": generated, do not edit by hand -->"
local END = "<!-- " .. name .. ": end of generated part -->"
local part = BEGIN .. "\n" .. io.read("a") .. END .. "\n"

local old = ""
local f = io.open(path)
if f then old = f:read("a"); f:close() end
local a = old:find(BEGIN, 1, true)
local b = old:find(END, 1, true)
local new
if a and b then
  new = old:sub(1, a - 1) .. part .. old:sub(b + #END + 1)
elseif old ~= "" then
  local title_end = old:find("\n\n", 1, true)
  new = title_end and (old:sub(1, title_end + 1) .. part .. "\n" .. old:sub(title_end + 2))
    or (old .. "\n" .. part)
else
  new = "# moonstream benchmarks\n\n" .. part
end
f = assert(io.open(path, "w"))
f:write(new)
f:close()
