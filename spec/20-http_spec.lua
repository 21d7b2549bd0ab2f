-- The HTTP API end to end: an in-process server on port 0, a real HTTP
-- client (libcurl) on the same loop. The conformance suite covers every text
-- of the contract; these specs cover what it cannot see from outside:
-- group commit, waiting handlers, listeners, presence, shutdown, restarts.
local H = require "spec.support.helpers"
local json = require "moonstream.json"

local function cmd_write(name, data, extra)
  local c = { topic = "record", action = "write", recordName = name, data = data }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

describe("moonstream HTTP API", function()
  local t

  after_each(function()
    if t then t:stop() end
    t = nil
  end)

  describe("transport", function()
    before_each(function() t = H.start() end)

    it("answers the health check with 200 and an empty body", function()
      local res = t:request({ method = "GET", path = "/health-check" })
      assert.equal(200, res.status)
      assert.equal("", res.body)
    end)

    it("answers 405 with an Allow header for other methods", function()
      local res = t:request({ method = "PUT", path = "/api", body = "{}" })
      assert.equal(405, res.status)
      assert.equal("GET, POST, OPTIONS", res.headers.allow)
    end)

    it("answers 415 for a non-JSON content type", function()
      local res = t:request({ body = "{}", headers = { ["Content-Type"] = "text/plain" } })
      assert.equal(415, res.status)
      assert.equal('Invalid "Content-Type" header. Supported media types: "application/json"', res.body)
    end)

    it("answers 400 with the byte offset for broken JSON", function()
      local res = t:request({ body = '{"body": [' })
      assert.equal(400, res.status)
      assert.matches("^Failed to parse body of request: .*byte %d+", res.body)
    end)

    it("keeps connections alive across requests", function()
      local a = t:request({ method = "GET", path = "/health-check" })
      local b = t:request({ method = "GET", path = "/health-check" })
      assert.equal(200, a.status)
      assert.equal(200, b.status)
      assert.equal(1, t.server.http:stats().connections)
    end)
  end)

  describe("body limit", function()
    before_each(function() t = H.start({ maxMessageSize = 1024 }) end)

    it("accepts exactly maxMessageSize bytes and answers 413 above it", function()
      local function body_of(size)
        local head = '{"body":[{"topic":"event","action":"emit","eventName":"x"}],"pad":"'
        return head .. string.rep("a", size - #head - 2) .. '"}'
      end
      assert.equal(200, t:request({ body = body_of(1024) }).status)
      local res = t:request({ body = body_of(1025) })
      assert.equal(413, res.status)
      assert.equal("Failed to parse body of request: request entity too large", res.body)
    end)

    it("answers 413 for a chunked body that passes the limit while streaming", function()
      local res = t:request({ body = string.rep(" ", 5000) .. "{}", headers = { ["Transfer-Encoding"] = "chunked" } })
      assert.equal(413, res.status)
    end)
  end)

  describe("records", function()
    before_each(function() t = H.start() end)

    it("round-trips every JSON type exactly, [] and {} included", function()
      local text = '{"a":[],"b":{},"n":9007199254740991,"f":0.30000000000000004,"s":"h\\u00e9\\n","z":null,"t":[true,false,null]}'
      local res = t:request({ body = '{"body":[{"topic":"record","action":"write","recordName":"exact","data":' .. text .. '}]}' })
      assert.equal(200, res.status)
      local _, body = t:api({ { topic = "record", action = "read", recordName = "exact" } })
      assert.same(json.decode(text), body.body[1].data)
      assert.equal(1, body.body[1].version)
      local again = t:request({ body = '{"body":[{"topic":"record","action":"read","recordName":"exact"}]}' })
      assert.matches('"a":%[%]', again.body)
      assert.matches('"b":{}', again.body)
      assert.matches("9007199254740991", again.body, 1, true)
      assert.matches("0.30000000000000004", again.body, 1, true)
    end)

    it("runs the commands of a batch in order", function()
      local _, body = t:api({
        cmd_write("seq", { n = 1 }),
        cmd_write("seq", { n = 2 }, { version = 2 }),
        cmd_write("seq", 3, { path = "m.x[1]" }),
        { topic = "record", action = "read", recordName = "seq" },
        { topic = "record", action = "delete", recordName = "seq" },
        { topic = "record", action = "head", recordName = "seq" },
      })
      assert.equal("SUCCESS", body.result)
      assert.equal(3, body.body[4].version)
      assert.same({ n = 2, m = { x = json.array({ json.null, 3 }) } }, body.body[4].data)
      assert.equal(-1, body.body[6].version)
    end)

    it("shares one fsync between writes that arrive together (group commit)", function()
      local reqs = {}
      for i = 1, 20 do
        reqs[i] = { body = json.encode({ body = { cmd_write("g/" .. i, { i = i }) } }) }
      end
      local before = t.server.records:syncs()
      local results = t:request_all(reqs)
      for i = 1, 20 do
        assert.equal(200, results[i].status)
        assert.equal("SUCCESS", json.decode(results[i].body).result)
      end
      local syncs = t.server.records:syncs() - before
      assert.is_true(syncs >= 1)
      assert.is_true(syncs < 20, "20 concurrent writes took " .. syncs .. " syncs")
    end)

    it("keeps acknowledged writes across a restart", function()
      t:api({ cmd_write("durable", { kept = true }) })
      local dir = t.server.config.storage.path
      t.server:close()
      local moonstream = require "moonstream"
      local again = assert(moonstream.new({ port = 0, logLevel = "error", storage = { path = dir } }))
      assert(again:listen())
      local version, text = again.records:get("durable")
      again:close()
      again.loop:close()
      assert.equal(1, version)
      assert.equal('{"kept":true}', text)
    end)

    it("keeps records named by storageExclusionPrefixes in memory only", function()
      t:stop()
      t = H.start({ storageExclusionPrefixes = { "tmp/" } })
      local _, body = t:api({ cmd_write("tmp/a", { x = 1 }), { topic = "record", action = "read", recordName = "tmp/a" } })
      assert.equal("SUCCESS", body.result)
      assert.is_nil(t.server.store:get("r/tmp/a"))
    end)
  end)

  describe("rpc", function()
    local order
    before_each(function()
      order = {}
      t = H.start({ rpc = { responseTimeout = 300 } }, function(server)
        server:rpc("add-two", function(data) return data.numA + data.numB end)
        server:rpc("fails", function() error("boom") end)
        server:rpc("refuses", function() return nil, "not today" end)
        server:rpc("who", function(_, ctx) return ctx.user.id end)
        server:rpc("later", function(data, ctx)
          ctx.sleep(data.ms)
          order[#order + 1] = "later"
          return "slept " .. data.ms
        end)
        server:rpc("reads", function(data, ctx)
          local rec, version = ctx.records.read(data)
          return { rec = rec, version = version }
        end)
        server:rpc("forever", function(_, ctx) ctx.await(function() end) end)
      end)
    end)

    it("returns values, errors without file names, and nil, err", function()
      local _, body = t:api({
        { topic = "rpc", action = "make", rpcName = "add-two", data = { numA = 1, numB = 2 } },
        { topic = "rpc", action = "make", rpcName = "fails" },
        { topic = "rpc", action = "make", rpcName = "refuses" },
        { topic = "rpc", action = "make", rpcName = "who" },
        { topic = "rpc", action = "make", rpcName = "missing" },
      })
      assert.equal("PARTIAL_SUCCESS", body.result)
      assert.equal(3, body.body[1].data)
      assert.equal("boom", body.body[2].error)
      assert.equal("RPC_ERROR", body.body[2].errorEvent)
      assert.equal("not today", body.body[3].error)
      assert.equal("open", body.body[4].data)
      assert.equal("NO_RPC_PROVIDER", body.body[5].errorEvent)
    end)

    it("lets a waiting handler answer later while other requests are served", function()
      local results = t:request_all({
        { body = json.encode({ body = { { topic = "rpc", action = "make", rpcName = "later", data = { ms = 100 } } } }) },
        { body = json.encode({ body = { { topic = "rpc", action = "make", rpcName = "add-two", data = { numA = 1, numB = 1 } } } }) },
      })
      assert.equal("slept 100", json.decode(results[1].body).body[1].data)
      assert.equal(2, json.decode(results[2].body).body[1].data)
      assert.same({ "later" }, order)
    end)

    it("ends a handler that takes too long with RESPONSE_TIMEOUT and goes on with the batch", function()
      local _, body = t:api({
        { topic = "rpc", action = "make", rpcName = "forever" },
        { topic = "rpc", action = "make", rpcName = "add-two", data = { numA = 2, numB = 2 } },
      })
      assert.equal("RESPONSE_TIMEOUT", body.body[1].errorEvent)
      assert.equal("The RPC response timeout was exceeded by the provider.", body.body[1].error)
      assert.equal(4, body.body[2].data)
    end)

    it("gives handlers access to records", function()
      local _, body = t:api({
        cmd_write("for-rpc", { v = 7 }),
        { topic = "rpc", action = "make", rpcName = "reads", data = "for-rpc" },
      })
      assert.same({ rec = { v = 7 }, version = 1 }, body.body[2].data)
    end)
  end)

  describe("requestTimeout", function()
    it("answers commands that did not finish with HTTP_REQUEST_TIMEOUT", function()
      t = H.start({ requestTimeout = 100, rpc = { responseTimeout = 5000 } }, function(server)
        server:rpc("forever", function(_, ctx) ctx.await(function() end) end)
      end)
      local _, body = t:api({
        { topic = "event", action = "emit", eventName = "x" },
        { topic = "rpc", action = "make", rpcName = "forever" },
      })
      assert.equal("PARTIAL_SUCCESS", body.result)
      assert.equal("HTTP_REQUEST_TIMEOUT", body.body[2].errorEvent)
    end)
  end)

  describe("events and presence", function()
    local seen
    before_each(function()
      seen = {}
      t = H.start(nil, function(server)
        server:on_event("broken", function() error("listener bug") end)
        server:on_event("broken", function(data) seen[#seen + 1] = data end)
        server:on_event("chat", function(data, ctx) seen[#seen + 1] = ctx.user.id .. ":" .. data end)
      end)
    end)

    it("delivers emits to Lua listeners; a raising listener does not break the emit", function()
      local log = require "moonstream.log"
      local logged = {}
      log.set_sink(function(_, level, msg) logged[#logged + 1] = level .. " " .. msg end)
      local _, body = t:api({
        { topic = "event", action = "emit", eventName = "broken", data = "still delivered" },
        { topic = "event", action = "emit", eventName = "chat", data = "hi" },
      })
      assert.equal("SUCCESS", body.result)
      log.set_sink(nil)
      assert.same({ "still delivered", "open:hi" }, seen)
      assert.equal(1, #logged)
      assert.matches("^error event listener for 'broken' failed: .*listener bug", logged[1])
    end)

    it("answers presence queries from the registry", function()
      t.server.presence:join("alice")
      t.server.presence:join("alice")
      t.server.presence:join("bob")
      t.server.presence:leave("bob")
      local _, body = t:api({
        { topic = "presence", action = "query" },
        { topic = "presence", action = "query", names = { "alice", "bob" } },
      })
      assert.same(json.array({ "alice" }), body.body[1].users)
      assert.same({ alice = true, bob = false }, body.body[2].users)
    end)

    it("answers an empty presence list as a JSON array", function()
      local res = t:request({ body = '{"body":[{"topic":"presence","action":"query"}]}' })
      assert.matches('"users":%[%]', res.body)
    end)
  end)

  describe("shutdown", function()
    it("answers a request still waiting for a handler before the daemon stops", function()
      t = H.start({ rpc = { responseTimeout = 60000 } }, function(server)
        server:rpc("forever", function(_, ctx) ctx.await(function() end) end)
      end)
      local got
      t.client:request({ method = "POST", url = t.url .. "/api", headers = { ["Content-Type"] = "application/json" },
        body = '{"body":[{"topic":"rpc","action":"make","rpcName":"forever"}]}' }, function(res, err) got = res or { error = err } end)
      t:run_until(function() return t.server.http:stats().active == 1 end)
      t.server.http:quiesce()
      t.server.http:close()
      t:run_until(function() return got ~= nil end)
      assert.equal(503, got.status)
    end)
  end)
end)
