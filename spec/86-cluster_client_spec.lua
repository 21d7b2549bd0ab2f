-- The real @deepstream/client 7.0.5 on two cluster nodes (child processes
-- sharing a real redis-server): ann on node A sees the record bob sets on
-- node B, the event he emits (once) and his presence; bob sees ann.
local json = require "moonstream.json"
local H = require "spec.support.helpers"
local C = require "spec.support.cluster"

describe("the real client on two cluster nodes", function()
  it("sees records, events and presence across nodes", function()
    local redis = C.redis()
    local dir = H.tmpdir()
    local function config(n)
      return H.write_file(dir .. "/node-" .. n .. ".lua", string.format(
        'return { storage = { path = %q }, cluster = { redis = %q } }', dir .. "/data-" .. n, redis.url))
    end
    local na, nb
    finally(function()
      if na then C.stop_node(na) end
      if nb then C.stop_node(nb) end
      redis:stop()
      H.rmdir(dir)
    end)
    na = C.node(config("a"), "node-a")
    nb = C.node(config("b"), "node-b")
    local out = dir .. "/out"
    local script = io.popen("env -u LD_PRELOAD node spec/support/cluster_clients.js " .. na.port .. " " .. nb.port .. " > " .. out, "w")
    -- wait for "ready", then for node A's subscriptions in Redis
    local deadline = os.time() + 20
    local ready
    repeat
      local f = io.open(out)
      ready = f and f:read("a"):find("ready", 1, true)
      if f then f:close() end
      assert(os.time() <= deadline, "the clients did not get ready")
      if not ready then require("socket").select(nil, nil, 0.05) end
    until ready
    repeat
      local r = redis:command({ "PUBSUB", "NUMSUB", "ms:c:r:s86/r", "ms:c:e:s86/e" })
      assert(os.time() <= deadline, "node A did not subscribe")
      if r[2] ~= 1 or r[4] ~= 1 then require("socket").select(nil, nil, 0.05) end
    until r[2] == 1 and r[4] == 1
    script:write("go\n")
    script:close()
    local f = assert(io.open(out))
    local text = f:read("a")
    f:close()
    local seen = assert(json.decode((assert(text:match("\n(%b{})"), text))))
    assert.is_nil(seen.error, text)
    assert.same({ { from = "bob" } }, seen.events, "the event once")
    assert.same({ by = "bob", n = 1 }, seen.record[#seen.record])
    assert.same({ "bob", true }, seen.presence[1])
    assert.is_true(seen.bobSeesAnn)
  end)
end)
