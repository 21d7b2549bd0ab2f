-- The HTTP surface (spec sections 1, 2, 3 and 6): routing, CORS, transport
-- errors in the contract's order, the auth endpoint and the batch endpoint.
-- The C core hands over complete requests (req); this module answers each
-- exactly once with req:respond(status, body, headers).
local core = require "moonstream.core"
local json = require "moonstream.json"
local validate = require "moonstream.validate"
local log = require "moonstream.log"
local static = require "moonstream.static"

local M = {}
local Api = {}
local mt = { __index = Api }

local decode, encode = json.decode, json.encode
local is_json_content_type = core.is_json_content_type -- csrc/http.c: one check for both paths

local TEXT = "text/plain; charset=utf-8"
local JSON = "application/json; charset=utf-8"
local ALLOW_METHODS = "GET, POST, OPTIONS"
local ALLOW_HEADERS = "X-Requested-With, X-HTTP-Method-Override, Content-Type, Accept, Authorization"

-- cfg: validated configuration; parts: dispatcher, auth, server (for state)
function M.new(cfg, parts)
  local origins = {}
  for _, o in ipairs(cfg.origins or {}) do origins[o] = true end
  return setmetatable({
    cfg = cfg,
    dispatcher = parts.dispatcher,
    auth = parts.auth,
    server = parts.server,
    realtime = parts.realtime,
    -- WebSocket endpoints: exact path -> transport
    ws_paths = parts.realtime and cfg.realtime and {
      [cfg.realtime.urlPath] = "binary", [cfg.realtime.jsonUrlPath] = "json",
    } or {},
    allow_all = cfg.allowAllOrigins,
    origins = origins,
    api_path = cfg.apiPath,
    auth_path = cfg.authPath,
    health_path = cfg.healthCheckPath,
    auth_enabled = cfg.enableAuthEndpoint,
    allow_auth_data = cfg.allowAuthData,
    envelope_opts = { allowAuthData = cfg.allowAuthData },
    -- reused header tables: the C side copies them into each response
    text_all = { ["Content-Type"] = TEXT, ["Access-Control-Allow-Origin"] = "*" },
    json_all = { ["Content-Type"] = JSON, ["Access-Control-Allow-Origin"] = "*" },
  }, mt)
end

-- The headers of a JSON answer when every origin is allowed: the C fast
-- path's answers carry them (server.lua gives them to srv:set_fast_path).
function Api:json_headers()
  return self.json_all
end

-- Headers for a response of content type ctype to a request from origin.
function Api:_headers(ctype, origin)
  if self.allow_all then
    return ctype == JSON and self.json_all or self.text_all
  end
  local h = { ["Content-Type"] = ctype }
  if origin and self.origins[origin] then
    h["Access-Control-Allow-Origin"] = origin
    h["Access-Control-Allow-Credentials"] = "true"
    h["Vary"] = "Origin"
  end
  return h
end

local function text_reply(self, req, status, text, origin, extra)
  local h = self:_headers(TEXT, origin)
  if extra then
    local copy = {}
    for k, v in pairs(h) do copy[k] = v end
    for k, v in pairs(extra) do copy[k] = v end
    h = copy
  end
  req:respond(status, text, h)
end

local function json_reply(self, req, status, value, origin)
  local body, err = encode(value)
  if not body then
    log.error("cannot encode a response: %s", err)
    return text_reply(self, req, 500, "Internal server error.", origin)
  end
  req:respond(status, body, self:_headers(JSON, origin))
end

