-- Server-side event listeners written in Lua. A listener that raises is
-- logged and does not break the emit or the other listeners.
local log = require "moonstream.log"

local M = {}
local LuaListeners = {}
local mt = { __index = LuaListeners }

-- api: functions every listener context can use (ctx.records, ctx.log...);
-- on_change: function() called whenever a listener is added or removed
function M.new(api, on_change)
  return setmetatable({ listeners = {}, api_mt = { __index = api or {} }, on_change = on_change }, mt)
end

-- Adds fn(data, ctx) for the event `name`; returns a function that removes it.
function LuaListeners:on(name, fn)
  if type(name) ~= "string" or name == "" then error("event name must be a non-empty string", 2) end
  if type(fn) ~= "function" then error("listener must be a function", 2) end
  local list = self.listeners[name]
  if not list then list = {}; self.listeners[name] = list end
  list[#list + 1] = fn
  if self.on_change then self.on_change() end
  return function()
    for i = #list, 1, -1 do
      if list[i] == fn then table.remove(list, i) end
    end
    if #list == 0 and self.listeners[name] == list then self.listeners[name] = nil end
    if self.on_change then self.on_change() end
  end
end

-- True when some listener exists (the HTTP fast path calls Lua for emits
-- only then; on_change, given to new, hears of every change).
function LuaListeners:any()
  return next(self.listeners) ~= nil
end

local function traceback(err)
  return debug.traceback(tostring(err), 2)
end

-- Delivers an event to its listeners, in the order they were added.
-- from: { user = { id, data } } of the emitter.
function LuaListeners:emit(name, data, from)
  local list = self.listeners[name]
  if not list then return end
  local ctx = setmetatable({ user = from and from.user, name = name }, self.api_mt)
  for i = 1, #list do
    local ok, err = xpcall(list[i], traceback, data, ctx)
    if not ok then log.error("event listener for '%s' failed: %s", name, err) end
  end
end

return M
