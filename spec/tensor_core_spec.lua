local hero = require "hero"
local helper = require "spec_helper"

describe("tensor core", function()
  it("creates tensors from nested tables with their shape and dtype", function()
    local t = hero.tensor {{1, 2, 3}, {4, 5, 6}}
    assert.same({2, 3}, t:size())
    assert.equal("f32", t:dtype())
    assert.equal("cpu", t:device())
    assert.same({{1, 2, 3}, {4, 5, 6}}, t:totable())
    local b = hero.tensor {true, false}
    assert.equal("bool", b:dtype())
    assert.same({true, false}, b:totable())
    local i = hero.tensor({9007199254740993, -3}, {dtype = "i64"})
    assert.same({9007199254740993, -3}, i:totable())
    -- bool only when every element is a boolean, whichever comes first
    local mixed = hero.tensor {true, 2, 0.5}
    assert.equal("f32", mixed:dtype())
    assert.same({1, 2, 0.5}, mixed:totable())
    assert.equal("f32", hero.tensor({{false}, {3}}):dtype())
    assert.equal("bool", hero.tensor({{true}, {false}}):dtype())
    assert.equal("bool", hero.full({2}, true):dtype()) -- as torch's full
    assert.same({true, true}, hero.full({2}, true):totable())
    -- a dtype name where the options table goes is refused, not ignored
    for _, f in ipairs {
      function() return hero.tensor({1.5}, "f64") end, function() return hero.tensor(1.5, "f64") end,
      function() return hero.full({2}, 1, "f64") end, function() return hero.linspace(0, 1, 3, "f64") end,
      function() return hero.randperm(3, "i32") end, function() return hero.rand_like(hero.zeros(2), "f64") end,
    } do
      helper.assert_error_contains(f, "must be an options table")
    end
  end)

  it("iterates with ipairs: the position just past the end is nil", function()
    local t = hero.tensor {10, 20, 30}
    local seen = {}
    for i, v in ipairs(t) do seen[i] = v:item() end
    assert.same({10, 20, 30}, seen)
    assert.is_nil(t[4])
    helper.assert_error_contains(function() return t[5] end, "position 5 out of range")
    helper.assert_error_contains(function() return t[-4] end, "position -4 out of range")
    -- keys that are neither positions nor names are errors, not nil
    helper.assert_error_contains(function() return t[t:gt(15)] end, "a key must be", "masked_select")
    helper.assert_error_contains(function() return t[true] end, "a key must be", "boolean")
    helper.assert_error_contains(function() t[t:gt(15)] = 0 end, "position must be an integer", "masked_fill_")
  end)

  it("rejects ragged tables with the position", function()
    helper.assert_error_contains(function() hero.tensor {{1, 2}, {3}} end, "not rectangular", "[2]")
    helper.assert_error_contains(function() hero.tensor {{1, "x"}} end, "[1][2]", "string")
  end)

  it("makes views that share storage", function()
    local t = hero.arange(24):view(2, 3, 4)
    assert.equal("i64", t:dtype())
    local n = t:narrow(3, 2, 2)
    assert.same({2, 3, 2}, n:size())
    assert.is_true(n:shares_storage(t))
    assert.same({{1, 2}, {5, 6}, {9, 10}}, n[1]:totable())
    local tr = t:transpose(1, 3)
    assert.same({4, 3, 2}, tr:size())
    assert.equal(13, tr[2][1][2]:item())
    assert.same({3, 4, 2}, t:permute(2, 3, 1):size())
    assert.same({2, 1, 12}, t:reshape(2, 1, -1):size())
    assert.equal(23, t[-1][-1][-1]:item())
    local e = hero.tensor({{1}, {2}}):expand(2, 3)
    assert.same({{1, 1, 1}, {2, 2, 2}}, e:totable())
    assert.same({0, 1}, {e:stride(2), e:stride(1)})
    assert.same({2, 3}, t:narrow(2, 1, 1):squeeze():narrow(2, 1, 3):size())
    assert.same({2, 1, 3, 4}, t:unsqueeze(2):size())
    assert.same({2, 3, 4, 1}, t:unsqueeze(-1):size())
    -- the same as functions, as torch.narrow / torch.reshape
    assert.is_true(hero.narrow(t, 3, 2, 2):shares_storage(t))
    assert.same({4, 3, 2}, hero.transpose(t, 1, 3):size())
    assert.same({2, 1, 12}, hero.reshape(t, 2, 1, -1):size())
    assert.same({3, 4, 2}, hero.permute(t, 2, 3, 1):size())
    assert.same(t[2]:totable(), hero.select(t, 1, 2):totable())
    assert.same({2, 3, 4, 1}, hero.unsqueeze(t, -1):size())
  end)

  it("copies broadcast and strided sources of every element width into any layout", function()
    for _, dt in ipairs {"f64", "f32", "bf16", "f16", "i64", "i32", "u8", "bool"} do
      local v = dt == "bool" and true or 3
      local want = dt == "bool" and true or 3
      -- one value spread over 2 x 37 (stride 0 innermost), into contiguous and transposed storage
      local e = hero.tensor({v}, {dtype = dt}):expand(2, 37)
      local c = e:contiguous()
      assert.is_true(c:is_contiguous())
      local t = hero.zeros(37, 2, {dtype = dt}):t()
      t:copy_(e)
      for _, r in ipairs {c:totable(), t:totable()} do
        assert.equal(2, #r)
        for i = 1, 2 do
          assert.equal(37, #r[i])
          for j = 1, 37 do assert.equal(want, r[i][j], dt) end
        end
      end
      -- a strided source (every other column) gathered into contiguous storage
      local src = hero.arange(0, 40, {dtype = dt == "bool" and "u8" or dt}):view(4, 10)
      if dt == "bool" then src = src:ne(0) end
      local s = src:narrow(2, 1, 9)
      local got = s:t():contiguous():t():totable()
      assert.same(s:totable(), got, dt)
    end
  end)

  it("refuses views that would need a copy, but reshape copies", function()
    local t = hero.arange(6):view(2, 3):t()
    helper.assert_error_contains(function() t:view(6) end, "view", "without a copy")
    local r = t:reshape(6)
    assert.same({0, 3, 1, 4, 2, 5}, r:totable())
    assert.is_false(r:shares_storage(t))
    assert.is_true(t:contiguous():is_contiguous())
  end)

  it("calls empty tensors contiguous whatever their strides", function()
    for _, shape in ipairs({{0, 0}, {3, 0}, {2, 0, 3}, {0}}) do
      assert.is_true(hero.zeros(table.unpack(shape)):is_contiguous())
      assert.is_true(hero.zeros(table.unpack(shape)):contiguous():is_contiguous())
    end
    assert.same({0, 6}, hero.zeros(0, 2, 3):view(0, 6):size())
  end)

  it("refuses empty shapes whose other sizes overflow (their strides would)", function()
    helper.assert_error_contains(function() hero.zeros(0, 1 << 40, 1 << 30) end, "zeros", "tensor size overflows")
    assert.same({0, 1 << 20, 1 << 20}, hero.zeros(0, 1 << 20, 1 << 20):size())
  end)

  it("writes through views", function()
    local t = hero.zeros(3, 4)
    t:narrow(2, 2, 2):fill_(7)
    t[3] = 1
    t[1][1] = hero.tensor(5)
    assert.same({{5, 7, 7, 0}, {0, 7, 7, 0}, {1, 1, 1, 1}}, t:totable())
  end)

  it("converts between dtypes", function()
    local t = hero.tensor {1.5, -2.25, 65504, 1e-8}
    assert.same({1.5, -2.25, 65504, 0}, t:half():float():totable())
    assert.same({1, -2, 65504, 0}, t:long():totable())
    assert.same({true, true, true, true}, t:bool():totable())
    assert.same({1.5, -2.25, 65536, 1.0011717677116394e-08}, t:bfloat16():double():totable())
  end)

  it("frees idempotently and reports freed tensors", function()
    local t = hero.ones(2, 2)
    t:free()
    t:free()
    assert.is_true(t:is_freed())
    helper.assert_error_contains(function() return t:size() end, "freed")
    helper.assert_error_contains(function() return t + 1 end, "freed")
    do
      local c <close> = hero.ones(3)
      assert.equal(3, c:size(1))
    end
  end)

  it("makes integer ranges exactly, past 2^53 and across the whole 64-bit range", function()
    assert.same({0, 1, 2, 3, 4}, hero.arange(5):totable())
    assert.same({1, 4, 7}, hero.arange(1, 10, 3):totable())
    assert.same({10, 7, 4}, hero.arange(10, 1, -3):totable())
    assert.equal(0, hero.arange(3, 1):numel())
    -- as doubles these would round to even neighbours
    assert.same({9007199254740993, 9007199254740994, 9007199254740995},
      hero.arange(9007199254740993, 9007199254740996):totable())
    assert.same({math.mininteger, -1, math.maxinteger - 1},
      hero.arange(math.mininteger, math.maxinteger, math.maxinteger):totable())
    assert.same({0.5, 1.5}, hero.arange(0.5, 2):totable())
    -- errors say what was wrong (their numbers used to be an unsupported format)
    helper.assert_error_contains(function() hero.arange(math.mininteger, math.maxinteger) end, "arange", "too large")
    helper.assert_error_contains(function() hero.arange(0, 1, 0) end, "arange: invalid range", "step=0.0")
    helper.assert_error_contains(function() return hero.zeros(3)[1.5] end, "position must be an integer, got 1.5")
    helper.assert_error_contains(function() hero.layer_norm(hero.zeros(2, 3), nil, nil, -1) end, "eps must be >= 0")
  end)

  it("makes identity matrices, square or not, of any dtype", function()
    assert.same({{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}, hero.eye(3):totable())
    assert.same({{1, 0, 0}, {0, 1, 0}}, hero.eye(2, 3):totable())
    assert.same({{1, 0}, {0, 1}, {0, 0}}, hero.eye(3, 2):totable())
    local d = hero.eye(2, {dtype = "f64"})
    assert.equal("f64", d:dtype())
    assert.same({{1, 0}, {0, 1}}, d:totable())
    assert.same({{1, 0, 0}, {0, 1, 0}}, hero.eye(2, 3, {dtype = "i64"}):totable())
    assert.same({2, 2}, hero.eye(2, nil):size())
    assert.same({0, 0}, hero.eye(0):size())
    helper.assert_error_contains(function() hero.eye(-1) end, "eye", "negative size -1")
    helper.assert_error_contains(function() hero.eye(3, -2) end, "eye", "negative size -2")
    -- a second size that is not an integer is refused, not read as 0 or ignored
    helper.assert_error_contains(function() hero.eye(3, 2.5) end, "#2", "integer")
    helper.assert_error_contains(function() hero.eye(3, "x") end, "#2", "number expected")
    helper.assert_error_contains(function() hero.eye(2 ^ 40) end, "eye", "overflows")
  end)

  it("answers # (the first size) and element_size for every dtype", function()
    assert.equal(4, #hero.zeros(4, 2))
    assert.equal(0, #hero.zeros(0, 3))
    helper.assert_error_contains(function() return #hero.tensor(3) end, "0-dimensional", ":item()")
    local widths = {f32 = 4, f64 = 8, f16 = 2, bf16 = 2, i64 = 8, i32 = 4, u8 = 1, bool = 1}
    for dtype, width in pairs(widths) do
      assert.equal(width, hero.zeros(2, {dtype = dtype}):element_size(), dtype)
    end
  end)

  it("gives clear errors for bad dimensions and indices", function()
    local t = hero.zeros(2, 3)
    helper.assert_error_contains(function() t:narrow(3, 1, 1) end, "narrow", "dimension 3")
    helper.assert_error_contains(function() t:narrow(2, 3, 2) end, "narrow", "size 3")
    -- a start and length whose sum passes 64 bits are refused (the sum is never formed)
    helper.assert_error_contains(function() t:narrow(2, 2, math.maxinteger) end, "narrow", "outside dimension 2")
    helper.assert_error_contains(function() return t[4] end, "position 4", "size 2")
    helper.assert_error_contains(function() t:view(4, 2) end, "view", "4x2", "2x3")
    -- shapes whose element count passes 64 bits are refused before any product wraps around
    helper.assert_error_contains(function() hero.zeros(0):view(2 ^ 32, 2 ^ 32) end, "view", "64 bits")
    helper.assert_error_contains(function() t:reshape(2 ^ 62, 2 ^ 62, -1) end, "reshape", "64 bits")
    helper.assert_error_contains(function() hero.zeros(2, 3, {dtype = "f128"}) end, "unknown dtype 'f128'")
    helper.assert_error_contains(function() hero.zeros(2, {device = "cuda:1024"}) end, "CUDA") -- never a device
  end)

  it("keeps memory bounded when big tensors are dropped without collectgarbage", function()
    collectgarbage()
    local base = hero.live_bytes()
    for _ = 1, 40 do
      local _ = hero.empty(25 * 1024 * 1024) -- 100 MB each
    end
    assert.is_true(hero.live_bytes() - base < 1200 * 1024 * 1024)
  end)
end)

describe("writes and options that misbehaved silently", function()
  it("copy_ from another view of the same memory copies what the source held", function()
    local x = hero.tensor {{1, 2}, {3, 4}}
    x:copy_(x:t())
    assert.same({{1, 3}, {2, 4}}, x:totable())
    local y = hero.arange(6):float()
    y:view(3, 2):copy_(y:view(2, 3):t())
    assert.same({0, 3, 1, 4, 2, 5}, y:totable())
    local z = hero.arange(6):float():view(2, 3)
    z:copy_(z[1]) -- a broadcast row of itself
    assert.same({{0, 1, 2}, {0, 1, 2}}, z:totable())
    local w = hero.arange(4):float()
    w:narrow(1, 2, 3):copy_(w:narrow(1, 1, 3)) -- shifted by one
    assert.same({0, 0, 1, 2}, w:totable())
  end)

  it("refuses an expanded out for matmul and unknown creation options", function()
    helper.assert_error_contains(function()
      hero.matmul(hero.eye(2), hero.tensor {{1, 2}, {3, 4}}, hero.zeros(1, 2):expand(2, 2))
    end, "matmul (into out): cannot write in place", "expanded view")
    helper.assert_error_contains(function() hero.zeros({2}, {dtyp = "i64"}) end,
      "zeros: unknown option 'dtyp' (dtype, device)")
    helper.assert_error_contains(function() hero.tensor({1}, {requires_grad = true}) end,
      "tensor: unknown option 'requires_grad'")
    helper.assert_error_contains(function() hero.randn({2}, {generater = 1}) end, "(dtype, device, generator)")
    helper.assert_error_contains(function() hero.ones(2):to {devic = "cuda:0"} end, "to: unknown option 'devic'")
    assert.equal("i64", hero.zeros_like(hero.ones(2), {dtype = "i64"}):dtype())
    assert.equal("f64", hero.full_like(hero.ones(2), 3, {dtype = "f64"}):dtype())
    helper.assert_error_contains(function() hero.ones_like(hero.ones(2), {dtyp = "i64"}) end, "unknown option 'dtyp'")
  end)

  it("set_num_threads refuses a count it cannot run instead of wrapping or clamping it", function()
    local n = hero.get_num_threads()
    helper.assert_error_contains(function() hero.set_num_threads((1 << 32) + 3) end,
      "set_num_threads: at most 256 threads, got 4294967299")
    helper.assert_error_contains(function() hero.set_num_threads(-(1 << 32) + 1) end,
      "need at least 1 thread, got -4294967295")
    assert.equal(n, hero.get_num_threads())
  end)

  it("linspace refuses a huge count at once and keeps its values; fill_ takes a one-element tensor", function()
    -- it filled a Lua table of 2^60 numbers until memory ran out
    helper.assert_error_contains(function() hero.linspace(0, 1, 1 << 60) end, "linspace: range of", "too large")
    helper.assert_error_contains(function() hero.linspace(0, 1, 3, {dtyp = "f64"}) end,
      "linspace: unknown option 'dtyp'")
    -- the same numbers as the element-by-element Lua arithmetic (both halves, both ends exact)
    for _, c in ipairs {{0, 1, 5}, {-3.3, 7.1, 11}, {1e-3, 123.456, 1000}, {5, -5, 7}} do
      local start, stop, n = c[1], c[2], c[3]
      local step = (stop - start) / (n - 1)
      local got = hero.linspace(start, stop, n, {dtype = "f64"}):totable()
      for i = 0, n - 1 do
        local want = i < n // 2 and start + i * step or stop - (n - 1 - i) * step
        assert.equal(want, got[i + 1])
      end
    end
    assert.same({}, hero.linspace(0, 1, 0):totable())
    assert.same({2}, hero.linspace(2, 9, 1):totable())
    local t = hero.zeros(3)
    t:fill_(hero.tensor(3))
    assert.same({3, 3, 3}, t:totable())
    helper.assert_error_contains(function() t:fill_(hero.ones(2)) end, "a one-element tensor, got 2 elements")
  end)
end)
