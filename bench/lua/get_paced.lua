-- wrk script for a paced GET: the URL given to wrk with its -H headers, each
-- connection waiting a fixed number of milliseconds (the script argument,
-- wrk ... -- MS; default 5) before each request. With a few connections this
-- sends a moderate, steady rate (about connections × 1000/MS per second while
-- answers are fast) instead of saturating the server, so its latency shows what
-- a reader sees beside another load rather than its own queueing. wrk measures
-- latency from sending to the answer, so the pause is not in it.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local pause
function init(args)
   pause = tonumber(args[1] or "5")
end

function delay()
   return pause
end
