local hero = require "hero"
local helper = require "spec_helper"

local fixture = helper.load_fixture("reduce.lua")

local function input_of(c)
  local spec = fixture.inputs[c.input]
  local x = hero.tensor(spec.data, {dtype = spec.dtype}):reshape(spec.shape)
  if c.transpose then x = x:transpose(1, 2) end
  return x
end

local function args_of(c)
  local a = {}
  for i, v in ipairs(c.args) do
    if v == "nil" then a[i] = nil else a[i] = v end
  end
  return a, #c.args
end

describe("reductions, scans, softmax and sorting (NumPy references)", function()
  for _, c in ipairs(fixture.cases) do
    it(c.name, function()
      local x = input_of(c)
      local a, n = args_of(c)
      local results = table.pack(x[c.op](x, table.unpack(a, 1, n)))
      assert.equal(#c.expected, results.n, "number of results")
      for i, e in ipairs(c.expected) do
        local r = results[i]
        assert.equal(e.dtype, r:dtype())
        assert.same(e.shape, r:size())
        assert.tensor_near(r, e.values)
      end
      -- the module function is the same operation
      local again = hero[c.op](x, table.unpack(a, 1, n))
      assert.tensor_near(again, c.expected[1].values)
    end)
  end
end)

describe("reductions", function()
  it("sum over all elements of a long f32 vector uses several blocks and stays accurate", function()
    local n = 1000003
    local t = hero.arange(n, {dtype = "f32"})
    -- 0 + 1 + ... + (n-1), exact in double; an f32 running sum would be off by far more than 1e-5
    assert.tensor_near(t:sum(), n * (n - 1) / 2)
    assert.tensor_near(t:mean(), (n - 1) / 2)
    assert.tensor_near(t:view(1, n):sum(2), {n * (n - 1) / 2})
    local ones = hero.ones(3, 200000)
    assert.tensor_near(ones:sum(2), {200000, 200000, 200000})
    assert.tensor_near(hero.full({300000}, 0.1, {dtype = "f32"}):sum(), 300000 * 0.10000000149011612)
  end)

  it("max/argmax over a long row finds the first occurrence in a later block", function()
    local t = hero.zeros(300000)
    t[250001] = 7
    t[280001] = 7
    t[5] = -3
    local v, i = t:view(1, 300000):max(2)
    assert.same({7}, v:totable())
    assert.same({250000}, i:totable())
    assert.equal(250000, t:argmax():item())
    assert.equal(4, t:argmin():item())
    t[290001] = 0 / 0
    assert.is_true(t:max():item() ~= t:max():item())
    assert.equal(290000, t:argmax():item())
    assert.equal(290000, t:argmin():item())
  end)

  it("var of a long vector combines blocks", function()
    local n = 200001
    local t = hero.arange(n, {dtype = "f64"})
    -- variance of 0..n-1 is n(n+1)/12 (unbiased) and (n^2-1)/12 (biased)
    assert.tensor_near(t:var(), n * (n + 1) / 12)
    assert.tensor_near(t:var(nil, false), (n * n - 1) / 12)
    assert.tensor_near(t:std(1, false), math.sqrt((n * n - 1) / 12))
  end)

  it("gives the same results with 1 and 2 threads", function()
    local t = hero.arange(500000, {dtype = "f32"}):view(5, 100000)
    local before = hero.get_num_threads()
    hero.set_num_threads(1)
    local s1, r1, m1 = t:sum():item(), t:sum(2):totable(), t:softmax(1):sum():item()
    hero.set_num_threads(2)
    local s2, r2, m2 = t:sum():item(), t:sum(2):totable(), t:softmax(1):sum():item()
    hero.set_num_threads(before)
    assert.equal(s1, s2)
    assert.same(r1, r2)
    assert.equal(m1, m2)
  end)

  it("sums and averages a leading or middle dim of a big contiguous tensor", function()
    local a, b, c = 7, 150, 300
    local x = hero.arange(a * b * c, {dtype = "f64"}):view(a, b, c)
    -- element [i][j][k] = (i*b + j)*c + k; summing j gives b*(i*b*c + k) + c*b*(b-1)/2
    local expected, means = {}, {}
    for i = 0, a - 1 do
      local row, mrow = {}, {}
      for k = 0, c - 1 do
        row[k + 1] = b * (i * b * c + k) + c * b * (b - 1) / 2
        mrow[k + 1] = row[k + 1] / b
      end
      expected[i + 1], means[i + 1] = row, mrow
    end
    assert.tensor_near(x:sum(2), expected)
    assert.tensor_near(x:mean(-2), means)
    assert.tensor_near(x:float():sum(2), expected)
    -- the same reduction through a strided view takes the generic path
    assert.tensor_near(x:transpose(2, 3):sum(3), expected)
    local first = {}
    for k = 0, c - 1 do first[k + 1] = 0 end
    for j = 0, b - 1 do
      for k = 0, c - 1 do first[k + 1] = first[k + 1] + j * c + k end
    end
    assert.tensor_near(x:select(1, 1):sum(1), first)
    -- a tall input (more than one chunk of rows per column block)
    local tall = hero.arange(1300 * 3, {dtype = "f32"}):view(1300, 3)
    local s = 3 * 1300 * 1299 / 2
    assert.tensor_near(tall:sum(1), {s, s + 1300, s + 2600})
    assert.tensor_near(tall:double():mean(1, true), {{s / 1300, s / 1300 + 1, s / 1300 + 2}})
  end)

  it("sums over several dims at once", function()
    local x = hero.arange(24, {dtype = "f32"}):view(2, 3, 4)
    assert.tensor_near(x:sum {1, 3}, {60, 92, 124})
    assert.same({1, 3, 1}, x:sum({1, -1}, true):size())
    assert.tensor_near(x:mean {2, 3}, {5.5, 17.5})
    assert.tensor_near(x:sum {}, 276)
    helper.assert_error_contains(function() x:sum {2, -2} end, "sum", "twice")
  end)

  it("handles 0-dim tensors with dim 1 or -1", function()
    local s = hero.tensor(3.5)
    assert.tensor_near(s:sum(1), 3.5)
    local v, i = s:max(-1)
    assert.same({}, v:size())
    assert.equal(0, i:item())
    assert.tensor_near(s:softmax(), 1)
    assert.tensor_near(s:cumsum(1), 3.5)
    local sv, si = s:sort()
    assert.equal(3.5, sv:item())
    assert.equal(0, si:item())
  end)

  it("keeps every dim with keepdim over all elements", function()
    local x = hero.ones(2, 3)
    assert.same({1, 1}, x:sum(nil, true):size())
    assert.same({}, x:sum():size())
  end)

  it("rejects bad arguments with messages naming the op", function()
    local x = hero.ones(2, 3)
    helper.assert_error_contains(function() x:sum(3) end, "sum", "out of range")
    helper.assert_error_contains(function() x:max(-3) end, "max", "out of range")
    helper.assert_error_contains(function() x:sum(1, "yes") end, "sum", "keepdim", "boolean")
    helper.assert_error_contains(function() x:sum(1.5) end, "sum", "dim")
    helper.assert_error_contains(function() hero.zeros(2, 0):max(2) end, "max", "dimension 2", "size 0")
    helper.assert_error_contains(function() hero.zeros(0):argmin() end, "argmin", "empty")
    helper.assert_error_contains(function() hero.zeros(0, 3):min() end, "min", "empty")
    helper.assert_error_contains(function() hero.arange(4):mean() end, "mean", "floating-point", "i64")
    helper.assert_error_contains(function() hero.arange(4):var() end, "var", "floating-point")
    helper.assert_error_contains(function() hero.arange(4):softmax() end, "softmax", "floating-point")
    helper.assert_error_contains(function() x:norm(-1) end, "norm", "p must be")
    helper.assert_error_contains(function() x:norm("nuc") end, "norm", "nuc")
    helper.assert_error_contains(function() x:max(x) end, "max", "maximum")
    helper.assert_error_contains(function() x:cumsum() end, "cumsum", "dim")
    helper.assert_error_contains(function() x:topk(4) end, "topk", "k = 4", "size 3")
    helper.assert_error_contains(function() x:topk(-1) end, "topk", "k = -1")
    helper.assert_error_contains(function() x:topk(2, 3) end, "topk", "out of range")
    helper.assert_error_contains(function() x:topk(1.5) end, "topk", "k", "integer")
    helper.assert_error_contains(function() x:sort(1, 1) end, "sort", "descending", "boolean")
    helper.assert_error_contains(function() hero.sum(3) end, "sum", "expected a hero.Tensor")
  end)

  it("rejects freed tensors", function()
    for _, op in ipairs {"sum", "mean", "max", "argmax", "var", "norm", "all", "cumsum", "softmax", "sort"} do
      local x = hero.ones(2, 2)
      x:free()
      helper.assert_error_contains(function() return x[op](x, 1) end, op, "freed")
    end
    local x = hero.ones(3)
    x:free()
    helper.assert_error_contains(function() return x:topk(1) end, "topk", "freed")
  end)

  it("softmax rows sum to one and log_softmax matches its log", function()
    local x = hero.tensor({{1000, 1001, 1002}, {-1000, -1000, -1000}}, {dtype = "f32"})
    assert.tensor_near(x:softmax(), {{0.09003057317038046, 0.24472847105479764, 0.6652409557748218},
                                     {1 / 3, 1 / 3, 1 / 3}})
    assert.tensor_near(x:log_softmax(), {{-2.40760596444438, -1.40760596444438, -0.40760596444438},
                                         {-1.0986122886681098, -1.0986122886681098, -1.0986122886681098}})
    local nan_row = hero.tensor {{1, 0 / 0, 2}}:softmax()
    for _, v in ipairs(nan_row[1]:totable()) do assert.is_true(v ~= v) end
  end)

  it("sorts bf16 and bool, and topk of an empty selection", function()
    local b = hero.tensor({3, -1, 2, 2}, {dtype = "bf16"})
    local v, i = b:sort()
    assert.same({-1, 2, 2, 3}, v:float():totable())
    assert.same({1, 2, 3, 0}, i:totable())
    local bv, bi = hero.tensor {true, false, true}:sort(1, true)
    assert.same({true, true, false}, bv:totable())
    assert.same({0, 2, 1}, bi:totable())
    local kv, ki = hero.ones(2, 3):topk(0)
    assert.same({2, 0}, kv:size())
    assert.same({2, 0}, ki:size())
  end)
end)
