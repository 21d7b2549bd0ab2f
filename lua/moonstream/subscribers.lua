-- A list of subscribers to one kind of news (record changes, remote events,
-- remote presence): the one way a part tells the parts built after it what
-- happened, without knowing them.
--
--   local changed = subscribers.new()
--   local unsubscribe = changed:subscribe(function(name, version) ... end)
--   changed:publish("a", 2)   -- every subscriber, in the order they came
--   unsubscribe()
local M = {}
local Subscribers = {}
local mt = { __index = Subscribers }

function M.new()
  return setmetatable({ list = {} }, mt)
end

-- fn(...) hears every publish from now on. Returns the function that ends it.
-- The list is replaced, never changed in place, so that a subscriber may
-- unsubscribe (or subscribe another) while a publish runs.
function Subscribers:subscribe(fn)
  local list = table.move(self.list, 1, #self.list, 1, {})
  list[#list + 1] = fn
  self.list = list
  local done = false
  return function()
    if done then return end
    done = true
    local now, removed = {}, false
    for _, f in ipairs(self.list) do -- one subscription: fn may have subscribed twice
      if f == fn and not removed then removed = true else now[#now + 1] = f end
    end
    self.list = now
  end
end

function Subscribers:publish(...)
  local list = self.list
  for i = 1, #list do list[i](...) end
end

function Subscribers:any()
  return self.list[1] ~= nil
end

return M
