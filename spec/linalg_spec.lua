local hero = require "hero"
local helper = require "spec_helper"

local fixture = helper.load_fixture("linalg.lua")
-- whether this build has the AVX2/FMA product kernels (packed and skinny), which sum in an order
-- that does not depend on the thread count
local _, _, kernels_built = hero.core._packed_gemm()

--- Builds a fixture operand: the base tensor, then its view operations ({"t"}, {"narrow", ...}).
local function build(arg, dtype)
  local base
  local numel = 1
  for _, s in ipairs(arg.shape) do numel = numel * s end
  if numel == 0 then
    base = hero.zeros(arg.shape, {dtype = dtype})
  else
    base = hero.tensor(arg.data, {dtype = dtype}):view(arg.shape)
  end
  local t = base
  for _, op in ipairs(arg.ops) do
    t = t[op[1]](t, table.unpack(op, 2))
  end
  return t
end

local function expected_tensor(e)
  local numel = 1
  for _, s in ipairs(e.shape) do numel = numel * s end
  if numel == 0 then return hero.zeros(e.shape, {dtype = "f64"}) end
  if #e.shape == 0 then return hero.tensor(e.data[1], {dtype = "f64"}) end
  return hero.tensor(e.data, {dtype = "f64"}):view(e.shape)
end

