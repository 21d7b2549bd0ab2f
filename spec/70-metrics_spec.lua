-- The Prometheus endpoint (metrics.lua, csrc/metrics.c): what it counts,
-- who may read it, that Debian's promtool accepts the text, and that a real
-- Prometheus server scrapes it and sees a counter grow.
local H = require "spec.support.helpers"
local json = require "moonstream.json"
local socket = require "socket"

-- The value of one sample: name{labels} exactly as rendered (labels in
-- their rendering order), or 0 when the series does not exist yet.
local function value(text, series)
  for line in text:gmatch("[^\n]+") do
    local v = line:match("^" .. series:gsub("%p", "%%%0") .. " (%S+)$")
    if v then return tonumber(v) end
  end
  return 0
end

local function scrape(t, headers)
  local res = t:request({ method = "GET", path = "/metrics", headers = headers })
  assert(res.status, res.error)
  return res
end

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok and 0 or code, out
end

describe("metrics endpoint", function()
  local t
  after_each(function()
    if t then t:stop() end
    t = nil
  end)

  it("counts HTTP responses, commands on both paths, records, RPCs and logins", function()
    t = H.start({}, function(server)
      server:rpc("double", function(data) return data * 2 end)
    end)
    local before = scrape(t).body
    -- fast path: a batch of plain record commands (answered in C)
    t:api({ { topic = "record", action = "write", recordName = "m/a", data = { v = 1 } },
            { topic = "record", action = "read", recordName = "m/a" },
            { topic = "record", action = "delete", recordName = "m/a" } })
    -- Lua path: an RPC in the batch sends it through dispatch.lua
    local _, body = t:api({ { topic = "rpc", action = "make", rpcName = "double", data = 21 },
                            { topic = "record", action = "read", recordName = "m/missing" } })
    assert.same(42, body.body[1].data)
    t:request({ path = "/api/auth", body = '{"username":"ann"}' })
    t:api({ body = { { topic = "event", action = "emit", eventName = "e" } }, authData = { username = "bob" } })
    t:request({ method = "GET", path = "/nowhere" })
    local after = scrape(t).body
    local function grew(series) return value(after, series) - value(before, series) end
    assert.equal(3, grew('moonstream_http_requests_total{endpoint="api",status="200"}'))
    assert.equal(1, grew('moonstream_http_requests_total{endpoint="auth",status="200"}'))
    assert.equal(1, grew('moonstream_http_requests_total{endpoint="other",status="404"}'))
    assert.equal(1, grew('moonstream_commands_total{topic="record",action="write",result="success"}'))
    assert.equal(1, grew('moonstream_commands_total{topic="record",action="delete",result="success"}'))
    assert.equal(1, grew('moonstream_commands_total{topic="record",action="read",result="success"}'))
    assert.equal(1, grew('moonstream_commands_total{topic="record",action="read",result="failure"}'))
    assert.equal(1, grew('moonstream_commands_total{topic="rpc",action="make",result="success"}'))
    assert.equal(1, grew('moonstream_records_written_total'))
    assert.equal(1, grew('moonstream_records_deleted_total'))
    assert.is_true(grew('moonstream_records_read_total') >= 2)
    assert.equal(1, grew('moonstream_rpcs_total{result="success"}'))
    assert.equal(1, grew('moonstream_logins_total{endpoint="http",result="success"}'))
    assert.equal(1, grew('moonstream_logins_total{endpoint="api",result="success"}'))
    assert.equal(1, grew('moonstream_commands_total{topic="event",action="emit",result="success"}'))
    assert.is_true(grew('moonstream_storage_sync_seconds_count') >= 1)
    assert.is_true(grew('moonstream_group_commit_records_count') >= 1)
    assert.is_true(grew('moonstream_event_loop_lag_seconds_count') >= 1)
    assert.is_true(value(after, "process_resident_memory_bytes") > 0)
    assert.is_true(value(after, "process_open_fds") > 0)
    assert.is_true(after:find("\nprocess_cpu_seconds_total ", 1, true) ~= nil)
    assert.equal(1, value(after, 'moonstream_build_info{version="' .. require("moonstream").VERSION
      .. '",lua="' .. _VERSION .. '"}'))
  end)

  it("counts WebSocket connections, messages by topic and presence users", function()
    t = H.start()
    local before = scrape(t).body
    local c = H.realtime_client(t)
    c.login("ann")
    c.send({ topic = 4, action = 3, names = { "news" } }) -- EVENT SUBSCRIBE
    c.drain()
    local after = scrape(t).body
    local function grew(series) return value(after, series) - value(before, series) end
    assert.equal(1, value(after, 'moonstream_websocket_connections{transport="json"}'))
    assert.equal(1, grew('moonstream_websocket_connections_opened_total{transport="json"}'))
    assert.equal(1, grew('moonstream_websocket_messages_received_total{topic="EVENT"}'))
    assert.equal(1, grew('moonstream_logins_total{endpoint="websocket",result="success"}'))
    assert.is_true(grew('moonstream_websocket_messages_sent_total{topic="AUTH"}') >= 1)
    assert.equal(1, value(after, "moonstream_presence_users"))
    assert.equal(1, grew('moonstream_http_requests_total{endpoint="realtime",status="101"}'))
    c.ws:shutdown()
  end)

  it("is text Debian's promtool accepts, with every family holding samples", function()
    t = H.start({}, function(server) server:rpc("one", function() return 1 end) end)
    t:api({ { topic = "record", action = "write", recordName = "p", data = {} },
            { topic = "rpc", action = "make", rpcName = "one" } })
    t:request({ path = "/api/auth", body = '{"username":"ann"}' })
    local c = H.realtime_client(t)
    c.login("ann")
    c.drain()
    local res = scrape(t)
    c.ws:shutdown()
    assert.equal(200, res.status)
    assert.matches("^text/plain; version=0.0.4", res.headers["content-type"] or res.headers["Content-Type"])
    local file = H.write_file(t.dir .. "/metrics.txt", res.body)
    local code, out = run("promtool check metrics < " .. file)
    assert.equal(0, code, out)
    -- every family announced has a sample now: nothing is left to chance in the check
    for name in res.body:gmatch("# TYPE (%S+)") do
      assert.matches("\n" .. name:gsub("%p", "%%%0") .. "[_{ ]", res.body)
    end
  end)

  it("answers loopback clients only by default, others per metrics.allow", function()
    t = H.start({ metrics = { allow = { "192.0.2.1" } } })
    local res = scrape(t)
    assert.equal(403, res.status)
    assert.matches("metrics.allow", res.body, 1, true)
    t:stop()
    t = H.start()
    assert.equal(200, scrape(t).status)
  end)

  it("wants the bearer token when metrics.token is set", function()
    t = H.start({ metrics = { token = "scrape-me" } })
    assert.equal(401, scrape(t).status)
    assert.equal(401, scrape(t, { Authorization = "Bearer scrape-mE" }).status)
    assert.equal(200, scrape(t, { Authorization = "Bearer scrape-me" }).status)
  end)

  it("refuses a path another endpoint has", function()
    local config = require "moonstream.config"
    local _, err = config.validate({ metrics = { path = "/api" } })
    assert.equal("config key 'metrics.path' is the path of 'apiPath' already", err)
    _, err = config.validate({ monitoring = { url = "/metrics", allowOpenPermissions = true } })
    assert.equal("config key 'monitoring.url' is the path of 'metrics.path' already", err)
    _, err = config.validate({ metrics = { path = 5 } })
    assert.equal("config key 'metrics.path' must be a string starting with '/' (got 5)", err)
    _, err = config.validate({ metrics = { allow = "127.0.0.1" } })
    assert.equal("config key 'metrics.allow' must be a list of strings (got string)", err)
  end)

  it("is off with metrics = false, and moves with metrics.path", function()
    t = H.start({ metrics = false })
    assert.equal(404, scrape(t).status)
    t:stop()
    t = H.start({ metrics = { path = "/internal/prom" } })
    assert.equal(404, scrape(t).status)
    local res = t:request({ method = "GET", path = "/internal/prom" })
    assert.equal(200, res.status)
    assert.matches("moonstream_http_requests_total", res.body, 1, true)
  end)
end)

