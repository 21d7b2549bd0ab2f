-- The cluster mode (config key `cluster`): the node's connections to the
-- shared Redis and what it checks there.
--
--   * records: a connection used by the record store alone
--     (csrc/redisstore.c, behind the engine's storage seam), so settling a
--     command runs no other work's callbacks;
--   * commands: for the rest of the cluster's work, and the persistence
--     check made each time it (re)connects;
--   * a subscriber (bus.lua) for the messages between nodes.
--
-- Both reconnect by themselves with backoff (csrc/redis.c).
local core = require "moonstream.core"
local url_mod = require "moonstream.cluster.url"
local kv_mod = require "moonstream.cluster.kv"
local log = require "moonstream.log"

local M = {}
local Cluster = {}
local mt = { __index = Cluster }

-- How long a record command may wait for Redis before it fails (the node
-- keeps serving; the connection is dropped and made again).
M.COMMAND_TIMEOUT_MS = 2000
-- A reply bigger than this drops the connection (a record text is bounded
-- far below it by maxMessageSize).
M.MAX_REPLY = 64 * 1024 * 1024

-- The warning for a Redis that does not fsync every write, or nil.
function M.persistence_warning(appendonly, appendfsync)
  if appendonly == "yes" and appendfsync == "always" then return nil end
  return string.format("Redis does not fsync every write (appendonly %s, appendfsync %s): a write acknowledged"
    .. " to a client can be lost when Redis stops abruptly; set 'appendonly yes' and 'appendfsync always'",
    tostring(appendonly), tostring(appendfsync))
end

-- loop: the server's; ccfg: the validated `cluster` section (name: the
-- node's name in the logs, nil for the server's host:port).
function M.new(loop, ccfg)
  local target = assert(url_mod.parse(ccfg.redis))
  local self = setmetatable({
    loop = loop, url = ccfg.redis:gsub("//[^@/]*@", "//"), name = ccfg.name, up = {}, checked = false,
    -- this process among the nodes (names may repeat by mistake; this cannot)
    id = (core.random_bytes(8):gsub(".", function(c) return string.format("%02x", c:byte()) end)),
    on_up_fns = {},
  }, mt)
  local base = {
    host = target.host, port = target.port, db = target.db, password = ccfg.password or target.password,
    max_reply = M.MAX_REPLY,
  }
  self.base = base
  local function conn(role, on_up, on_message)
    local o = { on_message = on_message }
    for k, v in pairs(base) do o[k] = v end
    o.on_state = function(up, err)
      self.up[role] = up
      if up then
        log.info("cluster: %s connection to Redis %s is up", role, self.url)
        if on_up then on_up() end
      else
        log.warn("cluster: %s connection to Redis %s is down (%s); reconnecting", role, self.url, err)
      end
    end
    return core.redis(loop, o)
  end
  self.conn = conn
  self.records_conn = conn("records")
  self.commands = conn("commands", function()
    self:_check_persistence()
    for _, fn in ipairs(self.on_up_fns) do fn() end
  end)
  self.store = core.redis_records(self.records_conn, { timeout = M.COMMAND_TIMEOUT_MS })
  return self
end

function Cluster:_check_persistence()
  local got = {}
  local function ask(param)
    self.commands:command({ "CONFIG", "GET", param }, function(reply, err)
      got[param] = reply and reply[2] or false
      if err then got.err = err end
      if got.appendonly == nil or got.appendfsync == nil then return end
      self.checked = true
      if got.err then
        log.warn("cluster: could not check Redis persistence (CONFIG GET: %s): acknowledged writes are only as"
          .. " durable as Redis' appendfsync setting", got.err)
        return
      end
      local warning = M.persistence_warning(got.appendonly, got.appendfsync)
      if warning then log.warn("cluster: %s", warning) end
    end)
  end
  ask("appendonly")
  ask("appendfsync")
end

-- Runs the loop until both connections are up and the persistence check
-- answered, at most max_ms. Returns true, or nil and why (the node starts
-- anyway: requests that need Redis fail until it comes).
function Cluster:wait_ready(max_ms)
  local deadline = core.now() + max_ms
  while not (self.up.records and self.up.commands and self.checked) do
    if core.now() >= deadline then
      local _, err = self.commands:up()
      return nil, err or "no answer"
    end
    self.loop:run_once(20)
  end
  return true
end

-- fn() each time the commands connection comes back after it was down
-- (presence re-registers; subscriptions renew by themselves in redis.c).
function Cluster:on_reconnect(fn)
  self.on_up_fns[#self.on_up_fns + 1] = fn
end

-- A subscriber connection: on_message(channel, data) for each message of
-- the channels it subscribes to (bus.lua); it resubscribes by itself, then
-- calls on_up() (each time it is up: messages sent while it was down are lost).
function Cluster:subscriber(on_message, on_up)
  return self.conn("subscriber", on_up, on_message)
end

-- The store tokens.lua keeps tokens in, shared by every node.
function Cluster:kv()
  return kv_mod.new(self.commands, M.COMMAND_TIMEOUT_MS)
end

-- The record store for record_engine.lua (the engine's durable store).
function Cluster:record_store()
  return self.store
end

function Cluster:close()
  self.store:close()
  self.records_conn:close()
  self.commands:close()
end

return M
