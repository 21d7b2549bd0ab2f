-- The two small objects the server's parts are wired with: subscribers.lua
-- (news from a part to the parts built after it) and rpc_providers.lua (who
-- answers an RPC no Lua handler has).
local subscribers = require "moonstream.subscribers"
local rpc_providers = require "moonstream.rpc_providers"

describe("subscribers", function()
  it("tells every subscriber each publish, in the order they subscribed, until it unsubscribes", function()
    local list, heard = subscribers.new(), {}
    assert.is_false(list:any())
    local stop_a = list:subscribe(function(x, y) heard[#heard + 1] = "a" .. x .. y end)
    list:subscribe(function(x, y) heard[#heard + 1] = "b" .. x .. y end)
    assert.is_true(list:any())
    list:publish(1, 2)
    stop_a()
    list:publish(3, 4)
    assert.same({ "a12", "b12", "b34" }, heard)
  end)

  it("lets a subscriber unsubscribe itself or another while a publish runs, and skips nobody", function()
    local list, heard = subscribers.new(), {}
    local stop_a, stop_b
    stop_a = list:subscribe(function() heard[#heard + 1] = "a"; stop_a(); stop_b() end)
    stop_b = list:subscribe(function() heard[#heard + 1] = "b" end)
    list:subscribe(function() heard[#heard + 1] = "c" end)
    list:publish()
    list:publish()
    assert.same({ "a", "b", "c", "c" }, heard)
  end)

  it("ends one subscription per unsubscribe, once, when a function subscribed twice", function()
    local list, n = subscribers.new(), 0
    local function count() n = n + 1 end
    local stop = list:subscribe(count)
    list:subscribe(count)
    stop()
    stop()
    list:publish()
    assert.equal(1, n)
  end)
end)

describe("rpc_providers", function()
  local function provider(names, seen)
    return {
      make_from_server = function(_, name, data, done)
        seen[#seen + 1] = name
        if not names[name] then return false end
        if names[name] == "later" then done({ success = true, data = data }) return nil end
        return { success = true, data = names[name] }
      end,
    }
  end

  it("answers false while no provider is registered or none has the name", function()
    local providers, seen = rpc_providers.new(), {}
    assert.is_false(providers:make("x", 1, error))
    providers:register(provider({}, seen))
    assert.is_false(providers:make("x", 1, error))
    assert.same({ "x" }, seen)
  end)

  it("asks each provider in turn and gives the first answer, at once or later", function()
    local providers, seen = rpc_providers.new(), {}
    providers:register(provider({ a = 1 }, seen))
    providers:register(provider({ a = 2, b = 3, c = "later" }, seen))
    assert.same({ success = true, data = 1 }, providers:make("a", nil, error))
    assert.same({ success = true, data = 3 }, providers:make("b", nil, error))
    local got
    assert.is_nil(providers:make("c", "d", function(r) got = r end))
    assert.same({ success = true, data = "d" }, got)
    assert.same({ "a", "b", "b", "c", "c" }, seen)
  end)

  it("stops asking a provider once it is taken out", function()
    local providers, seen = rpc_providers.new(), {}
    local unregister = providers:register(provider({ a = 1 }, seen))
    unregister()
    assert.is_false(providers:make("a", nil, error))
    assert.same({}, seen)
  end)
end)
