local hero = require "hero"
local helper = require "spec_helper"

describe("autograd through views and casts", function()
  it("gives narrow's input gradient zeros before and after the narrowed part, whatever memory held", function()
    for _, case in ipairs {{dim = 2, start = 3, len = 2}, {dim = 1, start = 2, len = 1}, {dim = 2, start = 1, len = 7},
                           {dim = 2, start = 1, len = 3}, {dim = 2, start = 5, len = 3}} do
      local x = hero.randn(3, 7):requires_grad_()
      -- released blocks of the gradient's size, full of NaN, for the backward to be handed again
      for _ = 1, 4 do hero.full({3, 7}, 0 / 0):free() end
      local g = hero.randn(case.dim == 1 and case.len or 3, case.dim == 2 and case.len or 7)
      x:narrow(case.dim, case.start, case.len):backward(g)
      local want = hero.zeros(3, 7)
      want:narrow(case.dim, case.start, case.len):copy_(g)
      assert.same(want:totable(), x.grad:totable())
    end
    assert.is_true(hero.testing.gradcheck(function(t) return t:narrow(2, 2, 3) end,
      {hero.randn({2, 6}, {dtype = "f64"}):requires_grad_()}))
  end)

  it("routes gradients of narrow, transpose, reshape and select back to the leaf", function()
    local x = hero.tensor({{1, 2, 3}, {4, 5, 6}}, {dtype = "f64"}):requires_grad_()
    assert.is_true(x.requires_grad)
    assert.is_true(x.is_leaf)
    local y = x:narrow(2, 2, 2):t():reshape(4)
    assert.equal("reshape", y.grad_fn)
    y:backward(hero.tensor({10, 20, 30, 40}, {dtype = "f64"}))
    -- y = [x12, x22, x13, x23]
    assert.same({{0, 10, 30}, {0, 20, 40}}, x.grad:totable())
    x[1].grad = nil
    x.grad = nil
    local s = x[2][3]
    s:backward()
    assert.same({{0, 0, 0}, {0, 0, 1}}, x.grad:totable())
  end)

  it("sums gradients of expand over the broadcast dimensions and accumulates", function()
    local x = hero.tensor({{1}, {2}}, {dtype = "f64"}):requires_grad_()
    local e = x:expand(2, 3)
    e:backward(hero.ones(2, 3, {dtype = "f64"}))
    assert.same({{3}, {3}}, x.grad:totable())
    x:unsqueeze(1):permute(2, 3, 1):squeeze():backward(hero.tensor({5, 7}, {dtype = "f64"}))
    assert.same({{8}, {10}}, x.grad:totable())
  end)

  it("casts gradients back to the leaf's dtype", function()
    local x = hero.tensor({1.5, 2.5}):requires_grad_()
    local y = x:double()
    y:backward(hero.tensor({1, 2}, {dtype = "f64"}))
    assert.equal("f32", x.grad:dtype())
    assert.same({1, 2}, x.grad:totable())
    -- to an integer dtype: no gradient (PyTorch)
    local l = x:long()
    assert.is_false(l.requires_grad)
    assert.same({1, 2}, l:totable())
  end)

  it("adds the half gradients of casts down into the f32 gradients of their inputs exactly", function()
    -- y (f32, a node) reaches the loss through casts to bf16/f16 and through f32 ops, in both orders;
    -- its gradient must be the f32 sum of the widened half gradients and the f32 ones, as a cast
    -- of each half gradient followed by the adds gives
    local x = hero.tensor({1.5, -2.25, 3.0, 0.5}):requires_grad_()
    local w = hero.tensor({0.375, -1.25, 2.5, 1e-3}) -- exact in bf16 and f16
    local function half_term(y, dt) return (y:to(dt) * w:to(dt)):to("f32"):sum() end
    local function f32_term(y) return (y * 2):sum() end
    local cases = {
      {function(y) return half_term(y, "bf16") + f32_term(y) end, {"bf16"}, true},
      {function(y) return f32_term(y) + half_term(y, "bf16") end, {"bf16"}, true},
      {function(y) return half_term(y, "f16") end, {"f16"}, false},                 -- widened when y's node runs
      {function(y) return half_term(y, "bf16") + half_term(y, "f16") end, {"bf16", "f16"}, false},
      {function(y) return half_term(y, "bf16") + half_term(y, "bf16") + f32_term(y) end, {"bf16", "bf16"}, true},
    }
    for k, case in ipairs(cases) do
      x.grad = nil
      local y = x * 3 -- a node: its gradient slot takes the pass-through
      case[1](y):backward()
      -- expected: d/dy = sum of the half terms' w (rounded to their dtype, widened) + 2 if f32 term
      local dy = hero.zeros(4)
      for _, dt in ipairs(case[2]) do dy = dy + w:to(dt):to("f32") end
      if case[3] then dy = dy + 2 end
      assert.equal("f32", x.grad:dtype(), "case " .. k)
      assert.same((dy * 3):totable(), x.grad:totable(), "case " .. k)
    end
    -- a leaf cast down directly, twice, and its f32 use: the leaf's gradient is f32
    x.grad = nil
    local loss = half_term(x, "bf16") + half_term(x, "bf16") + f32_term(x)
    loss:backward()
    assert.equal("f32", x.grad:dtype())
    assert.same((w:to("bf16"):to("f32") * 2 + 2):totable(), x.grad:totable())
    -- a node's gradient kept half (y:to("bf16") only reaches the loss as bf16) is widened before
    -- y's own backward runs: an f64 input cast down gets an f64 gradient
    local z = hero.tensor({0.5, 4}, {dtype = "f64"}):requires_grad_()
    local half = (z * 1):to("bf16") * hero.tensor({2, 3}, {dtype = "bf16"})
    half:to("f32"):sum():backward()
    assert.equal("f64", z.grad:dtype())
    assert.same({2, 3}, z.grad:totable())
    -- a gradient that Lua still holds (a Lua backward handing back its own tensor) meets a pending
    -- half one: the sum goes into a new tensor, never into the held one
    local held = hero.tensor {10, 20, 30, 40}
    local Hand = hero.autograd.Function {
      forward = function(_, t) return t:clone() end,
      backward = function() return held end,
    }
    for _, order in ipairs {1, 2} do
      x.grad = nil
      local y = x * 3
      local a, b = half_term(y, "bf16"), Hand(y):sum()
      local total = order == 1 and a + b or b + a
      total:backward()
      assert.same({10, 20, 30, 40}, held:totable())
      local want = (w:to("bf16"):to("f32") + held) * 3
      assert.same(want:totable(), x.grad:totable())
    end
  end)

  it("refuses a second backward through freed buffers and bad gradients", function()
    local x = hero.tensor({1, 2, 3}):requires_grad_()
    local y = x:narrow(1, 1, 2)
    helper.assert_error_contains(function() y:backward() end, "gradient argument is needed", "size 2")
    helper.assert_error_contains(function() y:backward(hero.ones(3)) end, "does not match", "size 2")
    helper.assert_error_contains(function() hero.ones(2):backward() end, "does not require grad")
  end)

  it("detach_ cuts a tensor itself from the graph; set_grad_enabled switches recording", function()
    local x = hero.tensor({1, 2}):requires_grad_()
    local y = x * 2
    assert.is_true(y.requires_grad)
    assert.equal(y, y:detach_()) -- returns itself
    assert.is_false(y.requires_grad)
    helper.assert_error_contains(function() (y * 3):sum():backward() end, "does not require grad")
    -- x's other uses still reach it
    local z = (x * 3):sum()
    z:backward()
    assert.same({3, 3}, x.grad:totable())

    hero.set_grad_enabled(false)
    local ok, off = pcall(function() return x * 2 end)
    local enabled_inside = hero.is_grad_enabled()
    hero.set_grad_enabled(true)
    assert.is_true(ok)
    assert.is_false(enabled_inside)
    assert.is_false(off.requires_grad)
    assert.is_true(hero.is_grad_enabled())
    assert.is_true((x * 2).requires_grad)
  end)

  it("records nothing inside no_grad and restores the mode after errors", function()
    local x = hero.tensor({1, 2}):requires_grad_()
    local y = hero.no_grad(function() return x:narrow(1, 1, 1) end)
    assert.is_false(y.requires_grad)
    assert.is_false(pcall(hero.no_grad, function() error("boom") end))
    assert.is_true(hero.is_grad_enabled())
    assert.is_true(x:narrow(1, 1, 1).requires_grad)
    assert.is_false(x:detach().requires_grad)
    helper.assert_error_contains(function() x:fill_(1) end, "leaf tensor that requires grad")
    hero.no_grad(function() x:fill_(3) end)
    assert.same({3, 3}, x:totable())
  end)
end)

