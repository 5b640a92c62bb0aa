-- wrk script for the Pointsman benchmark (benchmarks/run.sh).
--
-- Half of the requests carry an `X-User-Id: <random id>` header (the sticky
-- routing key), the other half carry no routing hint at all.  The requests are
-- pre-built once per thread and cycled, so the Lua work per request is a table
-- lookup and does not skew the comparison between targets.
--
-- Every target (backend direct, nginx proxy, Pointsman) gets the same script.
--
-- Headers given to wrk with -H (the TLS phase's `Connection: close`) go on every request:
-- wrk.format only adds wrk.headers when it is given no headers of its own, so the sticky
-- requests copy them in.

local pool_size = 4096
local requests = {}
local counter = 0
local threads_created = 0

function setup(thread)
   -- runs in the main Lua state; `bench_thread_id` becomes a global of the thread's state
   threads_created = threads_created + 1
   thread:set("bench_thread_id", threads_created)
end

function init(args)
   local tid = tonumber(rawget(_G, "bench_thread_id")) or 0
   math.randomseed(os.time() * 1000 + tid * 7919)
   for i = 1, pool_size do
      if i % 2 == 0 then
         local headers = {}
         for name, value in pairs(wrk.headers) do
            headers[name] = value
         end
         headers["X-User-Id"] = "u" .. tostring(math.random(1, 1000000))
         requests[i] = wrk.format("GET", "/", headers)
      else
         requests[i] = wrk.format("GET", "/")
      end
   end
end

function request()
   counter = counter % pool_size + 1
   return requests[counter]
end
