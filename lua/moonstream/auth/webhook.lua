-- webhook: asks an HTTP endpoint, as deepstream's http authentication does.
--
--   { type = "webhook", options = {
--       endpointUrl = "http://127.0.0.1:8080/check",
--       permittedStatusCodes = { 200 },       -- these accept the user
--       requestTimeout = 2000,                -- ms per attempt
--       retryStatusCodes = { 404, 504 },      -- these (and network errors) are tried again
--       retryAttempts = 3, retryInterval = 1000,
--       promoteToHeader = { "token" },        -- authData fields also sent as headers
--   } }
--
-- It POSTs {"authData": ..., "connectionData": {...}} with libcurl's multi
-- interface on the server's loop: the server keeps serving while it waits.
-- A permitted status accepts: a non-JSON (or JSON string) body is the user
-- id; a JSON object may carry id, token, clientData and serverData; an empty
-- body accepts with the id authData.username (or "open"). Any other status
-- refuses, and so does running out of retries. It recognises every auth data.
local core = require "moonstream.core"
local json = require "moonstream.json"
local log = require "moonstream.log"

local type, ipairs, format, math_type = type, ipairs, string.format, math.type

local M = {}
local Webhook = {}
local mt = { __index = Webhook }

local DEFAULTS = {
  permittedStatusCodes = { 200 }, requestTimeout = 2000, retryStatusCodes = {},
  retryAttempts = 0, retryInterval = 1000, promoteToHeader = {},
}
local MAX_RESPONSE = 1024 * 1024

local function check_codes(v, name, env)
  if type(v) ~= "table" then return nil, env.key(name) .. " must be a list of HTTP status codes" end
  local set = {}
  for i, c in ipairs(v) do
    if math_type(c) ~= "integer" or c < 100 or c > 599 then
      return nil, format("%s[%d] must be an HTTP status code (got %s)", env.key(name), i, tostring(c))
    end
    set[c] = true
  end
  return set
end

function M.new(options, env)
  local ok, err = env.check_keys(options, { "endpointUrl", "permittedStatusCodes", "requestTimeout",
    "retryStatusCodes", "retryAttempts", "retryInterval", "promoteToHeader" })
  if not ok then return nil, err end
  local url = options.endpointUrl
  if type(url) ~= "string" or not url:match("^https?://[^/%s]+") then
    return nil, env.key("endpointUrl") .. " must be an http:// or https:// URL (got " ..
      (type(url) == "string" and "'" .. url .. "'" or type(url)) .. ")"
  end
  local self = { url = url }
  for _, k in ipairs({ "permittedStatusCodes", "retryStatusCodes" }) do
    self[k], err = check_codes(options[k] or DEFAULTS[k], k, env)
    if not self[k] then return nil, err end
  end
  for _, k in ipairs({ "requestTimeout", "retryAttempts", "retryInterval" }) do
    local v = options[k] or DEFAULTS[k]
    local least = k == "requestTimeout" and 1 or 0
    if math_type(v) ~= "integer" or v < least then
      return nil, env.key(k) .. format(" must be an integer >= %d (got %s)", least, tostring(v))
    end
    self[k] = v
  end
  local promote = options.promoteToHeader or DEFAULTS.promoteToHeader
  if type(promote) ~= "table" then return nil, env.key("promoteToHeader") .. " must be a list of names" end
  for i, name in ipairs(promote) do
    if type(name) ~= "string" or not name:match("^[%w%-_]+$") then
      return nil, format("%s[%d] must be a header name", env.key("promoteToHeader"), i)
    end
  end
  self.promote = promote
  self.loop = env.loop
  return setmetatable(self, mt)
end

-- The client is made at the first request: the loop exists by then, and a
-- server that never authenticates opens no curl handle.
function Webhook:_client()
  if not self.client then
    self.client = assert(core.http_client(self.loop, { max_response = MAX_RESPONSE }))
  end
  return self.client
end

-- The user from an accepted answer.
local function accepted(res, auth_data)
  local body = res.body or ""
  local doc
  if body ~= "" then
    local v, err = json.decode(body)
    if err then doc = body else doc = v end
  end
  local fallback = type(auth_data) == "table" and type(auth_data.username) == "string" and auth_data.username
  if type(doc) == "string" and doc ~= "" then return { id = doc } end
  if type(doc) ~= "table" or json.is_array(doc) then return { id = fallback or "open" } end
  local id = doc.id
  if type(id) ~= "string" or id == "" then id = fallback or "open" end
  local function value(v) if v == json.null then return nil end return v end
  return {
    id = id,
    token = type(doc.token) == "string" and doc.token ~= "" and doc.token or nil,
    clientData = value(doc.clientData),
    data = value(doc.serverData),
  }
end

function Webhook:authenticate(auth_data, connection_data, done)
  local body, err = json.encode({ authData = auth_data == nil and json.null or auth_data,
                                  connectionData = connection_data or {} })
  if not body then
    log.warn("auth webhook: cannot encode the request: %s", err)
    return done(false, "auth data cannot be sent")
  end
  local headers = { ["Content-Type"] = "application/json", Expect = false }
  for _, name in ipairs(self.promote) do
    local v = type(auth_data) == "table" and auth_data[name]
    if type(v) == "string" and not v:find("[\r\n]") then headers[name] = v end
  end
  local attempts = 0
  local function attempt()
    attempts = attempts + 1
    local ok, rerr = self:_client():request({
      method = "POST", url = self.url, headers = headers, body = body, timeout = self.requestTimeout,
    }, function(res, herr)
      local retry
      if not res then
        log.warn("auth webhook %s: %s", self.url, tostring(herr))
        retry = true
      elseif self.retryStatusCodes[res.status] then
        retry = true
      elseif self.permittedStatusCodes[res.status] then
        return done(accepted(res, auth_data))
      else
        if res.status >= 500 then log.warn("auth webhook %s answered %d", self.url, res.status) end
        return done(false, "webhook answered " .. res.status)
      end
      if retry and attempts <= self.retryAttempts then
        self.loop:timer(self.retryInterval, attempt)
      else
        log.warn("auth webhook %s: retry attempts exceeded", self.url)
        done(false, "webhook retry attempts exceeded")
      end
    end)
    if not ok then
      log.warn("auth webhook %s: %s", self.url, tostring(rerr))
      done(false, "webhook request failed")
    end
  end
  attempt()
end

function Webhook:close()
  if self.client then self.client:close(); self.client = nil end
end

return M
