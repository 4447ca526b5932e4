--- GPU benchmark of the CUDA backend: a matmul (f32 and bf16), multi-head attention and one BERT
-- transformer layer (attention + feed-forward + layer norms), forward and forward+backward, then
-- single ops on HERO's shapes.
-- Prints one line per case: "hero <case> <milliseconds> ms" (examples/device_check.sh compares
-- them with PyTorch's numbers on the same shapes). Needs a GPU: `lua5.4 examples/bench_cuda.lua`.
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above

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

local function attention(t, m)
  local q, k, v = hero.linear(t, wq), hero.linear(t, wk), hero.linear(t, wv)
  return hero.linear(hero.attention(q, k, v, m or mask, heads, {dropout = 0.1, training = true}), wo)
end

local function layer(t, m)
  local h = hero.layer_norm(t + attention(t, m), g1, b1, 1e-12)
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
-- Single ops on the shapes of HERO's cross-modal transformer (640 rows x 33 tokens, 21120 tokens
-- of 768) and its MLM head (2720 masked tokens over the 50272-word vocabulary), forward only: where
-- one op is slower than PyTorch's, these lines say which.
do
  local NF = hero.nn.functional
  local T, R, Lr = 21120, 640, 33
  local tok = hero.randn(T, H):to {device = DEV}
  local y = hero.randn(T, H):to {device = DEV}
  local xh = tok:to("bf16")
  local wide = hero.randn(T, F):to {device = DEV}
  local wide_h = wide:to("bf16")
  local w, bias = (hero.randn(F, H) * 0.02):to {device = DEV}, hero.zeros(F):to {device = DEV}
  local wh, bh = w:to("bf16"), bias:to("bf16")
  local g, b = hero.ones(H):to {device = DEV}, hero.zeros(H):to {device = DEV}
  local q = hero.randn(R, Lr, H):to {device = DEV}
  local rmask = hero.zeros(R, Lr):to {device = DEV}
  local scores = hero.randn(R, heads, Lr, Lr):to {device = DEV}
  local logits = hero.randn(2720, 50272):to {device = DEV}
  local target = hero.randint(0, 50272, {2720}):to {device = DEV}
  local ops = {
    {"cast_f32_bf16", function() return tok:to("bf16") end},
    {"cast_bf16_f32", function() return xh:to("f32") end},
    {"clone_f32", function() return tok:clone() end},
    {"add_f32", function() return tok + y end},
    {"permute_copy_f32", function() return q:view(R, Lr, heads, H // heads):permute(1, 3, 2, 4):contiguous() end},
    {"sum_rows_dim1_f32", function() return tok:sum(1) end},
    {"linear_bias_f32", function() return hero.linear(tok, w, bias) end},
    {"linear_bias_bf16", function() return hero.linear(xh, wh, bh) end},
    {"linear_nobias_bf16", function() return hero.linear(xh, wh) end},
    {"gelu_f32", function() return hero.gelu(wide) end},
    {"gelu_bf16", function() return hero.gelu(wide_h) end},
    {"layer_norm_f32", function() return hero.layer_norm(tok, g, b, 1e-12) end},
    {"layer_norm_bf16_in", function() return hero.layer_norm(xh:to("f32"), g, b, 1e-12) end},
    {"dropout_f32", function() return NF.dropout(tok, 0.1, true) end},
    {"softmax_f32", function() return scores:softmax(-1) end},
    {"attention_f32", function() return hero.attention(q, q, q, rmask, heads) end},
    {"cross_entropy_f32", function() return NF.cross_entropy(logits, target) end},
    {"sum_cols_bf16", function() return wide_h:sum(1) end}, -- a bias gradient of the feed-forward layer
  }
  for _, op in ipairs(ops) do
    report("op_" .. op[1], time_ms(function() return hero.no_grad(op[2]) end, 20))
  end
  -- the MLM head's loss as pre-training runs it: bf16 logits of the padded vocabulary, the classes
  -- read in place, forward and backward
  local head = hero.randn(2720, 50272):to {device = DEV, dtype = "bf16"}:requires_grad_()
  local words = hero.randint(0, 50265, {2720}):to {device = DEV}
  report("cross_entropy_mlm_bf16_fwd_bwd", time_ms(function()
    head.grad = nil
    hero.amp.autocast("bf16", function()
      return hero.core.cross_entropy(head, words, {classes = 50265})
    end):backward()
  end, 20))
  -- the end of a BERT block under autocast (one node: core.dropout_add_layer_norm): a bf16
  -- projection dropped out, added to the f32 residual, layer-normed; forward and backward
  local proj = hero.randn(T, H):to {device = DEV, dtype = "bf16"}:requires_grad_()
  local resid = hero.randn(T, H):to {device = DEV}:requires_grad_()
  local ln_w, ln_b = g:clone():requires_grad_(), b:clone():requires_grad_()
  local upstream = hero.randn(T, H):to {device = DEV}
  report("add_norm_bf16_fwd_bwd", time_ms(function()
    for _, t in ipairs {proj, resid, ln_w, ln_b} do t.grad = nil end
    hero.amp.autocast("bf16", function()
      return NF.dropout_add_layer_norm(proj, resid, ln_w, ln_b, 1e-12, {dropout = 0.1, training = true})
    end):backward(upstream)
  end, 20))
  -- the gradient norm of clip_grad_norm over a model's worth of tensors (9 transformer layers and the
  -- word embeddings: 109 tensors, 102M values), read back to the host
  local grads = {(hero.randn(50272, H) * 1e-3):to {device = DEV}}
  for _ = 1, 9 do
    for _, shape in ipairs {{3 * H, H}, {3 * H}, {H, H}, {H}, {F, H}, {F}, {H, F}, {H}, {H}, {H}, {H}, {H}} do
      grads[#grads + 1] = (hero.randn(shape) * 1e-3):to {device = DEV}
    end
  end
  report("global_norm_model", time_ms(function() return hero.core.global_norm(grads) end, 20))
  -- with gradients, in bf16: the attention of the 640 rows (dropout 0.1) and one layer of them
  local qh = hero.randn(R, Lr, H):to {device = DEV, dtype = "bf16"}:requires_grad_()
  local rmask_h = rmask:to("bf16")
  report("rows_attention_bf16_fwd_bwd", time_ms(function()
    hero.attention(qh, qh, qh, rmask_h, heads, {dropout = 0.1, training = true}):sum():backward()
  end, 10))
  local xr = hero.randn(R, Lr, H):to {device = DEV}:requires_grad_()
  report("rows_layer_fwd_bwd_bf16", time_ms(function()
    hero.amp.autocast("bf16", layer, xr, rmask):to("f32"):sum():backward()
  end, 10))
end

local s = hero.cuda.memory_stats()
print(string.format("hero memory: peak %.1f MiB, reserved %.1f MiB", s.peak / 2 ^ 20, s.reserved / 2 ^ 20))
