-- lua: a function decides, from a file or written inline in the config.
--
--   { type = "lua", options = { path = "auth.lua" } }     -- the file returns the function
--   { type = "lua", options = { fn = function(authData, connectionData, ctx) ... end } }
--
-- function(authData, connectionData, ctx) returns ok, id, clientData, serverData:
--   ok == true   accepted, id (a non-empty string) is the user id;
--   ok == false  refused;
--   ok == nil    not recognised: the next strategy decides.
-- It runs like an RPC handler (rpc_handlers.lua): in a coroutine, so ctx.await and
-- ctx.sleep wait without blocking the server, ctx.records reads records, and
-- it is refused when it takes longer than rpc.responseTimeout. A function
-- that raises refuses; the error goes to the log with its file and line.
local log = require "moonstream.log"
local scripts = require "moonstream.scripts"

local type = type

local M = {}
local LuaAuth = {}
local mt = { __index = LuaAuth }

-- The options, checked by the config's schema engine: a file or a function.
M.OPTIONS = { name = "the 'lua' strategy", fields = { { key = "path" }, { key = "fn" } },
  combined = function(options)
    if options.fn == nil then
      if type(options.path) ~= "string" or options.path == "" then
        return "must name a Lua file that returns the auth function (or give options.fn)", { "path" }
      end
    elseif type(options.fn) ~= "function" then
      return "must be a function", { "fn" }
    end
  end }

-- options: checked by the config (OPTIONS); env: auth.lua's.
function M.new(options, env)
  local fn = options.fn
  if fn == nil then
    local err
    fn, err = scripts.load_function(env.resolve(options.path), "auth function")
    if not fn then return nil, env.key("path") .. ": " .. err end
  end
  return setmetatable({ fn = fn, rpc = env.rpc }, mt)
end

-- The coroutine's outcome as { user = ... } | { refused = reason } | {}.
local function convert(call, resumed, ok, id, client_data, server_data)
  if not resumed then
    log.warn("auth function raised: %s", debug.traceback(call.co, tostring(ok)))
    return { refused = "the auth function failed" }
  end
  if ok == nil then return {} end
  if not ok then return { refused = "refused by the auth function" } end
  if type(id) ~= "string" or id == "" then
    log.warn("auth function accepted a user without an id (its second result must be a non-empty string)")
    return { refused = "no user id" }
  end
  return { user = { id = id, clientData = client_data, data = server_data } }
end

local function on_timeout()
  log.warn("auth function exceeded rpc.responseTimeout")
  return { refused = "the auth function timed out" }
end

function LuaAuth:authenticate(auth_data, connection_data, done)
  local fn = self.fn
  local function deliver(r)
    if r.user then return done(r.user) end
    if r.refused then return done(false, r.refused) end
    done(nil)
  end
  local r = self.rpc:run("auth", function(_, ctx) return fn(auth_data, connection_data, ctx) end,
    nil, {}, convert, on_timeout, deliver)
  if r then deliver(r) end
end

return M
