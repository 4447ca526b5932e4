--- Layer benchmark, paired with PyTorch on the same machine (examples/torch/layers.py, Debian's
-- python3-torch): one BERT-base layer (768/12/3072) on 20 x 33 tokens, the embedding + LM head pair
-- with a 50272-row vocabulary, forward and forward+backward, and AdamW over 120M parameters, at 1
-- and 2 threads. Runs alternate hero / PyTorch / hero / PyTorch ...; the table shows the median of
-- the per-round ratios hero / PyTorch (lower is better) with min and max.
--   lua5.4 examples/bench_layers.lua [--rounds 3] [--only layer|emb|adamw]
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local nn = hero.nn
local now = hero.core._bench_now

local rounds, only = 3, nil
for i = 1, #arg do
  if arg[i] == "--rounds" then rounds = tonumber(arg[i + 1]) end
  if arg[i] == "--only" then only = arg[i + 1] end
end
local script_dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  return s[(#s + 1) // 2]
end

local function time_median(fn, iters)
  fn()
  local times = {}
  for i = 1, iters do
    local t0 = now()
    fn()
    times[i] = now() - t0
    collectgarbage("step")
  end
  return median(times)
end

local function torch_time(case, mode, threads, iters)
  local cmd = string.format("OPENBLAS_NUM_THREADS=%d OMP_NUM_THREADS=%d /usr/bin/python3 %s/torch/layers.py "
    .. "--case %s --mode %s --threads %d --iters %d 2>&1", threads, threads, script_dir, case, mode, threads, iters)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local s = out:match("seconds%s+([%d%.e%-]+)")
  if not s then error("PyTorch side failed: " .. out) end
  return tonumber(s)
end

local cases = {}

function cases.layer(mode)
  local layer = nn.TransformerLayer {hidden = 768, heads = 12, intermediate = 3072, dropout = 0, init = "torch"}
  local x = hero.randn(20, 33, 768)
  if mode == "fwdbwd" then x:requires_grad_() end
  local mask = hero.ones(20, 33)
  return function()
    if mode == "fwd" then
      hero.no_grad(function() return layer:forward(x, mask) end)
    else
      layer:forward(x, mask):mean():backward()
    end
  end
end

function cases.emb(mode)
  local vocab, hidden = 50272, 768
  local emb = nn.Embedding(vocab, hidden)
  local dense = nn.Linear(hidden, hidden)
  local ln = nn.LayerNorm(hidden)
  local bias = hero.zeros(vocab):requires_grad_()
  local ids = hero.randint(0, vocab, {20, 33})
  local tgt = hero.randint(0, vocab, {660})
  return function()
    local function f()
      local h = emb:forward(ids):view(660, hidden)
      local logits = hero.linear(ln:forward(hero.gelu(dense:forward(h))), emb.weight, bias)
      return hero.cross_entropy(logits, tgt)
    end
    if mode == "fwd" then hero.no_grad(f) else f():backward() end
  end
end

function cases.adamw()
  local params = {}
  for i = 1, 150 do
    local p = hero.zeros(800000):requires_grad_()
    p.grad = hero.randn(800000) * 1e-3
    params[i] = {"p" .. i, p}
  end
  local opt = hero.optim.AdamW(params, {lr = 1e-4, betas = {0.9, 0.98}, eps = 1e-6, weight_decay = 0.01})
  return function() opt:step() end
end

local plan = {
  {"layer", "fwd", 5}, {"layer", "fwdbwd", 5}, {"emb", "fwd", 5}, {"emb", "fwdbwd", 5}, {"adamw", "step", 3},
}

print(string.format("%-8s %-7s %-7s %10s %10s %8s %8s %8s", "case", "mode", "threads", "hero s", "torch s",
  "ratio", "min", "max"))
for _, threads in ipairs {1, 2} do
  hero.set_num_threads(threads)
  for _, item in ipairs(plan) do
    local case, mode, iters = item[1], item[2], item[3]
    if not only or only == case then
      local fn = cases[case](mode)
      local ratios, ht, tt = {}, {}, {}
      for r = 1, rounds do
        ht[r] = time_median(fn, iters)
        tt[r] = torch_time(case, mode, threads, iters)
        ratios[r] = ht[r] / tt[r]
      end
      local lo, hi = math.huge, -math.huge
      for _, v in ipairs(ratios) do lo, hi = math.min(lo, v), math.max(hi, v) end
      print(string.format("%-8s %-7s %-7d %10.4f %10.4f %8.3f %8.3f %8.3f", case, mode, threads, median(ht),
        median(tt), median(ratios), lo, hi))
      fn = nil -- luacheck: ignore 311
      collectgarbage()
    end
  end
end
