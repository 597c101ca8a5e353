-- wrk script for plain GET scenarios (one group, the list of groups): the
-- request is the URL given to wrk with its -H headers, unchanged; this script
-- only adds the machine-readable report line of report.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
