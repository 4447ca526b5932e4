-- Edge cases where PyTorch's semantics are easy to miss: type promotion with 0-dim tensors, NaN
-- in bounds, gradients at the points where the textbook formula divides by zero. Every expected
-- value below is what torch 1.13 gives for the same input on the CPU.
local hero = require "hero"
local helper = require "spec_helper"

local nan = 0 / 0

local function values(t) return t:totable() end

local function is_nan(x) return x ~= x end

local function grad_of(x, f)
  x = x:requires_grad_()
  f(x):sum():backward()
  return x.grad:totable()
end

describe("PyTorch edge cases", function()
  it("scans views whose scanned dimension is contiguous in the input only", function()
    -- the transposed input's rows are contiguous, the output's are not
    local x = hero.tensor {{1, 2, 3}, {4, 5, 6}}
    assert.same({{1, 4}, {3, 9}, {6, 15}}, values(x:t():cumsum(1)))
    assert.same({{1, 4}, {2, 20}, {6, 120}}, values(x:t():cumprod(1)))
    assert.same(values(x:t():contiguous():cumsum(1)), values(x:t():cumsum(1)))
  end)

  it("lets a 0-dim tensor decide the dtype only when it is of a higher category", function()
    local f64_0 = hero.tensor(2, {dtype = "f64"})
    assert.equal("f32", (hero.tensor {1, 2} * f64_0):dtype())
    assert.equal("f16", (hero.tensor({1, 2}, {dtype = "f16"}) * hero.tensor(2)):dtype())
    assert.equal("i32", (hero.tensor({1, 2}, {dtype = "i32"}) + hero.tensor(2, {dtype = "i64"})):dtype())
    -- a higher category wins: integer tensor and 0-dim float, bool tensor and 0-dim integer
    assert.equal("f64", (hero.tensor({1, 2}, {dtype = "i32"}) * hero.tensor(2.5, {dtype = "f64"})):dtype())
    assert.equal("f16", (hero.tensor({1}, {dtype = "i32"}) * hero.tensor(2.5, {dtype = "f16"})):dtype())
    assert.equal("i64", (hero.tensor {true} * hero.tensor(2, {dtype = "i64"})):dtype())
    -- two 0-dim tensors, or two with dimensions: the usual promotion
    assert.equal("f64", (hero.tensor(1, {dtype = "f16"}) * f64_0):dtype())
    assert.equal("f64", (hero.tensor({1}, {dtype = "f16"}) * hero.tensor({2}, {dtype = "f64"})):dtype())
    assert.equal("f16", hero.where(hero.tensor {true, false}, hero.tensor({1, 2}, {dtype = "f16"}),
      hero.tensor(0)):dtype())
    -- the gradients keep each input's dtype
    local a = hero.tensor({1, 2}, {dtype = "f16"}):requires_grad_()
    local b = hero.tensor(1.5):requires_grad_()
    local y = a * b
    assert.equal("f16", y:dtype())
    y:sum():backward()
    assert.same({"f16", "f32"}, {a.grad:dtype(), b.grad:dtype()})
    assert.equal(3, b.grad:item())
  end)

  it("clamps to NaN with a NaN bound, and passes no gradient when the bounds cross", function()
    for _, v in ipairs(values(hero.tensor {-2, 0.5, 2}:clamp(nan, 1))) do assert.is_true(is_nan(v)) end
    for _, v in ipairs(values(hero.tensor {-2, 0.5, 2}:clamp(0, nan))) do assert.is_true(is_nan(v)) end
    assert.same({-1, -1, -1}, values(hero.tensor {-1, 0, 1}:clamp(1, -1)))
    assert.same({0, 0, 0}, grad_of(hero.tensor {-1, 0, 1}, function(x) return x:clamp(1, -1) end))
    assert.same({0, 1, 1, 0}, grad_of(hero.tensor {-2, 0, 1, 3}, function(x) return x:clamp(0, 1) end))
  end)

  it("sends the gradient of a NaN maximum to the NaNs", function()
    assert.same({0, 1, 0}, grad_of(hero.tensor {1, nan, 3}, function(x) return x:max() end))
    assert.same({0, 0.5, 0.5}, grad_of(hero.tensor {1, nan, nan}, function(x) return x:max() end))
    assert.same({0, 0.5, 0.5}, grad_of(hero.tensor {4, 1, 1}, function(x) return x:min() end))
    -- elementwise: a failed comparison gives both sides the whole gradient
    local a, b = hero.tensor({nan}):requires_grad_(), hero.tensor({1}):requires_grad_()
    hero.maximum(a, b):sum():backward()
    assert.same({{1}, {1}}, {a.grad:totable(), b.grad:totable()})
    a, b = hero.tensor({2, 3}):requires_grad_(), hero.tensor({2, 1}):requires_grad_()
    hero.minimum(a, b):sum():backward()
    assert.same({{0.5, 0}, {0.5, 1}}, {a.grad:totable(), b.grad:totable()})
  end)

  it("gives zero gradients where std is 0 and where pow's formula has 0 * inf", function()
    assert.same({0, 0}, grad_of(hero.tensor {2, 2}, function(x) return x:std() end))
    local g = grad_of(hero.tensor {{2, 2}, {1, 2}}, function(x) return x:std(2) end)
    assert.same({0, 0}, g[1])
    assert.near(-0.70710678, g[2][1], 1e-6)
    assert.same({0, 0}, grad_of(hero.tensor {0, 1}, function(x) return x ^ 0 end))
    assert.same({0, 0}, grad_of(hero.tensor {0, 2}, function(x) return hero.pow(0, x) end))
    local x, y = hero.tensor({0, 0}):requires_grad_(), hero.tensor({2, 0}):requires_grad_()
    hero.pow(x, y):sum():backward()
    assert.same({{0, 0}, {0, 0}}, {x.grad:totable(), y.grad:totable()})
    -- a negative exponent at 0 keeps its infinities, as in PyTorch
    x = hero.tensor({0}):requires_grad_()
    hero.pow(x, hero.tensor {-1}):sum():backward()
    assert.equal(-math.huge, x.grad:totable()[1])
  end)

  it("treats NaN as PyTorch in sign, abs and relu and their gradients", function()
    assert.same({0, 0, 0, -1, 1}, values(hero.tensor {nan, -0.0, 0, -3, 2}:sign()))
    assert.same({0}, grad_of(hero.tensor {nan}, function(x) return x:abs() end))
    assert.same({1, 0, 0, 1}, grad_of(hero.tensor {nan, 0, -1, 2}, function(x) return x:relu() end))
    -- zero gradients stay zero under an infinite upstream gradient
    for _, op in ipairs {"floor", "ceil", "round", "sign"} do
      assert.same({0}, grad_of(hero.tensor {1.5}, function(x) return x[op](x) * math.huge end), op)
    end
  end)

  it("differentiates cat with an empty input, and masked_fill with a 0-dim value that requires grad", function()
    local a, b = hero.zeros(0):requires_grad_(), hero.tensor({{1, 2}}):requires_grad_()
    hero.cat({a, b}):sum():backward()
    assert.same({0}, a.grad:size())
    assert.same({{1, 1}}, b.grad:totable())
    local x = hero.tensor({1, 2, 3}):requires_grad_()
    local v = hero.tensor(5):requires_grad_()
    local y = x:masked_fill(hero.tensor {true, false, true}, v)
    assert.same({5, 2, 5}, y:totable())
    y:sum():backward()
    assert.equal(2, v.grad:item())
    assert.same({0, 1, 0}, x.grad:totable())
    helper.assert_error_contains(function()
      hero.tensor({1, 2}, {dtype = "f64"}):masked_fill(hero.tensor {true, false}, hero.tensor(1):requires_grad_())
    end, "must have the dtype of the tensor (f64)")
  end)

  it("transposes 0-D and 1-D tensors to themselves and casts to integers without a gradient", function()
    assert.same({1, 2, 3}, values(hero.tensor({1, 2, 3}):t()))
    assert.equal(7, hero.tensor(7):t():item())
    local l = hero.tensor({1.5, -2.5}):requires_grad_():long()
    assert.is_false(l.requires_grad)
    assert.same({1, -2}, l:totable())
  end)

  it("counts an integer arange from its truncated bounds", function()
    assert.same({0, 1}, values(hero.arange(0, 2.5, 1, {dtype = "i64"})))
    assert.same({0, 1}, values(hero.arange(-0.5, 2, {dtype = "i64"})))
    assert.same({3, 2}, values(hero.arange(3, 1.5, -1, {dtype = "i32"})))
    assert.same({0, 0.5, 1, 1.5}, values(hero.arange(0, 2, 0.5)))
    helper.assert_error_contains(function() hero.arange(0, 2, 0.5, {dtype = "i64"}) end, "step 0.5 is 0 as an integer")
  end)

  it("keeps u8 in all() and any()", function()
    local u = hero.tensor({1, 0, 2}, {dtype = "u8"})
    assert.same({"u8", 0, 1}, {u:all():dtype(), u:all():item(), u:any():item()})
    assert.equal("bool", hero.tensor({1, 2}, {dtype = "i32"}):all():dtype())
  end)

  it("refuses values a dtype cannot hold instead of wrapping them", function()
    local mask = hero.tensor {true, false}
    local cases = {
      {function() hero.tensor({1, 2}, {dtype = "u8"}):masked_fill(mask, 300) end,
       "value 300 cannot be converted to u8"},
      {function() hero.tensor({1, 2}, {dtype = "f16"}):masked_fill(mask, -1e9) end, "cannot be converted to f16"},
      {function() hero.full({2}, nan, {dtype = "i64"}) end, "cannot be converted to i64"},
      {function() hero.full({2}, 1e300, {dtype = "i32"}) end, "cannot be converted to i32"},
      {function() hero.tensor({math.maxinteger}, {dtype = "i32"}) end, "cannot be converted to i32"},
      {function() hero.tensor(1e39) end, "cannot be converted to f32"},
      {function() hero.zeros(2, {dtype = "i32"}):fill_(2 ^ 31) end, "cannot be converted to i32"},
      -- index assignment, as fill_
      {function() hero.zeros(2, {dtype = "u8"})[1] = 300 end, "index assignment: value 300 cannot be converted to u8"},
      {function() hero.zeros(2, {dtype = "i64"})[1] = nan end, "cannot be converted to i64"},
      {function() hero.zeros(2, {dtype = "i64"})[2] = math.huge end, "cannot be converted to i64"},
      {function() hero.zeros(2, {dtype = "i32"})[1] = 1 << 40 end, "cannot be converted to i32"},
      {function() hero.zeros(2, {dtype = "f16"})[1] = -1e9 end, "cannot be converted to f16"},
    }
    for _, c in ipairs(cases) do helper.assert_error_contains(c[1], c[2]) end
    -- what fits: u8 wraps -255..-1 as PyTorch, halfs take infinities and NaN, integers truncate
    assert.same({255, 255}, values(hero.zeros(2, {dtype = "u8"}):fill_(-1)))
    assert.equal(math.huge, hero.full({1}, math.huge, {dtype = "f16"}):totable()[1])
    assert.is_true(is_nan(hero.full({1}, nan, {dtype = "bf16"}):item()))
    assert.same({-2}, values(hero.tensor({-2.7}, {dtype = "i64"})))
    assert.equal(math.mininteger, hero.tensor(math.mininteger, {dtype = "i64"}):item())
  end)

  it("broadcasts attention masks with a size-1 batch or query dimension, as scores + mask does", function()
    hero.manual_seed(1)
    local q, k, v = hero.randn(2, 3, 8), hero.randn(2, 4, 8), hero.randn(2, 4, 8)
    local masks = {hero.tensor {{0, -10000, 0, 0}}, hero.randn(2, 1, 4), hero.randn(1, 3, 4), hero.randn(1, 1, 4)}
    for _, m in ipairs(masks) do
      local full = m:dim() == 2 and m:expand(2, 4):contiguous() or m:expand(2, 3, 4):contiguous()
      assert.equal(0, (hero.attention(q, k, v, m, 2) - hero.attention(q, k, v, full, 2)):abs():max():item())
    end
    local qkv = hero.randn(2, 4, 24)
    local m = hero.randn(1, 4)
    assert.equal(0, (hero.attention_packed(qkv, m, 2) - hero.attention_packed(qkv, m:expand(2, 4):contiguous(), 2))
      :abs():max():item())
    helper.assert_error_contains(function() hero.attention(q, k, v, hero.randn(3, 4), 2) end,
      "must be [B, Lk] or [B, Lq, Lk]")
  end)
end)