-- Entry point: called by the C core once per request.
function Api:handle(req)
  local method, path = req:method(), req:path()
  local origin = req:header("Origin")

  -- realtime clients (realtime/init.lua); a plain GET there is not found
  local transport = self.ws_paths[path]
  if transport and method == "GET" and req:header("Upgrade") then
    local c, err = self.realtime:upgrade(req, transport)
    if not c then return text_reply(self, req, 400, err, origin) end
    return
  end

  -- CORS origin check first, except for the health check (load balancers).
  if not self.allow_all and path ~= self.health_path then
    if not origin then
      return text_reply(self, req, 403, 'CORS is configured for this. All requests must set a valid "Origin" header.')
    elseif not self.origins[origin] then
      return text_reply(self, req, 403, 'Origin "' .. origin .. '" is forbidden.')
    end
  end

  if method ~= "GET" and method ~= "POST" and method ~= "OPTIONS" then
    return text_reply(self, req, 405, "Unsupported method. Supported methods: GET, POST, OPTIONS", origin,
      { Allow = ALLOW_METHODS })
  end

  local is_api, is_auth = path == self.api_path, self.auth_enabled and path == self.auth_path
  local is_health = path == self.health_path

  if method == "GET" and is_api then
    return text_reply(self, req, 400,
      "Reading records via HTTP GET is not yet implemented, please use a post request instead.", origin)
  end

  if method == "OPTIONS" then
    if not (is_api or is_auth or is_health) then
      return text_reply(self, req, 404, "Endpoint not found.", origin)
    end
    return self:_preflight(req, origin)
  end

  if method == "GET" then
    if not is_health then
      local status, body, ctype
      if self.cfg.staticFiles then status, body, ctype = static.get(self.cfg.staticFiles, path) end
      if not status then return text_reply(self, req, 404, "Endpoint not found.", origin) end
      return req:respond(status, body, { ["Content-Type"] = ctype })
    end
    if self.server:accepting() then return text_reply(self, req, 200, "", origin) end
    return text_reply(self, req, 503, "", origin)
  end

  -- POST
  if not (is_api or is_auth) then return text_reply(self, req, 404, "Endpoint not found.", origin) end
  if not is_json_content_type(req:header("Content-Type")) then
    return text_reply(self, req, 415,
      'Invalid "Content-Type" header. Supported media types: "application/json"', origin)
  end
  local body = req:body()
  if body == nil then
    return text_reply(self, req, 413, "Failed to parse body of request: request entity too large", origin)
  end
  local msg, err = decode(body)
  if err or msg == nil then
    return text_reply(self, req, 400, "Failed to parse body of request: " .. (err or "empty body"), origin)
  end
  if not json.is_object(msg) then
    return text_reply(self, req, 400,
      "Failed to parse body of request: the top level must be a JSON object (got " .. M.json_type(msg) .. ")", origin)
  end
  if is_auth then return self:_auth(req, msg, origin) end
  return self:_batch(req, msg, origin)
end

function M.json_type(v)
  if v == json.null then return "null" end
  if json.is_array(v) then return "array" end
  local t = type(v)
  if t == "table" then return "object" end
  return t
end

function Api:_preflight(req, origin)
  local requested = req:header("Access-Control-Request-Method")
  if not requested then
    return text_reply(self, req, 400, 'Missing header "Access-Control-Request-Method".', origin)
  end
  if requested ~= "GET" and requested ~= "POST" and requested ~= "OPTIONS" then
    return text_reply(self, req, 403,
      "Method " .. requested .. " is forbidden. Supported methods: GET, POST, OPTIONS", origin)
  end
  local h = {}
  for k, v in pairs(self:_headers(TEXT, origin)) do h[k] = v end
  h["Content-Type"] = nil
  h["Access-Control-Allow-Methods"] = ALLOW_METHODS
  h["Access-Control-Allow-Headers"] = ALLOW_HEADERS
  req:respond(204, "", h)
end

local function connection_data(req)
  return { remoteAddress = req:client_address(), headers = {
    ["user-agent"] = req:header("User-Agent"), origin = req:header("Origin") } }
end

-- Answers an authentication failure: 429 once the client address has failed
-- too often (auth.lua counts), 500 when a token could not be stored, else
-- 401 with the endpoint's text. Returns nothing.
local function auth_failure(self, req, origin, reason, retry_after, text)
  if reason == "limited" then
    return text_reply(self, req, 429, "Too many failed authentication attempts from this address. Try again in "
      .. retry_after .. " seconds.", origin, { ["Retry-After"] = tostring(retry_after) })
  elseif reason == "error" then
    return text_reply(self, req, 500, "Internal server error.", origin)
  end
  text_reply(self, req, 401, text, origin)
end

function Api:_auth(req, msg, origin)
  self.auth:login(msg, connection_data(req), function(user, reason, retry_after)
    if not user then
      return auth_failure(self, req, origin, reason, retry_after, "Invalid authentication data.")
    end
    json_reply(self, req, 200, {
      success = true, token = user.token, clientData = user.clientData == nil and json.null or user.clientData,
    }, origin)
  end)
end

-- Validates and runs the commands of an authenticated request.
local function run_batch(self, req, msg, origin, user)
  local verr = validate.batch(msg.body)
  if verr then return text_reply(self, req, 400, verr, origin) end
  self.dispatcher:execute(msg.body, { user = user }, function(text, err)
    if not text then
      log.error("cannot encode a response: %s", err)
      return text_reply(self, req, 500, "Internal server error.", origin)
    end
    req:respond(200, text, self:_headers(JSON, origin))
  end)
end

function Api:_batch(req, msg, origin)
  local err = validate.envelope(msg, self.envelope_opts)
  if err then return text_reply(self, req, 400, err, origin) end
  if msg.token == nil and msg.authData == nil then
    -- no credentials: only open auth can accept, and it needs no connection data
    local user = self.auth:anonymous()
    if not user then return auth_failure(self, req, origin, "missing", nil, "Unsuccessful authentication attempt.") end
    return run_batch(self, req, msg, origin, user)
  end
  self.auth:request(msg.token, msg.authData, connection_data(req), function(user, reason, retry_after)
    if not user then
      return auth_failure(self, req, origin, reason, retry_after, "Unsuccessful authentication attempt.")
    end
    run_batch(self, req, msg, origin, user)
  end)
end

return M
