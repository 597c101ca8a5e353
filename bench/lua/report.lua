-- Shared part of every fleetgroups benchmark script for wrk: a done() that
-- prints one machine-readable line, which bench/run.sh reads, and a helper
-- that builds request headers on top of the ones given with wrk -H (wrk.format
-- does not merge them by itself when it is handed a header table).
-- The line: BENCH rps=<req/s> p50_us=<µs> p99_us=<µs> requests=<n>
--           non2xx=<HTTP status >= 400> sockerr=<connect+read+write+timeout>

function with_headers(extra)
   local h = {}
   for k, v in pairs(wrk.headers) do h[k] = v end
   for k, v in pairs(extra or {}) do h[k] = v end
   return h
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      "BENCH rps=%.1f p50_us=%d p99_us=%d requests=%d non2xx=%d sockerr=%d\n",
      summary.requests / secs, latency:percentile(50), latency:percentile(99),
      summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