describe("autograd options and outputs", function()
  it("refuses backward options it does not implement, and integer outputs of a Function carry no gradient", function()
    local x = hero.tensor({1, 2}):requires_grad_()
    local z = (x * 2):sum()
    helper.assert_error_contains(function() z:backward({retian_graph = true}) end,
      "backward: unknown option 'retian_graph' (retain_graph)")
    helper.assert_error_contains(function() z:backward({create_graph = true}) end, "unknown option 'create_graph'")
    helper.assert_error_contains(function() z:backward(nil, 5) end, "argument #3 must be a table of options")
    helper.assert_error_contains(function() z:backward({retain_graph = 1}) end,
      "option retain_graph must be a boolean, got a number")
    z:backward({retain_graph = true})
    z:backward()
    assert.same({4, 4}, x.grad:totable())
    -- a gradient reaching an i64 output was truncated to an integer (2.5 became 2)
    local ToLong = hero.autograd.Function {
      forward = function(_, t) return t:long() end,
      backward = function(_, g) return g:float() end,
    }
    local y = ToLong(x)
    assert.is_false(y.requires_grad)
    assert.is_nil(y.grad_fn)
    local Freed = hero.autograd.Function {
      forward = function(_, t) return t * 2 end,
      backward = function(_, g)
        local r = g * 2
        r:free()
        return r
      end,
    }
    helper.assert_error_contains(function() Freed(x):sum():backward() end,
      "backward returned a freed tensor for input 1")
  end)

  it("refuses a mask that requires grad whether or not it broadcasts", function()
    local q = hero.randn(2, 3, 4)
    for _, shape in ipairs {{2, 3}, {1, 3}, {1, 1, 3}, {2, 1, 3}} do
      local m = hero.zeros(shape):requires_grad_()
      helper.assert_error_contains(function() hero.attention(q, q, q, m, 1) end,
        "attention: the mask is not differentiable")
      helper.assert_error_contains(function() hero.attention_packed(hero.randn(2, 3, 12), m, 1) end,
        "the mask is not differentiable")
    end
  end)
end)
