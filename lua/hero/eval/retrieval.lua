--- Video corpus moment retrieval evaluation (VCMR, SVMR, VR) as the reference's
-- eval_vcmr.py / utils/tvr_eval_utils.py / utils/tvr_standalone_eval.py compute it.
--
-- A submission is a Lua table {video2idx = {vid = idx}, VCMR = {...}, SVMR = {...}, VR = {...}}
-- where every task holds one entry per query: {desc_id = id, desc = "", predictions =
-- {{video_idx, st_seconds, ed_seconds, score}, ...}} (best first). Ground truth is an array of
-- {desc_id =, vid_name =, ts = {st, ed} or {{st, ed}, ...} (>= 4 windows, DiDeMo), type = "v"|"t"|"vt"}.
local util = require "hero.eval.util"

local f32, npround, pyrepr = util.f32, util.npround, util.pyrepr

local M = {}

M.TASKS = {"VCMR", "SVMR", "VR"}
M.DESC_TYPES = {"v", "t", "vt"}
M.RECALL_TOPKS = {1, 5, 10, 100}
M.IOU_THDS = {0.5, 0.7}

-- --------------------------------------------------------------------------------------------
-- IoU and non-maximum suppression
-- --------------------------------------------------------------------------------------------

--- Temporal IoU in double precision, as the NMS uses it: intersection over the hull
-- max(ed) - min(st) (the true union whenever the windows overlap); 0 when the hull is empty.
function M.temporal_iou(st1, ed1, st2, ed2)
  local inter = math.max(0, math.min(ed1, ed2) - math.max(st1, st2))
  local union = math.max(ed1, ed2) - math.min(st1, st2)
  if union == 0 then return 0 end
  return 1.0 * inter / union
end

--- The same IoU computed in float32, as the metrics compute it (inputs rounded to float32,
-- every operation rounded to float32).
function M.temporal_iou_f32(st1, ed1, st2, ed2)
  st1, ed1, st2, ed2 = f32(st1), f32(ed1), f32(st2), f32(ed2)
  local inter = math.max(0.0, f32(math.min(ed1, ed2) - math.max(st1, st2)))
  local union = f32(math.max(ed1, ed2) - math.min(st1, st2))
  if union == 0 then return 0.0 end
  return f32(inter / union)
end

