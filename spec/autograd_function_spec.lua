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

  it("never adds another gradient into a tensor the Lua backward hands back and still holds", function()
    local held = hero.tensor {1, 2}
    local Hand = hero.autograd.Function {
      forward = function(_, t) return t:clone() end,
      backward = function() return held end,
    }
    local x = hero.tensor({5, 7}):requires_grad_()
    for _, order in ipairs {1, 2} do -- the held gradient reaching y first, and second
      x.grad = nil
      local y = x * 2
      local a, b = Hand(y):sum(), (y * 3):sum()
      local loss = order == 1 and a + b or b + a
      loss:backward()
      assert.same({1, 2}, held:totable())
      assert.same({(1 + 3) * 2, (2 + 3) * 2}, x.grad:totable())
    end
    -- one tensor handed back for two inputs, each of which gets another gradient too
    local Both = hero.autograd.Function {
      forward = function(_, p, q) return p + q end,
      backward = function(_, g) return g, g end,
    }
    local u = hero.tensor({1, 2}):requires_grad_()
    local v = hero.tensor({3, 4}):requires_grad_()
    local p, q = u * 1, v * 1
    local loss = Both(p, q):sum() + (p * 5):sum() + (q * 7):sum()
    loss:backward()
    assert.same({6, 6}, u.grad:totable())
    assert.same({8, 8}, v.grad:totable())
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
    -- nil is torch's None: no gradient (a leaf's .grad stays as it was, an intermediate gets zeros)
    Nil(x):backward(hero.ones(2))
    assert.is_nil(x.grad)
    local mid = x * 3
    local z = hero.tensor({1, 1}):requires_grad_()
    local both = (Nil(mid) + z) * 1
    both:sum():backward()
    assert.same({0, 0}, x.grad:totable())
    assert.same({1, 1}, z.grad:totable())
    -- more gradients than inputs: an error, as torch's "incorrect number of gradients"
    local Extra = hero.autograd.Function {forward = function(_, a) return a:mul(2) end,
      backward = function(_, g) return g, g, g end}
    helper.assert_error_contains(function() Extra(x):sum():backward() end,
      "backward returned 3 gradients for 1 input")
    -- one output tensor; an input handed back is an alias of it (its gradient flows through backward)
    helper.assert_error_contains(function()
      local Two = hero.autograd.Function {forward = function(_, a) return a * 2, a * 3 end,
        backward = function(_, g) return g end}
      return Two(x)
    end, "forward returned 2 values")
    local Identity = hero.autograd.Function {forward = function(_, a) return a end,
      backward = function(_, g) return g * 5 end}
    local w = hero.tensor({1, 2}):requires_grad_()
    local y = Identity(w)
    assert.same({1, 2}, y:totable())
    y:sum():backward()
    assert.same({5, 5}, w.grad:totable())
  end)

  it("checks the shape of each returned gradient: summed down when the input broadcasts to it, else an error",
    function()
    local function returning(make)
      return hero.autograd.Function {forward = function(_, a) return a * 1 end,
                                     backward = function(_, g) return make(g) end}
    end
    -- a wrong shape never reaches the kernels (a 512x512 GELU backward fed 3 values read out of bounds)
    local x = hero.randn(512, 512):requires_grad_()
    local three = returning(function() return hero.ones(3) end)
    helper.assert_error_contains(function() three(hero.gelu(x)):sum():backward() end, "lua function",
      "gradient of size 3 for input 1, whose size is 512x512")
    local ln = hero.randn(4, 8):requires_grad_()
    helper.assert_error_contains(function()
      three(hero.layer_norm(ln, hero.ones(8), hero.zeros(8), 1e-5)):sum():backward()
    end, "gradient of size 3 for input 1, whose size is 4x8")
    assert.is_nil(ln.grad)
    local leaf = hero.ones(2):requires_grad_()
    helper.assert_error_contains(function() returning(function() return hero.ones(5) end)(leaf):sum():backward() end,
      "gradient of size 5 for input 1, whose size is 2")
    assert.is_nil(leaf.grad)
    -- as torch: an input shape that broadcasts to the gradient's gets the gradient summed to it
    local row = hero.tensor({{1, 2, 3}}, {dtype = "f64"}):requires_grad_()
    returning(function() return hero.tensor({{1, 2, 3}, {10, 20, 30}}, {dtype = "f64"}) end)(row):sum():backward()
    assert.same({{11, 22, 33}}, row.grad:totable())
  end)

  it("times the backward pass node by node between backward_profile_start and stop", function()
    local core = hero.core
    local x = hero.randn(4, 5):requires_grad_()
    local w = hero.randn(3, 5):requires_grad_()
    core.backward_profile_start(false)
    for _ = 1, 2 do
      x.grad, w.grad = nil, nil
      hero.linear(x, w):tanh():sum():backward()
    end
    local stats = core.backward_profile_stop()
    local by_op = {}
    for _, s in ipairs(stats) do by_op[s.op] = s end
    for _, op in ipairs {"linear", "tanh", "sum"} do
      assert.is_not_nil(by_op[op], op)
      assert.equal(2, by_op[op].calls)
      assert.is_true(by_op[op].seconds >= 0)
    end
    assert.equal(6, by_op["(gradient accumulation)"].calls) -- after each of 3 nodes, two passes
    -- stopped: later passes are not counted, and a new start begins from zero
    hero.linear(x, w):sum():backward()
    assert.equal(0, #core.backward_profile_stop())
    core.backward_profile_start(true) -- waiting for a device is a no-op without one
    hero.linear(x, w):sum():backward()
    stats = core.backward_profile_stop()
    by_op = {}
    for _, s in ipairs(stats) do by_op[s.op] = s end
    assert.equal(1, by_op.linear.calls)
  end)

  it("gradcheck takes non-contiguous inputs and leaves their gradients as they were", function()
    local x = hero.randn(3, 2, {dtype = "f64"}):t():detach():requires_grad_()
    x.grad = hero.ones(2, 3, {dtype = "f64"})
    assert.is_true(hero.testing.gradcheck(function(a) return (a * a):exp() end, {x}))
    assert.same({{1, 1, 1}, {1, 1, 1}}, x.grad:totable())
    local y = hero.randn(4, {dtype = "f64"}):requires_grad_()
    local Wrong = hero.autograd.Function {forward = function(_, a) return a * 2 end,
      backward = function(_, g) return g * 3 end}
    helper.assert_error_contains(function() hero.testing.gradcheck(function(a) return Wrong(a) end, {y}) end,
      "input 1 element 1: analytic")
    assert.is_nil(y.grad)
  end)

  it("frees a chain of functions that keep their input in ctx with one collection after backward", function()
    local Keep = hero.autograd.Function {
      forward = function(ctx, x) ctx.x = x; return x * 1.0 end,
      backward = function(_, g) return g end,
    }
    local w = hero.randn(256, 256):requires_grad_()
    collectgarbage()
    local before = hero.live_bytes()
    local y = w
    for _ = 1, 12 do y = Keep(y) end
    local loss = y:sum()
    loss:backward()
    -- its ctx went with the first backward: a second one says so (retain_graph keeps it)
    helper.assert_error_contains(function() loss:backward() end, "backward through the graph a second time")
    y, loss = nil, nil -- luacheck: ignore 311
    collectgarbage()
    -- each ctx held the previous output until its node went: one link per collection
    assert.is_true(hero.live_bytes() - before <= 256 * 256 * 4 + 4096, tostring(hero.live_bytes() - before))
  end)

  it("gradcheck takes a missing gradient as zeros, as torch's", function()
    local f = function(a, _) return (a * a):sum() end
    assert.is_true(hero.testing.gradcheck(f, {hero.randn({3}, {dtype = "f64"}):requires_grad_(),
      hero.randn({2}, {dtype = "f64"}):requires_grad_()}))
    -- a function that does use the input still fails without its gradient
    local Drop = hero.autograd.Function {
      forward = function(_, a, b) return a * b end,
      backward = function(_, g) return g, nil end,
    }
    assert.has_error(function()
      hero.testing.gradcheck(function(a, b) return Drop(a, b) end, {hero.randn({3}, {dtype = "f64"}):requires_grad_(),
        hero.randn({3}, {dtype = "f64"}):requires_grad_()})
    end)
  end)
end)

