-- The command line (bin/moonstream, lua/moonstream/cli.lua), run as a
-- process: --help for every command, exit status 2 for usage errors and 1
-- for run-time failures, `check` on good and broken configurations, and
-- `start -c` serving a request.
local H = require "spec.support.helpers"

-- Runs bin/moonstream with a shell-quoted argument string; returns its
-- output (stdout and stderr) and exit status. LD_PRELOAD (ASan runs) is not
-- passed on.
local function run(args)
  local p = assert(io.popen("env -u LD_PRELOAD lua5.4 bin/moonstream " .. args .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("a")
  p:close()
  local text, code = out:match("^(.*)exit=(%d+)\n$")
  return text, tonumber(code)
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local COMMANDS = { "start", "check", "hash", "token", "token revoke", "reload", "version", "help" }

describe("moonstream command line", function()
  describe("--help", function()
    it("describes the program and lists every command", function()
      for _, flag in ipairs({ "--help", "-h", "help" }) do
        local out, code = run(flag)
        assert.are.equal(0, code, out)
        assert.truthy(out:find("^Usage: moonstream "), out)
        for _, c in ipairs(COMMANDS) do
          if not c:find(" ") then assert.truthy(out:find("\n   " .. c .. " "), c .. " missing from\n" .. out) end
        end
      end
    end)

    it("exists for every command, also as `help <command>`", function()
      for _, c in ipairs(COMMANDS) do
        local out, code = run(c .. " --help")
        assert.are.equal(0, code, c .. ": " .. out)
        assert.truthy(out:find("^Usage: moonstream " .. c .. " "), out)
        assert.truthy(#out > 80, "a real text for " .. c)
        local again = run("help " .. c)
        assert.are.equal(out, again)
      end
    end)

    it("wins over the rest of a broken line", function()
      local out, code = run("start --bogus --help")
      assert.are.equal(0, code, out)
      assert.truthy(out:find("^Usage: moonstream start"), out)
    end)
  end)

  it("prints the version of the moonstream module", function()
    local out, code = run("version")
    assert.are.equal(0, code)
    assert.are.equal("moonstream " .. require("moonstream").VERSION .. "\n", out)
    assert.are.equal(out, (run("--version")))
  end)

  describe("usage errors exit 2 and say what is wrong", function()
    local cases = {
      { "", "a command is required" },
      { "stat", "unknown command 'stat'" },
      { "start --bogus", "unknown option '--bogus'" },
      { "start --port abc", "--port must be a number (got 'abc')" },
      { "start a.lua b.lua", "too many arguments" },
      { "start -c a.lua b.lua", "give the configuration file once" },
      { "hash --iterations 0 pw", "--iterations must be a positive integer" },
      { "token", "a command is required" },
      { "token revoke", "give either a token or --user ID" },
      { "token revoke a b c", "too many arguments" },
    }
    for _, c in ipairs(cases) do
      it("moonstream " .. c[1], function()
        local out, code = run(c[1])
        assert.are.equal(2, code, out)
        assert.truthy(out:find(c[2], 1, true), out)
        assert.truthy(out:find("Usage: moonstream", 1, true), out)
      end)
    end
  end)

  describe("check", function()
    local dir
    before_each(function()
      dir = H.tmpdir()
      write(dir .. "/config.lua", [[
return {
  storage = { path = "data" },
  permissions = "permissions.lua",
  rpc = { handlers = "handlers" },
  auth = { { type = "file", options = { users = "users.yml", hash = "md5", iterations = 100, keyLength = 32 } } },
}
]])
      write(dir .. "/permissions.lua", 'return { record = { ["*"] = { read = true, write = true } } }\n')
      assert(os.execute("mkdir '" .. dir .. "/handlers'"))
      write(dir .. "/handlers/add-two.lua", "return function(d) return d.a + d.b end\n")
      assert(os.execute("cp spec/support/deepstream-users.yml '" .. dir .. "/users.yml'"))
    end)
    after_each(function() H.rmdir(dir) end)

    it("passes a good configuration without starting anything (no store is created)", function()
      for _, form in ipairs({ "check %s/config.lua", "check -c %s/config.lua" }) do
        local out, code = run(form:format(dir))
        assert.are.equal(0, code, out)
        assert.truthy(out:find("configuration " .. dir .. "/config.lua is valid", 1, true), out)
      end
      assert.is_nil(io.open(dir .. "/data/CURRENT"))
    end)

    it("passes the embedded defaults", function()
      local out, code = run("check")
      assert.are.equal(0, code, out)
      assert.truthy(out:find("is valid", 1, true), out)
    end)

    it("fails with exit 1 on a configuration error, naming the file, line and key", function()
      write(dir .. "/config.lua", "return {\n  prot = 6020,\n}\n")
      local out, code = run("check " .. dir .. "/config.lua")
      assert.are.equal(1, code, out)
      assert.truthy(out:find(dir .. "/config.lua:2: unknown config key 'prot' (did you mean 'port'?)", 1, true), out)
    end)

    it("fails with exit 1 on a broken permission file, naming the file and the line", function()
      write(dir .. "/permissions.lua", 'return {\n  record = { ["*"] = { read = true,\n}\n')
      local out, code = run("check " .. dir .. "/config.lua")
      assert.are.equal(1, code, out)
      assert.truthy(out:find("config key 'permissions': " .. dir .. "/permissions.lua:%d+:"), out)
    end)

    it("fails with exit 1 on an unknown permission rule", function()
      write(dir .. "/permissions.lua", 'return { record = { ["*"] = { raed = true } } }\n')
      local out, code = run("check " .. dir .. "/config.lua")
      assert.are.equal(1, code, out)
      assert.truthy(out:find("unknown rule type 'raed'", 1, true), out)
    end)

    it("fails with exit 1 on a broken RPC handler file", function()
      write(dir .. "/handlers/add-two.lua", "return function(d) return d.a + end\n")
      local out, code = run("check " .. dir .. "/config.lua")
      assert.are.equal(1, code, out)
      assert.truthy(out:find("config key 'rpc.handlers': rpc handler file " .. dir .. "/handlers/add-two.lua:1:", 1, true), out)
    end)

    it("fails with exit 1 on a users file that is not YAML or is missing", function()
      write(dir .. "/users.yml", "fred: [\n")
      local out, code = run("check " .. dir .. "/config.lua")
      assert.are.equal(1, code, out)
      assert.truthy(out:find("users file '" .. dir .. "/users.yml' is not valid YAML", 1, true), out)
      os.remove(dir .. "/users.yml")
      out, code = run("check " .. dir .. "/config.lua")
      assert.are.equal(1, code, out)
      assert.truthy(out:find("users.yml", 1, true), out)
    end)

    it("fails with exit 1 when the file cannot be read", function()
      local out, code = run("check " .. dir .. "/missing.lua")
      assert.are.equal(1, code, out)
      assert.truthy(out:find("cannot read configuration file '" .. dir .. "/missing.lua'", 1, true), out)
    end)
  end)

  it("start -c config.lua serves, and exits 0 on SIGTERM", function()
    local dir = H.tmpdir()
    write(dir .. "/config.lua", 'return { logLevel = "info", storage = { path = "data" } }\n')
    local srv = H.spawn_cli("-c " .. dir .. "/config.lua", { exit_status = true })
    local pipe, pid, port = srv.pipe, srv.pid, srv.port
    local curl = assert(io.popen("env -u LD_PRELOAD curl -s -m 10 http://127.0.0.1:" .. port .. "/api -H 'Content-Type: application/json'"
      .. [[ -d '{"body":[{"topic":"record","action":"write","recordName":"cli","data":{"v":1}},]]
      .. [[{"topic":"record","action":"read","recordName":"cli"}]}']]))
    local answer = curl:read("a")
    curl:close()
    os.execute("kill -TERM " .. pid)
    local rest = pipe:read("a")
    pipe:close()
    H.rmdir(dir)
    local json = require "moonstream.json"
    assert.are.same(json.decode('{"body":[{"success":true},{"success":true,"version":1,"data":{"v":1}}],'
      .. '"result":"SUCCESS"}'), json.decode(answer))
    assert.truthy(rest:find("exit=0\n$"), rest)
  end)
end)
