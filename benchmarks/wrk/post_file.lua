-- wrk script: POST the file named by $WRK_BODY (Content-Type $WRK_TYPE) on every request and
-- print one JSON line with the latency percentiles (microseconds) and counts when done.
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_TYPE") or "application/octet-stream"

function done(summary, latency, requests)
  local p = {}
  for _, q in ipairs({50, 90, 95, 99, 99.9}) do
    p[#p + 1] = string.format('"p%s_us": %d', tostring(q):gsub("%.", "_"), latency:percentile(q))
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "mean_us": %.1f, "stdev_us": %.1f, "max_us": %d, %s}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout, latency.mean, latency.stdev, latency.max, table.concat(p, ", ")))
end
