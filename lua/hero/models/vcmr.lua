--- Video corpus moment retrieval (hero-spec §5.1, §5.2):
--   HeroForVcmr  TVR / How2R / DiDeMo: the pre-training model's structure and parameter names
--                with the VSM objective on per-query batches (one video per query): local
--                start/end CE (non-cross path when queries and videos pair up one to one) and the
--                global hinge ranking losses over in-batch negatives, hard negatives when switched on;
--                full-corpus inference (VR re-ranking, VCMR, SVMR, NMS, metrics) as eval_vcmr.py.
--   HeroForVr    MSR-VTT: the same without the local loss (lw_st_ed 0); inference as eval_vr.py
--                (raw cosine-max scores, no exp).
local core = require "hero.core"
local amp = require "hero.amp"
local F = require "hero.nn.functional"
local Pretrain = require "hero.models.pretrain"
local vsm = require "hero.models.vsm"
local batch_shapes = require "hero.models.batch_shapes"

local M = {}

local VCMR_TASKS = {tvr = true, how2r = true, didemo_video_sub = true, didemo_video_only = true, vcmr = true}
local VR_TASKS = {msrvtt_video_sub = true, msrvtt_video_only = true, vr = true}

-- The evaluation options (hero.eval.retrieval's, which every step of evaluate_full reads its
-- share of), checked where they enter; the reference's other options pass.
local function check_eval_opts(who, opts)
  return require("hero.models.options").check(who, opts, require("hero.eval.retrieval").OPTIONS, 3,
    require("hero.cli").reference_option_names())
end

local function copy(t)
  local o = {}
  for k, v in pairs(t or {}) do o[k] = v end
  return o
end

M.HeroForVcmr = Pretrain:extend("HeroForVcmr")
local Vcmr = M.HeroForVcmr

--- cfg: the reference's fine-tuning config ({f_config, c_config, q_config}); opts (defaults = the
-- TVR fine-tuning config): vfeat_dim (required), max_frm_seq_len (100), lw_st_ed (0.01),
-- lw_neg_ctx (8), lw_neg_q (8), margin (0.1), ranking_loss_type ("hinge" | "lse"),
-- drop_svmr_prob (0.8: the local loss is used on a random 20 % of the training forwards; 0 = always),
-- hard_negative ({pool_size, weight} or nil; see set_hard_negative), dtype, generator.
function Vcmr:__init(cfg, opts)
  local o = copy(opts)
  if o.lw_st_ed == nil then o.lw_st_ed = 0.01 end
  if o.lw_neg_ctx == nil then o.lw_neg_ctx = 8 end
  if o.lw_neg_q == nil then o.lw_neg_q = 8 end
  if o.drop_svmr_prob == nil then o.drop_svmr_prob = 0.8 end
  Pretrain.__init(self, cfg, o)
end

--- Hard negatives (train_vcmr.py switches them on at hard_negtiave_start_step): the pool_size
-- highest-scoring negatives of every row weigh `weight`, the others 0.1.
function Vcmr:set_hard_negative(on, pool_size, weight)
  self.opts.hard_negative = on and {pool_size = pool_size or 20, weight = weight or 10} or nil
end

