-- The CUDA backend as seen from a machine without a GPU (these run everywhere; the GPU parity
-- checks are in cuda_spec.lua, tagged #cuda). Also the loss scaler, whose logic is device-free.
local hero = require "hero"
local helper = require "spec_helper"

describe("hero.cuda without a device", function()
  it("reports the build and the devices consistently", function()
    assert.equal(hero.core.cuda_compiled, hero.cuda.compiled())
    assert.equal(hero.cuda.device_count() > 0, hero.cuda.available())
    assert.equal(hero.cuda.available(), hero.cuda.is_available())
    assert.equal("cuda:1", hero.cuda.device(1))
    assert.is_boolean(hero.cuda.allow_tf32())
  end)

  it("refuses CUDA tensors with a clear message and keeps working on the CPU", function()
    if hero.cuda.available() then return end -- the #cuda spec covers machines with a GPU
    local why = hero.cuda.compiled() and "no CUDA device is available" or "no CUDA backend"
    local t = hero.tensor {1, 2, 3}
    helper.assert_error_contains(function() return t:cuda() end, "cuda", why)
    helper.assert_error_contains(function() return t:cuda(1) end, why)
    helper.assert_error_contains(function() return t:to {device = "cuda:0"} end, "to", why)
    helper.assert_error_contains(function() return t:to("cuda") end, why)
    helper.assert_error_contains(function() return hero.zeros(2, {device = "cuda"}) end, "zeros", why)
    helper.assert_error_contains(function() return hero.cuda.memory_stats() end, "memory_stats", why)
    helper.assert_error_contains(function() return hero.cuda.device_name(0) end, "device_name", why)
    helper.assert_error_contains(function() return t:cuda("cpu") end, "expected a CUDA device")
    assert.equal(0, hero.cuda.empty_cache())
    hero.cuda.synchronize()
    -- nothing above broke the CPU side
    assert.same({2, 4, 6}, (t * 2):totable())
  end)

  it("moves between devices only when needed (cpu is a no-op)", function()
    local t = hero.tensor {{1, 2}, {3, 4}}
    assert.is_true(rawequal(t, t:cpu()))
    assert.is_true(rawequal(t, t:to {device = "cpu"}))
    assert.is_false(t:is_cuda())
    local d = t:to {device = "cpu", dtype = "f64"}
    assert.equal("f64", d:dtype())
    assert.same({{1, 2}, {3, 4}}, d:totable())
    -- the move is differentiable: gradients flow through a (no-op or casting) to
    local w = hero.tensor({1.5, -2}, {dtype = "f32"}):requires_grad_()
    local y = w:to {device = "cpu", dtype = "f64"}:mul(3):sum()
    y:backward()
    assert.tensor_near(w.grad, {3, 3})
    assert.equal("f32", w.grad:dtype())
  end)

  it("checks finiteness of lists of tensors", function()
    assert.is_true(hero.all_finite {hero.ones(3), hero.arange(4)})
    assert.is_true(hero.all_finite(hero.zeros(2, 2)))
    assert.is_true(hero.all_finite {})
    assert.is_false(hero.all_finite {hero.ones(2), hero.tensor {1, 1 / 0}})
    assert.is_false(hero.all_finite {hero.tensor({0 / 0}, {dtype = "bf16"})})
    assert.is_false(hero.cuda.all_finite(hero.tensor({{2, -1 / 0}, {1, 2}}, {dtype = "f64"}):t()))
    helper.assert_error_contains(function() return hero.all_finite {1} end, "all_finite", "hero.Tensor")
  end)
end)

describe("hero.amp.GradScaler", function()
  -- a one-parameter problem: loss = sum(w * x), so d loss / d w = x exactly
  local function problem()
    local w = hero.tensor({1, 2, 3}):requires_grad_()
    local x = hero.tensor {0.5, -1, 4}
    local stepped = 0
    local opt = {entries = {{name = "w", param = w}}, step = function() stepped = stepped + 1 end}
    return w, x, opt, function() return stepped end
  end

  it("scales the loss, unscales the gradients and steps", function()
    local scaler = hero.amp.GradScaler()
    assert.equal(65536, scaler:get_scale())
    local w, x, opt, stepped = problem()
    local loss = (w * x):sum()
    local scaled = scaler:scale(loss)
    assert.near(65536 * loss:item(), scaled:item(), 1e-3)
    scaled:backward()
    assert.tensor_near(w.grad, {0.5 * 65536, -65536, 4 * 65536})
    assert.is_true(scaler:step(opt))
    assert.tensor_near(w.grad, {0.5, -1, 4})
    assert.equal(1, stepped())
    scaler:update()
    assert.equal(65536, scaler:get_scale())
    assert.equal(1, scaler.growth_tracker)
  end)

  it("skips the step and halves the scale when a gradient overflows", function()
    local scaler = hero.amp.GradScaler {init_scale = 1024}
    local w, _, opt, stepped = problem()
    w.grad = hero.tensor {1, 1 / 0, 0}
    assert.is_false(scaler:step(opt))
    assert.equal(0, stepped())
    scaler:update()
    assert.equal(512, scaler:get_scale())
    assert.equal(0, scaler.growth_tracker)
    w.grad = hero.tensor {0 / 0, 1, 0}
    assert.is_false(scaler:step(opt))
    scaler:update()
    assert.equal(256, scaler:get_scale())
    assert.equal(2, scaler.steps_skipped)
  end)

  it("doubles the scale after growth_interval clean steps", function()
    local scaler = hero.amp.GradScaler {init_scale = 8, growth_interval = 3}
    local w, _, opt, stepped = problem()
    for i = 1, 3 do
      w.grad = hero.tensor {1, 2, 3}
      assert.is_true(scaler:step(opt))
      scaler:update()
      assert.equal(i < 3 and 8 or 16, scaler:get_scale())
    end
    assert.equal(3, stepped())
    -- an overflow resets the count of clean steps: two clean steps, an overflow, then it takes
    -- growth_interval clean steps again before the scale grows
    for _ = 1, 2 do
      w.grad = hero.tensor {1, 2, 3}
      scaler:step(opt)
      scaler:update()
    end
    assert.equal(2, scaler.growth_tracker)
    w.grad = hero.tensor {1, 2, 1 / 0}
    scaler:step(opt)
    scaler:update()
    assert.equal(8, scaler:get_scale())
    assert.equal(0, scaler.growth_tracker)
    for i = 1, 3 do
      w.grad = hero.tensor {1, 2, 3}
      scaler:step(opt)
      scaler:update()
      assert.equal(i < 3 and 8 or 16, scaler:get_scale())
    end
  end)

  it("unscales explicitly once per step (for gradient clipping) and accepts a parameter list", function()
    local scaler = hero.amp.GradScaler {init_scale = 4}
    local w = hero.tensor({1, 1}):requires_grad_()
    w.grad = hero.tensor {4, 8}
    scaler:unscale_ {w}
    assert.tensor_near(w.grad, {1, 2})
    helper.assert_error_contains(function() scaler:unscale_ {w} end, "already called")
    scaler:update()
    scaler:unscale_ {w}
    assert.tensor_near(w.grad, {0.25, 0.5})
  end)

  it("steps after unscale_ on a parameter list; a partly unscaled optimizer is an error", function()
    local w, _, opt, stepped = problem()
    local scaler = hero.amp.GradScaler {init_scale = 4}
    w.grad = hero.tensor {4, 8, 12}
    scaler:unscale_ {w}
    assert.is_true(scaler:step(opt))
    assert.equal(1, stepped())
    assert.tensor_near(w.grad, {1, 2, 3})
    scaler:update()
    local v = hero.tensor({1}):requires_grad_()
    local two = {entries = {{name = "w", param = w}, {name = "v", param = v}}, step = function() end}
    w.grad, v.grad = hero.tensor {4, 4, 4}, hero.tensor {4}
    scaler:unscale_ {w}
    helper.assert_error_contains(function() scaler:step(two) end, "GradScaler:step: 1 of this optimizer's 2")
    -- an overflow in a list-unscaled gradient skips the step
    scaler:update()
    w.grad = hero.tensor {1, 1 / 0, 1}
    scaler:unscale_ {w}
    assert.is_false(scaler:step(opt))
    assert.equal(1, stepped())
  end)

  it("does not count a step whose optimizer raised, which can be stepped again", function()
    local w = hero.tensor({1}):requires_grad_()
    local fail, calls = true, 0
    local opt = {params = {w}, step = function()
      calls = calls + 1
      if fail then error("optimizer failed") end
    end}
    local scaler = hero.amp.GradScaler {init_scale = 8, growth_interval = 1}
    w.grad = hero.tensor {8}
    helper.assert_error_contains(function() scaler:step(opt) end, "optimizer failed")
    scaler:update()
    assert.equal(8, scaler:get_scale()) -- not grown
    assert.equal(0, scaler.growth_tracker)
    w.grad = hero.tensor {8}
    helper.assert_error_contains(function() scaler:step(opt) end, "optimizer failed")
    fail = false
    assert.is_true(scaler:step(opt)) -- again, the gradients unscaled once
    assert.tensor_near(w.grad, {1})
    scaler:update()
    assert.equal(16, scaler:get_scale())
    assert.equal(3, calls)
  end)

  it("keeps the scale in f32 as torch does", function()
    -- torch.cuda.amp.GradScaler's scales for this pattern of clean (.) and overflowed (x) steps
    local function run(opts, pattern)
      local w = hero.tensor({1}):requires_grad_()
      local opt = {params = {w}, step = function() end}
      local scaler = hero.amp.GradScaler(opts)
      local out = {}
      for i = 1, #pattern do
        w.grad = hero.tensor {pattern:sub(i, i) == "x" and math.huge or 1}
        scaler:step(opt)
        scaler:update()
        out[i] = string.format("%.9g", scaler:get_scale())
      end
      return table.concat(out, " ")
    end
    assert.equal("3.29999995 5.61000013 1.68300009 1.68300009 2.8611002 0.858330071 0.858330071 0.257499039 "
      .. "0.257499039 0.437748373", run({init_scale = 3.3, growth_factor = 1.7, backoff_factor = 0.3,
        growth_interval = 2}, "..x..x.x.."))
    -- no growth past f32's largest finite value
    assert.equal("1.70141183e+38 1.70141183e+38", run({init_scale = 2 ^ 126, growth_interval = 1}, ".."))
    helper.assert_error_contains(function() hero.amp.GradScaler {init_scale = 1e39} end, "finite f32")
  end)

  it("refuses f16 gradients, as torch does", function()
    local w = hero.tensor({1, 2}, {dtype = "f16"}):requires_grad_()
    w.grad = hero.tensor({4, 8}, {dtype = "f16"})
    local scaler = hero.amp.GradScaler {init_scale = 4}
    helper.assert_error_contains(function() scaler:unscale_ {w} end, "parameter 1 has an f16 gradient")
    assert.same({4, 8}, w.grad:totable())
  end)

  it("round-trips its state, can be disabled, and checks its options", function()
    local scaler = hero.amp.GradScaler {init_scale = 32, growth_interval = 5}
    scaler.growth_tracker = 3
    local other = hero.amp.GradScaler()
    other:load_state_dict(scaler:state_dict())
    assert.equal(32, other:get_scale())
    assert.equal(3, other.growth_tracker)
    assert.equal(5, other.growth_interval)
    local off = hero.amp.GradScaler {enabled = false}
    -- as torch's: a disabled scaler's state is empty, and loading one into it changes nothing
    assert.same({}, off:state_dict())
    off:load_state_dict(scaler:state_dict())
    assert.equal(1, off:get_scale())
    helper.assert_error_contains(function() other:load_state_dict(off:state_dict()) end, "the state is empty")
    -- strings are refused, and shown quoted
    helper.assert_error_contains(function() hero.amp.GradScaler {growth_interval = "10"} end,
      'growth_interval must be a positive integer, got "10"')
    helper.assert_error_contains(function() other:load_state_dict {scale = 2, _growth_tracker = "3"} end,
      'got "3"')
    local _, x, opt, stepped = problem()
    assert.is_true(rawequal(x, off:scale(x)))
    assert.is_true(off:step(opt))
    assert.equal(1, stepped())
    assert.equal(1, off:get_scale())
    helper.assert_error_contains(function() hero.amp.GradScaler {init_scale = -1} end, "init_scale")
    helper.assert_error_contains(function() hero.amp.GradScaler {growth_factor = 0.5} end, "growth_factor")
    helper.assert_error_contains(function() hero.amp.GradScaler {backoff_factor = 2} end, "backoff_factor")
    helper.assert_error_contains(function() hero.amp.GradScaler {growth_interval = 0} end, "growth_interval")
  end)
end)
