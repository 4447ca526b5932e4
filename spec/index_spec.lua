local hero = require "hero"
local helper = require "spec_helper"

local fx = helper.load_fixture("index.lua")

--- Builds a tensor from a fixture array ({shape, dtype, data[, perm]}); with perm the tensor is a
-- non-contiguous permuted view holding the described values.
local function T(a)
  local t = hero.tensor(a.data, {dtype = a.dtype}):reshape(a.shape)
  if a.perm then t = t:permute(a.perm) end
  return t
end

local function I(data, dtype) return hero.tensor(data, {dtype = dtype or "i64"}) end

describe("index ops", function()
  describe("index_select", function()
    for _, c in ipairs(fx.index_select) do
      it(c.name, function()
        local x, idx = T(c.x), T(c.index)
        assert.tensor_near(x:index_select(c.dim, idx), T(c.expected))
        assert.tensor_near(hero.index_select(x, c.dim, idx), T(c.expected))
      end)
    end

    it("accepts a non-contiguous index and never returns a view", function()
      local x = hero.arange(12):view(4, 3):float()
      local idx = I({{3, 9}, {0, 9}, {3, 9}}):select(2, 1) -- stride 2
      assert.is_false(idx:is_contiguous())
      local r = x:index_select(1, idx)
      assert.same({{9, 10, 11}, {0, 1, 2}, {9, 10, 11}}, r:totable())
      assert.is_false(r:shares_storage(x))
    end)

    it("copies embedding rows of a large table", function()
      local tab = hero.arange(5000 * 64):view(5000, 64):float()
      local ids = I({4999, 0, 1234, 4999})
      local r = tab:index_select(1, ids)
      assert.same({4, 64}, r:size())
      assert.equal(4999 * 64 + 63, r[1][64]:item())
      assert.equal(1234 * 64, r[3][1]:item())
      assert.equal(63, r[2][64]:item())
    end)
  end)

  describe("gather", function()
    for _, c in ipairs(fx.gather) do
      it(c.name, function()
        assert.tensor_near(T(c.x):gather(c.dim, T(c.index)), T(c.expected))
      end)
    end
  end)

  --- index for a scatter case: the materialised one, or rows viewed along dim and expanded
  local function scatter_index(c)
    if not c.index_rows then return T(c.index) end
    local rows = T(c.index_rows)
    local shape = {}
    for i = 1, #c.index.shape do shape[i] = 1 end
    local d = c.dim > 0 and c.dim or c.dim + #c.index.shape + 1
    shape[d] = rows:size(1)
    local idx = rows:view(shape):expand(c.index.shape)
    assert.is_false(idx:is_contiguous())
    return idx
  end

  describe("scatter_add", function()
    for _, c in ipairs(fx.scatter_add) do
      it(c.name, function()
        local x, idx, src = T(c.x), scatter_index(c), T(c.src)
        local before = x:clone()
        assert.tensor_near(x:scatter_add(c.dim, idx, src), T(c.expected))
        assert.tensor_near(x, before) -- out of place
        local y = x:clone()
        assert.equal(y, y:scatter_add_(c.dim, idx, src))
        assert.tensor_near(y, T(c.expected))
        -- in place through a non-contiguous view writes into its base
        if c.x.perm then
          local z = x:clone()
          local base = T({data = c.x.data, shape = c.x.shape, dtype = c.x.dtype})
          local view = base:permute(c.x.perm)
          view:scatter_add_(c.dim, idx, src)
          assert.tensor_near(view, T(c.expected))
          assert.tensor_near(z, before)
        end
      end)
    end
  end)

  describe("scatter", function()
    for _, c in ipairs(fx.scatter) do
      it(c.name, function()
        local x, idx, src = T(c.x), scatter_index(c), T(c.src)
        assert.tensor_near(x:scatter(c.dim, idx, src), T(c.expected))
        assert.tensor_near(x:clone():scatter_(c.dim, idx, src), T(c.expected))
      end)
    end
  end)

  describe("index_add_", function()
    for _, c in ipairs(fx.index_add) do
      it(c.name, function()
        local x, idx, src = T(c.x), T(c.index), T(c.src)
        assert.tensor_near(x:index_add(c.dim, idx, src, c.alpha), T(c.expected))
        local y = x:clone()
        assert.equal(y, y:index_add_(c.dim, idx, src, c.alpha))
        assert.tensor_near(y, T(c.expected))
      end)
    end

    it("gives the same sums with one thread and with several", function()
      local saved = hero.get_num_threads()
      local ids = I({1, 3, 1, 1, 0, 3, 2, 1})
      local src = hero.arange(8 * 5000):view(8, 5000):double()
      local function run(threads)
        hero.set_num_threads(threads)
        return hero.zeros({4, 5000}, {dtype = "f64"}):index_add_(1, ids, src, 0.1):totable()
      end
      local one, two = run(1), run(2)
      hero.set_num_threads(saved)
      assert.same(one, two)
      -- row 2 (id 1) collects source rows 1, 3, 4, 8 (0-based ids 1 at positions 0, 2, 3, 7)
      local col = 17
      local want = 0
      for _, k in ipairs {0, 2, 3, 7} do want = want + 0.1 * (k * 5000 + col - 1) end
      assert.is_true(math.abs(one[2][col] - want) < 1e-9)
    end)
  end)

  describe("index_copy_", function()
    for _, c in ipairs(fx.index_copy) do
      it(c.name, function()
        local x = T(c.x)
        assert.tensor_near(x:index_copy(c.dim, T(c.index), T(c.src)), T(c.expected))
        assert.tensor_near(x:index_copy_(c.dim, T(c.index), T(c.src)), T(c.expected))
      end)
    end
  end)

  describe("masked_fill", function()
    for _, c in ipairs(fx.masked_fill) do
      it(c.name, function()
        local x, mask = T(c.x), T(c.mask)
        local v = c.value
        if c.value_tensor then v = T(c.value_tensor):reshape({}) end
        assert.tensor_near(x:masked_fill(mask, v), T(c.expected))
        if c.inplace then
          local y = x:clone()
          assert.equal(y, y:masked_fill_(mask, v))
          assert.tensor_near(y, T(c.expected))
        end
      end)
    end

    it("keeps 64-bit integers exact", function()
      local x = I({1, 2, 3})
      x:masked_fill_(hero.tensor({false, true, false}), 9007199254740993)
      assert.same({1, 9007199254740993, 3}, x:totable())
      -- full, full_like and index assignment as well (they went through a double)
      assert.same({9007199254740993, 9007199254740993}, hero.full({2}, 9007199254740993, {dtype = "i64"}):totable())
      assert.same({math.maxinteger - 1}, hero.full({1}, math.maxinteger - 1, {dtype = "i64"}):totable())
      assert.same({math.mininteger + 1}, hero.full_like(I {0}, math.mininteger + 1):totable())
      x[1] = 9007199254740993
      x[3] = math.maxinteger - 1
      assert.same({9007199254740993, 9007199254740993, math.maxinteger - 1}, x:totable())
      -- an integer into a float tensor rounds once, as fill_ does
      assert.same(hero.full({1}, 16777217, {dtype = "f32"}):totable(), hero.zeros(1):fill_(16777217):totable())
    end)
  end)

  describe("masked_select", function()
    for _, c in ipairs(fx.masked_select) do
      it(c.name, function()
        assert.tensor_near(T(c.x):masked_select(T(c.mask)), T(c.expected))
      end)
    end
  end)

  describe("nonzero", function()
    for _, c in ipairs(fx.nonzero) do
      it(c.name, function()
        local r = T(c.x):nonzero()
        assert.equal("i64", r:dtype())
        assert.tensor_near(r, T(c.expected))
      end)
    end
  end)
end)

