local hero = require "hero"
local helper = require "spec_helper"

local cases = helper.load_fixture("pointwise.lua")

--- A fixture operand: a number, or a tensor built from its base values, reshaped and viewed.
local function build(spec)
  if spec.number ~= nil then return spec.number end
  local t = hero.tensor(spec.values, {dtype = spec.dtype})
  if #spec.shape ~= 1 then t = t:view(spec.shape) end
  local v = spec.view
  if v then
    if v[1] == "transpose" then t = t:transpose(v[2], v[3])
    elseif v[1] == "narrow" then t = t:narrow(v[2], v[3], v[4])
    elseif v[1] == "expand" then t = t:expand(v[2])
    else error("unknown view " .. v[1]) end
  end
  return t
end

--- Nests flat row-major values into the given shape (a plain value for 0-d).
local function nest(flat, shape)
  if #shape == 0 then return flat[1] end
  local pos = 0
  local function level(d)
    local out = {}
    for i = 1, shape[d] do
      if d == #shape then
        pos = pos + 1
        out[i] = flat[pos]
      else
        out[i] = level(d + 1)
      end
    end
    return out
  end
  return level(1)
end

local function check(case, result, how)
  assert(hero.is_tensor(result), case.name .. " (" .. how .. "): no tensor returned")
  assert(result:dtype() == case.dtype,
    string.format("%s (%s): dtype %s, expected %s", case.name, how, result:dtype(), case.dtype))
  local ok, msg = helper.compare(result, nest(case.expected, case.shape))
  assert(ok, string.format("%s (%s): %s", case.name, how, msg))
end

local OPERATORS = {
  add = function(a, b) return a + b end,
  sub = function(a, b) return a - b end,
  mul = function(a, b) return a * b end,
  div = function(a, b) return a / b end,
  pow = function(a, b) return a ^ b end,
}

local function same_shape(t, shape)
  return table.concat(t:size(), "x") == table.concat(shape, "x")
end

--- Whether case's result can be written in place into operand a.
local function inplace_ok(case, a)
  return hero.is_tensor(a) and a:dtype() == case.dtype and same_shape(a, case.shape)
    and not (case.a.view and case.a.view[1] == "expand")
end

describe("pointwise ops against NumPy", function()
  it("binary ops, comparisons and logical ops: every dtype, broadcasting, views, special values", function()
    local n = 0
    for _, case in ipairs(cases) do
      if case.b and not case.cond then
        n = n + 1
        local a, b = build(case.a), build(case.b)
        check(case, hero[case.op](a, b, case.alpha), "hero." .. case.op)
        if hero.is_tensor(a) then check(case, a[case.op](a, b, case.alpha), "method") end
        if OPERATORS[case.op] and not case.alpha then check(case, OPERATORS[case.op](a, b), "operator") end
        if hero.is_tensor(a) and a[case.op .. "_"] and inplace_ok(case, a) then
          local c = a:clone()
          assert.equal(c, c[case.op .. "_"](c, b, case.alpha))
          check(case, c, "in place on a copy")
          -- and through the view itself (a transposed or narrowed view writes into its base)
          local r = a[case.op .. "_"](a, b, case.alpha)
          assert.equal(a, r)
          check(case, a, "in place through the view")
        end
      end
    end
    assert.is_true(n >= 270)
  end)

  it("unary math: every op on f32, f64, halfs, integers, views and special values", function()
    local n = 0
    for _, case in ipairs(cases) do
      if not case.b and not case.cond and case.op ~= "clamp" then
        n = n + 1
        local a = build(case.a)
        check(case, hero[case.op](a), "hero." .. case.op)
        check(case, a[case.op](a), "method")
        if case.op == "neg" then check(case, -a, "operator") end
        if inplace_ok(case, a) then
          local r = a[case.op .. "_"](a)
          assert.equal(a, r)
          check(case, a, "in place")
        end
      end
    end
    assert.is_true(n >= 200)
  end)

  it("clamp and where", function()
    local n = 0
    for _, case in ipairs(cases) do
      if case.op == "clamp" then
        n = n + 1
        local a = build(case.a)
        check(case, hero.clamp(a, case.min, case.max), "hero.clamp")
        check(case, a:clamp(case.min, case.max), "method")
        if inplace_ok(case, a) then check(case, a:clamp_(case.min, case.max), "in place") end
      elseif case.op == "where" then
        n = n + 1
        check(case, hero.where(build(case.cond), build(case.a), build(case.b)), "hero.where")
      end
    end
    assert.is_true(n >= 16)
  end)
end)