--- Sets every dropout probability to p (the reference's set_dropout); returns the model.
function Vcmr:set_dropout(p) return require("hero.models.downstream").set_dropout(self, p) end

--- Weight of the local start/end loss (set_train_st_ed).
function Vcmr:set_train_st_ed(lw) self.opts.lw_st_ed = lw end

--- Start/end logits of each query against its own video (the non-cross path): u [N, H],
-- Y [N, L, H], mask [N, L] -> st, ed [N, L].
local function paired_st_ed(u, Y, mask, conv_st, conv_ed)
  local N, L = Y:size(1), Y:size(2)
  local sim = core.matmul(Y, u:unsqueeze(3)):view(N, 1, L)
  local function head(w) return F.mask_logits(core.conv1d(sim, w, nil, w:size(3) // 2):view(N, L), mask) end
  return head(conv_st), head(conv_ed)
end

--- forward(batch, task[, opts]): task "tvr", "how2r", "didemo_video_sub", "didemo_video_only"
-- (or "vcmr"). batch: vcmr_collate's tensors (representation path + query_input_ids /
-- query_pos_ids / query_attn_masks, targets [Nq, 2], q_vidx) with num_subs / sub_idx2frame_idx.
-- Returns {loss, loss_st_ed, loss_neg_ctx, loss_neg_q, st_logits, ed_logits [Nq, L],
-- q2video_scores [Nq, Nv], q_mod, q_f_out, c_out, ...}. In training mode the losses are means;
-- in evaluation mode the reference's "sum" reduction (summed CE, per-query ranking vectors) and
-- `loss` is the sum of everything. opts: cross (force the cross st/ed path), hard_negative.
function Vcmr:forward(batch, task, opts)
  local options = require "hero.models.options"
  opts = options.check(self.__name .. ":forward", opts, options.RANKING_FORWARD, 2)
  options.check_hard_negative(self.__name .. ":forward", opts.hard_negative, 2)
  if task ~= nil and not VCMR_TASKS[task] and not (VR_TASKS[task] and self.vr_only) then
    self:error("unknown task '%s' (tvr, how2r, didemo_video_sub or didemo_video_only)", tostring(task))
  end
  local o = self.opts
  local training = self.training
  batch_shapes.check_batch(self, "forward: the batch", batch, batch_shapes.DOWNSTREAM.vcmr, self.v_encoder)
  local Y, acts = self.v_encoder:forward_repr(batch)
  local q, qa = self:encode_queries(batch.query_input_ids, batch.query_pos_ids, batch.query_attn_masks)
  for k, t in pairs(qa) do acts[k] = t end
  acts.q_mod = q
  local mask = batch.c_attn_masks
  local red = training and "mean" or "sum"
  local parts = {}
  local use_local = o.lw_st_ed ~= 0 and (not training or o.drop_svmr_prob == 0 or
    (opts.draw and opts.draw() or core.rand({1}, self.generator and {generator = self.generator} or nil):item())
      > o.drop_svmr_prob)
  if use_local then
    local u = self.video_query_linear:forward(q)
    local st, ed
    local Nq, Nv = q:size(1), Y:size(1)
    if Nq == Nv and not opts.cross then
      st, ed = paired_st_ed(u, Y, mask, self.video_st_predictor.weight, self.video_ed_predictor.weight)
    else
      local st_all, ed_all = vsm.st_ed_logits(u, Y, mask, self.video_st_predictor.weight,
        self.video_ed_predictor.weight)
      acts.st_logits_all, acts.ed_logits_all = st_all, ed_all
      local L = st_all:size(3)
      local vidx = batch.q_vidx:view(Nq, 1, 1):expand(Nq, 1, L)
      st, ed = st_all:gather(2, vidx):squeeze(2), ed_all:gather(2, vidx):squeeze(2)
    end
    acts.st_logits, acts.ed_logits = st, ed
    if batch.targets then
      local t = batch.targets
      local l = core.cross_entropy(st, t:select(2, 1), {ignore_index = -1, reduction = red})
        + core.cross_entropy(ed, t:select(2, 2), {ignore_index = -1, reduction = red})
      acts.loss_st_ed = l * o.lw_st_ed
      parts[#parts + 1] = acts.loss_st_ed
    end
  end
  if o.lw_neg_ctx ~= 0 or o.lw_neg_q ~= 0 then
    -- opts.all_gather (the distributed Trainer): scores over every rank's queries and videos, as
    -- the reference gathers them over the GPUs; the local loss above stays per rank
    local S = vsm.video_scores(q, Y, mask, opts.all_gather)
    acts.q2video_scores = S
    local l_ctx, l_q = vsm.ranking_losses(S, {margin = o.margin, loss_type = o.ranking_loss_type,
      hard = opts.hard_negative or o.hard_negative, reduction = red, sampled = not o.use_all_neg,
      generator = self.generator})
    acts.loss_neg_ctx, acts.loss_neg_q = l_ctx * o.lw_neg_ctx, l_q * o.lw_neg_q
    parts[#parts + 1] = acts.loss_neg_ctx
    parts[#parts + 1] = acts.loss_neg_q
    -- train_vcmr.py's logged parts (each divided by its weight)
    if training then acts.log_parts = Pretrain.loss_parts(o, acts.loss_st_ed, l_ctx, l_q) end
  end
  local total
  for _, p in ipairs(parts) do
    if p:dim() > 0 then p = p:sum() end
    total = total and (total + p) or p
  end
  acts.loss = total
  return acts
end

-- The batch on `device`: hero.train.Trainer.batch_to moves its tensors (and the row indices of its
-- masks, made from the host copy); a batch for the CPU is returned as it is.
local function to_device(batch, device)
  if device == "cpu" then return batch end
  return require("hero.train.trainer").batch_to(batch, device)
end

-- fn(...) under hero.amp.autocast(dtype) when dtype ("bf16", "f16") is given, else fn(...) as it is.
local function autocast(dtype, fn, ...)
  if dtype then return amp.autocast(dtype, fn, ...) end
  return fn(...)
end

-- A score tensor in f32: autocast leaves the products (and conv1d on a GPU) in bf16/f16, whose
-- exp(q2c_alpha * s) overflows f16 and whose softmax over the frames and ranking the evaluation
-- reads in f32, as on the CPU without autocast. Other dtypes are returned as they are.
local function f32_scores(t)
  if t ~= nil and (t:dtype() == "bf16" or t:dtype() == "f16") then return t:float() end
  return t
end

-- The tensors of `out` on the host (the ranking, its top-k and the JSON read them there); CPU
-- tensors are kept as they are.
local function to_host(out)
  local host = {}
  for k, t in pairs(out) do host[k] = (core.is_tensor(t) and t:device() ~= "cpu") and t:cpu() or t end
  return host
end

-- Runs fn in evaluation mode without gradients, restoring the training flag afterwards.
local function inference(model, fn, ...)
  local was = model.training
  model:evaluate()
  local ok, a, b = pcall(core.no_grad, fn, ...)
  model:train(was)
  if not ok then error(a, 0) end
  return a, b
end

--- Encodes a corpus of videos once (validate_full_vcmr): video_batches is an array of collated
-- video batches (video_collate, with num_subs / sub_idx2frame_idx) in corpus order. Every batch's
-- frame embeddings are zero padded to the longest video of the corpus (the reference pads to
-- max_clip_len then cuts to that length). Returns Y [Nv, Lmax, H], mask [Nv, Lmax], on the model's
-- device (each batch is moved there, one at a time). opts.max_clip_len: checks every batch against
-- it, as the reference asserts; opts.amp ("bf16", "f16"): the passes run under hero.amp.autocast.
function Vcmr:encode_corpus(video_batches, opts)
  opts = check_eval_opts(self.__name .. ":encode_corpus", opts)
  if type(video_batches) ~= "table" or #video_batches == 0 then
    self:error("encode_corpus: video_batches must be a non-empty array of collated video batches")
  end
  local device = self:device()
  return inference(self, function()
    local ys, ms, lmax = {}, {}, 0
    for i, b in ipairs(video_batches) do
      b = to_device(b, device)
      local Y = autocast(opts.amp, self.v_encoder.forward_repr, self.v_encoder, b)
      local L = Y:size(2)
      if opts.max_clip_len and L > opts.max_clip_len then
        self:error("encode_corpus: video batch %d has %d frames, more than max_clip_len %d", i, L, opts.max_clip_len)
      end
      ys[i], ms[i] = Y, b.c_attn_masks
      lmax = math.max(lmax, L)
    end
    for i, Y in ipairs(ys) do
      local B, L, H = Y:size(1), Y:size(2), Y:size(3)
      if L < lmax then
        ys[i] = core.cat({Y, core.zeros({B, lmax - L, H}, {dtype = Y:dtype(), device = Y:device()})}, 2)
        ms[i] = core.cat({ms[i], core.zeros({B, lmax - L}, {dtype = ms[i]:dtype(), device = ms[i]:device()})}, 2)
      end
    end
    return core.cat(ys, 1), core.cat(ms, 1)
  end)
end

--- Scores one query batch against an encoded corpus (get_pred_from_raw_query with cross=True,
-- then the softmax and exp of validate_full_vcmr). qbatch: query_input_ids / query_pos_ids /
-- query_attn_masks. Returns {q_mod, st_logits, ed_logits, st_probs, ed_probs [Nq, Nv, L],
-- q2video_scores, vr_scores_exp [Nq, Nv]} (no video scores when both ranking weights are 0), on
-- the model's device, where the query batch is moved. opts.q2c_alpha (20); opts.amp ("bf16",
-- "f16"): the encoders and products run under hero.amp.autocast, the scores are made f32 before
-- their softmax and exp.
function Vcmr:score_queries(Y, mask, qbatch, opts)
  opts = check_eval_opts(self.__name .. ":score_queries", opts)
  if type(qbatch) ~= "table" then self:error("score_queries: the query batch must be a table, got %s", type(qbatch)) end
  local alpha = opts.q2c_alpha or 20
  qbatch = to_device(qbatch, self:device())
  return inference(self, function()
    return autocast(opts.amp, function()
      local q = self:encode_queries(qbatch.query_input_ids, qbatch.query_pos_ids, qbatch.query_attn_masks)
      local out = {q_mod = q}
      if not self.vr_only then
        local u = self.video_query_linear:forward(q)
        local st, ed = vsm.st_ed_logits(u, Y, mask, self.video_st_predictor.weight, self.video_ed_predictor.weight)
        out.st_logits, out.ed_logits = f32_scores(st), f32_scores(ed)
        out.st_probs, out.ed_probs = out.st_logits:softmax(3), out.ed_logits:softmax(3)
      end
      if self.opts.lw_neg_ctx ~= 0 or self.opts.lw_neg_q ~= 0 then
        out.q2video_scores = f32_scores(vsm.video_scores(q, Y, mask))
        out.vr_scores_exp = (out.q2video_scores * alpha):exp()
      end
      return out
    end)
  end)
end

-- Concatenates per-query-batch outputs along the query axis.
local function cat_outputs(list)
  local out = {}
  for k in pairs(list[1]) do
    local parts = {}
    for i, o in ipairs(list) do parts[i] = o[k] end
    out[k] = core.cat(parts, 1)
  end
  return out
end

-- Encodes the corpus and scores every query batch against it (on the model's device), each batch's
-- outputs brought to the host as soon as it is scored, so that the device holds one batch's score
-- tensors at a time. Returns the outputs joined along the query axis, with frame_embeddings and
-- c_attn_masks (the encoded corpus), all on the host.
local function score_corpus(self, corpus, queries, opts)
  local Y, mask = self:encode_corpus(corpus.batches, opts)
  local outs = {}
  for i, qb in ipairs(queries.batches) do outs[i] = to_host(self:score_queries(Y, mask, qb, opts)) end
  local t = cat_outputs(outs)
  local host = to_host({frame_embeddings = Y, c_attn_masks = mask})
  t.frame_embeddings, t.c_attn_masks = host.frame_embeddings, host.c_attn_masks
  return t
end

--- The whole of validate_full_vcmr: encode the corpus, score every query batch, rank (VR by
-- exp(q2c_alpha * score), VCMR over the top max_vcmr_video videos, SVMR on the ground-truth
-- video), cut to max_after_nms, metrics, NMS and metrics again (hero.eval.retrieval.evaluate).
-- corpus  = {batches = {video batches}, video_ids = {names in batch order}, video2idx = {name =
--            global index} (default: 0-based position in video_ids)}
-- queries = {batches = {query batches}, query_ids = {desc_ids}, query_vids = {ground-truth video
--            names} (SVMR; optional)}
-- ground_truth: array of {desc_id, vid_name, ts, type} or nil (predictions only).
-- opts: q2c_alpha 20, max_vcmr_video 100, min_pred_l 2, max_pred_l 16, max_before_nms 200,
--   max_after_nms 100, nms_thd 0.5 (-1 off), vfeat_interval 1.5, tasks {"VCMR", "SVMR", "VR"},
--   eval_with_query_type true, max_clip_len, split "val", amp (nil, "bf16", "f16": the encoders
--   and products under hero.amp.autocast, the scores in f32).
-- The batches are made on the CPU and moved to the model's device one at a time.
-- Returns the evaluation result ({submission, metrics, submission_nms, metrics_nms, val_log})
-- with `tensors` = {frame_embeddings, c_attn_masks, q2video_scores, st_logits, ...} on the CPU.
function Vcmr:evaluate_full(corpus, queries, ground_truth, opts)
  opts = copy(check_eval_opts(self.__name .. ":evaluate_full", opts))
  if type(corpus) ~= "table" or type(corpus.batches) ~= "table" or #corpus.batches == 0 then
    self:error("evaluate_full: corpus must be {batches = {video batches...}, video_ids = {...}}")
  end
  if type(queries) ~= "table" or type(queries.batches) ~= "table" or #queries.batches == 0 then
    self:error("evaluate_full: queries must be {batches = {query batches...}, query_ids = {...}}")
  end
  local R = require "hero.eval.retrieval"
  local t = score_corpus(self, corpus, queries, opts)
  local video2idx = corpus.video2idx
  if not video2idx then
    video2idx = {}
    for i, v in ipairs(corpus.video_ids) do video2idx[v] = i - 1 end
  end
  local tasks = {}
  for _, name in ipairs(opts.tasks or {"VCMR", "SVMR", "VR"}) do
    local ok = true
    if name == "SVMR" and (not queries.query_vids or not t.st_probs) then ok = false end
    if (name == "VR" or name == "VCMR") and not t.vr_scores_exp then ok = false end
    if name == "VCMR" and not t.st_probs then ok = false end
    if ok then tasks[#tasks + 1] = name end
  end
  opts.tasks = tasks
  local inputs = {video_ids = corpus.video_ids, video2idx = video2idx, query_ids = queries.query_ids,
    query_vids = queries.query_vids, q2video_exp_scores = t.vr_scores_exp, st_probs = t.st_probs,
    ed_probs = t.ed_probs}
  local res = R.evaluate(inputs, ground_truth, opts)
  res.tensors = t
  return res
end

M.HeroForVr = Vcmr:extend("HeroForVr")
local Vr = M.HeroForVr

--- HeroForVr (MSR-VTT): opts as HeroForVcmr with lw_st_ed forced to 0, drop_svmr_prob 1 and
-- lw_neg_ctx / lw_neg_q defaulting to 10 (the MSR-VTT fine-tuning config).
function Vr:__init(cfg, opts)
  local o = copy(opts)
  o.lw_st_ed, o.drop_svmr_prob = 0, 1
  if o.lw_neg_ctx == nil then o.lw_neg_ctx = 10 end
  if o.lw_neg_q == nil then o.lw_neg_q = 10 end
  if o.lw_neg_ctx == 0 and o.lw_neg_q == 0 then
    error(self.__name .. ": lw_neg_ctx or lw_neg_q must be non-zero for VR training", 3)
  end
  Vcmr.__init(self, cfg, o)
  self.vr_only = true
end

function Vr:set_train_st_ed(lw)
  if lw ~= 0 then self:error("the local start/end loss is not part of VR (lw_st_ed must stay 0)") end
end

--- forward(batch, task): task "msrvtt_video_sub" or "msrvtt_video_only" (or "vr"); the ranking
-- losses only (see HeroForVcmr.forward).
function Vr:forward(batch, task, opts)
  if task ~= nil and not VR_TASKS[task] then
    self:error("unknown task '%s' (msrvtt_video_sub or msrvtt_video_only)", tostring(task))
  end
  return Vcmr.forward(self, batch, task, opts)
end

--- eval_vr.py: raw cosine-max scores (no exp), top max_vr_video (100) videos, VR R@1/5/10/100
-- without the query-type breakdown. corpus / queries / ground_truth (and opts.amp) as
-- HeroForVcmr.evaluate_full.
function Vr:evaluate_full(corpus, queries, ground_truth, opts)
  opts = copy(check_eval_opts(self.__name .. ":evaluate_full", opts))
  local R = require "hero.eval.retrieval"
  local t = score_corpus(self, corpus, queries, opts)
  t.vr_scores_exp = nil
  local video2idx = corpus.video2idx
  if not video2idx then
    video2idx = {}
    for i, v in ipairs(corpus.video_ids) do video2idx[v] = i - 1 end
  end
  local ropts = {tasks = {"VR"}, max_vcmr_video = opts.max_vr_video or 100, nms_thd = -1,
    max_after_nms = opts.max_vr_video or 100, eval_with_query_type = false, split = opts.split}
  local inputs = {video_ids = corpus.video_ids, video2idx = video2idx, query_ids = queries.query_ids,
    q2video_exp_scores = t.q2video_scores}
  local res = R.evaluate(inputs, ground_truth, ropts)
  res.tensors = t
  return res
end

return M
