local hero = require "hero"
local helper = require "spec_helper"

describe("Lua-defined autograd functions", function()
  -- y = 3 * x written with core ops only; its backward is given in Lua
  local Triple = hero.autograd.Function {
    forward = function(ctx, x)
      ctx.shape = x:size()
      local y = x:clone()
      y:copy_(x:double():to(x:dtype()))
      local vals = y:totable()
      for i = 1, #vals do vals[i] = vals[i] * 3 end
      return hero.tensor(vals, {dtype = x:dtype()})
    end,
    backward = function(_, g)
      local vals = g:totable()
      for i = 1, #vals do vals[i] = vals[i] * 3 end
      return hero.tensor(vals, {dtype = g:dtype()})
    end,
  }

  it("runs the Lua backward and passes gradcheck", function()
    local x = hero.tensor({1, 2, 3}, {dtype = "f64"}):requires_grad_()
    local y = Triple(x)
    assert.equal("lua function", y.grad_fn)
    y:backward(hero.tensor({1, 1, 2}, {dtype = "f64"}))
    assert.same({3, 3, 6}, x.grad:totable())
    assert.is_true(hero.testing.gradcheck(Triple, {x}))
  end)

  it("lets gradcheck catch a wrong backward", function()
    local Wrong = hero.autograd.Function {
      forward = Triple and function(_, x) return x:clone() end,
      backward = function(_, g) return g:narrow(1, 1, g:size(1)):clone():fill_(0.5) end,
    }
    local x = hero.tensor({1, 2}, {dtype = "f64"}):requires_grad_()
    helper.assert_error_contains(function() hero.testing.gradcheck(Wrong, {x}) end, "analytic 0.5")
  end)

  it("reports errors raised in the Lua backward and bad return values", function()
    local Boom = hero.autograd.Function {
      forward = function(_, x) return x:clone() end,
      backward = function() error("exploded in backward") end,
    }
    local x = hero.tensor({1, 2}):requires_grad_()
    helper.assert_error_contains(function() Boom(x):backward(hero.ones(2)) end, "exploded in backward")
    local Nil = hero.autograd.Function {
      forward = function(_, xx) return xx:clone() end,
      backward = function() return nil end,
    }
    helper.assert_error_contains(function() Nil(x):backward(hero.ones(2)) end, "returned nil for input 1")
  end)
end)
