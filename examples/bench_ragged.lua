--- Ragged subtitle rows: the cross-modal transformer (config hero: 6 layers, 768/12/3072) on 20
-- rows of 3 frames + a subtitle of 5..30 tokens padded to 33, the loss reading 15% of the tokens
-- (as MLM), forward and forward+backward on one thread, three ways in alternation:
--   full    every position of every layer, then the rows the loss reads (the reference's way)
--   rows    only those rows out of the last layer, padded layout (opts.rows, opts.pack = false)
--   packed  only those rows, and every layer on the valid positions alone (opts.rows, the default)
--   lua5.4 examples/bench_ragged.lua [--reps 5] [--threads 1] [--seed 1]
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local now = hero.core._bench_now

local a = {reps = 5, threads = 1, seed = 1}
for i = 1, #arg, 2 do
  local k = arg[i]:match("^%-%-(.+)$")
  if not k or a[k] == nil then error("usage: bench_ragged.lua [--reps N] [--threads N] [--seed N]") end
  a[k] = tonumber(arg[i + 1])
end
hero.set_num_threads(a.threads)

local R, FRAMES, TXT, H = 20, 3, 30, 768
local L = FRAMES + TXT
local g = hero.Generator(a.seed)
local enc = hero.nn.TransformerEncoder {layers = 6, hidden = H, heads = 12, intermediate = 3072, dropout = 0.1,
                                        generator = g}
local x = hero.randn({R, L, H}, {generator = g}):requires_grad_()
math.randomseed(a.seed)
local mask_rows, rows, valid = {}, {}, 0
for r = 1, R do
  local len = math.random(5, TXT)
  local m = {}
  for l = 1, L do m[l] = l <= FRAMES + len and 1 or 0 end
  for l = FRAMES + 1, FRAMES + len do
    if math.random() < 0.15 then rows[#rows + 1] = (r - 1) * L + (l - 1) end
  end
  valid = valid + FRAMES + len
  mask_rows[r] = m
end
local mask = hero.tensor(mask_rows)
local idx = hero.tensor(rows, {dtype = "i64"})

local ways = {
  full = function() return enc:forward(x, mask):reshape(R * L, H):index_select(1, idx) end,
  rows = function() return enc:forward(x, mask, {rows = idx, pack = false}) end,
  packed = function() return enc:forward(x, mask, {rows = idx}) end,
}
local order = {"full", "rows", "packed"}

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

print(string.format("%d rows x %d positions, %d valid (%.0f%%), the loss reads %d; %d thread(s), %d reps",
  R, L, valid, 100 * valid / (R * L), #rows, a.threads, a.reps))
print(string.format("%-7s %12s %12s", "way", "fwd ms", "fwdbwd ms"))
for _, mode in ipairs {"fwd", "fwdbwd"} do
  local times = {}
  for _, w in ipairs(order) do times[w] = {} end
  for rep = 0, a.reps do
    for _, w in ipairs(order) do
      local t0 = now()
      if mode == "fwd" then
        hero.no_grad(ways[w])
      else
        local y = ways[w]()
        ;(y * y):mean():backward()
        x.grad = nil
        for _, p in ipairs(enc:parameters()) do p.grad = nil end
      end
      if rep > 0 then table.insert(times[w], now() - t0) end -- the first round warms up
      collectgarbage()
    end
  end
  for _, w in ipairs(order) do times[w] = median(times[w]) end
  ways[mode] = times
end
for _, w in ipairs(order) do
  print(string.format("%-7s %12.1f %12.1f   (%.2f / %.2f of full)", w, ways.fwd[w] * 1e3, ways.fwdbwd[w] * 1e3,
    ways.fwd[w] / ways.fwd.full, ways.fwdbwd[w] / ways.fwdbwd.full))
end
