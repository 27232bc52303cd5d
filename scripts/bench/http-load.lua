-- wrk script for scripts/bench-api.sh: GETs or PUTs cycling over COUNT paths
-- PREFIX/f0000 .. PREFIX/f<COUNT-1>.
--
-- Usage: wrk ... -s http-load.lua URL -- METHOD PREFIX COUNT THREADS [SIZE NONCE]
--
-- THREADS is wrk's -t: thread i of THREADS starts at path i*COUNT/THREADS,
-- so that the threads do not walk the same paths in step. A PUT body is
-- SIZE bytes: 48 bytes unique to the request (NONCE, thread, counter), then
-- the same random bytes, so that no two bodies are equal (no content
-- deduplication) while building one costs little. The environment variable
-- BENCH_AUTH, when set, is sent as the Authorization header.
--
-- Responses outside 2xx are counted by status. done() prints one line:
-- "BENCH requests=N duration_us=N rps=N non2xx=N statuses=CODExN,...|-
--  connect=N read=N write=N timeout=N p50_us=N p99_us=N"
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  method = args[1]
  prefix = args[2]
  count = tonumber(args[3])
  local nthreads = tonumber(args[4])
  size = tonumber(args[5] or "0")
  nonce = args[6] or ""
  pos = math.floor(tid * count / nthreads)
  counter = 0
  non2xx = 0
  bad = {}
  headers = {}
  local auth = os.getenv("BENCH_AUTH")
  if auth and auth ~= "" then
    headers["Authorization"] = auth
  end
  if method == "PUT" then
    math.randomseed(os.time() * 100 + tid)
    local t = {}
    for i = 1, size - 48 do
      t[i] = string.char(math.random(0, 255))
    end
    rest = table.concat(t)
  end
end

function request()
  local path = string.format("%s/f%04d", prefix, pos)
  pos = (pos + 1) % count
  counter = counter + 1
  if method == "PUT" then
    local head = string.format("%-48s", nonce .. ":" .. tid .. ":" .. counter)
    return wrk.format("PUT", path, headers, head .. rest)
  end
  return wrk.format("GET", path, headers)
end

function response(status, hdrs, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    bad[status] = (bad[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local n, codes, list = 0, {}, {}
  for _, t in ipairs(threads) do
    n = n + (t:get("non2xx") or 0)
    for k, v in pairs(t:get("bad") or {}) do
      codes[k] = (codes[k] or 0) + v
    end
  end
  for k, v in pairs(codes) do
    table.insert(list, k .. "x" .. v)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f non2xx=%d statuses=%s connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6), n,
    (#list > 0 and table.concat(list, ",") or "-"), e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
