--- hero.train.pretrain_valid: the validation metrics of the reference's pretrain.py (validate_mlm,
-- validate_mffr, validate_mfm_nce, validate_fom, validate_vsm) for hero.train.Trainer.
--
--   local PV = require "hero.train.pretrain_valid"
--   Trainer{..., validators = PV.validators{lw_st_ed = 0.01, lw_neg_ctx = 8, lw_neg_q = 8}}
--
-- A validator is {batch = function(model, batch, fopts) -> sums, finish = function(sums) -> metrics}:
-- `batch` runs one validation batch (the model in evaluation mode, no gradients) and returns the
-- batch's sums (plain numbers); the Trainer adds them over the batches (and over the ranks of a
-- distributed run) and `finish` turns the totals into the reference's metrics:
--   mlm      loss (cross-entropy per masked token), acc
--   mffr     loss (per masked frame: the L2 distance of prediction and target), cosine
--   mfm-nce  loss (NCE cross-entropy per masked frame), acc, l2, cosine
--   fom      loss, acc (over the frames with a target)
--   vsm      loss_overall, loss_st_ed, loss_neg_ctx, loss_neg_q (evaluation-mode values: the local
--            loss summed per query, the ranking losses per row, each divided by its weight)
-- ranking_validator gives the same four for VCMR/VR fine-tuning (train_vcmr.py's validate_vcmr).
-- (The Trainer gives a loader named "<task>_<target>_<split>" the validator of <task>.)
local core = require "hero.core"

local M = {}

local function item(t) return t:double():sum():item() end

local function cosine_sum(a, b)
  local dot = (a * b):sum(2)
  local na, nb = a:norm(2, 2):clamp(1e-8, nil), b:norm(2, 2):clamp(1e-8, nil)
  return item(dot / (na * nb))
end

local function argmax_hits(logits, targets)
  local _, idx = logits:max(2)
  return item(idx:eq(targets):float())
end

-- a / b, NaN without data (a sum no batch reported counts as 0)
local function ratio(a, b)
  a, b = a or 0, b or 0
  return b > 0 and a / b or 0 / 0
end

--- The validator of the reference's validate_vsm (pretrain.py) and validate_vcmr (train_vcmr.py),
-- the same sums: `forward(model, batch, fopts)` runs the model in evaluation mode and returns its
-- loss_st_ed (the summed local loss times its weight, or nil), loss_neg_ctx and loss_neg_q (per
-- row, times their weights); the local loss is averaged over the queries, the ranking losses over
-- the rows, and each is divided by its weight from `w` (the config's lw_st_ed, lw_neg_ctx,
-- lw_neg_q: the model's own lw_st_ed may be 0 before train_span_start_step). w.st_ed = false
-- (validate_vr, train_vr.py): no local loss, and no loss_st_ed among the metrics.
function M.ranking_validator(w, forward)
  w = w or {}
  local has_st_ed = w.st_ed ~= false
  local lw_st_ed, lw_ctx, lw_q = has_st_ed and (w.lw_st_ed or 0.01) or 0, w.lw_neg_ctx or 8, w.lw_neg_q or 8
  return {
    batch = function(model, batch, fopts)
      local out = forward(model, batch, fopts)
      local s = {st_ed = out.loss_st_ed and item(out.loss_st_ed) or 0, n = batch.q_vidx:numel(), ctx = 0, q = 0,
                 n_pos = 0}
      if model.opts.lw_neg_ctx ~= 0 or model.opts.lw_neg_q ~= 0 then
        s.ctx, s.q = item(out.loss_neg_ctx), item(out.loss_neg_q)
        s.n_pos = out.loss_neg_ctx:numel()
      end
      return s
    end,
    finish = function(s)
      -- no query validated (every video unreadable): no value, as the other tasks' NaN, not a loss of 0
      if (s.n or 0) == 0 then
        local none = 0 / 0
        return {loss_overall = none, loss_st_ed = has_st_ed and none or nil, loss_neg_ctx = none, loss_neg_q = none}
      end
      local st_ed, ctx, q, n_pos = s.st_ed or 0, s.ctx or 0, s.q or 0, s.n_pos or 0
      if lw_st_ed ~= 0 then st_ed = ratio(st_ed, s.n) / lw_st_ed end
      if n_pos > 0 and lw_q > 0 and lw_ctx > 0 then
        ctx, q = ctx / n_pos / lw_ctx, q / n_pos / lw_q
      end
      return {loss_overall = lw_st_ed * st_ed + lw_ctx * ctx + lw_q * q, loss_st_ed = has_st_ed and st_ed or nil,
              loss_neg_ctx = ctx, loss_neg_q = q}
    end,
  }
end

--- The validators of the five pre-training tasks. w: the config's loss weights (lw_st_ed,
-- lw_neg_ctx, lw_neg_q), by which validate_vsm divides.
function M.validators(w)
  local v = {}

  v.mlm = {
    batch = function(model, batch)
      local out = model:forward_mlm(batch)
      local labels = batch.txt_labels
      return {loss = item(out.loss_per_token), correct = argmax_hits(out.mlm_logits, labels), n = labels:numel()}
    end,
    finish = function(s) return {loss = ratio(s.loss, s.n), acc = ratio(s.correct, s.n)} end,
  }

  v.mffr = {
    batch = function(model, batch)
      local out = model:forward_mfm(batch, "mffr")
      local n = item(batch.c_v_masks:float())
      return {loss = item(out.loss_per_frame), cosine = cosine_sum(out.pred_feat, batch.feat_targets), n = n}
    end,
    finish = function(s) return {loss = ratio(s.loss, s.n), cosine = ratio(s.cosine, s.n)} end,
  }

  v["mfm-nce"] = {
    batch = function(model, batch)
      local out = model:forward_mfm(batch, "nce")
      local pred, pos = out.pred_feat, batch.feat_targets
      local n = pred:size(1)
      local d = pred - pos
      local targets = core.arange(n, {device = out.nce_logits:device()})
      return {loss = item(out.loss_per_frame), correct = argmax_hits(out.nce_logits, targets),
              l2 = item((d * d):sum(2):sqrt()), cosine = cosine_sum(pred, pos), n = n}
    end,
    finish = function(s)
      return {loss = ratio(s.loss, s.n), acc = ratio(s.correct, s.n), l2 = ratio(s.l2, s.n),
              cosine = ratio(s.cosine, s.n)}
    end,
  }

  v.fom = {
    batch = function(model, batch)
      local out = model:forward_fom(batch)
      local t = batch.targets:reshape(-1)
      local keep = t:ne(-1)
      local n = item(keep:float())
      if n == 0 then return {loss = 0, correct = 0, n = 0} end
      local rows = keep:nonzero():squeeze(2)
      local logits, targets = out.fom_logits:index_select(1, rows), t:index_select(1, rows)
      return {loss = item(core.cross_entropy(logits, targets, {reduction = "sum"})),
              correct = argmax_hits(logits, targets), n = n}
    end,
    finish = function(s) return {loss = ratio(s.loss, s.n), acc = ratio(s.correct, s.n)} end,
  }

  v.vsm = M.ranking_validator(w, function(model, batch, fopts)
    local o = {evaluate = true}
    for k, x in pairs(fopts or {}) do o[k] = x end
    return model:forward_vsm(batch, o)
  end)
  return v
end

return M
