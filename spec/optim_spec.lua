local hero = require "hero"
local optim = require "hero.optim"
local helper = require "spec_helper"

-- Reference values computed by hand-written float64 arithmetic of hero-spec §6.1 (in Lua doubles,
-- independently of the C kernel), compared on f64 parameters.
local function reference_adamw(p, g, steps, lr, b1, b2, eps, wd)
  local m, v = {}, {}
  for i = 1, #p do m[i], v[i] = 0, 0 end
  for t = 1, steps do
    local step_size = lr * math.sqrt(1 - b2 ^ t) / (1 - b1 ^ t)
    for i = 1, #p do
      m[i] = b1 * m[i] + (1 - b1) * g[i]
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
      p[i] = p[i] - step_size * m[i] / (math.sqrt(v[i]) + eps)
      p[i] = p[i] - lr * wd * p[i]
    end
  end
  return p
end

describe("optim", function()
  it("AdamW follows the reference update, with decay only where names allow it", function()
    local w = hero.tensor({0.5, -1.0, 2.0}, {dtype = "f64"}):requires_grad_()
    local b = hero.tensor({0.1, 0.2}, {dtype = "f64"}):requires_grad_()
    local opt = optim.AdamW({{"layer.weight", w}, {"layer.bias", b}},
      {lr = 1e-2, betas = {0.9, 0.98}, eps = 1e-6, weight_decay = 0.01, no_decay = {"bias"}})
    for _ = 1, 3 do
      w.grad = hero.tensor({0.3, -0.2, 0.05}, {dtype = "f64"})
      b.grad = hero.tensor({-1.0, 4.0}, {dtype = "f64"})
      opt:step()
    end
    local ew = reference_adamw({0.5, -1.0, 2.0}, {0.3, -0.2, 0.05}, 3, 1e-2, 0.9, 0.98, 1e-6, 0.01)
    local eb = reference_adamw({0.1, 0.2}, {-1.0, 4.0}, 3, 1e-2, 0.9, 0.98, 1e-6, 0)
    assert.tensor_near(w, ew)
    assert.tensor_near(b, eb)
    assert.equal(3, opt.state["layer.weight"].step)
  end)

  it("Adam and Adamax (the reference's optim = adam / adamax) give torch.optim's parameters", function()
    local fx = helper.load_fixture("optim.lua")
    assert.equal(8, #fx.cases)
    for _, c in ipairs(fx.cases) do
      local p = hero.tensor(fx.p0, {dtype = c.dtype}):requires_grad_()
      local cls = optim.by_config_name(c.optim)
      local opt = cls({{"layer.weight", p}}, {lr = fx.lr, betas = fx.betas, weight_decay = c.weight_decay})
      assert.equal(1e-8, opt.eps) -- torch's default: the reference passes only lr and betas
      for _, g in ipairs(fx.grads) do
        p.grad = hero.tensor(g, {dtype = c.dtype})
        opt:step()
      end
      local ok, why = helper.compare(p, c.params)
      assert(ok, string.format("%s %s weight_decay %g: %s", c.optim, c.dtype, c.weight_decay, tostring(why)))
    end
  end)

  it("Adamax keeps torch's name for its second moment, and each optimizer refuses another's state", function()
    local w = hero.tensor({1, -2, 3}):requires_grad_()
    local opt = optim.Adamax({{"w", w}}, {lr = 0.1})
    w.grad = hero.tensor({0.5, 0, -4})
    opt:step()
    local sd = opt:state_dict()
    assert.is_nil(sd.state.w.exp_avg_sq)
    -- exp_inf = max(beta2 * 0, |g| + eps)
    assert.tensor_near(sd.state.w.exp_inf, hero.tensor({0.5 + 1e-8, 1e-8, 4 + 1e-8}))
    local w2 = hero.tensor({1, -2, 3}):requires_grad_()
    local adamw = optim.AdamW({{"w", w2}}, {lr = 0.1})
    helper.assert_error_contains(function() adamw:load_state_dict(sd) end, "AdamW:load_state_dict",
      "exp_avg_sq of 'w' is missing")
    -- a restored Adamax goes on as the original does
    local w3 = w:detach():clone():requires_grad_()
    local again = optim.Adamax({{"w", w3}}, {lr = 0.1})
    again:load_state_dict(sd)
    w.grad, w3.grad = hero.tensor({1, -7, 1}), hero.tensor({1, -7, 1})
    opt:step()
    again:step()
    assert.same(w:totable(), w3:totable())
    assert.equal(2, again.state.w.step)
    helper.assert_error_contains(function() optim.Adam({}, {lr = -1}) end, "Adam: opts.lr must be a finite number >= 0")
    -- load_state_dict checks everything before it changes anything, and restores the settings too
    local before = opt:state_dict()
    local bad = {state = {w = {step = 1, exp_avg = hero.zeros(3), exp_inf = hero.zeros(4)}}}
    helper.assert_error_contains(function() opt:load_state_dict(bad) end, "exp_inf of 'w' has size 4")
    assert.same(before.state.w.exp_inf:totable(), opt:state_dict().state.w.exp_inf:totable())
    assert.equal(2, opt.state.w.step)
    helper.assert_error_contains(function() opt:load_state_dict(5) end,
      "Adamax:load_state_dict: expected the table state_dict() returned, got number")
    local tuned = optim.Adamax({{"w", hero.ones(3):requires_grad_()}}, {lr = 0.5, betas = {0.8, 0.9}, eps = 1e-3,
      weight_decay = 0.2})
    local fresh = optim.Adamax({{"w", hero.ones(3):requires_grad_()}}, {lr = 0.1})
    fresh:load_state_dict(tuned:state_dict())
    assert.same({0.5, 0.8, 0.9, 1e-3, 0.2}, {fresh.lr, fresh.beta1, fresh.beta2, fresh.eps, fresh.weight_decay})
    -- a freed parameter is an error, not a parameter without a gradient to skip
    local gone = hero.ones(2):requires_grad_()
    gone.grad = hero.ones(2)
    local with_gone = optim.AdamW({{"gone", gone}}, {lr = 0.1})
    gone:free()
    helper.assert_error_contains(function() with_gone:step() end, "AdamW:step: parameter 'gone' was freed")
    helper.assert_error_contains(function() return gone.grad end, "grad", "tensor was freed")
    helper.assert_error_contains(function() return gone.requires_grad end, "requires_grad", "tensor was freed")
    assert.is_nil(optim.by_config_name("sgd"))
  end)

  it("skips parameters without gradients and restores its state bit for bit", function()
    local w = hero.tensor({1, 2}):requires_grad_()
    local u = hero.tensor({3, 4}):requires_grad_()
    local opt = optim.AdamW({{"w", w}, {"u", u}}, {lr = 0.1})
    w.grad = hero.tensor({1, 1})
    opt:step()
    assert.same({3, 4}, u:totable())
    assert.is_nil(opt.state.u)
    local sd = opt:state_dict()
    local w2 = w:detach():clone():requires_grad_()
    local opt2 = optim.AdamW({{"w", w2}, {"u", u}}, {lr = 0.1})
    opt2:load_state_dict(sd)
    w.grad = hero.tensor({0.5, -0.5})
    w2.grad = hero.tensor({0.5, -0.5})
    opt:step()
    opt2:step()
    assert.same(w:totable(), w2:totable())
  end)

  it("gives a snapshot in state_dict: a state taken before a step resumes that moment exactly", function()
    local w = hero.tensor({1, 2, 3}):requires_grad_()
    local opt = optim.AdamW({{"w", w}}, {lr = 0.1})
    w.grad = hero.tensor {1, -1, 0.5}
    opt:step()
    local sd = opt:state_dict()
    local at = w:detach():clone()
    opt:step() -- training goes on; sd keeps step 1's moments with its count
    assert.equal(1, sd.state.w.step)
    assert.is_false(rawequal(sd.state.w.exp_avg, opt.state.w.exp_avg))
    local w2 = at:requires_grad_()
    local opt2 = optim.AdamW({{"w", w2}}, {lr = 0.1})
    opt2:load_state_dict(sd)
    w2.grad = hero.tensor {1, -1, 0.5}
    opt2:step()
    assert.same(w:totable(), w2:totable())
    -- torch's layout keys a plain list's parameters by their 0-based position
    local p = hero.tensor({1}):requires_grad_()
    local plain = optim.AdamW({p}, {lr = 0.1})
    plain:load_state_dict {state = {[0] = {step = 2, exp_avg = hero.tensor {0.5}, exp_avg_sq = hero.tensor {0.25}}}}
    assert.equal(2, plain.state["0"].step)
  end)

  it("prints its class and settings in the REPL, as the GradScaler does", function()
    local opt = optim.AdamW({{"w", hero.zeros(2):requires_grad_()}}, {lr = 1e-4, weight_decay = 0.01})
    assert.equal("AdamW(lr=0.0001, betas=(0.9, 0.999), eps=1e-06, weight_decay=0.01; 1 parameters, 0 with state)",
      tostring(opt))
    assert.truthy(tostring(hero.amp.GradScaler()):find("GradScaler(scale=65536, growth_factor=2", 1, true))
    assert.equal("GradScaler(disabled)", tostring(hero.amp.GradScaler {enabled = false}))
  end)

  it("clips a strided gradient with the numbers of a contiguous one", function()
    local g = hero.Generator(11)
    local base = hero.randn({16, 16}, {generator = g})
    local a = hero.zeros(16, 16):requires_grad_()
    local b = hero.zeros(16, 16):requires_grad_()
    a.grad = base:t() -- strided
    b.grad = base:t():contiguous()
    optim.clip_grad_norm({a}, 0.37)
    optim.clip_grad_norm({b}, 0.37)
    assert.same(b.grad:totable(), a.grad:totable())
  end)

  it("clips the global norm with the reference's formula", function()
    local a = hero.tensor({3, 0}):requires_grad_()
    local b = hero.tensor({0, 4}):requires_grad_()
    a.grad = hero.tensor({3, 0})
    b.grad = hero.tensor({0, 4})
    local norm = optim.clip_grad_norm({a, b}, 1.0)
    assert.near(5, norm, 1e-12)
    local s = 1 / (5 + 1e-6)
    assert.tensor_near(a.grad, {3 * s, 0})
    assert.tensor_near(b.grad, {0, 4 * s})
    assert.near(5, optim.clip_grad_norm({a, b}, 10) * (5 + 1e-6), 1e-4)
  end)

  it("computes the global norm of many tensors in chunks, the same for any thread count", function()
    hero.manual_seed(3)
    local ts = {}
    for _, n in ipairs {0, 1, 7, 65535, 65536, 65537, 200003} do
      ts[#ts + 1] = hero.randn(n)
      ts[#ts + 1] = hero.randn({n}, {dtype = "f64"})
    end
    ts[#ts + 1] = hero.randn(300, 41):t()          -- not contiguous: the strided loop
    ts[#ts + 1] = hero.randn(300, 41):narrow(2, 2, 37) -- rows contiguous, not the whole: its f32 rows loop
    ts[#ts + 1] = hero.randn({5, 6}, {dtype = "bf16"})
    local want = 0
    for _, t in ipairs(ts) do want = want + (t:double() * t:double()):sum():item() end
    want = math.sqrt(want)
    local threads = hero.get_num_threads()
    local got = {}
    for k, nt in ipairs {1, 2, 3} do
      hero.set_num_threads(nt)
      got[k] = hero.core.global_norm(ts)
    end
    hero.set_num_threads(threads)
    assert.near(want, got[1], 1e-12 * want)
    assert.equal(got[1], got[2])
    assert.equal(got[1], got[3])
  end)

  it("folds clipping into the AdamW pass with exactly the numbers of clipping first", function()
    -- clip then step (gradients scaled in place) against clip {apply = false} then step{grad_scale}
    for _, dt in ipairs {"f32", "f64"} do
      local function run(fused)
        local g = hero.Generator(11)
        local w = hero.randn({300}, {dtype = dt, generator = g}):requires_grad_()
        local b = hero.randn({7}, {dtype = dt, generator = g}):requires_grad_()
        local h = hero.randn({5}, {dtype = dt, generator = g}):requires_grad_() -- a bf16 gradient
        local opt = optim.AdamW({{"w", w}, {"b.bias", b}, {"h", h}}, {lr = 1e-2, betas = {0.9, 0.98}, eps = 1e-6,
          weight_decay = 0.01, no_decay = {"bias"}})
        local norms = {}
        for step = 1, 3 do
          w.grad = hero.randn({300}, {dtype = dt, generator = g}) * (3 * step)
          b.grad = hero.randn({7}, {dtype = dt, generator = g})
          h.grad = hero.randn({5}, {generator = g}):to("bf16")
          local params = {w, b, h}
          if fused then
            local norm, factor = optim.clip_grad_norm(params, 1.0, {apply = false})
            assert.is_true(factor < 1)
            opt:step {grad_scale = factor}
            norms[step] = norm
          else
            norms[step] = optim.clip_grad_norm(params, 1.0)
            opt:step()
          end
        end
        return {w, b, h, opt.state.w.exp_avg, opt.state.w.exp_avg_sq}, norms
      end
      local a, na = run(false)
      local f, nf = run(true)
      assert.same(na, nf)
      for i = 1, #a do assert.same(a[i]:totable(), f[i]:totable(), dt .. " tensor " .. i) end
    end
    helper.assert_error_contains(function()
      local p = hero.zeros(2):requires_grad_()
      p.grad = hero.ones(2)
      optim.AdamW({{"p", p}}, {lr = 1}):step {grad_scale = 0 / 0}
    end, "grad_scale must be a finite number >= 0")
    local p = hero.zeros(2):requires_grad_()
    p.grad = hero.ones(2)
    local norm, factor = optim.clip_grad_norm({p}, 10)
    assert.equal(1, factor)
    assert.near(math.sqrt(2), norm, 1e-12)
  end)

  it("computes the warmup-linear schedule from step 1", function()
    assert.near(3e-5 * 1 / 10, optim.warmup_linear(3e-5, 1, 10, 100), 1e-20)
    assert.near(3e-5, optim.warmup_linear(3e-5, 10, 10, 100), 1e-20)
    assert.near(3e-5 * 40 / 90, optim.warmup_linear(3e-5, 60, 10, 100), 1e-20)
    assert.equal(1e-8, optim.warmup_linear(3e-5, 100, 10, 100))
  end)

  it("rejects bad options and states", function()
    helper.assert_error_contains(function() optim.AdamW({}, {}) end, "lr must be a number")
    -- the reference's config gives lr_mul as one number; here it is per group
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, lr_mul = 10.0}) end,
      "lr_mul must be a table {[group] = multiplier}")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, lr_mul = {head = "10"}}) end,
      'lr_mul[head] must be a finite number >= 0, got "10"')
    -- without opts.group the groups are decay and no_decay: another key would be ignored
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, lr_mul = {head = 10}}) end,
      "names the group 'head'")
    -- infinite rates, decays and multipliers are refused as set_lr refuses them
    helper.assert_error_contains(function() optim.AdamW({}, {lr = math.huge}) end,
      "opts.lr must be a finite number")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, weight_decay = math.huge}) end,
      "opts.weight_decay must be a finite number")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, weight_decay = "0.01"}) end, 'got "0.01"')
    local w = hero.tensor({1, 2}):requires_grad_()
    local opt = optim.AdamW({{"w", w}}, {lr = 0.1})
    helper.assert_error_contains(function()
      opt:load_state_dict({state = {x = {step = 1, exp_avg = hero.zeros(2), exp_avg_sq = hero.zeros(2)}}})
    end, "unknown parameter 'x'")
    -- as torch.optim.AdamW: negative or NaN rates, eps and decay; betas outside [0, 1)
    helper.assert_error_contains(function() optim.AdamW({}, {lr = -1}) end,
      "opts.lr must be a finite number >= 0, got -1")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, eps = "x"}) end,
      "opts.eps must be a finite number >= 0")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, weight_decay = 0 / 0}) end, "weight_decay")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, betas = {1.5, 0.9}}) end,
      "betas must be in [0, 1)")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, betas = 0.9}) end, "betas must be a pair")
    helper.assert_error_contains(function() optim.AdamW(nil, {lr = 1}) end, "params must be named_parameters()")
    assert.is_table(optim.AdamW({}, {lr = 0, eps = 0, weight_decay = 0}))
    -- NaN betas, negative or NaN multipliers (ascent), a string for the no-decay list, a group that is
    -- not a function, two parameters under one name (they would share their moments)
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, betas = {0 / 0, 0.9}}) end,
      "betas must be in [0, 1)")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, lr_mul = {decay = -1}}) end,
      "lr_mul[decay] must be a finite number >= 0, got -1")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, lr_mul = {decay = 0 / 0}}) end, "lr_mul[decay]")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, no_decay = "bias"}) end,
      "opts.no_decay must be a list of name substrings")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, no_decay = {"bias", 3}}) end,
      "opts.no_decay[2] must be a string")
    helper.assert_error_contains(function() optim.AdamW({}, {lr = 1, group = "g"}) end,
      "opts.group must be a function")
    helper.assert_error_contains(function() optim.AdamW({{"w", w}, {"w", hero.ones(2)}}, {lr = 1}) end,
      "parameter entries 1 and 2 are both named 'w'")
    -- a state whose step count is not a count (a negative one made every parameter NaN)
    for _, step in ipairs {-1, -1.0, 0.5, 0 / 0, math.huge, "3"} do
      helper.assert_error_contains(function()
        opt:load_state_dict({state = {w = {step = step, exp_avg = hero.zeros(2), exp_avg_sq = hero.zeros(2)}}})
      end, "the state of 'w' lacks its step count")
    end
    helper.assert_error_contains(function() opt:load_state_dict({betas = {0 / 0, 0.9}}) end, "sd.betas")
    -- arguments of the wrong kind are named, not met by a Lua error inside
    helper.assert_error_contains(function() optim.AdamW({w}, 0.1) end, "AdamW: opts must be a table")
    helper.assert_error_contains(function() opt:step(5) end, "AdamW:step: the argument must be an options table")
    helper.assert_error_contains(function() optim.clip_grad_norm({w, 5}, 1) end,
      "clip_grad_norm: params[2] must be a tensor")
  end)

  it("names the bad argument of clip_grad_norm and warmup_linear", function()
    helper.assert_error_contains(function() optim.clip_grad_norm(nil, 1) end, "clip_grad_norm: params must be")
    helper.assert_error_contains(function() optim.clip_grad_norm({}, "2") end, "max_norm must be a number")
    helper.assert_error_contains(function() optim.warmup_linear(nil, 1, 10, 100) end, "argument #1 (base_lr)")
    helper.assert_error_contains(function() optim.warmup_linear(1, 1, 10) end, "argument #4 (total)")
    -- the reference divides by total - warmup there (ZeroDivisionError); NaN would reach the step
    helper.assert_error_contains(function() optim.warmup_linear(1, 10, 10, 10) end, "total = warmup")
    assert.near(0.5, optim.warmup_linear(1, 5, 10, 10), 1e-15)
  end)
