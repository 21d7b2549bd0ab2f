-- The small key-value face of a LevelDB store that tokens.lua uses (get,
-- put, delete, iterate, batch + write), over Redis, so that in cluster mode
-- a token issued on one node is valid on all and a revocation on one
-- applies on all. Keys live under "ms:k:" (tokens.lua's own prefix follows).
-- get_later and put_later answer from the loop, which serves everything
-- else meanwhile (token lookups of requests, logins); a Redis that stops
-- answering for the connection's bound fails them. The other calls (the
-- sweep at start-up, revocations by the operator) answer before they
-- return: they settle the connection (run its I/O only, bounded by
-- timeout_ms). Redis down: nil and the reason.
local M = {}
local KV = {}
local mt = { __index = KV }

local PREFIX = "ms:k:"

-- conn: a core.redis connection (commands), timeout_ms: per call
function M.new(conn, timeout_ms)
  conn:reply_timeout(timeout_ms) -- the *_later calls wait for the loop: bounded there
  return setmetatable({ conn = conn, timeout = timeout_ms }, mt)
end

-- Sends args; k(reply) or k(nil, err) from the loop (or at once when not sent).
function KV:_send(args, k)
  local ok, serr = self.conn:command(args, function(r, e)
    if e then return k(nil, "Redis: " .. e) end
    k(r)
  end)
  if not ok then k(nil, "Redis: " .. tostring(serr)) end
end

-- get_later(key, k): k(text | nil) or k(nil, err)
function KV:get_later(key, k)
  self:_send({ "GET", PREFIX .. key }, k)
end

-- put_later(key, text, k): k(true) once Redis answered (appendfsync always: on disk), or k(nil, err)
function KV:put_later(key, text, k)
  self:_send({ "SET", PREFIX .. key, text }, function(r, err) k(r and true or nil, err) end)
end

function KV:_call(args)
  local reply, err, done
  local ok, serr = self.conn:command(args, function(r, e) reply, err, done = r, e, true end)
  if not ok then return nil, "Redis: " .. tostring(serr) end
  if not done then self.conn:settle(self.timeout) end
  if not done then return nil, "Redis did not answer" end
  if err then return nil, "Redis: " .. err end
  return reply
end

-- get(key) -> text | nil | nil, err
function KV:get(key)
  local reply, err = self:_call({ "GET", PREFIX .. key })
  if err then return nil, err end
  return reply
end

-- put(key, text, sync) -> true | nil, err (Redis answered: with appendfsync always, on disk)
function KV:put(key, text)
  local reply, err = self:_call({ "SET", PREFIX .. key, text })
  if not reply then return nil, err end
  return true
end

function KV:delete(key)
  local reply, err = self:_call({ "DEL", PREFIX .. key })
  if not reply then return nil, err end
  return true
end

local CHUNK = 500 -- keys per MGET or DEL (the connection takes 1024 arguments)

-- iterate(prefix) -> step, it, nil, closer as store:iterate: the keys
-- (without "ms:k:") and values under prefix (SCAN; glob characters
-- escaped); nil, err when Redis failed.
function KV:iterate(prefix)
  local pattern = PREFIX .. prefix:gsub("[%*%?%[%]\\]", "\\%0") .. "*"
  local out, cursor = {}, "0"
  repeat
    local reply, err = self:_call({ "SCAN", cursor, "MATCH", pattern, "COUNT", CHUNK })
    if not reply then return nil, err end
    cursor = reply[1]
    local keys = reply[2]
    for from = 1, #keys, CHUNK do
      local args = { "MGET" }
      for i = from, math.min(#keys, from + CHUNK - 1) do args[#args + 1] = keys[i] end
      local values, merr = self:_call(args)
      if not values then return nil, merr end
      for i = 2, #args do
        if values[i - 1] then out[#out + 1] = { args[i]:sub(#PREFIX + 1), values[i - 1] } end
      end
    end
  until cursor == "0"
  local i = 0
  return function()
    i = i + 1
    local e = out[i]
    if e then return e[1], e[2] end
  end, nil, nil, nil
end

-- batch() -> b with b:delete(key); write(b) deletes them in one DEL.
function KV:batch()
  return { keys = {}, delete = function(b, k) b.keys[#b.keys + 1] = PREFIX .. k end, close = function() end }
end

function KV:write(b)
  for from = 1, #b.keys, CHUNK do
    local args = { "DEL" }
    for i = from, math.min(#b.keys, from + CHUNK - 1) do args[#args + 1] = b.keys[i] end
    local reply, err = self:_call(args)
    if not reply then return nil, err end
  end
  return true
end

return M
