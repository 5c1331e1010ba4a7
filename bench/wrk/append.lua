-- wrk script: durable appends to ferry, the body ferry-bench's own HTTP
-- client sends (crates/ferry-bench/src/workload.rs), spread over 16 ledgers.
--   FERRY_WRK_PAYLOAD=1024 FERRY_WRK_BATCH=1 \
--     wrk -t1 -c64 -d10s --latency -s bench/wrk/append.lua http://127.0.0.1:7070
--
-- Environment:
--   FERRY_WRK_PAYLOAD  bytes of each entry's payload, a JSON object {"d":"xxxx…"} [1024]
--   FERRY_WRK_BATCH    entries per request: 1 sends {"payload":…}, more send
--                      {"entries":[{"payload":…},…]} (one atomic batch) [1]
--   FERRY_WRK_LEDGERS  ledgers bench-00 … bench-NN, taken in turn [16]
--   FERRY_WRK_TOKEN    bearer token, when the server has auth
--
-- done() prints one JSON line to stdout, for the harness to parse instead of
-- wrk's text:
--   {"requests":N,"duration_us":N,"bytes":N,
--    "errors":{"connect":N,"read":N,"write":N,"status":N,"timeout":N},
--    "latency_us":{"p50":N,"p99":N,"p999":N,"max":N},
--    "histogram":[[us,count],…]}
-- `histogram` is every latency wrk recorded (value in µs, how many), so runs
-- can be merged exactly. wrk counts an answer >= 400 as a "status" error;
-- the harness fails a run with any error, so refusals are never taken for
-- speed (ferry answers 201 to every append it made durable).
local ledgers = tonumber(os.getenv("FERRY_WRK_LEDGERS") or "16")
local size = tonumber(os.getenv("FERRY_WRK_PAYLOAD") or "1024")
local batch = tonumber(os.getenv("FERRY_WRK_BATCH") or "1")
local token = os.getenv("FERRY_WRK_TOKEN")

-- {"d":"xxxx…"}, exactly `bytes` long (the smallest is {"d":""}, 8 bytes).
local function payload_of(bytes)
  return '{"d":"' .. string.rep("x", math.max(0, bytes - 8)) .. '"}'
end

local function body_of(bytes, entries)
  local entry = '{"payload":' .. payload_of(bytes) .. '}'
  if entries <= 1 then return entry end
  local all = {}
  for i = 1, entries do all[i] = entry end
  return '{"entries":[' .. table.concat(all, ",") .. ']}'
end

local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local body = body_of(size, batch)
  local headers = { ["Content-Type"] = "application/json" }
  if token then headers["Authorization"] = "Bearer " .. token end
  requests = {}
  for i = 0, ledgers - 1 do
    local path = string.format("/v1/ledgers/bench-%02d/entries", i)
    requests[i] = wrk.format("POST", path, headers, body)
  end
  n = id
end

function request()
  n = n + 1
  return requests[n % ledgers]
end

function done(summary, latency, requests)
  local e = summary.errors
  local pairs_ = {}
  for i = 1, #latency do
    local value, count = latency(i)
    pairs_[#pairs_ + 1] = string.format("[%d,%d]", value, count)
  end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p99":%d,"p999":%d,"max":%d},"histogram":[%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    table.concat(pairs_, ",")))
end
