-- wrk script for the token exchange scenario: POST /api/Auth/Token with the
-- correct credentials every time (so no failed-login limit is ever reached).
-- Arguments: userName and apiKey (wrk ... -- admin KEY).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local req
function init(args)
   local body = string.format('{"userName":"%s","apiKey":"%s"}', args[1], args[2])
   req = wrk.format("POST", "/api/Auth/Token",
      with_headers({ ["Content-Type"] = "application/json" }), body)
end

function request()
   return req
end
