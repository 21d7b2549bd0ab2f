-- Tokens in cluster mode (lua/moonstream/cluster/kv.lua under tokens.lua): a
-- token issued by one node is valid on another; a revocation on one applies
-- on all; the token is kept in Redis as its hash only; Redis down refuses
-- the token (nothing is accepted unchecked) and the node recovers.
local json = require "moonstream.json"
local tokens_mod = require "moonstream.tokens"
local H = require "spec.support.helpers"
local AUTH, login, emit_with = H.TOKEN_AUTH, H.login_token, H.emit_with
local C = require "spec.support.cluster"




describe("tokens in cluster mode", function()
  local redis
  setup(function() redis = C.redis() end)
  teardown(function() redis:stop() end)

  it("are valid on every node, and revoked on every node", function()
    local cfg = { cluster = { redis = redis.url }, auth = AUTH }
    local a, b = H.start(cfg), H.start(cfg)
    local ann1, ann2, bob = login(a, { username = "ann" }), login(a, { username = "ann" }), login(b, { username = "bob" })
    assert.equal(1, redis:command({ "EXISTS", "ms:k:" .. tokens_mod.KEY_PREFIX .. tokens_mod.hash(ann1) }))
    assert.equal(0, redis:command({ "EXISTS", "ms:k:" .. tokens_mod.KEY_PREFIX .. ann1 }), "never the token itself")
    assert.equal(200, emit_with(b, ann1).status)
    assert.equal(200, emit_with(a, bob).status)
    local altered = (ann1:sub(1, 1) == "0" and "1" or "0") .. ann1:sub(2) -- one hex digit changed
    assert.equal(401, emit_with(b, altered).status)
    assert.equal(1, b.server:revoke_token(ann1))
    assert.equal(401, emit_with(a, ann1).status)
    assert.equal(200, emit_with(a, ann2).status)
    assert.equal(1, a.server:revoke_token({ user = "ann" }))
    assert.equal(401, emit_with(b, ann2).status)
    assert.equal(200, emit_with(b, bob).status)
    a:stop()
    b:stop()
  end)

  it("are refused while Redis is down, and work again when it is back", function()
    local own = C.redis()
    local t = H.start({ cluster = { redis = own.url }, auth = AUTH })
    local token = login(t, { username = "ann" })
    own:kill9()
    assert.equal(401, emit_with(t, token).status)
    own:restart()
    local status
    for _ = 1, 200 do
      status = emit_with(t, token).status
      if status == 200 then break end
      t.loop:run_once(20) -- the node reconnects on its loop
    end
    assert.equal(200, status, "the token survived Redis' restart (AOF)")
    t:stop()
    own:stop()
  end)
end)
