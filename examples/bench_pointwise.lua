--- Pointwise throughput next to a STREAM-style triad (the machine's memory bandwidth).
-- Prints GB/s (bytes read + written per second) of f32 add, mul, exp and relu on 1e7 and 5e7
-- elements at 1 and 2 threads. In-place forms (a:add_(b)) measure the kernels; `a + b` also pays
-- for allocating and first touching a fresh result.
-- Usage: lua5.4 examples/bench_pointwise.lua [repeats]
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above

local repeats = tonumber(arg and arg[1]) or 3
local now = hero.core._now

local function rate(bytes, fn)
  local best = math.huge
  for _ = 1, repeats do
    local t0 = now()
    fn()
    best = math.min(best, now() - t0)
  end
  return bytes / best / 1e9
end

local saved_threads = hero.get_num_threads()
print(string.format("%-10s %7s %9s %9s %9s %9s %9s %9s", "elements", "threads", "triad", "add_", "a + b",
  "mul_", "fill+exp_", "relu_"))
for _, n in ipairs {1e7, 5e7} do
  n = math.tointeger(n)
  local a = hero.full({n}, 1.0)
  local b = hero.full({n}, 0.5)
  local x = hero.full({n}, -0.25)
  for _, threads in ipairs {1, 2} do
    hero.set_num_threads(threads)
    local triad = hero.core._bench_triad(n, repeats)
    local add_ = rate(12 * n, function() a:add_(b) end)
    local add = rate(12 * n, function() local _ = a + b end)
    local mul_ = rate(12 * n, function() a:mul_(b) end)
    -- refilling keeps the inputs finite (exp of its own output would overflow to inf); its bytes count
    local exp_ = rate(12 * n, function() x:fill_(-0.25):exp_() end)
    local relu_ = rate(8 * n, function() x:relu_() end)
    print(string.format("%-10d %7d %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f", n, threads, triad, add_, add, mul_, exp_,
      relu_))
    collectgarbage()
  end
end
hero.set_num_threads(saved_threads)
print("GB/s; triad = STREAM-style a[i] = b[i] + s*c[i] (12 bytes per element)")
