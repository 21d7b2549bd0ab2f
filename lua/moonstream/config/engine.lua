-- The schema engine: checks a user's table against a schema (a list of
-- fields, schema.lua's and each auth strategy's options) and merges it over
-- the schema's defaults. Errors are objects { msg, where }: the whole message
-- and the key path whose line is looked up in the user's file.
--
-- A field is { key, default, check } (check as in checks.lua; none: any
-- value), or a section { key, fields } whose own fields are merged key by key
-- over their defaults. A section marked `off` has no default (it is nil until
-- given); one marked `switch` may also be `false` and replaces its default
-- as a whole, `missing(out)` naming a key it still needs.
local type, ipairs, rawget = type, ipairs, rawget
local format, sub, concat = string.format, string.sub, table.concat
local D = require "moonstream.config.describe"
local did_you_mean = require("moonstream.config.suggest").did_you_mean

local describe, describe_key, format_path, append, deep_copy, sorted_keys =
  D.describe, D.describe_key, D.format_path, D.append, D.deep_copy, D.sorted_keys

local M = {}

-- An error found while checking the key path `path`.
local function failure(path, text, where)
  local sep = sub(text, 1, 1) == ":" and "" or " "
  return { msg = format("config key '%s'%s%s", format_path(path), sep, text), where = where or path }
end
M.failure = failure

-- The defaults of a list of fields, as a new table.
local function defaults_of(fields)
  local out = {}
  for _, f in ipairs(fields) do
    if f.fields then
      if not f.off then out[f.key] = defaults_of(f.fields) end
    else
      out[f.key] = deep_copy(f.default)
    end
  end
  return out
end
M.defaults_of = defaults_of

-- options with the defaults of fields where a key is not given (a new table).
function M.with_defaults(options, fields)
  local out = deep_copy(options)
  for _, f in ipairs(fields) do
    if out[f.key] == nil then out[f.key] = deep_copy(f.default) end
  end
  return out
end

-- Lookups by key, and the names an unknown key is compared with: a section's
-- own keys; at the top, the top keys plus every nested key both as "leaf" and
-- as "section.leaf" (so `responseTimeout = 500` suggests 'rpc.responseTimeout').
-- Returns the top index and candidates; sections get theirs as fields.
function M.index(schema)
  local index, candidates = {}, {}
  for _, field in ipairs(schema) do
    index[field.key] = field
    candidates[#candidates + 1] = { name = field.key, full = field.key }
    if field.fields then
      field.index, field.candidates = {}, {}
      for _, sub_field in ipairs(field.fields) do
        field.index[sub_field.key] = sub_field
        field.candidates[#field.candidates + 1] = { name = sub_field.key, full = field.key .. "." .. sub_field.key }
      end
    end
  end
  for _, field in ipairs(schema) do
    for _, c in ipairs(field.candidates or {}) do
      candidates[#candidates + 1] = { name = c.name, full = c.full }
      candidates[#candidates + 1] = { name = c.full, full = c.full }
    end
  end
  return index, candidates
end

local function check_unknown(t, index, prefix, candidates)
  for _, k in ipairs(sorted_keys(t)) do
    if type(k) ~= "string" or not index[k] then
      local path = append(prefix, { k })
      return {
        msg = format("unknown config key '%s'%s", format_path(path), did_you_mean(k, candidates)),
        where = path,
      }
    end
  end
end
M.check_unknown = check_unknown

-- Checks the fields of section that v gives into out. Returns an error or nil.
local function merge_section_fields(out, section, v, ctx)
  for _, f in ipairs(section.fields) do
    local sv = rawget(v, f.key)
    if sv ~= nil then
      local value, text, extra = f.check(sv, ctx)
      if text then
        return failure(append({ section.key, f.key }, extra), text)
      end
      out[f.key] = value
    end
  end
end

-- A switch section (metrics, monitoring): false, or a table merged over the
-- section's defaults (not over the value it replaces).
local function merge_switch(cfg, section, v, ctx)
  local key = section.key
  if v == false then
    cfg[key] = false
    return nil
  end
  if type(v) ~= "table" then
    return failure({ key }, format("must be a table or false (got %s)", describe(v)))
  end
  for _, k in ipairs(sorted_keys(v)) do
    if type(k) ~= "string" or not section.index[k] then
      return failure({ key }, format(": unknown key %s%s", describe_key(k), did_you_mean(k, section.candidates)))
    end
  end
  local out = section.off and {} or defaults_of(section.fields)
  local e = merge_section_fields(out, section, v, ctx)
  if e then return e end
  local needed = section.missing and section.missing(out)
  if needed then
    return failure({ key, needed }, "must be given")
  end
  cfg[key] = out
end

-- Checks the user's value v of one schema field and stores it in cfg (whose
-- sections already exist). Returns an error object or nil.
function M.merge_field(cfg, field, v, ctx)
  if not field.fields then
    local value, text, extra = field.check(v, ctx)
    if text then
      return failure(append({ field.key }, extra), text)
    end
    cfg[field.key] = value
    return nil
  end
  if field.switch then
    return merge_switch(cfg, field, v, ctx)
  end
  if type(v) ~= "table" then
    return failure({ field.key }, format("must be a table (got %s)", describe(v)))
  end
  local e = check_unknown(v, field.index, { field.key }, field.candidates)
  if e then
    return e
  end
  local section = cfg[field.key]
  if section == nil then -- a section without defaults (cluster)
    section = {}
    cfg[field.key] = section
  end
  return merge_section_fields(section, field, v, ctx)
end

-- The options of one part (an auth strategy) against its option schema
-- { name, fields, combined }: nil when right, else text and the key path
-- (relative to options) the text is about. Fields marked `required` are
-- checked even when not given; the options are not changed.
function M.check_options(options, spec, ctx)
  for _, k in ipairs(sorted_keys(options)) do
    local known = false
    for _, f in ipairs(spec.fields) do
      if f.key == k then known = true break end
    end
    if not known then
      local names = {}
      for i, f in ipairs(spec.fields) do names[i] = f.key end
      return format("is not an option of %s (options: %s)", spec.name, #names > 0 and concat(names, ", ") or "none"),
        { k }
    end
  end
  for _, f in ipairs(spec.fields) do
    local v = rawget(options, f.key)
    if f.check and (v ~= nil or f.required) then
      local _, text, extra = f.check(v, ctx)
      if text then return text, append({ f.key }, extra) end
    end
  end
  if spec.combined then
    return spec.combined(options)
  end
end

return M
