-- Permissions written in Lua, in deepstream's terms.
--
-- A permissions file returns rules per topic; under each topic, name patterns;
-- under each pattern, rule types:
--
--   return {
--     record = {
--       ["*"]         = { create = true, write = true, read = true, delete = true, notify = true },
--       ["secret/*"]  = { read = false, write = false, create = false, delete = false, notify = false },
--       ["users/$id"] = { write = function(ctx) return ctx.user.id == ctx.vars.id end },
--     },
--     event    = { ["*"] = { publish = true, subscribe = true } },
--     rpc      = { ["*"] = { request = true, provide = true } },
--     presence = { ["*"] = { allow = true } },
--   }
--
-- Rule types: record create, write, read, delete, notify, listen; event
-- publish, subscribe, listen; rpc request, provide; presence allow.
-- Patterns: `*` matches anything (also "/"), `$name` one path segment (no
-- "/"), captured into ctx.vars.name. Among the patterns that match a name and
-- define the rule type needed, the longest wins (equal lengths: the one that
-- sorts first); no such pattern denies.
--
-- A rule is true, false or function(ctx) returning true to allow (anything
-- else denies). ctx: user { id, data = serverData, isAuthenticated }, name,
-- vars, topic, action (the rule type), data (what is written or sent; for a
-- record path write, the whole record after the change), oldData (the stored
-- record, nil when it does not exist), now (ms since the epoch) and
-- read(name) -> data of another record. A rule that raises denies; the error
-- is logged with the rule's file and line and the server goes on.
--
-- A write to a record that does not exist needs `create` and then `write`;
-- to one that exists, `write` only. Lists use the record rules.
--
-- The same rules can come from deepstream's Valve files (permissions.yml or
-- .json: moonstream.valve compiles them into this index; a Valve rule runs as
-- deepstream runs it, see valve.run). Either way every decision, for POST /api
-- and every realtime action, is made by check() below.
--
--   permissions.new(spec, opts)   spec: a file path (.lua, or a Valve .yml,
--                                 .yaml, .json), a table of Lua rules,
--                                 deepstream's { type = "config", options =
--                                 { path | permissions, maxRuleIterations } }
--                                 or { type = "none" }, or nil (allow all)
--   p:check(ctx, topic, action, name, extra) -> allowed, denied_action, errored
--   p:permit()        -> function(ctx, topic, action, name, cmd) for dispatch.lua
--   p:reload()        -> true | nil, err   (a file only; on error the old rules stay)
local loader = require "moonstream.config.loader"
local locate = require("moonstream.config.locate").locate
local json = require "moonstream.json"
local log = require "moonstream.log"
local paths = require "moonstream.paths"
-- moonstream.valve (and the lpeg, lrexlib-pcre2 and lyaml rocks it needs)
-- is loaded when a Valve file is used: Lua rule files work without them.
local valve = setmetatable({}, { __index = function(t, k)
  local ok, mod = pcall(require, "moonstream.valve")
  if not ok then error("Valve permissions need the lpeg, lrexlib-pcre2 and lyaml rocks: " .. tostring(mod), 0) end
  setmetatable(t, { __index = mod })
  return mod[k]
end })

local type, pairs, ipairs, pcall, tostring = type, pairs, ipairs, pcall, tostring
local format, gsub, match, sort, concat = string.format, string.gsub, string.match, table.sort, table.concat
local decode = json.decode

local M = {}
local Permissions = {}
local mt = { __index = Permissions }

-- Topic -> its rule types; Valve's files (moonstream.valve) know the same ones.
local RULE_TYPES = {
  record = { "create", "write", "read", "delete", "notify", "listen" },
  event = { "publish", "subscribe", "listen" },
  rpc = { "request", "provide" },
  presence = { "allow" },
}
M.RULE_TYPES = RULE_TYPES

