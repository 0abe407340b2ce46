-- wrk script: optional per-connection pacing and one machine-readable result line.
--
-- Pacing: set the environment variable WRK_DELAY_MS (> 0) to make every connection wait that many
-- milliseconds before each request, which bounds the offered rate to about
-- connections * 1000 / (WRK_DELAY_MS + latency) requests/s (wrk2 is not in Debian).
--
-- Note: wrk's summary.errors.status counts responses with status > 399 only; run.sh checks every
-- target with curl for an exact 200 before it is loaded, so 3xx cannot pass unnoticed either.

local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0") or 0
if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d bytes=%d lat_p50_us=%d lat_p90_us=%d lat_p99_us=%d"
      .. " lat_p999_us=%d lat_max_us=%d lat_mean_us=%.1f err_connect=%d err_read=%d"
      .. " err_write=%d err_timeout=%d err_status=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status))
end