describe("PyTorch edge cases of numbers beside tensors and of limits", function()
  it("converts a number, and a 0-dim tensor that does not decide the dtype, to the op's dtype first", function()
    local u8 = hero.tensor({0, 3, 200}, {dtype = "u8"})
    -- -3 is 253 in u8: the minimum keeps every element, floor_divide divides by 253
    assert.same({0, 3, 200}, values(u8:minimum(-3)))
    assert.same({0, 0, 0}, values(u8:floor_divide(-3)))
    assert.same({0, 3, 200}, values(u8:remainder(-3)))
    assert.same({253, 253, 253}, values(u8:maximum(-3)))
    local inplace = hero.tensor({5, 250}, {dtype = "u8"})
    inplace:floor_divide_(-3)
    assert.same({0, 0}, values(inplace))
    -- a divisor that wraps to 0 is a division by zero
    helper.assert_error_contains(function() u8:floor_divide(256) end, "floor_divide", "division by zero")
    -- wrapping arithmetic is unchanged
    assert.same({44, 47, 244}, values(u8 + 300))
    assert.same({0, 132, 96}, values(u8 * 300))
    -- an i32 tensor with a 0-dim i64: its low 32 bits (-2^40 is 0, 2^33 + 5 is 5)
    local i32 = hero.tensor({0, 3, -7}, {dtype = "i32"})
    assert.same({0, 0, -7}, values(i32:minimum(hero.tensor(-(1 << 40), {dtype = "i64"}))))
    assert.same({5, 5, 5}, values(i32:maximum(hero.tensor((1 << 33) + 5, {dtype = "i64"}))))
    assert.same({0, 3, -7}, values(i32 + (1 << 40)))
    -- halfs: the exponent rounded to bf16 (-2), 1e6 to inf in f16
    local bf = hero.tensor({-1.515625}, {dtype = "bf16"})
    assert.equal(0.435546875, bf:pow(hero.tensor(-1.99907)):item())
    assert.equal(0.435546875, bf:pow(-1.99907):item())
    local f16 = hero.tensor({0, 1}, {dtype = "f16"})
    for _, y in ipairs {f16 * 1e6, f16 * hero.tensor(1e6), f16 * hero.tensor(1e6, {dtype = "f64"})} do
      local v = values(y)
      assert.is_true(is_nan(v[1]))
      assert.equal(math.huge, v[2])
    end
    assert.same({1}, values(hero.tensor({1}, {dtype = "f16"}) + hero.tensor(1e-4)))
    -- a true division or atan2 of integers computes in f32: nothing is narrowed
    assert.near(3 / 2 ^ 40, values(i32 / (1 << 40))[2], 1e-18)
    -- comparisons compare with the exact number
    assert.same({true, true, true}, values(u8:lt(256)))
  end)

  it("gives softplus' gradient 1 past the threshold, infinities included, and keeps its values", function()
    local x = hero.tensor({1, 30, 100, 1000, math.huge, -math.huge, 20, -100}):requires_grad_()
    local y = hero.softplus(x)
    y:sum():backward()
    assert.tensor_near(y, {1.3132616281509399, 30, 100, 1000, math.huge, 0, 20, 3.783505853677006e-44})
    assert.tensor_near(x.grad, {0.7310585975646973, 1, 1, 1, 1, 0, 1, 3.783505853677006e-44})
    -- beta and threshold: the threshold is on beta x
    x = hero.tensor({1, 10, 1000, -100}):requires_grad_()
    y = hero.softplus(x, 2, 20)
    y:sum():backward()
    assert.tensor_near(y, {1.0634640455245972, 10, 1000, 0})
    assert.tensor_near(x.grad, {0.8807970285415649, 1, 1, 0})
    local nan_grad = grad_of(hero.tensor {nan}, function(t) return hero.softplus(t) end)
    assert.is_true(is_nan(nan_grad[1]))
  end)

  it("says infinities of another sign or size are not close, as torch's allclose", function()
    local inf = math.huge
    assert.is_false(hero.allclose(hero.tensor {inf}, hero.tensor {-inf}))
    assert.is_false(hero.allclose(hero.tensor {1}, hero.tensor {inf}))
    assert.is_false(hero.allclose(hero.tensor {inf}, hero.tensor {1}))
    assert.is_true(hero.allclose(hero.tensor {inf, -inf, 1}, hero.tensor {inf, -inf, 1 + 1e-7}))
    assert.is_false(hero.allclose(hero.tensor {nan}, hero.tensor {inf}, nil, nil, true))
    assert.is_true(hero.allclose(hero.tensor {nan, inf}, hero.tensor {nan, inf}, nil, nil, true))
  end)

  it("gives pow(0, e) the exponent gradient -inf where e < 0, as a tensor base does", function()
    local g = grad_of(hero.tensor {-1, 0, 1, 2, -0.5}, function(e) return hero.pow(0, e) end)
    assert.same({-math.huge, 0, 0, 0, -math.huge}, g)
    assert.same(g, grad_of(hero.tensor {-1, 0, 1, 2, -0.5}, function(e) return hero.pow(hero.zeros(5), e) end))
  end)

  it("takes a logsumexp over an empty dim, and gather and index_select from a 0-dim tensor", function()
    assert.same({-math.huge, -math.huge}, values(hero.zeros(2, 0):logsumexp(2)))
    assert.same({{-math.huge}, {-math.huge}}, values(hero.zeros(2, 0):logsumexp(-1, true)))
    assert.same({-math.huge, -math.huge, -math.huge}, values(hero.zeros(0, 3):logsumexp(1)))
    local s = hero.tensor(3.5):requires_grad_()
    local g = s:gather(1, hero.tensor({0, 0}, {dtype = "i64"}))
    assert.same({3.5, 3.5}, values(g))
    g:sum():backward()
    assert.same({0, 2}, {s.grad:dim(), s.grad:item()})
    s.grad = nil
    local one = s:gather(-1, hero.tensor(0, {dtype = "i64"}))
    assert.same({0, 3.5}, {one:dim(), one:item()})
    for _, idx in ipairs {hero.tensor(0, {dtype = "i64"}), hero.tensor({0}, {dtype = "i32"})} do
      local r = s:index_select(1, idx)
      assert.same({0, 3.5}, {r:dim(), r:item()})
    end
    s:index_select(1, hero.tensor({0}, {dtype = "i64"})):backward()
    assert.same({0, 1}, {s.grad:dim(), s.grad:item()})
    helper.assert_error_contains(function() s:gather(1, hero.tensor(1, {dtype = "i64"})) end, "gather", "out of range")
    helper.assert_error_contains(function() s:index_select(1, hero.tensor({0, 0}, {dtype = "i64"})) end,
      "index_select", "one index")
  end)
end)
