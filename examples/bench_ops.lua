--- Op benchmark: hero.matmul against a bare cblas_sgemm on the same shapes (the transformer's
-- projection and MLP GEMMs, a linear layer's transposed weight, batched attention products), at
-- 1 and 2 threads. f32 products of the transformer's sizes run on hero's packed kernels
-- (csrc/cpu/packed_gemm.c), so the ratios compare those with OpenBLAS. Run with `make bench-ops`;
-- then runs the pointwise and reduction benchmarks when they exist beside this file.
--
-- Columns: GFLOP/s of hero.matmul returning a fresh tensor ("new"), of hero.matmul(a, b, out)
-- writing into a preallocated tensor ("out="), of the bare sgemm ("raw"), and the ratios
-- raw time / hero time (goal >= 0.97). A fresh output costs page faults that the bare call,
-- reusing one buffer, does not pay; "out=" isolates hero's own overhead.
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local core = hero.core

local now = core._bench_now
local script_dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

--- Seconds per call of fn() over reps calls (fresh results are freed at once).
local function time_calls(fn, reps)
  local t0 = now()
  for _ = 1, reps do
    local r = fn()
    if r then r:free() end
  end
  return (now() - t0) / reps
end

local function repeats_for(flops)
  return math.max(1, math.min(20, math.ceil(0.5e9 / flops)))
end

--- The machine may be shared: after a warm-up, alternate the three measurements twice and keep
-- the best of each, the least disturbed figure.
local function compare(new_fn, out_fn, raw_fn, reps)
  time_calls(new_fn, 1)
  local best = {math.huge, math.huge, math.huge}
  for _ = 1, 2 do
    best[1] = math.min(best[1], time_calls(new_fn, reps))
    best[2] = math.min(best[2], time_calls(out_fn, reps))
    best[3] = math.min(best[3], raw_fn(reps))
  end
  return best
end

local function report(label, flops, t)
  local g = function(s) return flops / s / 1e9 end
  print(string.format("  %-40s %6.1f %6.1f %6.1f   %5.3f %5.3f", label, g(t[1]), g(t[2]), g(t[3]), t[3] / t[1],
    t[3] / t[2]))
end

-- GEMM speed does not depend on the values (as long as there are no denormals or NaN).
local function filled(size) return hero.full(size, 0.5) end

local function bench(label, a, b, raw_fn)
  local shape = hero.matmul(a:narrow(1, 1, 1), b):size()
  shape[1] = a:size(1)
  local out = hero.empty(shape)
  local flops = 2.0 * out:numel() * a:size(-1)
  local t = compare(function() return hero.matmul(a, b) end, function() hero.matmul(a, b, out) end, raw_fn,
    repeats_for(flops))
  report(label, flops, t)
  out:free()
end

local saved_threads = hero.get_num_threads()
for _, threads in ipairs {1, 2} do
  hero.set_num_threads(threads)
  print(string.format("matmul f32, %d thread%s%s GFLOP/s: new    out=   raw     ratio: new   out=", threads,
    threads == 1 and "" or "s", string.rep(" ", threads == 1 and 13 or 12)))
  for _, kn in ipairs {{768, 768}, {768, 3072}, {3072, 768}} do
    local k, n = kn[1], kn[2]
    for _, m in ipairs {512, 660, 1024, 2048, 4096} do
      local a, b = filled {m, k}, filled {k, n}
      bench(string.format("%dx%d @ %dx%d", m, k, k, n), a, b, function(r) return core._bench_sgemm(m, n, k, r) end)
      a:free()
      b:free()
    end
  end

  -- A linear layer: x @ w^T with w stored out_features x in_features, read transposed by BLAS.
  for _, kn in ipairs {{768, 3072}, {3072, 768}} do
    local k, n, m = kn[1], kn[2], 2048
    local x, w = filled {m, k}, filled {n, k}
    bench(string.format("x:matmul(w:t()) %dx%d, w %dx%d", m, k, n, k), x, w:t(),
      function(r) return core._bench_sgemm(m, n, k, r) end)
    x:free()
    w:free()
  end

  -- Attention: 12 heads, 660 tokens, head size 64 (q @ k^T, then probabilities @ v).
  local heads, len, d = 12, 660, 64
  local q, kk = filled {heads, len, d}, filled {heads, len, d}
  bench(string.format("%d x %dx%d @ (%dx%d)^T", heads, len, d, len, d), q, kk:transpose(2, 3),
    function(r) return core._bench_sgemm(len, len, d, r, heads) end)
  local p = filled {heads, len, len}
  bench(string.format("%d x %dx%d @ %dx%d", heads, len, len, len, d), p, kk,
    function(r) return core._bench_sgemm(len, d, len, r, heads) end)
  q:free()
  kk:free()
  p:free()
end
hero.set_num_threads(saved_threads)

for _, name in ipairs {"bench_pointwise.lua", "bench_reduce.lua"} do
  local path = script_dir .. "/" .. name
  local f = io.open(path, "r")
  if f then
    f:close()
    dofile(path)
  end
end
