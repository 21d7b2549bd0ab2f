-- A write acknowledged with success survives kill -9 of the server: the real
-- CLI runs as a child process, a real HTTP client writes to it, the server is
-- killed with SIGKILL and restarted on the same data, and every acknowledged
-- write must read back with its version.
local core = require "moonstream.core"
local json = require "moonstream.json"
local H = require "spec.support.helpers"

local spawn = H.spawn_cli

local function post(loop, client, port, msg, done)
  assert(client:request({ method = "POST", url = "http://127.0.0.1:" .. port .. "/api",
    headers = { ["Content-Type"] = "application/json", Expect = false },
    body = json.encode(msg) }, done))
end

describe("durability", function()
  local dir, config_path

  before_each(function()
    dir = H.tmpdir()
    config_path = dir .. "/config.lua"
    local f = assert(io.open(config_path, "w"))
    f:write('return { storage = { path = "data" }, logLevel = "info" }\n')
    f:close()
  end)

  after_each(function() H.rmdir(dir) end)

  it("keeps every acknowledged write after kill -9", function()
    local srv = spawn(config_path)
    local loop = core.loop()
    local client = core.http_client(loop)
    local acked, answered, sent = {}, 0, 0
    -- 8 writers in parallel, each writing its own records with versions
    local function write_next(writer)
      sent = sent + 1
      local name = "k/" .. writer .. "/" .. sent
      post(loop, client, srv.port, { body = { { topic = "record", action = "write", recordName = name,
        data = { n = sent }, version = 1 } } }, function(res)
        answered = answered + 1
        if res and res.status == 200 and json.decode(res.body).result == "SUCCESS" then
          acked[#acked + 1] = name
        end
        if sent < 400 then write_next(writer) end
      end)
    end
    for w = 1, 8 do write_next(w) end
    local iterations = 0
    while #acked < 200 and iterations < 2000 do
      loop:run_once(50)
      iterations = iterations + 1
    end
    assert.is_true(#acked >= 200, "only " .. #acked .. " writes acknowledged")
    os.execute("kill -9 " .. srv.pid)
    srv.pipe:close()
    client:close()

    local again = spawn(config_path)
    local client2 = core.http_client(loop)
    local missing, checked, left = {}, 0, #acked
    for _, name in ipairs(acked) do
      post(loop, client2, again.port, { body = { { topic = "record", action = "read", recordName = name } } }, function(res)
        local r = res and json.decode(res.body).body[1]
        if not (r and r.success and r.version == 1) then missing[#missing + 1] = name end
        checked = checked + 1
        left = left - 1
      end)
    end
    iterations = 0
    while left > 0 and iterations < 2000 do
      loop:run_once(50)
      iterations = iterations + 1
    end
    os.execute("kill -TERM " .. again.pid)
    again.pipe:close()
    client2:close()
    loop:close()
    assert.equal(#acked, checked)
    assert.same({}, missing)
  end)

  it("exits 0 on SIGTERM after closing the database", function()
    local srv = spawn(config_path)
    os.execute("kill -TERM " .. srv.pid)
    local rest = srv.pipe:read("a")
    local ok, how, code = srv.pipe:close()
    assert.matches("moonstream stopped", rest)
    assert.is_true(ok, tostring(how) .. " " .. tostring(code))
    -- the LevelDB lock is released: a second open works
    local store = assert(core.store_open(dir .. "/data"))
    store:close()
  end)

  it("refuses to start a second server on the same data directory", function()
    local srv = spawn(config_path)
    local out = io.popen("env -u LD_PRELOAD lua5.4 bin/moonstream start " .. config_path .. " --port 0 2>&1; echo exit=$?")
    local text = out:read("a")
    out:close()
    os.execute("kill -TERM " .. srv.pid)
    srv.pipe:close()
    assert.matches("in use by another moonstream process", text)
    assert.matches("exit=1", text)
  end)
end)
