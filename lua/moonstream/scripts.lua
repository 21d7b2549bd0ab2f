-- Loading user scripts (RPC handlers, event listeners): plain Lua files that
-- return a function. Shapes are checked at load time and errors name the file.
local lfs = require "lfs"
local loader = require "moonstream.config.loader"

local M = {}

-- Loads one file that must return a function. Returns fn | nil, err. Scripts
-- act (require, io): they run in the global environment, not the sandbox.
function M.load_function(path, what)
  local ok, result, stage = loader.run_file(path, _G)
  if not ok then
    if stage == "open" or stage == "read" then
      return nil, what .. " file cannot " .. stage .. " " .. path .. ": " .. result
    end
    if stage == "syntax" then return nil, what .. " file " .. result end
    return nil, what .. " file '" .. path .. "' failed to load: " .. result
  end
  if type(result) ~= "function" then
    return nil, what .. " file '" .. path .. "' must return a function (got " .. type(result) .. ")"
  end
  return result
end

-- Loads every "<name>.lua" of a folder. Returns { name = fn } | nil, err.
function M.load_folder(dir, what)
  local attr = lfs.attributes(dir)
  if not attr or attr.mode ~= "directory" then
    return nil, what .. " folder '" .. dir .. "' does not exist"
  end
  local names = {}
  for entry in lfs.dir(dir) do
    local name = entry:match("^(.+)%.lua$")
    if name then names[#names + 1] = name end
  end
  table.sort(names) -- deterministic load order and error reporting
  local fns = {}
  for _, name in ipairs(names) do
    local fn, err = M.load_function(dir .. "/" .. name .. ".lua", what)
    if not fn then return nil, err end
    fns[name] = fn
  end
  return fns
end

-- Resolves a config value: a folder path, or a table name -> function|path.
function M.load_spec(spec, what)
  if spec == nil then return {} end
  if type(spec) == "string" then return M.load_folder(spec, what) end
  local fns = {}
  for name, v in pairs(spec) do
    if type(v) == "function" then
      fns[name] = v
    else
      local fn, err = M.load_function(v, what)
      if not fn then return nil, err end
      fns[name] = fn
    end
  end
  return fns
end

return M
