-- wrk script for the create scenario: POST /api/groups with a unique name per
-- request. Names are "<prefix>-<thread>-<counter>"; the prefix comes from the
-- script argument (wrk ... -- PREFIX) and must differ between runs against the
-- same data directory, so no request ever hits the 409 of a duplicate name.
-- Each group has a description and 10 device IDs, like the seeded groups.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local threads = {}
function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

local prefix, counter, headers
function init(args)
   prefix = (args[1] or ("p" .. os.time())) .. "-" .. tostring(tid or 1)
   counter = 0
   headers = with_headers({ ["Content-Type"] = "application/json" })
end

function request()
   counter = counter + 1
   local name = prefix .. "-" .. counter
   local devices = {}
   for i = 0, 9 do devices[#devices + 1] = string.format('"%s-d%d"', name, i) end
   local body = string.format(
      '{"name":"bench-%s","description":"Created by the POST benchmark","devices":[%s]}',
      name, table.concat(devices, ","))
   return wrk.format("POST", "/api/groups", headers, body)
end
