-- Who is subscribed to what: name -> set of connections, and per connection
-- the names it holds, so a closing connection is removed from everything in
-- time proportional to what it held. One registry per kind of subscription
-- (event subscriptions, record subscriptions, RPC providers, ...).
local next = next

local M = {}
local Registry = {}
local mt = { __index = Registry }

-- on_used (optional): called with true when the first name gets a
-- subscriber and with false when the last one goes (the HTTP fast path
-- asks Lua about emits only while someone is subscribed). on_name
-- (optional): called with (name, true) when a name gets its first
-- subscriber and (name, false) when it loses its last (the cluster
-- subscribes to the names its clients use).
function M.new(on_used, on_name)
  return setmetatable({ by_name = {}, by_conn = {}, on_used = on_used, on_name = on_name }, mt)
end

local function used(self, was_empty)
  local on_used = self.on_used
  if on_used and was_empty ~= (next(self.by_name) == nil) then on_used(was_empty) end
end

-- Adds conn to name. Returns false when it was already there, else true and
-- whether it is the first subscriber of name.
function Registry:add(name, conn)
  local set = self.by_name[name]
  local first = set == nil
  if first then
    local was_empty = next(self.by_name) == nil
    set = {}
    self.by_name[name] = set
    if was_empty then used(self, true) end
    if self.on_name then self.on_name(name, true) end
  elseif set[conn] then
    return false
  end
  set[conn] = true
  local names = self.by_conn[conn]
  if not names then
    names = {}
    self.by_conn[conn] = names
  end
  names[name] = true
  return true, first
end

function Registry:_gone(name)
  if self.on_name then self.on_name(name, false) end
end

-- Removes conn from name. Returns false when it was not there, else true and
-- whether name has no subscriber left.
function Registry:remove(name, conn)
  local set = self.by_name[name]
  if not set or not set[conn] then return false end
  set[conn] = nil
  local last = next(set) == nil
  if last then self.by_name[name] = nil; used(self, false); self:_gone(name) end
  local names = self.by_conn[conn]
  names[name] = nil
  if next(names) == nil then self.by_conn[conn] = nil end
  return true, last
end

-- Removes every subscription of conn; calls on_removed(name, last) for each.
function Registry:remove_conn(conn, on_removed)
  local names = self.by_conn[conn]
  if not names then return end
  self.by_conn[conn] = nil
  for name in next, names do
    local set = self.by_name[name]
    set[conn] = nil
    local last = next(set) == nil
    if last then self.by_name[name] = nil; used(self, false); self:_gone(name) end
    if on_removed then on_removed(name, last) end
  end
end

-- Removes every subscriber of name; returns the set that was there (or nil).
function Registry:remove_name(name)
  local set = self.by_name[name]
  if not set then return nil end
  self.by_name[name] = nil
  used(self, false)
  self:_gone(name)
  for conn in next, set do
    local names = self.by_conn[conn]
    names[name] = nil
    if next(names) == nil then self.by_conn[conn] = nil end
  end
  return set
end

-- The set of connections subscribed to name (do not modify), or nil.
function Registry:subscribers(name)
  return self.by_name[name]
end

function Registry:has(name, conn)
  local set = self.by_name[name]
  return set ~= nil and set[conn] == true
end

-- The names conn holds (do not modify), or nil.
function Registry:names_of(conn)
  return self.by_conn[conn]
end

return M
