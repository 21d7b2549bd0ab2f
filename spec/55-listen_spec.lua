-- Listen providers (the `listen` config section: shuffleProviders,
-- responseTimeout, rematchInterval, matchCooldown) with the real
-- @deepstream/client in both transports (spec/support/rt_scenarios.lua).
local E = require "support.rt_env"
local S = require "support.rt_scenarios"

for _, tr in ipairs({ "json", "binary" }) do
  describe("listen with the real client (" .. tr .. ")", function()
    it("asks providers in registration order when not shuffled, moving on after a reject or a timeout", function()
      E.run(S.config.listen_order, tr, S.listen_order)
    end)

    it("tells record subscribers when their record gains and loses a provider", function()
      E.run(nil, tr, S.listen_record_provider)
    end)

    it("shuffles providers by default", function()
      E.run(nil, tr, S.listen_shuffle)
    end)

    it("asks again after rematchInterval, not within matchCooldown of a failed search", function()
      E.run(S.config.listen_rematch, tr, S.listen_rematch, require("moonstream.config").validate(S.config.listen_rematch))
    end)
  end)
end

describe("the listen config section", function()
  local config = require "moonstream.config"

  it("has deepstream's keys and defaults, and checks them", function()
    assert.same({ shuffleProviders = true, responseTimeout = 500, rematchInterval = 30000, matchCooldown = 10000 },
      assert(config.validate({})).listen)
    local cfg = assert(config.validate({ listen = { shuffleProviders = false, matchCooldown = 0 } }))
    assert.same({ false, 500, 0 }, { cfg.listen.shuffleProviders, cfg.listen.responseTimeout, cfg.listen.matchCooldown })
    local ok, err = config.validate({ listen = { shuffleProviders = "yes" } })
    assert.is_nil(ok)
    assert.equal("config key 'listen.shuffleProviders' must be a boolean (got string)", err)
    ok, err = config.validate({ listen = { responseTimeout = 0 } })
    assert.is_nil(ok)
    assert.equal("config key 'listen.responseTimeout' must be a positive integer (got 0)", err)
    ok, err = config.validate({ realtime = { listenResponseTimeout = 500 } })
    assert.is_nil(ok)
    assert.matches("unknown config key 'realtime.listenResponseTimeout'", err, 1, true)
  end)
end)
