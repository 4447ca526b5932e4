-- The PyTorch functions hero composes from its C ops (hero.tensor_extra.install_math), against
-- torch 1.13's values and gradients (spec/fixtures/gen/tensor_math.py).
local hero = require "hero"
local helper = require "spec_helper"
local fx = dofile(helper.fixture("tensor_math.lua"))

local function close(got, want, path)
  if type(want) == "table" then
    assert.equal(#want, #got, path .. ": length")
    for i = 1, #want do close(got[i], want[i], path .. "[" .. i .. "]") end
    return
  end
  if type(want) == "boolean" then
    assert.equal(want, got, path)
  elseif want ~= want then
    assert(got ~= got, path .. ": expected NaN, got " .. tostring(got))
  elseif want == math.huge or want == -math.huge then
    assert.equal(want, got, path)
  else
    assert(math.abs(got - want) <= 1e-12 * math.max(1, math.abs(want)),
      string.format("%s: got %.17g, expected %.17g", path, got, want))
  end
end

-- tables among the arguments are the other operands (f64 tensors); numbers stay numbers
local function hero_args(args)
  local out = {}
  for i, a in ipairs(args) do out[i] = type(a) == "table" and hero.tensor(a, {dtype = "f64"}) or a end
  return out
end

describe("PyTorch functions composed from the C ops", function()
  it("match torch's values and gradients", function()
    for k, c in ipairs(fx.cases) do
      local label = string.format("case %d (%s)", k, c.name)
      local grad = c.grad ~= nil
      -- nan_to_num without values: torch's float32 limits
      local dtype = (c.name == "nan_to_num" and #c.args == 0) and "f32" or "f64"
      local x = hero.tensor(c.x, {dtype = dtype})
      if grad then x:requires_grad_() end
      -- pad's amounts are a list of integers, not a tensor
      local args = c.name == "pad" and c.args or hero_args(c.args)
      local fn = hero[c.name] or hero.nn.functional[c.name]
      local y = fn(x, table.unpack(args))
      close(y:totable(), c.y, label .. " value")
      if grad then
        y:sum():backward()
        close(x.grad:totable(), c.grad, label .. " gradient")
      end
      -- the method is the same function (pad lives in hero.nn.functional, as torch's)
      if hero[c.name] then assert.equal(hero[c.name], hero.Tensor[c.name], c.name) end
    end
  end)

  it("match torch's integer and boolean results", function()
    local o = fx.other
    assert.same(o.one_hot, hero.one_hot(hero.tensor({{0, 2}, {1, 0}}, {dtype = "i64"})):totable())
    assert.same(o.one_hot_4, hero.one_hot(hero.tensor({1, 3}, {dtype = "i64"}), 4):totable())
    local x = hero.tensor {{1.5, -2.0, 0.25}, {3.0, 0.5, -0.75}}
    assert.same(o.argsort, x:argsort(2):totable())
    assert.same(o.argsort_desc_dim1, x:argsort(1, true):totable())
    close(hero.linspace(-1, 2, 7, {dtype = "f64"}):totable(), o.linspace, "linspace")
    close(hero.linspace(3, 3, 2, {dtype = "f64"}):totable(), o.linspace_2, "linspace")
    assert.same(o.allclose, {
      hero.allclose(hero.tensor {1, 2}, hero.tensor {1 + 1e-6, 2}),
      hero.allclose(hero.tensor {1, 2}, hero.tensor {1 + 1e-4, 2}),
      hero.allclose(hero.tensor {0 / 0}, hero.tensor {0 / 0}),
      hero.allclose(hero.tensor {0 / 0}, hero.tensor {0 / 0}, nil, nil, true),
      hero.allclose(hero.tensor {1 / 0}, hero.tensor {1 / 0}),
    })
    assert.same(o.logical_xor, hero.logical_xor(hero.tensor({0, 1, 2, 0}, {dtype = "i64"}),
      hero.tensor({0, 0, 3, 5}, {dtype = "i64"})):totable())
  end)

  it("compute cross_entropy of every shape torch takes: [C], [N, C, d...], class probabilities", function()
    for k, c in ipairs(fx.cross_entropy) do
      local label = string.format("cross_entropy case %d", k)
      local x = hero.tensor(c.logits, {dtype = "f64"}):requires_grad_()
      local t = c.float_target and hero.tensor(c.target, {dtype = "f64"}) or hero.tensor(c.target, {dtype = "i64"})
      local opts = {}
      for key, v in pairs(c.opts) do opts[key] = type(v) == "table" and hero.tensor(v, {dtype = "f64"}) or v end
      local y = hero.cross_entropy(x, t, opts)
      close(type(c.y) == "table" and y:totable() or y:item(), c.y, label .. " value")
      y:sum():backward()
      close(x.grad:totable(), c.grad, label .. " gradient")
    end
    assert.equal(hero.cross_entropy, hero.nn.functional.cross_entropy)
    helper.assert_error_contains(function()
      hero.cross_entropy(hero.ones(2, 3, 4), hero.zeros({2, 3}, {dtype = "i64"}))
    end, "target 2x3 must be 2x4")
    helper.assert_error_contains(function() hero.cross_entropy(hero.ones(2, 3), hero.ones(2, 4)) end,
      "class probabilities 2x4 must have the logits' shape 2x3")
    helper.assert_error_contains(function()
      hero.cross_entropy(hero.ones(2, 3), hero.zeros({2}, {dtype = "i64"}), {wieght = hero.ones(3)})
    end, "unknown option 'wieght'")
    helper.assert_error_contains(function()
      hero.cross_entropy(hero.ones(2, 3), hero.zeros({2}, {dtype = "i64"}), {weight = hero.ones(4)})
    end, "weight 4 must be a vector of the 3 classes")
  end)

  it("take the classes of core.cross_entropy from the first columns of padded logits (a padded vocabulary)", function()
    -- the loss of the first C columns in place: the loss of the narrowed logits, and their gradient
    -- padded with zeros, bit for bit (the narrowed loss is checked against torch above)
    local target = hero.tensor({0, 4, -100, 2, 6, 1, 6}, {dtype = "i64"})
    hero.manual_seed(3)
    for _, dt in ipairs {"f32", "f64"} do
      for _, opts in ipairs {{reduction = "none"}, {reduction = "mean", label_smoothing = 0.1}, {reduction = "sum"}} do
        for _, width in ipairs {7, 8, 21, 40} do -- no padding, and rows cut inside and past a vector
          local full = hero.randn({7, width}, {dtype = dt}) * 3
          local a = full:clone():requires_grad_()
          local b = full:clone():requires_grad_()
          local with = {classes = 7}
          for k, v in pairs(opts) do with[k] = v end
          local la = hero.core.cross_entropy(a, target, with)
          local lb = hero.core.cross_entropy(b:narrow(2, 1, 7), target, opts)
          assert.same(lb:totable(), la:totable())
          la:sum():backward()
          lb:sum():backward()
          assert.same({7, width}, a.grad:size())
          assert.same(b.grad:totable(), a.grad:totable())
          if width > 7 then
            assert.equal(0, a.grad:narrow(2, 8, width - 7):abs():sum():item())
          end
        end
      end
    end
    helper.assert_error_contains(function()
      hero.core.cross_entropy(hero.ones(2, 5), hero.zeros({2}, {dtype = "i64"}), {classes = 6})
    end, "cross_entropy: 6 classes in logits", "of 5 columns")
    helper.assert_error_contains(function()
      hero.core.cross_entropy(hero.ones(2, 5), hero.tensor({0, 3}, {dtype = "i64"}), {classes = 3})
    end, "target 3 at position 2 is out of range for 3 classes")
    helper.assert_error_contains(function()
      hero.core.cross_entropy(hero.ones(2, 5), hero.zeros({2}, {dtype = "i64"}), {classes = 0})
    end, "option classes must be positive, got 0")
  end)

  it("compute binary_cross_entropy_with_logits with broadcast weights and pos_weight, mse_loss broadcast", function()
    local function run(list, fn, label)
      for k, c in ipairs(list) do
        local x = hero.tensor(c.x, {dtype = "f64"}):requires_grad_()
        local opts = {}
        for key, v in pairs(c.opts) do opts[key] = type(v) == "table" and hero.tensor(v, {dtype = "f64"}) or v end
        local out = fn(x, hero.tensor(c.y, {dtype = "f64"}), opts)
        close(type(c.out) == "table" and out:totable() or out:item(), c.out, label .. k .. " value")
        out:sum():backward()
        close(x.grad:totable(), c.grad, label .. k .. " gradient")
      end
    end
    run(fx.bce, hero.binary_cross_entropy_with_logits, "bce case ")
    run(fx.mse, hero.mse_loss, "mse case ")
    helper.assert_error_contains(function()
      hero.binary_cross_entropy_with_logits(hero.ones(2), hero.ones(2), {pos_weigth = hero.ones(2)})
    end, "unknown option 'pos_weigth'")
    helper.assert_error_contains(function() hero.binary_cross_entropy_with_logits(hero.ones(2), hero.ones(3)) end,
      "target size 3 must be the input size 2")
  end)

  it("compute the reference's ranking hinge (hinge_loss) as torch's clamp(margin + neg - pos, min = 0)", function()
    for k, c in ipairs(fx.hinge) do
      local pos = hero.tensor(c.pos, {dtype = "f64"}):requires_grad_()
      local out = hero.nn.functional.hinge_loss(pos, hero.tensor(c.neg, {dtype = "f64"}), c.opts)
      close(type(c.out) == "table" and out:totable() or out:item(), c.out, "hinge case " .. k)
      out:sum():backward()
      close(pos.grad:totable(), c.grad, "hinge case " .. k .. " gradient")
    end
  end)

  it("refuse what they cannot do", function()
    helper.assert_error_contains(function() hero.one_hot(hero.tensor {0.5}) end, "expected an integer tensor")
    helper.assert_error_contains(function() hero.one_hot(hero.tensor({3}, {dtype = "i64"}), 2) end,
      "class index 3 is not below num_classes 2")
    helper.assert_error_contains(function() hero.one_hot(hero.tensor({-1}, {dtype = "i64"})) end,
      "must not be negative")
    helper.assert_error_contains(function() hero.tril(hero.ones(3)) end, "at least 2 dimensions")
    helper.assert_error_contains(function() hero.flatten(hero.ones(2, 3), 3) end, "start_dim 3 out of range")
    -- a 0-dim tensor names its one dimension as 1 or -1 (torch's 0 or -1), nothing else
    assert.same({1}, hero.tensor(5):flatten(-1):size())
    assert.same({1}, hero.tensor(5):flatten(1, -1):size())
    helper.assert_error_contains(function() hero.tensor(5):flatten(7) end, "start_dim 7 out of range for a 0-D")
    helper.assert_error_contains(function() hero.tensor(5):flatten(1, 2) end, "end_dim 2 out of range for a 0-D")
    -- one_hot's num_classes = -1 is torch's "from the indices"
    assert.same({{1, 0, 0}, {0, 0, 1}}, hero.one_hot(hero.tensor({0, 2}, {dtype = "i64"}), -1):totable())
    -- diag past the edge of a matrix is empty but stays in the graph (zero gradient), as torch's
    local m = hero.randn({3, 5}, {dtype = "f64"}):requires_grad_()
    local d = hero.diag(m, 5)
    assert.same({0}, d:size())
    d:sum():backward()
    assert.same(hero.zeros({3, 5}, {dtype = "f64"}):totable(), m.grad:totable())
    helper.assert_error_contains(function() hero.diag(m, 1.5) end, "diag: the diagonal offset must be an integer")
    -- pad: one side cropping past the dimension is pad's own error, as both sides together
    helper.assert_error_contains(function() hero.nn.functional.pad(hero.ones(2, 3), {-4, 2}) end,
      "pad: cropping 4 from a dimension of size 3")
    helper.assert_error_contains(function() hero.conv1d(hero.ones(1, 1, 4), hero.ones(1, 1, 0)) end,
      "conv1d: weight", "kernel of size 0")
    helper.assert_error_contains(function() hero.logsumexp(hero.ones(2)) end, "a dimension is required")
    helper.assert_error_contains(function() hero.diag(hero.ones(1, 2, 3)) end, "1-D or 2-D")
    helper.assert_error_contains(function() hero.isnan(3) end, "expected a hero.Tensor")
  end)

  it("name themselves and the caller's line when an op inside them fails", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, err = pcall(function() local n = hero.ones(2):count_nonzero(5); return n end)
    assert.is_false(ok)
    assert.equal(string.format("%s:%d: count_nonzero: sum: dimension 5 out of range", debug.getinfo(1, "S").short_src,
      line), err:match("^(.-) %(the tensor"))
    ok, err = pcall(function() local d = hero.diff(hero.ones(2), 1, 3); return d end)
    assert.is_false(ok)
    assert.truthy(err:find("tensor_math_spec.lua:%d+: diff: size: dimension 3 out of range"), err)
  end)
end)