describe("pointwise ops", function()
  it("accept numbers on either side of the operators", function()
    local t = hero.tensor {1, 2, 4}
    assert.same({1, 0, -2}, (2 - t):totable())
    assert.same({2, 1, 0.5}, (2 / t):totable())
    assert.same({2, 4, 16}, (2 ^ t):totable())
    assert.same({3, 4, 6}, (2 + t):totable())
    assert.same({3, 6, 12}, (3 * t):totable())
    assert.same({0.5, 1, 2}, (t / 2):totable())
    assert.same({-1, -2, -4}, (-t):totable())
    assert.same({1, 4, 16}, (t ^ 2):totable())
    -- * is elementwise, also for matrices
    local m = hero.tensor {{1, 2}, {3, 4}}
    assert.same({{1, 4}, {9, 16}}, (m * m):totable())
  end)

  it("keep the tensor's dtype with numbers, except integers with fractions", function()
    local i = hero.tensor({1, 2, 3}, {dtype = "i32"})
    assert.equal("i32", (i + 1):dtype())
    assert.equal("f32", (i + 1.0):dtype())
    assert.equal("f32", (i / 1):dtype())
    assert.equal("i64", (hero.tensor {true, false} + 1):dtype())
    assert.equal("f64", (hero.tensor({1}, {dtype = "f64"}) * 2.5):dtype())
    assert.equal("bf16", (hero.tensor({1}, {dtype = "bf16"}) * 2.5):dtype())
    assert.equal("f32", (hero.tensor({1}, {dtype = "bf16"}) + hero.tensor({1}, {dtype = "f16"})):dtype())
  end)

  it("leave == as identity (no __eq) and compare with eq", function()
    local t = hero.tensor {1, 2}
    local u = t:clone()
    assert.is_true(t == t)
    assert.is_false(t == u)
    assert.same({true, true}, t:eq(u):totable())
    assert.same({false, true}, t:eq(2):totable())
    assert.same({true, false}, t:ne(2):totable())
  end)

  it("keep the sign of zero", function()
    local z = hero.tensor {0.0}
    assert.equal(-math.huge, 1 / (-z):item())
    assert.equal(-math.huge, 1 / (hero.tensor {-0.0} * 1):item())
    assert.equal(-math.huge, 1 / (hero.tensor {-0.0} + hero.tensor {-0.0}):item())
    assert.equal(math.huge, 1 / (hero.tensor {-0.0} + z):item())
    assert.equal(math.huge, 1 / hero.tensor {-0.0}:sign():item()) -- NumPy's sign gives +0
    assert.equal(-math.huge, 1 / hero.tensor({-0.0}, {dtype = "f64"}):sqrt():item())
    assert.equal(-math.huge, 1 / hero.tensor({-0.0}, {dtype = "f16"}):neg():neg():item())
  end)

  it("round half precision once, to nearest even", function()
    local b = hero.tensor({1, 1}, {dtype = "bf16"})
    local r = b + hero.tensor({2 ^ -8, 3 * 2 ^ -9}, {dtype = "bf16"})
    assert.same({1, 1 + 2 ^ -7}, r:float():totable())
    local h = hero.tensor({2048, 2048}, {dtype = "f16"})
    assert.same({2048, 2052}, (h + hero.tensor({1, 3}, {dtype = "f16"})):float():totable())
    -- 1/3 computed in f32 and rounded once to f16
    assert.equal(0.333251953125, (hero.tensor({1}, {dtype = "f16"}) / 3):item())
  end)

  it("use integer semantics for integer pow and wrap around", function()
    local base = hero.tensor({1, -1, -1, 2, 0}, {dtype = "i64"})
    local e = hero.tensor({-3, -3, -2, -1, 3}, {dtype = "i64"})
    assert.same({1, -1, 1, 0, 0}, (base ^ e):totable())
    helper.assert_error_contains(function() return base ^ -1 end, "pow", "negative integer powers")
    assert.same({0.5, 0.25}, (hero.tensor({2, 4}, {dtype = "i64"}) ^ -1.0):totable())
  end)

  it("give bool results for comparisons and logical ops", function()
    local x = hero.tensor {0, 1.5, 0 / 0, -0.0}
    assert.same({true, false, false, true}, x:logical_not():totable())
    assert.same({true, false, false, true}, hero.logical_not(x):totable())
    local b = hero.tensor {true, false}
    assert.same({false, true}, b:logical_not():totable())
    assert.same({true, true}, b:logical_or(hero.tensor {false, true}):totable())
    assert.same({false, false}, b:logical_and(false):totable())
    assert.same({false, true, false, false}, x:gt(0):totable())
    assert.same({true, false}, hero.lt(0.5, hero.tensor {1, 0}):totable())
  end)

  it("write in place through views and bump nothing else", function()
    local base = hero.zeros(4, 3)
    local v = base:t() -- 3x4, non-contiguous
    v:add_(hero.tensor {1, 2, 3, 4})
    v:mul_(hero.tensor {{1}, {10}, {100}}, nil)
    assert.same({{1, 10, 100}, {2, 20, 200}, {3, 30, 300}, {4, 40, 400}}, base:totable())
    base:narrow(1, 2, 2):sub_(1, 2)
    assert.same({{1, 10, 100}, {0, 18, 198}, {1, 28, 298}, {4, 40, 400}}, base:totable())
    base:narrow(2, 3, 1):clamp_(nil, 150)
    assert.same({100, 150, 150, 150}, base:select(2, 3):totable())
    local e = hero.tensor {{0, 1}, {2, 3}}
    e:t():exp_()
    assert.tensor_near(e, {{1, math.exp(1)}, {math.exp(2), math.exp(3)}})
    local d = hero.tensor({3, 6}, {dtype = "f16"})
    d:div_(hero.tensor {2, 4}) -- the f32 result is stored back as f16
    assert.equal("f16", d:dtype())
    assert.same({1.5, 1.5}, d:totable())
    local w = hero.tensor({1, 2}, {dtype = "i32"})
    w:add_(hero.tensor({5, 6}, {dtype = "i64"}))
    assert.same({6, 8}, w:totable())
    assert.equal("i32", w:dtype())
  end)

  it("handle in-place ops whose operand overlaps self", function()
    local x = hero.tensor {{1, 2}, {3, 4}}
    x:add_(x)
    assert.same({{2, 4}, {6, 8}}, x:totable())
    x:add_(x:t()) -- read before being overwritten
    assert.same({{4, 10}, {10, 16}}, x:totable())
    local y = hero.tensor {1, 2, 3, 4}
    y:narrow(1, 2, 3):sub_(y:narrow(1, 1, 3))
    assert.same({1, 1, 1, 1}, y:totable())
  end)

  it("agree between the threaded and the serial paths on big tensors", function()
    local threads = hero.get_num_threads()
    local n = 200003
    local a = hero.arange(n):float():mul(0.0001)
    local b = hero.arange(n):float():mul(-0.0002):add(1)
    local m = a:view(-1):narrow(1, 1, 200000):view(400, 500)
    local row = hero.arange(500):float()
    local results = {}
    for _, k in ipairs {1, 2} do
      hero.set_num_threads(k)
      results[k] = {
        (a + b):totable(), a:exp():totable(), (m + row):totable()[400], (m:t() * 2):totable()[500],
        a:gt(b):totable(), (a:double() * 3):totable(),
      }
    end
    hero.set_num_threads(threads)
    local s, t = results[1], results[2]
    for i = 1, n, 997 do
      local x, y = (i - 1) * 0.0001, 1 - (i - 1) * 0.0002
      assert.near(x + y, s[1][i], 1e-4)
      assert.near(math.exp(x), s[2][i], 1e-5 * math.exp(x))
      assert.equal(x > y, s[5][i])
    end
    for k = 1, #s do
      local p, q = s[k], t[k]
      assert.equal(#p, #q)
      for i = 1, #p do
        if p[i] ~= q[i] then error(string.format("result %d differs at %d: %s vs %s", k, i, p[i], q[i])) end
      end
    end
    assert.near((399 * 500 + 499) * 0.0001 + 499, s[3][500], 1e-3)
    assert.near(2 * (399 * 500 + 499) * 0.0001, s[4][400], 1e-4)
  end)

  it("measure a STREAM-style triad", function()
    local gbs = hero.core._bench_triad(100000, 2)
    assert.is_true(type(gbs) == "number" and gbs > 0)
    helper.assert_error_contains(function() hero.core._bench_triad(0, 1) end, "_bench_triad", "n >= 1")
  end)
end)

describe("pointwise errors", function()
  it("name both shapes when they do not broadcast", function()
    helper.assert_error_contains(function() return hero.zeros(2, 3) + hero.zeros(4) end, "add", "2x3", "4",
      "cannot be broadcast")
    helper.assert_error_contains(function() return hero.zeros(2, 3):lt(hero.zeros(3, 2)) end, "lt", "2x3", "3x2")
    helper.assert_error_contains(function() hero.where(hero.zeros(2, {dtype = "bool"}), hero.zeros(3), 0) end,
      "where", "2", "3")
  end)

  it("refuse freed tensors", function()
    local t = hero.ones(2)
    t:free()
    helper.assert_error_contains(function() return t + 1 end, "add", "freed")
    helper.assert_error_contains(function() return 1 - t end, "sub", "freed")
    helper.assert_error_contains(function() return t:exp() end, "exp", "freed")
    helper.assert_error_contains(function() return -t end, "neg", "freed")
    helper.assert_error_contains(function() return hero.ones(2):mul_(t) end, "mul_", "freed")
    helper.assert_error_contains(function() return hero.where(t, 1, 2) end, "where", "freed")
    helper.assert_error_contains(function() return t:clamp(0, 1) end, "clamp", "freed")
  end)

  it("refuse bool arithmetic where it means nothing", function()
    local b = hero.tensor {true, false}
    helper.assert_error_contains(function() return b + b end, "add", "bool")
    helper.assert_error_contains(function() return b * b end, "mul", "bool")
    helper.assert_error_contains(function() return -b end, "neg", "bool", "logical_not")
    helper.assert_error_contains(function() return b:abs() end, "abs", "bool")
    helper.assert_error_contains(function() return b:clamp(0, 1) end, "clamp", "bool")
    helper.assert_error_contains(function() return b:add_(true) end, "add_", "bool")
  end)

  it("refuse in-place results that do not fit self", function()
    helper.assert_error_contains(function() hero.zeros(3):add_(hero.zeros(2, 3)) end, "add_", "2x3", "3")
    helper.assert_error_contains(function() hero.arange(3):add_(0.5) end, "add_", "f32", "i64")
    helper.assert_error_contains(function() hero.arange(3):div_(2) end, "div_", "f32", "i64")
    helper.assert_error_contains(function() hero.arange(3):exp_() end, "exp_", "f32", "i64")
    helper.assert_error_contains(function() hero.zeros(1, 3):expand(2, 3):add_(1) end, "add_", "expanded")
    helper.assert_error_contains(function() hero.zeros(2, {dtype = "bool"}):add_(1) end, "add_", "bool")
  end)

  it("check argument types, alpha and bounds", function()
    local t = hero.ones(2)
    helper.assert_error_contains(function() return t + "x" end, "add", "string")
    helper.assert_error_contains(function() return t * {} end, "mul", "table")
    helper.assert_error_contains(function() return hero.add(1, 2) end, "add", "at least one")
    helper.assert_error_contains(function() return hero.arange(3):add(hero.arange(3), 0.5) end, "alpha", "integer")
    helper.assert_error_contains(function() return t:mul(t, 2) end, "alpha", "add and sub")
    helper.assert_error_contains(function() return t:add(t, "2") end, "alpha", "number")
    helper.assert_error_contains(function() return t:clamp() end, "clamp", "min and max")
    helper.assert_error_contains(function() return t:clamp("0") end, "clamp", "min", "number")
    helper.assert_error_contains(function() return hero.where(t, 1, 2) end, "where", "bool or u8", "f32")
    helper.assert_error_contains(function() return hero.where(t:bool(), "a", 2) end, "where", "string")
  end)
end)
