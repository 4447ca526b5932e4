local hero = require "hero"
local helper = require "spec_helper"

local fx = helper.load_fixture("random.lua")

--- Flat list of a tensor's values (row-major).
local function flat(t)
  if t:dim() == 0 then return {t:item()} end
  return t:reshape(-1):totable()
end

--- Index of the first element where two tensors differ (nil when identical, bit for bit).
local function first_difference(a, b)
  local x, y = flat(a), flat(b)
  if #x ~= #y then return 0 end
  for i = 1, #x do
    if x[i] ~= y[i] then return i end
  end
  return nil
end

--- Mean, variance, minimum and maximum in one pass, and how many |x - centre| exceed `band`.
local function stats(values, centre, band)
  local n, s, ss, lo, hi, out = #values, 0, 0, math.huge, -math.huge, 0
  centre, band = centre or 0, band or math.huge
  for i = 1, n do
    local x = values[i]
    s = s + x
    ss = ss + x * x
    if x < lo then lo = x end
    if x > hi then hi = x end
    if x - centre > band or centre - x > band then out = out + 1 end
  end
  local m = s / n
  return m, ss / n - m * m, lo, hi, out
end

local function with_threads(n, fn)
  local before = hero.get_num_threads()
  hero.set_num_threads(n)
  local ok, res = pcall(fn)
  hero.set_num_threads(before)
  assert(ok, res)
  return res
end

