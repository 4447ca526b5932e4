local hero = require "hero"
local helper = require "spec_helper"
local fx = helper.load_fixture("gelu.lua")

-- Largest |actual - expected| / max(1, |x|)^scale_pow over the finite references.
local function max_error(actual, expected, scale_pow)
  local worst, at = 0, nil
  for i, v in ipairs(actual) do
    local r = expected[i]
    if r == r and math.abs(r) ~= math.huge then
      local e = math.abs(v - r) / math.max(1, math.abs(fx.x[i])) ^ (scale_pow or 0)
      if not (e <= worst) then worst, at = e, fx.x[i] end -- luacheck: ignore 581 (a NaN error must count)
    end
  end
  return worst, at
end

local function assert_bound(actual, expected, bound, scale_pow, what)
  local worst, at = max_error(actual, expected, scale_pow)
  assert(worst <= bound, string.format("%s: error %.3g at x = %.9g exceeds %.3g", what, worst, at or 0 / 0, bound))
end

describe("erf and the erf GELU", function()
  it("f32 erf stays within 2e-7 of math.erf on a dense grid (tiny, denormal and tail values included)", function()
    assert_bound(hero.erf(hero.tensor(fx.x)):totable(), fx.erf, 2e-7, 0, "erf")
  end)

  it("f32 erf keeps the sign of zero, the infinities' limits and NaN", function()
    local y = hero.erf(hero.tensor {0, -0.0, 1 / 0, -1 / 0, 0 / 0, -1e-40, 1e-40}):totable()
    assert.are.equal(1 / 0, 1 / y[1])
    assert.are.equal(-1 / 0, 1 / y[2])
    assert.are.equal(1, y[3])
    assert.are.equal(-1, y[4])
    assert.is_true(y[5] ~= y[5])
    assert.is_true(y[6] < 0 and y[6] > -2e-40)
    assert.is_true(y[7] > 0 and y[7] < 2e-40)
  end)

  it("erf_ in place writes erf's values through a view, and refuses what erf cannot write back", function()
    local t = hero.tensor({-1, 0.25, 0.5, 2}, {dtype = "f64"})
    local want = hero.erf(t:narrow(1, 2, 2)):totable()
    t:narrow(1, 2, 2):erf_()
    assert.same({-1, want[1], want[2], 2}, t:totable())
    helper.assert_error_contains(function() hero.ones(2, {dtype = "i64"}):erf_() end,
      "erf_: in place needs a floating-point tensor")
    helper.assert_error_contains(function() hero.ones(2):requires_grad_():erf_() end, "erf_", "requires grad")
  end)

  it("f64 erf is libm's", function()
    assert_bound(hero.erf(hero.tensor(fx.x, {dtype = "f64"})):totable(), fx.erf, 1e-15, 0, "f64 erf")
  end)

  it("erf has the derivative 2/sqrt(pi) exp(-x^2), and passes gradcheck", function()
    local x = hero.tensor(fx.x):requires_grad_()
    hero.erf(x):sum():backward()
    assert_bound(x.grad:totable(), fx.derf, 2e-7, 0, "erf'")
    local x64 = hero.tensor({-3, -1.2, -0.3, 0, 0.4, 1, 2.5}, {dtype = "f64"}):requires_grad_()
    assert.is_true(hero.testing.gradcheck(hero.erf, {x64}))
  end)

  it("f32 gelu stays within 2e-7 max(1, |x|) of the reference, and its derivative within 2e-7", function()
    local x = hero.tensor(fx.x):requires_grad_()
    local y = hero.gelu(x)
    assert_bound(y:totable(), fx.gelu, 2e-7, 1, "gelu")
    y:sum():backward()
    assert_bound(x.grad:totable(), fx.dgelu, 2e-7, 0, "gelu'")
    local s = hero.gelu(hero.tensor {1 / 0, 0 / 0, -0.0}):totable()
    assert.are.equal(1 / 0, s[1])
    assert.is_true(s[2] ~= s[2])
    assert.are.equal(0, s[3])
  end)

  it("gives every element the same value whatever its position (vector tails) and thread count", function()
    local n = #fx.x
    local full = hero.tensor(fx.x)
    local ref_e, ref_g = hero.erf(full):totable(), hero.gelu(full):totable()
    for _, len in ipairs {1, 7, 9, 13} do
      for _, start in ipairs {1, 2, 5} do
        local part = full:narrow(1, start, len)
        local e, g = hero.erf(part):totable(), hero.gelu(part):totable()
        for i = 1, len do
          assert.are.equal(ref_e[start + i - 1], e[i])
          assert.are.equal(ref_g[start + i - 1], g[i])
        end
      end
    end
    local big = hero.tensor(fx.x):tile(20)
    local threads = hero.get_num_threads()
    hero.set_num_threads(1)
    local one = hero.gelu(big)
    hero.set_num_threads(math.max(2, threads))
    local many = hero.gelu(big)
    hero.set_num_threads(threads)
    assert.are.equal(n * 20, big:numel())
    local a, b = one:totable(), many:totable()
    for i = 1, #a do
      if a[i] ~= b[i] then error(string.format("element %d: %.9g with 1 thread, %.9g with several", i, a[i], b[i])) end
    end
  end)

  it("takes every dtype as torch: halfs computed in f32 and rounded once, integers and bool to f32", function()
    -- torch 1.13
    local i = hero.tensor({1, 0, -2}, {dtype = "i64"}):erf()
    assert.equal("f32", i:dtype())
    assert.tensor_near(i, {0.8427007794380188, 0, -0.9953222870826721})
    assert.tensor_near(hero.tensor({true, false}):erf(), {0.8427007794380188, 0})
    assert.equal("f32", hero.tensor({3}, {dtype = "u8"}):erf():dtype())
    for _, dt in ipairs {"bf16", "f16"} do
      local x = hero.tensor({0.5, -1.25, 3}, {dtype = dt}):requires_grad_()
      local y = x:erf()
      assert.equal(dt, y:dtype())
      local x32 = x:detach():float():requires_grad_()
      local y32 = x32:erf()
      assert.same(y32:to(dt):totable(), y:totable())
      y:sum():backward()
      y32:sum():backward()
      assert.equal(dt, x.grad:dtype())
      assert.same(x32.grad:to(dt):totable(), x.grad:totable())
      if dt == "bf16" then
        assert.same({0.51953125, -0.921875, 1}, y:totable())
        assert.tensor_near(x.grad, {0.875, 0.236328125, 0.00013828277587890625})
      end
    end
  end)

  it("names the problem for freed tensors", function()
    local x = hero.ones(3)
    x:free()
    helper.assert_error_contains(function() hero.erf(x) end, "erf")
  end)
end)
