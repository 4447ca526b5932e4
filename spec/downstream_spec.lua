local hero = require "hero"
local helper = require "spec_helper"
local fx = helper.load_fixture("hero_smoke_batches.lua")
local cfg = fx.config
local R = hero.eval.retrieval

local function load(name) return hero.load(helper.fixture("hero-smoke/" .. name .. ".safetensors")) end

local function batch(name)
  local b = load(name)
  for k, v in pairs(fx[name] or {}) do b[k] = v end
  return b
end

local function base_opts(extra)
  local o = {vfeat_dim = cfg.constants.vfeat_dim, max_frm_seq_len = cfg.constants.max_frm_seq_len}
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- A fine-tuning model as the fixtures were made: the smoke weights, the heads' initial values,
-- every dropout p = 0, training mode.
local function vcmr_model(extra)
  local t = cfg.downstream.vcmr.train
  local m = hero.models.HeroForVcmr(cfg.model_config.finetune, base_opts(extra or {drop_svmr_prob = 0,
    hard_negative = {pool_size = t.hard_pool_size, weight = t.hard_neg_weight}}))
  local report = m:load_checkpoint(load("weights"))
  assert.same({}, report.missing)
  assert.same({}, report.unexpected)
  return m:set_dropout(0)
end

local function head_model(cls, head)
  local m = cls(cfg.model_config.finetune, base_opts())
  local report = m:load_checkpoint(load("weights"))
  assert.is_true(#report.missing > 0) -- the heads are not in the pre-trained weights
  assert.is_true(#report.unexpected > 0) -- q_feat_attn / video_* of the pre-training model are ignored
  report = m:load_checkpoint(load(head .. "_head_init"))
  assert.same({}, report.unexpected)
  return m:set_dropout(0)
end

local function check_outputs(out, expected)
  local n = 0
  for name, e in pairs(expected) do
    assert.is_not_nil(out[name], "missing output " .. name)
    local ok, msg = helper.parity(out[name]:detach(), e, "activations")
    assert(ok, name .. ": " .. msg)
    n = n + 1
  end
  assert.is_true(n > 0)
end

local function check_grads(m, file)
  local expected = load(file)
  local info = cfg.parity.per_file[file .. ".safetensors"]
  local per_rtol = cfg.parity.recommended.per_tensor_rtol[file .. ".safetensors"] or {}
  local near_zero = {}
  for _, n in ipairs(info.near_zero_tensors) do near_zero[n] = true end
  local own = {}
  for _, p in ipairs(m:named_parameters()) do own[p[1]] = p[2] end
  local checked = 0
  for name, e in pairs(expected) do
    assert.is_not_nil(own[name], "no parameter " .. name)
    local g = own[name].grad
    assert.is_not_nil(g, name .. " has no gradient")
    local ok, msg
    if near_zero[name] then
      ok, msg = helper.parity(g, e, "gradients", info.file_scale)
    else
      local rtol = per_rtol[name] or helper.parity_tolerance.gradients.rtol
      local diff = (g:double() - e:double()):abs():max():item()
      local bound = rtol * e:double():abs():max():item()
      ok, msg = diff <= bound, string.format("max |diff| %.3g exceeds %.3g", diff, bound)
    end
    assert(ok, name .. ": " .. msg)
    checked = checked + 1
  end
  assert.is_true(checked >= 14)
end

-- The inputs of the full VCMR evaluation: corpus video batches, query batches, query ids and
-- ground-truth videos (the video of each query's SVMR predictions).
local function vcmr_eval_inputs(query_batch_sizes)
  local ev = fx.vcmr_eval
  local sub = ev.submission_before_nms
  local name_of = {}
  for name, i in pairs(sub.video2idx) do name_of[i] = name end
  local qids, qvids = {}, {}
  for i, e in ipairs(sub.SVMR) do qids[i], qvids[i] = e.desc_id, name_of[e.predictions[1][1]] end
  local qb = load("vcmr_eval_query_batches")
  local queries = {}
  for i = 0, 1 do
    local p = "query_batch" .. i .. "."
    queries[#queries + 1] = {query_input_ids = qb[p .. "query_input_ids"], query_pos_ids = qb[p .. "query_pos_ids"],
      query_attn_masks = qb[p .. "query_attn_masks"]}
  end
  if query_batch_sizes then -- re-batch the queries (padded to the longer length: pads are masked)
    local L = 11
    local function pad(t, v)
      if t:size(2) == L then return t end
      return hero.cat({t, hero.full({t:size(1), L - t:size(2)}, v, {dtype = t:dtype()})}, 2)
    end
    local ids = hero.cat({queries[1].query_input_ids, pad(queries[2].query_input_ids, 1)}, 1)
    local masks = hero.cat({queries[1].query_attn_masks, pad(queries[2].query_attn_masks, 0)}, 1)
    queries = {}
    local start = 1
    for _, n in ipairs(query_batch_sizes) do
      queries[#queries + 1] = {query_input_ids = ids:narrow(1, start, n), query_attn_masks = masks:narrow(1, start, n),
        query_pos_ids = hero.arange(L):unsqueeze(1)}
      start = start + n
    end
  end
  local corpus = {batches = {batch("vcmr_eval_video_batch0"), batch("vcmr_eval_video_batch1")},
    video_ids = ev.video_ids_sorted, video2idx = sub.video2idx}
  return corpus, {batches = queries, query_ids = qids, query_vids = qvids}
end

local function assert_submission(got, expected, rtol)
  for _, task in ipairs {"VCMR", "SVMR", "VR"} do
    if expected[task] then
      assert.equal(#expected[task], #got[task], task)
      for i, e in ipairs(expected[task]) do
        local g = got[task][i]
        assert.equal(e.desc_id, g.desc_id)
        assert.equal(#e.predictions, #g.predictions, task .. " query " .. e.desc_id)
        for j, p in ipairs(e.predictions) do
          local q = g.predictions[j]
          for f = 1, 3 do
            assert(q[f] == p[f], string.format("%s query %s rank %d field %d: %s, expected %s", task, e.desc_id, j, f,
              tostring(q[f]), tostring(p[f])))
          end
          assert(math.abs(q[4] - p[4]) <= rtol * math.abs(p[4]),
            string.format("%s query %s rank %d score %.9g, expected %.9g", task, e.desc_id, j, q[4], p[4]))
        end
      end
    end
  end
end

describe("HeroForVcmr against the reference", function()
  it("has the pre-training model's parameter names", function()
    local m = vcmr_model()
    local sd = m:state_dict()
    local w = load("weights")
    for k, t in pairs(w) do assert.same(t:size(), sd[k]:size(), k) end
    for k in pairs(sd) do assert.is_not_nil(w[k], k) end
  end)

  it("reproduces the training forward (paired st/ed, hard negatives) and its gradients", function()
    local m = vcmr_model()
    local out = m:forward(batch("vcmr_batch"), "tvr")
    check_outputs(out, load("vcmr_outputs"))
    assert.near(cfg.downstream.vcmr.train.loss, out.loss:item(), 1e-5 * cfg.downstream.vcmr.train.loss)
    out.loss:backward()
    check_grads(m, "vcmr_grads")
  end)

  it("switches hard negatives, the local loss and the cross path as the reference does", function()
    local m = vcmr_model({drop_svmr_prob = 0})
    local b = batch("vcmr_batch")
    local expected = load("vcmr_outputs")
    local plain = m:forward(b, "tvr")
    -- without hard negatives the ranking losses differ; switched on they match the fixture
    assert.is_true(math.abs(plain.loss_neg_ctx:item() - expected.loss_neg_ctx:item()) > 1e-3)
    m:set_hard_negative(true, 1, 10)
    assert.parity(m:forward(b, "tvr").loss_neg_q, expected.loss_neg_q, "activations")
    -- the cross path selects each query's video with q_vidx (the last row of the same video): same logits
    local cross = m:forward(b, "tvr", {cross = true})
    assert.same({4, 4, 12}, cross.st_logits_all:size())
    assert.parity(cross.st_logits, expected.st_logits, "activations")
    -- drop_svmr_prob 1: the local loss is never used while training
    m.opts.drop_svmr_prob = 1
    local ranking = m:forward(b, "tvr")
    assert.is_nil(ranking.loss_st_ed)
    assert.parity(ranking.loss, expected.loss_neg_ctx + expected.loss_neg_q, "activations")
    -- evaluation mode: summed CE and per-query ranking losses (the reference's reduction "sum")
    m:evaluate()
    local ev = m:forward(b, "tvr")
    m:train()
    assert.same({4}, ev.loss_neg_ctx:size())
    assert.parity(ev.loss_neg_ctx:mean(), expected.loss_neg_ctx, "activations")
    assert.near(4 * expected.loss_st_ed:item(), ev.loss_st_ed:item(), 1e-5 * math.abs(expected.loss_st_ed:item()) * 4)
  end)

  it("reproduces the full corpus evaluation: scores, VR/VCMR/SVMR rankings, NMS, VR recall", function()
    local m = vcmr_model()
    local ev = fx.vcmr_eval
    local corpus, queries = vcmr_eval_inputs()
    local opts = {}
    for k, v in pairs(ev.model_opts) do opts[k] = v end
    local res = m:evaluate_full(corpus, queries, nil, opts)
    assert.is_true(m.training) -- restored after the evaluation
    check_outputs(res.tensors, load("vcmr_eval_outputs"))
    local rtol = helper.parity_tolerance.activations.rtol
    assert_submission(res.submission, ev.submission_before_nms, rtol)
    assert_submission(R.nms_submission(res.submission, opts), ev.submission_after_nms, rtol)
    -- VR recall needs only each query's ground-truth video
    local gt = {}
    for i, id in ipairs(queries.query_ids) do gt[i] = {desc_id = id, vid_name = queries.query_vids[i]} end
    local metrics = R.eval_retrieval({video2idx = res.submission.video2idx, VR = res.submission.VR}, gt,
      {use_desc_type = false})
    assert.same(ev.metrics_no_nms.VR, metrics.VR)
    -- with ground truth, evaluate_full runs the metrics and NMS itself
    local with_gt = m:evaluate_full(corpus, queries, gt, {tasks = {"VR"}, max_vcmr_video = 3, nms_thd = -1,
      eval_with_query_type = false})
    assert.same(ev.metrics_no_nms.VR, with_gt.metrics.VR)
    assert.equal(80, with_gt.val_log["valid_val_VR/VR_r5"])
  end)

  it("gives the same rankings whatever the query batching", function()
    local m = vcmr_model()
    local ev = fx.vcmr_eval
    local corpus, queries = vcmr_eval_inputs({1, 4})
    local res = m:evaluate_full(corpus, queries, nil, ev.model_opts)
    assert_submission(res.submission, ev.submission_before_nms, 1e-5)
  end)

  it("ranks over every rank's queries and videos when the distributed Trainer passes all_gather", function()
    local m = vcmr_model({drop_svmr_prob = 0})
    local b = batch("vcmr_batch")
    local plain = m:forward(b, "tvr")
    local calls = 0
    local gathered = m:forward(b, "tvr", {all_gather = function(t)
      calls = calls + 1
      return t -- one rank: the gathered tensors are this rank's
    end})
    assert.equal(3, calls) -- the normalised queries, the normalised frames, the frame mask
    assert.equal(plain.loss:item(), gathered.loss:item())
    -- two ranks holding the same batch: every video and query twice
    local twice = m:forward(b, "tvr", {all_gather = function(t) return hero.cat({t, t}, 1) end})
    assert.same({2 * b.query_input_ids:size(1), 2 * b.c_v_feats:size(1)}, twice.q2video_scores:size())
  end)

  it("rejects what the reference does not support", function()
    local m = vcmr_model()
    helper.assert_error_contains(function() m:forward(batch("vcmr_batch"), "tvqa") end, "unknown task 'tvqa'")
    helper.assert_error_contains(function() m:encode_corpus({}) end, "non-empty")
    helper.assert_error_contains(function()
      m:encode_corpus({batch("vcmr_eval_video_batch0")}, {max_clip_len = 8})
    end, "more than max_clip_len 8")
  end)
end)

describe("ranking losses with one sampled negative per row (use_all_neg = false)", function()
  local vsm = require "hero.models.vsm"
  -- 3 videos x 2 queries (video-major), f64 scores
  local S = hero.tensor({{0.9, 0.1, 0.4}, {0.7, 0.5, -0.2}, {0.3, 0.8, 0.6}, {-0.1, 0.2, 0.0},
                         {0.5, 0.45, 0.95}, {0.2, -0.3, 0.6}}, {dtype = "f64"})
  local Nq, Nv, k = 6, 3, 2
  local function rows_sorted(t) -- Lua copy of each row sorted descending
    local out = {}
    for i, r in ipairs(t) do
      table.sort(r, function(a, b) return a > b end)
      out[i] = r
    end
    return out
  end
  local function expected(s, draws_ctx, draws_q, loss)
    local M = s:totable()
    local filled, pos = {}, {}
    for i = 1, Nq do
      filled[i] = {}
      for v = 1, Nv do
        local is_pos = (i - 1) // k == v - 1
        if is_pos then pos[i] = M[i][v] end
        filled[i][v] = is_pos and 999 or M[i][v]
      end
    end
    local cols = {}
    for v = 1, Nv do
      cols[v] = {}
      for i = 1, Nq do cols[v][i] = filled[i][v] end
    end
    local rs, cs = rows_sorted(filled), rows_sorted(cols)
    local ctx, q = 0, 0
    for i = 1, Nq do ctx = ctx + loss(rs[i][draws_ctx[i] + 1] - pos[i]) end
    for v = 1, Nv do
      for j = 1, k do q = q + loss(cs[v][draws_q[v] + 1] - pos[(v - 1) * k + j]) end
    end
    return ctx / Nq, q / Nq
  end
  local hinge = function(d) return math.max(0, 0.1 + d) end

  it("draws each row's negative uniformly from the positions past its positives", function()
    for _, loss_type in ipairs {"hinge", "lse"} do
      local g = hero.Generator(11)
      local l_ctx, l_q = vsm.ranking_losses(S, {margin = 0.1, loss_type = loss_type, sampled = true, generator = g})
      -- the same draws, in the same order: one per query in [1, Nv), then one per video in [k, Nq)
      local r = hero.Generator(11)
      local dc = hero.randint(1, Nv, {Nq}, {generator = r}):totable()
      local dq = hero.randint(k, Nq, {Nv}, {generator = r}):totable()
      local f = loss_type == "lse" and function(d) return math.log(1 + math.exp(d)) end or hinge
      local ec, eq = expected(S, dc, dq, f)
      assert.near(ec, l_ctx:item(), 1e-12)
      assert.near(eq, l_q:item(), 1e-12)
    end
    -- every allowed position is drawn, no other
    local g, seen = hero.Generator(3), {}
    for _ = 1, 200 do
      for _, d in ipairs(hero.randint(1, Nv, {Nq}, {generator = g}):totable()) do seen[d] = true end
    end
    assert.same({[1] = true, [2] = true}, seen)
  end)

  it("with hard negatives draws among the pool_size highest, without their weighting", function()
    -- a pool of 1: the highest negative, every time, whatever the generator
    local hard = {pool_size = 1, weight = 10}
    local ec, eq = expected(S, {1, 1, 1, 1, 1, 1}, {2, 2, 2}, hinge)
    for seed = 1, 3 do
      local l_ctx, l_q = vsm.ranking_losses(S, {margin = 0.1, loss_type = "hinge", sampled = true, hard = hard,
        generator = hero.Generator(seed)})
      assert.near(ec, l_ctx:item(), 1e-12)
      assert.near(eq, l_q:item(), 1e-12)
    end
    -- per-row values for evaluation ("sum"): [Nq] and, per video, [Nv]
    local rc, rq = vsm.ranking_losses(S, {margin = 0.1, loss_type = "hinge", sampled = true, hard = hard,
      reduction = "sum", generator = hero.Generator(1)})
    assert.same({Nq}, rc:size())
    assert.same({Nv}, rq:size())
    -- gradients reach the scores (f64 finite differences; the pool of 1 makes the draw fixed)
    local x = S:clone():requires_grad_()
    assert.is_true(hero.testing.gradcheck(function(t)
      local a, b = vsm.ranking_losses(t, {margin = 0.1, loss_type = "lse", sampled = true, hard = hard,
        generator = hero.Generator(1)})
      return a + b
    end, {x}))
  end)

  it("is what HeroForVcmr and HeroForPretraining train with use_all_neg = false", function()
    local m = vcmr_model({drop_svmr_prob = 0, use_all_neg = false, generator = hero.Generator(5)})
    local out = m:forward(batch("vcmr_batch"), "tvr")
    assert.is_true(out.loss_neg_ctx:item() >= 0 and out.loss_neg_q:item() >= 0)
    out.loss:backward()
    assert.is_not_nil(m.video_query_linear.weight.grad)
    -- the draws come from the model's generator: the same seed, the same loss
    local m2 = vcmr_model({drop_svmr_prob = 0, use_all_neg = false, generator = hero.Generator(5)})
    assert.equal(out.loss:item(), m2:forward(batch("vcmr_batch"), "tvr").loss:item())
    local all = vcmr_model({drop_svmr_prob = 0}):forward(batch("vcmr_batch"), "tvr")
    assert.not_equal(all.loss_neg_ctx:item(), out.loss_neg_ctx:item()) -- one negative, not the mean of all
    local p = hero.models.HeroForPretraining(cfg.model_config.pretrain, base_opts({use_all_neg = false,
      generator = hero.Generator(2)}))
    hero.train.set_dropout(p, 0)
    local vs = p:forward(batch("batch_vsm"), "vsm")
    assert.is_true(vs.loss:item() == vs.loss:item())
  end)
end)

describe("HeroForVr (MSR-VTT)", function()
  it("trains with the ranking losses only and ranks by the raw cosine-max scores", function()
    local m = hero.models.HeroForVr(cfg.model_config.finetune, base_opts({lw_neg_ctx = 8, lw_neg_q = 8,
      hard_negative = {pool_size = 1, weight = 10}}))
    m:load_checkpoint(load("weights"))
    m:set_dropout(0)
    local expected = load("vcmr_outputs")
    local out = m:forward(batch("vcmr_batch"), "msrvtt_video_sub")
    assert.is_nil(out.st_logits)
    assert.is_nil(out.loss_st_ed)
    assert.parity(out.loss, expected.loss_neg_ctx + expected.loss_neg_q, "activations")
    local corpus, queries = vcmr_eval_inputs()
    local gt = {}
    for i, id in ipairs(queries.query_ids) do gt[i] = {desc_id = id, vid_name = queries.query_vids[i]} end
    local res = m:evaluate_full(corpus, queries, gt, {max_vr_video = 3})
    assert.is_nil(res.tensors.st_logits)
    assert.is_nil(res.submission.VCMR)
    -- same order as the exp-scored VR list of the VCMR evaluation, scores are the raw S
    local S = load("vcmr_eval_outputs").q2video_scores:totable()
    local local_of = {}
    for i, v in ipairs(corpus.video_ids) do local_of[corpus.video2idx[v]] = i end
    for i, e in ipairs(fx.vcmr_eval.submission_before_nms.VR) do
      for j, p in ipairs(e.predictions) do
        local q = res.submission.VR[i].predictions[j]
        assert.equal(p[1], q[1])
        assert.near(S[i][local_of[p[1]]], q[4], 1e-5)
      end
    end
    assert.same(fx.vcmr_eval.metrics_no_nms.VR, res.metrics.VR)
    assert.is_nil(res.metrics.VR_by_type)
    helper.assert_error_contains(function() m:forward(batch("vcmr_batch"), "tvr") end, "unknown task 'tvr'")
    helper.assert_error_contains(function() m:set_train_st_ed(0.01) end, "lw_st_ed must stay 0")
    helper.assert_error_contains(function()
      hero.models.HeroForVr(cfg.model_config.finetune, base_opts({lw_neg_ctx = 0, lw_neg_q = 0}))
    end, "must be non-zero")
  end)
end)

describe("HeroForVideoQA against the reference", function()
  it("initialises the heads as the reference (st_ed_pool a copy of qa_pool, default init bounds)", function()
    local m = hero.models.HeroForVideoQA(cfg.model_config.finetune, base_opts())
    assert.same(m.qa_pool.weight:totable(), m.st_ed_pool.weight:totable())
    assert.is_true(m.qa_pred_head.linear_1.weight:abs():max():item() <= 1 / 8)
    local init = load("videoqa_head_init")
    local sd = m:state_dict()
    for k, t in pairs(init) do assert.same(t:size(), sd[k]:size(), k) end
    assert.same(init["qa_pool.weight"]:totable(), init["st_ed_pool.weight"]:totable())
  end)

  it("reproduces the forward (answer-axis st/ed pooling, span loss) and its gradients", function()
    local m = head_model(hero.models.HeroForVideoQA, "videoqa")
    local out = m:forward(batch("videoqa_batch"), "tvqa")
    check_outputs(out, load("videoqa_outputs"))
    assert.near(cfg.downstream.videoqa.value, out.loss:item(), 1e-5 * cfg.downstream.videoqa.value)
    out.loss:backward()
    check_grads(m, "videoqa_grads")
  end)

  it("predicts the argmax answer and checks its inputs", function()
    local m = head_model(hero.models.HeroForVideoQA, "videoqa")
    local b = batch("videoqa_batch")
    local idx, logits = m:predict(b)
    local expected = load("videoqa_outputs").logits
    assert.same({2, 5}, logits:size())
    local _, ref = expected:max(2)
    assert.same(ref:totable(), idx:totable())
    assert.is_nil(logits.grad_fn)
    helper.assert_error_contains(function() m:forward(b, "violin") end, "unknown task 'violin'")
    b.targets = hero.zeros({3, 1}, {dtype = "i64"})
    helper.assert_error_contains(function() m:forward(b, "tvqa") end,
      "the batch's ts_targets is [2, 2], expected [N, 2]",
      "N (questions) = 3 from targets dim 1")
    b.ts_targets = hero.zeros({3, 2}, {dtype = "i64"})
    helper.assert_error_contains(function() m:forward(b, "tvqa") end, "not a multiple of 3 questions")
  end)
end)

describe("HeroForViolin against the reference", function()
  it("reproduces the forward (statement fused with the frames, BCE) and its gradients", function()
    local m = head_model(hero.models.HeroForViolin, "violin")
    local out = m:forward(batch("violin_batch"), "violin")
    check_outputs(out, load("violin_outputs"))
    assert.near(cfg.downstream.violin.value, out.loss:item(), 1e-5)
    out.loss:backward()
    check_grads(m, "violin_grads")
  end)

  it("predicts sigmoid > 0.5 and checks its inputs", function()
    local m = head_model(hero.models.HeroForViolin, "violin")
    local b = batch("violin_batch")
    local pred, scores = m:predict(b)
    local ref = load("violin_outputs").scores
    assert.same(ref:gt(0.5):totable(), pred:totable())
    assert.parity(scores, ref, "activations")
    helper.assert_error_contains(function() m:forward(b, "tvqa") end, "unknown task 'tvqa'")
    b.q_input_ids = b.q_input_ids:narrow(1, 1, 2)
    helper.assert_error_contains(function() m:forward(b, "violin") end, "HeroForViolin",
      "the batch's q_input_ids is [2, 11], expected [B, Lq]: B (video rows) = 4 from c_v_feats dim 1,",
      "Lq (query tokens)")
    helper.assert_error_contains(function() hero.models.HeroForViolin(cfg.model_config.finetune, {}) end,
      "vfeat_dim is required")
  end)
end)
