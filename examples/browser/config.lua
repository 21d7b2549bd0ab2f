-- The browser example: a shared todo list (public/) over the realtime
-- endpoint, with a summary RPC written in Lua (handlers/todo-summary.lua).
--   examples/browser/run     (copies the client bundle, starts on :6020)
return {
  port = 6020,
  storage = { path = "/tmp/moonstream-browser-example" },
  staticFiles = "public",
  rpc = { handlers = "handlers" },
}
