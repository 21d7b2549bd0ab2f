-- Listening: a provider registers a pattern and is told when a
-- name matching it gets its first subscriber (SUBSCRIPTION_FOR_PATTERN_FOUND);
-- it accepts (it now provides that name until the last subscriber leaves:
-- SUBSCRIPTION_FOR_PATTERN_REMOVED) or rejects. The matching providers are
-- asked one at a time, as deepstream's listener registry does (the `listen`
-- config section, deepstream's keys and meaning):
--   shuffleProviders  true: in random order; false: in the order they
--                     registered (patterns by first registration, then the
--                     connections of each pattern by theirs)
--   responseTimeout   ms a provider has to accept or reject; then it gets
--                     LISTEN_RESPONSE_TIMEOUT and the next one is asked
--   rematchInterval   ms between sweeps that ask again about every subscribed
--                     name nobody provides (1000 or less: no sweeps, as in
--                     deepstream)
--   matchCooldown     ms after a search that found nobody during which a
--                     sweep leaves that name alone
-- Record subscribers learn whether a name has a provider
-- (SUBSCRIPTION_HAS_PROVIDER / SUBSCRIPTION_HAS_NO_PROVIDER); event
-- subscribers are not told, as in deepstream.
--
-- In a cluster (attach_cluster: cluster/listen.lua) a name counts as
-- subscribed while a client on any node subscribes to it (`remote`: the
-- other nodes that do), and a node asks its listeners about a name only
-- while it holds the name's claim in Redis, so one provider is chosen
-- cluster-wide; a search that finds nobody here hands the name on to the
-- listening nodes not tried yet.
--
-- Patterns are JavaScript regular expressions in deepstream. moonstream takes
-- the subset that maps onto Lua patterns: literals, ".", classes "[...]",
-- "\d \w \s" (and upper-case), "* + ?" after one atom (at most two "*" or
-- "+"), lazy "*?", anchors "^" and "$". Groups, alternation and counted
-- repetition are refused with INVALID_LISTEN_REGEX rather than matched
-- differently from deepstream.
local core = require "moonstream.core"
local registry = require "moonstream.realtime.registry"

local M = {}
local Listen = {}
local mt = { __index = Listen }

-- Lua's matcher backtracks: a pattern with k unbounded repeats costs up to
-- n^k steps on a name of n bytes. Two repeats and names of at most
-- MAX_NAME bytes bound one match to about a million steps; longer names are
-- never offered to listeners.
local MAX_PATTERN = 256
local MAX_REPEATS = 2
local MAX_NAME = 1024

local ESCAPES = { d = "%d", D = "%D", w = "[%w_]", W = "[^%w_]", s = "%s", S = "%S" }
local CLASS_ESCAPES = { d = "%d", D = "%D", w = "%w_", s = "%s", S = "%S" }

