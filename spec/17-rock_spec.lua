-- The rock: the rockspecs agree with the sources and moonstream.VERSION, a
-- missing optional rock is an error from moonstream.new (not a raise), and
-- the source rock that `make src-rock` packs from the committed sources
-- installs into an empty tree offline and its `moonstream start` serves.
local H = require "spec.support.helpers"
local lfs = require "lfs"
local moonstream = require "moonstream"

local function load_rockspec(path)
  local env = {}
  local chunk = assert(loadfile(path, "t", env))
  chunk()
  return env
end

local function sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("a")
  p:close()
  local text, code = out:match("^(.*)exit=(%d+)\n$")
  return text, tonumber(code)
end

-- Every file under dir whose name ends in ext, relative to the checkout.
local function files(dir, ext, out)
  out = out or {}
  for entry in lfs.dir(dir) do
    local p = dir .. "/" .. entry
    if entry ~= "." and entry ~= ".." then
      if lfs.attributes(p, "mode") == "directory" then files(p, ext, out)
      elseif entry:sub(-#ext) == ext then out[#out + 1] = p end
    end
  end
  table.sort(out)
  return out
end

local VERSIONED = "moonstream-" .. moonstream.VERSION .. "-1.rockspec"

describe("the rockspecs", function()
  local rel, scm = load_rockspec(VERSIONED), load_rockspec("moonstream-scm-1.rockspec")

  it("are named after moonstream.VERSION and never name a local path", function()
    assert.are.equal(moonstream.VERSION .. "-1", rel.version)
    assert.are.equal("v" .. moonstream.VERSION, rel.source.tag)
    assert.are.equal("scm-1", scm.version)
    for _, r in ipairs({ rel, scm }) do
      assert.truthy(r.source.url:match("^git%+https://"), r.source.url)
    end
  end)

  it("agree with each other except for the version and the tag", function()
    for _, k in ipairs({ "dependencies", "test_dependencies", "external_dependencies", "build", "test",
                         "description", "supported_platforms" }) do
      assert.are.same(scm[k], rel[k], k)
    end
    assert.are.same(scm.source.url, rel.source.url)
  end)

  it("list every Lua module and C source of the checkout", function()
    local listed = {}
    for _, file in pairs(rel.build.modules) do
      if type(file) == "string" then listed[file] = true end
    end
    for _, f in ipairs(files("lua", ".lua")) do assert.is_true(listed[f], f .. " is not in the rockspec") end
    local core = rel.build.modules["moonstream.core"]
    local sources = {}
    for _, f in ipairs(core.sources) do sources[f] = true end
    for _, f in ipairs(files("csrc", ".c")) do assert.is_true(sources[f], f .. " is not in the rockspec") end
    assert.are.equal(#files("csrc", ".c"), #core.sources)
  end)

  it("declare the platform, the libraries, the rocks and the test runner", function()
    assert.are.same({ "linux" }, rel.supported_platforms)
    local libs = table.concat(rel.build.modules["moonstream.core"].libraries, " ")
    -- the libraries the Makefile links (its MS_LIBS line) are the ones the rock links
    local mk = assert(io.open("Makefile")):read("a")
    local ms_libs = assert(mk:match("\nMS_LIBS = ([^\n]*)"))
    local n = 0
    for lib in ms_libs:gmatch("%-l(%S+)") do
      n = n + 1
      assert.truthy((" " .. libs .. " "):find(" " .. lib .. " ", 1, true), lib)
    end
    assert.are.equal(n, #rel.build.modules["moonstream.core"].libraries)
    local deps = table.concat(rel.dependencies, "\n")
    for _, rock in ipairs({ "lua", "luafilesystem", "argparse", "lyaml" }) do
      assert.truthy(deps:find("%f[%w]" .. rock .. "%f[^%w]"), rock)
    end
    local test_deps = table.concat(rel.test_dependencies, "\n")
    for _, rock in ipairs({ "busted", "lua-cjson", "luasocket" }) do
      assert.truthy(test_deps:find(rock, 1, true), rock)
    end
    assert.are.equal("busted", rel.test.type)
  end)

  it("name the license the LICENSE file holds", function()
    local f = assert(io.open("LICENSE"))
    local text = f:read("a")
    f:close()
    assert.truthy(text:find("^" .. rel.description.license .. " License\n"), text:sub(1, 40))
  end)
end)

describe("a missing optional rock", function()
  local saved_searchers, saved_loaded

  -- Hides lyaml (and its C part, yaml) from require for the test.
  before_each(function()
    saved_searchers = package.searchers
    saved_loaded = { lyaml = package.loaded.lyaml, yaml = package.loaded.yaml }
    package.loaded.lyaml, package.loaded.yaml = nil, nil
    local blocked = {}
    for i, searcher in ipairs(saved_searchers) do
      blocked[i] = function(name)
        if name == "lyaml" or name:match("^lyaml%.") or name == "yaml" then return "\n\thidden by the spec" end
        return searcher(name)
      end
    end
    package.searchers = blocked
  end)

  after_each(function()
    package.searchers = saved_searchers
    package.loaded.lyaml, package.loaded.yaml = saved_loaded.lyaml, saved_loaded.yaml
  end)

  it("makes moonstream.new return nil and a message when a users.yml needs it", function()
    local ok, server, err = pcall(moonstream.new, {
      auth = { { type = "file", options = { users = "spec/support/deepstream-users.yml" } } } })
    assert.is_true(ok, server)
    assert.is_nil(server)
    assert.truthy(err:find("needs the lyaml rock", 1, true), err)
    assert.truthy(err:find("deepstream-users.yml", 1, true), err)
  end)

  it("does not matter when no YAML file is used", function()
    local server = assert(moonstream.new({
      logLevel = "error", auth = { { type = "file", options = { users = "examples/conformance/users.lua" } } } }))
    server:close()
  end)
end)

describe("the source rock", function()
  it("packs offline, installs into an empty tree and its moonstream start serves", function()
    local dir = H.tmpdir()
    local rock = dir .. "/moonstream-" .. moonstream.VERSION .. "-1.src.rock"
    local out, code = sh("make -s src-rock SRC_ROCK_DIR=" .. dir)
    assert.are.equal(0, code, out)
    assert(io.open(rock), "no " .. rock):close()

    local tree = dir .. "/tree"
    out, code = sh("luarocks --lua-version=5.4 install --deps-mode=none --tree " .. tree .. " " .. rock)
    assert.are.equal(0, code, out)
    assert(io.open(tree .. "/lib/lua/5.4/moonstream/core.so"), "no core.so in the tree"):close()

    -- the installed command, from a folder outside the checkout, with the
    -- tree's paths (luarocks path) and nothing of the checkout
    local config = dir .. "/config.lua"
    local f = assert(io.open(config, "w"))
    f:write('return { logLevel = "info", storage = { path = "data" } }\n')
    f:close()
    local lpath, cpath = {}, {}
    for _, v in ipairs({ { lpath, "--lr-path" }, { cpath, "--lr-cpath" } }) do
      out, code = sh("luarocks --lua-version=5.4 --tree " .. tree .. " path " .. v[2])
      assert.are.equal(0, code, out)
      v[1][1] = out:gsub("%s+$", "")
    end
    local cmd = "cd " .. dir .. " && sh -c 'echo $$; exec env -u LD_PRELOAD -u LUA_PATH_5_4 -u LUA_CPATH_5_4 LUA_PATH=\"" .. lpath[1] .. ";;\" "
      .. "LUA_CPATH=\"" .. cpath[1] .. ";;\" " .. tree .. "/bin/moonstream start -c " .. config
      .. " --port 0' 2>&1; echo \"exit=$?\""
    local pipe = assert(io.popen(cmd, "r"))
    local pid = assert(tonumber(pipe:read("l")), "no pid")
    local port, seen = nil, {}
    for line in pipe:lines() do
      seen[#seen + 1] = line
      port = line:match("listening on http://127%.0%.0%.1:(%d+)")
      if port then break end
    end
    assert(port, "the installed server did not start:\n" .. table.concat(seen, "\n"))
    local answer = sh("curl -s -m 10 http://127.0.0.1:" .. port .. "/api -H 'Content-Type: application/json'"
      .. [[ -d '{"body":[{"topic":"record","action":"write","recordName":"rock","data":{"v":1}}]}']])
    os.execute("kill -TERM " .. pid)
    local rest = pipe:read("a")
    pipe:close()
    H.rmdir(dir)
    assert.are.same(moonstream.json.decode('{"result":"SUCCESS","body":[{"success":true}]}'),
      moonstream.json.decode(answer))
    assert.truthy(rest:find("exit=0\n$"), rest)
  end)
end)
