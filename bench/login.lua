-- wrk script for bench/run's login flood: every request is a correct sign-in,
--   POST /auth/login  {"email": BENCH_EMAIL, "password": BENCH_PASSWORD}
-- so the gateway runs bcrypt in full for each one. At the end it prints the mix of statuses
-- the flood got ("flood statuses: 200=N 429=M ..."), which bench/run reports.

local email = os.getenv("BENCH_EMAIL")
local password = os.getenv("BENCH_PASSWORD")
if not email or not password then
  io.stderr:write("login.lua: set BENCH_EMAIL and BENCH_PASSWORD\n")
  os.exit(2)
end

wrk.method = "POST"
wrk.path = "/auth/login"
wrk.body = string.format('{"email":"%s","password":"%s"}', email, password)
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Runs in each wrk thread: count the answers by status.
statuses = {}

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- Runs once, in the main Lua state: merge the threads' counts.
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses") or {}
    for status, n in pairs(counts) do
      total[status] = (total[status] or 0) + n
    end
  end
  local keys = {}
  for status in pairs(total) do
    table.insert(keys, status)
  end
  table.sort(keys)
  local parts = {}
  for _, status in ipairs(keys) do
    table.insert(parts, string.format("%d=%d", status, total[status]))
  end
  if #parts == 0 then
    table.insert(parts, "none")
  end
  io.write("flood statuses: " .. table.concat(parts, " ") .. "\n")
end
