-- remainder, fmod, floor_divide, atan2, hypot, the inverse and hyperbolic trigonometric functions,
-- exp2, frac, median, kthvalue, cummax/cummin, unique, bincount, searchsorted/bucketize,
-- count_nonzero, einsum, diff, meshgrid and cross against torch 1.13's values and gradients
-- (spec/fixtures/gen/more_ops.py), in every layout, plus finite differences and the refusals.
local hero = require "hero"
local helper = require "spec_helper"
local fx = dofile(helper.fixture("more_ops.lua"))
local gradcheck = hero.testing.gradcheck

local TORCH_DTYPE = {float64 = "f64", float32 = "f32", bfloat16 = "bf16", float16 = "f16", int64 = "i64",
                     int32 = "i32", uint8 = "u8", bool = "bool"}

local function f64(v) return hero.tensor(v, {dtype = "f64"}) end
local function i64(v) return hero.tensor(v, {dtype = "i64"}) end

--- Checks a tensor against torch's values with the dtype's tolerance; zeros must also have torch's
-- sign (remainder(-0, 3) is -0, floor_divide(-0, 3) too).
local function near(got, want, label, tol)
  local ok, msg = helper.compare(got, want, tol)
  assert(ok, label .. ": " .. msg)
  if type(want) ~= "table" then return end
  local flat_got, flat_want = {}, {}
  local function flatten(v, out)
    if type(v) == "table" then for _, x in ipairs(v) do flatten(x, out) end else out[#out + 1] = v end
  end
  flatten(got:totable(), flat_got)
  flatten(want, flat_want)
  for i, w in ipairs(flat_want) do
    if w == 0 and math.type(w) == "float" and flat_got[i] == 0 then
      assert(1 / w == 1 / flat_got[i], string.format("%s: element %d is %s0, torch's is %s0", label, i,
        1 / flat_got[i] < 0 and "-" or "+", 1 / w < 0 and "-" or "+"))
    end
  end
end

local function transpose(rows)
  local out = {}
  for i, row in ipairs(rows) do for j, v in ipairs(row) do out[j] = out[j] or {}; out[j][i] = v end end
  return out
end

local function is_matrix(v) return type(v) == "table" and type(v[1]) == "table" end

--- The operand v (a nested table or a number) as hero builds it in each layout: contiguous, a
-- transposed view of the transposed values (matrices), or broadcast by expand to `shape`.
local function operand(v, dtype, layout, shape)
  if type(v) ~= "table" then return v end
  if layout == "transposed" and is_matrix(v) then return hero.tensor(transpose(v), {dtype = dtype}):t() end
  local t = hero.tensor(v, {dtype = dtype})
  if layout == "expanded" and shape and #shape > t:dim() then return t:expand(shape) end
  return t
end

describe("elementwise math against torch", function()
  it("remainder, fmod, floor_divide, atan2 and hypot: values, dtypes and gradients in every layout", function()
    for k, c in ipairs(fx.binary) do
      local label = string.format("binary case %d (%s %s%s)", k, c.op, c.dtype, c.note ~= "" and " " .. c.note or "")
      local ydtype = TORCH_DTYPE[c.ydtype]
      local shape = nil
      for _, layout in ipairs {"contiguous", "transposed", "expanded"} do
        local a, b = operand(c.a, c.dtype, layout, shape), operand(c.b, c.dtype, layout, shape)
        local grad = c.w ~= nil and layout ~= "expanded"
        if grad then
          if hero.is_tensor(a) then a = a:detach():requires_grad_() end
          if hero.is_tensor(b) then b = b:detach():requires_grad_() end
        end
        local y = hero[c.op](a, b)
        shape = y:size()
        assert.equal(ydtype, y:dtype(), label)
        near(y, c.y, label .. " " .. layout)
        -- the method is the same function
        if hero.is_tensor(a) then near(a[c.op](a, b), c.y, label .. " method") end
        if grad then
          local loss = (y * f64(c.w)):sum()
          loss:backward()
          if c.ga then near(a.grad, c.ga, label .. " " .. layout .. " gradient of a") end
          if c.gb then near(b.grad, c.gb, label .. " " .. layout .. " gradient of b") end
        end
      end
    end
  end)

  it("the inverse and hyperbolic trigonometric functions, exp2 and frac: values, dtypes and gradients", function()
    for k, c in ipairs(fx.unary) do
      local label = string.format("unary case %d (%s %s)", k, c.op, c.dtype)
      for _, layout in ipairs {"contiguous", "transposed"} do
        local x = operand(c.x, c.dtype, layout)
        if c.w then x = x:detach():requires_grad_() end
        local y = hero[c.op](x)
        assert.equal(TORCH_DTYPE[c.ydtype], y:dtype(), label)
        near(y, c.y, label .. " " .. layout)
        near(x[c.op](x), c.y, label .. " method")
        if c.w then
          local loss = (y * f64(c.w)):sum()
          loss:backward()
          near(x.grad, c.g, label .. " " .. layout .. " gradient")
        end
      end
    end
  end)

  it("agree with finite differences", function()
    hero.manual_seed(5)
    local a = (hero.rand({3, 4}, {dtype = "f64"}) * 6 - 3):requires_grad_()
    local b = (hero.rand({4}, {dtype = "f64"}) + 0.5):requires_grad_()
    -- away from the jumps of remainder and fmod (a / b not near an integer)
    local safe = (a:detach() / b:detach()):frac():abs()
    assert.is_true(safe:gt(1e-3):logical_and(safe:lt(1 - 1e-3)):all():item())
    for _, op in ipairs {"remainder", "fmod", "atan2", "hypot"} do
      assert.is_true(gradcheck(function(x, y) return hero[op](x, y) end, {a, b}), op)
      assert.is_true(gradcheck(function(x) return hero[op](x, 1.5) end, {a}), op .. " with a number")
      assert.is_true(gradcheck(function(y) return hero[op](-2.25, y) end, {b}), op .. " of a number")
    end
    local inside = (hero.rand({2, 3}, {dtype = "f64"}) * 1.8 - 0.9):requires_grad_() -- in (-1, 1)
    local above = (hero.rand({2, 3}, {dtype = "f64"}) * 3 + 1.1):requires_grad_() -- above 1
    for _, op in ipairs {"tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "atanh", "exp2", "frac"} do
      assert.is_true(gradcheck(function(x) return hero[op](x) end, {inside}), op)
    end
    assert.is_true(gradcheck(function(x) return x:acosh() end, {above}), "acosh")
    -- a transposed input and an in-place form's values
    assert.is_true(gradcheck(function(x) return x:t():atan2(x:t() + 1) end, {a}))
  end)

  it("integer division by zero is an error naming the op, never a crash", function()
    local a = i64 {{7, -7}, {3, 0}}
    for _, op in ipairs {"remainder", "fmod", "floor_divide"} do
      helper.assert_error_contains(function() hero[op](a, 0) end, op .. ": integer division by zero (the divisor is 0)")
      helper.assert_error_contains(function() hero[op](a, i64 {1, 0}) end,
        op .. ": integer division by zero (the divisor i64 cpu 2 holds a 0)")
      helper.assert_error_contains(function() hero[op](5, a) end, "integer division by zero")
      helper.assert_error_contains(function() hero[op](a:int(), hero.zeros({2}, {dtype = "i32"})) end,
        "integer division by zero")
      local c = a:clone()
      helper.assert_error_contains(function() c[op .. "_"](c, i64 {0, 1}) end, op .. "_: integer division by zero")
      assert.same(a:totable(), c:totable()) -- nothing was written
      -- INT64_MIN by -1: what two's complement gives (torch's CPU kernel dies of SIGFPE there)
      local min = i64 {math.mininteger}
      local want = op == "floor_divide" and math.mininteger or 0
      assert.same({want}, hero[op](min, -1):totable())
      assert.same({want}, hero[op](min, i64 {-1}):totable())
      -- float division by zero is IEEE's
      assert.is_true(hero[op](hero.tensor {1.0}, 0):isnan():item() == (op ~= "floor_divide"))
    end
  end)

  it("in-place forms, bool and integer refusals, empty tensors", function()
    local x = hero.tensor {{-7.5, 7.25}, {3.0, -0.5}}
    local y = x:clone()
    y:remainder_(2)
    assert.tensor_near(y, hero.remainder(x, 2))
    y = x:clone()
    y:t():fmod_(hero.tensor {1.5, -2.0})
    assert.tensor_near(y, hero.fmod(x:t(), hero.tensor {1.5, -2.0}):t())
    y = x:clone()
    y:atan2_(x:t())
    assert.tensor_near(y, hero.atan2(x, x:t()))
    y = x:clone()
    y:asinh_()
    assert.tensor_near(y, x:asinh())
    local n = i64 {7, -7}
    n:floor_divide_(2)
    assert.same({3, -4}, n:totable())
    helper.assert_error_contains(function() i64 {1, 2}:atan2_(i64 {1, 1}) end,
      "atan2_: the result has dtype f32, which cannot be stored in place into a i64 tensor")
    helper.assert_error_contains(function() hero.hypot(i64 {3}, i64 {4}) end,
      "hypot: integer and bool operands are not supported, as in torch")
    helper.assert_error_contains(function() hero.remainder(hero.tensor {true}, hero.tensor {true}) end,
      "remainder: arithmetic on bool values is not supported")
    helper.assert_error_contains(function() hero.frac(i64 {1}) end, "frac: not supported for i64 tensors")
    helper.assert_error_contains(function() hero.floor_divide(x:clone():requires_grad_(), 2) end,
      "floor_divide: not differentiable")
    assert.same({0}, hero.remainder(hero.zeros(0), hero.ones(0)):size())
    assert.same({2, 0}, hero.atan2(hero.zeros(2, 0), hero.ones(1, 0)):size())
    assert.same({0, 3}, hero.zeros(0, 3):acosh():size())
    assert.same({3}, hero.floor_divide(hero.zeros({3}, {dtype = "i64"}), hero.ones({3}, {dtype = "i64"})):size())
    assert.equal("f32", hero.exp2(i64 {1, 2}):dtype())
  end)
end)

describe("median, kthvalue, cummax and cummin against torch", function()
  -- Each case's values, i64 indices and the gradient of sum(values * w), from contiguous and
  -- transposed operands; select_fn(x, case) makes the values and indices.
  local function check_selections(data, cases, select_fn, name)
    for k, c in ipairs(cases) do
      local label = string.format("%s case %d", c.op or name, k)
      for _, layout in ipairs {"contiguous", "transposed"} do
        local x = operand(data, "f64", layout):detach():requires_grad_()
        local v, i = select_fn(x, c)
        near(v, c.v, label .. " values")
        assert.same(c.i, i:totable(), label .. " indices")
        assert.equal("i64", i:dtype())
        local loss = (v * f64(c.w)):sum()
        loss:backward()
        near(x.grad, c.g, label .. " gradient")
      end
    end
  end

  it("median and kthvalue along a dim: values, indices and gradients", function()
    local s = fx.selection
    check_selections(s.x, s.cases, function(x, c)
      if c.op == "median" then return x:median(c.dim, c.keepdim) end
      return x:kthvalue(c.k, c.dim, c.keepdim)
    end)
    assert.same(s.int_median, i64(s.int_x):median(2):totable())
    assert.same(s.int_median_all, i64(s.int_x):median():item())
    assert.same(s.int_kth, (i64(s.int_x):kthvalue(3, 2)):totable())
    -- equal values: torch's index is its selection algorithm's; hero's is the stable order's, and
    -- both name an element holding the value
    local t = hero.tensor(s.ties)
    for _, r in ipairs {{t:median(2)}, {t:kthvalue(3, 2)}} do
      local v, i = r[1], r[2]
      assert.same(v:totable(), t:gather(2, i:unsqueeze(2)):squeeze(2):totable())
    end
    assert.same(s.ties_median, (t:median(2)):totable())
    assert.same(s.ties_kth, (t:kthvalue(3, 2)):totable())
    assert.same({1, 2}, select(2, t:median(2)):totable()) -- the lower median in the stable order
  end)

  it("mode along a dim: torch's values, last indices and gradients", function()
    local s = fx.selection
    check_selections(s.mode_x, s.mode_cases, function(x, c) return x:mode(c.dim, c.keepdim) end, "mode")
    local v, i = i64(s.int_x):mode(2)
    assert.same(s.int_mode, {v:totable(), i:totable()})
    for _, dt in ipairs {"bf16", "f16", "i32", "u8"} do
      local x = hero.tensor({{2, 7, 7, 2, 7}, {1, 1, 0, 0, 3}}, {dtype = dt})
      local mv, mi = x:mode()
      assert.equal(dt, mv:dtype())
      assert.same({{7, 0}, {4, 3}}, {mv:double():totable(), mi:totable()}, dt) -- as torch 1.13
    end
    helper.assert_error_contains(function() hero.zeros(2, 0):mode(2) end, "mode: dimension 2 is empty")
    helper.assert_error_contains(function() hero.tensor {true}:mode() end, "mode: not supported for bool")
  end)

  it("keep the dtype of bf16, f16 and integer tensors, picking their elements exactly", function()
    local data = {{3.5, -1.25, 2.0, 7.0, 0.5}, {1.0, 4.0, -3.0, 0.0, 6.5}}
    local ref = hero.tensor(data, {dtype = "f64"})
    for _, dt in ipairs {"bf16", "f16", "f32", "i32", "i64"} do
      local x = hero.tensor(data, {dtype = dt})
      local exact = x:double()
      for _, r in ipairs {{x:median(2), exact:median(2)}, {x:kthvalue(4, 2), exact:kthvalue(4, 2)},
                          {(x:cummax(2)), (exact:cummax(2))}, {(x:cummin(1)), (exact:cummin(1))},
                          {x:unique(), exact:unique()}, {x:median(), exact:median()}} do
        assert.equal(dt, r[1]:dtype())
        assert.same(r[2]:totable(), r[1]:double():totable(), dt)
      end
      assert.same(select(2, ref:trunc():median(2)):totable(), select(2, x:median(2)):totable(), dt)
    end
  end)

  it("median of every element: torch's value and its evenly shared gradient", function()
    for k, c in ipairs(fx.selection.global) do
      local x = f64(c.x):requires_grad_()
      local m = x:median()
      assert.equal(0, m:dim())
      near(m, c.v, "global median " .. k)
      m:backward()
      near(x.grad, c.g, "global median " .. k .. " gradient")
    end
    assert.is_true(hero.tensor({}):median():isnan():item())
    helper.assert_error_contains(function() hero.zeros({0}, {dtype = "i64"}):median() end,
      "median: the tensor is empty and i64 has no NaN")
  end)

  it("refuse what they cannot do; finite differences", function()
    helper.assert_error_contains(function() hero.zeros(2, 0):median(2) end,
      "median: dimension 2 is empty (shape 2x0); there is no median")
    helper.assert_error_contains(function() hero.ones(2, 3):kthvalue(4) end,
      "kthvalue: k = 4 is out of range 1..3 for dimension 2 (shape 2x3)")
    helper.assert_error_contains(function() hero.ones(3):kthvalue(0) end, "out of range 1..3")
    helper.assert_error_contains(function() hero.tensor {true}:median(1) end, "not supported for bool tensors")
    helper.assert_error_contains(function() hero.ones(3):kthvalue(1.5) end, "argument #2 (k) must be an integer")
    helper.assert_error_contains(function() hero.ones(3):cummax() end, "cummax: argument #2 (dim) is required")
    hero.manual_seed(3)
    local x = hero.randn({3, 5}, {dtype = "f64"}):requires_grad_() -- distinct values: no ties
    assert.is_true(gradcheck(function(t) return (t:median(2)) end, {x}))
    assert.is_true(gradcheck(function(t) return (t:kthvalue(2, 1, true)) end, {x}))
    assert.is_true(gradcheck(function(t) return t:median() end, {x}))
    assert.is_true(gradcheck(function(t) return (t:cummax(2)) end, {x}))
    assert.is_true(gradcheck(function(t) return (t:t():cummin(1)) end, {x}))
    -- a 0-dim tensor is its own median
    local v, i = hero.tensor(2.5):median(1)
    assert.equal(2.5, v:item())
    assert.equal(0, i:item())
  end)

  it("cummax and cummin: values, indices (later equal values and NaN take over) and gradients", function()
    local cu = fx.cumulative
    for k, c in ipairs(cu.cases) do
      local label = string.format("%s case %d", c.op, k)
      for _, layout in ipairs {"contiguous", "transposed"} do
        local x = operand(cu.x, "f64", layout):detach():requires_grad_()
        local v, i = x[c.op](x, c.dim)
        near(v, c.v, label .. " values")
        assert.same(c.i, i:totable(), label .. " indices")
        local loss = (v * f64(c.w)):sum()
        loss:backward()
        near(x.grad, c.g, label .. " gradient")
      end
    end
    for _, op in ipairs {"cummax", "cummin"} do
      local v, i = i64(cu.int_x)[op](i64(cu.int_x), 2)
      assert.same(cu.int[op][1], v:totable(), op)
      assert.same(cu.int[op][2], i:totable(), op)
      v, i = hero.tensor(cu.bool_x)[op](hero.tensor(cu.bool_x), 1)
      assert.same(cu.bool[op][1], v:totable(), op .. " bool")
      assert.same(cu.bool[op][2], i:totable(), op .. " bool")
    end
    assert.same({0, 4}, select(2, hero.zeros(0, 4):cummax(1)):size())
  end)
end)

describe("unique, bincount, searchsorted, bucketize and count_nonzero against torch", function()
  it("unique with dim: the distinct slices, sorted, their inverse and counts", function()
    for k, c in ipairs(fx.counting.unique_dim) do
      local label = "unique dim case " .. k
      for _, layout in ipairs {"contiguous", "transposed"} do
        local x = hero.tensor(c.x, {dtype = c.dtype})
        if layout == "transposed" then x = x:transpose(1, x:dim()):contiguous():transpose(1, x:dim()) end
        local v, inv, cnt = x:unique {dim = c.dim, return_inverse = true, return_counts = true}
        assert.equal(c.dtype, v:dtype(), label)
        assert.same(c.shape, v:size(), label)
        assert.same(c.v, v:totable(), label .. " values")
        assert.same(c.inverse, inv:totable(), label .. " inverse")
        assert.same(c.counts, cnt:totable(), label .. " counts")
        assert.same(v:totable(), hero.unique(x, {dim = c.dim}):totable())
      end
    end
    -- a slice holding NaN equals no other (as unique's NaN), sorting after the others
    local v, inv = hero.tensor({{0 / 0, 1}, {0 / 0, 1}, {1, 1}}):unique {dim = 1, return_inverse = true}
    assert.same({3, 2}, v:size())
    assert.same({1, 2, 0}, inv:totable())
  end)

  it("unique: sorted values, inverse and counts", function()
    for k, c in ipairs(fx.counting.unique) do
      local label = "unique case " .. k
      local x = #c.x == 0 and hero.zeros({0}, {dtype = c.dtype}) or hero.tensor(c.x, {dtype = c.dtype})
      for _, layout in ipairs {"contiguous", "transposed"} do
        if layout == "transposed" then
          if not is_matrix(c.x) then break end
          x = operand(c.x, c.dtype, layout)
        end
        local v, inv, cnt = x:unique {return_inverse = true, return_counts = true}
        assert.equal(c.dtype, v:dtype(), label)
        near(v, #c.v == 0 and {} or c.v, label .. " values")
        assert.same(c.inverse, inv:totable(), label .. " inverse")
        assert.same(c.counts, cnt:totable(), label .. " counts")
        assert.same(x:size(), inv:size())
        assert.same(v:totable(), hero.unique(x):totable())
        local v2, cnt2 = hero.unique(x, {return_counts = true, sorted = false})
        assert.same(v:totable(), v2:totable())
        assert.same(cnt:totable(), cnt2:totable())
      end
    end
    -- -0 and 0 are one value (the first occurrence's bytes); every NaN is its own, after +inf
    local v, inv, cnt = hero.unique(hero.tensor {0 / 0, 1, 0 / 0, -0.0, 0.0}, {return_inverse = true,
                                                                               return_counts = true})
    local vals = v:totable()
    assert.equal(4, #vals)
    assert.equal(-math.huge, 1 / vals[1])
    assert.is_true(vals[3] ~= vals[3] and vals[4] ~= vals[4])
    assert.same({2, 1, 3, 0, 0}, inv:totable())
    assert.same({2, 1, 1, 1}, cnt:totable())
    helper.assert_error_contains(function() hero.unique(hero.zeros(2, 0), {dim = 1}) end,
      "unique: the slices along dimension 1 of a 2x0 tensor are empty")
    helper.assert_error_contains(function() hero.unique(hero.ones(2, 2), {dim = 1.5}) end,
      "unique: option dim must be an integer")
    helper.assert_error_contains(function() hero.unique(hero.ones(2, 2), {dim = 3}) end, "dimension 3 out of range")
    helper.assert_error_contains(function() hero.unique(hero.ones(2), {return_counts = 1}) end,
      "option return_counts must be a boolean")
    helper.assert_error_contains(function() hero.unique(hero.ones(2), {retrun_counts = true}) end,
      "unique: unknown option 'retrun_counts'")
    helper.assert_error_contains(function() hero.unique(hero.ones(2):requires_grad_()) end,
      "unique: not differentiable")
  end)

  it("bincount with weights and minlength", function()
    for k, c in ipairs(fx.counting.bincount) do
      local label = "bincount case " .. k
      local x = #c.x == 0 and hero.zeros({0}, {dtype = "i64"}) or hero.tensor(c.x, {dtype = c.xdtype or "i64"})
      local opts = {minlength = c.minlength}
      if c.w then opts.weights = hero.tensor(c.w, {dtype = c.wdtype}) end
      local y = x:bincount(opts)
      assert.equal(TORCH_DTYPE[c.ydtype], y:dtype(), label)
      near(y, c.y, label)
    end
    assert.same({2, 1}, hero.bincount(i64 {0, 1, 0}):totable())
    assert.same({0, 2}, hero.bincount(i64 {4, 2, 6}:narrow(1, 2, 1):expand(2)):narrow(1, 2, 2):totable())
    helper.assert_error_contains(function() hero.bincount(i64 {1, -1}) end,
      "bincount: expected non-negative integers, got -1 at position 1 (0-based)")
    helper.assert_error_contains(function() hero.bincount(hero.tensor {1.0}) end,
      "bincount: expected a 1-D tensor of non-negative integers")
    helper.assert_error_contains(function() hero.bincount(i64 {{1}}) end, "expected a 1-D tensor")
    helper.assert_error_contains(function() hero.bincount(hero.tensor {true}) end, "expected a 1-D tensor")
    helper.assert_error_contains(function() hero.bincount(i64 {1}, {weights = hero.ones(2)}) end,
      "must be 1-D with the input's length 1")
    helper.assert_error_contains(function() hero.bincount(i64 {1}, {minlength = -1}) end,
      "minlength must not be negative")
    helper.assert_error_contains(function() hero.bincount(i64 {1}, {weights = 3}) end,
      "option weights must be a hero.Tensor")
    helper.assert_error_contains(function() hero.bincount(i64 {1}, {weights = hero.ones(1):requires_grad_()}) end,
      "bincount: not differentiable")
    local freed = hero.ones(1)
    freed:free()
    helper.assert_error_contains(function() hero.bincount(i64 {0}, {weights = freed}) end,
      "bincount: option weights: the tensor was freed")
    helper.assert_error_contains(function() hero.searchsorted(hero.ones(1), hero.ones(1), {sorter = freed}) end,
      "searchsorted: option sorter: the tensor was freed")
    helper.assert_error_contains(function() hero.bincount(freed) end, "bincount: argument #1: tensor was freed")
  end)

  it("searchsorted and bucketize: left and right, N-D sequences, sorter, NaN, numbers", function()
    for k, c in ipairs(fx.counting.searchsorted) do
      local label = "searchsorted case " .. k
      local seq = hero.tensor(c.seq, {dtype = (c.int or c.int_seq) and "i64" or "f32"})
      local vals = hero.tensor(c.values, {dtype = c.int and "i64" or "f32"})
      local opts = {right = c.right}
      if c.sorter then opts.sorter = i64(c.sorter) end
      local y = hero.searchsorted(seq, vals, opts)
      assert.equal("i64", y:dtype())
      assert.same(c.y, y:totable(), label)
      opts.right = nil
      opts.side = c.right and "right" or "left"
      assert.same(c.y, seq:searchsorted(vals, opts):totable(), label .. " side")
      opts.out_int32 = true
      local y32 = hero.searchsorted(seq, vals, opts)
      assert.equal("i32", y32:dtype())
      assert.same(c.y, y32:totable(), label .. " out_int32")
      if is_matrix(c.values) and not c.int then
        assert.same(c.y, hero.searchsorted(seq, operand(c.values, "f32", "transposed"), {right = c.right}):totable())
      end
    end
    local scalar = hero.searchsorted(hero.tensor(fx.counting.searchsorted[1].seq), 2.0)
    assert.equal(0, scalar:dim())
    assert.equal(fx.counting.searchsorted_scalar, scalar:item())
    local b = fx.counting.bucketize
    assert.same(b.left, hero.bucketize(hero.tensor(b.values), hero.tensor(b.bounds)):totable())
    assert.same(b.right, hero.tensor(b.values):bucketize(hero.tensor(b.bounds), {right = true}):totable())
    assert.equal(1, hero.bucketize(3, i64 {1, 3, 5}):item())
    helper.assert_error_contains(function() hero.searchsorted(hero.ones(2, 3), hero.ones(1, 2)) end,
      "searchsorted: a sorted sequence of shape 2x3 needs values with the same leading dimensions")
    helper.assert_error_contains(function() hero.searchsorted(hero.ones(3), hero.ones(2), {right = true,
                                                                                          side = "left"}) end,
      "right = true and side = \"left\" contradict each other")
    helper.assert_error_contains(function() hero.searchsorted(hero.ones(3), hero.ones(2), {side = "up"}) end,
      "option side must be \"left\" or \"right\"")
    helper.assert_error_contains(function() hero.searchsorted(hero.ones(3), hero.ones(2), {sorter = i64 {0, 5, 1}}) end,
      "sorter holds 5 at position 1 (0-based), outside 0..2")
    helper.assert_error_contains(function() hero.searchsorted(hero.ones(3), hero.ones(2), {sorter = hero.ones(3)}) end,
      "sorter must be an i64 tensor")
    helper.assert_error_contains(function() hero.bucketize(hero.ones(2), hero.ones(2, 2)) end,
      "bucketize: the boundaries must be a 1-D tensor")
    helper.assert_error_contains(function() hero.bucketize(hero.ones(2), hero.ones(2), {sorter = i64 {0, 1}}) end,
      "bucketize: unknown option 'sorter'")
    helper.assert_error_contains(function() hero.searchsorted(hero.tensor(1.0), hero.ones(2)) end,
      "at least one dimension")
  end)

  it("count_nonzero over everything, a dim or several", function()
    local c = fx.counting.count_nonzero
    local x = hero.tensor(c.x)
    assert.equal(c.all, hero.count_nonzero(x):item())
    assert.same(c.dim1, x:count_nonzero(1):totable())
    assert.same(c.dim2, hero.count_nonzero(x, 2):totable())
    assert.equal(c.dims, hero.count_nonzero(x, {1, 2}):item())
    assert.equal("i64", hero.count_nonzero(x):dtype())
  end)
end)

describe("einsum, diff, cross and meshgrid against torch", function()
  it("einsum: explicit and implicit equations, diagonals, ellipsis, broadcasting, with gradients", function()
    for k, c in ipairs(fx.einsum) do
      local label = string.format("einsum case %d (%s)", k, c.eq)
      local ins = {}
      for i, v in ipairs(c.inputs) do
        ins[i] = (#c.shapes[i] == 0 and hero.tensor(v, {dtype = "f64"}) or f64(v):reshape(c.shapes[i]))
          :requires_grad_()
      end
      local y = hero.einsum(c.eq, table.unpack(ins))
      assert.same(c.yshape, y:size(), label)
      near(y, c.y, label)
      local loss = (y * hero.tensor(c.w, {dtype = "f64"}):reshape(c.yshape)):sum()
      loss:backward()
      for i = 1, #ins do near(ins[i].grad, c.grads[i], label .. " gradient " .. i) end
      -- a list of operands works the same
      near(hero.einsum(c.eq, ins), c.y, label .. " list")
    end
    hero.manual_seed(9)
    local a = hero.randn({3, 4}, {dtype = "f64"}):requires_grad_()
    local b = hero.randn({4, 2}, {dtype = "f64"}):requires_grad_()
    assert.is_true(gradcheck(function(x, y) return hero.einsum("ij,jk->ki", x, y) end, {a, b}))
    assert.is_true(gradcheck(function(x) return hero.einsum("ii->i", x) end, {hero.randn({3, 3}, {dtype = "f64"})
      :requires_grad_()}))
    local bt = hero.randn({4, 2}, {dtype = "f64"}):t():detach():requires_grad_() -- a transposed leaf
    assert.is_true(gradcheck(function(x, y) return hero.einsum("...j,kj", x, y) end, {a, bt}))
    -- integers (a plain product loop) and f32
    assert.same({{19, 22}, {43, 50}}, hero.einsum("ij,jk", i64 {{1, 2}, {3, 4}}, i64 {{5, 6}, {7, 8}}):totable())
    assert.equal("f32", hero.einsum("i,i", hero.ones(3), hero.ones(3)):dtype())
  end)

  it("einsum refuses malformed equations clearly", function()
    local x = hero.ones(2, 3)
    local cases = {
      {"i->ii", {hero.ones(2)}, "output subscript i appears more than once"},
      {"ij->k", {x}, "output subscript k does not appear in the equation for any input operand"},
      {"i,i", {hero.ones(2), hero.ones(3)},
       "subscript i has size 3 in operand 2, which does not broadcast with size 2"},
      {"ij", {hero.ones(2)}, "operand 1 has 1 dimensions but the equation gives 2 subscripts"},
      {"i->i->i", {hero.ones(2)}, "the equation has more than one '->'"},
      {"i1", {x}, "invalid subscript '1' at index 2"},
      {"..i", {hero.ones(2)}, "found '.' at index 1 of the equation that is not part of an ellipsis"},
      {"i,i", {hero.ones(2)}, "the equation names 2 operands but 1 tensors were given"},
      {"ii", {x}, "subscript i is repeated in operand 1 with sizes 2 and 3"},
      {"......", {x}, "operand 1 has more than one ellipsis"},
      {"ij>i", {x}, "a '-' or '>' of the equation is not part of '->'"},
      {"ijk...", {x}, "operand 1 has 2 dimensions, fewer than the 3 subscripts"},
    }
    for _, c in ipairs(cases) do
      helper.assert_error_contains(function() hero.einsum(c[1], table.unpack(c[2])) end, "einsum: " .. c[3])
    end
    helper.assert_error_contains(function() hero.einsum(3, x) end, "einsum: argument #1 must be the equation")
    helper.assert_error_contains(function() hero.einsum("ij", "x") end, "einsum: operand 1 must be a hero.Tensor")
  end)

  it("diff with n, dim, prepend and append, with gradients; bool and integer tensors", function()
    local d = fx.diff
    for k, c in ipairs(d.cases) do
      local label = "diff case " .. k
      local x = f64(d.x):requires_grad_()
      local pre = c.prepend and f64(c.prepend) or nil
      local app = c.append and f64(c.append) or nil
      local y = hero.diff(x, c.n, c.dim, pre, app)
      assert.same(c.yshape, y:size(), label)
      if y:numel() > 0 then
        near(y, c.y, label)
        local loss = (y * hero.tensor(c.w, {dtype = "f64"}):reshape(c.yshape)):sum()
        loss:backward()
        near(x.grad, c.g, label .. " gradient")
      end
    end
    assert.same(d.bool, hero.tensor(d.bool_x):diff():totable())
    assert.same(d.int, i64 {1, 5, 2, 2}:diff():totable())
    assert.is_true(gradcheck(function(t) return t:diff(2, 1) end, {hero.randn({4, 3}, {dtype = "f64"})
      :requires_grad_()}))
    helper.assert_error_contains(function() hero.diff(hero.tensor(1.0)) end, "diff: expected a tensor with at least")
    helper.assert_error_contains(function() hero.diff(hero.ones(3), -1) end, "diff: n must be a non-negative integer")
  end)

  it("cross along a given or the first dimension of size 3, broadcasting the others, with gradients", function()
    for k, c in ipairs(fx.cross) do
      local label = "cross case " .. k
      local a, b = f64(c.a):requires_grad_(), f64(c.b):requires_grad_()
      local y = c.dim and hero.cross(a, b, c.dim) or a:cross(b)
      near(y, c.y, label)
      local loss = (y * f64(c.w)):sum()
      loss:backward()
      near(a.grad, c.ga, label .. " gradient of a")
      near(b.grad, c.gb, label .. " gradient of b")
    end
    assert.is_true(gradcheck(function(a, b) return hero.cross(a, b) end,
      {hero.randn({3, 2}, {dtype = "f64"}):requires_grad_(), hero.randn({3, 2}, {dtype = "f64"}):requires_grad_()}))
    helper.assert_error_contains(function() hero.cross(hero.ones(2, 2), hero.ones(2, 2)) end,
      "cross: no dimension of size 3")
    helper.assert_error_contains(function() hero.cross(hero.ones(3, 1), hero.ones(1, 3)) end,
      "cross: dimension 1 must have size 3 in both inputs, got 3 and 1")
    helper.assert_error_contains(function() hero.cross(hero.ones(3), hero.ones(1, 3)) end,
      "cross: the inputs must have the same number of dimensions")
  end)

  it("meshgrid with ij and xy indexing", function()
    local m = fx.meshgrid
    local a, b, c = hero.tensor(m.inputs[1]), hero.tensor(m.inputs[2]), hero.tensor(m.inputs[3])
    for _, ix in ipairs {"ij", "xy"} do
      local two = {hero.meshgrid(a, b, {indexing = ix})}
      local three = {hero.meshgrid({a, b, c}, {indexing = ix})}
      for i = 1, 2 do assert.same(m[ix][1][i], two[i]:totable(), ix .. " 2") end
      for i = 1, 3 do assert.same(m[ix][2][i], three[i]:totable(), ix .. " 3") end
    end
    local x, y = hero.meshgrid(a, b)
    assert.same(m.ij[1][1], x:totable())
    assert.same(m.ij[1][2], y:totable())
    -- views of the inputs, with gradients through expand
    local g = a:clone():requires_grad_()
    local gx = hero.meshgrid(g, b)
    gx:sum():backward()
    assert.same({2, 2, 2}, g.grad:totable())
    helper.assert_error_contains(function() hero.meshgrid(a, b, {indexing = "yx"}) end,
      "meshgrid: indexing must be \"ij\" or \"xy\"")
    helper.assert_error_contains(function() hero.meshgrid(a, {idx = "xy"}) end, "meshgrid: unknown option 'idx'")
    helper.assert_error_contains(function() hero.meshgrid(hero.ones(2, 2)) end, "must be 0-dim or 1-D")
  end)
end)
