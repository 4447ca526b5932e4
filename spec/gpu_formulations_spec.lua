--- The formulations some ops use for GPU tensors, composed of other differentiable ops (conv1d,
-- the elementwise losses, the gradients of max/min along a dimension and of masked_select),
-- checked on the CPU in every build: hero.core._gpu_formulations_on_cpu(true) routes CPU tensors
-- through them. Their values and gradients must be the CPU kernels', and they pass gradcheck.
local hero = require "hero"
local helper = require "spec_helper"

local core = hero.core
local F = hero.nn.functional
local gradcheck = hero.testing.gradcheck

-- fn() with the GPU formulations on, switched off again whatever happens
local function composed(fn, ...)
  core._gpu_formulations_on_cpu(true)
  local res = table.pack(pcall(fn, ...))
  core._gpu_formulations_on_cpu(false)
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- f(inputs...) and the gradients of sum(f * r) for every input, from fresh leaves
local function value_and_grads(f, inputs, r)
  local leaves = {}
  for i, t in ipairs(inputs) do leaves[i] = t:clone():requires_grad_() end
  local out = f(table.unpack(leaves))
  local weight = r or hero.ones(out:size(), {dtype = out:dtype()})
  local loss = out:dim() == 0 and out * weight or (out * weight):sum()
  loss:backward()
  local grads = {}
  for i, t in ipairs(leaves) do grads[i] = t.grad end
  return out:detach(), grads
end

-- the kernel's and the composed formulation's values and gradients agree, and the composed one
-- passes gradcheck (f64 inputs, unless skip_gradcheck: at ties finite differences split the step)
local function check(f, inputs, r, skip_gradcheck)
  local want, want_grads = value_and_grads(f, inputs, r)
  local got, got_grads = composed(value_and_grads, f, inputs, r)
  assert.tensor_near(got, want)
  for i = 1, #inputs do assert.tensor_near(got_grads[i], want_grads[i]) end
  if skip_gradcheck or inputs[1]:dtype() ~= "f64" then return end
  local leaves = {}
  for i, t in ipairs(inputs) do leaves[i] = t:clone():requires_grad_() end
  assert.is_true(composed(gradcheck, f, leaves))
end

local function randn64(...)
  return hero.randn(...):double()
end

describe("GPU formulations, run on the CPU", function()
  before_each(function() hero.manual_seed(7) end)

  it("are used only while switched on", function()
    local x = randn64(3, 4):requires_grad_()
    local y = F.mse_loss(x, randn64(3, 4), {reduction = "none"})
    assert.equal("mse_loss", y.grad_fn)
    local yc = composed(F.mse_loss, x, randn64(3, 4), {reduction = "none"})
    assert.is_not.equal("mse_loss", yc.grad_fn)
    assert.equal("mse_loss", F.mse_loss(x, randn64(3, 4), {reduction = "none"}).grad_fn)
  end)

  it("conv1d: as im2col columns times the weight, with and without padding and bias", function()
    local x, w, b = randn64(2, 3, 7), randn64(4, 3, 5), randn64(4)
    check(function(a, ww, bb) return hero.conv1d(a, ww, bb, 2) end, {x, w, b}, randn64(2, 4, 7))
    check(function(a, ww) return hero.conv1d(a, ww, nil, 0) end, {x, w}, randn64(2, 4, 3))
    check(function(a, ww) return hero.conv1d(a, ww, nil, 1) end, {x:float(), w:float()})
  end)

  it("binary cross entropy with logits: every reduction, a weight, logits of 0 and far from it", function()
    local x = hero.tensor({{0, 0.5, -2}, {40, -40, 1e-3}}, {dtype = "f64"})
    local y = hero.tensor({{0, 1, 0.3}, {1, 0, 0.5}}, {dtype = "f64"})
    local w = hero.tensor({{1, 2, 0.5}, {3, 1, 1}}, {dtype = "f64"})
    for _, reduction in ipairs {"none", "mean", "sum"} do
      check(function(a) return F.binary_cross_entropy_with_logits(a, y, {reduction = reduction}) end, {x})
      check(function(a) return F.binary_cross_entropy_with_logits(a, y, {weight = w, reduction = reduction}) end, {x})
    end
    -- at a logit of exactly 0 the gradient is sigmoid(0) - y = 0.5 - y
    local g = composed(function()
      local x0 = hero.zeros(2, {dtype = "f64"}):requires_grad_()
      F.binary_cross_entropy_with_logits(x0, hero.tensor({0, 1}, {dtype = "f64"}), {reduction = "sum"}):backward()
      return x0.grad
    end)
    assert.tensor_near(g, {0.5, -0.5})
  end)

  it("mse: every reduction, gradients to both sides", function()
    local x, y = randn64(3, 5), randn64(3, 5)
    for _, reduction in ipairs {"none", "mean", "sum"} do
      check(function(a, b) return F.mse_loss(a, b, {reduction = reduction}) end, {x, y})
    end
  end)

  it("max and min along a dimension: the gradient goes to the selected element", function()
    local x = randn64(3, 4, 5)
    check(function(a) return (a:max(2)) end, {x})
    check(function(a) return (a:min(3, true)) end, {x})
    check(function(a) return (a:max(1)) end, {x:float()})
    -- ties: the gradient goes to the index max returns, once
    local t = hero.tensor({{1, 3, 3}, {2, 2, 0}}, {dtype = "f64"})
    check(function(a) return (a:max(2)) end, {t}, nil, true)
  end)

  it("masked_select: the selected positions receive the gradient, broadcast masks summed back", function()
    local x = randn64(3, 4)
    local mask = hero.tensor {{true, false, true, true}, {false, false, true, false}, {true, true, false, true}}
    check(function(a) return a:masked_select(mask) end, {x})
    local row = randn64(1, 4)
    check(function(a) return a:masked_select(mask) end, {row})
    check(function(a) return a:masked_select(hero.zeros(3, 4, {dtype = "bool"})) end, {x})
  end)

  it("refuse mismatched inputs as the kernels do", function()
    helper.assert_error_contains(function()
      composed(F.mse_loss, randn64(2, 3), randn64(3, 2))
    end, "mse")
    helper.assert_error_contains(function()
      composed(hero.conv1d, randn64(1, 2, 5), randn64(1, 3, 3))
    end, "conv1d", "do not match")
  end)
end)
