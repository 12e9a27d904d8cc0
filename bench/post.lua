-- wrk script for bench/run.sh: POSTs a chat completion and prints one machine-readable line.
--
-- Environment:
--   BENCH_KEY     the bearer key (omitted when empty: the direct and nginx runs against the fake)
--   BENCH_KEYS    several bearer keys, comma-separated (the many-customers mode): requests
--                 take them in turn, so every customer's reservations and settlements interleave
--   BENCH_STREAM  "1" for "stream": true
--
-- wrk measures a request's latency from writing it to the end of the whole response, so for
-- streams the latency is the time to the last SSE event ("data: [DONE]"), not the first byte.

local key = os.getenv("BENCH_KEY") or ""
local keys = {}
for k in string.gmatch(os.getenv("BENCH_KEYS") or "", "[^,]+") do
  keys[#keys + 1] = k
end
local stream = os.getenv("BENCH_STREAM") == "1"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

local body = '{"model":"bench-model","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64'
if stream then
  body = body .. ',"stream":true'
end
wrk.body = body .. '}'

if #keys > 1 then
  -- One header table per key, built once; each request takes the next.
  local prepared = {}
  for i, k in ipairs(keys) do
    prepared[i] = wrk.format(nil, nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. k}, wrk.body)
  end
  local turn = 0
  function request()
    turn = turn % #prepared + 1
    return prepared[turn]
  end
end

-- One line that bench/run.sh parses: latencies in microseconds, duration in microseconds.
-- errors_status is the same number wrk prints as "Non-2xx or 3xx responses" (status > 399).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d errors_status=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
