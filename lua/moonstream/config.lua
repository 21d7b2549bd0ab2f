-- moonstream's configuration: a Lua file that returns a table whose keys are
-- deepstream's, so a deepstream user recognises them. The table is data; the
-- schema (config/schema.lua) checks it before the server binds a port, and a
-- mistake is reported with the key's dotted path and, when it came from a
-- file, the line where that key is written (config/locate.lua).
--
--   defaults()                    -> a fresh table of the embedded defaults
--   validate(t [, source])        -> cfg | nil, err   defaults merged with t
--   load(path)                    -> cfg | nil, err   runs the file, then validate
--                                    (a .yml/.yaml path: deepstream's config.yml,
--                                    mapped by config_yaml.lua, then validate)
--   apply_overrides(cfg, o)       -> cfg | nil, err   CLI options (--host, --port)
--   resolve_path(dir, p)          -> p, relative to dir unless absolute
--
-- The returned cfg is always a new table: the sections (rpc, storage, events,
-- ...) are merged key by key, every other key replaces its default; tables
-- given by the user (auth, permissions, origins, ...) are copied, functions
-- are kept. Relative file paths written in a config file (storage.path,
-- rpc.handlers, events.listeners, permissions) are resolved against the
-- file's directory, which is also kept as cfg.configDir for the modules that
-- read further files (auth strategies); without a source they stay relative
-- to the current directory and cfg.configDir is nil. Defaults are never
-- resolved.
--
-- A config file runs in config/loader.lua's sandbox: no require, io, load or
-- print: a config describes, it does not act. Functions defined in the file
-- (inline RPC handlers, event listeners) keep that environment.
local type, error = type, error
local format, find = string.format, string.find
local D = require "moonstream.config.describe"
local files = require "moonstream.config.files"
local loader = require "moonstream.config.loader"
local locate = require("moonstream.config.locate").locate
local schema = require "moonstream.config.schema"

local M = {}

M.defaults = schema.defaults
M.resolve_path = files.resolve_path

-- locate: nil (a Lua file: the line is found in text) or function(e) -> the
-- message (config.yml: config_yaml.lua names the deepstream key and line).
local function validate(user, source, text, locate_error)
  if type(user) ~= "table" then
    local msg = format("the configuration must be a table (got %s)", D.describe(user))
    return nil, source and format("%s: %s", source, msg) or msg
  end
  local ctx = { dir = source and files.dir_of(source) }
  local cfg, e = schema.merge(schema.defaults(), user, ctx)
  if not cfg then
    if locate_error then return nil, locate_error(e) end
    return nil, locate(source, e.where, e.msg, text)
  end
  cfg.configDir = ctx.dir
  return cfg
end

function M.validate(user, source)
  if source ~= nil and type(source) ~= "string" then
    error(format("bad argument #2 to 'validate' (string expected, got %s)", type(source)), 2)
  end
  return validate(user, source, nil)
end

function M.load(path)
  if type(path) ~= "string" then
    error(format("bad argument #1 to 'load' (string expected, got %s)", type(path)), 2)
  end
  if find(path, "%.ya?ml$") then -- deepstream's config.yml
    return require("moonstream.config_yaml").load(path, function(user, source, locate_error)
      return validate(user, source, nil, locate_error)
    end)
  end
  local ok, result, text = loader.run_file(path, loader.sandbox())
  if not ok then
    if text == "open" or text == "read" then
      return nil, format("cannot read configuration file '%s': %s", path, result)
    end
    return nil, result
  end
  if type(result) ~= "table" then
    return nil, format("%s: the configuration file must return a table (got %s)", path, type(result))
  end
  return validate(result, path, text)
end

-- Command-line options over a validated configuration: each is checked like
-- the same key in a file (sections merged key by key), relative paths stay
-- relative to the current directory, and nil options are skipped.
function M.apply_overrides(cfg, overrides)
  if type(cfg) ~= "table" then
    error(format("bad argument #1 to 'apply_overrides' (table expected, got %s)", type(cfg)), 2)
  end
  if overrides ~= nil and type(overrides) ~= "table" then
    error(format("bad argument #2 to 'apply_overrides' (table expected, got %s)", type(overrides)), 2)
  end
  local out = D.deep_copy(cfg)
  if overrides == nil then
    return out
  end
  local merged, e = schema.merge(out, overrides, { dir = nil })
  if not merged then
    return nil, e.msg
  end
  return merged
end

return M