describe("writes that would lose a gradient", function()
  it("refuses copy_, fill_ and index assignment of a value that requires grad (allowed in no_grad)", function()
    local x = hero.tensor({1, 2}):requires_grad_()
    local buf = hero.zeros(2)
    helper.assert_error_contains(function() buf:copy_(x) end, "copy_: the value written requires grad")
    helper.assert_error_contains(function() buf:fill_(x:sum()) end, "fill_: the value written requires grad")
    helper.assert_error_contains(function() buf[1] = x[2] end, "index assignment: the value written requires grad")
    hero.no_grad(function() buf:copy_(x) end)
    assert.same({1, 2}, buf:totable())
    buf:copy_(x:detach())
  end)

  it("refuses random fills of a leaf that requires grad or of a tensor in the graph, as other writes", function()
    local w = hero.zeros(2):requires_grad_()
    helper.assert_error_contains(function() w:normal_() end, "normal_: a leaf tensor that requires grad")
    local h = w * 2
    helper.assert_error_contains(function() h:uniform_() end, "uniform_: in-place writes are not recorded")
    helper.assert_error_contains(function() h:bernoulli_(0.5) end, "bernoulli_: in-place writes are not recorded")
    hero.no_grad(function() w:uniform_(-1, 1) end)
  end)

  it("gives no gradient to a leaf frozen between the forward and the backward pass, as torch", function()
    local x = hero.tensor({1, 2}):requires_grad_()
    local y = (x * hero.tensor {3, 4}):sum()
    x:requires_grad_(false)
    y:backward()
    assert.is_nil(x.grad)
  end)
end)
