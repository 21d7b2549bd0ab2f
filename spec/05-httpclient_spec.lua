-- moonstream.core http client: libcurl's multi socket interface on the loop,
-- against spec/support/echo_server.py (python3 standard library).
local core = require "moonstream.core"
local cjson = require "cjson"

local MAX_ITERATIONS = 300  -- run_once(100) each: a stuck request fails in ~30 s instead of hanging

-- Starts the echo server and returns its port and pid. Reading its first line
-- is the readiness signal. LD_PRELOAD is dropped so an ASan run does not
-- preload the sanitizer into python.
local function start_echo_server()
  local pipe = assert(io.popen("exec env -u LD_PRELOAD python3 spec/support/echo_server.py", "r"))
  local line = pipe:read("l")
  local port, pid = (line or ""):match("^(%d+) (%d+)$")
  assert(port, "echo server did not start: " .. tostring(line))
  return pipe, tonumber(port), pid
end

-- Runs the loop until done() is true, failing after MAX_ITERATIONS.
local function run_until(loop, done)
  local n = 0
  while not done() do
    n = n + 1
    assert(n <= MAX_ITERATIONS, "loop did not finish in " .. MAX_ITERATIONS .. " iterations")
    loop:run_once(100)
  end
end

describe("moonstream.core http client", function()
  local server, port, server_pid
  local loop, client

  setup(function()
    server, port, server_pid = start_echo_server()
  end)

  teardown(function()
    os.execute("kill " .. server_pid)
    server:close()
  end)

  before_each(function()
    loop = assert(core.loop())
    client = assert(core.http_client(loop))
  end)

  after_each(function()
    client:close()
    loop:close()
  end)

  local function url(path)
    return "http://127.0.0.1:" .. port .. path
  end

  -- One request, run to completion: returns res, err and the number of
  -- times the callback ran.
  local function fetch(opts, via)
    local calls, res, err = 0, nil, nil
    local handle, setup_err = (via or client):request(opts, function(r, e)
      calls, res, err = calls + 1, r, e
    end)
    assert(handle, setup_err)
    run_until(loop, function() return calls > 0 end)
    return res, err, calls
  end

  local function echo(opts)
    local res, err = fetch(opts)
    assert.is_nil(err)
    assert.are.equal(200, res.status)
    return cjson.decode(res.body), res
  end

  it("returns the method, path, query and headers of a GET", function()
    local req, res = echo({ url = url("/echo?x=1"), headers = { ["X-One"] = "1", ["X-Two"] = 2 } })
    assert.are.equal("GET", req.method)
    assert.are.equal("/echo", req.path)
    assert.are.equal("x=1", req.query)
    assert.are.equal("1", req.headers["x-one"])
    assert.are.equal("2", req.headers["x-two"])
    assert.are.equal(0, req.body_length)
    assert.are.equal("application/json", res.headers["content-type"])
  end)

  it("sends a POST body with headers given as \"Name: value\" lines", function()
    local req = echo({
      url = url("/echo"), method = "POST", body = '{"a":1}',
      headers = { "Content-Type: application/json", "X-Seq: a b" },
    })
    assert.are.equal("POST", req.method)
    assert.are.equal('{"a":1}', req.body)
    assert.are.equal("7", req.headers["content-length"])
    assert.are.equal("application/json", req.headers["content-type"])
    assert.are.equal("a b", req.headers["x-seq"])
  end)

  it("sends PUT, PATCH, DELETE, OPTIONS and custom methods", function()
    local req = echo({ url = url("/echo"), method = "PUT", body = "put body" })
    assert.are.equal("PUT", req.method)
    assert.are.equal("put body", req.body)
    req = echo({ url = url("/echo"), method = "PATCH" })
    assert.are.equal("PATCH", req.method)
    assert.are.equal("0", req.headers["content-length"])
    for _, method in ipairs({ "DELETE", "OPTIONS", "PROPFIND" }) do
      req = echo({ url = url("/echo"), method = method })
      assert.are.equal(method, req.method)
      assert.are.equal(0, req.body_length)
    end
  end)

  it("sends a body with GET when one is given", function()
    local req = echo({ url = url("/echo"), body = "query" })
    assert.are.equal("GET", req.method)
    assert.are.equal("query", req.body)
  end)

  it("returns headers and no body for HEAD", function()
    local res, err = fetch({ url = url("/big?n=12345"), method = "HEAD" })
    assert.is_nil(err)
    assert.are.equal(200, res.status)
    assert.are.equal("", res.body)
    assert.are.equal("12345", res.headers["content-length"])
  end)

  it("removes a default header given false and sends an empty one given \"\"", function()
    local req = echo({
      url = url("/echo"), method = "POST", body = "x",
      headers = { Accept = false, ["Content-Type"] = false, ["X-Empty"] = "" },
    })
    assert.is_nil(req.headers["accept"])
    assert.is_nil(req.headers["content-type"])
    assert.are.equal("", req.headers["x-empty"])
  end)

  it("returns non-2xx statuses as responses, not errors", function()
    for _, status in ipairs({ 201, 301, 404, 500, 503 }) do
      local res, err = fetch({ url = url("/status/" .. status) })
      assert.is_nil(err)
      assert.are.equal(status, res.status)
      assert.are.equal("status " .. status, res.body)
    end
    local res, err = fetch({ url = url("/status/204") })
    assert.is_nil(err)
    assert.are.equal(204, res.status)
    assert.are.equal("", res.body)
  end)

  it("returns response headers by lowercase name with repeated ones joined", function()
    local res, err = fetch({ url = url("/headers?X-Multi=a&X-Single=c&x-multi=b&X-MULTI=c+d&X-Empty="
      .. "&X-Folded=one%0D%0A%20%09two") })
    assert.is_nil(err)
    assert.are.equal("a, b, c d", res.headers["x-multi"])
    assert.are.equal("c", res.headers["x-single"])
    assert.are.equal("", res.headers["x-empty"])
    assert.are.equal("one two", res.headers["x-folded"])
    assert.are.equal("7", res.headers["content-length"])
    assert.are.equal("headers", res.body)
    for name in pairs(res.headers) do assert.are.equal(name:lower(), name) end
  end)

  it("round-trips a binary body", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local body = table.concat(bytes):rep(40) .. "\0\r\n\0"
    local res, err = fetch({ url = url("/raw"), method = "POST", body = body })
    assert.is_nil(err)
    assert.are.equal(#body, #res.body)
    assert.are.equal(body, res.body)
    local req = echo({ url = url("/echo"), method = "PUT", body = body })
    assert.are.equal(#body, req.body_length)
    assert.are.equal((body:gsub(".", function(c) return ("%02x"):format(c:byte()) end)), req.body_hex)
  end)

  it("receives a large body in full", function()
    local res, err = fetch({ url = url("/big?n=3000000") })
    assert.is_nil(err)
    assert.are.equal(3000000, #res.body)
    assert.are.equal(("0123456789"):rep(10), res.body:sub(1, 100))
    res, err = fetch({ url = url("/big?n=200001&chunked=1") })
    assert.is_nil(err)
    assert.are.equal(200001, #res.body)
  end)

  it("completes 20 concurrent requests and matches each result to its request", function()
    local results, count = {}, 0
    for i = 1, 20 do
      local handle = client:request({
        url = url("/echo?i=" .. i), method = "POST", body = "body " .. i, headers = { ["X-I"] = tostring(i) },
      }, function(res, err)
        count = count + 1
        results[i] = { res = res, err = err }
      end)
      assert.is_truthy(handle)
    end
    assert.are.equal(20, client:pending())
    run_until(loop, function() return count == 20 end)
    assert.are.equal(0, client:pending())
    for i = 1, 20 do
      assert.is_nil(results[i].err)
      local req = cjson.decode(results[i].res.body)
      assert.are.equal("i=" .. i, req.query)
      assert.are.equal("body " .. i, req.body)
      assert.are.equal(tostring(i), req.headers["x-i"])
    end
  end)

  it("delivers a fast response before a slow one started earlier", function()
    local order = {}
    client:request({ url = url("/slow?ms=700") }, function(res) order[#order + 1] = "slow " .. res.status end)
    client:request({ url = url("/echo") }, function(res) order[#order + 1] = "fast " .. res.status end)
    run_until(loop, function() return #order == 2 end)
    assert.are.same({ "fast 200", "slow 200" }, order)
  end)

  it("fails with curl's timeout error when the request takes longer than timeout", function()
    local res, err, calls = fetch({ url = url("/slow?ms=5000"), timeout = 200 })
    assert.is_nil(res)
    assert.matches("timed out", err)
    assert.are.equal(1, calls)
    assert.are.equal(0, client:pending())
  end)

  it("fails with curl's error when the connection is refused", function()
    -- a port that was listening a moment ago and is closed now
    local other, other_port, other_pid = start_echo_server()
    os.execute("kill " .. other_pid)
    other:close()
    local res, err = fetch({ url = "http://127.0.0.1:" .. other_port .. "/echo" })
    assert.is_nil(res)
    assert.matches("connect", err)
  end)

  it("never calls the callback of a cancelled request", function()
    local cancelled_calls = 0
    local early = client:request({ url = url("/slow?ms=200") }, function() cancelled_calls = cancelled_calls + 1 end)
    local started = client:request({ url = url("/slow?ms=200") }, function() cancelled_calls = cancelled_calls + 1 end)
    assert.is_true(early:cancel())  -- before curl saw it
    assert.is_false(early:active())
    for _ = 1, 3 do loop:run_once(20) end  -- let the other one connect and send
    assert.is_true(started:cancel())
    assert.is_false(started:cancel())
    assert.are.equal(0, client:pending())
    -- a request started after them, to the same endpoint, finishes after they would have
    local res, err = fetch({ url = url("/slow?ms=250") })
    assert.is_nil(err)
    assert.are.equal(200, res.status)
    assert.are.equal(0, cancelled_calls)
  end)

  it("closes a request: in flight it is cancelled without a callback, twice is harmless, using it raises", function()
    local calls = 0
    local handle = client:request({ url = url("/slow?ms=200") }, function() calls = calls + 1 end)
    for _ = 1, 3 do loop:run_once(20) end  -- let it connect and send
    assert.are.equal(1, client:pending())
    handle:close()
    handle:close()
    assert.are.equal(0, client:pending())
    assert.matches("closed", tostring(handle))
    assert.has.error(function() handle:cancel() end, "attempt to use a closed http request")
    assert.has.error(function() handle:active() end, "attempt to use a closed http request")
    -- a request started after it, to the same endpoint, finishes after it would have
    local res, err = fetch({ url = url("/slow?ms=250") })
    assert.is_nil(err)
    assert.are.equal(200, res.status)
    assert.are.equal(0, calls)
  end)

  it("closes a to-be-closed request when its scope ends, and a finished one too", function()
    local calls = 0
    do
      local handle <close> = client:request({ url = url("/slow?ms=200") }, function() calls = calls + 1 end)
      assert.is_true(handle:active())
    end
    assert.are.equal(0, client:pending())
    local got
    local finished = client:request({ url = url("/echo") }, function(res) got = res end)
    run_until(loop, function() return got ~= nil end)
    assert.are.equal(200, got.status)
    assert.is_false(finished:active())
    finished:close()
    assert.has.error(function() finished:active() end, "attempt to use a closed http request")
    -- the callback may close its own handle
    local own, closed_inside
    own = client:request({ url = url("/echo") }, function()
      own:close()
      closed_inside = tostring(own)
    end)
    run_until(loop, function() return closed_inside ~= nil end)
    assert.matches("closed", closed_inside)
    assert.are.equal(0, calls)
  end)

  it("fails with \"response too large\" above max_response", function()
    local small = assert(core.http_client(loop, { max_response = 4096 }))
    local res, err = fetch({ url = url("/big?n=1000") }, small)
    assert.is_nil(err)
    assert.are.equal(1000, #res.body)
    -- announced by Content-Length
    res, err = fetch({ url = url("/big?n=100000") }, small)
    assert.is_nil(res)
    assert.are.equal("response too large", err)
    -- chunked: caught while receiving
    res, err = fetch({ url = url("/big?n=100000&chunked=1") }, small)
    assert.is_nil(res)
    assert.are.equal("response too large", err)
    -- the headers count too
    local tiny = assert(core.http_client(loop, { max_response = 50 }))
    res, err = fetch({ url = url("/status/200") }, tiny)
    assert.is_nil(res)
    assert.are.equal("response too large", err)
    small:close()
    tiny:close()
  end)

  it("cancels transfers in flight without callbacks when closed, and is safe to close twice", function()
    local calls = 0
    for _ = 1, 5 do
      assert.is_truthy(client:request({ url = url("/slow?ms=200") }, function() calls = calls + 1 end))
    end
    for _ = 1, 3 do loop:run_once(20) end
    assert.are.equal(5, client:pending())
    client:close()
    client:close()
    assert.are.equal(0, client:pending())
    assert.matches("closed", tostring(client))
    assert.has.error(function() client:request({ url = url("/echo") }, function() end) end,
      "attempt to use a closed http client")
    local other <close> = assert(core.http_client(loop))
    local res, err = fetch({ url = url("/slow?ms=250") }, other)
    assert.is_nil(err)
    assert.are.equal(200, res.status)
    assert.are.equal(0, calls)
  end)

  it("reuses connections unless fresh_connection or forbid_reuse is set", function()
    local first = echo({ url = url("/echo") })
    local second = echo({ url = url("/echo") })
    assert.are.equal(first.client_port, second.client_port)
    local fresh = echo({ url = url("/echo"), fresh_connection = true })
    assert.are_not.equal(second.client_port, fresh.client_port)
    local forbidden = echo({ url = url("/echo"), forbid_reuse = true })
    local after = echo({ url = url("/echo") })
    assert.are_not.equal(forbidden.client_port, after.client_port)
  end)

  it("returns nil and a message for an invalid url, method or header", function()
    local cases = {
      { { url = "ftp://127.0.0.1/x" }, "invalid url: only http and https are supported" },
      { { url = "no url at all" }, "^invalid url" },
      { { url = url("/echo\0x") }, "^invalid url" },
      { { url = url("/echo"), method = "GET /x HTTP/1.1\r\n" }, "invalid method" },
      { { url = url("/echo"), method = "HEAD", body = "x" }, "a HEAD request cannot have a body" },
      { { url = url("/echo"), headers = { ["X-Bad"] = "a\r\nInjected: 1" } }, "invalid header value" },
      { { url = url("/echo"), headers = { ["Bad Name"] = "a" } }, "invalid header name" },
      { { url = url("/echo"), headers = { "no colon" } }, "invalid header line" },
      { { url = url("/echo"), headers = { "X-A: 1\nX-B: 2" } }, "invalid header line" },
    }
    for _, case in ipairs(cases) do
      local handle, err = client:request(case[1], function() error("must not run") end)
      assert.is_nil(handle)
      assert.matches(case[2], err)
    end
    assert.are.equal(0, client:pending())
  end)

  it("raises on misuse", function()
    assert.has.error(function() client:request({}, function() end) end, "opts.url must be a string")
    assert.has.error(function() client:request({ url = url("/echo") }) end)
    assert.has.error(function() client:request({ url = url("/echo"), timeout = "soon" }, function() end) end,
      "opts.timeout must be an integer >= 0")
    assert.has.error(function() client:request({ url = url("/echo"), headers = { X = {} } }, function() end) end,
      'opts.headers["X"] must be a string, a number or false')
    assert.has.error(function() core.http_client(loop, { max_response = 0 }) end,
      "opts.max_response must be an integer >= 1")
    assert.has.error(function() core.http_client({}) end)
    assert.are.equal(0, client:pending())
  end)

  it("lets a callback start another request and close the client", function()
    local steps = {}
    client:request({ url = url("/status/201") }, function(res)
      steps[#steps + 1] = res.status
      client:request({ url = url("/status/202") }, function(res2)
        steps[#steps + 1] = res2.status
        client:close()
      end)
      client:request({ url = url("/slow?ms=100") }, function() steps[#steps + 1] = "closed, not called" end)
    end)
    run_until(loop, function() return #steps == 2 end)
    local other <close> = assert(core.http_client(loop))
    fetch({ url = url("/slow?ms=150") }, other)
    assert.are.same({ 201, 202 }, steps)
    assert.are.equal(0, client:pending())
  end)

  it("keeps a dropped client alive until its transfers finish", function()
    local res
    do
      local dropped = assert(core.http_client(loop))
      dropped:request({ url = url("/echo") }, function(r) res = r end)
    end
    collectgarbage()
    collectgarbage()
    run_until(loop, function() return res ~= nil end)
    assert.are.equal(200, res.status)
    collectgarbage()
  end)

  it("reports an error raised by a callback and keeps working", function()
    local registry = debug.getregistry()
    local reported = {}
    local saved = registry["moonstream.error_reporter"]
    registry["moonstream.error_reporter"] = function(msg) reported[#reported + 1] = msg end
    local ok, failed = pcall(function()
      local done = false
      client:request({ url = url("/echo") }, function() done = true; error("boom") end)
      run_until(loop, function() return done end)
    end)
    registry["moonstream.error_reporter"] = saved
    assert(ok, failed)
    assert.are.equal(1, #reported)
    assert.matches("boom", reported[1])
    local res, err = fetch({ url = url("/status/200") })
    assert.is_nil(err)
    assert.are.equal(200, res.status)
  end)
end)
