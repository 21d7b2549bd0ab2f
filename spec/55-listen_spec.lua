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
