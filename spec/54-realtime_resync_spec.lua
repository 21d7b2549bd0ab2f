-- Reconnect resync (SUBSCRIBEANDHEAD and the record actions the client
-- sends), notify of records no longer stored, and the unauthenticated-client
-- timer after a refused login, with the real
-- @deepstream/client (spec/support/rt_scenarios.lua) in both transports.
local H = require "spec.support.helpers"
local E = require "support.rt_env"
local S = require "support.rt_scenarios"

for _, tr in ipairs({ "json", "binary" }) do
  describe("realtime resync with the real client (" .. tr .. ")", function()
    it("re-subscribes held records after a reconnect: server value, merge strategy, deleted records", function()
      E.run(nil, tr, S.resync)
    end)

    it("subscribes without creating in recordReadOnlyMode (SUBSCRIBEANDREAD)", function()
      E.run(nil, tr, S.read_only)
    end)

    it("writes without a subscription (setData): create-and-update, create-and-patch, erase, upsert with an ack", function()
      E.run(nil, tr, S.set_data)
    end)

    it("tells subscribers a notified record that is no longer stored was deleted (HTTP and NOTIFY)", function()
      E.run(nil, tr, S.notify)
    end)

    it("keeps a client whose login was refused past the unauthenticated-client timeout", function()
      local dir = H.tmpdir()
      local auth = H.write_file(dir .. "/auth.lua",
        "return function(a) if a.password ~= 'right' then return false end return true, a.username end")
      local cfg = { auth = { { type = "lua", options = { path = auth } } } }
      for k, v in pairs(S.config.auth_timer) do cfg[k] = v end
      E.run(cfg, tr, S.auth_timer, { username = "ann", password = "wrong" }, { username = "ann", password = "right" })
      H.rmdir(dir)
    end)
  end)
end

-- The record actions deepstream answers that the 7.0.5 client does not send
-- (SUBSCRIBE), and per-name permission denials in bulk record actions, frame
-- by frame with the raw client.
describe("record actions, raw frames", function()
  local t
  after_each(function() if t then t:stop() end t = nil end)

  it("SUBSCRIBE: subscriptions and one ack, MULTIPLE_SUBSCRIPTIONS for a repeat", function()
    t = H.start()
    local a = H.realtime_client(t)
    a.login("ann")
    a.send({ topic = 5, action = 25, names = { "sub/1", "sub/2" }, correlationId = "0" })
    a.expect({ topic = 5, action = 25, correlationId = "0", isAck = true })
    a.send({ topic = 5, action = 25, names = { "sub/1" }, correlationId = "1" })
    a.expect({ topic = 5, action = 117, originalAction = 25, name = "sub/1" })
    a.expect({ topic = 5, action = 25, correlationId = "1", isAck = true })
    assert.is_nil(t.server.records:get("sub/1")) -- subscribing creates nothing
    t:api({ { topic = "record", action = "write", recordName = "sub/2", data = { x = 1 } } })
    a.expect({ topic = 5, action = 18, name = "sub/2", version = 1 })
  end)

  it("SUBSCRIBEANDHEAD and NOTIFY deny names one by one and go on with the rest", function()
    t = H.start({ permissions = { record = {
      ["*"] = { create = true, write = true, read = true, notify = true },
      ["secret/*"] = { read = false, notify = false },
    } } })
    local a = H.realtime_client(t)
    a.login("ann")
    t:api({ { topic = "record", action = "write", recordName = "open/1", data = { x = 1 } } })
    a.send({ topic = 5, action = 21, names = { "secret/1", "open/1", "open/none" }, correlationId = "0" })
    a.expect({ topic = 5, action = 115, originalAction = 21, name = "secret/1", isError = true, correlationId = "0" })
    local bulk = a.expect({ topic = 5, action = 8 })
    assert.same({ ["open/1"] = 1 }, bulk.versions)
    a.expect({ topic = 5, action = 21, correlationId = "0", isAck = true })
    a.expect({ topic = 5, action = 6, name = "open/none", version = -1 })
    a.send({ topic = 5, action = 21, names = { "secret/2" }, correlationId = "1" })
    a.expect({ topic = 5, action = 115, name = "secret/2" })
    assert.same({}, a.drain()) -- nothing else: no bulk answer, no ack
    a.send({ topic = 5, action = 2, names = { "secret/1", "open/none" }, correlationId = "n" })
    a.expect({ topic = 5, action = 115, originalAction = 2, name = "secret/1", correlationId = "n" })
    local m = a.expect({ topic = 5, action = 13, name = "open/none" }) -- subscribed above, not stored: DELETED
    assert.is_nil(m.version)
    m = a.expect({ topic = 5, action = 2, correlationId = "n", isAck = true })
    assert.same({ "open/none" }, m.names)
  end)
end)
