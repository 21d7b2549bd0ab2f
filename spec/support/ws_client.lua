-- A WebSocket test client (RFC 6455) on LuaSocket, for specs that run the
-- server in the same process: every socket operation is non-blocking and,
-- while it waits, runs the server's loop, so both sides progress on one
-- thread. It writes raw frames on purpose (fragments, bad opcodes, unmasked
-- frames, garbage) so specs can check how the server copes.
--
--   local WS = require "support.ws_client"
--   local c = WS.connect(loop, port, "/path" [, { headers = {...}, extra = bytes }])
--   c.status, c.headers          the handshake answer (status 101 on success)
--   c:send_text(s), c:send_binary(s), c:send_frame(opcode, payload [, opts]), c:send_raw(bytes)
--   c:read_frame() -> { opcode, fin, payload, code, reason } | nil, "closed" | "timeout"
--   c:read_message() -> data, opcode | nil, err    (reassembles fragments, answers nothing)
--   c:close_handshake(code, reason) -> the server's close frame
--   c:shutdown()                 drops the TCP connection without a close frame
local socket = require "socket"

local M = {}
local Client = {}
Client.__index = Client

local char, byte, concat = string.char, string.byte, table.concat

M.OP = { CONT = 0, TEXT = 1, BINARY = 2, CLOSE = 8, PING = 9, PONG = 10 }

local MAX_STEPS = 1500 -- loop:run_once(5) each: a wait fails after about 8 s instead of hanging

-- Runs the server loop once; counts steps so a wait always ends.
function Client:step()
  self.steps = self.steps + 1
  self.loop:run_once(self.steps > 50 and 5 or 0)
end

-- Reads whatever is available into self.buf; false once the peer closed.
function Client:fill()
  local data, err, partial = self.sock:receive(65536)
  local chunk = data or partial
  if chunk and #chunk > 0 then self.buf = self.buf .. chunk end
  if err == "closed" then self.eof = true end
  return not self.eof
end

-- Sends all of s, running the server meanwhile.
function Client:send_raw(s)
  local i = 1
  local steps = 0
  while i <= #s do
    local sent, err, last = self.sock:send(s, i)
    if sent then return true end
    if err == "closed" then return nil, "closed" end
    i = (last or i - 1) + 1
    steps = steps + 1
    if steps > MAX_STEPS then return nil, "timeout" end
    self:step()
  end
  return true
end

local function mask_payload(payload, key)
  if key == "\0\0\0\0" then return payload end
  local k = { byte(key, 1, 4) }
  local out = {}
  for i = 1, #payload do
    out[i] = char(byte(payload, i) ~ k[(i - 1) % 4 + 1])
  end
  return concat(out)
end

-- One frame: opts.fin (default true), opts.mask (default true), opts.rsv
-- (bits 4-6 of the first byte), opts.key (4 bytes).
function M.frame(opcode, payload, opts)
  opts = opts or {}
  local b1 = (opts.fin == false and 0 or 0x80) | ((opts.rsv or 0) << 4) | opcode
  local masked = opts.mask ~= false
  local len = #payload
  local head
  if len < 126 then
    head = char(b1, (masked and 0x80 or 0) | len)
  elseif len < 65536 then
    head = char(b1, (masked and 0x80 or 0) | 126) .. string.pack(">I2", len)
  else
    head = char(b1, (masked and 0x80 or 0) | 127) .. string.pack(">I8", len)
  end
  if not masked then return head .. payload end
  -- large payloads use the all-zero key (still a masked frame) to stay fast
  local key = opts.key or (len > 4096 and "\0\0\0\0" or char(math.random(0, 255), math.random(0, 255),
    math.random(0, 255), math.random(0, 255)))
  return head .. key .. mask_payload(payload, key)
end

function Client:send_frame(opcode, payload, opts)
  return self:send_raw(M.frame(opcode, payload or "", opts))
end

function Client:send_text(s) return self:send_frame(M.OP.TEXT, s) end
function Client:send_binary(s) return self:send_frame(M.OP.BINARY, s) end

-- Parses one frame from self.buf, or returns nil when incomplete.
local function parse_frame(buf)
  if #buf < 2 then return nil end
  local b1, b2 = byte(buf, 1, 2)
  local len, pos = b2 & 0x7f, 3
  if len == 126 then
    if #buf < 4 then return nil end
    len, pos = string.unpack(">I2", buf, 3)
  elseif len == 127 then
    if #buf < 10 then return nil end
    len, pos = string.unpack(">I8", buf, 3)
  end
  if b2 & 0x80 ~= 0 then error("server frames must not be masked") end
  if #buf < pos + len - 1 then return nil end
  local f = { fin = b1 & 0x80 ~= 0, rsv = (b1 >> 4) & 7, opcode = b1 & 0x0f, payload = buf:sub(pos, pos + len - 1) }
  if f.opcode == M.OP.CLOSE then
    if #f.payload >= 2 then
      f.code = string.unpack(">I2", f.payload)
      f.reason = f.payload:sub(3)
    else
      f.code = 1005
      f.reason = ""
    end
  end
  return f, buf:sub(pos + len)
