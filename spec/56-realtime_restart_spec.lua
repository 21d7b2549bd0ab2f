-- The server restarts while real @deepstream/client instances are connected
-- (records held and changed offline, events, RPC providers, presence,
-- listens): every client is back afterwards, in both transports
-- (spec/support/rt_scenarios.lua).
local E = require "support.rt_env"
local S = require "support.rt_scenarios"

for _, tr in ipairs({ "json", "binary" }) do
  describe("realtime restart with the real client (" .. tr .. ")", function()
    it("brings every client back to its state", function()
      E.run(nil, tr, S.restart)
    end)
  end)
end