describe("index op corner cases", function()
  it("reads a source that overlaps the destination before writing", function()
    local x = hero.arange(8):view(2, 4)
    x:scatter_add_(2, I({{0, 1}, {2, 3}}), x:narrow(2, 1, 2))
    assert.same({{0, 2, 2, 3}, {4, 5, 10, 12}}, x:totable())
    local y = hero.arange(12):view(3, 4):float()
    y:index_add_(1, I({0, 0}), y:narrow(1, 2, 2))
    assert.same({12, 15, 18, 21}, y[1]:totable())
  end)

  it("wraps integer sums instead of overflowing", function()
    local x = hero.tensor({math.maxinteger}, {dtype = "i64"})
    x:index_add_(1, I({0}), I({1}))
    assert.equal(math.mininteger, x:item())
    local u = hero.zeros({3}, {dtype = "u8"})
    u:index_add_(1, I({2, 2, 1}), hero.tensor({200, 100, 3}, {dtype = "u8"}))
    assert.same({0, 3, 44}, u:totable())
  end)

  it("accumulates half types in f32 and rounds once", function()
    -- 256 + 1 + 1 in bf16 step by step stays 256 (8-bit mantissa); one rounding gives 258
    local x = hero.tensor({256}, {dtype = "bf16"})
    x:scatter_add_(1, I({0, 0}), hero.tensor({1, 1}, {dtype = "bf16"}))
    assert.same({258}, x:totable())
    local h = hero.zeros({3, 2}, {dtype = "f16"})
    h:index_add_(1, I({2, 2}), hero.ones({2, 2}, {dtype = "f16"}), 0.5)
    assert.same({{0, 0}, {0, 0}, {1, 1}}, h:totable())
  end)

  it("takes a 0-dimensional index as one position", function()
    local x = hero.arange(6):view(2, 3)
    assert.same({{2}, {5}}, x:index_select(2, hero.tensor(2, {dtype = "i64"})):totable())
    helper.assert_error_contains(function() x:index_select(2, hero.tensor(7, {dtype = "i64"})) end,
      "index 7 of the scalar index", "dimension 2 of size 3")
  end)

  it("fills through a mask that views self", function()
    local x = hero.tensor({0, 1, 2, 0}, {dtype = "u8"})
    x:masked_fill_(x, 7)
    assert.same({0, 7, 7, 0}, x:totable())
  end)
end)