describe("random: Philox4x32-10", function()
  it("matches Random123's published known-answer vectors", function()
    -- Random123 kat_vectors, "philox4x32 10" lines: counter, key -> output.
    local kats = {
      {{0x00000000, 0x00000000, 0x00000000, 0x00000000}, {0x00000000, 0x00000000},
       {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    }
    for _, k in ipairs(kats) do
      assert.same(k[3], hero.philox4x32_10(k[1], k[2]))
    end
    -- the independent Python implementation of the fixtures agrees on the same vectors
    for i, k in ipairs(fx.kats) do
      assert.same(kats[i][3], k.out)
      assert.same(k.out, hero.philox4x32_10(k.ctr, k.key))
    end
  end)

  it("checks the raw block function's arguments", function()
    helper.assert_error_contains(function() hero.philox4x32_10({1, 2, 3}, {0, 0}) end, "counter", "4 words")
    helper.assert_error_contains(function() hero.philox4x32_10({0, 0, 0, 0}, {-1, 0}) end, "key word 1", "2^32")
  end)
end)

describe("random: pinned values for seed 42 (independent Python mapping)", function()
  it("rand f32 and f64", function()
    hero.manual_seed(42)
    local r = hero.rand(10)
    assert.equal("f32", r:dtype())
    assert.same(fx.rand_f32, r:totable()) -- exact: u24 values are exact in f32
    hero.manual_seed(42)
    assert.tensor_near(hero.rand({5}, {dtype = "f64"}), fx.rand_f64)
    assert.same(fx.rand_f64, hero.rand(5, {dtype = "f64", generator = hero.Generator(42)}):totable())
  end)

  it("randn f32 and f64", function()
    hero.manual_seed(42)
    assert.tensor_near(hero.randn(10), fx.randn_f32)
    hero.manual_seed(42)
    assert.tensor_near(hero.randn(5, {dtype = "f64"}), fx.randn_f64)
  end)

  it("randint, randperm and bernoulli", function()
    hero.manual_seed(42)
    local r = hero.randint(0, 10, {12})
    assert.equal("i64", r:dtype())
    assert.same(fx.randint_0_10, r:totable())
    hero.manual_seed(42)
    assert.same(fx.randint_0_10, hero.randint(10, {12}):totable())
    hero.manual_seed(42)
    assert.same(fx.randint_wide, hero.randint(-(1 << 40), 1 << 40, 5):totable())
    hero.manual_seed(42)
    local p = hero.randperm(10)
    assert.equal("i64", p:dtype())
    assert.same(fx.randperm_10, p:totable())
    hero.manual_seed(42)
    assert.same(fx.bernoulli_03, hero.bernoulli(0.3, {12}):totable())
    -- with a long tensor, the first 12 draws are still those (the 32-at-a-time path starts there)
    hero.manual_seed(42)
    assert.same(fx.bernoulli_03, hero.bernoulli(0.3, {1000}):narrow(1, 1, 12):totable())
  end)

  it("draws Bernoulli masks with one probability exactly as with a probability per element", function()
    -- one probability takes the vectorised path (eight Philox blocks at once, integer comparison);
    -- a tensor of probabilities takes the scalar one: the same stream must give the same draws
    for _, p in ipairs {0.1, 0.3, 0.5, 0.37, 0, 1, 1e-9, 1 - 2 ^ -25, 0.999999} do
      for _, dt in ipairs {"f32", "u8"} do
        local n = 100003 -- not a multiple of 32: the scalar tail too
        local a = hero.zeros({n}, {dtype = dt}):bernoulli_(p, {generator = hero.Generator(42)})
        local b = hero.zeros({n}, {dtype = dt}):bernoulli_(hero.full({n}, p, {dtype = "f64"}),
          {generator = hero.Generator(42)})
        assert.is_true(a:eq(b):all():item(), string.format("p = %.17g, %s", p, dt))
      end
    end
  end)

  it("advances the offset by the blocks each op uses, through a sequence of ops", function()
    local g = hero.Generator(42)
    local s = fx.sequence
    assert.same(s.a_rand3, hero.rand(3, {generator = g}):totable())
    assert.tensor_near(hero.empty(5):normal_(2, 0.5, {generator = g}), s.b_randn5)
    assert.same(s.c_randint3, hero.randint(5, 9, {3}, {generator = g}):totable())
    assert.same(s.d_randperm5, hero.randperm(5, {generator = g}):totable())
    assert.tensor_near(hero.empty(3, {dtype = "f64"}):uniform_(-1, 3, {generator = g}), s.e_uniform_f64_3)
    assert.same({seed = 42, offset = s.f_offset}, g:get_state())
  end)

  it("uses both key words of a 64-bit seed; negative seeds are their 64-bit pattern", function()
    assert.same(fx.rand_bigseed, hero.rand(6, {generator = hero.Generator(0x123456789ABCDEF0)}):totable())
    local g = hero.Generator(-1)
    assert.equal(-1, g:initial_seed())
    assert.same(fx.rand_seed_minus1, hero.rand(6, {generator = g}):totable())
    local h = hero.Generator(7):set_state {seed = 7, offset = 1000}
    assert.same(fx.rand_seed7_offset1000, hero.rand(6, {generator = h}):totable())
  end)
end)

describe("random: generators and determinism", function()
  it("gives the same values for the same seed and different ones for different seeds", function()
    hero.manual_seed(123)
    assert.equal(123, hero.initial_seed())
    local a = hero.randn(1000)
    hero.manual_seed(123)
    local b = hero.randn(1000)
    assert.is_nil(first_difference(a, b))
    hero.manual_seed(124)
    local c = hero.randn(1000)
    local same = 0
    local x, y = flat(a), flat(c)
    for i = 1, #x do
      if x[i] == y[i] then same = same + 1 end
    end
    assert.is_true(same < 5, "seeds 123 and 124 share " .. same .. " of 1000 values")
    -- consecutive draws continue the stream instead of repeating it
    hero.manual_seed(123)
    hero.randn(1000)
    assert.is_not_nil(first_difference(a, hero.randn(1000)))
  end)

  it("keeps explicit generators independent of the default one", function()
    hero.manual_seed(5)
    local before = hero.get_rng_state()
    local g = hero.Generator(5)
    local from_g = hero.rand(7, {generator = g})
    assert.same(before, hero.get_rng_state())
    assert.is_nil(first_difference(from_g, hero.rand(7)))
    assert.same({seed = 5, offset = 2}, g:get_state())
    assert.same({seed = 5, offset = 2}, hero.get_rng_state())
    assert.equal(hero.default_generator(), hero.manual_seed(9))
    assert.equal("hero.Generator(seed=9, offset=0)", tostring(hero.default_generator()))
  end)

  it("starts from a fixed default seed", function()
    assert.equal(67280421310721, hero.Generator():initial_seed())
  end)

  it("restores a saved state and reproduces the continuation bit for bit", function()
    local g = hero.Generator(2024)
    hero.rand(33, {generator = g})
    hero.randint(0, 5, {7}, {generator = g})
    local state = g:get_state()
    local a1 = hero.randn(1001, {generator = g})
    local a2 = hero.randperm(50, {generator = g})
    local a3 = hero.bernoulli(0.5, {17}, {generator = g})
    g:manual_seed(1) -- anything in between
    hero.rand(3, {generator = g})
    assert.equal(g, g:set_state(state))
    assert.is_nil(first_difference(a1, hero.randn(1001, {generator = g})))
    assert.is_nil(first_difference(a2, hero.randperm(50, {generator = g})))
    assert.is_nil(first_difference(a3, hero.bernoulli(0.5, {17}, {generator = g})))
    -- the same through the default generator
    hero.manual_seed(77)
    hero.rand(5)
    local s = hero.get_rng_state()
    local b1 = hero.rand(100)
    hero.rand(9)
    hero.set_rng_state(s)
    assert.is_nil(first_difference(b1, hero.rand(100)))
  end)

  it("does not depend on the thread count (1e6 elements)", function()
    local ops = {
      function(g) return hero.rand(1000, 1000, {generator = g}) end,
      function(g) return hero.randn(1000000, {generator = g}) end,
      function(g) return hero.randn(999999, {dtype = "f64", generator = g}) end,
      function(g) return hero.randint(-3, 1000, {1000000}, {generator = g}) end,
      function(g) return hero.bernoulli(0.25, {1000000}, {generator = g}) end,
    }
    for k, op in ipairs(ops) do
      local one = with_threads(1, function() return op(hero.Generator(99)) end)
      local two = with_threads(2, function() return op(hero.Generator(99)) end)
      local diff = first_difference(one, two)
      assert.is_nil(diff, "op " .. k .. " differs at element " .. tostring(diff))
    end
  end)

  it("numbers elements in row-major order whatever the view, and rounds once for bf16/f16", function()
    local ref = hero.rand({6, 4}, {generator = hero.Generator(3)})
    local t = hero.zeros(4, 6):t() -- a 6x4 non-contiguous view
    t:uniform_({generator = hero.Generator(3)})
    assert.is_nil(first_difference(ref, t))
    local ref_n = hero.randn({6, 4}, {generator = hero.Generator(3)})
    local h = hero.randn({6, 4}, {dtype = "bf16", generator = hero.Generator(3)})
    assert.equal("bf16", h:dtype())
    assert.tensor_near(h, ref_n:totable())
    local f = hero.zeros({6, 4}, {dtype = "f16"}):normal_(0, 1, {generator = hero.Generator(3)})
    assert.tensor_near(f, ref_n:totable())
    local i = hero.zeros({6, 4}, {dtype = "i32"}):t():random_(0, 10, {generator = hero.Generator(3)})
    assert.same(hero.randint(0, 10, {4, 6}, {generator = hero.Generator(3)}):totable(), i:totable())
  end)

  it("makes rand_like and randn_like from a tensor's shape and dtype", function()
    local src = hero.zeros({2, 3}, {dtype = "f64"})
    local r = hero.rand_like(src, {generator = hero.Generator(8)})
    assert.same({2, 3}, r:size())
    assert.equal("f64", r:dtype())
    assert.is_nil(first_difference(r, hero.rand({2, 3}, {dtype = "f64", generator = hero.Generator(8)})))
    assert.equal("f32", hero.randn_like(src, {dtype = "f32"}):dtype())
  end)
end)

describe("random: distributions (fixed seeds, bounds of about 5 standard errors)", function()
  local n = 1000000

  it("rand is uniform on [0, 1) and uniform_(a, b) on [a, b)", function()
    local m, var, lo, hi = stats(flat(hero.rand(n, {generator = hero.Generator(11)})))
    assert.is_true(lo >= 0 and hi < 1, "range " .. lo .. " .. " .. hi)
    assert.is_true(math.abs(m - 0.5) < 5 * math.sqrt(1 / 12 / n), "mean " .. m)
    assert.is_true(math.abs(var - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / n), "variance " .. var)
    local w = hero.empty(n, {dtype = "f64"}):uniform_(-2, 6, {generator = hero.Generator(12)})
    local m2, var2, lo2, hi2 = stats(flat(w))
    assert.is_true(lo2 >= -2 and hi2 < 6, "range " .. lo2 .. " .. " .. hi2)
    assert.is_true(math.abs(m2 - 2) < 5 * 8 * math.sqrt(1 / 12 / n), "mean " .. m2)
    assert.is_true(math.abs(var2 - 64 / 12) < 5 * 64 * math.sqrt((1 / 80 - 1 / 144) / n), "variance " .. var2)
  end)

  it("randn is standard normal (f32 and f64) and normal_ shifts and scales", function()
    local p2 = 0.04550026389635842 -- P(|Z| > 2)
    for _, dt in ipairs {"f32", "f64"} do
      local m, var, _, _, tail = stats(flat(hero.randn(n, {dtype = dt, generator = hero.Generator(13)})), 0, 2)
      assert.is_true(math.abs(m) < 5 / math.sqrt(n), dt .. " mean " .. m)
      assert.is_true(math.abs(var - 1) < 5 * math.sqrt(2 / n), dt .. " variance " .. var)
      assert.is_true(math.abs(tail / n - p2) < 5 * math.sqrt(p2 * (1 - p2) / n), dt .. " tail " .. tail / n)
    end
    local m, var = stats(flat(hero.empty(n):normal_(3, 0.25, {generator = hero.Generator(14)})))
    assert.is_true(math.abs(m - 3) < 5 * 0.25 / math.sqrt(n), "mean " .. m)
    assert.is_true(math.abs(var - 0.0625) < 5 * 0.0625 * math.sqrt(2 / n), "variance " .. var)
    assert.same({5, 5}, hero.empty(2):normal_(5, 0):totable())
  end)

  it("randint covers every value of its range about equally", function()
    local m = 100000
    local v = flat(hero.randint(-3, 7, {m}, {generator = hero.Generator(15)}))
    local counts = {}
    for i = 1, m do counts[v[i]] = (counts[v[i]] or 0) + 1 end
    for k = -3, 6 do
      local c = counts[k] or 0
      assert.is_true(math.abs(c - m / 10) < 5 * math.sqrt(m * 0.1 * 0.9), "value " .. k .. " seen " .. c .. " times")
      counts[k] = nil
    end
    assert.is_nil(next(counts), "a value outside [-3, 7)")
    -- the full int64 range is allowed and single-value ranges are constant
    local wide = hero.randint(math.mininteger, math.maxinteger, {4}, {generator = hero.Generator(1)})
    assert.equal(4, #flat(wide))
    assert.same({5, 5, 5}, hero.randint(5, 6, {3}):totable())
    assert.equal("u8", hero.randint(0, 256, {3}, {dtype = "u8"}):dtype())
    assert.equal("f32", hero.randint(0, 3, {3}, {dtype = "f32"}):dtype())
  end)

  it("randperm is a permutation of 0..n-1", function()
    for _, k in ipairs {0, 1, 2, 1000, 100001} do
      local p = flat(hero.randperm(k, {generator = hero.Generator(k)}))
      assert.equal(k, #p)
      local seen = {}
      for i = 1, k do
        local x = p[i]
        assert(math.type(x) == "integer" and x >= 0 and x < k and not seen[x], "not a permutation")
        seen[x] = true
      end
    end
    -- every position is equally likely to receive each value: the first slot over many draws
    local g = hero.Generator(16)
    local counts = {0, 0, 0, 0}
    for _ = 1, 4000 do
      local first = hero.randperm(4, {generator = g}):totable()[1]
      counts[first + 1] = counts[first + 1] + 1
    end
    for i = 1, 4 do assert.is_true(math.abs(counts[i] - 1000) < 5 * math.sqrt(4000 * 0.25 * 0.75)) end
    assert.equal("i32", hero.randperm(5, {dtype = "i32"}):dtype())
  end)

  it("bernoulli draws 1 with probability p, from a number or a tensor of probabilities", function()
    local freq, _, lo, hi, other = stats(flat(hero.bernoulli(0.3, {n}, {generator = hero.Generator(17)})), 0.5, 0.5)
    assert.is_true(lo == 0 and hi == 1 and other == 0, "values other than 0 and 1")
    assert.is_true(math.abs(freq - 0.3) < 5 * math.sqrt(0.21 / n), "frequency " .. freq)
    -- a tensor of probabilities: 0 and 1 are certain, the result keeps p's float dtype
    local p = hero.tensor({{0, 1, 0.5}, {1, 0, 0.5}}, {dtype = "f64"})
    local counts = 0
    local g = hero.Generator(18)
    for _ = 1, 200 do
      local b = hero.bernoulli(p, {generator = g})
      assert.equal("f64", b:dtype())
      local t = b:totable()
      assert(t[1][1] == 0 and t[1][2] == 1 and t[2][1] == 1 and t[2][2] == 0)
      counts = counts + t[1][3] + t[2][3]
    end
    assert.is_true(math.abs(counts - 200) < 5 * math.sqrt(400 * 0.25), "half-probability ones: " .. counts)
    -- p broadcasts to a given shape and to an in-place target of any dtype
    local row = hero.tensor {0, 1}
    assert.same({{0, 1}, {0, 1}, {0, 1}}, hero.bernoulli(row, {3, 2}):totable())
    assert.same({{false, true}, {false, true}}, hero.zeros({2, 2}, {dtype = "bool"}):bernoulli_(row):totable())
    assert.same({1, 1}, hero.tensor({1, 1}):bernoulli():totable())
    assert.same({1, 1, 1}, hero.zeros({3}, {dtype = "i64"}):bernoulli_(1):totable())
  end)

  it("dropout_mask keeps with probability 1 - p and is 1 - bernoulli(p) for the same state", function()
    local m = flat(hero.dropout_mask({n}, 0.1, {generator = hero.Generator(19)}))
    local kept = stats(m)
    assert.is_true(math.abs(kept - 0.9) < 5 * math.sqrt(0.09 / n), "kept " .. kept)
    local b = flat(hero.bernoulli(0.1, {n}, {generator = hero.Generator(19)}))
    local complement = 0
    for i = 1, n do
      if m[i] + b[i] == 1 then complement = complement + 1 end
    end
    assert.equal(n, complement)
    assert.same({1, 1}, hero.dropout_mask({2}, 0):totable())
    assert.same({false, false}, hero.dropout_mask({2}, 1, {dtype = "bool"}):totable())
  end)
end)

describe("random: half-precision uniforms", function()
  it("draws bf16 and f16 uniforms on the dtype's grid, never 1, as torch's", function()
    hero.manual_seed(0)
    for _, c in ipairs {{"bf16", 256}, {"f16", 2048}} do
      local r = hero.rand({200000}, {dtype = c[1]}):double()
      assert.equal(0, r:ge(1):sum():item(), c[1])
      assert.equal(0, (r * c[2] - (r * c[2]):floor()):abs():sum():item(), c[1]) -- multiples of 2^-bits
      assert.near(0.5, r:mean():item(), 0.01)
    end
  end)
end)

describe("random: errors", function()
  it("rejects empty ranges, bad probabilities and bad parameters", function()
    helper.assert_error_contains(function() hero.randint(5, 5, {2}) end, "randint", "low < high", "low=5 high=5")
    helper.assert_error_contains(function() hero.randint(7, 2, {2}) end, "low < high")
    helper.assert_error_contains(function() hero.randint(0, 300, {2}, {dtype = "u8"}) end, "randint", "u8")
    helper.assert_error_contains(function() hero.randint(0, 1.5, {2}) end, "randint", "high", "integer")
    helper.assert_error_contains(function() hero.randint(0, 3) end, "randint", "shape")
    helper.assert_error_contains(function() hero.bernoulli(1.5, {2}) end, "bernoulli", "[0, 1]")
    helper.assert_error_contains(function() hero.bernoulli(-0.1) end, "bernoulli", "[0, 1]")
    helper.assert_error_contains(function() hero.bernoulli(0 / 0) end, "bernoulli", "[0, 1]")
    helper.assert_error_contains(function() hero.bernoulli(hero.tensor {0.5, 2}) end,
      "bernoulli", "[0, 1]", "got 2", "flat index 1")
    helper.assert_error_contains(function() hero.bernoulli(hero.tensor {0.5, 0.5}, {3}) end, "bernoulli", "broadcast")
    helper.assert_error_contains(function() hero.zeros(3):bernoulli_(hero.tensor {0.5, 0.5}) end,
      "bernoulli_", "2 and 3")
    helper.assert_error_contains(function() hero.zeros(2):bernoulli_(1.01) end, "bernoulli_", "[0, 1]")
    helper.assert_error_contains(function() hero.bernoulli("x") end, "bernoulli", "string")
    helper.assert_error_contains(function() hero.dropout_mask({2}, 1.5) end, "dropout_mask", "[0, 1]")
    helper.assert_error_contains(function() hero.dropout_mask(2, 0.5) end, "dropout_mask", "shape table")
    helper.assert_error_contains(function() hero.zeros(2):uniform_(1, 0) end, "uniform_", "from=1 to=0")
    helper.assert_error_contains(function() hero.zeros(2):uniform_(0, 1 / 0) end, "uniform_", "finite")
    helper.assert_error_contains(function() hero.zeros(2):normal_(0, -1) end, "normal_", "std >= 0")
    helper.assert_error_contains(function() hero.zeros({2}, {dtype = "i64"}):normal_() end, "normal_",
      "floating-point", "i64")
    helper.assert_error_contains(function() hero.rand(2, {dtype = "i64"}) end, "rand", "i64", "floating-point")
  end)

  it("rejects negative sizes", function()
    helper.assert_error_contains(function() hero.rand(2, -1) end, "rand", "negative size", "dimension 2")
    helper.assert_error_contains(function() hero.randn {-3} end, "randn", "negative size")
    helper.assert_error_contains(function() hero.randint(0, 2, {-1}) end, "randint", "negative size")
    helper.assert_error_contains(function() hero.bernoulli(0.5, {2, -2}) end, "bernoulli", "negative size")
    helper.assert_error_contains(function() hero.randperm(-1) end, "randperm", "n must be >= 0")
  end)

  it("rejects bad seeds, states and generator options", function()
    helper.assert_error_contains(function() hero.manual_seed(1.5) end, "manual_seed", "integer")
    helper.assert_error_contains(function() hero.manual_seed("x") end, "manual_seed", "integer", "string")
    helper.assert_error_contains(function() hero.Generator {} end, "Generator", "integer", "table")
    helper.assert_error_contains(function() hero.set_rng_state {seed = 1} end, "set_rng_state", "offset")
    helper.assert_error_contains(function() hero.Generator(1):set_state(5) end, "set_state", "state table")
    helper.assert_error_contains(function() hero.rand(2, {generator = 5}) end, "rand", "generator", "hero.Generator")
    helper.assert_error_contains(function() hero.Generator(1).get_state(hero.zeros(1)) end,
      "get_state", "hero.Generator", "hero.Tensor")
  end)

  it("rejects freed tensors and tensors on other devices", function()
    local t = hero.zeros(3)
    t:free()
    helper.assert_error_contains(function() t:uniform_() end, "uniform_", "freed")
    helper.assert_error_contains(function() hero.bernoulli(t) end, "bernoulli", "freed")
    helper.assert_error_contains(function() hero.zeros(3):bernoulli_(t) end, "bernoulli_", "freed")
    helper.assert_error_contains(function() hero.rand_like(t) end, "rand_like", "freed")
    helper.assert_error_contains(function() hero.rand(2, {device = "cuda:1024"}) end, "rand", "CUDA") -- no such GPU
  end)

  it("does not advance the generator when an op fails", function()
    local g = hero.Generator(4)
    assert.is_false(pcall(hero.randint, 3, 3, {4}, {generator = g}))
    assert.is_false(pcall(function() hero.zeros(4):uniform_(2, 1, {generator = g}) end))
    assert.is_false(pcall(function() hero.zeros(4):bernoulli_(hero.tensor {0, 0, 0, 7}, {generator = g}) end))
    assert.is_false(pcall(function() hero.zeros({4}, {dtype = "u8"}):random_(0, 999, {generator = g}) end))
    assert.same({seed = 4, offset = 0}, g:get_state())
  end)
end)
