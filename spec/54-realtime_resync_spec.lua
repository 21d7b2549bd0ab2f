-- Reconnect resync (SUBSCRIBEANDHEAD and the record actions the client
-- sends), notify of records no longer stored, and the unauthenticated-client
-- timer after a refused login: issue 15 items 1, 3 and 4, with the real
-- @deepstream/client (spec/support/rt_scenarios.lua) in both transports.
local H = require "support.helpers"
local E = require "support.rt_env"
local S = require "support.rt_scenarios"

for _, tr in ipairs({ "json", "binary" }) do
  describe("realtime resync with the real client (" .. tr .. ")", function()
    it("re-subscribes held records after a reconnect: server value, merge strategy, deleted records", function()
      E.run(nil, tr, S.resync)
    end)

    it("subscribes without creating in recordReadOnlyMode (SUBSCRIBEANDREAD)", function()
      E.run(nil, tr, S.read_only)
    end)

    it("tells subscribers a notified record that is no longer stored was deleted (HTTP and NOTIFY)", function()
      E.run(nil, tr, S.notify)
    end)

    it("keeps a client whose login was refused past the unauthenticated-client timeout", function()
      local dir = H.tmpdir()
      local auth = H.write_file(dir .. "/auth.lua",
        "return function(a) if a.password ~= 'right' then return false end return true, a.username end")
      local cfg = { auth = { { type = "lua", options = { path = auth } } } }
      for k, v in pairs(S.config.auth_timer) do cfg[k] = v end
      E.run(cfg, tr, S.auth_timer, { username = "ann", password = "wrong" }, { username = "ann", password = "right" })
      H.rmdir(dir)
    end)
  end)
end
