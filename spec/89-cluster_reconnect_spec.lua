-- Reconnection (lua/moonstream/cluster, csrc/redis.c): Redis killed with -9
-- and restarted on the same port (AOF, fsync on every write) while two nodes
-- run. Each node reconnects by itself, resubscribes its channels and writes
-- its presence again (including users who came or went while Redis was
-- away), and reads the records its clients follow again (a change made
-- before its subscriber was back): presence queries on every node answer for
-- every user again, and events and record changes cross nodes again. Every wait polls a real
-- signal with a deadline.
local json = require "moonstream.json"
local core = require "moonstream.core"
local H = require "spec.support.helpers"
local C = require "spec.support.cluster"

local DEADLINE_MS = 30000 -- for a shared, slow machine; reached only when something is wrong

describe("a node after Redis was killed and restarted", function()
  local redis, a, b
  C.two_nodes(function(r) return { cluster = { redis = r.url } } end, function(r, x, y) redis, a, b = r, x, y end)

  -- Runs both nodes' loops until done() is true.
  local function both_until(done, what)
    local deadline = core.now() + DEADLINE_MS
    while not done() do
      assert(core.now() < deadline, "timed out waiting for " .. what)
      a.loop:run_once(5)
      b.loop:run_once(5)
    end
  end

  local function presence_of(t, names)
    local _, r = t:api({ { topic = "presence", action = "query", names = names } })
    return r.body[1].users
  end

  local function login(t, name)
    local c = H.realtime_client(t)
    c.login(name)
    return c
  end

  local function numsub(channel)
    local r = redis:command({ "PUBSUB", "NUMSUB", channel })
    return r and r[2]
  end

  it("answers presence for every user, and passes events and record changes, again", function()
    local ann, bob = login(a, "ann"), login(b, "bob")
    local everyone = { ann = true, bob = true }
    both_until(function()
      return H.canonical_json(presence_of(a, { "ann", "bob" })) == H.canonical_json(everyone)
        and H.canonical_json(presence_of(b, { "ann", "bob" })) == H.canonical_json(everyone)
    end, "both nodes to see ann and bob")
    -- a subscribes an event and a record (b writes to both later)
    ann.send({ topic = 4, action = 3, names = { "s89/ev" }, correlationId = "0" })
    ann.expect({ isAck = true })
    ann.send({ topic = 5, action = 23, names = { "s89/rec" }, correlationId = "1" })
    ann.expect({ isAck = true })
    ann.expect({ action = 4 })

    redis:kill9()
    both_until(function()
      return not (a.server.cluster.up.commands or b.server.cluster.up.commands)
    end, "both nodes to see Redis gone")
    -- while Redis is away: carol comes on b, dave on a, bob leaves
    local carol, dave = login(b, "carol"), login(a, "dave")
    bob.ws:close_handshake(1000)
    both_until(function() return not b.server.presence:is_online("bob") end, "b to see bob leave")
    redis:restart()
    -- b writes before a's subscriber is back (only b's loop runs): a reads the
    -- record again once it is, so ann still hears version 1
    b:run_until(function() return b.server.cluster.up.records end)
    local _, w = b:api({ { topic = "record", action = "write", recordName = "s89/rec", data = { n = 1 } } })
    assert.is_true(w.body[1].success)

    local want = { ann = true, bob = false, carol = true, dave = true }
    local names = { "ann", "bob", "carol", "dave" }
    both_until(function()
      return H.canonical_json(presence_of(a, names)) == H.canonical_json(want)
        and H.canonical_json(presence_of(b, names)) == H.canonical_json(want)
    end, "every node to answer for every user")
    -- and stays so once both beat again (no node can remove another as dead then)
    both_until(function()
      return redis:command({ "EXISTS", "ms:p:alive:" .. a.server.cluster.id, "ms:p:alive:" .. b.server.cluster.id }) == 2
    end, "both nodes to beat again")
    both_until(function()
      return H.canonical_json(presence_of(a, names)) == H.canonical_json(want)
        and H.canonical_json(presence_of(b, names)) == H.canonical_json(want)
    end, "every node to answer for every user after the beats")

    -- the channels were subscribed again: b's emit and write reach ann on a
    both_until(function() return numsub("ms:c:e:s89/ev") == 1 and numsub("ms:c:r:s89/rec") == 1 end,
      "a to subscribe again")
    local m = ann.expect({ topic = 5, action = 18, name = "s89/rec", version = 1 })
    assert.same({ n = 1 }, json.decode(m.data))
    b:api({ { topic = "event", action = "emit", eventName = "s89/ev", data = { from = "b" } } })
    both_until(function() return b.server.cluster.commands:waiting() == 0 end, "b's publish")
    assert.same({ from = "b" }, json.decode(ann.expect({ topic = 4, action = 2, name = "s89/ev" }).data))
    local _, r = b:api({ { topic = "record", action = "write", recordName = "s89/rec", data = { n = 2 } } })
    assert.is_true(r.body[1].success)
    m = ann.expect({ topic = 5, action = 18, name = "s89/rec", version = 2 })
    assert.same({ n = 2 }, json.decode(m.data))
    -- presence notifications cross again too
    ann.send({ topic = 7, action = 12 })
    ann.expect({ topic = 7, action = 12, isAck = true })
    local eve = login(b, "eve")
    both_until(function() return b.server.cluster.commands:waiting() == 0 end, "b's join")
    ann.expect({ topic = 7, action = 7, name = "eve" })
    for _, c in ipairs({ ann, carol, dave, eve }) do c.ws:close_handshake(1000) end
  end)

  it("writes its presence again when another node removed it as dead", function()
    local ann = login(a, "ann")
    local bob = login(b, "bob")
    both_until(function() return presence_of(b, { "ann" }).ann and presence_of(a, { "bob" }).bob end,
      "both nodes to see ann and bob")
    -- as after an outage longer than DEAD_MS: a's heartbeat key is gone, and b's
    -- next beat removes a with its users
    -- (only b's loop runs here, so a cannot beat in between)
    assert.equal(1, redis:command({ "DEL", "ms:p:alive:" .. a.server.cluster.id }))
    b:run_until(function() return not presence_of(b, { "ann" }).ann end)
    -- a is alive: it notices it was removed and writes itself again
    both_until(function() return presence_of(b, { "ann" }).ann end, "a to come back on b")
    assert.same({ ann = true, bob = true }, presence_of(a, { "ann", "bob" }))
    ann.ws:close_handshake(1000)
    bob.ws:close_handshake(1000)
  end)
end)
