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
local checks = require "moonstream.config.checks"
local engine = require "moonstream.config.engine"
local json = require "moonstream.json"
local log = require "moonstream.log"

local type, ipairs, tostring, format, math_type = type, ipairs, tostring, string.format, math.type

local M = {}
local Webhook = {}
local mt = { __index = Webhook }

local MAX_RESPONSE = 1024 * 1024

local function check_url(v)
  if type(v) == "string" and v:match("^https?://[^/%s]+") then return v end
  return nil, "must be an http:// or https:// URL (got " .. (type(v) == "string" and "'" .. v .. "'" or type(v)) .. ")"
end

local function check_codes(v)
  if type(v) ~= "table" then return nil, "must be a list of HTTP status codes" end
  for i, c in ipairs(v) do
    if math_type(c) ~= "integer" or c < 100 or c > 599 then
      return nil, format("must be an HTTP status code (got %s)", tostring(c)), { i }
    end
  end
  return v
end

local function integer_from(least)
  return checks.integer_in(least, nil, "an integer >= " .. least)
end

local function check_header_names(v)
  if type(v) ~= "table" then return nil, "must be a list of names" end
  for i, name in ipairs(v) do
    if type(name) ~= "string" or not name:match("^[%w%-_]+$") then
      return nil, "must be a header name", { i }
    end
  end
  return v
end

-- The options, checked by the config's schema engine.
M.OPTIONS = { name = "the 'webhook' strategy", fields = {
  { key = "endpointUrl", required = true, check = check_url },
  { key = "permittedStatusCodes", default = { 200 }, check = check_codes },
  { key = "requestTimeout", default = 2000, check = integer_from(1) },
  { key = "retryStatusCodes", default = {}, check = check_codes },
  { key = "retryAttempts", default = 0, check = integer_from(0) },
  { key = "retryInterval", default = 1000, check = integer_from(0) },
  { key = "promoteToHeader", default = {}, check = check_header_names },
} }

local function set_of(list)
  local set = {}
  for _, c in ipairs(list) do set[c] = true end
  return set
end

-- options: checked by the config (OPTIONS); env: auth.lua's.
function M.new(options, env)
  local o = engine.with_defaults(options, M.OPTIONS.fields)
  return setmetatable({
    url = o.endpointUrl,
    permittedStatusCodes = set_of(o.permittedStatusCodes),
    retryStatusCodes = set_of(o.retryStatusCodes),
    requestTimeout = o.requestTimeout, retryAttempts = o.retryAttempts, retryInterval = o.retryInterval,
    promote = o.promoteToHeader,
    loop = env.loop,
  }, mt)
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