-- Command and realtime actions -> the rule type they need.
local ACTION_RULE = {
  record = { read = "read", head = "read", subscribe = "read", snapshot = "read", has = "read",
             write = "write", create = "create", delete = "delete", notify = "notify", listen = "listen" },
  event = { emit = "publish", publish = "publish", subscribe = "subscribe", listen = "listen" },
  rpc = { make = "request", request = "request", provide = "provide" },
  presence = { query = "allow", subscribe = "allow", allow = "allow" },
}

-- A name pattern as an anchored Lua pattern and its variables, in order: `*`
-- matches anything, a variable one path segment. var: the Lua pattern of a
-- variable, its capture what is recorded (default $name, recorded as name;
-- Valve's paths give their own).
local function compile_pattern(pattern, var)
  local vars = {}
  local out = gsub(pattern, var or "%$([%a_][%w_]*)", function(name)
    vars[#vars + 1] = name
    return "\0"
  end)
  out = gsub(out, "[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0")
  out = gsub(out, "%*", ".*")
  out = gsub(out, "\0", "([^/]+)")
  return "^" .. out .. "$", vars
end
M.compile_pattern = compile_pattern

-- "file:LINE: msg" for the key path `where` in the file, when it is found.
local function located(source, where, msg)
  if not source then return msg end
  return locate(source, where, msg)
end

-- Checks a rules table and indexes it: topic -> rule type -> candidates
-- (longest pattern first). Returns the index | nil, err.
local function compile(spec, source)
  if type(spec) ~= "table" then
    return nil, format("%s: the permissions must be a table (got %s)", source or "permissions", type(spec))
  end
  local index = {}
  for topic, patterns in pairs(spec) do
    local types = RULE_TYPES[topic]
    if not types then
      return nil, located(source, { topic }, format("permissions: unknown topic '%s' (record, event, rpc, presence)",
        tostring(topic)))
    end
    if type(patterns) ~= "table" then
      return nil, located(source, { topic }, format("permissions.%s must be a table of name pattern -> rules", topic))
    end
    local known = {}
    for _, t in ipairs(types) do known[t] = true end
    local by_type = {}
    for pattern, rules in pairs(patterns) do
      if type(pattern) ~= "string" or pattern == "" then
        return nil, located(source, { topic }, format("permissions.%s: patterns must be non-empty strings", topic))
      end
      if type(rules) ~= "table" then
        return nil, located(source, { topic, pattern },
          format("permissions.%s[%q] must be a table of rule type -> true, false or function", topic, pattern))
      end
      local lua_pattern, vars = compile_pattern(pattern)
      for rule_type, rule in pairs(rules) do
        if not known[rule_type] then
          return nil, located(source, { topic, pattern, rule_type },
            format("permissions.%s[%q]: unknown rule type '%s' (%s)", topic, pattern, tostring(rule_type),
              concat(types, ", ")))
        end
        local rt = type(rule)
        if rt ~= "boolean" and rt ~= "function" then
          return nil, located(source, { topic, pattern, rule_type },
            format("permissions.%s[%q].%s must be true, false or a function (got %s)", topic, pattern, rule_type, rt))
        end
        local list = by_type[rule_type] or {}
        by_type[rule_type] = list
        list[#list + 1] = { pattern = pattern, match = lua_pattern, vars = vars, rule = rule }
      end
    end
    for _, list in pairs(by_type) do
      sort(list, function(a, b)
        if #a.pattern ~= #b.pattern then return #a.pattern > #b.pattern end
        return a.pattern < b.pattern
      end)
    end
    index[topic] = by_type
  end
  return index
end

local function load_file(path)
  -- the config file's environment: no require, io or os (rules decide, they do not act)
  local ok, result, stage = loader.run_file(path, loader.sandbox())
  if not ok then
    if stage == "open" or stage == "read" then
      return nil, "cannot read permissions file: " .. path .. ": " .. result
    end
    if stage == "syntax" then return nil, result end
    return nil, format("permissions file '%s' failed to load: %s", path, result)
  end
  return compile(result, path)
end

-- How the rules of spec are (re)loaded: a function() -> index | nil, err,
-- the file it reads (nil: a table, not reloaded) and the Valve iteration limit.
local function loader_of(spec)
  if type(spec) == "string" then
    if spec:find("%.ya?ml$") or spec:find("%.json$") then return function() return valve.load(spec) end, spec end
    return function() return load_file(spec) end, spec
  end
  if type(spec) == "table" and spec.type == "none" then return nil end
  if type(spec) == "table" and spec.type == "config" then
    local options = spec.options or {}
    local max = options.maxRuleIterations
    if options.path then return function() return valve.load(options.path) end, options.path, max end
    return function() return valve.load("permission.options.permissions", options.permissions) end, nil, max
  end
  return function() return compile(spec, nil) end
end

-- opts.records: an object with record_engine.lua's get(name), for oldData,
-- existence and ctx.read.
function M.new(spec, opts)
  local self = setmetatable({ source = nil, index = nil, records = opts and opts.records, cache = {}, cached = 0 },
    mt)
  if spec == nil then return self end
  local loader, source, max = loader_of(spec)
  if not loader then return self end
  local index, err = loader()
  if not index then return nil, err end
  self.loader, self.source, self.max_iterations, self.index = loader, source, max, index
  return self
end

function Permissions:configured()
  return self.index ~= nil
end

-- Reloads the file; a broken new file keeps the old rules.
function Permissions:reload()
  if not self.source then return true end
  local index, err = self.loader()
  if not index then
    log.error("permissions not reloaded, the old rules stay: %s", err)
    return nil, err
  end
  self.index, self.cache, self.cached = index, {}, 0
  log.info("permissions reloaded from %s", self.source)
  return true
end

-- The stored data of a record (decoded) and whether it exists.
local function stored(self, name)
  local records = self.records
  if not records or name == nil then return nil, false end
  local version, text = records:get(name)
  if version == nil then return nil, false end
  return decode(text), true
end

-- The candidate whose pattern wins for name, and its captures.
local function find_rule(list, name)
  for _, c in ipairs(list) do
    local caps = { match(name, c.match) }
    if caps[1] ~= nil then
      local vars = {}
      if #c.vars > 0 then
        for i, v in ipairs(c.vars) do vars[v] = caps[i] end
      end
      return c, vars
    end
  end
end

-- The context a function rule sees; data and oldData are computed on first use.
local function rule_context(self, ctx, topic, rule_type, name, vars, extra)
  local user = ctx and ctx.user or {}
  local c = {
    user = { id = user.id, data = user.data, isAuthenticated = user.isAuthenticated == true },
    name = name, vars = vars, topic = topic, action = rule_type,
    now = os.time() * 1000,
    read = function(other) return (stored(self, other)) end,
  }
  local lazy = {}
  function lazy.oldData()
    if extra and extra.oldData ~= nil then return extra.oldData end
    if topic ~= "record" then return nil end
    return (stored(self, name))
  end
  function lazy.data()
    if not extra then return nil end
    if topic == "record" and extra.path ~= nil and extra.path ~= "" then
      -- a path write: the record as it will be after the change
      local tokens = paths.parse(extra.path)
      if not tokens then return nil end
      local root = stored(self, name)
      return (paths.set(root, tokens, extra.data))
    end
    return extra.data
  end
  return setmetatable(c, { __index = function(t, k)
    local f = lazy[k]
    if not f then return nil end
    local v = f()
    rawset(t, k, v)
    return v
  end })
end

-- The winning candidate for (topic, rule type, name), cached per name as
-- deepstream caches it (the whole cache is dropped when it reaches MAX_CACHED
-- names, and on reload). A miss is cached too.
local MAX_CACHED = 10000
local NONE = {}
local function cached_rule(self, topic, rule_type, name)
  local key = topic .. "\0" .. rule_type
  local by_name = self.cache[key]
  local hit = by_name and by_name[name]
  if hit then
    if hit == NONE then return nil end
    return hit[1], hit[2]
  end
  local list = self.index[topic] and self.index[topic][rule_type]
  local c, vars
  if list then c, vars = find_rule(list, name) end
  if self.cached >= MAX_CACHED then self.cache, self.cached, by_name = {}, 0, nil end
  if not by_name then
    by_name = {}
    self.cache[key] = by_name
  end
  by_name[name] = c and { c, vars } or NONE
  self.cached = self.cached + 1
  return c, vars
end

-- A Valve rule, run as deepstream runs it (valve.run): allowed, errored.
local function evaluate_valve(self, ctx, c, topic, rule_type, action, name, vars, extra)
  local captures = {}
  for i, v in ipairs(c.vars) do captures[i] = vars[v] end
  -- as deepstream, only a realtime PATCH shows the rule the merged record;
  -- a create-and-patch (POST /api, setData with a path) shows the new value
  local path = topic == "record" and extra and extra.patch and extra.path ~= nil and extra.path ~= "" and extra.path
    or nil
  local ok, err = valve.run(c, {
    user = ctx and ctx.user, name = name, vars = captures, section = topic, rule_type = rule_type,
    action = action, data = extra and extra.data, path = path, now = os.time() * 1000,
    max_iterations = self.max_iterations,
    read = function(other) return stored(self, other) end,
    patched = function(current)
      local tokens = paths.parse(path)
      if not tokens then return nil end
      return (paths.set(decode(json.encode(current)), tokens, extra.data))
    end,
  })
  if err then
    log.warn("permission rule %s[%q].%s for '%s': %s", topic, c.pattern, rule_type, name, err)
    return false, true
  end
  return ok
end

-- One rule type for one name: allowed, errored.
local function evaluate(self, ctx, topic, rule_type, name, extra, action)
  local c, vars = cached_rule(self, topic, rule_type, name)
  if not c then return false end
  local rule = c.rule
  if rule == true or rule == false then return rule end
  if c.valve then return evaluate_valve(self, ctx, c, topic, rule_type, action, name, vars, extra) end
  local ok, result = pcall(rule, rule_context(self, ctx, topic, rule_type, name, vars, extra))
  if not ok then
    local info = debug.getinfo(rule, "S")
    log.error("permission rule %s[%q].%s (%s:%d) raised for '%s': %s", topic, c.pattern, rule_type,
      info.short_src, info.linedefined, name, tostring(result))
    return false, true
  end
  return result == true
end

-- ctx: { user = { id, data, isAuthenticated } }; topic: record, list, event,
-- rpc or presence; action: a rule type or a command/realtime action (emit,
-- make, head, query...); extra: { data, path, oldData } as known. A record
-- write checks create first when the record does not exist. Returns true, or
-- false, the action to name in the denial ("create" when create refused it)
-- and true when a rule raised.
function Permissions:check(ctx, topic, action, name, extra)
  if not self.index then return true end
  if topic == "list" then topic = "record" end
  local rule_type = ACTION_RULE[topic] and ACTION_RULE[topic][action] or action
  name = name or ""
  if topic == "record" and rule_type == "write" then
    local _, exists = stored(self, name)
    if not exists then
      local ok, errored = evaluate(self, ctx, topic, "create", name, extra, action)
      if not ok then return false, "create", errored end
    end
  end
  local ok, errored = evaluate(self, ctx, topic, rule_type, name, extra, action)
  if ok then return true end
  return false, action, errored
end

-- The dispatcher's hook: function(ctx, topic, action, name, cmd).
function Permissions:permit()
  return function(ctx, topic, action, name, cmd)
    if not self.index then return true end
    local names = cmd and (cmd.recordNames or (topic == "presence" and cmd.names))
    if type(names) == "table" then
      for _, n in ipairs(names) do
        local ok, denied, errored = self:check(ctx, topic, action, n, nil)
        if not ok then return false, denied, errored end
      end
      return true
    end
    return self:check(ctx, topic, action, name, cmd and { data = cmd.data, path = cmd.path,
      patch = ctx and ctx.realtime and cmd.patch })
  end
end

return M
