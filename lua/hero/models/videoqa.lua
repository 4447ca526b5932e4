--- HeroForVideoQA (TVQA, How2QA; hero-spec §5.3): every question's video is replicated once per
-- answer, "[SEP] q [SEP] a" is appended to every subtitle row and also embedded (embeddings only)
-- into the temporal transformer input next to the frames. Two attention-pooled heads:
--   qa:     softmax over frames of mask_logits(qa_pool(V)) -> qa_pred_head -> one logit per answer
--   st/ed:  softmax over the ANSWER copies of mask_logits(st_ed_pool(V)) (as the reference does),
--           summed over the copies per frame -> st_ed_pred_head -> start/end logits per frame
-- loss = CE(logits, answer) + lw_st_ed * (CE(st) + CE(ed)) / 2, every CE a mean ignoring -1.
local core = require "hero.core"
local nn = require "hero.nn"
local F = require "hero.nn.functional"
local layers = require "hero.models.layers"
local ds = require "hero.models.downstream"
local batch_shapes = require "hero.models.batch_shapes"

local M = ds.HeroModel:extend("HeroForVideoQA")

--- cfg: fine-tuning config; opts: vfeat_dim (required), max_frm_seq_len, lw_st_ed (0.4, the
-- weight train_videoQA.py applies), dtype, generator. Heads get PyTorch's default initialisation,
-- and st_ed_pool starts as a copy of qa_pool (the reference deep-copies it).
function M:__init(cfg, opts)
  local options = require "hero.models.options"
  opts = options.check(self.__name, opts, options.with(options.ENCODER, {lw_st_ed = "number >= 0"}), 3)
  ds.HeroModel.__init(self, cfg, opts)
  self.lw_st_ed = opts.lw_st_ed or 0.4
  local H = cfg.c_config.hidden_size
  local o = {init = "torch", dtype = opts.dtype, generator = opts.generator}
  self:add_module("qa_pool", nn.Linear(H, 1, {bias = false, init = "torch", dtype = opts.dtype,
    generator = opts.generator}))
  self:add_module("qa_pred_head", layers.MLPLayer(H, 1, o))
  self:add_module("st_ed_pool", nn.Linear(H, 1, {bias = false, init = "torch", dtype = opts.dtype,
    generator = opts.generator}))
  core.no_grad(function() self.st_ed_pool.weight:copy_(self.qa_pool.weight) end)
  self:add_module("st_ed_pred_head", layers.MLPLayer(H, 2, o))
end

--- batch: the reference's video_qa_collate output (the representation tensors of the 5N video
-- copies with num_subs / sub_idx2frame_idx, qa_input_ids / qa_pos_ids / qa_attn_masks [5N, Lqa],
-- targets [N, 1], ts_targets [N, 2]). Returns {logits [N, n_answers], st_logits, ed_logits
-- [N, L_c], intermediates, and with targets: loss_qa, loss_temporal, loss}. opts.compute_loss
-- false skips the losses.
function M:forward(batch, task, opts)
  local options = require "hero.models.options"
  -- (draw and all_gather: what the Trainer hands every model's forward; this one has no use for them)
  opts = options.check(self.__name .. ":forward", opts, {compute_loss = "boolean", num_questions = "integer >= 1",
    lw_st_ed = "number >= 0", draw = "function", all_gather = "any"}, 2)
  if task ~= nil and task ~= "tvqa" and task ~= "how2qa" and task ~= "videoqa" then
    self:error("unknown task '%s' (tvqa or how2qa)", tostring(task))
  end
  batch_shapes.check_batch(self, "forward: the batch", batch, batch_shapes.DOWNSTREAM.videoqa, self.v_encoder)
  local Vflat, acts = ds.fuse_text(self.v_encoder, batch, batch.qa_input_ids, batch.qa_pos_ids,
    batch.qa_attn_masks)
  acts.qa_emb = acts.text_emb
  local rows, L, H = Vflat:size(1), Vflat:size(2), Vflat:size(3)
  local N = batch.targets and batch.targets:size(1) or opts.num_questions
  if not N then self:error("batch.targets (or opts.num_questions) is needed to group the answer copies") end
  if rows % N ~= 0 then self:error("%d video rows are not a multiple of %d questions", rows, N) end
  local A = rows // N
  local V = Vflat:view(N, A, L, H)
  local m = batch.c_attn_masks:view(N, A, L):to(V:dtype())
  -- st/ed: weights normalised over the answer copies, then summed over them per frame
  local a_t = ds.pool_weights(self.st_ed_pool, V, m, 2)                     -- [N, A, L, 1]
  local pooled_t = (a_t * V):sum(2)                                         -- [N, L, H]
  -- qa: weights over the frames of each copy
  local a_qa = ds.pool_weights(self.qa_pool, V, m, 3)                       -- [N, A, L, 1]
  local pooled_qa = core.matmul(a_qa:reshape(N * A, L, 1):transpose(2, 3), V:reshape(N * A, L, H))
    :view(N, A, H)
  acts.st_ed_pooled_video, acts.qa_pooled_video = pooled_t, pooled_qa
  local pst = self.st_ed_pred_head:forward(pooled_t)                        -- [N, L, 2]
  acts.pred_st_ed = pst
  local m0 = m:select(2, 1)
  acts.st_logits = F.mask_logits(pst:select(3, 1), m0)
  acts.ed_logits = F.mask_logits(pst:select(3, 2), m0)
  acts.logits = self.qa_pred_head:forward(pooled_qa):squeeze(3)             -- [N, A]
  if opts.compute_loss == false or not batch.targets then return acts end
  local ts = batch.ts_targets
  if ts == nil then self:error("forward: the batch has targets but no ts_targets (the answers' moments)") end
  local l_st = core.cross_entropy(acts.st_logits, ts:select(2, 1), {ignore_index = -1})
  local l_ed = core.cross_entropy(acts.ed_logits, ts:select(2, 2), {ignore_index = -1})
  acts.loss_temporal = (l_st + l_ed) / 2
  acts.loss_qa = core.cross_entropy(acts.logits, batch.targets:reshape(N), {ignore_index = -1})
  acts.loss = acts.loss_qa + acts.loss_temporal * (opts.lw_st_ed or self.lw_st_ed)
  return acts
end

--- Answer predictions (0-based argmax over the answers, as validate_videoQA) of a batch.
function M:predict(batch)
  if type(batch) ~= "table" then self:error("predict: the batch must be a table of tensors, got %s", type(batch)) end
  local n = batch.num_questions or (batch.targets and batch.targets:size(1))
  if not n then
    -- without targets, five answer copies per question (TVQA's, as the collate writes them): a
    -- batch of another count would be read as fewer questions with more answers
    local rows = core.is_tensor(batch.qa_input_ids) and batch.qa_input_ids:size(1) or 0
    if rows % 5 ~= 0 or rows == 0 then
      self:error("predict: %d answer rows are not five per question; give batch.num_questions", rows)
    end
    n = rows // 5
  end
  local out = core.no_grad(function() return self:forward(batch, nil, {compute_loss = false, num_questions = n}) end)
  local _, idx = out.logits:max(2)
  return idx, out.logits
end

return M