local function flat(v, out)
  out = out or {}
  if type(v) == "table" then
    for i = 1, #v do flat(v[i], out) end
  else
    out[#out + 1] = v
  end
  return out
end

local function run_case(case)
  local args = {}
  for i, arg in ipairs(case.args) do args[i] = build(arg, case.dtype) end
  local fn = hero[case.op]
  if case.beta ~= nil then
    return fn(args[1], args[2], args[3], case.beta, case.alpha)
  end
  return fn(table.unpack(args))
end

--- Values in {-2, -1.75, ..., 2} drawn from g (a hero.Generator): products and sums of a few
-- thousand of them are exact in f32, so any summation order must give the f64 result bit for bit.
local function quarters_from(g)
  return function(...)
    local shape = select("#", ...) == 1 and type(...) == "table" and ... or {...}
    return hero.randint(-8, 9, shape, {generator = g}):float() / 4
  end
end

--- got equals the f64 tensor want exactly (and has its size).
local function exact(got, want)
  assert.same(want:size(), got:size())
  assert.equal(0, (got:double() - want):abs():max():item())
end

describe("linalg", function()
  describe("matches NumPy", function()
    for _, case in ipairs(fixture.cases) do
      it(case.op .. ": " .. case.name .. " (" .. case.dtype .. ")", function()
        local copies = hero.core._matmul_copies()
        local out = run_case(case)
        assert.equal(case.copies, hero.core._matmul_copies() - copies, "operands copied")
        assert.equal(case.dtype, out:dtype())
        assert.is_true(out:is_contiguous())
        assert.tensor_near(out, expected_tensor(case.expected))
        if case.exact then
          -- half types: one rounding of the exact f32 sum, so the values match bit for bit
          assert.same(case.expected.data, flat(out:double():totable()))
        end
      end)
    end
  end)

  it("gives the same results with 1 and 2 threads (batch split over the pool)", function()
    local saved = hero.get_num_threads()
    local vals = {}
    for i = 1, 6 * 32 * 40 do vals[i] = ((i * 37) % 17 - 8) / 4 end
    local a = hero.tensor(vals):view(6, 32, 40)
    local b = a:transpose(2, 3)
    local w = hero.tensor(vals):narrow(1, 1, 40 * 24):view(24, 40)
    local ok, err = pcall(function()
      hero.set_num_threads(1)
      local one = {a:matmul(b):totable(), hero.linear(a, w):totable()}
      hero.set_num_threads(2)
      local two = {a:matmul(b):totable(), hero.linear(a, w):totable()}
      assert.same(one, two)
      -- and both agree with f64 (the values are exact in f32)
      assert.same(a:double():matmul(b:double()):totable(), one[1])
    end)
    hero.set_num_threads(saved)
    assert(ok, err)
  end)

  it("computes large outputs with a short K in row blocks, exactly (plain and transposed operands)", function()
    -- 12000 x 256 f32 outputs (12 MiB, over the 8 MiB where row blocks start) with K = 40; the
    -- values are quarters in [-2, 2], so every sum is exact in f32 and must equal f64 bit for bit,
    -- whatever the blocks: a wrong block offset shows up as whole rows of wrong values.
    local quarters = quarters_from(hero.Generator(11))
    local plain = quarters {12000, 40}
    local stored_t = quarters {40, 12000}
    local x = quarters {40, 256}
    local bias = quarters {12000, 256}
    exact(hero.matmul(plain, x), plain:double():matmul(x:double()))
    exact(hero.matmul(stored_t:t(), x), stored_t:t():double():matmul(x:double()))
    exact(hero.addmm(bias, stored_t:t(), x), bias:double() + stored_t:t():double():matmul(x:double()))
    local batched = hero.stack {plain, stored_t:t():contiguous()}
    local xs = hero.stack {x, x:flip(1)}
    exact(hero.bmm(batched, xs), batched:double():bmm(xs:double()))
  end)

  describe("products of a short operand with a very long one (skinny kernels, under 48 short rows)", function()
    -- quarters in [-2, 2]: every partial sum is exact in f32, so any summation order must give
    -- the f64 result bit for bit. From 48 short rows on the packed kernels take these products
    -- (the next describe); fewer masked tokens come here. Sizes leave remainders everywhere:
    -- 30 rows (4-row tiles, 24-row panels),
    -- 8195 long rows (3-row dot tiles, 4-row groups), k = 100 (8-wide dot steps), k = 8200 (256-row
    -- panels), 770 columns (24-column tiles).
    local g = hero.Generator(12)
    local quarters = quarters_from(g)
    local x, w, bias = quarters(30, 100), quarters(8195, 100), quarters(8195)
    local gy, w2 = quarters(30, 8200), quarters(8200, 770)
    local gl, x2 = quarters(30, 8195), quarters(30, 770)

    it("x @ Wᵀ (logits), with and without bias", function()
      local _, packed_before = hero.core._packed_gemm()
      exact(hero.linear(x, w), x:double():matmul(w:double():t()))
      local _, packed_after = hero.core._packed_gemm()
      assert.equal(packed_before, packed_after, "the packed kernels took a skinny product")
      exact(hero.linear(x, w, bias), x:double():matmul(w:double():t()) + bias:double())
      local c = quarters(30, 8195)
      exact(hero.addmm(c, x, w:t(), 2, 0.5), c:double() * 2 + x:double():matmul(w:double():t()) * 0.5)
    end)

    it("handles a single short row (one masked token)", function()
      local x1, g1, gl1 = quarters(1, 100), quarters(1, 8200), quarters(1, 8195)
      exact(hero.linear(x1, w, bias), x1:double():matmul(w:double():t()) + bias:double())
      exact(hero.matmul(g1, w2), g1:double():matmul(w2:double()))
      local x2row = quarters(1, 770)
      exact(hero.matmul(gl1:t(), x2row), gl1:t():double():matmul(x2row:double()))
    end)

    it("g @ W (long K) and gᵀ @ x (long M), with alpha and beta", function()
      exact(hero.matmul(gy, w2), gy:double():matmul(w2:double()))
      exact(hero.matmul(gl:t(), x2), gl:t():double():matmul(x2:double()))
      local c1, c2 = quarters(30, 770), quarters(8195, 770)
      exact(hero.addmm(c1, gy, w2, 2, 0.5), c1:double() * 2 + gy:double():matmul(w2:double()) * 0.5)
      exact(hero.addmm(c2, gl:t(), x2, 1, 1), c2:double() + gl:t():double():matmul(x2:double()))
      exact(hero.addmm(c2, gl:t(), x2, 0, 0.25), gl:t():double():matmul(x2:double()) * 0.25)
    end)

    it("gives linear's exact gradients, the same bits with 1 and 2 threads", function()
      local saved = hero.get_num_threads()
      local function run(xs, ws, gs)
        local xv, wv = xs:clone():requires_grad_(), ws:clone():requires_grad_()
        local y = hero.linear(xv, wv)
        y:backward(gs)
        return {y, xv.grad, wv.grad}
      end
      local ok, err = pcall(function()
        local gq = quarters(30, 8195)
        local got = run(x, w, gq)
        exact(got[1], x:double():matmul(w:double():t()))
        exact(got[2], gq:double():matmul(w:double()))
        exact(got[3], gq:double():t():matmul(x:double()))
        -- normal values: rounding everywhere, and still no dependence on the thread count
        local rx = hero.randn({30, 100}, {generator = g})
        local rw = hero.randn({8195, 100}, {generator = g})
        local rg = hero.randn({30, 8195}, {generator = g})
        if not kernels_built then return end -- BLAS's sums may depend on its thread count
        hero.set_num_threads(1)
        local one = run(rx, rw, rg)
        hero.set_num_threads(2)
        local two = run(rx, rw, rg)
        for i = 1, 3 do assert.equal(0, (one[i] - two[i]):abs():max():item()) end
      end)
      hero.set_num_threads(saved)
      assert(ok, err)
    end)
  end)

  describe("f32 products of the transformer's sizes (packed kernels)", function()
    -- quarters again, so any summation order gives the f64 result bit for bit. Sizes leave
    -- remainders at every level: 6-row tiles and 144-row blocks (m = 301), 16-column tiles and
    -- 1024-column blocks (n = 3101), 256-deep inner blocks and 8-step transposes (k = 601).
    local g = hero.Generator(21)
    local quarters = quarters_from(g)
    --- Runs fn, asserting that it made `want` products through the packed kernels.
    local function packed_calls(want, fn)
      local _, before = hero.core._packed_gemm()
      if not kernels_built then want = 0 end -- a build for a CPU without AVX2/FMA: BLAS does them
      fn()
      local _, after = hero.core._packed_gemm()
      assert.equal(want, after - before, "products done by the packed kernels")
    end
    local m, n, k = 301, 3101, 601
    local a, b = quarters(m, k), quarters(k, n)
    local a_stored_t, b_stored_t = a:t():contiguous(), b:t():contiguous() -- transposed operands
    --- x @ y equals want exactly in all four layouts (each operand as it is, or as a transposed
    -- view of its stored transpose xt / yt).
    local function exact_in_four_layouts(x, y, xt, yt, want)
      exact(hero.matmul(x, y), want)
      exact(hero.matmul(xt:t(), y), want)
      exact(hero.matmul(x, yt:t()), want)
      exact(hero.matmul(xt:t(), yt:t()), want)
    end

    it("A @ B in all four layouts, on 1, 2 and 3 threads", function()
      local want = a:double():matmul(b:double())
      local saved = hero.get_num_threads()
      for _, threads in ipairs {1, 2, 3} do
        hero.set_num_threads(threads)
        packed_calls(4, function() exact_in_four_layouts(a, b, a_stored_t, b_stored_t, want) end)
      end
      hero.set_num_threads(saved)
    end)

    it("products of growing and shrinking sizes in turn, on 1 and 2 threads (packing buffers kept per thread)",
      function()
      -- each thread keeps its packing buffer between products and grows it when a product needs
      -- more: every size after another must still be exact, whatever the previous one left there
      local saved = hero.get_num_threads()
      local sizes = {{48, 64, 32}, {400, 700, 300}, {60, 96, 40}, {702, 1030, 520}, {50, 64, 33}, {301, 3101, 601}}
      for _, threads in ipairs {1, 2} do
        hero.set_num_threads(threads)
        for round = 1, 2 do
          for i = round == 1 and 1 or #sizes, round == 1 and #sizes or 1, round == 1 and 1 or -1 do
            local mm, nn, kk = sizes[i][1], sizes[i][2], sizes[i][3]
            local x, y = quarters(mm, kk), quarters(nn, kk)
            packed_calls(1, function() exact(hero.matmul(x, y:t()), x:double():matmul(y:double():t())) end)
          end
        end
      end
      hero.set_num_threads(saved)
    end)

    it("a transposed B over more than 702 rows (whole packed blocks) and fewer (one panel at a time)", function()
      -- 750 rows: one thread packs Bᵀ as whole 256 x n blocks; two threads pack it once for the
      -- whole product and deal out blocks of rows; 702 rows on one thread: panel by panel. All exact
      local x, wt = quarters(750, 300), quarters(100, 300)
      local want = x:double():matmul(wt:double():t())
      local saved = hero.get_num_threads()
      for _, threads in ipairs {1, 2} do
        hero.set_num_threads(threads)
        packed_calls(2, function()
          exact(hero.matmul(x, wt:t()), want)
          exact(hero.matmul(x:narrow(1, 1, 702), wt:t()), want:narrow(1, 1, 702))
        end)
      end
      hero.set_num_threads(saved)
    end)

    it("random values: the same bits on 1, 2 and 3 threads whatever parts the threads take", function()
      -- rounded sums, so any change of summation order would show; shapes whose parts are column
      -- blocks (one panel at a time, or whole blocks over more than 702 rows or a plain B) and
      -- row blocks, with edge tiles, several inner blocks, and more parts than threads (or one
      -- per thread: 100 x 12000 is a shared A of over 4 MiB packed)
      local shapes = {{660, 768, 300}, {301, 3101, 601}, {750, 800, 257}, {3001, 200, 530}, {90, 50272, 64},
                      {1000, 70, 100}, {100, 200, 12000}}
      local saved = hero.get_num_threads()
      for _, s in ipairs(shapes) do
        local x = hero.randn({s[1], s[3]}, {generator = g})
        local w = hero.randn({s[2], s[3]}, {generator = g})
        local results = {}
        for _, threads in ipairs {1, 2, 3} do
          hero.set_num_threads(threads)
          packed_calls(2, function()
            results[threads] = {hero.matmul(x, w:t()), hero.matmul(x, w:t():contiguous())}
          end)
        end
        for threads = 2, 3 do
          for v = 1, 2 do
            assert.equal(0, (results[threads][v] - results[1][v]):abs():max():item(),
              ("%dx%dx%d, layout %d, %d threads"):format(s[1], s[2], s[3], v, threads))
          end
        end
      end
      hero.set_num_threads(saved)
    end)

    it("a small output over a very deep inner dimension (the LM head's input gradient) in fixed slices", function()
      -- 83 x 70 from 33001 products each (not a multiple of the 256-deep blocks nor of the four
      -- slices): exact in all four layouts, with alpha and beta and with a bias, on 1, 2 and 3
      -- threads; random values give the same bits whatever the number of threads
      local dk = 33001
      local da, db = quarters(83, dk), quarters(dk, 70)
      local dat, dbt = da:t():contiguous(), db:t():contiguous()
      local want = da:double():matmul(db:double())
      local c, bias = quarters(83, 70), quarters(70)
      local saved = hero.get_num_threads()
      local ra, rb = hero.randn({83, dk}, {generator = g}), hero.randn({dk, 70}, {generator = g})
      local random = {}
      for _, threads in ipairs {1, 2, 3} do
        hero.set_num_threads(threads)
        packed_calls(7, function()
          exact_in_four_layouts(da, db, dat, dbt, want)
          exact(hero.addmm(c, da, db, 0.5, 2), c:double() * 0.5 + want * 2)
          exact(hero.linear(da, dbt, bias), want + bias:double())
          random[threads] = hero.matmul(ra, rb)
        end)
      end
      hero.set_num_threads(saved)
      for threads = 2, 3 do assert.equal(0, (random[threads] - random[1]):abs():max():item()) end
      local err = (random[1]:double() - ra:double():matmul(rb:double())):abs():max():item()
      assert.is_true(err < 1e-5 * math.sqrt(dk), "random values: max error " .. err)
    end)

    it("views with row strides longer than their rows, plain and transposed", function()
      local wide_a, wide_b = quarters(m, k + 9), quarters(k + 5, n + 7)
      local av, bv = wide_a:narrow(2, 4, k), wide_b:narrow(1, 2, k):narrow(2, 3, n)
      local want = av:double():matmul(bv:double())
      packed_calls(2, function()
        exact(hero.matmul(av, bv), want)
        local bt = quarters(n, k + 3):narrow(2, 2, k) -- Bᵀ stored with a longer row
        exact(hero.matmul(av, bt:t()), av:double():matmul(bt:double():t()))
      end)
    end)

    it("alpha = 0 gives beta * c even when A @ B is not finite (BLAS's convention)", function()
      local xt = quarters(100, 70):totable()
      xt[1][1] = math.huge
      local x, w, c = hero.tensor(xt, {dtype = "f32"}), quarters(70, 80), quarters(100, 80)
      packed_calls(0, function() exact(hero.addmm(c, x, w, 0.5, 0), c:double() * 0.5) end)
    end)

    it("alpha and beta; beta = 0 never reads the output", function()
      local want = a:double():matmul(b:double())
      local c = quarters(m, n)
      packed_calls(3, function()
        exact(hero.addmm(c, a, b, 2, 0.5), c:double() * 2 + want * 0.5)
        exact(hero.addmm(c, a_stored_t:t(), b, 1, 1), c:double() + want)
        local nan = hero.full({m, n}, 0 / 0)
        exact(hero.addmm(nan, a, b_stored_t:t(), 0, 0.25), want * 0.25)
      end)
    end)

    it("linear's forward and gradients (x @ Wᵀ + b, g @ W, gᵀ @ x)", function()
      local x, w, bias, gy = quarters(200, 300), quarters(500, 300), quarters(500), quarters(200, 500)
      local xv, wv = x:clone():requires_grad_(), w:clone():requires_grad_()
      packed_calls(3, function()
        local y = hero.linear(xv, wv, bias)
        exact(y, x:double():matmul(w:double():t()) + bias:double())
        y:backward(gy)
      end)
      exact(xv.grad, gy:double():matmul(w:double()))
      exact(wv.grad, gy:double():t():matmul(x:double()))
    end)

    it("a bias row is added as each tile is written: the bits of an output filled with it first", function()
      -- random values (sums rounded), edge tiles on both sides, three inner blocks, 1 and 2 threads
      local x, w, bias = hero.randn({103, 700}, {generator = g}), hero.randn({250, 700}, {generator = g}),
        hero.randn({250}, {generator = g})
      local filled = bias:expand(103, 250):contiguous()
      local saved = hero.get_num_threads()
      for _, threads in ipairs {1, 2} do
        hero.set_num_threads(threads)
        packed_calls(6, function()
          local function same(p, q) assert.equal(0, (p - q):abs():max():item()) end
          same(hero.linear(x, w, bias), hero.addmm(filled, x, w:t()))
          same(hero.addmm(bias, x, w:t(), 1, 0.5), hero.addmm(filled, x, w:t(), 1, 0.5))
          -- beta other than 1 scales the bias: it is filled in first as before
          same(hero.addmm(bias, x, w:t(), 2, 1), hero.addmm(filled, x, w:t(), 2, 1))
        end)
      end
      hero.set_num_threads(saved)
      -- a product the packed kernels decline gets the bias the other way
      local xs = hero.randn({40, 700}, {generator = g})
      packed_calls(0, function()
        local want = xs:double():matmul(w:double():t()) + bias:double()
        assert.is_true((hero.linear(xs, w, bias):double() - want):abs():max():item() < 1e-3)
      end)
    end)

    it("small products stay with BLAS (or the skinny kernels), with the same results", function()
      local x, w = quarters(40, 300), quarters(300, 500)
      packed_calls(0, function() exact(hero.matmul(x, w), x:double():matmul(w:double())) end)
    end)

    it("a non-finite input reaches exactly the outputs it touches", function()
      local xt, wt = quarters(101, 70):totable(), quarters(70, 90):totable()
      xt[5][7] = math.huge
      wt[3][89] = 0 / 0
      local x, w = hero.tensor(xt, {dtype = "f32"}), hero.tensor(wt, {dtype = "f32"})
      local got
      packed_calls(1, function() got = hero.matmul(x, w):double():totable() end)
      local want = x:double():matmul(w:double()):totable()
      local nans = 0
      for i = 1, 101 do
        for j = 1, 90 do
          local e, v = want[i][j], got[i][j]
          if e ~= e then
            nans = nans + 1
            assert(v ~= v, ("element %d,%d: NaN expected, got %s"):format(i, j, v))
          else
            assert.equal(e, v)
          end
        end
      end
      assert.is_true(nans > 0)
    end)

    it("gives the same bits on 1 and 2 threads", function()
      if not kernels_built then
        pending("the packed kernels need a build for a CPU with AVX2 and FMA")
        return
      end
      local saved = hero.get_num_threads()
      local ok, err = pcall(function()
        local x, w = hero.randn({330, 777}, {generator = g}), hero.randn({1555, 777}, {generator = g})
        hero.set_num_threads(1)
        local one = hero.linear(x, w)
        hero.set_num_threads(2)
        local two = hero.linear(x, w)
        assert.equal(0, (one - two):abs():max():item())
        local rows = hero.randn({777, 330}, {generator = g}) -- m > n: rows are split, not columns
        hero.set_num_threads(1)
        local r1 = hero.matmul(w, rows)
        hero.set_num_threads(2)
        assert.equal(0, (hero.matmul(w, rows) - r1):abs():max():item())
      end)
      hero.set_num_threads(saved)
      assert(ok, err)
    end)
  end)

  it("works as methods", function()
    local a = hero.tensor {{1, 2}, {3, 4}}
    local v = hero.tensor {1, -1}
    assert.same({{7, 10}, {15, 22}}, a:matmul(a):totable())
    assert.same({{7, 10}, {15, 22}}, a:mm(a):totable())
    assert.same({-1, -1}, a:mv(v):totable())
    assert.equal(2, v:dot(v):item())
    assert.same({{8, 11}, {16, 23}}, hero.ones(2, 2):addmm(a, a):totable())
    assert.same({{1, 2}}, hero.tensor({{1, 0}}):linear(a:t()):totable())
    assert.same({{{7, 10}, {15, 22}}}, a:view(1, 2, 2):bmm(a:view(1, 2, 2)):totable())
    assert.same({{{8, 11}, {16, 23}}}, hero.ones(1, 2, 2):baddbmm(a:view(1, 2, 2), a:view(1, 2, 2)):totable())
  end)

  describe("writing into existing tensors", function()
    -- exact dyadic values, so results computed two ways agree bit for bit
    local function grid(rows, cols, seed)
      local t = {}
      for i = 1, rows do
        t[i] = {}
        for j = 1, cols do t[i][j] = ((i * 7 + j * 3 + seed) % 11 - 5) / 4 end
      end
      return hero.tensor(t)
    end

    it("matmul(a, b, out) fills out and returns it", function()
      local a, b = grid(3, 4, 1), grid(4, 5, 2)
      local want = a:matmul(b):totable()
      local out = hero.zeros(3, 5)
      local r = hero.matmul(a, b, out)
      assert.is_true(rawequal(r, out))
      assert.same(want, out:totable())
      -- a non-contiguous destination (a transposed view) and a half one
      local buf = hero.zeros(5, 3)
      a:matmul(b, buf:t())
      assert.same(want, buf:t():totable())
      local h = hero.zeros({3, 5}, {dtype = "f16"})
      a:half():matmul(b:half(), h)
      assert.same(a:half():matmul(b:half()):totable(), h:totable())
      -- batched, and a destination that is also an operand (computed through a temporary)
      local x = grid(4, 4, 3)
      local want_sq = x:matmul(x):totable()
      x:matmul(x:clone(), x)
      assert.same(want_sq, x:totable())
      local y = grid(4, 4, 5)
      want_sq = y:matmul(y):totable()
      hero.matmul(y, y, y)
      assert.same(want_sq, y:totable())
    end)

    it("addmm_ and baddbmm_ accumulate in place", function()
      local a, b = grid(3, 4, 1), grid(4, 5, 2)
      local c = grid(3, 5, 4)
      local want = hero.addmm(c, a, b, 0.5, -2):totable()
      local r = c:addmm_(a, b, 0.5, -2)
      assert.is_true(rawequal(r, c))
      assert.same(want, c:totable())
      -- a transposed accumulator (through a temporary), then a bf16 one
      local ct = grid(5, 3, 6):t()
      want = hero.addmm(ct, a, b):totable()
      ct:addmm_(a, b)
      assert.same(want, ct:totable())
      local hb = grid(3, 5, 4):bfloat16()
      want = hero.addmm(hb, a:bfloat16(), b:bfloat16(), 1, 1):totable()
      hb:addmm_(a:bfloat16(), b:bfloat16())
      assert.same(want, hb:totable())
      -- K = 0: only the scaling remains
      local z = grid(3, 5, 4)
      want = hero.addmm(z, hero.zeros(3, 0), hero.zeros(0, 5), 3, 1):totable()
      z:addmm_(hero.zeros(3, 0), hero.zeros(0, 5), 3)
      assert.same(want, z:totable())
      local bc = hero.tensor({grid(3, 5, 1):totable(), grid(3, 5, 2):totable()})
      local ba = hero.tensor({a:totable(), grid(3, 4, 8):totable()})
      local bb = hero.tensor({b:totable(), grid(4, 5, 9):totable()})
      want = hero.baddbmm(bc, ba, bb, 2, 0.5):totable()
      assert.is_true(rawequal(bc, bc:baddbmm_(ba, bb, 2, 0.5)))
      assert.same(want, bc:totable())
    end)

    it("checks the destination", function()
      local a, b = hero.zeros(3, 4), hero.zeros(4, 5)
      helper.assert_error_contains(function() hero.matmul(a, b, hero.zeros(5, 3)) end,
        "matmul: out has size 5x3 but the product has size 3x5")
      helper.assert_error_contains(function() hero.matmul(a, b, hero.zeros({3, 5}, {dtype = "f64"})) end,
        "matmul: out has dtype f64 but the product is f32")
      helper.assert_error_contains(function() hero.zeros(5):addmm_(a, b) end,
        "addmm_: out has size 5 but the product has size 3x5")
      local dead = hero.zeros(3, 5)
      dead:free()
      helper.assert_error_contains(function() hero.matmul(a, b, dead) end, "matmul: argument #3: tensor was freed")
    end)
  end)

  it("takes beta and alpha positionally or as options", function()
    local a = hero.tensor {{1, 2}, {3, 4}}
    local c = hero.tensor {10, 20}
    local want = {{0.5 * 10 + 2 * 7, 0.5 * 20 + 2 * 10}, {0.5 * 10 + 2 * 15, 0.5 * 20 + 2 * 22}}
    assert.same(want, hero.addmm(c, a, a, 0.5, 2):totable())
    assert.same(want, hero.addmm(c, a, a, {beta = 0.5, alpha = 2}):totable())
    assert.same({{7 + 10, 10 + 20}, {15 + 10, 22 + 20}}, hero.addmm(c, a, a):totable())
    helper.assert_error_contains(function() hero.addmm(c, a, a, {beta = "x"}) end, "addmm", "beta must be a number")
  end)

  it("has a raw sgemm timing hook for the benchmark", function()
    local s = hero.core._bench_sgemm(16, 8, 4, 2)
    assert.is_true(s > 0 and s < 1)
    s = hero.core._bench_sgemm(16, 8, 4, 1, 3)
    assert.is_true(s > 0 and s < 1)
    local t0 = hero.core._bench_now()
    assert.is_true(hero.core._bench_now() >= t0)
    helper.assert_error_contains(function() hero.core._bench_sgemm(0, 8, 4, 1) end, "_bench_sgemm", "sizes")
  end)

  describe("errors", function()
    it("names both shapes and the mismatching sizes", function()
      helper.assert_error_contains(function() hero.matmul(hero.zeros(2, 3), hero.zeros(4, 5)) end,
        "matmul: 2x3 and 4x5 cannot be multiplied (3 vs 4)")
      helper.assert_error_contains(function() hero.zeros(3):matmul(hero.zeros(4)) end,
        "matmul: 3 and 4 cannot be multiplied (3 vs 4)")
      helper.assert_error_contains(function() hero.matmul(hero.zeros(2, 3, 4), hero.zeros(3, 5, 2)) end,
        "matmul: 2x3x4 and 3x5x2 cannot be multiplied (4 vs 5)")
      helper.assert_error_contains(function() hero.matmul(hero.zeros(2, 3, 4), hero.zeros(3, 4, 2)) end,
        "matmul: batch dimensions of 2x3x4 and 3x4x2 cannot be broadcast (2 vs 3)")
      helper.assert_error_contains(function() hero.matmul(hero.tensor(1), hero.zeros(3)) end,
        "matmul: both arguments need at least 1 dimension, got scalar and 3")
    end)

    it("checks the dimensions each op takes", function()
      helper.assert_error_contains(function() hero.mm(hero.zeros(2, 3, 4), hero.zeros(4, 5)) end,
        "mm: self must be 2-D, got 2x3x4 (3-D)")
      helper.assert_error_contains(function() hero.mm(hero.zeros(2, 3), hero.zeros(3)) end, "mm: other must be 2-D")
      helper.assert_error_contains(function() hero.bmm(hero.zeros(2, 3, 4), hero.zeros(3, 4, 5)) end,
        "bmm: batch sizes differ: 2x3x4 and 3x4x5 (2 vs 3)")
      helper.assert_error_contains(function() hero.bmm(hero.zeros(3, 4), hero.zeros(4, 5)) end, "bmm: self must be 3-D")
      helper.assert_error_contains(function() hero.dot(hero.zeros(2, 2), hero.zeros(2)) end, "dot: self must be 1-D")
      helper.assert_error_contains(function() hero.dot(hero.zeros(2), hero.zeros(3)) end,
        "dot: 2 and 3 cannot be multiplied (2 vs 3)")
      helper.assert_error_contains(function() hero.mv(hero.zeros(2, 3), hero.zeros(2, 3)) end, "mv: vec must be 1-D")
      helper.assert_error_contains(function() hero.baddbmm(hero.zeros(2, 2), hero.zeros(2, 2), hero.zeros(2, 2, 2)) end,
        "baddbmm: batch1 must be 3-D")
    end)

    it("refuses mixed dtypes and bool", function()
      helper.assert_error_contains(function() hero.matmul(hero.zeros(2, 3), hero.zeros(3, 2):double()) end,
        "matmul", "same dtype", "f32 (2x3)", "f64 (3x2)")
      helper.assert_error_contains(function() hero.addmm(hero.zeros(2):half(), hero.zeros(2, 2), hero.zeros(2, 2)) end,
        "addmm", "input and mat1", "f16", "f32")
      helper.assert_error_contains(function() hero.linear(hero.zeros(2, 3), hero.zeros(4, 3):double()) end,
        "linear", "input and weight", "same dtype")
      helper.assert_error_contains(function() hero.matmul(hero.zeros(2, 2):bool(), hero.zeros(2, 2):bool()) end,
        "matmul: bool tensors cannot be multiplied")
      helper.assert_error_contains(function() hero.addmm(hero.zeros(2, 2):long(), hero.zeros(2, 2):long(),
        hero.zeros(2, 2):long(), 0.5) end, "addmm: beta = 0.5 must be an integer for i64 tensors")
    end)

    it("checks the added input and linear's shapes", function()
      helper.assert_error_contains(function() hero.addmm(hero.zeros(3), hero.zeros(2, 4), hero.zeros(4, 5)) end,
        "addmm: input of size 3 cannot be broadcast to the product's size 2x5 (2x4 @ 4x5)")
      helper.assert_error_contains(function() hero.addmm(hero.zeros(1, 2, 5), hero.zeros(2, 4), hero.zeros(4, 5)) end,
        "addmm: input of size 1x2x5 cannot be broadcast")
      helper.assert_error_contains(function() hero.linear(hero.zeros(2, 3), hero.zeros(4, 5)) end,
        "linear: input of size 2x3 does not match weight of size 4x5 (in_features 5)")
      helper.assert_error_contains(function() hero.linear(hero.zeros(2, 5), hero.zeros(4, 5), hero.zeros(5)) end,
        "linear: bias of size 5 does not match weight of size 4x5 (expected 4)")
      helper.assert_error_contains(function() hero.linear(hero.zeros(2, 5), hero.zeros(5)) end,
        "linear: weight must be 2-D")
    end)

    it("reports freed tensors and non-tensors with the argument", function()
      local a, b = hero.zeros(2, 2), hero.zeros(2, 2)
      b:free()
      helper.assert_error_contains(function() hero.matmul(a, b) end, "matmul: argument #2: tensor was freed")
      helper.assert_error_contains(function() a:mm(b) end, "mm", "freed")
      helper.assert_error_contains(function() hero.addmm(b, a, a) end, "addmm: argument #1: tensor was freed")
      helper.assert_error_contains(function() hero.linear(a, a, b) end, "linear: argument #3: tensor was freed")
      helper.assert_error_contains(function() hero.matmul(a, {1, 2}) end, "matmul: argument #2: expected a hero.Tensor")
    end)
  end)
end)
