-- Metrics in the Prometheus text format (GET metrics.path, README "Metrics").
--
-- Counters are process-wide, like a Prometheus client's default registry:
-- the C core keeps those of the paths that run in C (csrc/metrics.c: HTTP
-- responses, commands, records, group commit, sync and loop histograms) and
-- this module those of the Lua layers (logins, RPCs, WebSocket messages).
-- Hooks are single calls that increment a table slot; the text is built only
-- when someone scrapes. Gauges (connections, presence users, memory) are read
-- from the serving server at scrape time.
--
--   metrics.login(endpoint, result)       auth.lua: "http"|"api"|"websocket", "success"|"failure"|"limited"
--   metrics.rpc(result)                   rpc_handlers.lua, realtime/rpc_topic.lua: a result table or a label
--   metrics.commands(commands, batch, n)    dispatch.lua: a batch answered by the Lua path
--   metrics.ws_opened(transport), metrics.ws_received(msg), metrics.ws_sent(msg [, count])
--   metrics.handler(cfg.metrics, parts)   -> function(req) answering a scrape
local core = require "moonstream.core"
local log = require "moonstream.log"

local M = {}

local format, concat, sort = string.format, table.concat, table.sort
local math_type, tostring, pairs, ipairs = math.type, tostring, pairs, ipairs

