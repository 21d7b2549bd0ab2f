-- Configuration for ../shared/conformance/run --profile limits:
--   bin/moonstream start examples/conformance/limits.lua
return {
  port = 6021,
  storage = { path = "/tmp/moonstream-conformance-limits" },
  maxMessageSize = 1024,
  allowAuthData = false,
  enableAuthEndpoint = false,
  allowAllOrigins = false,
  origins = { "http://good.example" },
}