end)

describe("optimizer and loss-scaling API against torch's", function()
  it("GradScaler keeps its unscale/step/overflow state per optimizer, as torch.cuda.amp.GradScaler", function()
    local amp = hero.amp
    local a, b = hero.tensor({1.0}):requires_grad_(), hero.tensor({1.0}):requires_grad_()
    local oa = optim.AdamW({a}, {lr = 0.1})
    local ob = optim.AdamW({b}, {lr = 0.1})
    local sc = amp.GradScaler {init_scale = 1024}
    sc:scale((a * 2):sum() + (b * 3):sum()):backward()
    assert.is_true(sc:step(oa))
    assert.is_true(sc:step(ob))
    assert.same({{2}, {3}}, {a.grad:totable(), b.grad:totable()}) -- both unscaled
    helper.assert_error_contains(function() sc:step(oa) end, "already called for this optimizer")
    sc:update()
    -- an overflow in one optimizer's gradients (the second's, then the first's): it skips, the other
    -- steps, and the scale backs off either way
    for _, inf_in_b in ipairs {true, false} do
      oa:zero_grad()
      ob:zero_grad()
      local s0 = sc:get_scale()
      a.grad = hero.tensor {inf_in_b and s0 or math.huge}
      b.grad = hero.tensor {inf_in_b and math.huge or s0}
      local before_a, before_b = a:item(), b:item()
      assert.equal(inf_in_b, sc:step(oa)) -- a steps when the overflow is in b
      assert.equal(not inf_in_b, sc:step(ob))
      assert.is_true((inf_in_b and b or a):item() == (inf_in_b and before_b or before_a))
      sc:update()
      assert.equal(s0 / 2, sc:get_scale())
    end
    helper.assert_error_contains(function() sc:update() end, "no inf checks were recorded")
    assert.equal(256, sc:get_scale())
    -- update(new_scale) keeps the count of clean updates; the state has torch's key
    local g = amp.GradScaler {init_scale = 8, growth_interval = 2}
    a.grad = hero.tensor {8.0}
    g:step(oa)
    g:update()
    g:update(16)
    a.grad = hero.tensor {16.0}
    g:step(oa)
    g:update()
    assert.equal(32, g:get_scale())
    local sd = g:state_dict()
    assert.equal(0, sd._growth_tracker)
    local h = amp.GradScaler()
    h:load_state_dict {scale = 4.0, growth_factor = 2.0, backoff_factor = 0.5, growth_interval = 9, _growth_tracker = 3}
    assert.equal(3, h.growth_tracker)
  end)

  it("clip_grad_norm takes torch's norm_type (2 or inf, also positional), optimizers a list of tensors", function()
    local p = hero.tensor({0.0, 0.0}):requires_grad_()
    p.grad = hero.tensor {3.0, 4.0}
    local norm, factor = optim.clip_grad_norm({p}, 3.0, math.huge)
    assert.equal(4, norm)
    assert.near(0.75, factor, 1e-6)
    assert.near(3.0, p.grad:totable()[2], 1e-5)
    helper.assert_error_contains(function() optim.clip_grad_norm({p}, 1.0, {norm_type = 1}) end,
      "norm_type must be 2 or math.huge")
    local m = hero.nn.Linear(2, 2)
    local o = optim.Adam(m:parameters(), {lr = 0.1})
    assert.same({"0", "1"}, {o.entries[1].name, o.entries[2].name})
    helper.assert_error_contains(function() optim.Adam(m:parameters(), {lr = 0.1, amsgrad = true}) end,
      "unknown option 'amsgrad'")
  end)
end)

