-- deepstream's HTTP monitoring endpoint (its `http` monitoring plugin):
-- GET monitoring.url answers what happened since the previous read,
--
--   { "from": ms, "to": ms, "clusterSize": 1,
--     "stateMetrics": { registry name: entries },
--     "errors":   { "WARN"|"ERROR": log lines },
--     "received": { TOPIC: { ACTION: messages } },
--     "send":     { TOPIC: { ACTION: messages } },
--     "logins":   { "http"|"websocket": { "allowed": n, "declined": n } } }
--
-- guarded as deepstream guards it: unless allowOpenPermissions is true, the
-- request header headerKey must equal headerValue, else 404 "Endpoint not
-- found." (the same answer as an unknown path, so a prober learns nothing).
-- Counts are the metrics module's cumulative counters minus what the
-- previous read saw, so the two endpoints never disagree.
--
-- Differences, on purpose: deepstream keys errors by its log EVENT names,
-- which moonstream's log does not have (the level is used); deepstream adds
-- broadcasts to `received` when that topic already has an entry there (a
-- slip in its monitoring-base.ts), moonstream always to `send`; deepstream
-- also counts each POST /api command as a message received and its result
-- as one sent, moonstream only WebSocket messages (moonstream_commands_total
-- on /metrics has the commands).
local json = require "moonstream.json"
local log = require "moonstream.log"
local metrics = require "moonstream.metrics"

local M = {}

local now_ms = require("moonstream.core").wallclock

local function copy2(t)
  local out = {}
  for k, inner in pairs(t) do
    local c = {}
    for k2, v in pairs(inner) do c[k2] = v end
    out[k] = c
  end
  return out
end

-- now - before for a two-level table of counts, keeping only what grew.
local function delta2(now, before)
  local out = {}
  for k, inner in pairs(now) do
    local prev = before[k] or {}
    for k2, v in pairs(inner) do
      local d = v - (prev[k2] or 0)
      if d > 0 then
        out[k] = out[k] or {}
        out[k][k2] = d
      end
    end
  end
  return out
end

local function count_names(registry)
  local n = 0
  for _ in pairs(registry.by_name) do n = n + 1 end
  return n
end

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- deepstream names each state registry TOPIC[n] || STATE_REGISTRY_TOPIC[n];
-- where the two enums share a number TOPIC wins, so event subscriptions
-- appear as "STATE_REGISTRY" and online users as "LOCK". Those are the keys
-- a dashboard built on deepstream reads, so they are kept.
local function state_metrics(realtime, presence)
  local events, records = realtime.events, realtime.record_topic
  return {
    STATE_REGISTRY = count_names(events.subs),
    RECORD_SUBSCRIPTIONS = count_names(records.subs),
    RPC_SUBSCRIPTIONS = count_names(realtime.rpc.providers),
    PRESENCE_SUBSCRIPTIONS = count_names(realtime.presence_topic.subs),
    LOCK = presence:size(),
    RECORD_LISTEN_PATTERNS = count_names(records.listen.providers),
    EVENT_LISTEN_PATTERNS = count_names(events.listen.providers),
    RECORD_PUBLISHED_SUBSCRIPTIONS = count_keys(records.listen.active),
    EVENT_PUBLISHED_SUBSCRIPTIONS = count_keys(events.listen.active),
  }
end

-- deepstream counts POST /api/auth ("http") and WebSocket logins; authData
-- sent along with a POST /api is not a login there.
local function logins_now()
  local out = {}
  for _, endpoint in ipairs({ "http", "websocket" }) do
    local results = metrics.logins[endpoint]
    if results then
      out[endpoint] = { allowed = results.success or 0, declined = (results.failure or 0) + (results.limited or 0) }
    end
  end
  return out
end

-- deepstream counts the messages its distributor routes to a topic handler:
-- not the CONNECTION and AUTH messages of the handshake (which it does count
-- in `send`).
local function received_now()
  local out = copy2(metrics.ws_in)
  out.CONNECTION, out.AUTH = nil, nil
  return out
end

local function errors_now()
  return { WARN = log.counts.warn, ERROR = log.counts.error }
end

-- cfg: the validated `monitoring` section; parts: realtime, presence.
-- Returns function(req) answering GET cfg.url.
function M.handler(cfg, parts)
  local from = now_ms()
  local seen = { received = {}, send = {}, logins = {}, errors = {} }
  local key, value, open = cfg.headerKey, cfg.headerValue, cfg.allowOpenPermissions == true
  return function(req)
    if not open and req:header(key) ~= value then
      log.warn("Invalid monitoring data due to missing or invalid header values")
      return req:respond(404, "Endpoint not found.", { ["Content-Type"] = "text/plain; charset=utf-8" })
    end
    local to = now_ms()
    local now = {
      received = received_now(), send = copy2(metrics.ws_out), logins = logins_now(),
      errors = { levels = errors_now() },
    }
    local body = {
      from = from, to = to, clusterSize = 1,
      stateMetrics = state_metrics(parts.realtime, parts.presence),
      -- (empty tables encode as {}, as deepstream's empty maps do)
      errors = delta2(now.errors, seen.errors).levels or {},
      received = delta2(now.received, seen.received),
      send = delta2(now.send, seen.send),
      logins = delta2(now.logins, seen.logins),
    }
    -- deepstream always lists both counts of an endpoint that had a login
    for endpoint, counts in pairs(body.logins) do
      counts.allowed, counts.declined = counts.allowed or 0, counts.declined or 0
      body.logins[endpoint] = counts
    end
    seen, from = now, to
    local text = assert(json.encode(body))
    req:respond(200, text, { ["Content-Type"] = "application/json; charset=utf-8" })
  end
end

return M
