--- hero.amp.autocast: which ops cast to the half dtype, which to f32, gradients reaching f32
-- parameters in f32, the state restored after errors, and a HERO forward+backward under bf16.
local hero = require "hero"
local helper = require "spec_helper"
local amp = hero.amp

--- t rounded to dtype and back (what a cast on the tape does to the values).
local function rounded(t, dtype) return t:to(dtype):to("f32") end

describe("hero.amp.autocast", function()
  it("runs the matrix products in the half dtype and the sensitive ops in f32", function()
    local g = hero.Generator(3)
    local x = hero.randn({2, 3, 8}, {generator = g})
    local w = hero.randn({4, 8}, {generator = g})
    local b = hero.randn({4}, {generator = g})
    for _, dt in ipairs {"bf16", "f16"} do
      local y, mm, ln, sm, lsm, ce = amp.autocast(dt, function()
        local y = hero.linear(x, w, b)
        return y, hero.matmul(x, w:t()), hero.layer_norm(y, nil, nil, 1e-5), hero.softmax(y), hero.log_softmax(y, 2),
          hero.cross_entropy(y:view(6, 4), hero.tensor({0, 1, 2, 3, 0, 1}, {dtype = "i64"}))
      end)
      assert.equal(dt, y:dtype())
      assert.equal(dt, mm:dtype())
      for _, t in ipairs {ln, sm, lsm, ce} do assert.equal("f32", t:dtype()) end
      -- exactly the op on the rounded inputs
      local want = hero.linear(x:to(dt), w:to(dt), b:to(dt))
      assert.same(want:to("f32"):totable(), y:to("f32"):totable())
      assert.same(hero.layer_norm(y:to("f32"), nil, nil, 1e-5):totable(), ln:totable())
      -- and close to the f32 result within the dtype's tolerance
      assert.tensor_near(y:to("f32"), hero.linear(rounded(x, dt), rounded(w, dt), rounded(b, dt)),
        helper.tolerance[dt])
    end
    assert.is_nil(amp.autocast_dtype())
  end)

  it("leaves f64 alone, nests, and restores the state after an error", function()
    local x = hero.randn({3, 4}, {dtype = "f64"})
    local w = hero.randn({2, 4}, {dtype = "f64"})
    assert.equal("f64", amp.autocast("bf16", hero.linear, x, w):dtype())
    amp.autocast("f16", function()
      assert.equal("f16", amp.autocast_dtype())
      amp.autocast("bf16", function() assert.equal("bf16", amp.autocast_dtype()) end)
      assert.equal("f16", amp.autocast_dtype())
      amp.autocast(nil, function()
        assert.is_nil(amp.autocast_dtype())
        assert.equal("f32", hero.linear(hero.ones(1, 4), hero.ones(2, 4)):dtype())
      end)
      assert.equal("f16", amp.autocast_dtype())
    end)
    helper.assert_error_contains(function()
      amp.autocast("bf16", function() error("inside autocast") end)
    end, "inside autocast")
    assert.is_nil(amp.autocast_dtype())
    helper.assert_error_contains(function() amp.autocast("f32", function() end) end, "must be 'bf16', 'f16' or nil")
  end)

  it("casts half weights and biases of layer_norm up to f32 too (a model converted to bf16)", function()
    local g = hero.Generator(4)
    local x = hero.randn({3, 8}, {generator = g}):to("bf16")
    local w = (hero.randn({8}, {generator = g}) * 0.1 + 1):to("bf16"):requires_grad_()
    local b = (hero.randn({8}, {generator = g}) * 0.1):to("bf16"):requires_grad_()
    local r = hero.randn({3, 8}, {generator = g}):to("bf16")
    for _, dt in ipairs {"bf16", "f16"} do
      local y = amp.autocast(dt, hero.layer_norm, x, w, b, 1e-5)
      assert.equal("f32", y:dtype())
      assert.same(hero.layer_norm(x:to("f32"), w:to("f32"), b:to("f32"), 1e-5):totable(), y:totable())
      local z = amp.autocast(dt, hero.dropout_add_layer_norm, x, r, w, b, 1e-5, {dropout = 0})
      assert.same(hero.layer_norm(x:to("f32") + r:to("f32"), w:to("f32"), b:to("f32"), 1e-5):totable(), z:totable())
    end
    -- the gradients reach the half parameters in their dtype
    amp.autocast("bf16", hero.layer_norm, x, w, b, 1e-5):sum():backward()
    assert.equal("bf16", w.grad:dtype())
    assert.equal("bf16", b.grad:dtype())
    local ln = hero.nn.LayerNorm(8):to("bf16")
    assert.equal("f32", amp.autocast("bf16", function() return ln:forward(x) end):dtype())
  end)

  it("gives f32 parameters f32 gradients through the casts", function()
    local g = hero.Generator(5)
    local x = hero.randn({5, 6}, {generator = g})
    local w = hero.randn({3, 6}, {generator = g}):requires_grad_()
    local loss = amp.autocast("bf16", function()
      return hero.cross_entropy(hero.linear(x, w), hero.tensor({0, 1, 2, 1, 0}, {dtype = "i64"}))
    end)
    assert.equal("f32", loss:dtype())
    loss:backward()
    assert.equal("f32", w.grad:dtype())
    -- the same gradient as the explicit casts give
    local w2 = w:detach():clone():requires_grad_()
    local l2 = hero.cross_entropy(hero.linear(x:to("bf16"), w2:to("bf16")):to("f32"), hero.tensor({0, 1, 2, 1, 0},
      {dtype = "i64"}))
    l2:backward()
    assert.same(w2.grad:totable(), w.grad:totable())
  end)

  it("runs a HERO forward and backward (MLM, VSM) with losses close to f32", function()
    local dir = "spec/fixtures/hero-smoke"
    local c = hero.json.read_file(dir .. "/config.json")
    local m = hero.models.HeroForPretraining(c.model_config.pretrain, {vfeat_dim = c.constants.vfeat_dim,
      max_frm_seq_len = c.constants.max_frm_seq_len, vocab_pad = c.constants.vocab_pad_pretraining})
    m:load_checkpoint(hero.load(dir .. "/weights.safetensors"))
    m:evaluate()
    for _, task in ipairs {"mlm", "vsm"} do
      local batch = hero.load(dir .. "/batch_" .. task .. ".safetensors")
      local f = io.open(dir .. "/batch_" .. task .. ".json", "rb")
      if f then
        for k, v in pairs(hero.json.decode(f:read("a"))) do batch[k] = v end
        f:close()
      end
      local ref = m:forward(batch, task).loss:item()
      for _, p in ipairs(m:parameters()) do p.grad = nil end
      local out = amp.autocast("bf16", function() return m:forward(batch, task) end)
      assert.equal("f32", out.loss:dtype())
      local l = out.loss:item()
      assert.is_true(math.abs(l - ref) <= 0.05 * math.abs(ref) + 1e-3, string.format("%s: %g vs %g", task, l, ref))
      out.loss:backward()
      local n = 0
      for _, p in ipairs(m:parameters()) do
        if p.grad then
          assert.equal("f32", p.grad:dtype())
          n = n + 1
        end
      end
      assert.is_true(n > 10)
    end
  end)
end)