-- A real Prometheus (Debian's package) on loopback scrapes the test server
-- every second; its query API must see moonstream_records_written_total grow
-- by the writes made after it first saw the counter.
describe("a Prometheus server scraping moonstream", function()
  local t, pidfile, dir

  local function free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
  end

  after_each(function()
    if pidfile then
      local f = io.open(pidfile)
      local pid = f and tonumber(f:read("l"))
      if f then f:close() end
      if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    end
    if t then t:stop() end
    t = nil
  end)

  it("scrapes the endpoint and its query API returns a counter that grew", function()
    assert(os.execute("command -v prometheus >/dev/null"), "prometheus is not installed (make deps installs it)")
    t = H.start()
    dir = t.dir
    local prom_port = free_port()
    H.write_file(dir .. "/prometheus.yml", table.concat({
      "global:",
      "  scrape_interval: 1s",
      "scrape_configs:",
      "  - job_name: moonstream",
      "    scrape_interval: 1s",
      "    scrape_timeout: 1s",
      "    static_configs:",
      "      - targets: ['127.0.0.1:" .. t.server:port() .. "']",
      "",
    }, "\n"))
    pidfile = dir .. "/prometheus.pid"
    assert(os.execute("sh -c 'echo $$ > " .. pidfile .. "; exec env -u LD_PRELOAD prometheus"
      .. " --config.file=" .. dir .. "/prometheus.yml --storage.tsdb.path=" .. dir .. "/tsdb"
      .. " --web.listen-address=127.0.0.1:" .. prom_port .. "' > " .. dir .. "/prometheus.log 2>&1 &"))

    -- The server's own loop serves the scrapes while it waits for Prometheus.
    local query = "http://127.0.0.1:" .. prom_port .. "/api/v1/query?query=moonstream_records_written_total"
    local function counter()
      local got
      assert(t.client:request({ method = "GET", url = query, timeout = 2000 }, function(res)
        got = res or false
      end))
      t:run_until(function() return got ~= nil end)
      if not got or got.status ~= 200 then return nil end
      local doc = json.decode(got.body)
      local r = doc and doc.data and doc.data.result and doc.data.result[1]
      return r and tonumber(r.value[2])
    end
    local function wait_for(pred, what)
      local deadline = socket.gettime() + 90
      while socket.gettime() < deadline do
        local v = counter()
        if v and pred(v) then return v end
        t.loop:run_once(200)
      end
      local f = io.open(dir .. "/prometheus.log")
      local log = f and f:read("a") or ""
      if f then f:close() end
      error("Prometheus never reported " .. what .. "; its log:\n" .. log:sub(-2000))
    end

    local first = wait_for(function() return true end, "the counter")
    for i = 1, 5 do
      t:api({ { topic = "record", action = "write", recordName = "prom/" .. i, data = { i = i } } })
    end
    local later = wait_for(function(v) return v >= first + 5 end, "the counter grown by 5 from " .. first)
    assert.is_true(later >= first + 5)
  end)
end)
