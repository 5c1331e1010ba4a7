-- wrk script: single durable appends of a 1 KiB JSON payload (or
-- FERRY_WRK_PAYLOAD bytes) spread over 16 ledgers, one POST per request.
--   wrk -t1 -c64 -d10s -s bench/wrk/append.lua http://127.0.0.1:7070
-- wrk counts answers >= 400 as errors ("Non-2xx or 3xx responses"); the
-- harness fails a run that has any, so refusals are never taken for speed.
local ledgers = tonumber(os.getenv("FERRY_WRK_LEDGERS") or "16")
local size = tonumber(os.getenv("FERRY_WRK_PAYLOAD") or "1024")
local token = os.getenv("FERRY_WRK_TOKEN")

local function body_of(bytes)
  -- {"payload":{"pad":"xxxx…"}} whose payload is `bytes` long.
  local overhead = #'{"pad":""}'
  return '{"payload":{"pad":"' .. string.rep("x", math.max(0, bytes - overhead)) .. '"}}'
end

local body = body_of(size)
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  requests = {}
  local headers = { ["Content-Type"] = "application/json" }
  if token then headers["Authorization"] = "Bearer " .. token end
  for i = 0, ledgers - 1 do
    requests[i] = wrk.format("POST", "/v1/ledgers/bench-" .. i .. "/entries", headers, body)
  end
  n = id
end

function request()
  n = n + 1
  return requests[n % ledgers]
end

function done(summary, latency, requests)
  io.stderr:write(string.format("non-2xx answers: %d\n", summary.errors.status))
end
