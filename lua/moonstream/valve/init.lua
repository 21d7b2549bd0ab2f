-- Valve: deepstream's permission files (permissions.yml / .json), loaded as a
-- second compiled form of moonstream's permission rules. load() checks a file
-- as deepstream 7 does (every section present, each with "*", known rule
-- types, valid paths and expressions) and turns it into the same index
-- permissions.lua builds from a Lua file; run() evaluates one compiled rule
-- the way deepstream's RuleApplication does.
--
--   valve.load(source [, rules]) -> index | nil, err
--     source: the file's path (rules read from it), or a name for `rules`
--   valve.run(candidate, req) -> allowed, error_text
--
-- Paths: `*` matches anything (also "/"), `$name` ([a-zA-Z0-9]+) one segment;
-- other characters are literal (deepstream would read them as a regular
-- expression). Of the paths that match and define the rule type, the longest
-- wins; between equally long ones, the one written last (deepstream's loop).
local json = require "moonstream.json"
local yamldoc = require "moonstream.yamldoc"
local rule_mod = require "moonstream.valve.rule"
local js = require "moonstream.valve.js"
local permissions = require "moonstream.permissions"
local files = require "moonstream.config.files"

local type, ipairs, pairs, pcall, tostring, setmetatable =
  type, ipairs, pairs, pcall, tostring, setmetatable
local format, find, sub, concat, sort = string.format, string.find, string.sub, table.concat, table.sort
local null = json.null

local M = {}

M.DEFAULT_MAX_RULE_ITERATIONS = 3

-- deepstream's schema: its sections in its order; their rule types are the
-- ones Lua permission rules have (permissions.lua).
local SECTIONS = { "record", "event", "rpc", "presence" }
local RULE_TYPES = permissions.RULE_TYPES

-- The deepstream message action a rule sees as `action` (its protocol numbers,
-- lua/moonstream/realtime/message.lua), by section and moonstream action.
local ACTION_CODES = {
  record = { read = 3, subscribe = 3, snapshot = 3, head = 5, has = 5, create = 15, write = 18, patch = 19,
             delete = 9, notify = 2, listen = 27 },
  event = { emit = 2, publish = 2, subscribe = 3, listen = 5 },
  rpc = { make = 2, request = 2, provide = 8 },
  presence = { query = 4, query_all = 2, subscribe = 10, subscribe_all = 12, allow = 4 },
}

local function keys_in_order(meta, t)
  local m = meta and meta[t]
  if m and m.keys then return m.keys end
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

local function read_text(path)
  local text, err, too_large = files.read_text(path)
  if not text and not too_large then return nil, format("cannot read permissions file: %s", tostring(err)) end
  return text, err
end

-- A path as an anchored Lua pattern and its variable names ("$id"), in order.
local function compile_path(path)
  return permissions.compile_pattern(path, "(%$[a-zA-Z0-9]+)")
end

-- deepstream's path checks; returns an error text or nil.
local function path_error(path)
  if type(path) ~= "string" then return "path must be a string" end
  if path == "" then return "path can't be empty" end
  if sub(path, 1, 1) == "/" then return "path can't start with /" end
  local bad = path:match("(%$[^a-zA-Z0-9])") or path:match("(%$)$")
  if bad then return "invalid variable name " .. bad end
end

local function show(expr)
  expr = tostring(expr)
  if #expr > 120 then expr = sub(expr, 1, 117) .. "..." end
  return expr
end

-- Checks the decoded document and builds the index; errors are
-- "<source>:<line>: <text>" (the line when the key is found).
local function build(doc, meta, source)
  local function err(path, text)
    local line = meta and yamldoc.line(meta, doc, path)
    if line then return format("%s:%d: %s", source, line, text) end
    return format("%s: %s", source, text)
  end
  if type(doc) ~= "table" or json.is_array(doc) then
    return nil, err({}, format("config should be an object literal, but was of type %s", js.typeof(doc)))
  end
  for _, section in ipairs(SECTIONS) do
    if type(doc[section]) ~= "table" or json.is_array(doc[section]) then
      return nil, err({ section }, format('missing configuration section "%s"', section))
    end
  end
  for _, key in ipairs(keys_in_order(meta, doc)) do
    if not RULE_TYPES[key] then return nil, err({ key }, format('unexpected configuration section "%s"', key)) end
  end
  local index = {}
  for _, section in ipairs(SECTIONS) do
    local paths = doc[section]
    local order = keys_in_order(meta, paths)
    if #order == 0 then return nil, err({ section }, format('empty section "%s"', section)) end
    for _, path in ipairs(order) do
      local perr = path_error(path)
      if perr then return nil, err({ section, path }, format("%s for path %s in section %s", perr, path, section)) end
    end
    if paths["*"] == nil then return nil, err({ section }, format('missing root entry "*" for section %s', section)) end
    local known = {}
    for _, t in ipairs(RULE_TYPES[section]) do known[t] = true end
    local by_type = {}
    for position, path in ipairs(order) do
      local rules = paths[path]
      if type(rules) ~= "table" or json.is_array(rules) then
        return nil, err({ section, path }, format('%s "%s" must be an object of rule type -> rule', section, path))
      end
      local match, vars = compile_path(path)
      for _, rule_type in ipairs(keys_in_order(meta, rules)) do
        if not known[rule_type] then
          return nil, err({ section, path, rule_type }, format("unknown rule type %s in section %s", rule_type, section))
        end
        local text = rules[rule_type]
        local compiled, msg, column = rule_mod.compile(text, section, rule_type, vars)
        if not compiled then
          local where = column and format(" at column %d of %q", column, show(text)) or ""
          return nil, err({ section, path, rule_type }, format('%s "%s" %s: %s%s', section, path, rule_type, msg, where))
        end
        local list = by_type[rule_type] or {}
        by_type[rule_type] = list
        list[#list + 1] = { pattern = path, match = match, vars = vars, valve = compiled, position = position,
          rule = compiled.constant }
      end
    end
    for _, list in pairs(by_type) do
      sort(list, function(a, b)
        if #a.pattern ~= #b.pattern then return #a.pattern > #b.pattern end
        return a.position > b.position
      end)
    end
    index[section] = by_type
  end
  return index
end

-- Loads a Valve file (.yml, .yaml or .json; JSON is read as YAML, which it
-- is), or checks `rules` already decoded (a Lua table) named `source`.
function M.load(source, rules)
  if rules ~= nil then return build(rules, nil, source) end
  local text, rerr = read_text(source)
  if not text then return nil, rerr end
  local doc, meta = yamldoc.parse(text, source)
  if doc == nil then return nil, meta end
  return build(doc, meta, source)
end

-- Running a rule -------------------------------------------------------------

local LOADING = {}
local Fatal = {}

-- req: user { id, data, isAuthenticated }, name, vars (captures in order),
-- section, rule_type, action (the moonstream action), data, path (a record
-- path write), read(name) -> data, exists; max_iterations.
--
-- As deepstream: the rule runs; every record it needs and does not have yet
-- (oldData, the record a path write changes, each _('name')) is loaded, and
-- the rule runs again, up to max_iterations runs. _() of a record being
-- loaded is undefined, of a missing record null; _() of anything but a string
-- or undefined is an error. An error or exception denies. Only `true` allows.
function M.run(c, req)
  local compiled = c.valve
  local loaded, pending, fatal = {}, nil, nil
  local function load(n)
    pending = pending or {}
    pending[#pending + 1] = n
    loaded[n] = LOADING
  end
  local user = req.user or {}
  local codes = ACTION_CODES[req.section] or {}
  local action = codes[req.rule_type == "create" and "create" or req.action]
  if req.section == "record" and req.rule_type == "write" and req.path then action = codes.patch end
  if req.section == "presence" and req.name == "" then action = codes[(req.action or "") .. "_all"] or action end
  local env = {
    -- deepstream: every user but the anonymous "open" one is authenticated;
    -- a user without serverData has data null
    user = { isAuthenticated = user.id ~= nil and user.id ~= "open", id = user.id,
             data = user.data == nil and null or user.data },
    now = req.now, action = action, name = req.name, vars = req.vars,
  }
  env.xref = function(v)
    if v ~= nil and type(v) ~= "string" then
      fatal = fatal or "crossreference got unsupported type " .. js.typeof(v)
      return nil
    end
    if v == nil or find(v, "undefined", 1, true) then return nil end
    local d = loaded[v]
    if d == LOADING then return nil end
    if d == nil then load(v); return nil end
    return d
  end
  local function current_data()
    if req.section == "record" and req.path then
      local d = loaded[req.name]
      if d == nil then load(req.name); return nil end
      if d == LOADING then return nil end
      if d == null then
        fatal = fatal or "Tried to apply patch to non-existant record " .. tostring(req.name)
        return nil
      end
      return req.patched(d)
    end
    return req.data
  end
  local function old_data()
    local d = loaded[req.name]
    if d == nil then load(req.name); return nil end
    if d == LOADING then return nil end
    return d
  end
  local max = req.max_iterations or M.DEFAULT_MAX_RULE_ITERATIONS
  local iteration = 0
  while true do
    iteration = iteration + 1
    if iteration > max then return false, "Exceeded max iteration count" end
    pending = nil
    env.data, env.oldData = nil, nil
    if compiled.data then env.data = current_data() end
    if compiled.oldData then env.oldData = old_data() end
    if fatal then return false, fatal end
    local ok, result = pcall(compiled.fn, env)
    if fatal then return false, fatal end
    if not pending then
      if not ok then return false, tostring(result) end
      return result == true
    end
    for _, n in ipairs(pending) do
      local data, exists = req.read(n)
      loaded[n] = exists and data or null
    end
  end
end

return M
