-- Evaluation of the downstream tasks (hero.eval): VCMR/SVMR/VR, Video QA, VIOLIN, TVC captions.
-- Expected values come from the reference implementation's evaluation code run on the same inputs
-- (spec/fixtures/gen/eval.py converts them). Tolerances: metrics, counts, ratios, ranks, video ids
-- and times are compared exactly (==). Prediction scores computed here from logits carry
-- float32 rounding differences in softmax/exp (PyTorch's vectorised exp is not correctly rounded),
-- so they are compared with a relative 1e-6 (a few float32 ulps); fed the reference's own
-- probabilities, the scores are compared exactly too. Losses (float32 batch sums) use 1e-6
-- relative; per-sentence CIDEr 1e-14 relative (see that test).
local helper = require "spec_helper"
local hero = require "hero"
local eval = require "hero.eval"
local R = eval.retrieval
local Q = eval.qa
local C = eval.caption
local U = eval.util

local FX = "spec/fixtures/eval/"
local vfx = helper.load_fixture("eval_vcmr.lua")
local ufx = helper.load_fixture("eval_util.lua")

-- Deep comparison; numbers exactly unless tol (relative) is given for the fields named in
-- tol_keys (matched on the last path component). Returns a list of differences.
local function diff(got, exp, path, tol, diffs)
  diffs = diffs or {}
  path = path or ""
  if type(exp) ~= "table" then
    local same = got == exp
    if not same and type(got) == "number" and type(exp) == "number" then
      if exp ~= exp and got ~= got then same = true
      elseif tol then same = math.abs(got - exp) <= tol * math.abs(exp) end
    end
    if not same then
      diffs[#diffs + 1] = string.format("%s: got %s, expected %s", path, tostring(got), tostring(exp))
    end
    return diffs
  end
  if type(got) ~= "table" then
    diffs[#diffs + 1] = path .. ": missing (expected a table)"
    return diffs
  end
  for k, v in pairs(exp) do diff(got[k], v, path .. "." .. tostring(k), tol, diffs) end
  for k in pairs(got) do
    if exp[k] == nil then diffs[#diffs + 1] = path .. "." .. tostring(k) .. ": unexpected" end
  end
  return diffs
end

local function assert_same(got, exp, tol)
  local d = diff(got, exp, "", tol)
  assert(#d == 0, #d .. " differences:\n" .. table.concat(d, "\n", 1, math.min(#d, 20)))
end

-- Compares submissions: video, st, ed exactly; the score (4th field) with score_tol (nil: exact).
local function assert_submission(got, exp, score_tol)
  assert_same(got.video2idx, exp.video2idx)
  for _, task in ipairs(R.TASKS) do
    if exp[task] == nil then
      assert.is_nil(got[task], task)
    else
      assert.equal(#exp[task], #got[task], task)
      for i, e in ipairs(exp[task]) do
        local g = got[task][i]
        assert.equal(e.desc_id, g.desc_id)
        assert.equal(#e.predictions, #g.predictions, task .. " query " .. e.desc_id)
        for j, p in ipairs(e.predictions) do
          local q = g.predictions[j]
          for f = 1, 3 do
            assert(q[f] == p[f], string.format("%s query %s rank %d field %d: got %s, expected %s", task,
              e.desc_id, j, f, tostring(q[f]), tostring(p[f])))
          end
          local ok = q[4] == p[4] or (score_tol and math.abs(q[4] - p[4]) <= score_tol * math.abs(p[4]))
          assert(ok, string.format("%s query %s rank %d score %.17g, expected %.17g", task, e.desc_id, j, q[4], p[4]))
        end
      end
    end
  end
end

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

-- Inputs of predict/evaluate from a scores file and the *_inputs table.
local function vcmr_inputs(file, inp, use_probs)
  local t = hero.load(FX .. file)
  local qids, qvids = {}, {}
  for i, g in ipairs(inp.queries_ground_truth) do qids[i], qvids[i] = g.desc_id, g.vid_name end
  local inputs = {video_ids = inp.video_ids_sorted, video2idx = inp.video2idx_global, query_ids = qids,
    query_vids = qvids}
  if use_probs then
    inputs.q2video_exp_scores = t["intermediate.q2video_exp_scores"]
    inputs.st_probs, inputs.ed_probs = t["intermediate.st_probs"], t["intermediate.ed_probs"]
  else
    inputs.q2video_scores, inputs.st_logits, inputs.ed_logits = t.q2video_scores, t.st_logits, t.ed_logits
  end
  return inputs, t
end

describe("eval helpers", function()
  it("rounds to float32 as NumPy", function()
    for _, c in ipairs(ufx.f32) do assert.equal(c[2], U.f32(c[1])) end
  end)
  it("prints floats as Python's repr", function()
    for _, c in ipairs(ufx["repr"]) do assert.equal(c[2], U.pyrepr(c[1])) end
    assert.equal("3", U.pyrepr(3))
    assert.equal("nan", U.pyrepr(0 / 0))
  end)
  it("rounds percentages as Python's round(x * 100, 2)", function()
    for _, c in ipairs(ufx.round2_pct) do assert.equal(c[2], U.pyround(c[1] * 100, 2)) end
  end)
  it("sums as NumPy's pairwise summation, bit for bit", function()
    for _, c in ipairs(ufx.np_sum) do assert.equal(c[2], U.np_sum(c[1])) end
    assert.is_true(U.np_mean({}) ~= U.np_mean({}))
  end)
  it("computes the metric IoU in float32", function()
    for _, c in ipairs(ufx.iou_f32) do
      assert.equal(c[3], R.temporal_iou_f32(c[1][1], c[1][2], c[2][1], c[2][2]))
    end
  end)
  it("sorts stably, descending", function()
    local a = U.stable_sort({{1, "a"}, {2, "b"}, {1, "c"}, {2, "d"}}, function(e) return e[1] end, true)
    assert.same({"b", "d", "a", "c"}, {a[1][2], a[2][2], a[3][2], a[4][2]})
  end)
end)

describe("eval.retrieval metrics (standalone)", function()
  local s = vfx.standalone
  it("reproduces the TVR metrics (float32 IoU, exact 0.5 and 0.7, top-100 cut, SVMR filter, types)", function()
    assert_same(R.eval_retrieval(s.submission, s.gt), s.expected.tvr)
  end)
  it("reproduces the DiDeMo rule (>= 2 of >= 4 windows), without types", function()
    local sub = {video2idx = s.submission.video2idx, VCMR = s.submission.VCMR, SVMR = s.submission.SVMR}
    assert_same(R.eval_retrieval(sub, s.gt_didemo, {use_desc_type = false}), s.expected.didemo_style_without_VR)
  end)
  it("reproduces the float32 IoU probes", function()
    for key, vals in pairs(s.expected.iou_probes.iou_by_gt_ts) do
      local a, b = key:match("%[([%d.]+), ([%d.]+)%]")
      for i, w in ipairs(s.expected.iou_probes.pred_windows) do
        assert.equal(vals[i], R.temporal_iou_f32(w[1], w[2], tonumber(a), tonumber(b)))
      end
    end
  end)
  it("counts a float32 IoU of exactly 0.7 at threshold 0.7 (a double 0.7 would reject it)", function()
    local iou = R.temporal_iou_f32(2.0, 12.0, 2.0, 9.0)
    assert.is_true(iou >= U.f32(0.7))
    assert.is_false(iou >= 0.7)
  end)

  local v2i = {a = 0, b = 1}
  local gt = {{desc_id = 1, vid_name = "a", ts = {0, 3}, type = "v"},
              {desc_id = 2, vid_name = "b", ts = {3, 6}, type = "v"}}
  it("scores a query with no predictions as a miss (the reference would fail on it)", function()
    local sub = {video2idx = v2i,
      VCMR = {{desc_id = 1, predictions = {}}, {desc_id = 2, predictions = {{1, 3.0, 6.0, 1.0}}}}}
    local m = R.eval_retrieval(sub, gt)
    assert.equal(50.0, m.VCMR["0.5-r1"])
    assert.equal(50.0, m.VCMR["0.7-r100"])
    assert.is_true(m.VCMR_by_type["t-0.5-r1"] ~= m.VCMR_by_type["t-0.5-r1"]) -- no query of type t: NaN
    assert.equal("v 100.0 t 0.0 vt 0.0", m.VCMR_by_type.desc_type_ratio)
  end)
  it("scores a query whose predictions never hit as 0", function()
    local sub = {video2idx = v2i, VR = {{desc_id = 1, predictions = {{1, 0, 0, 1.0}}},
      {desc_id = 2, predictions = {{0, 0, 0, 1.0}}}}}
    local m = R.eval_retrieval(sub, gt, {use_desc_type = false})
    assert.same({r1 = 0.0, r5 = 0.0, r10 = 0.0, r100 = 0.0}, m.VR)
  end)
  it("keeps tied predictions in their submitted order", function()
    -- same score: rank 1 misses, rank 2 hits -> R@1 = 0, R@5 = 100
    local sub = {video2idx = v2i, SVMR = {{desc_id = 1, predictions = {{0, 10.0, 20.0, 1.0}, {0, 0.0, 3.0, 1.0}}},
      {desc_id = 2, predictions = {{1, 10.0, 20.0, 1.0}, {1, 3.0, 6.0, 1.0}}}}}
    local m = R.eval_retrieval(sub, gt, {use_desc_type = false})
    assert.equal(0.0, m.SVMR["0.5-r1"])
    assert.equal(100.0, m.SVMR["0.5-r5"])
  end)
  it("refuses mismatched query sets, unknown videos, bad windows and bad types", function()
    local sub = {video2idx = v2i, VR = {{desc_id = 1, predictions = {}}}}
    helper.assert_error_contains(function() R.eval_retrieval(sub, gt) end,
      "desc_ids in predictions and ground_truth must match")
    -- match_number = false evaluates only the queries with predictions
    local m = R.eval_retrieval(sub, gt, {match_number = false, use_desc_type = false})
    assert.equal(0.0, m.VR.r1)
    local bad = {{desc_id = 1, vid_name = "zz", ts = {0, 3}, type = "v"}}
    helper.assert_error_contains(function() R.eval_retrieval(sub, bad) end, 'video "zz"')
    local three = {{desc_id = 1, vid_name = "a", ts = {{0, 3}, {0, 3}, {1, 2}}, type = "v"}}
    local vc = {video2idx = v2i, VCMR = {{desc_id = 1, predictions = {{0, 0.0, 3.0, 1.0}}}}}
    helper.assert_error_contains(function() R.eval_retrieval(vc, three) end, "has 3 windows")
    local typ = {{desc_id = 1, vid_name = "a", ts = {0, 3}, type = "x"}}
    helper.assert_error_contains(function() R.eval_retrieval(vc, typ) end, "has type x")
    local nots = {{desc_id = 1, vid_name = "a", type = "v"}}
    helper.assert_error_contains(function() R.eval_retrieval(vc, nots) end, "needs ground truth windows")
    helper.assert_error_contains(function() R.eval_retrieval({}, gt) end, "video2idx")
  end)
end)

describe("eval.retrieval NMS", function()
  it("keeps one of identical windows (the first of equal scores)", function()
    local out = R.temporal_nms({{0, 3, 1.0}, {0, 3, 1.0}, {0, 3, 2.0}}, 0.5)
    assert.same({{0, 3, 2.0}}, out)
    out = R.temporal_nms({{0, 3, 1.0, "first"}, {0, 3, 1.0}}, 0.5)
    assert.same({{0, 3, 1.0}}, out)
  end)
  it("drops only windows with IoU > threshold (not ==) and sorts by score", function()
    -- [0,4] vs [2,6]: IoU 2/6; [0,4] vs [1,4]: 3/4; [0,4] vs [0,2]: 0.5 exactly (kept)
    local out = R.temporal_nms({{2, 6, 0.5}, {0, 4, 0.9}, {1, 4, 0.8}, {0, 2, 0.7}}, 0.5)
    assert.same({{0, 4, 0.9}, {0, 2, 0.7}, {2, 6, 0.5}}, out)
    assert.same({}, R.temporal_nms({}, 0.5))
    assert.same({{5, 6, 1.0}}, R.temporal_nms({{5, 6, 1.0}}, 0.5))
  end)
  it("caps the kept windows", function()
    local preds = {}
    for i = 1, 5 do preds[i] = {i * 10, i * 10 + 1, 1.0 / i} end
    assert.equal(3, #R.temporal_nms(preds, 0.5, 3))
    assert.equal(2, #R.filter_vcmr_by_nms({{0, 0, 1, 0.9}, {1, 0, 1, 0.8}, {0, 5, 6, 0.7}}, 0.5, 200, 2))
  end)
  it("groups VCMR predictions by video and merges by score", function()
    local preds = {{7, 0, 3, 0.9}, {8, 0, 3, 0.85}, {7, 0, 2.9, 0.8}, {8, 10, 12, 0.95}}
    local out = R.filter_vcmr_by_nms(preds, 0.5, 200, 100)
    assert.same({{8, 10, 12, 0.95}, {7, 0, 3, 0.9}, {8, 0, 3, 0.85}}, out)
    -- max_before_nms drops candidates before the NMS
    out = R.filter_vcmr_by_nms({{7, 0, 3, 0.9}, {8, 0, 3, 0.85}, {8, 10, 12, 0.95}}, 0.5, 2, 100)
    assert.same({{7, 0, 3, 0.9}, {8, 0, 3, 0.85}}, out)
    assert.same({}, R.filter_svmr_by_nms({}, 0.5, 200, 100))
  end)
end)

describe("eval.retrieval full VCMR evaluation", function()
  local E = vfx.expected

  it("ranks equal SVMR scores from the highest flat index down, as argsort(...)[::-1]", function()
    local sub = R.predict({st_probs = hero.tensor {{{0.1, 0.2, 0.3, 0.4}}},
      ed_probs = hero.tensor {{{0.4, 0.3, 0.2, 0.1}}},
      video_ids = {"v"}, video2idx = {v = 7}, query_ids = {1}, query_vids = {"v"}},
      {tasks = {"SVMR"}, max_before_nms = 10, min_pred_l = 1, max_pred_l = 3, vfeat_interval = 1})
    -- top_n_array_2d of NumPy on the same product: (start, end) frame pairs
    local want = {{1, 2}, {2, 3}, {0, 1}, {1, 3}, {0, 2}, {3, 3}, {3, 2}, {3, 1}, {3, 0}, {2, 2}}
    local got = {}
    for i, p in ipairs(sub.SVMR[1].predictions) do got[i] = {math.tointeger(p[2]), math.tointeger(p[3] - 1)} end
    assert.same(want, got)
  end)

  it("rounds percentages as NumPy rounds its float64 values", function()
    local util = require "hero.eval.util"
    -- round(np.float64(x), 2): 0.025 -> 0.02 and 0.075 -> 0.08, where Python's round gives 0.03, 0.07
    assert.same({0.02, 0.08, 12.34, -0.02, 2.5}, {util.npround(0.025, 2), util.npround(0.075, 2),
      util.npround(12.345, 2), util.npround(-0.025, 2), util.npround(2.5, 2)})
    assert.same({0.03, 0.07}, {util.pyround(0.025, 2), util.pyround(0.075, 2)})
    -- 3 of 4000 queries right: 0.075 before rounding, NumPy's 0.08 (Python's round would give 0.07)
    local gt, sub = {}, {video2idx = {v = 0}, VR = {}}
    for i = 1, 4000 do
      gt[i] = {desc_id = i, vid_name = i <= 3 and "v" or "w", ts = {0, 1}, type = "v"}
      sub.VR[i] = {desc_id = i, predictions = {{0, 0, 1, 1}}}
    end
    sub.video2idx.w = 1
    local m = R.eval_retrieval(sub, gt, {use_desc_type = false})
    assert.equal(0.08, m.VR["r1"])
  end)

  it("reproduces scenario A from the score tensors", function()
    local e = E.A_lmax_eq_max_clip_len
    local res = R.evaluate(vcmr_inputs("vcmr_A_scores.safetensors", vfx.A_inputs), vfx.A_inputs.queries_ground_truth,
      e.model_opts)
    assert_submission(res.submission_before_nms, e.result.before_nms.submission, 1e-6)
    assert_same(res.metrics, e.result.before_nms.metrics)
    assert_submission(res.submission_nms, e.result.after_nms.submission, 1e-6)
    assert_same(res.metrics_nms, e.result.after_nms.metrics)
    assert_same(res.val_log, e.result.val_log)
    -- the submission validate_full_vcmr returns (and the reference saves): its NMS filtered the
    -- VCMR and SVMR lists in place, VR stays the top-n list
    assert.equal(res.submission_nms.VCMR, res.submission.VCMR)
    assert.equal(res.submission_nms.SVMR, res.submission.SVMR)
    assert.equal(res.submission_before_nms.VR, res.submission.VR)
    assert.is_true(#res.submission.VCMR[1].predictions < #res.submission_before_nms.VCMR[1].predictions)
  end)

  it("is bit-exact when given the reference's probabilities", function()
    local e = E.A_lmax_eq_max_clip_len
    local inputs, t = vcmr_inputs("vcmr_A_scores.safetensors", vfx.A_inputs, true)
    local res = R.evaluate(inputs, vfx.A_inputs.queries_ground_truth, e.model_opts)
    assert_submission(res.submission_before_nms, e.result.before_nms.submission)
    assert_submission(res.submission_nms, e.result.after_nms.submission)
    assert_same(res.val_log, e.result.val_log)
    -- and the length mask is the reference's
    local mask = R.length_mask(12, e.model_opts.min_pred_l, e.model_opts.max_pred_l)
    assert.same(t["intermediate.length_mask"]:totable(), mask:totable())
  end)

  it("runs NMS on the max_after_nms lists as the reference, or on max_before_nms when asked", function()
    local e = E.A_lmax_eq_max_clip_len
    local opts = copy(e.model_opts)
    opts.nms_from = "before_nms"
    local res = R.evaluate(vcmr_inputs("vcmr_A_scores.safetensors", vfx.A_inputs, true),
      vfx.A_inputs.queries_ground_truth, opts)
    assert.is_true(#diff(res.submission_nms, e.result.after_nms.submission) > 0)
    assert_submission(res.submission_before_nms, e.result.before_nms.submission)
  end)

  it("reproduces the reference's decoding bug only with reference_bug = true (scenario B)", function()
    local e = E.B_lmax_lt_max_clip_len
    local inputs = vcmr_inputs("vcmr_A_scores.safetensors", vfx.A_inputs, true)
    local opts = copy(e.model_opts)
    opts.reference_bug = true
    local res = R.evaluate(inputs, vfx.A_inputs.queries_ground_truth, opts)
    assert_submission(res.submission_before_nms, e.official_result.before_nms.submission)
    assert_same(res.metrics, e.official_result.before_nms.metrics)
    assert_submission(res.submission_nms, e.official_result.after_nms.submission)
    assert_same(res.val_log, e.official_result.val_log)
    -- corrected by default: the real score length decodes the indices
    res = R.evaluate(inputs, vfx.A_inputs.queries_ground_truth, e.model_opts)
    assert_submission(res.submission_before_nms, e.correct_result.before_nms.submission)
    assert_same(res.val_log, e.correct_result.val_log)
  end)

  it("reproduces the DiDeMo-style scenario C (>= 2 windows, NMS off, no types)", function()
    local e = E.C_didemo_nms_off
    local res = R.evaluate(vcmr_inputs("vcmr_C_scores.safetensors", vfx.C_inputs), vfx.C_inputs.queries_ground_truth,
      e.model_opts)
    assert_submission(res.submission, e.result.before_nms.submission, 1e-6)
    assert_same(res.metrics, e.result.before_nms.metrics)
    assert.is_nil(res.submission_nms)
    assert_same(res.val_log, e.result.val_log)
    res = R.evaluate(vcmr_inputs("vcmr_C_scores.safetensors", vfx.C_inputs, true), vfx.C_inputs.queries_ground_truth,
      e.model_opts)
    assert_submission(res.submission, e.result.before_nms.submission)
  end)

  it("clamps max_vcmr_video to the corpus (scenario D), or fails as the reference with reference_bug", function()
    local e = E.D_topk_larger_than_corpus
    local inputs = vcmr_inputs("vcmr_A_scores.safetensors", vfx.A_inputs)
    local opts = copy(e.model_opts)
    local res = R.evaluate(inputs, vfx.A_inputs.queries_ground_truth, opts)
    assert.equal(8, #res.submission.VR[1].predictions)
    assert.equal(15, #res.submission_before_nms.VCMR[1].predictions)
    opts.reference_bug = true
    helper.assert_error_contains(function() R.evaluate(inputs, vfx.A_inputs.queries_ground_truth, opts) end,
      "selected index k out of range")
  end)

  it("reproduces the smoke model's evaluation submissions", function()
    local s = vfx.smoke
    local t = hero.load(FX .. "smoke_vcmr_eval_outputs.safetensors")
    local v2i = s.submission_before_nms.video2idx
    local name_of = {}
    for name, i in pairs(v2i) do name_of[i] = name end
    local qids, qvids = {}, {}
    for i, e in ipairs(s.submission_before_nms.SVMR) do
      qids[i] = e.desc_id
      qvids[i] = name_of[e.predictions[1][1]] -- each query's ground-truth video
    end
    local base = {video_ids = s.video_ids_sorted, video2idx = v2i, query_ids = qids, query_vids = qvids}
    local exact = copy(base)
    exact.q2video_exp_scores, exact.st_probs, exact.ed_probs = t.vr_scores_exp, t.st_probs, t.ed_probs
    local opts = copy(s.model_opts)
    opts.query_batch_size = 2 -- batching must not matter
    local full = R.predict(exact, opts)
    assert_submission(R.top_n(full, opts.max_after_nms), s.submission_before_nms)
    assert_submission(R.nms_submission(R.top_n(full, opts.max_after_nms), opts), s.submission_after_nms)
    local approx = copy(base)
    approx.q2video_scores, approx.st_logits, approx.ed_logits = t.q2video_scores, t.st_logits, t.ed_logits
    local res = R.evaluate(approx, nil, s.model_opts)
    assert_submission(res.submission, s.submission_before_nms, 1e-6)
    assert.is_nil(res.metrics)
  end)

  it("ranks raw scores for MSR-VTT style VR (no exp) given as q2video_exp_scores", function()
    local e = E.A_lmax_eq_max_clip_len
    local inputs = vcmr_inputs("vcmr_A_scores.safetensors", vfx.A_inputs)
    local raw = {video_ids = inputs.video_ids, video2idx = inputs.video2idx, query_ids = inputs.query_ids,
      q2video_exp_scores = inputs.q2video_scores}
    local sub = R.predict(raw, {tasks = {"VR"}, max_vcmr_video = 5})
    assert.is_nil(sub.VCMR)
    local s = inputs.q2video_scores:totable()
    local local_of = {}
    for i, v in ipairs(inputs.video_ids) do local_of[inputs.video2idx[v]] = i end
    for q, entry in ipairs(sub.VR) do
      local exp_entry = e.result.before_nms.submission.VR[q]
      for j, p in ipairs(entry.predictions) do
        assert.equal(exp_entry.predictions[j][1], p[1]) -- exp is monotone: same ranking
        assert.equal(s[q][local_of[p[1]]], p[4])       -- the raw score itself
      end
    end
  end)

  it("checks its inputs", function()
    local inputs = vcmr_inputs("vcmr_A_scores.safetensors", vfx.A_inputs)
    local bad = copy(inputs)
    bad.st_logits = inputs.st_logits:narrow(3, 1, 5)
    helper.assert_error_contains(function() R.predict(bad, {}) end, "differ in shape")
    bad = copy(inputs)
    bad.query_ids = {1}
    helper.assert_error_contains(function() R.predict(bad, {}) end, "query_ids must list the 12 queries")
    bad = copy(inputs)
    bad.query_vids = nil
    helper.assert_error_contains(function() R.predict(bad, {}) end, "SVMR needs inputs.query_vids")
    assert.is_nil(R.predict(bad, {tasks = {"VR"}}).SVMR)
    bad = copy(inputs)
    bad.q2video_scores = inputs.q2video_scores:narrow(2, 1, 3)
    helper.assert_error_contains(function() R.predict(bad, {}) end, "q2video_scores is 12x3")
    bad = copy(inputs)
    bad.st_logits = hero.zeros(3)
    helper.assert_error_contains(function() R.predict(bad, {}) end, "must have 3 dimensions")
  end)
end)

describe("eval.qa", function()
  local qfx = helper.load_fixture("eval_qa.lua")
  local vq = hero.load(FX .. "videoqa_logits.safetensors")
  local vl = hero.load(FX .. "violin_logits.safetensors")

  it("reproduces Video QA accuracy, loss and answers", function()
    local e = qfx.videoqa.val_with_targets
    local log, res = Q.videoqa(vq.logits, vq.targets, qfx.videoqa.qids, {batch_size = e.batch_size})
    assert.equal(e.val_log["valid/acc"], log["valid/acc"])
    assert.near(e.val_log["valid/loss"], log["valid/loss"], 1e-6 * e.val_log["valid/loss"])
    assert.same(e.results, res)
  end)
  it("gives only answers without targets", function()
    local e = qfx.videoqa.test_without_targets
    local log, res = Q.videoqa(vq.logits, hero.full({13}, -1, {dtype = "i64"}), qfx.videoqa.qids)
    assert.same({}, log)
    assert.same(e.results, res)
    log = Q.videoqa(vq.logits, nil, qfx.videoqa.qids)
    assert.same({}, log)
  end)
  it("reproduces VIOLIN accuracy, loss, answers and the float32 sigmoid boundary", function()
    local e = qfx.violin
    local log, res = Q.violin(vl.logits, vl.targets, e.qids, {batch_size = e.batch_size, split = "test"})
    assert.equal(e.val_log["valid/test_acc"], log["valid/test_acc"])
    assert.near(e.val_log["valid/test_loss"], log["valid/test_loss"], 1e-6 * e.val_log["valid/test_loss"])
    assert.same(e.results, res)
    local s = Q.sigmoid_f32(vl.logits):view(-1):totable()
    assert.same(e.sigmoid_f32, s)
    -- a single statement works (the reference fails on a batch of one)
    local log1, res1 = Q.violin(vl.logits:narrow(1, 5, 1), vl.targets:narrow(1, 5, 1), {"x"})
    assert.equal(1.0, log1["valid/test_acc"])
    assert.same({x = 1}, res1)
    -- no statement (a rank's empty share): nothing, as videoqa with no question
    local log0, res0 = Q.violin(vl.logits:narrow(1, 1, 0), vl.targets:narrow(1, 1, 0), {})
    assert.same({}, log0)
    assert.same({}, res0)
    local qlog0, qres0 = Q.videoqa(vq.logits:narrow(1, 1, 0), vq.targets:narrow(1, 1, 0), {})
    assert.same({qlog0, qres0}, {log0, res0})
  end)
  it("checks its inputs", function()
    helper.assert_error_contains(function() Q.videoqa(vq.logits, vq.targets, {1, 2}) end, "qids must list the 13")
    helper.assert_error_contains(function() Q.videoqa(vq.logits:view(-1), nil, {}) end, "logits must be [N, C]")
    helper.assert_error_contains(function() Q.videoqa(vq.logits, vq.targets:narrow(1, 1, 3), qfx.videoqa.qids) end,
      "3 targets for 13 rows")
    helper.assert_error_contains(function() Q.violin(vq.logits, vq.targets, qfx.videoqa.qids) end, "[N, 1]")
    helper.assert_error_contains(function() Q.violin(vl.logits, nil, qfx.violin.qids) end, "targets are required")
  end)
end)

describe("eval.caption", function()
  local tfx = helper.load_fixture("eval_tvc.lua")
  local e = tfx.expected

  it("tokenises the references and hypotheses as the reference", function()
    local out = C.tvc_eval(tfx.refs, tfx.preds)
    for i, id in ipairs(e.clip_order_for_per_clip) do
      assert.equal(id, out.clip_order[i])
      assert.same(e.refs_tokenized[tostring(id)], out.refs_tokenized[i])
      assert.equal(e.hyps_tokenized[tostring(id)][1], out.hyps_tokenized[i])
    end
  end)

  it("reproduces BLEU-1..4, ROUGE-L and CIDEr-D (x100) exactly", function()
    local out = C.tvc_eval(tfx.refs, tfx.preds)
    assert.same(e.scores_x100, out.scores_x100)
    for _, k in ipairs({"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"}) do
      assert.same(e.per_clip_raw[k], out.per_clip[k])
    end
    -- Per-sentence CIDEr: the reference's own scorer run on this machine gives exactly these
    -- values; the fixture's machine differs in the last bit for 5 of 20 clips (its log/exp), so
    -- these are compared to 1e-14 relative.
    for i, v in ipairs(e.per_clip_raw.CIDEr) do assert.near(v, out.per_clip.CIDEr[i], 1e-14 * math.abs(v)) end
  end)

  it("reproduces the scorer edge cases (empty hypothesis, exact match, repeated words)", function()
    local sc = e.scorer_only_edge_cases
    for name, case in pairs(sc.cases) do
      local gts, res = {}, {}
      for i = 1, 3 do gts[i], res[i] = sc.gts_tokenized[tostring(i)], case.hyps_tokenized[tostring(i)][1] end
      local s, per = C.score_tokenized(gts, res)
      for k = 1, 4 do assert.equal(case["Bleu_1..4"][k], s["Bleu_" .. k] * 100, name) end
      assert.equal(case.ROUGE_L, s.ROUGE_L * 100, name)
      assert.equal(case.CIDEr, s.CIDEr * 100, name)
      assert.same(case.per_clip.Bleu_4, per.Bleu_4)
      assert.same(case.per_clip.ROUGE_L, per.ROUGE_L)
      for i, v in ipairs(case.per_clip.CIDEr) do assert.near(v, per.CIDEr[i], 1e-14 * math.abs(v)) end
    end
  end)

  it("keeps a word holding a control byte one word: no n-gram passes for a longer one", function()
    -- RoBERTa token 50109 decodes to "\1", so generated captions can hold it; the bigram
    -- {"a\1b", "c"} must not count as the trigram {"a", "b", "c"}
    local b = C.bleu({{"a b c"}}, {"a\1b c"}, 4)
    local half = 0.5 * math.exp(1 - 3 / 2) -- 1 of 2 unigrams, brevity penalty for 2 words against 3
    assert.near(half, b[1], 1e-9)
    for k = 2, 4 do assert.is_true(b[k] < 1e-6, "BLEU-" .. k) end
    local same, _ = C.cider({{"a b c"}, {"x y"}}, {"a\1b c", "x y"})
    local apart, _ = C.cider({{"a b c"}, {"x y"}}, {"q c", "x y"})
    assert.equal(apart, same) -- "a\1b" is just another unseen word
    local out = C.tvc_eval({{clip_id = 1, descs = {"a b c"}}}, {{clip_id = 1, desc = "a\1b c"}})
    assert.is_true(out.scores_x100.Bleu_3 < 1e-3)
  end)

  it("tokenises as the reference's Stanford PTBTokenizer 3.4.1 and PUNCTUATIONS removal", function()
    -- the jar's output on caption-like sentences (names, quotes, contractions, numbers, hyphens,
    -- slashes, ellipses, brackets, abbreviations)
    local cases = helper.load_fixture("eval/ptb_tokens.lua")
    assert.is_true(#cases > 500)
    for _, c in ipairs(cases) do assert.equal(c[2], C.ptb_tokenize(c[1]), c[1]) end
    -- the forms where the reference keeps what looks like punctuation: lower-case brackets (its list
    -- is upper-case) and runs of ? and !
    assert.equal("ross -lrb- david -rrb- hugs rachel", C.ptb_tokenize("Ross (David) hugs Rachel."))
    assert.equal("joey asks what ?! loudly", C.ptb_tokenize('Joey asks "What?!" loudly.'))
    assert.same({"-lsb-", "laughs", "-rsb-"}, C.ptb_tokens("[laughs]"))
    assert.equal("", C.ptb_tokenize(""))
    assert.equal("caf  ok", C.remove_nonascii("caf\195\169 ok"))
  end)

  it("scores those forms as the reference does", function()
    -- pycocoevalcap on these captions: BLEU-4 0.0067, CIDEr 344.6 (x100)
    local refs = {{clip_id = 1, descs = {"Ross (David) hugs Rachel."}},
                  {clip_id = 2, descs = {'Joey asks "What?!" loudly.'}}}
    local preds = {{clip_id = 1, desc = "Ross hugs Rachel."}, {clip_id = 2, desc = "Joey asks what loudly."}}
    local out = C.tvc_eval(refs, preds)
    assert.near(0.0067156680828525, out.scores_x100.Bleu_4, 1e-12)
    assert.near(344.64804289638, out.scores_x100.CIDEr, 1e-9)
  end)

  it("drives METEOR as the reference's wrapper: LC_ALL=C, the paraphrase table, one space between words", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "/bin'"))
    local jar = dir .. "/meteor-1.5.jar"
    io.open(jar, "wb"):close()
    assert.equal("LC_ALL=C java -jar -Xmx2G '" .. jar .. "' - - -stdio -l en -norm", C.meteor_command(jar))
    io.open(dir .. "/paraphrase-en.gz", "wb"):close()
    assert.equal("LC_ALL=C java -jar -Xmx2G '" .. jar .. "' - - -stdio -l en -norm -a '" .. dir .. "/paraphrase-en.gz'",
      C.meteor_command(jar))
    assert.equal("SCORE ||| a b ||| c ||| x y z", C.meteor_score_line({"a  b", "c"}, "x |||  y\tz"))
    -- a stand-in java speaking the -stdio protocol: stats for SCORE lines, then the scores for EVAL
    local fake = dir .. "/bin/java"
    local f = assert(io.open(fake, "wb"))
    f:write("#!/bin/sh\necho \"$LC_ALL $*\" > \"" .. dir .. "/args\"\n",
      "n=0\nwhile IFS= read -r line; do\n  case \"$line\" in\n",
      "    SCORE*) n=$((n+1)); echo \"1 2 3\";;\n",
      "    EVAL*) i=0; while [ $i -lt $n ]; do echo 0.5; i=$((i+1)); done; echo 0.25;;\n",
      "  esac\ndone\n")
    f:close()
    assert(os.execute("chmod +x '" .. fake .. "'"))
    local path = os.getenv("PATH")
    local env_cmd = "PATH='" .. dir .. "/bin':" .. path
    local lua = arg and arg[-1] or "lua5.4"
    local script = string.format("local C = require 'hero.eval.caption'; local m, per = C.meteor({{'a b'}, {'c'}}, "
      .. "{'a  b', 'd'}, %q); io.write(m, ' ', #per, ' ', per[1])", jar)
    local p = io.popen(env_cmd .. " " .. lua .. " -e " .. string.format("%q", script):gsub("\\\n", "n") .. " 2>&1")
    local out = p:read("a")
    p:close()
    assert.equal("0.25 2 0.5", out)
    local args = io.open(dir .. "/args"):read("a")
    assert.matches("^C %-jar %-Xmx2G .-meteor%-1%.5%.jar %- %- %-stdio %-l en %-norm %-a .-paraphrase%-en%.gz", args)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("accepts a custom tokenizer and checks the clip sets", function()
    local refs = {{clip_id = 1, descs = {"A B"}}, {clip_id = 2, descs = {"c d"}}}
    local out = C.tvc_eval(refs, {{clip_id = 1, desc = "A B"}, {clip_id = 2, desc = "c d"}},
      {tokenize = function(s) return s end})
    assert.same({{"A B"}, {"c d"}}, out.refs_tokenized)
    assert.equal(100.0, out.scores_x100.ROUGE_L)
    helper.assert_error_contains(function() C.tvc_eval(refs, {{clip_id = 1, desc = "a"}}) end,
      "no prediction for clip 2")
    helper.assert_error_contains(function()
      C.tvc_eval(refs, {{clip_id = 1, desc = "a"}, {clip_id = 2, desc = "b"}, {clip_id = 3, desc = "c"}})
    end, "3 predicted clips for 2 reference clips")
    helper.assert_error_contains(function() C.tvc_eval(nil, {}) end, "references and predictions must be arrays")
    helper.assert_error_contains(function() C.tvc_eval({}, {}) end, "no reference clips")
    helper.assert_error_contains(function() C.tvc_eval({{clip_id = 1}}, {}) end, "reference 1 must be")
  end)

  it("skips METEOR without a meteor jar", function()
    assert.is_false(C.meteor_available(nil))
    assert.is_false(C.meteor_available("/nonexistent/meteor-1.5.jar"))
    local m, why = C.meteor({{"a b"}}, {"a b"}, "/nonexistent/meteor-1.5.jar")
    assert.is_nil(m)
    assert.truthy(why:find("skipped", 1, true))
    local out = C.tvc_eval(tfx.refs, tfx.preds, {meteor_jar = "/nonexistent/meteor-1.5.jar"})
    assert.is_nil(out.scores_x100.METEOR)
  end)
end)

describe("retrieval metrics refuse impossible windows", function()
  -- (predicted windows may be inverted: the reference's index-decoding bug produces such windows, and
  -- they simply never match)
  it("names a ground-truth window whose start is after its end", function()
    local sub = {video2idx = {a = 0}, VCMR = {{desc_id = 1, predictions = {{0, 1.0, 3.0, 0.9}}}}}
    local gt = {{desc_id = 1, vid_name = "a", ts = {5.0, 2.0}, type = "v"}}
    local ok, err = pcall(R.eval_retrieval, sub, gt)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("window {5.0, 2.0}", 1, true))
  end)
end)
