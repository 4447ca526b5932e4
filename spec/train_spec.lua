local hero = require "hero"
local helper = require "spec_helper"
local json = hero.json
local train = hero.train

local dir = helper.fixture("hero-smoke")
local fx = helper.load_fixture("hero_smoke_batches.lua")
local cfg = fx.config
local batches = train.fixture_batches(dir)

local tmpdir
local saved_rng

setup(function()
  saved_rng = hero.get_rng_state()
  tmpdir = os.tmpname()
  os.remove(tmpdir)
  assert(os.execute('mkdir -p "' .. tmpdir .. '"'))
end)

teardown(function()
  hero.set_rng_state(saved_rng)
  if tmpdir and tmpdir:match("^/tmp/") then os.execute('rm -rf "' .. tmpdir .. '"') end
end)

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- The smoke model from the reference's initial weights; dropout p everywhere, drawn from `gen`.
local function model(p, gen, drop_svmr_prob)
  local m = hero.models.HeroForPretraining(cfg.model_config.pretrain, {
    vfeat_dim = cfg.constants.vfeat_dim, max_frm_seq_len = cfg.constants.max_frm_seq_len,
    vocab_pad = cfg.constants.vocab_pad_pretraining, lw_st_ed = 0.01, drop_svmr_prob = drop_svmr_prob or 0,
    generator = gen,
  })
  m:load_state_dict(hero.load(dir .. "/weights.safetensors"), {strict = false})
  train.set_dropout(m, p)
  return m
end

local function adamw(m)
  local oc = cfg.optimizer
  return hero.optim.AdamW(m:named_parameters(), {lr = oc.learning_rate, betas = oc.betas, eps = oc.eps,
    weight_decay = oc.weight_decay, no_decay = {"bias", "LayerNorm.bias", "LayerNorm.weight"}})
end

local function task_loaders(names)
  local t = {}
  for _, n in ipairs(names) do t[n] = train.CyclingLoader(batches[n]) end
  return t
end

