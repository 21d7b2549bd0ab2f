-- Configuration for ../shared/conformance/run --profile open:
--   bin/moonstream start examples/conformance/open.lua
return {
  port = 6020,
  storage = { path = "/tmp/moonstream-conformance-open" },
  rpc = {
    handlers = "../handlers",   -- add-two, echo, nothing, fail, slow
    responseTimeout = 500,
  },
}
