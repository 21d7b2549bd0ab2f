-- One Valve rule (deepstream's permission language): `true`, `false`, or a
-- JavaScript expression, parsed with an LPeg grammar of the subset deepstream
-- allows and compiled once into a tree of Lua closures. Nothing of the rule's
-- text is ever given to `load`: a rule can reach only what the closures hand
-- it (the variables below and the whitelisted methods), never Lua's globals.
--
-- The language: literals (numbers, '...'/"..." strings, true, false, null,
-- undefined, NaN, Infinity, regular expressions /.../flags, [array, literals],
-- { object: literals });
-- the variables user, data, oldData, now, action, name, the path's $variables
-- and _('record name'); member access a.b and a[b]; calls of _ and of the
-- methods startsWith, endsWith, includes, indexOf, match, toUpperCase,
-- toLowerCase, trim; operators ! - + typeof, * / %, + -, < <= > >=,
-- === !== == !=, &&, ||, ?: and parentheses, with JavaScript's precedence
-- and semantics (valve/js.lua). Anything else is refused at load with the
-- column where it is.
--
--   rule.compile(source, section, rule_type, variables)
--     -> { fn = function(env) -> value, data = bool, oldData = bool } | nil, msg, column
--   env: user, data, oldData, now, action, name, vars (values of the path's
--   variables, in order), xref(value) -> the `_` function's result
local lpeg = require "lpeg"
local js = require "moonstream.valve.js"

local P, S, R, V, C, Ct, Cc, Cp, Cf, Cg, Cmt =
  lpeg.P, lpeg.S, lpeg.R, lpeg.V, lpeg.C, lpeg.Ct, lpeg.Cc, lpeg.Cp, lpeg.Cf, lpeg.Cg, lpeg.Cmt
local type, format, tonumber, huge, char = type, string.format, tonumber, math.huge, string.char
local setmetatable, ipairs = setmetatable, ipairs

local M = {}

-- Which rule types see data / oldData (deepstream's rules-map).
M.SUPPORTS = {
  create = { data = false, oldData = false }, read = { data = false, oldData = true },
  write = { data = true, oldData = true }, delete = { data = false, oldData = true },
  listen = { data = false, oldData = false }, notify = { data = false, oldData = false },
  publish = { data = true, oldData = false }, subscribe = { data = true, oldData = false },
  provide = { data = false, oldData = false }, request = { data = true, oldData = false },
  allow = { data = false, oldData = false },
}

local METHOD = {}
for _, m in ipairs(js.METHODS) do METHOD[m] = true end

-- Grammar ------------------------------------------------------------------

local farthest = 1 -- the farthest position a token was tried at (error column)
local mark = Cmt(P(true), function(_, i)
  if i > farthest then farthest = i end
  return true
end)

local ws = S(" \t\r\n") ^ 0
local ident_start = R("az", "AZ") + S("_$")
local ident_char = ident_start + R("09")
local name = C(ident_start * ident_char ^ 0)

local function sym(s) return mark * P(s) * ws end
local function keyword(s) return mark * P(s) * -ident_char * ws end

local function node(k) return function(pos, ...) return { k = k, pos = pos, ... } end end

-- numbers
local digits = R("09") ^ 1
local hex = (P("0x") + P("0X")) * C(R("09", "af", "AF") ^ 1) / function(h) return tonumber(h, 16) + 0.0 end
local decimal = C((digits * (P(".") * R("09") ^ 0) ^ -1 + P(".") * digits) * (S("eE") * S("+-") ^ -1 * digits) ^ -1)
  / function(s) return tonumber(s) + 0.0 end
local number = Cp() * (hex + decimal) * -ident_char / function(pos, v) return { k = "lit", pos = pos, v = v } end

-- strings
local function utf8_of(code) return utf8.char(code) end
local escape = P("\\") * (
  P("n") * Cc("\n") + P("t") * Cc("\t") + P("r") * Cc("\r") + P("b") * Cc("\b") + P("f") * Cc("\f")
  + P("v") * Cc("\v") + P("0") * -R("09") * Cc("\0")
  + P("x") * C(R("09", "af", "AF") * R("09", "af", "AF")) / function(h) return char(tonumber(h, 16)) end
  + P("u{") * C(R("09", "af", "AF") ^ 1) * P("}") / function(h) return utf8_of(tonumber(h, 16)) end
  + P("u") * C(R("09", "af", "AF") * R("09", "af", "AF") * R("09", "af", "AF") * R("09", "af", "AF"))
    / function(h) return utf8_of(tonumber(h, 16)) end
  + P("\r\n") * Cc("") + S("\n\r") * Cc("")
  + C(1 - R("09") - S("xu")))
local function quoted(q)
  return P(q) * Cf(Cc("") * (escape + C((1 - S(q .. "\\\n\r")) ^ 1)) ^ 0, function(a, b) return a .. b end) * P(q)
end
local str = Cp() * (quoted("'") + quoted('"')) / function(pos, v) return { k = "lit", pos = pos, v = v } end

-- regular expressions
local class = P("[") * (P("\\") * 1 + (1 - S("]\n"))) ^ 0 * P("]")
local regex_body = C((P("\\") * (1 - P("\n")) + class + (1 - S("/\n[\\"))) ^ 1)
local regex = Cp() * P("/") * -S("*/") * regex_body * P("/") * C(R("az") ^ 0) * -ident_char / node("regex")

local grammar = P({
  "Rule",
  Rule = ws * V("Expr") * mark * Cp(),
  Expr = V("Cond"),
  Cond = Cf(V("Or") * Cg(mark * Cp() * P("?") * -S("?.") * ws * V("Expr") * sym(":") * V("Expr")) ^ -1, function(c, pos, t, f)
    return { k = "cond", pos = pos, c, t, f }
  end),
  Or = Cf(V("And") * Cg(Cp() * C(P("||")) * ws * V("And")) ^ 0, function(l, pos, op, r)
    return { k = "or", pos = pos, l, r }
  end),
  And = Cf(V("Eq") * Cg(Cp() * C(P("&&")) * ws * V("Eq")) ^ 0, function(l, pos, op, r)
    return { k = "and", pos = pos, l, r }
  end),
  Eq = Cf(V("Rel") * Cg(mark * Cp() * C(P("===") + P("!==") + P("==") + P("!=")) * ws * V("Rel")) ^ 0,
    function(l, pos, op, r) return { k = "bin", pos = pos, op = op, l, r } end),
  Rel = Cf(V("Add") * Cg(mark * Cp() * C(P("<=") + P(">=") + P("<") * -P("<") + P(">") * -P(">")) * ws * V("Add")) ^ 0,
    function(l, pos, op, r) return { k = "bin", pos = pos, op = op, l, r } end),
  Add = Cf(V("Mul") * Cg(mark * Cp() * C(S("+-")) * -S("+-=") * ws * V("Mul")) ^ 0,
    function(l, pos, op, r) return { k = "bin", pos = pos, op = op, l, r } end),
  Mul = Cf(V("Unary") * Cg(mark * Cp() * C(S("*/%")) * -S("*=") * ws * V("Unary")) ^ 0,
    function(l, pos, op, r) return { k = "bin", pos = pos, op = op, l, r } end),
  Unary = mark * Cp() * (C(P("!")) * ws + C(S("-+")) * -S("+-") * ws + C(P("typeof")) * -ident_char * ws) * V("Unary")
      / function(pos, op, e) return { k = "unary", pos = pos, op = op, e } end
    + V("Postfix"),
  Postfix = Cf(V("Primary") * Cg(V("Suffix")) ^ 0, function(obj, suffix)
    if suffix.k == "args" then return { k = "call", pos = suffix.pos, callee = obj, args = suffix } end
    return { k = "member", pos = suffix.pos, obj, suffix.key, dot = suffix.dot }
  end),
  Suffix = mark * Cp() * P(".") * ws * mark * Cp() * name * ws
      / function(pos, npos, n) return { k = "dot", pos = pos, key = { k = "lit", pos = npos, v = n }, dot = n } end
    + mark * Cp() * P("[") * ws * V("Expr") * sym("]") / function(pos, e) return { k = "index", pos = pos, key = e } end
    + mark * Cp() * P("(") * ws * Ct((V("Expr") * (sym(",") * V("Expr")) ^ 0) ^ -1) * sym(")")
      / function(pos, args) args.k, args.pos = "args", pos; return args end,
  Prop = Ct(mark * (name + quoted("'") + quoted('"')) * ws * sym(":") * V("Expr")),
  Primary = mark * (number + str + regex) * ws
    + mark * Cp() * P("[") * ws * Ct((V("Expr") * (sym(",") * V("Expr")) ^ 0 * sym(",") ^ -1) ^ -1) * sym("]")
      / function(pos, items) return { k = "array", pos = pos, items = items } end
    + mark * Cp() * P("{") * ws * Ct((V("Prop") * (sym(",") * V("Prop")) ^ 0 * sym(",") ^ -1) ^ -1) * sym("}")
      / function(pos, props) return { k = "object", pos = pos, props = props } end
    + mark * P("(") * ws * V("Expr") * sym(")")
    + mark * Cp() * name * ws / function(pos, n) return { k = "id", pos = pos, name = n } end,
})

-- Compiling ----------------------------------------------------------------

local truthy, get, call_method = js.truthy, js.get, js.call_method
local null = require("moonstream.json").null

local CONSTANTS = { ["true"] = true, ["false"] = false, null = null, NaN = 0 / 0, Infinity = huge }
local ENV_NAMES = { user = true, data = true, oldData = true, now = true, action = true, name = true }
local FORBIDDEN = {
  new = "the new keyword is not supported", ["function"] = "user functions are not supported",
  this = "'this' is not supported",
}

local BINARY = {
  ["==="] = js.strict_eq, ["=="] = js.loose_eq,
  ["!=="] = function(a, b) return not js.strict_eq(a, b) end,
  ["!="] = function(a, b) return not js.loose_eq(a, b) end,
  ["<"] = js.lt, ["<="] = js.le, [">"] = js.gt, [">="] = js.ge,
  ["+"] = js.add, ["-"] = js.sub, ["*"] = js.mul, ["/"] = js.div, ["%"] = js.mod,
}
local UNARY = {
  ["!"] = function(v) return not truthy(v) end, ["-"] = js.neg, ["+"] = js.pos, typeof = js.typeof,
}

local Fail = {}
local function fail(pos, msg) error(setmetatable({ pos = pos, msg = msg }, Fail), 0) end

local compile_node

local function compile_id(n, st)
  local id = n.name
  if CONSTANTS[id] ~= nil then
    local v = CONSTANTS[id]
    return function() return v end
  end
  if id == "undefined" then return function() return nil end end
  if FORBIDDEN[id] then fail(n.pos, FORBIDDEN[id]) end
  if ENV_NAMES[id] then
    if (id == "data" or id == "oldData") and not M.SUPPORTS[st.type][id] then
      fail(n.pos, format("rule %s for %s does not support %s", st.type, st.section, id))
    end
    st.uses[id] = true
    return function(env) return env[id] end
  end
  if id == "_" then return function() return js.Function end end
  if id:sub(1, 1) == "$" then
    for i, v in ipairs(st.variables) do
      if v == id then return function(env) return env.vars[i] end end
    end
    fail(n.pos, format("unknown path variable %s (the path has %s)", id,
      #st.variables > 0 and table.concat(st.variables, ", ") or "none"))
  end
  fail(n.pos, format("unknown identifier '%s'", id))
end

local function compile_call(n, st)
  local callee, argn = n.callee, {}
  local is_xref = callee.k == "id" and callee.name == "_"
  local method = callee.k == "member" and callee[2].k == "lit" and type(callee[2].v) == "string" and callee[2].v
  if not is_xref and not (method and METHOD[method]) then
    local shown = method or (callee.k == "id" and callee.name) or "this expression"
    fail(callee.k == "member" and callee[2].pos or callee.pos, format("function %s is not supported", shown))
  end
  for i, a in ipairs(n.args) do argn[i] = compile_node(a, st) end
  local a1, a2 = argn[1] or function() end, argn[2] or function() end
  local function rest(env) for i = 3, #argn do argn[i](env) end end
  if is_xref then
    return function(env)
      local v = a1(env)
      a2(env); rest(env)
      return env.xref(v)
    end
  end
  local obj = compile_node(callee[1], st)
  return function(env)
    local o = obj(env)
    local x, y = a1(env), a2(env)
    rest(env)
    return call_method(o, method, x, y)
  end
end

function compile_node(n, st)
  local k = n.k
  if k == "lit" then
    local v = n.v
    return function() return v end
  elseif k == "id" then
    return compile_id(n, st)
  elseif k == "regex" then
    local re, err = js.regexp(n[1], n[2])
    if not re then fail(n.pos, "invalid regular expression: " .. err) end
    return function() return re end
  elseif k == "array" then
    local items = {}
    for i, e in ipairs(n.items) do items[i] = compile_node(e, st) end
    return function(env)
      local out = {}
      for i, f in ipairs(items) do
        local v = f(env)
        if v == nil then v = null end
        out[i] = v
      end
      return setmetatable(out, require("moonstream.json").array_mt)
    end
  elseif k == "object" then
    local keys, values = {}, {}
    for i, prop in ipairs(n.props) do keys[i], values[i] = prop[1], compile_node(prop[2], st) end
    return function(env)
      local out = {}
      for i, key in ipairs(keys) do out[key] = values[i](env) end
      return out
    end
  elseif k == "member" then
    local obj, key = compile_node(n[1], st), compile_node(n[2], st)
    return function(env)
      local o = obj(env)
      return get(o, key(env))
    end
  elseif k == "call" then
    return compile_call(n, st)
  elseif k == "unary" then
    local f, e = UNARY[n.op], compile_node(n[1], st)
    return function(env) return f(e(env)) end
  elseif k == "bin" then
    local f, l, r = BINARY[n.op], compile_node(n[1], st), compile_node(n[2], st)
    return function(env)
      local a = l(env)
      return f(a, r(env))
    end
  elseif k == "and" then
    local l, r = compile_node(n[1], st), compile_node(n[2], st)
    return function(env)
      local a = l(env)
      if not truthy(a) then return a end
      return r(env)
    end
  elseif k == "or" then
    local l, r = compile_node(n[1], st), compile_node(n[2], st)
    return function(env)
      local a = l(env)
      if truthy(a) then return a end
      return r(env)
    end
  elseif k == "cond" then
    local c, t, f = compile_node(n[1], st), compile_node(n[2], st), compile_node(n[3], st)
    return function(env)
      if truthy(c(env)) then return t(env) end
      return f(env)
    end
  end
  error("valve: unknown node " .. tostring(k))
end

local function always(v) return function() return v end end

-- Returns { fn, data, oldData } | nil, message, column (1-based).
function M.compile(source, section, rule_type, variables)
  if source == true or source == false then
    return { fn = always(source), data = false, oldData = false, constant = source }
  end
  if type(source) ~= "string" then
    return nil, "a rule must be true, false or an expression string", nil
  end
  if source:match("^%s*$") then return nil, "rule can't be empty", 1 end
  farthest = 1
  local ast, stop = grammar:match(source)
  if not ast or stop <= #source then
    local at = math.max(ast and stop or 1, farthest)
    local new_at = source:sub(1, at - 1):match("()%f[%w_$]new%s*$")
    if new_at then return nil, "the new keyword is not supported", new_at end
    local fn_at = source:find("%f[%w_$]function%f[^%w_$]") or source:find("=>", 1, true)
    if fn_at then return nil, "user functions are not supported", fn_at end
    if at > #source then return nil, "unexpected end of the expression", at end
    local token = source:match("^[%w_$]+", at) or source:sub(at, at)
    return nil, format("unexpected '%s'", token), at
  end
  local st = { section = section, type = rule_type, variables = variables or {}, uses = {} }
  local ok, fn = pcall(compile_node, ast, st)
  if not ok then
    if type(fn) == "table" and getmetatable(fn) == Fail then return nil, fn.msg, fn.pos end
    error(fn, 0)
  end
  return { fn = fn, data = st.uses.data == true, oldData = st.uses.oldData == true }
end

return M
