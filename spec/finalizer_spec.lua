--- Releases called from finalizers. The collector runs `__gc` metamethods inside whatever allocation
-- set it off, which may be in the middle of a hero function holding the very object the finalizer
-- releases (a tensor it reads into a table, an LMDB value it decodes, a tokenizer it runs, a pool it
-- submits to). Each case arms a finalizer, makes the call until the finalizer runs inside it (the
-- case fails when it never does), and checks the call's result against what it is without the
-- release; the object must be released for Lua afterwards. `make asan` runs these under
-- AddressSanitizer, where a use after free is a report.
local helper = require "spec_helper"
local it_db = helper.it_needs(it, pending, "lmdb")
local hero = require "hero"
local core = hero.core

-- Calls call() with a finalizer armed to run release() if the collector runs it during the call.
-- The collector is made to run almost without pause and in small, heavy steps for the duration, so that
-- a cycle (which finds the armed object dead and then calls its finalizer) fits in the call's
-- allocations however large the heap the other specs left is; a few attempts are allowed.
local function with_release_inside(release, call)
  local inside, fired = false, false
  -- a pause of 4% (0 would mean "unchanged"), applied when a cycle ends: otherwise the collector
  -- would wait until the heap doubled, which a large heap does not do within the call
  collectgarbage("incremental", 4, 1000, 10)
  collectgarbage()
  local ok, res = true, nil
  for _ = 1, 20 do
    setmetatable({}, {__gc = function()
      if inside and not fired then
        fired = true
        release()
      end
    end})
    inside = true
    ok, res = pcall(call)
    inside = false
    if fired then break end
  end
  collectgarbage("incremental", 200, 100, 13)
  collectgarbage()
  assert(fired, "the finalizer never ran inside the call")
  return ok, res
end

describe("a release from a finalizer", function()
  it("leaves a tensor's values to the function reading it, then frees it", function()
    local x = hero.arange(0, 100000, {dtype = "f32"}):view(1000, 100)
    local ok, rows = with_release_inside(function()
      x:free()
      -- a new tensor of the same size would take the freed memory over
      local _ = hero.full({1000, 100}, 42)
    end, function() return x:totable() end)
    assert.is_true(ok, tostring(rows))
    assert.equal(1000, #rows)
    for _, r in ipairs{1, 500, 1000} do
      assert.equal((r - 1) * 100, rows[r][1])
      assert.equal(r * 100 - 1, rows[r][100])
    end
    assert.is_true(x:is_freed())
    assert.has_error(function() x:sum() end)
  end)

  it("keeps unbind's rows and the memory goes with the tensor's collection", function()
    collectgarbage()
    local base = hero.live_bytes()
    local x = hero.arange(0, 200000, {dtype = "f32"}):view(20000, 10)
    local ok, rows = with_release_inside(function()
      x:free()
      local _ = hero.full({20000, 10}, 42)
    end, function() return x:unbind(1) end)
    assert.is_true(ok, tostring(rows))
    assert.equal(20000, #rows)
    assert.equal(0, rows[1][1]:item())
    assert.equal(199999, rows[20000][10]:item())
    rows = nil -- luacheck: ignore 311
    assert.is_true(x:is_freed())
    x = nil -- luacheck: ignore 311
    collectgarbage()
    collectgarbage()
    assert.equal(base, hero.live_bytes())
  end)

  it_db("keeps an LMDB value mapped while it is decoded, then the handle is closed", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute('mkdir -p "' .. dir .. '"'))
    local w = core.lmdb_writer(dir, 1 << 26)
    local big = {}
    for i = 1, 100000 do big[i] = "s" .. i .. string.rep("x", 20) end
    w:put("k", hero.data.encode_msgpack(big))
    w:finish()
    big = nil -- luacheck: ignore 311
    local db = hero.data.open_lmdb(dir)
    local ok, v = with_release_inside(function() db:close() end, function() return db:get_msgpack("k") end)
    assert.is_true(ok, tostring(v))
    assert.equal(100000, #v)
    assert.equal("s100000" .. string.rep("x", 20), v[100000])
    assert.is_true(db:closed())
    helper.assert_error_contains(function() db:get("k") end, "closed")
    db = nil -- luacheck: ignore 311
    collectgarbage()
    os.execute('rm -rf "' .. dir .. '"')
  end)

  it("lets a tokenizer finish the text it is tokenizing, then it is freed", function()
    local fx = helper.fixture("tokenizer/")
    local tok = hero.text.Tokenizer.from_files(fx .. "encoder.json", fx .. "vocab.bpe", {style = "gpt2"})
    local text = string.rep("hello world, this is a tokenizer test. ", 5000)
    local want = tok:tokenize(text)
    local ok, tokens = with_release_inside(function() tok:free() end, function() return tok:tokenize(text) end)
    assert.is_true(ok, tostring(tokens))
    assert.same(want, tokens)
    helper.assert_error_contains(function() tok:tokenize("hello") end, "freed")
  end)

  it("closes a worker pool when the pool itself is collected", function()
    -- pool:submit holds the pool across the allocations of encoding the job; the window is too
    -- short to aim a finalizer at, so this checks the deferral itself: closed for Lua at once,
    -- shut down (its worker joined) when the collector takes the pool
    local pool = core.worker_pool{n = 1, script = "return function(job) return #job end"}
    pool:submit({1})
    assert.equal(1, pool:get())
    do setmetatable({}, {__gc = function() pool:close() end}) end
    collectgarbage()
    assert.is_true(pool:is_closed())
    helper.assert_error_contains(function() pool:submit({}) end, "closed")
    pool = nil -- luacheck: ignore 311
    collectgarbage()
  end)
end)

describe("Lua code run by a function holding a tensor", function()
  it("fill_ reads a one-element tensor's value without calling a replaced item method", function()
    local x = hero.zeros(100, 10)
    local item = hero.Tensor.item
    hero.Tensor.item = function(self)
      x:free()
      return item(self)
    end
    local ok, err = pcall(function() x:fill_(hero.tensor{7}) end)
    hero.Tensor.item = item
    assert.is_true(ok, tostring(err))
    assert.equal(7000, x:sum():item())
  end)
end)

describe("an autograd.Function keeping its output in ctx", function()
  local Exp = hero.autograd.Function{
    forward = function(ctx, x)
      local y = x:exp()
      ctx.y = y
      return y
    end,
    backward = function(ctx, g) return g * ctx.y end,
  }

  it("differentiates with it and leaves it collectable", function()
    local x = hero.tensor({0, 1, -2}, {dtype = "f64"}):requires_grad_()
    local y = Exp(x)
    assert.is_not_nil(y.grad_fn)
    y:sum():backward()
    for i, v in ipairs{0, 1, -2} do assert.near(math.exp(v), x.grad[i]:item(), 1e-12) end

    local big = hero.randn(256, 256):requires_grad_()
    collectgarbage()
    collectgarbage()
    local base = hero.live_bytes()
    for i = 1, 50 do
      local out = Exp(big)
      if i % 2 == 0 then out:sum():backward() end
    end
    big.grad = nil
    collectgarbage()
    collectgarbage()
    -- each call's output is 256 KiB: kept alive, 50 of them would be 12.5 MiB
    assert.is_true(hero.live_bytes() - base < 1 << 20, "live bytes grew by " .. (hero.live_bytes() - base))
  end)
end)
