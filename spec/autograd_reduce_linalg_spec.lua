local hero = require "hero"
local helper = require "spec_helper"
local gradcheck = hero.testing.gradcheck

local function f64(v) return hero.tensor(v, {dtype = "f64"}):requires_grad_() end

describe("autograd through reductions", function()
  local x = f64 {{{0.3, -1.2, 2.2}, {1.1, 0.5, -0.7}}, {{0.9, 1.7, -2.5}, {-0.4, 0.8, 1.3}}}

  it("sum and mean over all, one or several dims, with and without keepdim", function()
    assert.is_true(gradcheck(function(t) return t:sum() end, {x}))
    assert.is_true(gradcheck(function(t) return t:sum(2) end, {x}))
    assert.is_true(gradcheck(function(t) return t:sum(-1, true) end, {x}))
    assert.is_true(gradcheck(function(t) return t:sum({1, 3}) end, {x}))
    assert.is_true(gradcheck(function(t) return t:mean() end, {x}))
    assert.is_true(gradcheck(function(t) return t:mean(3, true) end, {x}))
    assert.is_true(gradcheck(function(t) return t:mean({1, 2}) end, {x}))
  end)

  it("spreads a mean's gradient as the gradient divided by the count, in the input's dtype", function()
    for _, dt in ipairs {"f32", "f64"} do
      local t = hero.randn(3, 5, 7):to{dtype = dt}:requires_grad_()
      t:mean():backward(hero.tensor(2, {dtype = dt}))
      local want = hero.tensor(2, {dtype = dt}) / 105
      assert.equal(0, (t.grad - want):abs():max():item(), dt)
      local u = hero.randn(3, 5, 7):to{dtype = dt}:requires_grad_()
      local g = hero.randn(3, 1, 7):to{dtype = dt}
      u:mean(2, true):backward(g)
      assert.equal(0, (u.grad - (g / 5):expand(3, 5, 7)):abs():max():item(), dt)
    end
  end)

  it("max and min, var, std, norm and cumsum", function()
    assert.is_true(gradcheck(function(t) return (t:max(3)) end, {x}))
    assert.is_true(gradcheck(function(t) return (t:min(1, true)) end, {x}))
    assert.is_true(gradcheck(function(t) return t:max() end, {x}))
    assert.is_true(gradcheck(function(t) return t:var(3) end, {x}))
    assert.is_true(gradcheck(function(t) return t:var(nil, false) end, {x}))
    assert.is_true(gradcheck(function(t) return t:std(2, true, true) end, {x}))
    assert.is_true(gradcheck(function(t) return t:norm() end, {x}))
    assert.is_true(gradcheck(function(t) return t:norm(2, 3) end, {x}))
    assert.is_true(gradcheck(function(t) return t:norm(1, 1) end, {x}))
    assert.is_true(gradcheck(function(t) return t:cumsum(3) end, {x}))
    assert.is_true(gradcheck(function(t) return t:cumsum(1) end, {x}))
  end)

  it("softmax, log_softmax, sort and topk values", function()
    assert.is_true(gradcheck(function(t) return t:softmax(-1) end, {x}))
    assert.is_true(gradcheck(function(t) return t:softmax(1) end, {x}))
    assert.is_true(gradcheck(function(t) return t:log_softmax(-1) end, {x}))
    assert.is_true(gradcheck(function(t) return t:log_softmax(2) end, {x}))
    assert.is_true(gradcheck(function(t) return (t:sort(3, true)) end, {x}))
    assert.is_true(gradcheck(function(t) return (t:topk(2, 3)) end, {x}))
  end)

  it("prod and cumprod give torch's gradients, zeros among the inputs included", function()
    local n = 0
    for _, c in ipairs(helper.load_fixture("copy_grads.lua")) do
      if c.op == "prod" or c.op == "cumprod" then
        n = n + 1
        local leaf = hero.tensor(c.x, {dtype = "f64"})
        if c.transpose then leaf = leaf:t():contiguous():t() end
        leaf:requires_grad_()
        assert.equal(not c.transpose, leaf:is_contiguous(), c.name)
        local args = {}
        for i, a in ipairs(c.args) do args[i] = math.type(a) == "integer" and a + 1 or a end -- 1-based dims
        local y = leaf[c.op](leaf, table.unpack(args))
        assert.equal(c.op, y.grad_fn, c.name)
        assert.same(c.shape, y:size(), c.name)
        local want = hero.tensor(c.y, {dtype = "f64"}):view(c.shape)
        assert.tensor_near(y:detach(), want, nil, c.name)
        y:backward(hero.tensor(c.g, {dtype = "f64"}):view(c.shape))
        -- E_k F_k against torch's division where no input is 0: a rounding or two apart
        assert.tensor_near(leaf.grad, hero.tensor(c.grad, {dtype = "f64"}), nil, c.name)
      end
    end
    assert.equal(9, n)
    assert.is_true(gradcheck(function(t) return t:prod() end, {x}))
    assert.is_true(gradcheck(function(t) return t:prod(2) end, {x}))
    assert.is_true(gradcheck(function(t) return t:prod(3, true) end, {x}))
    assert.is_true(gradcheck(function(t) return t:cumprod(2) end, {x}))
    assert.is_true(gradcheck(function(t) return t:transpose(1, 3):cumprod(1) end, {x}))
    -- f32 inputs: the gradient is f32
    local s = hero.tensor({{2, 0, 3}}):requires_grad_()
    s:cumprod(2):sum():backward()
    assert.equal("f32", s.grad:dtype())
    assert.same({{1 + 0 + 0, 2 + 2 * 3, 0}}, s.grad:totable())
  end)
end)

