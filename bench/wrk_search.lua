-- wrk script for flatcoat serve: POST /search with request bodies read from a file.
--
--   wrk -t2 -c64 -d15s --latency -s bench/wrk_search.lua http://127.0.0.1:8000 -- BODIES.jsonl
--
-- BODIES.jsonl holds one JSON request body a line ({"vectors": [[...]], "k": 10}); each connection cycles
-- through them from its own offset. At the end one line "WRK_JSON {...}" gives the counts and the latency
-- percentiles in microseconds (bench/serve.py parses it).

local bodies = {}
local next_body = 1

function init(args)
  local path = args[1]
  if path == nil then
    error("wrk_search.lua: pass the bodies file after --, e.g. -- bodies.jsonl")
  end
  for line in io.lines(path) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  if #bodies == 0 then
    error("wrk_search.lua: " .. path .. " holds no request body")
  end
  next_body = math.random(#bodies)
  wrk.method = "POST"
  wrk.path = "/search"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
