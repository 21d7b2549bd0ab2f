-- Embedding in another event loop: server:fd() is the loop's epoll fd; a
-- host loop (here Debian's lua-luv, libuv) watches it and calls
-- server:step(0) when it is readable. The HTTP client is libuv's too, so
-- nothing but the host loop runs; an RPC handler that sleeps proves that
-- moonstream's timers fire through the fd as well.
local uv = require "luv"
local moonstream = require "moonstream"
local json = require "moonstream.json"
local H = require "spec.support.helpers"

local DEADLINE_MS = 30000

-- Sends one HTTP request over libuv TCP; callback(status, body) once the
-- server closes the connection (Connection: close).
local function http_post(port, path, body, callback)
  local tcp = uv.new_tcp()
  local chunks = {}
  tcp:connect("127.0.0.1", port, function(err)
    assert(not err, err)
    tcp:write("POST " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      .. "Connection: close\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
    tcp:read_start(function(rerr, data)
      assert(not rerr, rerr)
      if data then
        chunks[#chunks + 1] = data
        return
      end
      tcp:close()
      local response = table.concat(chunks)
      callback(tonumber(response:match("^HTTP/1%.1 (%d+)")), response:match("\r\n\r\n(.*)$"))
    end)
  end)
end

describe("embedding in a libuv loop", function()
  local server, dir

  after_each(function()
    if server then
      server:close()
      server.loop:close()
    end
    server = nil
    H.rmdir(dir)
  end)

  it("serves HTTP requests, timers included, driven only by server:fd()", function()
    dir = H.tmpdir()
    server = assert(moonstream.new({ port = 0, logLevel = "error", storage = { path = dir .. "/data" } }))
    server:rpc("slow-double", function(data, ctx)
      ctx.sleep(30)
      return data * 2
    end)
    assert(server:listen())
    local fd = server:fd()
    assert.is_true(math.type(fd) == "integer" and fd >= 0)
    assert.equal(fd, server:fd()) -- the same fd every time

    local steps = 0
    local poll = uv.new_poll(fd)
    poll:start("r", function()
      steps = steps + 1
      server:step(0)
    end)
    local timed_out = false
    local deadline = uv.new_timer()
    deadline:start(DEADLINE_MS, 0, function()
      timed_out = true
      uv.stop()
    end)

    local answers, pending = {}, 2
    local function done(name)
      return function(status, body)
        answers[name] = { status = status, body = json.decode(body) }
        pending = pending - 1
        if pending == 0 then uv.stop() end
      end
    end
    http_post(server:port(), "/api", assert(json.encode({ body = {
      { topic = "record", action = "write", recordName = "embedded", data = { host = "libuv" } },
      { topic = "record", action = "read", recordName = "embedded" },
    } })), done("records"))
    http_post(server:port(), "/api", assert(json.encode({ body = {
      { topic = "rpc", action = "make", rpcName = "slow-double", data = 21 },
    } })), done("rpc"))
    uv.run()

    poll:stop()
    poll:close()
    deadline:stop()
    deadline:close()
    uv.run("nowait") -- lets libuv finish the closes
    assert.is_false(timed_out, "no answers within " .. DEADLINE_MS .. " ms")
    assert.equal(200, answers.records.status)
    assert.same({ host = "libuv" }, answers.records.body.body[2].data)
    assert.equal(200, answers.rpc.status)
    assert.equal(42, answers.rpc.body.body[1].data)
    assert.is_true(steps > 0)
  end)

  it("wakes the host for a timer armed between steps", function()
    dir = H.tmpdir()
    server = assert(moonstream.new({ port = 0, logLevel = "error", storage = { path = dir .. "/data" } }))
    assert(server:listen())
    local poll = uv.new_poll(server:fd())
    poll:start("r", function() server:step(0) end)
    local deadline = uv.new_timer()
    local timed_out = false
    deadline:start(DEADLINE_MS, 0, function()
      timed_out = true
      uv.stop()
    end)
    uv.run("nowait") -- the loop is idle: its host timer is not armed for anything soon
    local fired = false
    server.loop:timer(20, function() -- host code arming a moonstream timer outside a step
      fired = true
      uv.stop()
    end)
    uv.run()
    poll:stop()
    poll:close()
    deadline:stop()
    deadline:close()
    uv.run("nowait")
    assert.is_false(timed_out, "the timer did not fire within " .. DEADLINE_MS .. " ms")
    assert.is_true(fired)
  end)
end)