--- Greedy 1-D NMS of {st, ed, score} windows: sort by score (stable, best first), keep the best,
-- drop every remaining window whose IoU with it is > nms_thd, repeat; at most max_after_nms
-- (default 100) windows are kept. Returns a new array of new {st, ed, score} entries.
function M.temporal_nms(preds, nms_thd, max_after_nms)
  if type(preds) ~= "table" then
    error("temporal_nms: preds must be an array of {st, ed, score}, got " .. type(preds), 2)
  end
  if type(nms_thd) ~= "number" then error("temporal_nms: nms_thd must be a number, got " .. type(nms_thd), 2) end
  max_after_nms = max_after_nms or 100
  for i, p in ipairs(preds) do
    -- a NaN score sorts nowhere: the windows around it would be kept or dropped at random
    if type(p) ~= "table" or type(p[3]) ~= "number" or p[3] ~= p[3] then
      error(string.format("temporal_nms: prediction %d must be {st, ed, score} with a score that is a number, got %s",
        i, type(p) == "table" and tostring(p[3]) or type(p)), 2)
    end
  end
  if #preds == 1 then return {{preds[1][1], preds[1][2], preds[1][3]}} end
  local t = util.stable_sort(util.head(preds), function(e) return e[3] end, true)
  local kept = {}
  while #t > 1 and #kept < max_after_nms do
    local best = t[1]
    local rest = {}
    for i = 2, #t do
      if M.temporal_iou(best[1], best[2], t[i][1], t[i][2]) <= nms_thd then rest[#rest + 1] = t[i] end
    end
    kept[#kept + 1] = best
    t = rest
  end
  if #kept < max_after_nms and #t >= 1 then kept[#kept + 1] = t[1] end
  local out = {}
  for i, e in ipairs(kept) do out[i] = {e[1], e[2], e[3]} end
  return out
end

--- VCMR NMS for one query: group the first max_before_nms {video, st, ed, score} predictions by
-- video (in order of first appearance), NMS inside each video (at most 100 per video), merge,
-- stable-sort by score and keep max_after_nms.
function M.filter_vcmr_by_nms(preds, nms_thd, max_before_nms, max_after_nms)
  local groups, order = {}, {}
  for i = 1, math.min(#preds, max_before_nms or #preds) do
    local p = preds[i]
    local g = groups[p[1]]
    if not g then
      g = {}
      groups[p[1]] = g
      order[#order + 1] = p[1]
    end
    g[#g + 1] = {p[2], p[3], p[4]}
  end
  local merged = {}
  for _, vid in ipairs(order) do
    for _, e in ipairs(M.temporal_nms(groups[vid], nms_thd)) do
      merged[#merged + 1] = {vid, e[1], e[2], e[3]}
    end
  end
  util.stable_sort(merged, function(e) return e[4] end, true)
  return util.head(merged, max_after_nms or 100)
end

--- SVMR NMS for one query (all predictions on one video): NMS over the first max_before_nms,
-- keep max_after_nms.
function M.filter_svmr_by_nms(preds, nms_thd, max_before_nms, max_after_nms)
  if #preds == 0 then return {} end
  local windows = {}
  for i = 1, math.min(#preds, max_before_nms or #preds) do
    windows[i] = {preds[i][2], preds[i][3], preds[i][4]}
  end
  local vid = preds[1][1]
  local out = {}
  for i, e in ipairs(util.head(M.temporal_nms(windows, nms_thd), max_after_nms or 100)) do
    out[i] = {vid, e[1], e[2], e[3]}
  end
  return out
end

local function copy_entry(e, preds)
  local c = {}
  for k, v in pairs(e) do c[k] = v end
  c.predictions = preds
  return c
end

--- A copy of the submission with every prediction list cut to its first top_n entries
-- (get_submission_top_n). The input is not modified.
function M.top_n(submission, top_n)
  local out = {video2idx = submission.video2idx}
  for _, task in ipairs(M.TASKS) do
    if submission[task] then
      local list = {}
      for i, e in ipairs(submission[task]) do list[i] = copy_entry(e, util.head(e.predictions, top_n)) end
      out[task] = list
    end
  end
  return out
end

--- NMS of a whole submission: VCMR and SVMR lists filtered (VR is dropped, as in the reference's
-- post-NMS submission). opts: nms_thd, max_before_nms (default 200), max_after_nms (default 100).
function M.nms_submission(submission, opts)
  local thd = assert(opts.nms_thd, "nms_submission: opts.nms_thd is required")
  local before, after = opts.max_before_nms or 200, opts.max_after_nms or 100
  local out = {video2idx = submission.video2idx}
  if submission.SVMR then
    out.SVMR = {}
    for i, e in ipairs(submission.SVMR) do
      out.SVMR[i] = copy_entry(e, M.filter_svmr_by_nms(e.predictions, thd, before, after))
    end
  end
  if submission.VCMR then
    out.VCMR = {}
    for i, e in ipairs(submission.VCMR) do
      out.VCMR[i] = copy_entry(e, M.filter_vcmr_by_nms(e.predictions, thd, before, after))
    end
  end
  return out
end

-- --------------------------------------------------------------------------------------------
-- Metrics (utils/tvr_standalone_eval.py)
-- --------------------------------------------------------------------------------------------

-- round(np.float64, 2) of the reference's NumPy values: NumPy's rounding (scale, rint, unscale)
local function percentage(x) return npround(x * 100, 2) end

-- Per ground-truth item: vid-match flags and per-threshold correctness of its first
-- max_pred predictions.
local function judge(preds, gt_item, gt_vidx, iou_thds, max_pred)
  local n = math.min(#preds, max_pred)
  local matched, correct = {}, {}
  for t = 1, #iou_thds do correct[t] = {} end
  local ts = gt_item.ts
  local windows
  if ts ~= nil then
    if type(ts[1]) == "table" then
      if #ts < 4 then
        error(string.format("eval_retrieval: ground truth desc_id %s has %d windows; the reference's rule "
          .. "takes one {st, ed} or at least 4 windows (DiDeMo)", tostring(gt_item.desc_id), #ts), 0)
      end
      windows = ts
    else
      windows = {ts}
    end
  end
  for _, w in ipairs(windows or {}) do
    if type(w[1]) ~= "number" or type(w[2]) ~= "number" or w[1] ~= w[1] or w[2] ~= w[2] or w[1] > w[2] then
      error(string.format("eval_retrieval: ground truth desc_id %s has the window {%s, %s}: expected numbers with "
        .. "start <= end", tostring(gt_item.desc_id), tostring(w[1]), tostring(w[2])), 0)
    end
  end
  local thd32 = {}
  for t, thd in ipairs(iou_thds) do thd32[t] = f32(thd) end
  local gidx = f32(gt_vidx)
  for i = 1, n do
    local p = preds[i]
    local m = f32(p[1]) == gidx
    matched[i] = m
    if windows then
      -- DiDeMo: correct when the IoU reaches the threshold with at least 2 of the >= 4 windows.
      local need = #windows >= 4 and 2 or 1
      local hits = {}
      for t = 1, #iou_thds do hits[t] = 0 end
      if m then
        for _, w in ipairs(windows) do
          local iou = M.temporal_iou_f32(p[2], p[3], w[1], w[2])
          for t = 1, #iou_thds do
            if iou >= thd32[t] then hits[t] = hits[t] + 1 end
          end
        end
      else
        -- A wrong video has IoU 0, which passes only a threshold <= 0.
        for t = 1, #iou_thds do
          if 0.0 >= thd32[t] then hits[t] = #windows end
        end
      end
      for t = 1, #iou_thds do correct[t][i] = hits[t] >= need end
    end
  end
  return matched, correct, n
end

local function any_in_first(flags, n, k)
  for i = 1, math.min(n, k) do
    if flags[i] then return true end
  end
  return false
end

--- Metrics of one task (eval_by_task_type). preds: the task's list of query entries; gt: array of
-- ground-truth items. opts: iou_thds {0.5, 0.7}, recall_topks {1, 5, 10, 100},
-- max_pred_per_query 100, match_number true (desc_ids of predictions and ground truth must be the
-- same set), use_desc_type true (also a by-type table). Returns metrics, metrics_by_type.
function M.eval_by_task_type(preds, video2idx, gt, task, opts)
  opts = opts or {}
  local iou_thds = opts.iou_thds or M.IOU_THDS
  local topks = opts.recall_topks or M.RECALL_TOPKS
  local max_pred = opts.max_pred_per_query or 100
  local match_number = opts.match_number ~= false
  local use_desc_type = opts.use_desc_type ~= false
  if task ~= "VCMR" and task ~= "SVMR" and task ~= "VR" then
    error("eval_by_task_type: task must be one of VCMR, SVMR, VR (got " .. tostring(task) .. ")", 0)
  end

  local pred_by_id = {}
  for _, e in ipairs(preds) do pred_by_id[e.desc_id] = e end
  -- dict semantics of the reference: a repeated desc_id keeps its first position, last value.
  local gt_by_id, gt_order = {}, {}
  for _, e in ipairs(gt) do
    if gt_by_id[e.desc_id] == nil then gt_order[#gt_order + 1] = e.desc_id end
    gt_by_id[e.desc_id] = e
  end
  if match_number then
    local bad
    for id in pairs(gt_by_id) do if pred_by_id[id] == nil then bad = id break end end
    if bad == nil then
      for id in pairs(pred_by_id) do if gt_by_id[id] == nil then bad = id break end end
    end
    if bad ~= nil then
      error(string.format("eval_retrieval: %s: desc_ids in predictions and ground_truth must match "
        .. "(desc_id %s is in only one of them)", task, tostring(bad)), 0)
    end
  end

  local rows = {}
  for _, id in ipairs(gt_order) do
    local g = gt_by_id[id]
    local e = pred_by_id[id]
    if e ~= nil then
      local gvidx = video2idx[g.vid_name]
      if gvidx == nil then
        error(string.format("eval_retrieval: ground truth video %q (desc_id %s) is not in video2idx",
          tostring(g.vid_name), tostring(id)), 0)
      end
      local matched, correct, n = judge(e.predictions, g, gvidx, iou_thds, max_pred)
      if task ~= "VR" and g.ts == nil then
        error(string.format("eval_retrieval: %s needs ground truth windows (ts) for desc_id %s", task,
          tostring(id)), 0)
      end
      if use_desc_type and not ({v = 1, t = 1, vt = 1})[g.type] then
        error(string.format("eval_retrieval: desc_id %s has type %s (expected v, t or vt)", tostring(id),
          tostring(g.type)), 0)
      end
      rows[#rows + 1] = {matched = matched, correct = correct, n = n, type = g.type}
    end
  end
  local n_desc = #rows

  -- hit(row, t, k): does the query count at recall K (t = threshold index, nil for VR)?
  local function hit(row, t, k)
    if task == "VR" then return any_in_first(row.matched, row.n, k) end
    if task == "VCMR" then return any_in_first(row.correct[t], row.n, k) end
    -- SVMR: only the predictions on the ground-truth video count, then the first K of those.
    local seen = 0
    for i = 1, row.n do
      if row.matched[i] then
        seen = seen + 1
        if seen > k then return false end
        if row.correct[t][i] then return true end
      end
    end
    return false
  end

  local metrics, by_type = {}, {}
  local function fill(prefix, t, k)
    local total, per_type = 0, {v = 0, t = 0, vt = 0}
    for _, row in ipairs(rows) do
      if hit(row, t, k) then
        total = total + 1
        if use_desc_type then per_type[row.type] = per_type[row.type] + 1 end
      end
    end
    metrics[prefix] = percentage(n_desc > 0 and total / n_desc or 0 / 0)
    if use_desc_type then
      for _, dt in ipairs(M.DESC_TYPES) do
        local n_type = 0
        for _, row in ipairs(rows) do if row.type == dt then n_type = n_type + 1 end end
        by_type[dt .. "-" .. prefix] = percentage(1.0 * per_type[dt] / n_type)
      end
    end
  end
  if task == "VR" then
    for _, k in ipairs(topks) do fill("r" .. k, nil, k) end
  else
    for t, thd in ipairs(iou_thds) do
      for _, k in ipairs(topks) do fill(pyrepr(thd) .. "-r" .. k, t, k) end
    end
  end
  if use_desc_type then
    local parts = {}
    for _, dt in ipairs(M.DESC_TYPES) do
      local c = 0
      for _, row in ipairs(rows) do if row.type == dt then c = c + 1 end end
      parts[#parts + 1] = dt .. " " .. pyrepr(percentage(1.0 * c / n_desc))
    end
    by_type.desc_type_ratio = table.concat(parts, " ")
  end
  return metrics, by_type
end

--- eval_retrieval: metrics of every task present in the submission, keyed "VCMR", "SVMR", "VR"
-- and (use_desc_type) "VCMR_by_type", ... Options as eval_by_task_type.
function M.eval_retrieval(submission, gt, opts)
  opts = opts or {}
  if type(submission) ~= "table" or type(submission.video2idx) ~= "table" then
    error("eval_retrieval: submission must be a table with video2idx", 0)
  end
  local out = {}
  for _, task in ipairs(M.TASKS) do
    if submission[task] then
      -- no query: every metric would be 0 / 0
      if #submission[task] == 0 then error(string.format("eval_retrieval: the %s submission has no query", task), 0) end
      local m, bt = M.eval_by_task_type(submission[task], submission.video2idx, gt, task, opts)
      out[task] = m
      if opts.use_desc_type ~= false then out[task .. "_by_type"] = bt end
    end
  end
  return out
end

--- Averages per-rank metrics weighted by their query counts, as the reference's distributed
-- evaluation does: sum(n_i * m_i) / sum(n_i) (desc_type_ratio skipped). per_rank: array of
-- {n = queries, metrics = eval_retrieval result}. Returns the gathered metrics table.
function M.gather_metrics(per_rank)
  local n_ex = 0
  for _, r in ipairs(per_rank) do n_ex = n_ex + r.n end
  local out = {}
  for task, tm in pairs(per_rank[1].metrics) do
    out[task] = {}
    for k in pairs(tm) do
      if k ~= "desc_type_ratio" then
        local v = 0
        for _, r in ipairs(per_rank) do v = v + r.n * r.metrics[task][k] end
        out[task][k] = v / n_ex
      end
    end
  end
  return out
end

--- The reference's logged values: "valid_<split>_<task>/<task>_<metric>" (and
-- "valid_<split>_<task>_nms_<thd>/<task>_<metric>" after NMS).
function M.val_log(split, gathered, gathered_nms, nms_thd)
  local log = {}
  for task, tm in pairs(gathered) do
    for k, v in pairs(tm) do log[string.format("valid_%s_%s/%s_%s", split, task, task, k)] = v end
  end
  if gathered_nms then
    local thd = pyrepr(nms_thd)
    for task, tm in pairs(gathered_nms) do
      for k, v in pairs(tm) do log[string.format("valid_%s_%s_nms_%s/%s_%s", split, task, thd, task, k)] = v end
    end
  end
  return log
end

-- --------------------------------------------------------------------------------------------
-- Predictions from score tensors (eval_vcmr.py:validate_full_vcmr after the model call)
-- --------------------------------------------------------------------------------------------

--- The length band mask [L, L] (f32): 1 where min_l <= ed - st < max_l (triu(k=min_l) -
-- triu(k=max_l)), 0 elsewhere.
function M.length_mask(L, min_l, max_l)
  local hero = require "hero"
  local rows = {}
  for i = 1, L do
    local r = {}
    for j = 1, L do
      local d = j - i
      r[j] = (d >= min_l and d < max_l) and 1 or 0
    end
    rows[i] = r
  end
  return hero.tensor(rows, {dtype = "f32"})
end

local function check_tensor(hero, t, name, ndim)
  if not hero.is_tensor(t) then error("vcmr predict: inputs." .. name .. " must be a tensor", 0) end
  if t:dim() ~= ndim then
    error(string.format("vcmr predict: inputs.%s must have %d dimensions (got %s)", name, ndim,
      table.concat(t:size(), "x")), 0)
  end
end

local DEFAULTS = {
  q2c_alpha = 20, max_vcmr_video = 100, min_pred_l = 2, max_pred_l = 16, max_before_nms = 200,
  max_after_nms = 100, nms_thd = 0.5, vfeat_interval = 1.5, query_batch_size = 16,
}

-- What each option holds: a misspelt {nms_thresh = -1} ran NMS at 0.5, a NaN q2c_alpha ranked by
-- NaN scores and reported a recall, tasks = {"vr"} evaluated nothing.
local OPTIONS = {
  q2c_alpha = "number", max_vcmr_video = "integer >= 1", min_pred_l = "integer >= 0", max_pred_l = "integer >= 1",
  max_before_nms = "integer >= 1", max_after_nms = "integer >= 1", nms_thd = "number", vfeat_interval = "number > 0",
  query_batch_size = "integer >= 1", tasks = "table", reference_bug = "boolean", max_clip_len = "integer >= 1",
  eval_with_query_type = "boolean", split = "string", nms_from = {"before_nms", "after_nms"}, amp = "any",
  max_vr_video = "integer >= 1",
}
M.OPTIONS = OPTIONS
local TASK_NAMES = {VCMR = true, SVMR = true, VR = true}

local function with_defaults(opts, who)
  require("hero.models.options").check(who or "retrieval", opts, OPTIONS, 3,
    require("hero.cli").reference_option_names())
  if opts and opts.tasks then
    if #opts.tasks == 0 then error((who or "retrieval") .. ": option tasks must list VCMR, SVMR or VR", 3) end
    for _, t in ipairs(opts.tasks) do
      if not TASK_NAMES[t] then
        error(string.format("%s: option tasks: '%s' is not one of VCMR, SVMR, VR", who or "retrieval", tostring(t)), 3)
      end
    end
  end
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

--- Ranked VCMR / SVMR / VR predictions from the model's score tensors.
-- inputs:
--   q2video_scores [Nq, Nv]    cosine-max query-video scores (before exp(q2c_alpha * s)), or
--   q2video_exp_scores [Nq, Nv] the same after exp(q2c_alpha * s); MSR-VTT's VR (eval_vr.py,
--                               no exp) passes its raw scores here with tasks = {"VR"}
--   st_logits, ed_logits [Nq, Nv, L]  masked start/end logits (or st_probs/ed_probs: softmaxed)
--   video_ids   array of Nv video names in the video axis order (the reference sorts them)
--   video2idx   {name = global index} written into the predictions
--   query_ids   array of Nq desc_ids
--   query_vids  array of Nq ground-truth video names (needed for SVMR only)
-- opts (defaults = TVR): q2c_alpha 20, max_vcmr_video 100, min_pred_l 2, max_pred_l 16,
--   max_before_nms 200, vfeat_interval 1.5, tasks {"VCMR", "SVMR", "VR"}, query_batch_size 16,
--   reference_bug false (true: reproduce eval_vcmr.py -- decode flat indices with max_clip_len
--   instead of L, and fail when max_vcmr_video exceeds the corpus), max_clip_len (for the bug).
-- Returns a submission whose lists hold max_before_nms (VCMR, SVMR) and min(k, 100) (VR) entries.
function M.predict(inputs, opts)
  local hero = require "hero"
  if type(inputs) ~= "table" then
    error("retrieval.predict: inputs must be a table of score tensors, got " .. type(inputs), 2)
  end
  opts = with_defaults(opts, "retrieval.predict")
  local tasks = {}
  for _, t in ipairs(opts.tasks or M.TASKS) do tasks[t] = true end
  local q2v = inputs.q2video_exp_scores or inputs.q2video_scores
  local exped = inputs.q2video_exp_scores ~= nil
  local st_in = inputs.st_probs or inputs.st_logits
  local ed_in = inputs.ed_probs or inputs.ed_logits
  local softmaxed = inputs.st_probs ~= nil
  local moments = tasks.VCMR or tasks.SVMR
  local nq, nv, L
  if moments then
    check_tensor(hero, st_in, softmaxed and "st_probs" or "st_logits", 3)
    check_tensor(hero, ed_in, softmaxed and "ed_probs" or "ed_logits", 3)
    nq, nv, L = st_in:size(1), st_in:size(2), st_in:size(3)
    local ed_sz = ed_in:size()
    if ed_sz[1] ~= nq or ed_sz[2] ~= nv or ed_sz[3] ~= L then
      error(string.format("vcmr predict: start scores %dx%dx%d and end scores %s differ in shape", nq, nv, L,
        table.concat(ed_sz, "x")), 0)
    end
  else
    check_tensor(hero, q2v, exped and "q2video_exp_scores" or "q2video_scores", 2)
    nq, nv, L = q2v:size(1), q2v:size(2), 1
  end
  local video_ids, video2idx, qids = inputs.video_ids, inputs.video2idx, inputs.query_ids
  if type(video_ids) ~= "table" or #video_ids ~= nv then
    error(string.format("vcmr predict: inputs.video_ids must list the %d videos of the score tensors", nv), 0)
  end
  if type(qids) ~= "table" or #qids ~= nq then
    error(string.format("vcmr predict: inputs.query_ids must list the %d queries", nq), 0)
  end
  local gidx = {}
  for i, vid in ipairs(video_ids) do
    gidx[i] = video2idx[vid]
    if gidx[i] == nil then error("vcmr predict: video " .. tostring(vid) .. " is not in video2idx", 0) end
  end
  local k = opts.max_vcmr_video
  if (tasks.VR or tasks.VCMR) then
    check_tensor(hero, q2v, exped and "q2video_exp_scores" or "q2video_scores", 2)
    if q2v:size(1) ~= nq or q2v:size(2) ~= nv then
      error(string.format("vcmr predict: q2video_scores is %s, expected %dx%d", table.concat(q2v:size(), "x"),
        nq, nv), 0)
    end
    if k > nv then
      if opts.reference_bug then
        error(string.format("vcmr predict: selected index k out of range (max_vcmr_video %d > %d videos; "
          .. "reference_bug reproduces this failure)", k, nv), 0)
      end
      k = nv
    end
  end
  local M_dec = L
  if opts.reference_bug then
    M_dec = opts.max_clip_len or L
    if M_dec < L then
      error(string.format("vcmr predict: max_clip_len %d is below the score length %d", M_dec, L), 0)
    end
  end
  local local_of = {}
  for i, vid in ipairs(video_ids) do local_of[vid] = i - 1 end
  if tasks.SVMR then
    if type(inputs.query_vids) ~= "table" or #inputs.query_vids ~= nq then
      error(string.format("vcmr predict: SVMR needs inputs.query_vids (the %d ground-truth videos)", nq), 0)
    end
    for i, v in ipairs(inputs.query_vids) do
      if local_of[v] == nil then
        error(string.format("vcmr predict: query %s: ground-truth video %s is not in the corpus",
          tostring(qids[i]), tostring(v)), 0)
      end
    end
  end

  local iv = opts.vfeat_interval
  local iv32 = f32(iv)
  local mask = moments and M.length_mask(L, opts.min_pred_l, opts.max_pred_l):to {device = st_in:device()}
  local sub = {video2idx = video2idx}
  if tasks.VCMR then sub.VCMR = {} end
  if tasks.SVMR then sub.SVMR = {} end
  if tasks.VR then sub.VR = {} end
  local bs = math.max(1, opts.query_batch_size)
  for q0 = 1, nq, bs do
    local n = math.min(bs, nq - q0 + 1)
    local st, ed
    if moments then
      st, ed = st_in:narrow(1, q0, n):float(), ed_in:narrow(1, q0, n):float()
      if not softmaxed then st, ed = st:softmax(-1), ed:softmax(-1) end
    end

    if tasks.SVMR then
      local g = {}
      for i = 1, n do g[i] = local_of[inputs.query_vids[q0 + i - 1]] end
      local gi = hero.tensor(g, {dtype = "i64", device = st:device()}):view(n, 1, 1):expand(n, 1, L)
      local sg = st:gather(2, gi):view(n, L)
      local eg = ed:gather(2, gi):view(n, L)
      local prod = (sg:unsqueeze(3) * eg:unsqueeze(2)) * mask
      local top = math.min(opts.max_before_nms, L * L)
      -- top_n_array_2d ranks with argsort(...)[::-1]: equal scores (the zeros outside the length
      -- band) come from the highest flat index down, so topk runs on the flipped row
      local sv, si = prod:reshape(n, L * L):flip(2):topk(top, 2)
      sv, si = sv:totable(), si:totable()
      for i = 1, n do
        local q = q0 + i - 1
        local vidx = video2idx[inputs.query_vids[q]]
        local preds = {}
        for j = 1, top do
          local f = L * L - 1 - si[i][j]
          preds[j] = {vidx, (f // L) * iv, (f % L + 1) * iv, sv[i][j]}
        end
        sub.SVMR[q] = {desc_id = qids[q], desc = "", predictions = preds}
      end
    end

    if tasks.VR or tasks.VCMR then
      local w = q2v:narrow(1, q0, n):float()
      if not exped then w = (w * opts.q2c_alpha):exp() end
      local tv, ti = w:topk(k, 2)
      if tasks.VR then
        local tvt, tit = tv:totable(), ti:totable()
        for i = 1, n do
          local preds = {}
          for j = 1, math.min(k, 100) do preds[j] = {gidx[tit[i][j] + 1], 0, 0, tvt[i][j]} end
          sub.VR[q0 + i - 1] = {desc_id = qids[q0 + i - 1], desc = "", predictions = preds}
        end
      end
      if tasks.VCMR then
        local idx = ti:unsqueeze(3):expand(n, k, L)
        local ssel, esel = st:gather(2, idx), ed:gather(2, idx)
        -- einsum("qvm,qv,qvn->qvmn") contracts left to right: (st * w) * ed, in float32.
        local prod = (ssel * tv:unsqueeze(3)):unsqueeze(4) * esel:unsqueeze(3)
        prod = prod * mask
        local top = math.min(opts.max_before_nms, k * L * L)
        local sv, si = prod:reshape(n, k * L * L):topk(top, 2)
        sv, si = sv:totable(), si:totable()
        local tit = ti:totable()
        local MM = M_dec * M_dec
        for i = 1, n do
          local q = q0 + i - 1
          local preds = {}
          for j = 1, top do
            local f = si[i][j]
            local v, s, e = f // MM, (f // M_dec) % M_dec, f % M_dec
            local vloc = tit[i][v + 1]
            -- float32 seconds: idx.astype(float32) * interval (+ interval for the inclusive end)
            preds[j] = {gidx[vloc + 1], f32(f32(s) * iv32), f32(f32(f32(e) * iv32) + iv32), sv[i][j]}
          end
          sub.VCMR[q] = {desc_id = qids[q], desc = "", predictions = preds}
        end
      end
    end
  end
  return sub
end

--- The whole evaluation of validate_full_vcmr from score tensors: predictions, the top
-- max_after_nms, metrics, NMS (unless nms_thd == -1) and its metrics, and the logged values.
-- inputs: as predict; ground_truth: array of {desc_id, vid_name, ts, type} (nil: predictions only).
-- opts: as predict plus max_after_nms 100, nms_thd 0.5, eval_with_query_type true, split "val",
--   nms_from = "top_n" (the reference runs NMS on the already cut max_after_nms lists) or
--   "before_nms" (on the max_before_nms candidates).
-- Returns {submission, metrics, submission_nms, metrics_nms, submission_before_nms, val_log}:
-- metrics come from the top-n lists before NMS; submission is what validate_full_vcmr returns and
-- the reference saves: those lists, whose VCMR and SVMR predictions its NMS (when it runs, on a
-- split with ground truth) has replaced by the filtered ones (submission_before_nms keeps the
-- unfiltered lists).
function M.evaluate(inputs, ground_truth, opts)
  opts = with_defaults(opts, "retrieval.evaluate")
  local full = M.predict(inputs, opts)
  local sub = M.top_n(full, opts.max_after_nms)
  local res = {submission = sub}
  if ground_truth == nil then return res end
  -- no queries (a rank's empty share of a distributed evaluation): no metrics, nothing to log
  if #inputs.query_ids == 0 then
    res.val_log = {}
    return res
  end
  local eopts = {use_desc_type = opts.eval_with_query_type ~= false}
  res.metrics = M.eval_retrieval(sub, ground_truth, eopts)
  local n = #inputs.query_ids
  local gathered = M.gather_metrics({{n = n, metrics = res.metrics}})
  local gathered_nms
  if opts.nms_thd ~= -1 then
    local src = opts.nms_from == "before_nms" and full or sub
    res.submission_nms = M.nms_submission(src, opts)
    res.metrics_nms = M.eval_retrieval(res.submission_nms, ground_truth, eopts)
    gathered_nms = M.gather_metrics({{n = n, metrics = res.metrics_nms}})
    -- the reference's NMS rewrites the predictions of the submission it returns and saves
    -- (post_processing_*_nms work in place): its VCMR and SVMR lists are the filtered ones
    res.submission_before_nms = sub
    res.submission = {video2idx = sub.video2idx, VR = sub.VR, VCMR = res.submission_nms.VCMR,
      SVMR = res.submission_nms.SVMR}
  end
  res.val_log = M.val_log(opts.split or "val", gathered, gathered_nms, opts.nms_thd)
  return res
end

return M
