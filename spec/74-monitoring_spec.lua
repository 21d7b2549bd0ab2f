-- deepstream's HTTP monitoring endpoint (monitoring.lua): the JSON its
-- `http` monitoring plugin answers, counts since the previous read, and its
-- header guard (a missing or wrong header gets the 404 of an unknown path).
local H = require "spec.support.helpers"
local json = require "moonstream.json"
local config = require "moonstream.config"

local MONITORING = { url = "/monitoring", headerKey = "x-monitoring-key", headerValue = "s3cret" }

local function read(t, headers)
  local res = t:request({ method = "GET", path = "/monitoring", headers = headers })
  assert(res.status, res.error)
  return res
end

describe("monitoring endpoint", function()
  local t
  after_each(function()
    if t then t:stop() end
    t = nil
  end)

  it("answers 404 'Endpoint not found.' without the right header, as deepstream does", function()
    t = H.start({ monitoring = MONITORING })
    local missing = read(t)
    assert.equal(404, missing.status)
    assert.equal("Endpoint not found.", missing.body)
    local wrong = read(t, { ["x-monitoring-key"] = "guess" })
    assert.equal(404, wrong.status)
    assert.equal("Endpoint not found.", wrong.body)
    assert.equal(404, t:request({ method = "GET", path = "/nowhere" }).status) -- the same answer as any unknown path
  end)

  it("answers deepstream's shape: counts since the last read, state registries, logins", function()
    t = H.start({ monitoring = MONITORING })
    local ok = { ["X-Monitoring-Key"] = "s3cret" } -- header names are case-insensitive in HTTP
    local first = read(t, ok)
    assert.equal(200, first.status)
    local a = assert(json.decode(first.body))
    assert.equal(1, a.clusterSize)
    assert.is_true(math.type(a.from) == "integer" and a.to >= a.from)
    assert.is_true(math.abs(a.to - os.time() * 1000) < 60000, "to is milliseconds since the epoch")
    for _, key in ipairs({ "errors", "received", "send", "logins", "stateMetrics" }) do
      assert.is_true(json.is_object(a[key]), key)
    end
    for _, key in ipairs({ "STATE_REGISTRY", "RECORD_SUBSCRIPTIONS", "RPC_SUBSCRIPTIONS", "PRESENCE_SUBSCRIPTIONS",
                           "LOCK", "RECORD_LISTEN_PATTERNS", "EVENT_LISTEN_PATTERNS",
                           "RECORD_PUBLISHED_SUBSCRIPTIONS", "EVENT_PUBLISHED_SUBSCRIPTIONS" }) do
      assert.equal(0, a.stateMetrics[key], key)
    end

    local c = H.realtime_client(t)
    c.login("ann")
    c.send({ topic = 4, action = 3, names = { "news" } }) -- EVENT SUBSCRIBE
    c.drain()
    local b = assert(json.decode(read(t, ok).body))
    assert.equal(a.to, b.from)
    -- as deepstream: the handshake is not in `received`, only what reaches a topic
    assert.same({ EVENT = { SUBSCRIBE = 1 } }, b.received)
    assert.same({ ACCEPT = 1, PONG = 1 }, b.send.CONNECTION)
    assert.same({ AUTH_SUCCESSFUL = 1 }, b.send.AUTH)
    assert.same({ websocket = { allowed = 1, declined = 0 } }, b.logins)
    assert.equal(1, b.stateMetrics.STATE_REGISTRY) -- deepstream's key for event subscriptions
    assert.equal(1, b.stateMetrics.LOCK)           -- and for online users

    -- a POST /api/auth is an "http" login; authData in a POST /api is none (as in deepstream)
    t:request({ path = "/api/auth", body = '{"username":"bob"}' })
    t:api({ body = { { topic = "event", action = "emit", eventName = "e" } }, authData = { username = "bob" } })
    local logins = assert(json.decode(read(t, ok).body)).logins
    assert.same({ http = { allowed = 1, declined = 0 } }, logins)

    local again = assert(json.decode(read(t, ok).body))
    assert.same({}, again.received)
    assert.same({}, again.send)
    assert.same({}, again.logins)
    assert.equal(1, again.stateMetrics.LOCK) -- a state, not a count: still there
    c.ws:shutdown()
  end)

  it("counts warnings, and the wrong-header warning is one", function()
    t = H.start({ monitoring = MONITORING })
    local ok = { ["x-monitoring-key"] = "s3cret" }
    read(t, ok)
    read(t) -- refused: deepstream logs a warning for it
    local body = assert(json.decode(read(t, ok).body))
    assert.equal(1, body.errors.WARN)
  end)

  it("needs no header with allowOpenPermissions, and is off unless configured", function()
    t = H.start({ monitoring = { url = "/mon", allowOpenPermissions = true } })
    assert.equal(200, t:request({ method = "GET", path = "/mon" }).status)
    t:stop()
    t = H.start()
    assert.equal(404, read(t, { ["x-monitoring-key"] = "s3cret" }).status)
  end)

  it("refuses a configuration without headerKey and headerValue, as deepstream does", function()
    local _, err = config.validate({ monitoring = { url = "/monitoring" } })
    assert.equal("config key 'monitoring.headerKey' must be given", err)
    _, err = config.validate({ monitoring = { url = "/monitoring", headerKey = "k" } })
    assert.equal("config key 'monitoring.headerValue' must be given", err)
    _, err = config.validate({ monitoring = { headerKey = "k", headerValue = "v" } })
    assert.equal("config key 'monitoring.url' must be given", err)
  end)
end)