describe("autograd through reductions at torch's special points", function()
  local function grad_of(x, f, g)
    x = x:requires_grad_()
    local y = f(x)
    if g then y = y * g end
    y:sum():backward()
    return x.grad:totable()
  end

  it("amax and amin share a dim's gradient evenly among tied elements, as torch", function()
    local x = hero.tensor {{1, 3, 3}, {2, 2, 0}}
    assert.same({{0, 0.5, 0.5}, {0.5, 0.5, 0}}, grad_of(x, function(t) return t:amax(2) end))
    assert.same({{0.5, 0, 0.5}, {0, 0, 1}},
      grad_of(hero.tensor {{1, 3, 1}, {2, 2, 0}}, function(t) return t:amin(2, true) end))
    -- along the first dim, with the upstream gradient, infinities tied
    local inf = math.huge
    assert.same({{0, 0, 0}, {1, 2, 3}},
      grad_of(hero.tensor {{inf, inf, 1}, {-inf, 2, -inf}}, function(t) return t:amin(1) end, hero.tensor {1, 2, 3}))
    assert.same({{0.5, 0.5, 0}, {0, 2, 0}},
      grad_of(hero.tensor {{inf, inf, 1}, {-inf, 2, -inf}}, function(t) return t:amax(-1) end, hero.tensor {1, 2}))
    -- the values are max's and min's; without a dim, every element
    assert.same({3, 2}, hero.tensor({{1, 3, 3}, {2, 2, 0}}):amax(2):totable())
    assert.same({{1}, {0}}, hero.tensor({{1, 3, 3}, {2, 2, 0}}):amin(2, true):totable())
    assert.same({0, 0.5, 0, 0.5}, grad_of(hero.tensor {1, 3, 0, 3}, function(t) return t:amax() end))
    local distinct = f64 {{0.3, -1.2, 2.2}, {1.1, 0.5, -0.7}}
    assert.is_true(gradcheck(function(t) return t:amax(2) end, {distinct}))
    assert.is_true(gradcheck(function(t) return t:amin(1, true) end, {distinct}))
  end)

  it("passes a 0-dim tensor's gradient through its selections along a dim", function()
    local cases = {
      max = function(t) return (t:max(1)) end, min = function(t) return (t:min(-1, true)) end,
      sort = function(t) return (t:sort()) end, topk = function(t) return (t:topk(1)) end,
      median = function(t) return (t:median(1)) end, kthvalue = function(t) return (t:kthvalue(1)) end,
      mode = function(t) return (t:mode()) end, cummax = function(t) return (t:cummax(1)) end,
      cummin = function(t) return (t:cummin(1)) end,
    }
    for name, f in pairs(cases) do
      local x = hero.tensor(2.5):requires_grad_()
      local y = f(x)
      assert.equal(2.5, y:item(), name)
      local z = y * 3
      z:backward()
      assert.equal(0, x.grad:dim(), name)
      assert.equal(3, x.grad:item(), name)
    end
  end)
end)

