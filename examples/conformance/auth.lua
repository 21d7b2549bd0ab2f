-- Configuration for ../shared/conformance/run --profile auth:
--   bin/moonstream start examples/conformance/auth.lua
-- fred and wilma log in with the file strategy (users.lua, hashed passwords);
-- permissions.lua holds the profile's rules.
return {
  port = 6022,
  storage = { path = "/tmp/moonstream-conformance-auth" },
  auth = {
    { type = "file", options = { users = "users.lua" } }, -- moonstream hash defaults: sha256, 100000, 32
  },
  -- the suite makes about ten failed attempts per run from 127.0.0.1; allow a
  -- few runs a minute
  maxAuthAttempts = 100,
  permissions = "permissions.lua",
  rpc = {
    handlers = {
      ["add-two"] = "../handlers/add-two.lua",
      ["admin-only"] = function() return "ok" end,
    },
  },
}
