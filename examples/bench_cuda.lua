--- GPU benchmark of the CUDA backend: a matmul (f32 and bf16), multi-head attention and one BERT
-- transformer layer (attention + feed-forward + layer norms), forward and forward+backward.
-- Prints one line per case: "hero <case> <milliseconds> ms" (examples/device_check.sh compares
-- them with PyTorch's numbers on the same shapes). Needs a GPU: `lua5.4 examples/bench_cuda.lua`.
local hero = require "hero"

if not hero.cuda.available() then
  print("bench_cuda: no CUDA device available")
  return
end

local now = hero.core._now or hero.core._bench_now
local DEV = "cuda:0"

--- Milliseconds per call of fn (after two warm-up calls), timed with the device synchronised.
local function time_ms(fn, reps)
  for _ = 1, 2 do fn() end
  hero.cuda.synchronize()
  collectgarbage()
  local t0 = now()
  for _ = 1, reps do fn() end
  hero.cuda.synchronize()
  return (now() - t0) / reps * 1e3
end

local function report(name, ms, flops)
  if flops then
    print(string.format("hero %-28s %9.3f ms  %8.1f TFLOP/s", name, ms, flops / (ms * 1e-3) / 1e12))
  else
    print(string.format("hero %-28s %9.3f ms", name, ms))
  end
end

hero.manual_seed(0)
local N = 4096
for _, dt in ipairs {"f32", "bf16"} do
  local a = hero.randn(N, N):to {device = DEV, dtype = dt}
  local b = hero.randn(N, N):to {device = DEV, dtype = dt}
  report("matmul_" .. N .. "_" .. dt, time_ms(function() return hero.matmul(a, b) end, 10), 2 * N ^ 3)
end

-- BERT-base shapes: batch 8, sequence 512, hidden 768, 12 heads, FFN 3072
local B, L, H, heads, F = 8, 512, 768, 12, 3072
local function param(...) return (hero.randn(...) * 0.02):to {device = DEV}:requires_grad_() end
local x = hero.randn(B, L, H):to {device = DEV}:requires_grad_()
local mask = hero.zeros(B, L):to {device = DEV}
local wq, wk, wv, wo = param(H, H), param(H, H), param(H, H), param(H, H)
local w1, w2 = param(F, H), param(H, F)
local g1, b1 = hero.ones(H):to {device = DEV}:requires_grad_(), hero.zeros(H):to {device = DEV}:requires_grad_()
local g2, b2 = hero.ones(H):to {device = DEV}:requires_grad_(), hero.zeros(H):to {device = DEV}:requires_grad_()

local function attention(t)
  local q, k, v = hero.linear(t, wq), hero.linear(t, wk), hero.linear(t, wv)
  return hero.linear(hero.attention(q, k, v, mask, heads, {dropout = 0.1, training = true}), wo)
end

local function layer(t)
  local h = hero.layer_norm(t + attention(t), g1, b1, 1e-12)
  local f = hero.linear(hero.gelu(hero.linear(h, w1)), w2)
  return hero.layer_norm(h + f, g2, b2, 1e-12)
end

report("attention_fwd", time_ms(function() return hero.no_grad(attention, x) end, 5))
report("attention_fwd_bwd", time_ms(function() attention(x):sum():backward() end, 5))
report("transformer_layer_fwd", time_ms(function() return hero.no_grad(layer, x) end, 5))
report("transformer_layer_fwd_bwd", time_ms(function() layer(x):sum():backward() end, 5))
report("transformer_layer_fwd_bwd_bf16", time_ms(function()
  hero.amp.autocast("bf16", layer, x):to("f32"):sum():backward()
end, 5))
local s = hero.cuda.memory_stats()
print(string.format("hero memory: peak %.1f MiB, reserved %.1f MiB", s.peak / 2 ^ 20, s.reserved / 2 ^ 20))
