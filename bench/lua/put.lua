-- wrk script for the update scenario: PUT the same group over and over with
-- two bodies in turn (same name, different description and devices), so every
-- request is a real change that must be written and fsynced.
-- Arguments: the group ID (wrk ... -- grp-1) and the method (default PUT; the
-- peers scenario sends PATCH to PocketBase, whose records are updated so).
-- The path is the URL's (wrk.path), or /api/groups/ID when the URL has none.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local reqs, n
function init(args)
   local id = args[1] or "grp-1"
   local method = args[2] or "PUT"
   local path = wrk.path
   if path == nil or path == "" or path == "/" then path = "/api/groups/" .. id end
   local headers = with_headers({ ["Content-Type"] = "application/json" })
   local function devs(tag)
      local d = {}
      for i = 0, 9 do d[#d + 1] = string.format('"%s-dev-%d"', tag, i) end
      return table.concat(d, ",")
   end
   reqs = {}
   for k, tag in ipairs({ "a", "b" }) do
      local body = string.format(
         '{"name":"put-bench-%s","description":"PUT benchmark body %s","devices":[%s]}',
         id, tag, devs(tag))
      reqs[k] = wrk.format(method, path, headers, body)
   end
   n = 0
end

function request()
   n = n + 1
   return reqs[n % 2 + 1]
end
