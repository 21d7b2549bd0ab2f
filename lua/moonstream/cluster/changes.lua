-- Record changes in version order, once, for the records this node's
-- clients subscribe to. A change arrives twice when this node made it (from
-- its engine at once, then from Redis), once when another node made it, and
-- Redis' message and the engine's answer travel on different connections:
-- so per watched record the last delivered version is kept, a version at
-- or below it is a duplicate, the next one is delivered, and one that
-- skips ahead waits (GAP_MS at most) for those before it. A deletion
-- (version nil) is delivered once and lets the next version start anew.
-- A notify tells a record's stored state again: delivered even when that
-- version was, dropped when a newer one was (its subscribers know better).
local M = {}
local Changes = {}
local mt = { __index = Changes }

M.GAP_MS = 500 -- a change lost on the way (Redis reconnected) is not waited for longer
local DELETED = -1

-- deliver(name, version|nil, text|nil, origin|nil): the realtime record topic
function M.new(loop, deliver)
  return setmetatable({ loop = loop, deliver = deliver, state = {} }, mt)
end

function Changes:watch(name)
  self.state[name] = self.state[name] or { waiting = {} }
end

function Changes:forget(name)
  local st = self.state[name]
  if st and st.timer then st.timer:cancel() end
  self.state[name] = nil
end

function Changes:_flush(name, st, skip_gaps)
  while true do
    local v = st.last + 1
    local w = st.waiting[v]
    if not w and skip_gaps then
      for k in pairs(st.waiting) do if not w or k < v then v = k end end
      w = st.waiting[v]
    end
    if not w then break end
    st.waiting[v] = nil
    st.last = v
    self.deliver(name, v, w.text, w.origin)
  end
  if st.timer and next(st.waiting) == nil then st.timer:cancel(); st.timer = nil end
end

function Changes:change(name, version, text, origin)
  local st = self.state[name]
  if not st then return self.deliver(name, version, text, origin) end -- nobody here watches it
  if version == nil then
    if st.last == DELETED then return end
    st.last, st.waiting = DELETED, {}
    if st.timer then st.timer:cancel(); st.timer = nil end
    return self.deliver(name, nil, nil, origin)
  end
  if st.last == nil or st.last == DELETED or version == st.last + 1 then
    st.last = version
    self.deliver(name, version, text, origin)
    return self:_flush(name, st, false)
  end
  if version <= st.last or st.waiting[version] then return end -- seen already
  st.waiting[version] = { text = text, origin = origin }
  if not st.timer then
    st.timer = self.loop:timer(M.GAP_MS, function()
      st.timer = nil
      if self.state[name] == st then self:_flush(name, st, true) end
    end)
  end
end

-- A notify's reading of name (version nil: no longer stored).
function Changes:notify(name, version, text)
  local st = self.state[name]
  if not st or (version ~= nil and version == st.last) then return self.deliver(name, version, text, nil) end
  if version ~= nil and st.last ~= nil and version < st.last then return end -- newer state was told
  return self:change(name, version, text, nil)
end

-- A record's stored state, read after this node's subscriber came back
-- (changes published meanwhile were lost): delivered when newer than what
-- was, versions waited for up to it dropped.
function Changes:catch_up(name, version, text)
  local st = self.state[name]
  if not st or (st.last ~= nil and st.last ~= DELETED and version <= st.last) then return end
  for v in pairs(st.waiting) do
    if v <= version then st.waiting[v] = nil end
  end
  st.last = version
  self.deliver(name, version, text, nil)
  return self:_flush(name, st, false)
end

function Changes:close()
  for name in pairs(self.state) do self:forget(name) end
end

return M
