-- Permissions for the auth conformance profile (the shared conformance suite's "auth" profile).
-- The longest pattern that matches a name and has the rule wins; no rule denies.
return {
  event = {
    ["*"] = { publish = true, subscribe = true, listen = true },
    ["forbidden/*"] = { publish = false },
  },
  record = {
    ["*"] = { create = true, write = true, read = true, delete = true, notify = true },
    ["readonly/*"] = { create = false, write = false, delete = false, read = true },
    ["secret/*"] = { create = false, write = false, read = false, delete = false, notify = false },
    -- only the user whose id is $id may write users/$id; everyone may read it
    ["users/$id"] = {
      create = function(ctx) return ctx.user.id == ctx.vars.id end,
      write = function(ctx) return ctx.user.id == ctx.vars.id end,
    },
  },
  rpc = {
    ["*"] = { request = true, provide = true },
    ["admin-only"] = {
      request = function(ctx) return ctx.user.data ~= nil and ctx.user.data.role == "admin" end,
    },
  },
  presence = {
    ["*"] = { allow = true },
  },
}
