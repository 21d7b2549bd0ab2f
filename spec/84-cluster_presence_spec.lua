-- Presence across nodes (lua/moonstream/cluster/presence.lua): queries on
-- any node answer for users on every node, joins and leaves cross nodes, a
-- user on two nodes is online once; a node killed with -9 is removed with
-- its users within a few seconds (heartbeats), a graceful stop at once.
local H = require "spec.support.helpers"
local C = require "spec.support.cluster"

local function presence_of(t, names)
  local _, r = t:api({ { topic = "presence", action = "query", names = names } })
  return r.body[1].users
end

describe("presence across nodes", function()
  local redis, dir
  setup(function()
    redis = C.redis()
    dir = H.tmpdir()
  end)
  teardown(function()
    redis:stop()
    H.rmdir(dir)
  end)

  it("answers for users on every node, once, with joins and leaves across nodes", function()
    local cfg = { cluster = { redis = redis.url } }
    local a, b = H.start(cfg), H.start(cfg)
    finally(function() a:stop(); b:stop() end) -- also when an assertion fails: no server outlives its test
    local watcher = H.realtime_client(a)
    watcher.login("wendy")
    watcher.send({ topic = 7, action = 12 })
    watcher.expect({ topic = 7, action = 12, isAck = true })
    local ann_b = H.realtime_client(b)
    ann_b.login("ann")
    b.loop:run_once(10) -- b publishes the join
    watcher.expect({ topic = 7, action = 7, name = "ann" })
    -- a second connection of ann, on a: online once, nothing new announced
    local ann_a = H.realtime_client(a)
    ann_a.login("ann")
    assert.same({}, watcher.drain())
    assert.same({ ann = true, wendy = true, dave = false }, presence_of(b, { "ann", "wendy", "dave" }))
    local _, r = a:api({ { topic = "presence", action = "query" } })
    table.sort(r.body[1].users)
    assert.same({ "ann", "wendy" }, r.body[1].users)
    ann_a.ws:close_handshake(1000)
    assert.same({}, watcher.drain(), "ann is still on b")
    ann_b.ws:close_handshake(1000)
    for _ = 1, 20 do b.loop:run_once(5) end -- b sees the close and publishes the leave
    watcher.expect({ topic = 7, action = 9, name = "ann" })
    assert.same({ ann = false }, presence_of(a, { "ann" }))
  end)

  it("removes a node killed with -9 and its users within a few seconds; a stopped one at once", function()
    local a = H.start({ cluster = { redis = redis.url } })
    finally(function() a:stop() end)
    local config = H.write_file(dir .. "/node.lua", string.format(
      'return { storage = { path = %q }, cluster = { redis = %q } }', dir .. "/data", redis.url))
    local watcher = H.realtime_client(a)
    watcher.login("wendy")
    watcher.send({ topic = 7, action = 12 })
    watcher.expect({ topic = 7, action = 12, isAck = true })
    for _, how in ipairs({ "KILL", "TERM" }) do
      local node = C.node(config, "spec84-" .. how)
      local remote = { loop = a.loop, server = { port = function() return node.port end } }
      local zed = H.realtime_client(remote)
      zed.login("zed-" .. how)
      watcher.expect({ topic = 7, action = 7, name = "zed-" .. how })
      assert.same({ ["zed-" .. how] = true }, presence_of(a, { "zed-" .. how }))
      C.stop_node(node, how)
      -- KILL: a's heartbeat finds the node's key expired (DEAD_MS); TERM: the node said so
      watcher.expect({ topic = 7, action = 9, name = "zed-" .. how })
      assert.same({ ["zed-" .. how] = false }, presence_of(a, { "zed-" .. how }))
    end
  end)

  -- Snapshot replies and change messages come on two connections, in either
  -- order: neither may undo the other (the sequence numbers of presence.lua).
  describe("a node's snapshot and its messages", function()
    local cluster_presence = require "moonstream.cluster.presence"
    local function presence()
      local sent = {}
      local commands = { command = function(_, args, cb) sent[#sent + 1] = { args = args, cb = cb }; return true end }
      local loop = { timer = function() return { cancel = function() end } end }
      local p = cluster_presence.new({ loop = loop, commands = commands, id = "a", registry = {} })
      local heard = {}
      p:subscribe(function(user, joined) heard[#heard + 1] = (joined and "+" or "-") .. user end)
      return p, sent, heard
    end
    -- the callback of the last snapshot read sent for node
    local function snapshot_read(sent)
      for i = #sent, 1, -1 do
        if sent[i].args[1] == "EVAL" and sent[i].args[4]:match("^ms:p:seq:") then return table.remove(sent, i) end
      end
    end

    it("reads again a snapshot older than a message already applied, losing no user", function()
      local p, sent, heard = presence()
      p:message("r b")
      local first = snapshot_read(sent)
      p:message("+ b 6 zoe")              -- after the read in Redis, before its reply here
      first.cb({ 5, { "xan", "yul" } })   -- the older snapshot: read again
      local again = snapshot_read(sent)
      assert.is_table(again, "a second read")
      again.cb({ 6, { "xan", "yul", "zoe" } })
      assert.same({ xan = true, yul = true, zoe = true }, p:query({ "xan", "yul", "zoe" }))
      assert.same({ "+zoe", "+xan", "+yul" }, heard)
    end)

    it("drops a message the snapshot already holds", function()
      local p, sent, heard = presence()
      p:message("r b")
      snapshot_read(sent).cb({ 7, { "xan" } })
      p:message("+ b 6 yul")              -- yul joined, then left (7): the snapshot knows
      p:message("- b 7 xan")              -- not newer than the snapshot either
      assert.same({ xan = true, yul = false }, p:query({ "xan", "yul" }))
      p:message("- b 8 xan")
      assert.same({ xan = false }, p:query({ "xan" }))
      assert.same({ "+xan", "-xan" }, heard)
    end)
  end)
end)
