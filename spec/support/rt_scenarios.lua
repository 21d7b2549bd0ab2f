-- Realtime scenarios with the real @deepstream/client (spec/support/node/
-- driver.js through rt_driver.lua), written once and run by the specs
-- (54-56, against an in-process moonstream) and by tests/realtime_compare.lua
-- (against the deepstream reference and bin/moonstream, printing both frame
-- sequences). Each scenario is function(s) with s = { env, drv, tr, p }:
-- env (rt_env.lua), drv (rt_driver.lua), tr = "json" | "binary", p = a
-- prefix that makes names unique per run. Every wait is on something the
-- protocol or the client reports (an acknowledgement, a response, a state),
-- never a sleep.
local assert = require "luassert"
local json = require "moonstream.json"
local D = require "support.rt_driver"

local frame, event = D.frame, D.event

local M = {}

-- Scenario configuration the server needs (rt_env.moonstream config, or the
-- reference's config.yml keys for tests/realtime_compare.lua). The timeouts
-- leave a loaded machine (ASan, shared CPUs) time to answer before them.
M.config = {
  listen_order = { listen = { shuffleProviders = false, responseTimeout = 1000 } },
  listen_rematch = { listen = { rematchInterval = 1100, matchCooldown = 1500 } },
  auth_timer = { realtime = { unauthenticatedClientTimeout = 1000 } },
}

local function connect(s, c, extra)
  local args = { c = c, url = s.env.url(s.tr), json = s.tr == "json" }
  for k, v in pairs(extra or {}) do args[k] = v end
  return s.drv:call("connect", args)
end
M.connect = connect

local function read(s, name)
  local body = s.env.api({ { topic = "record", action = "read", recordName = name } })
  return body.body[1]
end

local function state(s, c, name)
  return s.drv:call("record.state", { c = c, name = name })
end

-- Item 1: a connection drops and comes back; the client re-subscribes the
-- records it holds with SUBSCRIBEANDHEAD and reconciles each: the server's
-- value when the versions differ; its merge strategy (REMOTE_WINS by default,
-- LOCAL_WINS for one) when it changed the record offline; a record deleted
-- meanwhile comes back as the client holds it (CREATEANDUPDATE).
function M.resync(s)
  local drv, p = s.drv, s.p
  connect(s, "a", { relay = true })
  local names = { srv = p .. "srv", off = p .. "off", lw = p .. "lw", same = p .. "same", gone = p .. "gone" }
  for key, name in pairs(names) do
    drv:call("record.get", { c = "a", name = name, merge = key == "lw" and "LOCAL_WINS" or nil })
    drv:call("record.set", { c = "a", name = name, data = { v = 1 }, ack = true })
  end
  drv:mark()
  drv:call("relay.cut", { c = "a" })
  drv:wait(event("state", "a", { state = "RECONNECTING" }))
  drv:call("record.set", { c = "a", name = names.off, data = { v = "offline" } })
  drv:call("record.set", { c = "a", name = names.lw, data = { v = "offline" } })
  s.env.api({ { topic = "record", action = "write", recordName = names.srv, data = { v = "server" } },
    { topic = "record", action = "delete", recordName = names.gone } })
  drv:mark()
  drv:call("relay.restore", { c = "a" })
  drv:wait(event("state", "a", { state = "OPEN" }))
  local request = drv:wait(frame("a", ">", { topic = "RECORD", action = "SUBSCRIBEANDHEAD" }))
  local bulk = drv:wait(frame("a", "<", { topic = "RECORD", action = "HEAD_RESPONSE_BULK" }))
  assert.same({ [names.srv] = 2, [names.off] = 1, [names.lw] = 1, [names.same] = 1 }, bulk.msg.versions)
  -- the versions come in the order asked: the client reads the records in that order
  local expected, reads = {}, {}
  for _, name in ipairs(request.msg.names) do
    if name ~= names.gone then expected[#expected + 1] = name end
  end
  for _ = 1, #expected do
    reads[#reads + 1] = drv:wait(frame("a", ">", { topic = "RECORD", action = "READ" })).msg.name
  end
  assert.same(expected, reads)
  drv:wait(frame("a", "<", { topic = "RECORD", action = "SUBSCRIBEANDHEAD" }), "the SUBSCRIBEANDHEAD ack")
  drv:wait(frame("a", "<", { topic = "RECORD", action = "HEAD_RESPONSE", name = names.gone, version = -1 }))
  for _, key in ipairs({ "srv", "off", "lw", "same" }) do
    drv:wait(frame("a", "<", { topic = "RECORD", action = "READ_RESPONSE", name = names[key] }))
  end
  -- LOCAL_WINS: the client writes its value back with the version it holds,
  -- is told VERSION_EXISTS and keeps its own value (the client's logic)
  drv:wait(frame("a", ">", { topic = "RECORD", action = "UPDATE", name = names.lw, data = { v = "offline" } }))
  drv:wait(frame("a", "<", { topic = "RECORD", action = "VERSION_EXISTS", name = names.lw, version = 1 }))
  drv:wait(frame("a", ">", { topic = "RECORD", action = "CREATEANDUPDATE", name = names.gone }))
  -- a round trip on the same connection: everything before it is processed
  assert.equal(1, drv:call("record.head", { c = "a", name = names.gone }))
  assert.same({ version = 2, data = { v = "server" } }, { version = state(s, "a", names.srv).version, data = state(s, "a", names.srv).data })
  assert.same({ v = 1 }, state(s, "a", names.off).data)
  assert.same({ v = "offline" }, state(s, "a", names.lw).data)
  assert.same({ v = 1 }, state(s, "a", names.same).data)
  assert.same({ v = 1 }, state(s, "a", names.gone).data)
  assert.same({ success = true, version = 2, data = { v = "server" } }, read(s, names.srv))
  assert.same({ success = true, version = 1, data = { v = 1 } }, read(s, names.off))
  assert.same({ success = true, version = 1, data = { v = 1 } }, read(s, names.lw))
  assert.same({ success = true, version = 1, data = { v = 1 } }, read(s, names.gone))
  -- subscribed again: a change made over HTTP reaches the client
  drv:mark()
  s.env.api({ { topic = "record", action = "write", recordName = names.same, data = { v = 2 } } })
  assert.same({ v = 2 }, drv:wait(event("record", "a", { name = names.same })).data)
end

-- Item 1, the other subscribe actions: a client in recordReadOnlyMode
-- subscribes with SUBSCRIBEANDREAD, which does not create a missing record
-- (READ_RESPONSE version -1, {}).
function M.read_only(s)
  local drv, name = s.drv, s.p .. "ro"
  connect(s, "r", { options = { recordReadOnlyMode = true } })
  local got = drv:call("record.get", { c = "r", name = name })
  assert.same({ version = -1, data = {} }, got)
  drv:wait(frame("r", ">", { topic = "RECORD", action = "SUBSCRIBEANDREAD" }))
  drv:wait(frame("r", "<", { topic = "RECORD", action = "SUBSCRIBEANDREAD", isAck = s.ack_flag }))
  assert.equal(-1, drv:call("record.head", { c = "r", name = name }))
end

-- Item 1, writes without a subscription (record.setData): CREATEANDUPDATE,
-- CREATEANDPATCH and ERASE (a path without data), to a stored record and to
-- a missing one.
function M.set_data(s)
  local drv, name, none = s.drv, s.p .. "sd", s.p .. "sd-none"
  connect(s, "w")
  connect(s, "sub")
  drv:call("record.get", { c = "sub", name = name })
  assert.same({ ok = true }, drv:call("record.setData", { c = "w", name = name, data = { a = 1, b = { c = 2 } } }))
  assert.same({ ok = true }, drv:call("record.setData", { c = "w", name = name, path = "b.d", data = 3 }))
  assert.same({ ok = true }, drv:call("record.setData", { c = "w", name = name, path = "a" }))
  drv:wait(frame("sub", "<", { topic = "RECORD", name = name, version = 3 }))
  assert.same({ b = { c = 2, d = 3 } }, state(s, "sub", name).data)
  assert.same({ success = true, version = 3, data = { b = { c = 2, d = 3 } } }, read(s, name))
  -- with a write acknowledgement deepstream upserts: the ERASE creates the
  -- missing record ({} at version 1)
  assert.same({ ok = true }, drv:call("record.setData", { c = "w", name = none, path = "a" }))
  assert.same({ success = true, version = 1, data = {} }, read(s, none))
  assert.same({ ok = true }, drv:call("record.setData", { c = "w", name = none, path = "x.y", data = 1 }))
  assert.same({ success = true, version = 2, data = { x = { y = 1 } } }, read(s, none))
end

-- Item 4: notify (POST /api `record notify` and the client's NOTIFY) for a
-- record that is no longer stored tells its subscribers it was deleted; for
-- a stored one they get its current state.
function M.notify(s)
  local drv, p = s.drv, s.p
  connect(s, "r", { options = { recordReadOnlyMode = true } })
  connect(s, "n")
  local http_gone, rt_gone, kept = p .. "gone-http", p .. "gone-rt", p .. "kept"
  for _, name in ipairs({ http_gone, rt_gone }) do drv:call("record.get", { c = "r", name = name }) end
  s.env.api({ { topic = "record", action = "write", recordName = kept, data = { k = 1 } } })
  drv:call("record.get", { c = "r", name = kept })
  drv:mark()
  s.env.api({ { topic = "record", action = "notify", recordNames = { http_gone } } })
  drv:wait(frame("r", "<", { topic = "RECORD", action = "DELETED", name = http_gone }))
  drv:wait(event("deleted", "r", { name = http_gone }))
  drv:call("record.notify", { c = "n", names = { rt_gone } })
  drv:wait(frame("n", "<", { topic = "RECORD", action = "NOTIFY", isAck = s.ack_flag }))
  drv:wait(event("deleted", "r", { name = rt_gone }))
  s.env.api({ { topic = "record", action = "notify", recordNames = { kept } } })
  local m = drv:wait(frame("r", "<", { topic = "RECORD", action = "UPDATE", name = kept }))
  assert.same({ k = 1 }, m.msg.data)
end

-- Item 2 (listen.shuffleProviders false, listen.responseTimeout): the
-- providers are asked in the order they registered, the next one only after
-- a reject or a timeout (LISTEN_RESPONSE_TIMEOUT to the silent one). A
-- record subscriber learns that its record has a provider, and when it stops.
function M.listen_order(s)
  local drv, p = s.drv, s.p
  local pattern = "^" .. p .. "lo/.*"
  for _, c in ipairs({ "p1", "p2", "p3" }) do
    connect(s, c)
    drv:call("event.listen", { c = c, pattern = pattern, mode = "ask" })
    drv:wait(frame(c, "<", { topic = "EVENT", action = "LISTEN", name = pattern }), "the LISTEN ack of " .. c)
  end
  connect(s, "sub")
  local name = p .. "lo/a"
  drv:call("event.subscribe", { c = "sub", name = name })
  drv:wait(event("found", "p1", { sub = name }))
  assert.is_nil(drv:seen(event("found", "p2", { sub = name })))
  drv:call("listen.respond", { c = "p1", topic = "event", sub = name, accept = false })
  drv:wait(event("found", "p2", { sub = name }))
  -- p2 says nothing: after responseTimeout it is told so and p3 is asked
  drv:wait(frame("p2", "<", { topic = "EVENT", action = "LISTEN_RESPONSE_TIMEOUT", subscription = name }))
  drv:wait(event("found", "p3", { sub = name }))
  drv:call("listen.respond", { c = "p3", topic = "event", sub = name, accept = true })
  drv:call("presence.getAll", { c = "p3" }) -- round trip: the accept is processed
  drv:call("event.unsubscribe", { c = "sub", name = name })
  drv:wait(event("stop", "p3", { sub = name }))
  for _, c in ipairs({ "p1", "p2" }) do assert.is_nil(drv:seen(event("stop", c, { sub = name }))) end
end

-- Item 2 for records: the accepting provider's subscribers see hasProvider.
function M.listen_record_provider(s)
  local drv, p = s.drv, s.p
  local pattern = "^" .. p .. "lr/.*"
  connect(s, "prov")
  drv:call("record.listen", { c = "prov", pattern = pattern, mode = "accept" })
  drv:wait(frame("prov", "<", { topic = "RECORD", action = "LISTEN", name = pattern }))
  connect(s, "sub")
  local name = p .. "lr/1"
  drv:call("record.get", { c = "sub", name = name })
  drv:wait(event("found", "prov", { sub = name }))
  drv:wait(frame("sub", "<", { topic = "RECORD", action = "SUBSCRIPTION_HAS_PROVIDER", name = name }))
  assert.is_true(drv:wait(event("provider", "sub", { name = name })).has)
  drv:call("record.unlisten", { c = "prov", pattern = pattern })
  drv:wait(frame("sub", "<", { topic = "RECORD", action = "SUBSCRIPTION_HAS_NO_PROVIDER", name = name }))
  assert.is_false(drv:wait(event("provider", "sub", { name = name, has = false })).has)
end

-- Item 2 (listen.shuffleProviders true, the default): which of three
-- providers is asked first varies; each is first for some name.
function M.listen_shuffle(s, rounds)
  local drv, p = s.drv, s.p
  local pattern = "^" .. p .. "ls/.*"
  local providers = { "p1", "p2", "p3" }
  for _, c in ipairs(providers) do
    connect(s, c)
    drv:call("event.listen", { c = c, pattern = pattern, mode = "reject" })
    drv:wait(frame(c, "<", { topic = "EVENT", action = "LISTEN", name = pattern }))
  end
  connect(s, "sub")
  local first = {}
  for i = 1, rounds or 45 do
    local name = p .. "ls/" .. i
    drv:call("event.subscribe", { c = "sub", name = name })
    -- everyone rejects: all three are asked, one after the other
    local asked = {}
    for _ = 1, 3 do
      local e = drv:wait(function(e) return e.ev == "found" and e.sub == name end, "a provider asked about " .. name)
      asked[#asked + 1] = e.c
    end
    first[asked[1]] = (first[asked[1]] or 0) + 1
    table.sort(asked)
    assert.same(providers, asked)
  end
  for _, c in ipairs(providers) do assert.is_true((first[c] or 0) > 0, c .. " was never asked first") end
end

-- Item 2 (listen.rematchInterval, listen.matchCooldown): a name whose
-- provider rejected is offered again by a later sweep, not before the
-- cooldown has passed since the failed search.
function M.listen_rematch(s, cfg)
  local drv, p = s.drv, s.p
  local pattern = "^" .. p .. "lm/.*"
  connect(s, "prov")
  drv:call("event.listen", { c = "prov", pattern = pattern, mode = "reject" })
  drv:wait(frame("prov", "<", { topic = "EVENT", action = "LISTEN", name = pattern }))
  connect(s, "sub")
  local name = p .. "lm/1"
  drv:call("event.subscribe", { c = "sub", name = name })
  drv:wait(event("found", "prov", { sub = name }))
  drv:wait(frame("prov", ">", { topic = "EVENT", action = "LISTEN_REJECT", subscription = name }))
  local rejected = require("socket").gettime()
  drv:wait(event("found", "prov", { sub = name }), "the rematch")
  local waited = (require("socket").gettime() - rejected) * 1000
  local l = cfg.listen
  assert.is_true(waited >= math.max(l.rematchInterval, l.matchCooldown) - 50,
    "asked again after " .. waited .. " ms")
end

-- Item 3: a client whose login was refused and stays connected is not closed
-- by the unauthenticated-client timeout (deepstream clears it at the first
-- answer to a login). `bad`: auth data the server refuses. A client that
-- never logs in, connected after it, shows the timeout has passed.
function M.auth_timer(s, bad, good)
  local drv = s.drv
  connect(s, "refused", { nologin = true })
  local r = drv:call("login", { c = "refused", auth = bad })
  assert.is_false(r.ok)
  connect(s, "idle", { nologin = true })
  drv:wait(frame("idle", "<", { topic = "CONNECTION", action = "AUTHENTICATION_TIMEOUT" }))
  assert.is_nil(drv:seen(frame("refused", "<", { topic = "CONNECTION", action = "AUTHENTICATION_TIMEOUT" })))
  r = drv:call("login", { c = "refused", auth = good })
  assert.is_true(r.ok)
  assert.is_nil(drv:seen(event("state", "refused", { state = "RECONNECTING" })))
end

-- The server restarts while clients are connected: records held and changed
-- offline, an event subscription, an RPC provider, a presence subscription,
-- record and event listens. After the restart every client is back.
function M.restart(s)
  local drv, p, env = s.drv, s.p, s.env
  connect(s, "a"); connect(s, "b"); connect(s, "c")
  local srv, off, same = p .. "r/srv", p .. "r/off", p .. "r/same"
  for _, name in ipairs({ srv, off, same }) do
    drv:call("record.get", { c = "a", name = name })
    drv:call("record.set", { c = "a", name = name, data = { v = 1 }, ack = true })
  end
  drv:call("event.subscribe", { c = "a", name = p .. "ev" })
  drv:call("presence.subscribe", { c = "a" })
  drv:call("rpc.provide", { c = "b", name = p .. "rpc" })
  drv:call("record.listen", { c = "b", pattern = p .. "lst/.*", mode = "accept" })
  drv:call("event.listen", { c = "a", pattern = p .. "evl/.*", mode = "accept" })
  for _, c in ipairs({ "a", "b" }) do drv:call("presence.getAll", { c = c }) end
  drv:call("record.get", { c = "c", name = p .. "lst/1" })
  drv:wait(event("provider", "c", { name = p .. "lst/1", has = true }))
  drv:call("event.subscribe", { c = "c", name = p .. "evl/1" })
  drv:wait(event("found", "a", { sub = p .. "evl/1" }))
  drv:mark()
  local wrote = false -- a server that keeps no data while stopped cannot take the offline write
  env.restart(function(api)
    for _, c in ipairs({ "a", "b", "c" }) do drv:wait(event("state", c, { state = "RECONNECTING" })) end
    drv:call("record.set", { c = "a", name = off, data = { v = "offline" } })
    if api then
      api({ { topic = "record", action = "write", recordName = srv, data = { v = "server" } } })
      wrote = true
    end
  end)
  for _, c in ipairs({ "a", "b", "c" }) do drv:wait(event("state", c, { state = "OPEN" })) end
  -- records: re-subscribed and reconciled
  for _, name in ipairs({ srv, off, same }) do
    drv:wait(frame("a", "<", { topic = "RECORD", action = "READ_RESPONSE", name = name }))
  end
  drv:call("record.head", { c = "a", name = same })
  assert.same(wrote and { v = "server" } or { v = 1 }, state(s, "a", srv).data)
  assert.same({ v = 1 }, state(s, "a", off).data)
  -- listens: asked again, accepted again
  drv:wait(event("found", "b", { sub = p .. "lst/1" }))
  drv:wait(event("found", "a", { sub = p .. "evl/1" }))
  drv:wait(frame("c", "<", { topic = "RECORD", action = "SUBSCRIPTION_HAS_PROVIDER", name = p .. "lst/1" }))
  -- RPC provider and event subscription are back (their acks came first)
  drv:wait(frame("b", "<", { topic = "RPC", action = "PROVIDE" }))
  drv:wait(frame("a", "<", { topic = "EVENT", action = "SUBSCRIBE" }))
  drv:wait(frame("a", "<", { topic = "PRESENCE", action = "SUBSCRIBE_ALL" }))
  local answer = drv:call("rpc.make", { c = "c", name = p .. "rpc", data = 7 })
  assert.same({ by = "b", data = 7 }, answer)
  drv:mark()
  env.api({ { topic = "event", action = "emit", eventName = p .. "ev", data = { n = 1 } } })
  assert.same({ n = 1 }, drv:wait(event("event", "a", { name = p .. "ev" })).data)
  env.api({ { topic = "record", action = "write", recordName = same, data = { v = 2 } } })
  assert.same({ v = 2 }, drv:wait(event("record", "a", { name = same })).data)
  connect(s, "d")
  drv:wait(event("presence", "a", { user = "d", online = true }))
  local all = drv:call("presence.getAll", { c = "a" })
  table.sort(all)
  assert.same({ "b", "c", "d" }, all)
end

return M