describe("join ops", function()
  describe("cat", function()
    for _, c in ipairs(fx.cat) do
      it(c.name, function()
        local xs = {}
        for i, a in ipairs(c.xs) do xs[i] = T(a) end
        local r = hero.cat(xs, c.dim)
        assert.equal(c.expected.dtype, r:dtype())
        assert.tensor_near(r, T(c.expected))
        assert.is_true(r:is_contiguous())
      end)
    end

    it("defaults to dim 1 and copies", function()
      local a = hero.ones(2, 2)
      local r = hero.cat {a, a}
      assert.same({4, 2}, r:size())
      assert.is_false(r:shares_storage(a))
    end)
  end)

  describe("stack", function()
    for _, c in ipairs(fx.stack) do
      it(c.name, function()
        local xs = {}
        for i, a in ipairs(c.xs) do xs[i] = T(a) end
        assert.tensor_near(hero.stack(xs, c.dim), T(c.expected))
      end)
    end
  end)

  describe("gather_rows", function()
    it("is cat then index_select in one pass, -1 giving zeros, shaped as asked", function()
      local a = hero.randn(3, 5)
      local b = hero.randn(5, 2):t() -- rows with a column stride: read element by element
      local e = hero.zeros(0, 5)
      local idx = I {4, -1, 0, 3, 2, -1}
      local want = hero.cat({a, b:contiguous(), hero.zeros(1, 5)}):index_select(1, I {4, 5, 0, 3, 2, 5})
      local got = hero.gather_rows({a, e, b}, idx)
      assert.same({6, 5}, got:size())
      assert(got:eq(want):all():item())
      local shaped = hero.gather_rows({a, e, b}, idx, {2, 3})
      assert.same({2, 3, 5}, shaped:size())
      assert(shaped:eq(want:reshape(2, 3, 5)):all():item())
      assert.same({0, 4, 5}, hero.gather_rows({a}, I({}), {0, 4}):size())
      assert.same({2, 2}, hero.gather_rows({hero.ones(1, 2, {dtype = "i32"})}, I({0, -1}, "i32")):size())
    end)

    it("refuses what it cannot gather", function()
      local a = hero.ones(2, 3)
      helper.assert_error_contains(function() hero.gather_rows({a}, I {2}) end, "gather_rows", "index 2",
        "outside -1..1")
      helper.assert_error_contains(function() hero.gather_rows({a}, I {-2}) end, "outside")
      helper.assert_error_contains(function() hero.gather_rows({a, hero.ones(2, 4)}, I {0}) end, "rows of 4")
      helper.assert_error_contains(function() hero.gather_rows({a, hero.ones(2, 3, {dtype = "f64"})}, I {0}) end,
        "tensor 2 of the list is f64")
      helper.assert_error_contains(function() hero.gather_rows({hero.ones(3)}, I {0}) end, "1-D, expected 2-D")
      helper.assert_error_contains(function() hero.gather_rows({a}, I {0, 1}, {3}) end, "holds 3 rows",
        "index has 2")
      helper.assert_error_contains(function() hero.gather_rows({a}, hero.tensor({0})) end, "i64 or i32")
      helper.assert_error_contains(function() hero.gather_rows({}, I {0}) end, "non-empty list")
    end)
  end)

  describe("split", function()
    for _, c in ipairs(fx.split) do
      it(c.name, function()
        local x = T(c.x)
        local parts = x:split(c.size, c.dim)
        assert.equal(#c.expected, #parts)
        for i, e in ipairs(c.expected) do
          assert.tensor_near(parts[i], T(e))
          assert.is_true(parts[i]:shares_storage(x))
        end
        assert.equal(#c.expected, #hero.split(x, c.size, c.dim))
      end)
    end

    it("returns views that write through", function()
      local x = hero.zeros(4, 3)
      local parts = x:split(2)
      parts[2]:fill_(5)
      assert.same({{0, 0, 0}, {0, 0, 0}, {5, 5, 5}, {5, 5, 5}}, x:totable())
    end)
  end)

  describe("chunk", function()
    for _, c in ipairs(fx.chunk) do
      it(c.name, function()
        local parts = T(c.x):chunk(c.n, c.dim)
        assert.equal(#c.expected, #parts)
        for i, e in ipairs(c.expected) do assert.tensor_near(parts[i], T(e)) end
      end)
    end
  end)

  it("unbind gives the selected views", function()
    local x = hero.arange(6):view(2, 3)
    local cols = x:unbind(2)
    assert.equal(3, #cols)
    assert.same({2, 5}, cols[3]:totable())
    assert.is_true(cols[1]:shares_storage(x))
    assert.same({3, 4, 5}, hero.unbind(x)[2]:totable())
  end)

  describe("flip", function()
    for _, c in ipairs(fx.flip) do
      it(c.name, function()
        local x = T(c.x)
        assert.tensor_near(x:flip(c.dims), T(c.expected))
        assert.tensor_near(x:flip(table.unpack(c.dims)), T(c.expected))
      end)
    end
  end)

  describe("tile and repeat", function()
    for _, c in ipairs(fx.tile) do
      it(c.name, function()
        local x = T(c.x)
        assert.tensor_near(x:tile(c.reps), T(c.expected))
        if #c.reps >= x:dim() then
          assert.tensor_near(x["repeat"](x, c.reps), T(c.expected))
        end
      end)
    end
  end)
end)

describe("index and join errors", function()
  local x = hero.arange(12):view(3, 4):float()

  it("names the op, the bad value, its position, the dim and its size", function()
    helper.assert_error_contains(function() x:index_select(1, I({0, 2, 3})) end,
      "index_select", "index 3", "position 3", "dimension 1 of size 3")
    helper.assert_error_contains(function() x:index_select(-1, I({-1})) end,
      "index_select", "index -1", "position 1", "dimension 2 of size 4")
    helper.assert_error_contains(function() x:gather(2, I({{0, 1}, {2, 4}})) end,
      "gather", "index 4", "position [2, 2]", "dimension 2 of size 4")
    helper.assert_error_contains(function() x:scatter_add(1, I({{0, -2}}), hero.ones(1, 2)) end,
      "scatter_add", "index -2", "position [1, 2]", "dimension 1 of size 3")
    helper.assert_error_contains(function() x:index_add_(1, I({5}), hero.ones(1, 4)) end,
      "index_add_", "index 5", "position 1", "dimension 1 of size 3")
    helper.assert_error_contains(function() x:index_copy_(2, I({0, 4}), hero.ones(3, 2)) end,
      "index_copy_", "index 4", "position 2", "dimension 2 of size 4")
    -- an expanded (whole-row) index reports the position in the caller's index too
    local rows = I({0, 7}):view(2, 1):expand(2, 4)
    helper.assert_error_contains(function() hero.zeros(3, 4):scatter_add_(1, rows, hero.ones(2, 4)) end,
      "scatter_add_", "index 7", "position [2, 1]", "dimension 1 of size 3")
  end)

  it("leaves the destination untouched when an index is bad", function()
    local y = hero.zeros(3, 4)
    helper.assert_error_contains(function() y:scatter_add_(1, I({{0, 1, 2, 3}}), hero.ones(1, 4)) end,
      "scatter_add_: index 3 at position [1, 4]", "out of range")
    helper.assert_error_contains(function() y:index_add_(1, I({0, 1, 9}), hero.ones(3, 4)) end,
      "index_add_: index 9 at position 3", "out of range")
    helper.assert_error_contains(function() y:index_copy_(1, I({0, 3}), hero.ones(2, 4)) end,
      "index_copy_: index 3 at position 2", "out of range")
    for i = 1, 3 do assert.same({0, 0, 0, 0}, y[i]:totable()) end
  end)

  it("rejects index tensors that are not i64 or i32", function()
    helper.assert_error_contains(function() x:index_select(1, hero.tensor {0, 1}) end,
      "index_select", "i64 or i32", "f32")
    helper.assert_error_contains(function() x:gather(1, hero.tensor({{0}}, {dtype = "u8"})) end,
      "gather", "i64 or i32", "u8")
    helper.assert_error_contains(function() x:scatter_add_(1, hero.tensor {{0.0}}, hero.ones(1, 1)) end,
      "scatter_add_", "i64 or i32", "f32")
    helper.assert_error_contains(function() x:index_select(1, {0, 1}) end, "index_select", "hero.Tensor", "table")
    helper.assert_error_contains(function() x:index_select(1, I({{0}})) end, "index_select", "1-D")
  end)

  it("checks shapes of gather and scatter", function()
    helper.assert_error_contains(function() x:gather(1, I({0, 1})) end,
      "gather", "as many dimensions as self (2), got 1")
    helper.assert_error_contains(function() x:gather(1, I({{0, 0, 0, 0, 0}})) end,
      "gather", "larger than self", "dimension 2")
    helper.assert_error_contains(function() x:scatter_add(1, I({{0, 0}, {0, 0}}), hero.ones(1, 2)) end,
      "scatter_add", "larger than src", "dimension 1")
    helper.assert_error_contains(function() x:scatter_add(1, I({{0}}), hero.ones({1, 1}, {dtype = "f64"})) end,
      "scatter_add", "src dtype f64 does not match self dtype f32")
    helper.assert_error_contains(function() x:index_add_(1, I({0, 1}), hero.ones(2, 3)) end,
      "index_add_", "src of size 2x3 does not match self of size 3x4")
    helper.assert_error_contains(function() x:index_select(3, I({0})) end, "index_select", "dimension 3 out of range")
    helper.assert_error_contains(function() I({1, 2}):index_add_(1, I({0}), I({1}), 0.5) end,
      "index_add_", "alpha must be an integer")
  end)

  it("checks masks and fill values", function()
    helper.assert_error_contains(function() x:masked_fill(hero.tensor {1, 0, 1, 0}, 1) end,
      "masked_fill", "bool or u8", "f32")
    helper.assert_error_contains(function() x:masked_fill_(hero.tensor {{true}, {false}}, 1) end,
      "masked_fill_", "cannot be broadcast")
    helper.assert_error_contains(function() x:masked_fill_(hero.ones({2, 3, 4}, {dtype = "bool"}), 1) end,
      "masked_fill_", "mask of size 2x3x4 cannot be broadcast to self of size 3x4")
    helper.assert_error_contains(function() x:masked_fill(hero.tensor {true}, hero.tensor {1, 2}) end,
      "masked_fill", "0-dimensional tensor", "size 2")
    helper.assert_error_contains(function() x:masked_fill(hero.tensor {true}, "a") end,
      "masked_fill", "value must be a number")
    helper.assert_error_contains(function() x:masked_select(hero.tensor {true, false, true}) end,
      "masked_select", "cannot be broadcast")
  end)

  it("checks cat and stack inputs", function()
    helper.assert_error_contains(function() hero.cat({x, hero.ones(3, 5)}, 1) end,
      "cat", "tensor 2 of the list has size 3x5 but tensor 1 has size 3x4", "except in dimension 1")
    helper.assert_error_contains(function() hero.cat({x, hero.ones(3, 4, 1)}, 1) end,
      "cat", "tensor 2 of the list has size 3x4x1")
    helper.assert_error_contains(function() hero.cat({x, hero.tensor(1)}, 1) end, "cat", "0-dimensional")
    helper.assert_error_contains(function() hero.cat({}, 1) end, "cat", "non-empty list")
    helper.assert_error_contains(function() hero.cat({x, 3}, 1) end, "cat", "entry 2 of the list is a number")
    helper.assert_error_contains(function() hero.cat(x, 1) end, "cat", "list of tensors")
    helper.assert_error_contains(function() hero.cat({x, x}, 3) end, "cat", "dimension 3 out of range")
    helper.assert_error_contains(function() hero.stack({x, hero.ones(4, 3)}) end,
      "stack", "tensor 2 has size 4x3 and tensor 1 3x4")
    helper.assert_error_contains(function() hero.stack({x, x}, 4) end, "stack", "dimension 4 out of range")
  end)

  it("checks split, chunk, flip and repeat arguments", function()
    helper.assert_error_contains(function() x:split({1, 1}) end, "split", "sizes add up to 2", "size 3")
    helper.assert_error_contains(function() x:split({4, -1}) end, "split", "negative")
    helper.assert_error_contains(function() x:split(0) end, "split", "must be positive")
    helper.assert_error_contains(function() x:split("a") end, "split", "piece size")
    helper.assert_error_contains(function() x:chunk(0) end, "chunk", "at least 1")
    -- sizes and counts near 2^63 are taken without sums that overflow
    helper.assert_error_contains(function() x:split({math.maxinteger, math.maxinteger, 5}) end, "split", "more than")
    assert.equal(x:size(1), #x:chunk(math.maxinteger))
    assert.equal(1, #x:split(math.maxinteger))
    helper.assert_error_contains(function() x:flip(1, 1) end, "flip", "listed twice")
    helper.assert_error_contains(function() x:flip(3) end, "flip", "dimension 3 out of range")
    -- a 0-dim tensor's dimension 1 (or -1) has nothing to reverse, as torch's flip(-1)
    assert.same(5, hero.tensor(5):flip(-1):item())
    helper.assert_error_contains(function() hero.tensor(5):flip(2) end, "flip", "dimension 2 out of range")
    helper.assert_error_contains(function() x["repeat"](x, {2}) end, "repeat", "need at least one per dimension")
    helper.assert_error_contains(function() x:tile(2, -1) end, "tile", "negative")
    -- a result size past 64 bits is refused, not wrapped around
    helper.assert_error_contains(function() x:tile(2 ^ 62, 1) end, "tile", "overflows")
    helper.assert_error_contains(function() x["repeat"](x, 1, 2 ^ 62) end, "repeat", "overflows")
  end)

  it("reports freed tensors", function()
    local dead = hero.ones(3, 4)
    dead:free()
    local idx = I({0})
    helper.assert_error_contains(function() dead:index_select(1, idx) end, "index_select", "freed")
    helper.assert_error_contains(function() x:index_select(1, dead) end, "index_select", "freed")
    helper.assert_error_contains(function() x:gather(1, dead) end, "gather", "freed")
    helper.assert_error_contains(function() x:clone():scatter_add_(1, I({{0}}), dead) end, "scatter_add_", "freed")
    helper.assert_error_contains(function() x:masked_fill(dead, 1) end, "masked_fill", "freed")
    helper.assert_error_contains(function() x:masked_fill(hero.tensor {true}, dead) end, "masked_fill", "freed")
    helper.assert_error_contains(function() hero.cat({x, dead}) end, "cat", "entry 2", "freed")
    helper.assert_error_contains(function() hero.stack({dead}) end, "stack", "entry 1", "freed")
    helper.assert_error_contains(function() dead:split(1) end, "split", "freed")
  end)
end)