-- Counters of the Lua layers: nested tables label value -> count. Label
-- values come from fixed sets (message.lua's topic names, the results below),
-- never from client-chosen strings, so the number of series stays bounded.
local logins = {}        -- endpoint -> result -> n
local rpcs = {}          -- result -> n
local ws_opened = {}     -- transport -> n
local ws_in, ws_out = {}, {} -- topic -> action -> n (deepstream's monitoring wants actions too)
M.ws_in, M.ws_out, M.logins = ws_in, ws_out, logins

local function bump2(t, a, b, n)
  local inner = t[a]
  if not inner then inner = {}; t[a] = inner end
  inner[b] = (inner[b] or 0) + (n or 1)
end

function M.login(endpoint, result)
  bump2(logins, endpoint, result)
end

-- An RPC's outcome: "success", or its errorEvent in lower case
-- (rpc_error, no_rpc_provider, response_timeout, accept_timeout).
local RPC_RESULTS = {
  RPC_ERROR = "rpc_error", NO_RPC_PROVIDER = "no_rpc_provider", RESPONSE_TIMEOUT = "response_timeout",
  ACCEPT_TIMEOUT = "accept_timeout", REQUEST_ERROR = "rpc_error", RESPONSE = "success",
}
function M.rpc(result)
  local label
  if type(result) == "table" then
    label = result.success and "success" or RPC_RESULTS[result.errorEvent] or "error"
  else
    label = RPC_RESULTS[result] or result
  end
  rpcs[label] = (rpcs[label] or 0) + 1
end

-- The C counters' label ids (csrc/metrics.c owns the names), looked up once.
local TOPIC_ID, ACTION_ID = {}, {}
do
  local labels = core.metrics_labels()
  for i, name in ipairs(labels.topics) do TOPIC_ID[name] = i end
  for i, name in ipairs(labels.actions) do ACTION_ID[name] = i end
end

local metrics_command = core.metrics_command
function M.commands(commands, batch, n)
  for i = 1, n do
    local cmd = commands[i]
    local t, a = TOPIC_ID[cmd.topic], ACTION_ID[cmd.action]
    if t and a then metrics_command(t, a, batch:succeeded(i)) end
  end
end

function M.ws_opened(transport)
  ws_opened[transport] = (ws_opened[transport] or 0) + 1
end

-- msg.topic and msg.action are message.lua's names ("EVENT", "SUBSCRIBE");
-- a code it has no name for (any integer a client sends) counts as UNKNOWN.
local function name(v)
  return type(v) == "string" and v or "UNKNOWN"
end

function M.ws_received(msg)
  bump2(ws_in, name(msg.topic), name(msg.action))
end

function M.ws_sent(msg, count)
  if count == 0 then return end
  bump2(ws_out, name(msg.topic), name(msg.action), count)
end

-- Rendering

local function number(v)
  if math_type(v) == "integer" then return tostring(v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" elseif v == -math.huge then return "-Inf" end
  local s = format("%.15g", v)
  if tonumber(s) ~= v then s = format("%.17g", v) end
  return s
end

local function label_value(v)
  return (tostring(v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- labels: list of name, value, name, value ...
local function sample(out, name, labels, value)
  if labels and #labels > 0 then
    local parts = {}
    for i = 1, #labels, 2 do parts[#parts + 1] = labels[i] .. '="' .. label_value(labels[i + 1]) .. '"' end
    out[#out + 1] = name .. "{" .. concat(parts, ",") .. "} " .. number(value)
  else
    out[#out + 1] = name .. " " .. number(value)
  end
end

local function family(out, name, kind, help)
  out[#out + 1] = "# HELP " .. name .. " " .. help
  out[#out + 1] = "# TYPE " .. name .. " " .. kind
end

local function sorted(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function histogram(out, name, help, h)
  family(out, name, "histogram", help)
  for i, bound in ipairs(h.bounds) do sample(out, name .. "_bucket", { "le", number(bound) }, h.counts[i]) end
  sample(out, name .. "_bucket", { "le", "+Inf" }, h.counts[#h.bounds + 1])
  sample(out, name .. "_sum", nil, h.sum)
  sample(out, name .. "_count", nil, h.count)
end

-- Sums a topic -> action -> n table per topic.
local function per_topic(t)
  local sums = {}
  for topic, actions in pairs(t) do
    local n = 0
    for _, v in pairs(actions) do n = n + v end
    sums[topic] = n
  end
  return sums
end

-- "VmRSS:	  1234 kB" lines of /proc/self/status, in bytes.
local function proc_memory()
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local rss, vsz = text:match("VmRSS:%s*(%d+) kB"), text:match("VmSize:%s*(%d+) kB")
  return rss and tonumber(rss) * 1024, vsz and tonumber(vsz) * 1024
end

local function render_c(out, snap)
  family(out, "moonstream_http_requests_total", "counter",
    "HTTP responses sent, by endpoint (the configured path it named, else other) and status code.")
  for _, s in ipairs(snap.http) do
    sample(out, "moonstream_http_requests_total", { "endpoint", s[1], "status", s[2] }, s[3])
  end
  family(out, "moonstream_commands_total", "counter",
    "POST /api commands run (C fast path and Lua path), by topic, action and result.")
  for _, s in ipairs(snap.commands) do
    sample(out, "moonstream_commands_total", { "topic", s[1], "action", s[2], "result", s[3] }, s[4])
  end
  family(out, "moonstream_records_read_total", "counter",
    "Record lookups (reads, heads, and the lookup every write and delete makes), HTTP and WebSocket.")
  sample(out, "moonstream_records_read_total", nil, snap.records_read)
  family(out, "moonstream_records_written_total", "counter", "Record versions written.")
  sample(out, "moonstream_records_written_total", nil, snap.records_written)
  family(out, "moonstream_records_deleted_total", "counter", "Record deletions.")
  sample(out, "moonstream_records_deleted_total", nil, snap.records_deleted)
  histogram(out, "moonstream_group_commit_records", "Records changed per group commit (one LevelDB write batch).",
    snap.group_commit_records)
  histogram(out, "moonstream_storage_sync_seconds",
    "Time one group commit's LevelDB write took (synced unless storage.sync is false).", snap.sync_seconds)
  histogram(out, "moonstream_event_loop_lag_seconds",
    "Time the event loop spent on one iteration that did work: how long a newly ready event may wait.",
    snap.loop_busy_seconds)
end

local function render_lua(out, parts)
  family(out, "moonstream_logins_total", "counter",
    "Login attempts by endpoint (http: POST /api/auth; api: authData in POST /api; websocket) and result.")
  for _, endpoint in ipairs(sorted(logins)) do
    for _, result in ipairs(sorted(logins[endpoint])) do
      sample(out, "moonstream_logins_total", { "endpoint", endpoint, "result", result }, logins[endpoint][result])
    end
  end
  family(out, "moonstream_rpcs_total", "counter", "RPCs made (HTTP and WebSocket), by result.")
  for _, result in ipairs(sorted(rpcs)) do sample(out, "moonstream_rpcs_total", { "result", result }, rpcs[result]) end
  family(out, "moonstream_websocket_connections_opened_total", "counter", "WebSocket connections accepted, by transport.")
  for _, t in ipairs(sorted(ws_opened)) do
    sample(out, "moonstream_websocket_connections_opened_total", { "transport", t }, ws_opened[t])
  end
  family(out, "moonstream_websocket_messages_received_total", "counter", "Realtime messages received, by topic.")
  local sums = per_topic(ws_in)
  for _, t in ipairs(sorted(sums)) do sample(out, "moonstream_websocket_messages_received_total", { "topic", t }, sums[t]) end
  family(out, "moonstream_websocket_messages_sent_total", "counter",
    "Realtime messages sent (a broadcast counts once per recipient), by topic.")
  sums = per_topic(ws_out)
  for _, t in ipairs(sorted(sums)) do sample(out, "moonstream_websocket_messages_sent_total", { "topic", t }, sums[t]) end
  family(out, "moonstream_log_messages_total", "counter", "Log lines at warn and error level, whatever logLevel shows.")
  for _, level in ipairs({ "warn", "error" }) do
    sample(out, "moonstream_log_messages_total", { "level", level }, log.counts[level])
  end
  local realtime, presence = parts.realtime, parts.presence
  family(out, "moonstream_websocket_connections", "gauge", "Open WebSocket connections, by transport.")
  local open = { json = 0, binary = 0 }
  if realtime then
    for c in pairs(realtime.conns) do open[c.transport] = (open[c.transport] or 0) + 1 end
  end
  for _, t in ipairs(sorted(open)) do sample(out, "moonstream_websocket_connections", { "transport", t }, open[t]) end
  family(out, "moonstream_presence_users", "gauge", "Users logged in over WebSocket (what presence queries list).")
  sample(out, "moonstream_presence_users", nil, presence and presence:size() or 0)
end

-- utime + stime of /proc/self/stat, in seconds (Linux counts in USER_HZ,
-- which is 100 on every architecture it exposes to user space).
local function proc_cpu_seconds()
  local f = io.open("/proc/self/stat", "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  -- fields after the ")" that ends the command name: state is field 3, utime 14, stime 15
  local rest = text:match("^.*%)%s+(.*)$")
  if not rest then return nil end
  local fields = {}
  for v in rest:gmatch("%S+") do fields[#fields + 1] = v end
  local utime, stime = tonumber(fields[12]), tonumber(fields[13])
  return utime and stime and (utime + stime) / 100
end

local function open_fds()
  local ok, lfs = pcall(require, "lfs")
  if not ok then return nil end
  local n = 0
  local iter_ok = pcall(function()
    for entry in lfs.dir("/proc/self/fd") do
      if entry ~= "." and entry ~= ".." then n = n + 1 end
    end
  end)
  return iter_ok and n - 1 or nil -- minus the directory lfs.dir itself holds open
end

local function render_process(out)
  local cpu = proc_cpu_seconds()
  if cpu then
    family(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.")
    sample(out, "process_cpu_seconds_total", nil, cpu)
  end
  local fds = open_fds()
  if fds then
    family(out, "process_open_fds", "gauge", "Open file descriptors (connections, LevelDB files, the loop's own).")
    sample(out, "process_open_fds", nil, fds)
  end
  local rss, vsz = proc_memory()
  if rss then
    family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
    sample(out, "process_resident_memory_bytes", nil, rss)
  end
  if vsz then
    family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.")
    sample(out, "process_virtual_memory_bytes", nil, vsz)
  end
  family(out, "moonstream_lua_memory_bytes", "gauge", "Memory the Lua heap uses, in bytes.")
  sample(out, "moonstream_lua_memory_bytes", nil, collectgarbage("count") * 1024)
  local moonstream = package.loaded["moonstream"]
  family(out, "moonstream_build_info", "gauge", "Always 1; the labels say which moonstream and Lua run.")
  sample(out, "moonstream_build_info", { "version", moonstream and moonstream.VERSION or "unknown", "lua", _VERSION }, 1)
end

-- The whole exposition text. parts: realtime, presence (both optional).
function M.render(parts)
  local out = {}
  render_c(out, core.metrics_snapshot())
  render_lua(out, parts or {})
  render_process(out)
  out[#out + 1] = ""
  return concat(out, "\n")
end

-- Access

-- Compares without stopping at the first difference, so the time taken
-- does not tell a guesser how much of the token was right.
local function same_secret(a, b)
  if type(a) ~= "string" or #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = diff | (a:byte(i) ~ b:byte(i)) end
  return diff == 0
end

local CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
local TEXT = { ["Content-Type"] = "text/plain; charset=utf-8" }

-- cfg: the validated `metrics` section; parts: realtime, presence.
-- A scrape is answered when the client address is in cfg.allow ("*": any)
-- and, if cfg.token is set, the request carries "Authorization: Bearer <token>".
function M.handler(cfg, parts)
  local allowed = {}
  for _, a in ipairs(cfg.allow) do allowed[a] = true end -- validated: the schema gives the default list
  local expected = cfg.token and "Bearer " .. cfg.token
  return function(req)
    if not (allowed["*"] or allowed[req:client_address()]) then
      return req:respond(403, "Forbidden: this address may not read the metrics (config key 'metrics.allow').", TEXT)
    end
    if expected and not same_secret(req:header("Authorization"), expected) then
      return req:respond(401, "Unauthorized: the metrics need a bearer token (config key 'metrics.token').",
        { ["Content-Type"] = TEXT["Content-Type"], ["WWW-Authenticate"] = "Bearer" })
    end
    req:respond(200, M.render(parts), { ["Content-Type"] = CONTENT_TYPE })
  end
end

return M