end

function Client:read_frame()
  local start = self.steps
  while true do
    local f, rest = parse_frame(self.buf)
    if f then
      self.buf = rest
      return f
    end
    if self.eof then return nil, "closed" end
    if self.steps - start > MAX_STEPS then return nil, "timeout" end
    self:fill()
    if not self.eof then
      f = parse_frame(self.buf)
      if not f then self:step() end
    end
  end
end

-- The next data message (control frames other than close are skipped).
function Client:read_message()
  local parts, opcode = {}, nil
  while true do
    local f, err = self:read_frame()
    if not f then return nil, err end
    if f.opcode == M.OP.CLOSE then return nil, "close", f end
    if f.opcode == M.OP.TEXT or f.opcode == M.OP.BINARY then
      opcode = f.opcode
      parts = { f.payload }
    elseif f.opcode == M.OP.CONT then
      parts[#parts + 1] = f.payload
    end
    if (f.opcode < 8) and f.fin then return concat(parts), opcode end
  end
end

-- Sends a close frame and returns the server's close frame.
function Client:close_handshake(code, reason)
  local payload = code and (string.pack(">I2", code) .. (reason or "")) or ""
  self:send_frame(M.OP.CLOSE, payload)
  while true do
    local f, err = self:read_frame()
    if not f then return nil, err end
    if f.opcode == M.OP.CLOSE then return f end
  end
end

-- Waits until the server closes the TCP connection.
function Client:wait_eof()
  local start = self.steps
  while not self.eof do
    if self.steps - start > MAX_STEPS then return false end
    self:fill()
    if not self.eof then self:step() end
  end
  return true
end

function Client:shutdown()
  self.sock:close()
  self.eof = true
end

-- A valid random Sec-WebSocket-Key.
function M.key()
  local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local t = {}
  for i = 1, 21 do
    local n = math.random(1, 64)
    t[i] = b64:sub(n, n)
  end
  local i = math.random(1, 4) -- the last character may carry 2 bits only
  return concat(t) .. ("AQgw"):sub(i, i) .. "=="
end

-- Connects, sends the handshake (opts.headers replace or remove (false)
-- the defaults; opts.method; opts.extra is sent in the same write) and reads
-- the answer's status line and headers.
function M.connect(loop, port, path, opts)
  opts = opts or {}
  local sock = assert(socket.tcp())
  sock:settimeout(0)
  sock:connect("127.0.0.1", port) -- non-blocking: completes as the loop runs
  local c = setmetatable({ loop = loop, sock = sock, buf = "", steps = 0, eof = false }, Client)
  local key = M.key()
  local headers = { Host = "127.0.0.1:" .. port, Upgrade = "websocket", Connection = "Upgrade",
    ["Sec-WebSocket-Key"] = key, ["Sec-WebSocket-Version"] = "13" }
  for k, v in pairs(opts.headers or {}) do headers[k] = v or nil end
  local lines = { (opts.method or "GET") .. " " .. path .. " HTTP/1.1" }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  c.key = key
  -- wait for the connection (writable)
  local steps = 0
  while true do
    local _, w = socket.select(nil, { sock }, 0)
    if w[1] or w[sock] then break end
    steps = steps + 1
    assert(steps < MAX_STEPS, "cannot connect")
    c:step()
  end
  assert(c:send_raw(concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.extra or "")))
  while true do
    local head_end = c.buf:find("\r\n\r\n", 1, true)
    if head_end then
      local head = c.buf:sub(1, head_end - 1)
      c.buf = c.buf:sub(head_end + 4)
      c.status = tonumber(head:match("^HTTP/1%.1 (%d+)"))
      c.headers = {}
      for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do c.headers[k:lower()] = v end
      break
    end
    if c.eof then break end
    assert(c.steps < MAX_STEPS, "no handshake answer")
    c:fill()
    if not c.buf:find("\r\n\r\n", 1, true) then c:step() end
  end
  if c.status and c.status ~= 101 then
    -- read the body of an error answer (Content-Length)
    local n = tonumber(c.headers["content-length"] or "0")
    while #c.buf < n and not c.eof and c.steps < MAX_STEPS do
      c:fill()
      if #c.buf < n then c:step() end
    end
    c.body = c.buf:sub(1, n)
  end
  return c
end

return M
