local hero = require "hero"

-- Expected texts are written out in full: printing is part of the user interface.
local function lines(...) return table.concat({...}, "\n") end

describe("tensor printing", function()
  it("prints a small f32 matrix in fixed point with a footer", function()
    local t = hero.tensor {{1.5, 2, 3}, {4, 5, 6.25}}
    assert.equal(lines(
      " 1.5000  2.0000  3.0000",
      " 4.0000  5.0000  6.2500",
      "[hero.Tensor f32 cpu of size 2x3]"), tostring(t))
  end)

  it("aligns negative values and prints views through their strides", function()
    local t = hero.tensor {{1.5, -2}, {-30.25, 4}}:t()
    assert.is_false(t:is_contiguous())
    assert.equal(lines(
      "  1.5000 -30.2500",
      " -2.0000   4.0000",
      "[hero.Tensor f32 cpu of size 2x2]"), tostring(t))
  end)

  it("prints what was written through a view", function()
    -- fill_ of a strided i64 view goes through the generic fill path (checked under UBSan)
    local m = hero.arange(12):view(3, 4)
    m:narrow(2, 2, 2):fill_(-1)
    assert.equal(lines(
      " 0 -1 -1  3",
      " 4 -1 -1  7",
      " 8 -1 -1 11",
      "[hero.Tensor i64 cpu of size 3x4]"), tostring(m))
  end)

  it("factors out a shared scale when all values are small or large", function()
    assert.equal(lines(
      "1e-03 *",
      " 1.0000  2.0000",
      " 3.5000 -4.1000",
      "[hero.Tensor f32 cpu of size 2x2]"), tostring(hero.tensor {{0.001, 0.002}, {0.0035, -0.0041}}))
    assert.equal(lines(
      "1e+05 *",
      " 1.2346",
      " 2.5000",
      "[hero.Tensor f64 cpu of size 2]"), tostring(hero.tensor({123456.7, 250000}, {dtype = "f64"})))
  end)

  it("switches to scientific notation when values span many magnitudes", function()
    assert.equal(lines(
      " 1.0000e-08",
      " 1.0000e+00",
      "-2.5000e+08",
      "[hero.Tensor f64 cpu of size 3]"), tostring(hero.tensor({1e-8, 1, -2.5e8}, {dtype = "f64"})))
  end)

  it("prints whole-number floats and integer dtypes as integers", function()
    assert.equal(lines(
      " 1  1  1",
      " 1  1  1",
      "[hero.Tensor f32 cpu of size 2x3]"), tostring(hero.ones(2, 3)))
    assert.equal(lines(
      "  1",
      "-20",
      "300",
      "[hero.Tensor i32 cpu of size 3]"), tostring(hero.tensor({1, -20, 300}, {dtype = "i32"})))
    assert.equal(lines(
      "9007199254740993",
      "              -3",
      "[hero.Tensor i64 cpu of size 2]"), tostring(hero.tensor({9007199254740993, -3}, {dtype = "i64"})))
    assert.equal(lines(
      "   0  255",
      "[hero.Tensor u8 cpu of size 1x2]"), tostring(hero.tensor({{0, 255}}, {dtype = "u8"})))
  end)

  it("prints booleans as true/false", function()
    assert.equal(lines(
      "  true  false",
      " false   true",
      "[hero.Tensor bool cpu of size 2x2]"), tostring(hero.tensor {{true, false}, {false, true}}))
  end)

  it("prints nan and infinities", function()
    assert.equal(lines(
      "   nan",
      "   inf",
      "  -inf",
      "1.5000",
      "[hero.Tensor f32 cpu of size 4]"), tostring(hero.tensor {0 / 0, 1 / 0, -1 / 0, 1.5}))
  end)

  it("prints 3-D and 4-D tensors as headed matrix slices", function()
    assert.equal(lines(
      "(1,.,.) =",
      " 0  1",
      " 2  3",
      "",
      "(2,.,.) =",
      " 4  5",
      " 6  7",
      "[hero.Tensor i64 cpu of size 2x2x2]"), tostring(hero.arange(8):view(2, 2, 2)))
    assert.equal(lines(
      "(1,1,.,.) =",
      "  0   1   2",
      "",
      "(1,2,.,.) =",
      "  3   4   5",
      "",
      "(2,1,.,.) =",
      "  6   7   8",
      "",
      "(2,2,.,.) =",
      "  9  10  11",
      "[hero.Tensor i64 cpu of size 2x2x1x3]"), tostring(hero.arange(12):view(2, 2, 1, 3)))
  end)

  it("wraps wide matrices into column blocks of at most 80 characters", function()
    local v = {}
    for i = 1, 2 do
      v[i] = {}
      for j = 1, 20 do v[i][j] = (i - 1) * 20 + j + 0.5 end
    end
    local text = tostring(hero.tensor(v))
    assert.equal(lines(
      "Columns 1 to 9",
      "  1.5000   2.5000   3.5000   4.5000   5.5000   6.5000   7.5000   8.5000   9.5000",
      " 21.5000  22.5000  23.5000  24.5000  25.5000  26.5000  27.5000  28.5000  29.5000",
      "",
      "Columns 10 to 18",
      " 10.5000  11.5000  12.5000  13.5000  14.5000  15.5000  16.5000  17.5000  18.5000",
      " 30.5000  31.5000  32.5000  33.5000  34.5000  35.5000  36.5000  37.5000  38.5000",
      "",
      "Columns 19 to 20",
      " 19.5000  20.5000",
      " 39.5000  40.5000",
      "[hero.Tensor f32 cpu of size 2x20]"), text)
    for line in text:gmatch("[^\n]+") do assert.is_true(#line <= 80, line) end
    assert.equal(lines(
      "Columns 1 to 20",
      "  0   1   2   3   4   5   6   7   8   9  10  11  12  13  14  15  16  17  18  19",
      "",
      "Column 21",
      " 20",
      "[hero.Tensor i64 cpu of size 1x21]"), tostring(hero.arange(21):view(1, 21)))
  end)

  it("summarises big tensors quickly, reading only what is shown", function()
    -- 1e8 elements without 1e8 elements of memory: an expanded (stride 0) view
    local big = hero.arange(10000):view(1, 10000):expand(10000, 10000)
    local start = os.clock()
    local text = tostring(big)
    assert.is_true(os.clock() - start < 0.5, "printing took too long")
    assert.equal(lines(
      "    0     1     2   ...  9997  9998  9999",
      "    0     1     2   ...  9997  9998  9999",
      "    0     1     2   ...  9997  9998  9999",
      "  ...",
      "    0     1     2   ...  9997  9998  9999",
      "    0     1     2   ...  9997  9998  9999",
      "    0     1     2   ...  9997  9998  9999",
      "[hero.Tensor i64 cpu of size 10000x10000]"), text)
    assert.equal(lines(
      "    0",
      "    1",
      "    2",
      "  ...",
      " 1998",
      " 1999",
      " 2000",
      "[hero.Tensor f32 cpu of size 2001]"), tostring(hero.arange(2001):float()))
    -- at the threshold nothing is left out
    assert.is_nil(tostring(hero.arange(1000)):find("...", 1, true))
  end)

  it("summarises leading dimensions of N-D tensors", function()
    local text = tostring(hero.arange(2000):view(20, 10, 10))
    assert.truthy(text:find(lines(
      "(3,.,.) =",
      "  200   201   202   ...   207   208   209",
      "  210   211   212   ...   217   218   219",
      "  220   221   222   ...   227   228   229",
      "  ...",
      "  270   271   272   ...   277   278   279",
      "  280   281   282   ...   287   288   289",
      "  290   291   292   ...   297   298   299",
      "",
      "...",
      "",
      "(18,.,.) ="), 1, true))
    local slices = 0
    for _ in text:gmatch("%(%d+,%.,%.%) =") do slices = slices + 1 end
    assert.equal(6, slices)
  end)

  it("prints 0-dim tensors as their value", function()
    assert.equal(lines(" 3.5000", "[hero.Tensor f32 cpu scalar]"), tostring(hero.tensor(3.5)))
    assert.equal(lines("-7", "[hero.Tensor i64 cpu scalar]"), tostring(hero.tensor(-7, {dtype = "i64"})))
    -- no scale line for a single value: scientific instead
    assert.equal(lines(" 1.0000e-03", "[hero.Tensor f32 cpu scalar]"), tostring(hero.tensor(0.001)))
  end)

  it("prints empty and freed tensors as a footer only", function()
    assert.equal("[hero.Tensor f32 cpu of size 0x3]", tostring(hero.zeros(0, 3)))
    assert.equal("[hero.Tensor i64 cpu of size 0]", tostring(hero.arange(0)))
    local t = hero.ones(2, 2)
    t:free()
    assert.equal("[hero.Tensor (freed)]", tostring(t))
  end)

  it("prints f16 values as they are stored", function()
    assert.equal(lines(
      " 0.1000",
      "-2.5000",
      " 3.1406",
      "[hero.Tensor f16 cpu of size 3]"), tostring(hero.tensor({0.1, -2.5, 3.14159}, {dtype = "f16"})))
  end)

  it("t:print() writes the same text", function()
    local t = hero.tensor {{1, 2}}
    local got
    local saved = _G.print
    _G.print = function(s) got = s end
    local ok, err = pcall(t.print, t)
    _G.print = saved
    assert(ok, err)
    assert.equal(tostring(t), got)
  end)
end)
