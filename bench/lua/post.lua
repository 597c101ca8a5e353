-- wrk script for the create scenario: POST to the URL's path (/api/groups) with a unique name per
-- request. Names are "<prefix>r<run>-<thread>-<counter>": the prefix comes
-- from the script argument (wrk ... -- PREFIX), the run number from the
-- environment variable BENCH_RUN (bench/run.sh numbers every wrk run), so that
-- repeated runs against the same data directory never hit the 409 of a
-- duplicate name. Without BENCH_RUN, the time in seconds stands in.
-- Each group has a description and 10 device IDs, like the seeded groups.
-- The request is assembled by plain concatenation around a head built once
-- (wrk.format per request would make wrk, not the server, the bottleneck
-- when the ceiling is measured with this same script).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local threads = {}
function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

local prefix, counter, head
function init(args)
   local run = os.getenv("BENCH_RUN") or tostring(os.time())
   prefix = (args[1] or "p") .. "r" .. run .. "-" .. tostring(tid or 1)
   counter = 0
   -- wrk.format with an empty body ends in "Content-Length: 0\r\n\r\n" (or
   -- has no Content-Length); cut it there and append our own.
   -- The path is the URL's (wrk.path): /api/groups here, a PocketBase
   -- collection's records in the peers scenario.
   local h = wrk.format("POST", nil,
      with_headers({ ["Content-Type"] = "application/json" }), "")
   h = h:gsub("\r\n\r\n$", "\r\n"):gsub("[Cc]ontent%-[Ll]ength: %d+\r\n", "")
   head = h
end

function request()
   counter = counter + 1
   local n = prefix .. "-" .. counter
   local body = '{"name":"bench-' .. n .. '","description":"Created by the POST benchmark","devices":["'
      .. n .. '-d0","' .. n .. '-d1","' .. n .. '-d2","' .. n .. '-d3","' .. n .. '-d4","'
      .. n .. '-d5","' .. n .. '-d6","' .. n .. '-d7","' .. n .. '-d8","' .. n .. '-d9"]}'
   return head .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end
