local hero = require "hero"
local helper = require "spec_helper"
local gradcheck = hero.testing.gradcheck

local function f64(v) return hero.tensor(v, {dtype = "f64"}):requires_grad_() end

describe("autograd through elementwise ops", function()
  local a = f64 {{0.7, -1.3, 2.1}, {1.5, 0.4, -0.9}}
  local b = f64 {{1.2, 0.8, -0.6}}       -- broadcasts over rows
  local pos = f64 {{0.7, 1.3, 2.1}, {1.5, 0.4, 0.9}}

  it("binary ops with broadcasting, numbers on either side and alpha", function()
    assert.is_true(gradcheck(function(x, y) return x + y end, {a, b}))
    assert.is_true(gradcheck(function(x, y) return x - y end, {a, b}))
    assert.is_true(gradcheck(function(x, y) return x:add(y, 2.5) end, {a, b}))
    assert.is_true(gradcheck(function(x, y) return x:sub(y, 0.5) end, {a, b}))
    assert.is_true(gradcheck(function(x, y) return x * y end, {a, b}))
    assert.is_true(gradcheck(function(x, y) return x / y end, {a, b}))
    assert.is_true(gradcheck(function(x) return 3 - x * 2 end, {a}))
    assert.is_true(gradcheck(function(x) return 2 / x end, {pos}))
    assert.is_true(gradcheck(function(x) return x ^ 3 end, {a}))
    assert.is_true(gradcheck(function(x, y) return x ^ y end, {pos, b}))
    assert.is_true(gradcheck(function(x) return 2 ^ x end, {a}))
    assert.is_true(gradcheck(function(x, y) return hero.maximum(x, y) end, {a, b}))
    assert.is_true(gradcheck(function(x, y) return hero.minimum(x, y) end, {a, b}))
  end)

  it("unary math", function()
    for _, op in ipairs {"neg", "abs", "square", "relu", "exp", "tanh", "sigmoid", "gelu", "sin", "cos", "expm1"} do
      assert.is_true(gradcheck(function(x) return x[op](x) end, {a}), op)
    end
    for _, op in ipairs {"log", "sqrt", "rsqrt", "reciprocal", "log1p"} do
      assert.is_true(gradcheck(function(x) return x[op](x) end, {pos}), op)
    end
  end)

  it("clamp and where", function()
    assert.is_true(gradcheck(function(x) return x:clamp(-1, 1) end, {a}))
    assert.is_true(gradcheck(function(x) return x:clamp(0, nil) end, {a}))
    local cond = hero.tensor {{true, false, true}}
    assert.is_true(gradcheck(function(x, y) return hero.where(cond, x, y) end, {a, b}))
    assert.is_true(gradcheck(function(x) return hero.where(cond, 0, x) end, {a}))
  end)

  it("mixes dtypes and returns gradients in each input's dtype", function()
    local x = hero.tensor({1, 2}):requires_grad_()
    local y = hero.tensor({3, 4}, {dtype = "f64"}):requires_grad_()
    local z = x * y
    assert.equal("f64", z:dtype())
    z:backward(hero.ones(2, {dtype = "f64"}))
    assert.equal("f32", x.grad:dtype())
    assert.same({3, 4}, x.grad:totable())
    assert.same({1, 2}, y.grad:totable())
  end)

  it("refuses in-place arithmetic on tensors in a graph", function()
    local x = f64 {1, 2}
    helper.assert_error_contains(function() x:add_(1) end, "add_", "requires grad")
    local y = x * 2
    helper.assert_error_contains(function() y:exp_() end, "exp_", "requires grad")
    local z = hero.zeros(2, {dtype = "f64"})
    helper.assert_error_contains(function() z:add_(x) end, "add_", "requires grad")
    hero.no_grad(function() z:add_(x) end)
    assert.same({1, 2}, z:totable())
  end)

  it("hands an add's gradient on without copies and never lets two consumers share one buffer", function()
    local x, w = f64 {1, 2}, f64 {3, 4}
    ;(x + x):sum():backward()                       -- both inputs of one add are x
    assert.same({2, 2}, x.grad:totable())
    x.grad = nil
    local tripled = x * 3
    ;(tripled + tripled):backward(f64 {1, 10})      -- a node receiving the same gradient twice
    assert.same({6, 60}, x.grad:totable())
    x.grad, w.grad = nil, nil
    local s = x + w
    ;(s * 2 + x + s):backward(f64 {1, 1})           -- add chains with shared inputs
    assert.same({4, 4}, x.grad:totable())
    assert.same({3, 3}, w.grad:totable())
    -- a gradient that Lua code still holds is copied, never added into
    local keep = f64 {5, 7}
    keep.requires_grad = false
    local Pass = hero.autograd.Function {
      forward = function(_, t) return t:clone() end,
      backward = function() return keep end,
    }
    x.grad = nil
    local y = Pass(x)
    ;(y + y + x):backward(f64 {1, 1})
    assert.same({6, 8}, x.grad:totable())
    assert.same({5, 7}, keep:totable())
    -- the leaf's gradient is its own buffer: later passes accumulate into it alone
    x.grad, w.grad = nil, nil
    ;(x + w):backward(f64 {1, 2})
    ;(x + w):backward(f64 {1, 2})
    assert.same({2, 4}, x.grad:totable())
    assert.same({2, 4}, w.grad:totable())
  end)
end)
