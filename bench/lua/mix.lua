-- wrk script for the 90/10 read/write mix: 90 % GET of a random group, 10 %
-- PUT of a random group (alternating between two bodies per group, so each
-- write is a real change). The groups are the IDs listed one per line in the
-- file named by the script argument (wrk ... -- /path/to/ids).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local gets, puts, flips
function init(args)
   local ids = {}
   for line in io.lines(args[1]) do
      if line ~= "" then ids[#ids + 1] = line end
   end
   assert(#ids > 0, "no group IDs in " .. tostring(args[1]))
   local jh = with_headers({ ["Content-Type"] = "application/json" })
   gets, puts, flips = {}, {}, {}
   for i, id in ipairs(ids) do
      gets[i] = wrk.format("GET", "/api/groups/" .. id, with_headers())
      puts[i] = {}
      for k, tag in ipairs({ "a", "b" }) do
         local body = string.format(
            '{"name":"mix-%s","description":"mix body %s","devices":["%s-%s-1","%s-%s-2","%s-%s-3"]}',
            id, tag, id, tag, id, tag, id, tag)
         puts[i][k] = wrk.format("PUT", "/api/groups/" .. id, jh, body)
      end
      flips[i] = 0
   end
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
   local i = math.random(#gets)
   if math.random(10) == 1 then
      flips[i] = 1 - flips[i]
      return puts[i][flips[i] + 1]
   end
   return gets[i]
end
