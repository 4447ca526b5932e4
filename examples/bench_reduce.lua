--- Memory bandwidth of reductions: sum over all elements and over the last dim of a ~5e7-element
-- f32 tensor (200 MB), plus a column sum and max and softmax over the last dim, at 1 and 2 threads.
-- Usage: lua5.4 examples/bench_reduce.lua [numel]
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above

-- A wall clock: luasystem or LuaSocket when present (busted brings luasystem), else CPU time.
local now = os.clock
do
  local ok, system = pcall(require, "system")
  if ok and system.monotime then
    now = system.monotime
  else
    local ok2, socket = pcall(require, "socket")
    if ok2 and socket.gettime then now = socket.gettime end
  end
end

local cols = 1000
local numel = tonumber(arg and arg[1]) or 5e7
local rows = math.max(1, math.floor(numel / cols))
local x = hero.full({rows, cols}, 0.5, {dtype = "f32"})
local gbytes = rows * cols * 4 / 1e9

local function best_of(reps, fn)
  local best = math.huge
  for _ = 1, reps do
    local t0 = now()
    fn()
    local dt = now() - t0
    if dt < best then best = dt end
  end
  return best
end

local cases = {
  {"sum over all elements", function() return x:sum() end},
  {"sum over the last dim", function() return x:sum(-1) end},
  {"sum over the first dim", function() return x:sum(1) end},
  {"max over the last dim", function() return x:max(-1) end},
  {"softmax over the last dim", function() return x:softmax(-1) end, 2},
}

print(string.format("f32 tensor %dx%d (%.0f MB)", rows, cols, gbytes * 1000))
local before = hero.get_num_threads()
for _, threads in ipairs {1, 2} do
  hero.set_num_threads(threads)
  for _, c in ipairs(cases) do
    local name, fn, traffic = c[1], c[2], c[3] or 1 -- softmax reads and writes
    fn()
    local dt = best_of(3, fn)
    print(string.format("%d thread%s  %-26s %8.2f ms  %6.2f GB/s", threads, threads == 1 and " " or "s", name,
      dt * 1e3, traffic * gbytes / dt))
  end
end
hero.set_num_threads(before)
