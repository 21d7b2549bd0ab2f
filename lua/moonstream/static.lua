-- Static files from one configured folder (config key `staticFiles`), for
-- pages that use the realtime endpoints (examples/browser). GET only; "/" is
-- index.html; a path with "..", a hidden part or unusual characters is not
-- found, so nothing outside the folder can be reached. Files are read whole
-- on the loop thread: this serves small example pages, not large downloads.
local M = {}

local MAX_FILE = 8 * 1024 * 1024

local TYPES = {
  html = "text/html; charset=utf-8", js = "text/javascript; charset=utf-8", css = "text/css; charset=utf-8",
  json = "application/json", svg = "image/svg+xml", png = "image/png", ico = "image/x-icon",
  txt = "text/plain; charset=utf-8", map = "application/json",
}

-- The file under dir for the URL path, or nil when there is none to serve.
local function file_for(dir, path)
  if path == "/" then path = "/index.html" end
  if #path > 256 or not path:match("^/[%w%-_./]+$") then return nil end
  for part in path:gmatch("[^/]+") do
    if part:sub(1, 1) == "." then return nil end
  end
  return dir .. path
end

-- Returns status, body, content type for GET path from folder dir; nil when
-- the path names no file (the caller answers 404 as for any unknown path).
function M.get(dir, path)
  local file = file_for(dir, path)
  if not file then return nil end
  local f = io.open(file, "rb")
  if not f then return nil end
  local size = f:seek("end")
  if not size or size > MAX_FILE then f:close(); return nil end
  f:seek("set")
  local body = f:read("a")
  f:close()
  if not body then return nil end -- a folder
  local ext = file:match("%.(%w+)$")
  return 200, body, TYPES[ext] or "application/octet-stream"
end

return M