--- An optimizer that only records what the trainer hands it (lr and gradients at step time).
local function recorder(m)
  local rec = {lrs = {}, grads = {}, norms = {}, state = {}}
  local params = m:named_parameters()
  function rec.set_lr(_, lr) rec.lr = lr end
  function rec.step()
    rec.lrs[#rec.lrs + 1] = rec.lr
    local g, list = {}, {}
    for _, p in ipairs(params) do
      if p[2].grad then
        g[p[1]] = p[2].grad:clone()
        list[#list + 1] = p[2].grad
      end
    end
    rec.grads[#rec.grads + 1] = g
    rec.norms[#rec.norms + 1] = hero.global_norm(list)
  end
  function rec.zero_grad()
    for _, p in ipairs(params) do if p[2].grad then hero.no_grad(function() p[2].grad:zero_() end) end end
  end
  function rec.state_dict() return {} end
  function rec.load_state_dict() end
  return rec
end

local function same_values(a, b)
  return table.concat(a:size(), "x") == table.concat(b:size(), "x") and a:eq(b):all():item()
end

local function assert_same_params(m1, m2)
  local p2 = {}
  for _, p in ipairs(m2:named_parameters()) do p2[p[1]] = p[2] end
  local n = 0
  for _, p in ipairs(m1:named_parameters()) do
    assert(same_values(p[2]:detach(), p2[p[1]]:detach()), p[1] .. " differs")
    n = n + 1
  end
  assert.is_true(n > 100)
end

local function dummy_tasks(names)
  local t = {}
  for _, n in ipairs(names) do t[n] = train.CyclingLoader {{name = n}} end
  return t
end

describe("MetaLoader", function()
  it("draws the same tasks for the same seed, other tasks for another seed", function()
    local function draws(seed)
      local meta = train.MetaLoader{tasks = dummy_tasks {"mlm", "fom", "vsm"}, generator = hero.Generator(seed)}
      local out = {}
      for i = 1, 40 do out[i] = (meta:next()) end
      return table.concat(out, " ")
    end
    assert.equal(draws(11), draws(11))
    assert.not_equal(draws(11), draws(12))
  end)

  it("follows the ratios (2, 2, 1, 2) over many draws", function()
    local names = {"mlm", "mfm-nce", "fom", "vsm"}
    local meta = train.MetaLoader{tasks = dummy_tasks(names), ratios = {mlm = 2, ["mfm-nce"] = 2, fom = 1, vsm = 2},
      order = names, seed = 77}
    assert.equal("mlm,mlm,mfm-nce,mfm-nce,fom,vsm,vsm", table.concat(meta.pool, ","))
    local n, count = 7000, {}
    for _ = 1, n do
      local task = meta:draw()
      count[task] = (count[task] or 0) + 1
    end
    for name, r in pairs {mlm = 2, ["mfm-nce"] = 2, fom = 1, vsm = 2} do
      local p = r / 7
      local sd = math.sqrt(n * p * (1 - p))
      assert(math.abs(count[name] - n * p) < 4 * sd, string.format("%s drawn %d times, expected %.0f +- %.0f",
        name, count[name], n * p, 4 * sd))
    end
  end)

  it("keeps one task for all accum micro-batches of an update and resumes its stream", function()
    local meta = train.MetaLoader{tasks = dummy_tasks {"a", "b", "c"}, accum = 3, seed = 5}
    local st
    local seq = {}
    for i = 1, 30 do
      if i == 13 then st = meta:state() end
      local task, batch, first = meta:next()
      assert.equal(task, batch.name)
      assert.equal((i - 1) % 3 == 0, first)
      if not first then assert.equal(seq[#seq], task) end
      seq[#seq + 1] = task
    end
    assert.is_true(#table.concat(seq):gsub("a", "") < 30) -- not all "a"
    local again = train.MetaLoader{tasks = dummy_tasks {"a", "b", "c"}, accum = 3, seed = 999}
    again:set_state(st)
    for i = 13, 30 do assert.equal(seq[i], (again:next())) end
  end)

  it("gives clear errors for bad input", function()
    helper.assert_error_contains(function()
      train.MetaLoader{tasks = dummy_tasks {"mlm", "fom"}, ratios = {mlm = 1, fom = 1, vsm = 2}}
    end, "ratio given for unknown task 'vsm'", "fom, mlm")
    helper.assert_error_contains(function()
      train.MetaLoader{tasks = dummy_tasks {"mlm", "fom"}, ratios = {mlm = 1}}
    end, "task 'fom' has no ratio")
    helper.assert_error_contains(function()
      train.MetaLoader{tasks = dummy_tasks {"mlm"}, ratios = {mlm = 1.5}}
    end, "ratio of task 'mlm' must be a positive integer")
    helper.assert_error_contains(function() train.MetaLoader{tasks = {mlm = {}}} end,
      "loader of task 'mlm' has no :next() method")
    helper.assert_error_contains(function() train.MetaLoader{tasks = dummy_tasks {"mlm"}, accum = 0} end,
      "accum must be a positive integer")
    helper.assert_error_contains(function() train.CyclingLoader {} end, "non-empty array of batches")
    local a = train.MetaLoader{tasks = dummy_tasks {"mlm", "fom"}}
    local b = train.MetaLoader{tasks = dummy_tasks {"mlm", "fom"}, ratios = {mlm = 2, fom = 1}}
    helper.assert_error_contains(function() b:set_state(a:state()) end, "task pool {fom,mlm}")
    helper.assert_error_contains(function() train.CyclingLoader({{}, {}}):set_state {pos = 3} end,
      "position 3 is outside 1..2")
  end)
end)

describe("MetaLoader:set_state", function()
  it("moves every task or none: a task refusing its state puts back those already moved", function()
    local C = train.CyclingLoader
    local function make()
      return train.MetaLoader{tasks = {fom = C {{1}, {2}, {3}}, vsm = C {{4}, {5}, {6}}}, seed = 1}
    end
    local a = make()
    for _ = 1, 4 do a:next() end
    local saved = a:state()
    local m = make()
    local before = hero.json.encode(m:state())
    saved.loaders.vsm.pos = 99
    helper.assert_error_contains(function() m:set_state(saved) end, "position 99 is outside")
    assert.equal(before, hero.json.encode(m:state()))
  end)
end)

describe("Trainer", function()
  it("steps without clipping when grad_norm is off, an inf gradient included (as the reference)", function()
    local w = hero.tensor({1, 2, 3}):requires_grad_()
    local v = hero.tensor({4, 5}):requires_grad_()
    local scale = hero.tensor {math.huge, 1, 1}
    local m = {
      forward = function() return {loss = (w * scale):sum() + v:sum()} end,
      named_parameters = function() return {{"w", w}, {"v", v}} end,
    }
    local opt = hero.optim.AdamW(m.named_parameters(), {lr = 0.1})
    local meta = train.MetaLoader{tasks = {a = train.CyclingLoader {{}}}}
    local tr = train.Trainer{model = m, optimizer = opt, loader = meta, lr = 0.1, total = 10, grad_norm = false,
      log = false, progress = false}
    local rec = tr:update() -- the clipping factor inf / inf was NaN, and AdamW refused it
    assert.equal(math.huge, rec.grad_norm)
    local got = w:totable()
    assert.is_true(got[1] ~= got[1])
    assert.is_true(got[2] < 2 and got[3] < 3)
    for _, x in ipairs(v:totable()) do assert.is_true(x == x and x < 5) end
  end)

  it("sums the gradients of the accum micro-batches (no division)", function()
    local m = model(0)
    local rec = recorder(m)
    local meta = train.MetaLoader{tasks = task_loaders {"mlm"}, accum = 2}
    local tr = train.Trainer{model = m, optimizer = rec, loader = meta, lr = 1e-3, warmup = 1, total = 10,
      grad_norm = false, progress = false}
    tr:train(1)
    -- the same two micro-batches, one backward each from no gradient
    local m2 = model(0)
    local sums, n = {}, 0
    for _, b in ipairs(batches.mlm) do
      for _, p in ipairs(m2:named_parameters()) do p[2].grad = nil end
      m2:forward(b, "mlm").loss:backward()
      for _, p in ipairs(m2:named_parameters()) do
        if p[2].grad then sums[p[1]] = sums[p[1]] and sums[p[1]] + p[2].grad or p[2].grad:clone() end
      end
    end
    for name, g in pairs(sums) do
      assert.is_not_nil(rec.grads[1][name], name)
      assert.tensor_near(rec.grads[1][name], g)
      n = n + 1
    end
    assert.is_true(n > 20)
  end)

  it("applies warmup-linear, clipping and the optimizer step in the reference's order", function()
    local m = model(0)
    local rec = recorder(m)
    local meta = train.MetaLoader{tasks = task_loaders {"mlm", "mfm-nce"}, accum = 2, seed = 3}
    local tr = train.Trainer{model = m, optimizer = rec, loader = meta, lr = 1e-3, warmup = 2, total = 5,
      grad_norm = 1.0, progress = false}
    local records = tr:train(5)
    local expected = {5e-4, 1e-3, 2e-3 / 3, 1e-3 / 3, 1e-8}
    for s = 1, 5 do
      assert.equal(s, records[s].step)
      assert.is_true(math.abs(records[s].lr - expected[s]) < 1e-15)
      assert.equal(records[s].lr, rec.lrs[s])
      -- clipped to norm 1 (scale 1 / (norm + 1e-6)) whenever the norm was above 1
      assert.is_true(records[s].grad_norm > 1)
      assert.is_true(math.abs(rec.norms[s] - records[s].grad_norm / (records[s].grad_norm + 1e-6)) < 1e-5)
    end
    assert.equal(5, tr.global_step)
  end)

  it("reproduces the reference's three AdamW updates through MetaLoader and Trainer", function()
    local m = model(0)
    local oc = cfg.optimizer
    -- a loader that serves the reference's task sequence, two micro-batches each
    local seq = oc.tasks_per_update
    local loaders = task_loaders {"mlm", "mfm-nce", "vsm"}
    local meta = {accum = 2, micro = 0}
    function meta.next(self)
      local task = seq[self.micro // 2 + 1]
      local first = self.micro % 2 == 0
      self.micro = self.micro + 1
      return task, loaders[task]:next(), first
    end
    function meta.state(self) return {micro = self.micro} end
    function meta.set_state(self, s) self.micro = s.micro end
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = oc.learning_rate,
      warmup = oc.warmup_steps, total = oc.num_train_steps, grad_norm = oc.grad_norm, progress = false}
    local records = tr:train(3)
    for s = 1, 3 do
      assert.equal(seq[s], records[s].task)
      assert.is_true(math.abs(records[s].lr - oc.trace[s].lr) < 1e-12)
      assert.is_true(math.abs(records[s].grad_norm - oc.trace[s].grad_norm_before_clip) < 1e-4 *
        oc.trace[s].grad_norm_before_clip)
    end
    local expected = hero.load(dir .. "/params_after_step3.safetensors")
    for _, p in ipairs(m:named_parameters()) do
      if expected[p[1]] then
        local ok, msg = helper.parity(p[2]:detach(), expected[p[1]], "params")
        assert(ok, p[1] .. ": " .. msg)
      end
    end
  end)

  it("stops the run when a log line or a TensorBoard event cannot be written (a full disk)", function()
    local out = tmpdir .. "/disk_full"
    local m = model(0)
    local meta = train.MetaLoader{tasks = task_loaders {"mlm"}, accum = 1, seed = 8}
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      out_dir = out, progress = false}
    assert(os.execute("mkdir -p '" .. out .. "' && ln -s /dev/full '" .. out .. "/log.jsonl'"))
    -- /dev/full fails every write with ENOSPC, as a full disk does
    helper.assert_error_contains(function() tr:train(1) end, "log.jsonl failed", "No space left on device")
  end)

  it("writes log.jsonl lines with every field, validation results and checkpoints that reload exactly", function()
    local out = tmpdir .. "/log"
    local m = model(0.1, hero.Generator(4))
    local meta = train.MetaLoader{tasks = task_loaders {"mlm", "fom", "vsm"}, accum = 2, seed = 8}
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      valid_every = 2, valid = {mlm = batches.mlm, fom = train.CyclingLoader(batches.fom)}, save_every = 2,
      out_dir = out, progress = false}
    tr:train(3)
    local lines = {}
    for line in read(out .. "/log.jsonl"):gmatch("[^\n]+") do lines[#lines + 1] = json.decode(line) end
    assert.equal(3, #lines)
    for i, r in ipairs(lines) do
      assert.equal(i, r.step)
      assert.is_truthy(({mlm = true, fom = true, vsm = true})[r.task])
      for _, k in ipairs {"loss", "lr", "grad_norm", "seconds", "tokens_per_s"} do
        assert.equal("number", type(r[k]), k)
      end
      assert.equal(2, #r.micro_losses)
    end
    assert.is_nil(lines[1].valid)
    assert.equal("number", type(lines[2].valid.mlm))
    assert.equal("number", type(lines[2].valid.fom))
    assert.is_nil(lines[3].valid) -- 3 is neither a multiple of 2 nor the schedule's end
    assert.is_true(m.training) -- back in training mode after validation
    -- checkpoints at 2 and at the end (3); latest names 3
    assert.equal("3\n", read(out .. "/ckpt/latest"))
    for _, n in ipairs {2, 3} do
      assert.is_not_nil(read(string.format("%s/ckpt/step_%d.safetensors", out, n)))
      assert.is_not_nil(read(string.format("%s/ckpt/train_state_%d.safetensors", out, n)))
    end
    -- the model file has the reference's key names and loads back bit for bit
    local sd = hero.load(out .. "/ckpt/step_3.safetensors")
    for k in pairs(hero.load(dir .. "/weights.safetensors")) do assert.is_not_nil(sd[k], k) end
    local m2 = model(0)
    m2:load_state_dict(sd)
    assert_same_params(m, m2)
  end)

  it("validates once more at the schedule's last update when it is not a multiple of valid_every", function()
    local m = model(0.1, hero.Generator(4))
    local meta = train.MetaLoader{tasks = task_loaders {"mlm", "fom"}, accum = 1, seed = 8}
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 5,
      valid_every = 2, valid = {mlm = batches.mlm}, progress = false}
    local recs = tr:train(5)
    local validated = {}
    for _, r in ipairs(recs) do
      if r.valid then validated[#validated + 1] = r.step end
    end
    assert.same({2, 4, 5}, validated)
    assert.equal("number", type(recs[5].valid.mlm))
  end)

  it("logs VSM's parts as pretrain.py does (each divided by its weight, averaged over micro-batches)", function()
    local m = model(0, hero.Generator(4))
    local meta = train.MetaLoader{tasks = task_loaders {"vsm"}, accum = 2, seed = 8}
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      progress = false}
    local r = tr:train(1)[1]
    assert.is_table(r.parts)
    for _, k in ipairs {"st_ed", "neg_ctx", "neg_q"} do assert.is_number(r.parts[k], k) end
    -- the loss is the weighted sum of its parts (lw_st_ed 0.01, lw_neg 8 and 8)
    assert.near(r.loss, 0.01 * r.parts.st_ed + 8 * (r.parts.neg_ctx + r.parts.neg_q), 1e-5 * math.abs(r.loss))
    -- a task without parts logs none
    local plain = train.Trainer{model = m, optimizer = adamw(m), progress = false, lr = 1e-3, warmup = 1, total = 10,
      loader = train.MetaLoader{tasks = task_loaders {"mlm"}, accum = 1, seed = 8}}
    assert.is_nil(plain:train(1)[1].parts)
  end)

  it("logs the reference's running means (RunningMeter, 0.99) of every task's micro-batch losses", function()
    local m = model(0, hero.Generator(4))
    local meta = train.MetaLoader{tasks = task_loaders {"mlm", "fom"}, ratios = {mlm = 1, fom = 1}, accum = 2,
      generator = hero.Generator(5)}
    local out = tmpdir .. "/running"
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      progress = false, out_dir = out}
    local recs = tr:train(6)
    -- by hand: the first micro-batch loss as it is, then 0.99 old + 0.01 new, per task
    local want = {}
    for _, r in ipairs(recs) do
      for _, l in ipairs(r.micro_losses) do
        want[r.task] = want[r.task] == nil and l or l * 0.01 + want[r.task] * 0.99
      end
      for task, v in pairs(want) do assert.near(v, r.running[task], 1e-12, task) end
    end
    -- TensorBoard: loss/<task> is the running mean (every task seen, at every step), loss_update/<task>
    -- the update's own mean
    local pts = require("hero.tensorboard").read_run(out .. "/tensorboard")
    local at = {}
    for _, p in ipairs(pts) do at[p.tag .. "@" .. p.step] = p.value end
    for i, r in ipairs(recs) do
      assert.near(r.loss, at["loss_update/" .. r.task .. "@" .. i], 1e-6)
      for task, v in pairs(r.running) do assert.near(v, at["loss/" .. task .. "@" .. i], 1e-6) end
    end
  end)

  it("gives no ranking loss (NaN, written as null) when no query was validated, as the other tasks", function()
    -- every validation video unreadable gave VSM losses of 0 beside the other tasks' nulls
    local PV = require "hero.train.pretrain_valid"
    local r = PV.validators{lw_st_ed = 0.01, lw_neg_ctx = 8, lw_neg_q = 8}.vsm.finish({})
    for _, k in ipairs {"loss_overall", "loss_st_ed", "loss_neg_ctx", "loss_neg_q"} do
      assert.is_true(r[k] ~= r[k], k)
    end
    assert.is_nil(PV.ranking_validator({st_ed = false}, nil).finish({}).loss_st_ed)
  end)

  it("validates with the reference's metrics per task (pretrain.py's validate_*), summed over batches", function()
    local PV = require "hero.train.pretrain_valid"
    local m = model(0, hero.Generator(4))
    local valid = {}
    for _, t in ipairs {"mlm", "mffr", "mfm-nce", "fom", "vsm"} do valid[t .. "_tv_all"] = {batches[t][1]} end
    local meta = train.MetaLoader{tasks = task_loaders {"mlm"}, accum = 1, seed = 8}
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      valid = valid, progress = false, validators = PV.validators{lw_st_ed = 0.01, lw_neg_ctx = 8, lw_neg_q = 8}}
    local r = tr:validate()
    assert.is_true(m.training)
    -- one batch per task: the metrics are that batch's, computed here directly
    m:evaluate()
    local b = batches.mlm[1]
    local mlm = hero.no_grad(function() return m:forward_mlm(b) end)
    assert.near(mlm.loss:item(), r.mlm_tv_all.loss, 1e-5)
    local _, pred = mlm.mlm_logits:max(2)
    assert.near(pred:eq(b.txt_labels):float():mean():item(), r.mlm_tv_all.acc, 1e-12)
    local fom = hero.no_grad(function() return m:forward_fom(batches.fom[1]) end)
    assert.near(fom.loss:item(), r.fom_tv_all.loss, 1e-5)
    assert.is_true(r.fom_tv_all.acc >= 0 and r.fom_tv_all.acc <= 1)
    local mffr = hero.no_grad(function() return m:forward_mfm(batches.mffr[1], "mffr") end)
    assert.near(mffr.loss:item(), r.mffr_tv_all.loss, 1e-5)
    local p, t = mffr.pred_feat:double(), batches.mffr[1].feat_targets:double()
    local cos = ((p * t):sum(2) / (p:norm(2, 2) * t:norm(2, 2))):mean():item()
    assert.near(cos, r.mffr_tv_all.cosine, 1e-5)
    local nce = hero.no_grad(function() return m:forward_mfm(batches["mfm-nce"][1], "nce") end)
    assert.near(nce.loss:item(), r["mfm-nce_tv_all"].loss, 1e-4)
    for _, k in ipairs {"acc", "l2", "cosine"} do assert.is_number(r["mfm-nce_tv_all"][k]) end
    -- VSM in evaluation mode: the local loss on every query, each ranking loss per query, divided by
    -- the weights again: the means over the queries (all negatives: the training-mode values)
    local vb = batches.vsm[1]
    local vs = hero.no_grad(function() return m:forward_vsm(vb, {evaluate = true}) end)
    local nq = vb.q_vidx:numel()
    assert.equal(nq, vs.loss_neg_ctx:numel())
    assert.near(vs.loss_st_ed:item() / nq / 0.01, r.vsm_tv_all.loss_st_ed, 1e-5)
    assert.near(vs.loss_neg_ctx:mean():item() / 8, r.vsm_tv_all.loss_neg_ctx, 1e-6)
    assert.near(vs.loss_neg_q:mean():item() / 8, r.vsm_tv_all.loss_neg_q, 1e-6)
    local train_mode = hero.no_grad(function() return m:forward_vsm(vb, {evaluate = false}) end)
    assert.near(train_mode.loss_neg_ctx:item() / 8, r.vsm_tv_all.loss_neg_ctx, 1e-6)
    -- evaluation mode without the option: the reference's `not self.training` values
    m:evaluate()
    local by_mode = hero.no_grad(function() return m:forward_vsm(vb) end)
    assert.same(vs.loss_neg_ctx:totable(), by_mode.loss_neg_ctx:totable())
    assert.equal(vs.loss_st_ed:item(), by_mode.loss_st_ed:item())
    assert.near(0.01 * r.vsm_tv_all.loss_st_ed + 8 * (r.vsm_tv_all.loss_neg_ctx + r.vsm_tv_all.loss_neg_q),
      r.vsm_tv_all.loss_overall, 1e-6)
    -- several batches: the sums are pooled (a mean per token, not per batch)
    local sum, n = 0, 0
    for _, bb in ipairs(batches.mlm) do
      local o = hero.no_grad(function() return m:forward_mlm(bb) end)
      sum, n = sum + o.loss_per_token:double():sum():item(), n + bb.txt_labels:numel()
    end
    assert.is_true(#batches.mlm >= 2)
    m:train()
    local pooled = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      valid = {mlm = batches.mlm}, progress = false, validators = PV.validators()}
    assert.near(sum / n, pooled:validate().mlm.loss, 1e-5)
    -- a task without a validator keeps the mean loss
    local plain = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      valid = {mlm = batches.mlm}, progress = false, validators = {fom = PV.validators().fom}}
    assert.equal("number", type(plain:validate().mlm))
  end)

  it("resumes bit for bit: N updates equal N/2, then N/2 in a new trainer, model and optimizer", function()
    local function setup_run(out, seeds)
      hero.manual_seed(seeds.default)
      local m = model(0.1, hero.Generator(seeds.dropout), 0.5)
      local meta = train.MetaLoader{tasks = task_loaders {"mlm", "mfm-nce", "fom", "vsm"},
        ratios = {mlm = 2, ["mfm-nce"] = 2, fom = 1, vsm = 2}, accum = 2, generator = hero.Generator(seeds.meta)}
      local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 2, total = 10,
        valid_every = 3, valid = {mlm = batches.mlm}, save_every = 100, out_dir = out, progress = false}
      return tr, m
    end
    local seeds = {default = 1, dropout = 2, meta = 3}
    local full, m_full = setup_run(tmpdir .. "/full", seeds)
    local rec_full = full:train(6)

    local first = setup_run(tmpdir .. "/resume", seeds)
    first:train(3)
    -- a fresh process: other seeds everywhere, all of which the checkpoint must override
    local second, m_second = setup_run(tmpdir .. "/resume", {default = 101, dropout = 102, meta = 103})
    assert.equal(3, second:resume(tmpdir .. "/resume"))
    local rec_second = second:train(3)
    assert_same_params(m_full, m_second)
    for i = 1, 3 do
      assert.equal(rec_full[i + 3].task, rec_second[i].task)
      assert.equal(rec_full[i + 3].loss, rec_second[i].loss)
    end
    -- dropout is really on (so the restored generator states matter): another dropout seed, other parameters
    local run_a, m_a = setup_run(tmpdir .. "/a", seeds)
    run_a:train(1)
    local run_b, m_b = setup_run(tmpdir .. "/b", {default = 1, dropout = 55, meta = 3})
    run_b:train(1)
    local p_b, differs = {}, false
    for _, p in ipairs(m_b:named_parameters()) do p_b[p[1]] = p[2] end
    for _, p in ipairs(m_a:named_parameters()) do
      if not same_values(p[2]:detach(), p_b[p[1]]:detach()) then differs = true end
    end
    assert.is_true(differs)
    -- the log of the resumed run holds each step once
    local steps = {}
    for line in read(tmpdir .. "/resume/log.jsonl"):gmatch("[^\n]+") do steps[#steps + 1] = json.decode(line).step end
    assert.same({1, 2, 3, 4, 5, 6}, steps)
  end)

  it("trains in mixed precision: bf16 autocast, f16 with a loss scaler per task, resumed bit for bit", function()
    local function setup_run(out, seeds, amp_dtype)
      hero.manual_seed(seeds.default)
      local m = model(0.1, hero.Generator(seeds.dropout), 0.5)
      local meta = train.MetaLoader{tasks = task_loaders {"mlm", "mfm-nce", "fom", "vsm"},
        ratios = {mlm = 2, ["mfm-nce"] = 2, fom = 1, vsm = 2}, accum = 2, generator = hero.Generator(seeds.meta)}
      local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 2, total = 10,
        save_every = 100, out_dir = out, progress = false, amp = amp_dtype}
      return tr, m
    end
    local seeds = {default = 1, dropout = 2, meta = 3}
    local f32_run = setup_run(tmpdir .. "/amp32", seeds)
    local rec32 = f32_run:train(2)
    local bf_run = setup_run(tmpdir .. "/ampbf", seeds, "bf16")
    local recbf = bf_run:train(2)
    for i = 1, 2 do
      assert.equal(rec32[i].task, recbf[i].task)
      assert.is_true(math.abs(recbf[i].loss - rec32[i].loss) <= 0.02 * math.abs(rec32[i].loss), "bf16 loss")
      assert.is_true(recbf[i].loss ~= rec32[i].loss) -- really computed in bf16
      assert.is_nil(recbf[i].loss_scale)
    end
    -- f16: each task's scaler starts at 2^16; an update whose gradients overflow is skipped and halves
    -- that task's scale only (here the first updates of fom, vsm and mfm-nce do, mlm's do not)
    local full, m_full = setup_run(tmpdir .. "/amp16", seeds, "f16")
    local rec = full:train(6)
    local rec32_6 = setup_run(tmpdir .. "/amp32b", seeds):train(6)
    local scale, skips, stepped = {}, 0, 0
    for i, r in ipairs(rec) do
      assert.equal(rec32_6[i].task, r.task)
      assert.equal(scale[r.task] or 65536, r.loss_scale, "step " .. i .. " " .. r.task)
      if r.skipped then
        skips = skips + 1
        scale[r.task] = r.loss_scale / 2
      else
        stepped = stepped + 1
        -- the gradients were unscaled before clipping: the norm is the true one, of f32's size (the
        -- parameters differ by the skipped updates; still scaled, it would be 2^15-2^16 times larger)
        local ratio = r.grad_norm / rec32_6[i].grad_norm
        assert.is_true(ratio > 0.5 and ratio < 2,
          string.format("step %d: f16 gradient norm %g, f32 %g", i, r.grad_norm, rec32_6[i].grad_norm))
      end
    end
    assert.is_true(skips > 0 and stepped > 0, "the run should both skip and step")
    for task, sc in pairs(full.scalers) do assert.equal(scale[task] or 65536, sc:get_scale(), task) end
    local first = setup_run(tmpdir .. "/amp16r", seeds, "f16")
    first:train(3)
    local second, m_second = setup_run(tmpdir .. "/amp16r", {default = 101, dropout = 102, meta = 103}, "f16")
    assert.equal(3, second:resume(tmpdir .. "/amp16r"))
    local rec_second = second:train(3)
    assert_same_params(m_full, m_second)
    for i = 1, 3 do
      assert.equal(rec[i + 3].loss, rec_second[i].loss)
      assert.equal(rec[i + 3].loss_scale, rec_second[i].loss_scale)
      assert.equal(rec[i + 3].skipped, rec_second[i].skipped)
    end
    helper.assert_error_contains(function() setup_run(tmpdir .. "/x", seeds, "f32") end,
      "opts.amp must be 'bf16', 'f16' or nil")
  end)

  it("leaves the previous checkpoint and latest intact when a save fails", function()
    local out = tmpdir .. "/fail"
    local m = model(0)
    local meta = train.MetaLoader{tasks = task_loaders {"mlm"}, accum = 1}
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      save_every = 2, out_dir = out, progress = false}
    tr:train(2)
    assert.equal("2\n", read(out .. "/ckpt/latest"))
    local before = read(out .. "/ckpt/train_state_2.safetensors")
    -- a directory where the next train state goes: the model file is written, the state is not
    assert(os.execute('mkdir -p "' .. out .. '/ckpt/train_state_4.safetensors"'))
    helper.assert_error_contains(function() tr:train(2) end, "saving the checkpoint of step 4 failed")
    assert.equal("2\n", read(out .. "/ckpt/latest"))
    assert.equal(before, read(out .. "/ckpt/train_state_2.safetensors"))
    local again = train.Trainer{model = model(0), optimizer = adamw(m), loader = train.MetaLoader{
      tasks = task_loaders {"mlm"}}, lr = 1e-3, warmup = 1, total = 10, out_dir = out, progress = false}
    assert.equal(2, again:resume())
    -- an out_dir below a regular file cannot be created
    local blocked = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      out_dir = out .. "/ckpt/latest/sub", progress = false}
    helper.assert_error_contains(function() blocked:save() end, "saving the checkpoint of step 0 failed",
      "cannot create the directory")
    assert.equal("2\n", read(out .. "/ckpt/latest"))
  end)

  it("gives clear errors for bad input", function()
    local m = model(0)
    local meta = train.MetaLoader{tasks = {mlm = train.CyclingLoader {{input_ids = batches.mlm[1].input_ids}}}}
    local tr = train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 1, total = 10,
      progress = false}
    helper.assert_error_contains(function() tr:train(1) end,
      "the batch of task 'mlm' (update 1, micro-batch 1) has no field 'position_ids'")
    helper.assert_error_contains(function()
      train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, warmup = 10, total = 10}
    end, "opts.warmup must be an integer in [0, total)")
    helper.assert_error_contains(function()
      train.Trainer{model = m, optimizer = adamw(m), loader = train.MetaLoader{tasks = dummy_tasks {"a"}, accum = 2},
        accum = 3, lr = 1e-3, total = 10}
    end, "opts.accum is 3 but the loader draws a task every 2 micro-batches")
    helper.assert_error_contains(function()
      train.Trainer{model = m, optimizer = adamw(m), loader = meta, lr = 1e-3, total = 10, save_every = 5}
    end, "save_every needs opts.out_dir")
    helper.assert_error_contains(function() tr:resume(tmpdir .. "/nowhere", 7) end,
      "step_7.safetensors' is missing")
    assert.is_nil(tr:resume(tmpdir .. "/nowhere"))
  end)
end)