describe("autograd through matrix products", function()
  local a = f64 {{0.5, -1.0, 2.0}, {1.5, 0.25, -0.75}}
  local b = f64 {{1.0, 2.0}, {-0.5, 0.3}, {0.7, -1.1}}
  local v3 = f64 {0.2, -0.4, 1.3}

  it("matmul in every promotion and broadcasting case", function()
    assert.is_true(gradcheck(hero.matmul, {a, b}))
    assert.is_true(gradcheck(function(p, q) return p:matmul(q:t():t()) end, {a, b}))
    assert.is_true(gradcheck(hero.matmul, {a, v3}))
    assert.is_true(gradcheck(hero.matmul, {v3, b}))
    assert.is_true(gradcheck(hero.matmul, {v3, v3}))
    local batch = f64 {{{1, 2, 3}, {4, 5, 6}}, {{-1, 0.5, 2}, {0, 1, -3}}}
    assert.is_true(gradcheck(hero.matmul, {batch, b}))         -- b broadcast over the batch
    assert.is_true(gradcheck(function(p, q) return p:matmul(q:t()) end, {batch, a}))
  end)

  it("mm, bmm, dot, mv, addmm, baddbmm and linear", function()
    assert.is_true(gradcheck(hero.mm, {a, b}))
    local ba = f64 {{{1, 2}, {3, 4}}, {{0.5, -1}, {2, 0}}}
    assert.is_true(gradcheck(hero.bmm, {ba, ba}))
    assert.is_true(gradcheck(hero.dot, {v3, v3}))
    assert.is_true(gradcheck(hero.mv, {a, v3}))
    local c = f64 {{0.1, 0.2}}
    assert.is_true(gradcheck(function(cc, p, q) return hero.addmm(cc, p, q, 0.5, 2.0) end, {c, a, b}))
    assert.is_true(gradcheck(function(cc, p, q) return hero.baddbmm(cc, p, q, {beta = 2, alpha = -1}) end,
      {f64 {{{1, 1}, {1, 1}}}, ba, ba}))
    local x = f64 {{{1, 2, 3}, {0.5, -1, 2}}}
    local w = f64 {{0.1, 0.2, 0.3}, {-0.4, 0.5, 0.6}}
    local bias = f64 {0.01, -0.02}
    assert.is_true(gradcheck(hero.linear, {x, w, bias}))
    assert.is_true(gradcheck(function(p, q) return hero.linear(p, q) end, {x, w}))
  end)

  it("linear adds a later weight gradient into the one the weight holds (micro-batches, a shared weight)", function()
    local g = hero.Generator(5)
    local w = hero.randn({4, 3}, {dtype = "f64", generator = g}):requires_grad_()
    local on = {dtype = "f64", generator = g}
    local x1, x2 = hero.randn({2, 5, 3}, on), hero.randn({7, 3}, on)
    local g1, g2 = hero.randn({2, 5, 4}, on), hero.randn({7, 4}, on)
    local want = g1:reshape(10, 4):t():matmul(x1:reshape(10, 3)) + g2:t():matmul(x2)
    hero.linear(x1, w):backward(g1)
    local held = w.grad
    hero.linear(x2, w):backward(g2)
    assert.tensor_near(w.grad, want)
    assert.tensor_near(held, want) -- added into the tensor the weight held
    -- one graph using the weight twice
    w.grad = nil
    local y = hero.linear(x1, w):sum() + hero.linear(x2, w):sum()
    y:backward()
    assert.tensor_near(w.grad, hero.ones(10, 4, {dtype = "f64"}):t():matmul(x1:reshape(10, 3))
      + hero.ones(7, 4, {dtype = "f64"}):t():matmul(x2))
    -- a gradient the product cannot add into (another dtype) is accumulated as before
    w.grad = hero.zeros({4, 3}, {dtype = "f64"}):t():contiguous():t()
    hero.linear(x2, w):backward(g2)
    assert.tensor_near(w.grad, g2:t():matmul(x2))
  end)
end)
