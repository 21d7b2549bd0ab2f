-- wrk script for bench/run: the workload comes from the environment.
--   BENCH_WORKLOAD  read | write | write1 | emit10 | mixed10 | rpc | rpcws | randread
--   BENCH_RECORDS   randread: how many records (bench/r<i>, 0-based) to pick from
--   BENCH_VALIDATE  1: check every response (status 200 and "result":"SUCCESS")
--                   and report how many failed (checking slows wrk: not for timing)
-- done() prints one line: RESULT <req/s> <p50 us> <p99 us> <requests> <bad>
local workload = os.getenv("BENCH_WORKLOAD") or "read"
local validate = os.getenv("BENCH_VALIDATE") == "1"
local nrecords = tonumber(os.getenv("BENCH_RECORDS") or "1000")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local function batch(cmds) return '{"body":[' .. table.concat(cmds, ",") .. ']}' end
local function read(name) return '{"topic":"record","action":"read","recordName":"' .. name .. '"}' end
local function head(name) return '{"topic":"record","action":"head","recordName":"' .. name .. '"}' end
local function write(name, data)
  return '{"topic":"record","action":"write","recordName":"' .. name .. '","version":-1,"data":' .. data .. '}'
end
local function emit(i)
  return '{"topic":"event","action":"emit","eventName":"bench/e' .. i .. '","data":{"n":' .. i .. ',"text":"hello"}}'
end

local static = {
  read = batch { read("bench/read") },
  emit10 = (function()
    local t = {}
    for i = 1, 10 do t[i] = emit(i) end
    return batch(t)
  end)(),
  mixed10 = batch {
    read("bench/mixed1"), write("bench/mixed2", '{"n":1,"tags":["a","b"]}'), head("bench/mixed1"), emit(1),
    read("bench/mixed2"), write("bench/mixed3", '{"n":3}'), head("bench/mixed3"), emit(2),
    read("bench/mixed3"), read("bench/read"),
  },
  rpc = batch { '{"topic":"rpc","action":"make","rpcName":"add-two","data":{"numA":1,"numB":2}}' },
  -- answered by a WebSocket client (bench/rpc-provider.js), on both servers
  rpcws = batch { '{"topic":"rpc","action":"make","rpcName":"add-two-ws","data":{"numA":1,"numB":2}}' },
}

if workload == "write" then
  -- 1000 different records in turn; each thread starts at its own offset
  local i = 0
  function init(args) i = math.random(0, 999) end
  function request()
    i = (i + 1) % 1000
    return wrk.format(nil, nil, nil, batch { write("bench/w" .. i, '{"n":' .. i .. ',"name":"record ' .. i .. '"}') })
  end
elseif workload == "write1" then
  -- every write to ONE hot record (the issue 14 workload)
  local i = 0
  function request()
    i = i + 1
    return wrk.format(nil, nil, nil, batch { write("bench/hot", '{"n":' .. i .. ',"name":"the hot record"}') })
  end
elseif workload == "randread" then
  function init(args) math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 1000) end
  function request()
    return wrk.format(nil, nil, nil, batch { read("bench/r" .. math.random(0, nrecords - 1)) })
  end
else
  wrk.body = assert(static[workload], "unknown BENCH_WORKLOAD " .. workload)
end

local threads = {}
function setup(thread) threads[#threads + 1] = thread end

if validate then
  bad = 0
  sample = nil
  function response(status, headers, body)
    if status ~= 200 or not body:find('"result":"SUCCESS"', 1, true) then
      bad = bad + 1
      if not sample then sample = status .. " " .. body:sub(1, 300) end
    end
  end
end

function done(summary, latency, requests)
  local bad, sample = 0, nil
  for _, t in ipairs(threads) do
    bad = bad + (t:get("bad") or 0)
    sample = sample or t:get("sample")
  end
  local errs = summary.errors
  bad = bad + errs.connect + errs.read + errs.write + errs.status + errs.timeout
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT %.1f %d %d %d %d\n", summary.requests / secs,
    latency:percentile(50), latency:percentile(99), summary.requests, bad))
  if sample then io.write("SAMPLE " .. sample .. "\n") end
end