-- JavaScript regex -> Lua pattern, or nil, reason.
local function translate(re)
  if type(re) ~= "string" or re == "" then return nil, "empty pattern" end
  if #re > MAX_PATTERN then return nil, "pattern too long" end
  local out, i, n, repeats = {}, 1, #re, 0
  local prev_atom = false
  while i <= n do
    local ch = re:sub(i, i)
    if ch == "\\" then
      local e = re:sub(i + 1, i + 1)
      if e == "" then return nil, "trailing backslash" end
      if ESCAPES[e] then out[#out + 1] = ESCAPES[e]
      elseif e:match("%w") then return nil, "unsupported escape \\" .. e
      else out[#out + 1] = "%" .. e end
      i, prev_atom = i + 2, true
    elseif ch == "[" then
      local j, parts = i + 1, { "[" }
      if re:sub(j, j) == "^" then parts[#parts + 1] = "^"; j = j + 1 end
      local closed = false
      while j <= n do
        local c2 = re:sub(j, j)
        if c2 == "]" and j > i + 1 + (parts[2] == "^" and 1 or 0) then closed = true; break end
        if c2 == "\\" then
          local e = re:sub(j + 1, j + 1)
          if CLASS_ESCAPES[e] then parts[#parts + 1] = CLASS_ESCAPES[e]
          elseif e:match("%w") or e == "" then return nil, "unsupported escape in class"
          else parts[#parts + 1] = "%" .. e end
          j = j + 2
        elseif c2 == "%" or c2 == "[" then
          parts[#parts + 1] = "%" .. c2
          j = j + 1
        else
          parts[#parts + 1] = c2
          j = j + 1
        end
      end
      if not closed then return nil, "unterminated class" end
      parts[#parts + 1] = "]"
      out[#out + 1] = table.concat(parts)
      i, prev_atom = j + 1, true
    elseif ch == "*" or ch == "+" or ch == "?" then
      if not prev_atom then return nil, "nothing to repeat" end
      local lazy = re:sub(i + 1, i + 1) == "?"
      if ch == "*" then out[#out + 1] = lazy and "-" or "*"
      elseif ch == "+" then
        if lazy then return nil, "lazy + is not supported" end
        out[#out + 1] = "+"
      else
        if lazy then return nil, "lazy ? is not supported" end
        out[#out + 1] = "?"
      end
      if ch ~= "?" then repeats = repeats + 1 end
      if repeats > MAX_REPEATS then return nil, "too many repetitions" end
      i, prev_atom = i + (lazy and 2 or 1), false
    elseif ch == "^" then
      if i ~= 1 then return nil, "^ only at the start" end
      out[#out + 1] = "^"
      i, prev_atom = i + 1, false
    elseif ch == "$" then
      if i ~= n then return nil, "$ only at the end" end
      out[#out + 1] = "$"
      i, prev_atom = i + 1, false
    elseif ch == "(" or ch == ")" or ch == "|" or ch == "{" or ch == "}" then
      return nil, "groups, alternation and counted repetition are not supported"
    elseif ch == "." then
      out[#out + 1] = "."
      i, prev_atom = i + 1, true
    elseif ch:match("[%%%-%]]") then
      out[#out + 1] = "%" .. ch
      i, prev_atom = i + 1, true
    else
      out[#out + 1] = ch
      i, prev_atom = i + 1, true
    end
  end
  return table.concat(out)
end
M.translate = translate

-- rt: the realtime server (rt.loop, rt.listen = the `listen` config
-- section); topic: the topic code; actions: its action table; subs: the
-- registry of subscriptions whose names are matched; kind: the permission
-- topic ("event" or "record").
function M.new(rt, topic, actions, subs, kind)
  return setmetatable({
    rt = rt, topic = topic, A = actions, subs = subs, kind = kind,
    cfg = rt.listen,
    tells_subscribers = actions.SUBSCRIPTION_HAS_PROVIDER ~= nil and kind == "record",
    providers = registry.new(), -- pattern -> connections listening
    compiled = {},              -- pattern -> Lua pattern
    order = {},                 -- pattern -> registration number of the pattern
    conn_order = {},            -- pattern -> { conn -> registration number }
    seq = 0,
    active = {},                -- name -> { c, pattern } (accepted)
    offers = {},                -- name -> { list, i, current, timer } (asking in turn)
    failed = {},                -- name -> when its last search found nobody (ms)
    rematch_timer = nil,
    remote = {},                -- cluster: name -> { node = true } other nodes subscribing
    remote_active = {},         -- cluster: name -> the node whose listener provides it
    claimed = {},               -- cluster: name -> true while this node holds its claim
    claiming = {},              -- cluster: name -> true while the claim is asked for
    handed = {},                -- cluster: name -> nodes that searched already (this search round)
  }, mt)
end

-- cluster: cluster/listen.lua's face for this topic.
function Listen:attach_cluster(cluster)
  self.cluster = cluster
end

-- Whether a client on any node subscribes to name.
function Listen:_has_subscribers(name)
  return self.subs:subscribers(name) ~= nil or self.remote[name] ~= nil
end

-- Every name subscribed on any node (a copy: offering may change the sets).
function Listen:_subscribed_names()
  local names = {}
  for name in pairs(self.subs.by_name) do names[#names + 1] = name end
  for name in pairs(self.remote) do
    if not self.subs.by_name[name] then names[#names + 1] = name end
  end
  return names
end

local function matches(lua_pattern, name)
  return #name <= MAX_NAME and name:find(lua_pattern) ~= nil
end

function Listen:_send(c, action, pattern, name)
  c:send({ topic = self.topic, action = action, name = pattern, subscription = name })
end

-- Record subscribers of name (or only `c`) hear whether it has a provider.
function Listen:_tell_subscribers(name, has, c)
  if not self.tells_subscribers then return end
  local msg = { topic = self.topic, name = name,
    action = has and self.A.SUBSCRIPTION_HAS_PROVIDER or self.A.SUBSCRIPTION_HAS_NO_PROVIDER }
  if c then c:send(msg) else self.rt:broadcast(self.subs:subscribers(name), msg) end
end

-- The search for name ended without a provider (cluster: the claim goes
-- and the listening nodes not tried yet are asked).
function Listen:_give_up(name)
  self.offers[name] = nil
  self.failed[name] = core.now()
  if self.claimed[name] then
    self.claimed[name] = nil
    local tried = self.handed[name] or {}
    self.handed[name] = nil
    self.cluster:hand_on(name, tried)
  end
end

function Listen:_next_offer(name)
  local o = self.offers[name]
  if not o then return end
  if o.timer then o.timer:cancel(); o.timer = nil end
  o.current = nil
  while true do
    o.i = o.i + 1
    local cand = o.list[o.i]
    if not cand then return self:_give_up(name) end
    if cand.c.open and self.providers:has(cand.pattern, cand.c) then
      o.current = cand
      o.timer = self.rt.loop:timer(self.cfg.responseTimeout, function()
        o.timer = nil
        if cand.c.open then
          cand.c:send({ topic = self.topic, action = self.A.LISTEN_RESPONSE_TIMEOUT, subscription = name })
        end
        self:_next_offer(name)
      end)
      self:_send(cand.c, self.A.SUBSCRIPTION_FOR_PATTERN_FOUND, cand.pattern, name)
      return
    end
  end
end

local function shuffle(list)
  for i = #list, 2, -1 do
    local j = math.random(i)
    list[i], list[j] = list[j], list[i]
  end
end

-- The providers whose pattern matches name: in registration order, or
-- shuffled (listen.shuffleProviders).
function Listen:_candidates(name)
  local list = {}
  for pattern, conns in pairs(self.providers.by_name) do
    if matches(self.compiled[pattern], name) then
      local p_order, c_order = self.order[pattern], self.conn_order[pattern]
      for c in pairs(conns) do list[#list + 1] = { c = c, pattern = pattern, p = p_order, n = c_order[c] } end
    end
  end
  if self.cfg.shuffleProviders then
    shuffle(list)
  else
    table.sort(list, function(a, b) if a.p ~= b.p then return a.p < b.p end return a.n < b.n end)
  end
  return list
end

-- Asks the matching providers in turn whether one provides `name` (in a
-- cluster, once this node holds the name's claim).
function Listen:_offer(name)
  if self.active[name] or self.offers[name] then return end
  local list = self:_candidates(name)
  if #list == 0 then
    if self.claimed[name] then self:_give_up(name) end
    return
  end
  local cluster = self.cluster
  if cluster and not self.claimed[name] then
    if self.claiming[name] or self.remote_active[name] then return end
    self.claiming[name] = true
    return cluster:claim(name, function(won)
      self.claiming[name] = nil
      if not won then return end
      self.claimed[name] = true
      if self:_has_subscribers(name) then return self:_offer(name) end
      self:_ended(name)
    end)
  end
  self.failed[name] = nil
  self.offers[name] = { list = list, i = 0 }
  self:_next_offer(name)
end

function Listen:_cancel_offer(name)
  local o = self.offers[name]
  if not o then return end
  if o.timer then o.timer:cancel() end
  self.offers[name] = nil
end

-- Every rematchInterval: ask again about the subscribed names nobody
-- provides, except those whose last search failed within matchCooldown.
-- Armed only while someone listens.
function Listen:_arm_rematch()
  local interval = self.cfg.rematchInterval
  if self.rematch_timer or interval <= 1000 or next(self.providers.by_name) == nil then return end
  self.rematch_timer = self.rt.loop:timer(interval, function()
    self.rematch_timer = nil
    self:rematch()
    self:_arm_rematch()
  end)
end

function Listen:rematch()
  local now, cooldown = core.now(), self.cfg.matchCooldown
  local names = {}
  for _, name in ipairs(self:_subscribed_names()) do
    local failed = self.failed[name]
    if not (self.active[name] or self.offers[name]) and not (failed and now - failed < cooldown) then
      names[#names + 1] = name
    end
  end
  for _, name in ipairs(names) do
    if self:_has_subscribers(name) then self:_offer(name) end
  end
end

function Listen:close()
  if self.rematch_timer then self.rematch_timer:cancel(); self.rematch_timer = nil end
  for name in pairs(self.offers) do self:_cancel_offer(name) end
end

-- c subscribed to name (first: whether it is the first subscriber here).
function Listen:subscribed(name, c, first)
  if first and self.cluster then self.cluster:subscribed(name, true) end
  if self.active[name] or self.remote_active[name] then -- (first here, but provided for another node's)
    if c then self:_tell_subscribers(name, true, c) end
  elseif first then
    if next(self.providers.by_name) ~= nil then self:_offer(name) end
  end
end

-- The last subscriber of name here left.
function Listen:unsubscribed(name)
  if self.cluster then
    self.cluster:subscribed(name, false)
    if self.remote[name] then return end -- still subscribed on another node
  end
  self:_ended(name)
end

-- Nobody subscribes to name any more: its search stops, its provider hears so.
function Listen:_ended(name)
  self:_cancel_offer(name)
  self.failed[name] = nil
  local a = self.active[name]
  if a then
    self.active[name] = nil
    if a.c.open then self:_send(a.c, self.A.SUBSCRIPTION_FOR_PATTERN_REMOVED, a.pattern, name) end
  end
  if self.claimed[name] then
    self.claimed[name] = nil
    self.cluster:release(name)
  end
  self.handed[name] = nil
end

function Listen:listen(c, msg)
  local rt, A, pattern = self.rt, self.A, msg.name
  if type(pattern) ~= "string" then return end
  local ok, denial = rt:permit(c, self.kind, "listen", pattern, nil)
  if not ok then
    return c:send({ topic = self.topic, action = denial, originalAction = msg.action, name = pattern, isError = true })
  end
  local lua_pattern = self.compiled[pattern] or translate(pattern)
  if not lua_pattern then
    return c:send({ topic = self.topic, action = A.INVALID_LISTEN_REGEX, originalAction = msg.action, name = pattern, isError = true })
  end
  local was_listening = next(self.providers.by_name) ~= nil
  local added, first = self.providers:add(pattern, c)
  if added and not was_listening and self.cluster then self.cluster:listening(true) end
  if added then
    self.seq = self.seq + 1
    if first then
      self.compiled[pattern] = lua_pattern
      self.order[pattern] = self.seq
      self.conn_order[pattern] = {}
    end
    self.conn_order[pattern][c] = self.seq
  end
  c:send({ topic = self.topic, action = msg.action, name = pattern, isAck = true })
  if not added then return end
  -- names already subscribed: a search in progress asks this provider last,
  -- any other name not provided yet is searched for now
  for _, name in ipairs(self:_subscribed_names()) do
    if matches(lua_pattern, name) and not self.active[name] then
      local o = self.offers[name]
      if o then o.list[#o.list + 1] = { c = c, pattern = pattern } else self:_offer(name) end
    end
  end
  self:_arm_rematch()
end

-- Drops c's pattern: the names it provided through it are offered again.
function Listen:_drop(c, pattern)
  local removed, last = self.providers:remove(pattern, c)
  if not removed then return false end
  if last then
    self.compiled[pattern], self.order[pattern], self.conn_order[pattern] = nil, nil, nil
  else
    self.conn_order[pattern][c] = nil
  end
  for name, a in pairs(self.active) do
    if a.c == c and a.pattern == pattern then
      self.active[name] = nil
      if self:_has_subscribers(name) then
        self:_tell_subscribers(name, false)
        if self.cluster then self.cluster:tell(name, false) end
        self:_offer(name)
      end
    end
  end
  for name, o in pairs(self.offers) do
    if o.current and o.current.c == c and o.current.pattern == pattern then self:_next_offer(name) end
  end
  if next(self.providers.by_name) == nil then
    if self.rematch_timer then self.rematch_timer:cancel(); self.rematch_timer = nil end
    if self.cluster then -- no longer told about other nodes' subscriptions: forget them
      self.remote = {}
      self.cluster:listening(false)
    end
  end
  return true
end

function Listen:unlisten(c, msg)
  if type(msg.name) ~= "string" then return end
  self:_drop(c, msg.name)
  c:send({ topic = self.topic, action = msg.action, name = msg.name, isAck = true })
end

-- An accept counts while the search for that name is on and c listens with
-- a pattern matching it (deepstream takes a late accept from a provider that
-- timed out too); otherwise it is ignored, as deepstream does, except that a
-- provider accepting a name nobody is subscribed to any more is told so at
-- once (SUBSCRIPTION_FOR_PATTERN_REMOVED) rather than left believing it
-- provides it.
function Listen:accept(c, msg)
  local name, pattern = msg.subscription, msg.name
  if type(name) ~= "string" or type(pattern) ~= "string" then return end
  if not self.providers:has(pattern, c) or not matches(self.compiled[pattern], name) then return end
  if not self:_has_subscribers(name) then
    return self:_send(c, self.A.SUBSCRIPTION_FOR_PATTERN_REMOVED, pattern, name)
  end
  if not self.offers[name] then return end
  self:_cancel_offer(name)
  self.active[name] = { c = c, pattern = pattern }
  self.handed[name] = nil
  self:_tell_subscribers(name, true)
  if self.cluster then self.cluster:tell(name, true) end
end

function Listen:reject(c, msg)
  local name = msg.subscription
  local o = type(name) == "string" and self.offers[name]
  if o and o.current and o.current.c == c and o.current.pattern == msg.name then self:_next_offer(name) end
end

-- ---- from the other nodes (cluster/listen.lua) ----

-- node started (present) or stopped subscribing to name.
function Listen:remote_subscribed(name, node, present)
  local set = self.remote[name]
  if present then
    if not set then set = {}; self.remote[name] = set end
    set[node] = true
    if self.active[name] then return self.cluster:tell(name, true, node) end
    return self:search(name)
  end
  if not set then return end
  set[node] = nil
  if next(set) ~= nil then return end
  self.remote[name] = nil
  if not self.subs:subscribers(name) then self:_ended(name) end
end

-- node's listener provides name (has) or stopped providing it.
function Listen:remote_provided(name, has, node)
  self.remote_active[name] = has and node or nil
  if self.subs:subscribers(name) then self:_tell_subscribers(name, has) end
end

-- A search elsewhere found nobody; tried: the nodes that searched in this round.
function Listen:handed_on(name, tried)
  if not self:_has_subscribers(name) then return end
  self.remote_active[name] = nil
  self.handed[name] = tried
  self.failed[name] = nil
  self:_offer(name)
end

-- Searches for a provider of name if anyone subscribes and nobody provides it.
function Listen:search(name)
  if next(self.providers.by_name) ~= nil and self:_has_subscribers(name) then self:_offer(name) end
end

-- A node stopped or died: its subscriptions go, a name it provided is searched for again.
function Listen:node_gone(node)
  for _, name in ipairs(self:_subscribed_names()) do
    if self.remote_active[name] == node then self:remote_provided(name, false, node) end
    local set = self.remote[name]
    if set and set[node] then self:remote_subscribed(name, node, false) end
  end
end

-- Another node holds name's claim now (taken while Redis lost this one's):
-- the search or provider here stops, without releasing that node's claim.
function Listen:claim_lost(name)
  self.claimed[name] = nil
  self:_cancel_offer(name)
  local a = self.active[name]
  if a then
    self.active[name] = nil
    if a.c.open then self:_send(a.c, self.A.SUBSCRIPTION_FOR_PATTERN_REMOVED, a.pattern, name) end
  end
end

-- The names this node subscribes to, and those it provides (a Redis reconnection).
function Listen:cluster_state()
  local subscribed, provided = {}, {}
  for name in pairs(self.subs.by_name) do subscribed[#subscribed + 1] = name end
  for name in pairs(self.claimed) do provided[#provided + 1] = name end
  return subscribed, provided, next(self.providers.by_name) ~= nil
end

function Listen:handle(c, msg)
  local A, action = self.A, msg.action
  if action == A.LISTEN then return self:listen(c, msg)
  elseif action == A.UNLISTEN then return self:unlisten(c, msg)
  elseif action == A.LISTEN_ACCEPT then return self:accept(c, msg)
  elseif action == A.LISTEN_REJECT then return self:reject(c, msg)
  end
  -- unknown actions are ignored, as the reference does
end

-- A connection closed: its subscriptions in subs go (providers are told when
-- a name loses its last subscriber), and so do its listen patterns.
function Listen:connection_closed(subs, c)
  subs:remove_conn(c, function(name, last)
    if last then self:unsubscribed(name) end
  end)
  self:disconnect(c)
end

function Listen:disconnect(c)
  local patterns = self.providers:names_of(c)
  if not patterns then return end
  local list = {}
  for p in pairs(patterns) do list[#list + 1] = p end
  for _, p in ipairs(list) do self:_drop(c, p) end
end

return M