describe("optimizer settings changed after construction", function()
  it("are checked as the constructor checks them", function()
    local p = hero.tensor({1, 2}):requires_grad_()
    local o = optim.AdamW({p}, {lr = 0.1})
    -- a negative rate ascended, NaN spread to every weight, a string failed inside the library
    helper.assert_error_contains(function() o:set_lr(-5) end,
      "AdamW:set_lr: the rate must be a finite number >= 0, got -5")
    helper.assert_error_contains(function() o:set_lr(0 / 0) end, "finite number >= 0")
    helper.assert_error_contains(function() o:set_lr("abc") end, 'got "abc"')
    helper.assert_error_contains(function() o:step {grad_scal = 0} end, "AdamW:step: unknown option 'grad_scal'")
    helper.assert_error_contains(function() o:step {grad_scale = math.huge} end, "got inf")
    helper.assert_error_contains(function() o:step {grad_scale = -1} end, "got -1")
    -- one tensor twice was updated twice a step; a computed tensor never had a gradient
    helper.assert_error_contains(function() optim.AdamW({p, p}, {lr = 0.1}) end,
      "parameters '0' and '1' are the same tensor")
    helper.assert_error_contains(function() optim.AdamW({{"a", p}, {"b", p}}, {lr = 0.1}) end, "'a' and 'b'")
    helper.assert_error_contains(function() optim.Adam({p * 2}, {lr = 0.1}) end, "parameter '0' is not a leaf tensor")
  end)

  it("clip_grad_norm's infinity norm of NaN gradients is NaN, as the 2-norm; a misspelt option is refused", function()
    local p = hero.tensor({1, 2, 3}):requires_grad_()
    p.grad = hero.tensor {0 / 0, 5, 1}
    local norm, scale = optim.clip_grad_norm({p}, 1, math.huge)
    assert.is_true(norm ~= norm and scale ~= scale)
    p.grad = hero.tensor {1, 0 / 0, 5}
    assert.is_true(optim.clip_grad_norm({p}, 1, {norm_type = math.huge, apply = false}) ~= 0)
    p.grad = hero.tensor {3, -4, 1}
    assert.equal(4, (optim.clip_grad_norm({p}, 10, math.huge)))
    helper.assert_error_contains(function() optim.clip_grad_norm({p}, 1, {norm_tpye = 2}) end,
      "clip_grad_norm: unknown option 'norm_tpye' (norm_type, apply)")
  end)
end)
