-- moonstream.core presence: reference-counted registry of online users.
local core = require "moonstream.core"

describe("moonstream.core presence", function()
  local p

  before_each(function()
    p = core.presence()
  end)

  after_each(function()
    p:close()
  end)

  it("returns true on the first join and false on the next ones", function()
    assert.is_true(p:join("alice"))
    assert.is_false(p:join("alice"))
    assert.is_false(p:join("alice"))
    assert.equal(3, p:count("alice"))
    assert.is_true(p:is_online("alice"))
    assert.equal(1, p:size())
  end)

  it("returns false on leave while connections remain and true on the last", function()
    p:join("alice")
    p:join("alice")
    assert.is_false(p:leave("alice"))
    assert.equal(1, p:count("alice"))
    assert.is_true(p:is_online("alice"))
    assert.is_true(p:leave("alice"))
    assert.equal(0, p:count("alice"))
    assert.is_false(p:is_online("alice"))
    assert.equal(0, p:size())
  end)

  it("returns nil, 'not online' on leave of a user without connections", function()
    local ok, err = p:leave("bob")
    assert.is_nil(ok)
    assert.equal("not online", err)
    p:join("bob")
    assert.is_true(p:leave("bob"))
    ok, err = p:leave("bob")
    assert.is_nil(ok)
    assert.equal("not online", err)
    assert.equal(0, p:count("bob"))
    -- The count never goes negative: one join brings the user online again.
    assert.is_true(p:join("bob"))
    assert.equal(1, p:count("bob"))
  end)

  it("returns 0 from count and false from is_online for an unknown user", function()
    assert.equal(0, p:count("nobody"))
    assert.is_false(p:is_online("nobody"))
  end)

  it("lists the online users in users()", function()
    assert.same({}, p:users())
    p:join("alice")
    p:join("bob")
    p:join("alice")
    p:join("carol")
    p:leave("bob")
    local users = p:users()
    table.sort(users)
    assert.same({ "alice", "carol" }, users)
  end)

  it("maps each queried name to whether it is online", function()
    p:join("alice")
    p:join("carol")
    assert.same({ alice = true, bob = false, carol = true }, p:query { "alice", "bob", "carol" })
    assert.same({}, p:query {})
  end)

  it("raises on a query holding a non-string", function()
    assert.has.error(function() p:query { "alice", 42 } end,
      "bad argument #1 to 'query' (names[2] is a number, expected a string)")
    assert.has.error(function() p:query("alice") end)
  end)

  it("raises on a non-string user name", function()
    assert.has.error(function() p:join(42) end)
    assert.has.error(function() p:join() end)
    assert.has.error(function() p:leave({}) end)
    assert.has.error(function() p:count(nil) end)
    assert.has.error(function() p:is_online(true) end)
    assert.equal(0, p:size())
  end)

  it("returns to size 0 after 10000 users join and leave", function()
    for i = 1, 10000 do assert.is_true(p:join("user" .. i)) end
    for i = 1, 10000, 2 do assert.is_false(p:join("user" .. i)) end
    assert.equal(10000, p:size())
    assert.equal(10000, #p:users())
    assert.equal(2, p:count("user9999"))
    assert.equal(1, p:count("user10000"))
    for i = 1, 10000 do p:leave("user" .. i) end
    assert.equal(5000, p:size())
    for i = 1, 10000, 2 do assert.is_true(p:leave("user" .. i)) end
    assert.equal(0, p:size())
    assert.same({}, p:users())
  end)

  it("keeps names that differ only after a zero byte apart", function()
    assert.is_true(p:join("a\0b"))
    assert.is_true(p:join("a\0c"))
    assert.is_true(p:join("a"))
    assert.is_true(p:join(""))
    assert.equal(4, p:size())
    assert.is_true(p:leave("a\0b"))
    assert.is_false(p:is_online("a\0b"))
    assert.is_true(p:is_online("a\0c"))
    assert.same({ ["a\0c"] = true, ["a\0b"] = false, a = true, [""] = true },
      p:query { "a\0c", "a\0b", "a", "" })
    local users = p:users()
    table.sort(users)
    assert.same({ "", "a", "a\0c" }, users)
  end)

  it("raises when used after close and closes twice", function()
    p:join("alice")
    p:close()
    p:close()
    assert.has.error(function() p:join("alice") end, "attempt to use a closed presence registry")
    assert.has.error(function() p:size() end, "attempt to use a closed presence registry")
  end)

  it("frees its users at the end of a <close> scope", function()
    local inner
    do
      local q <close> = core.presence()
      q:join("alice")
      inner = q
    end
    assert.has.error(function() inner:size() end, "attempt to use a closed presence registry")
  end)
end)
