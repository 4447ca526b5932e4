--- HeroForViolin (VIOLIN video-and-language inference; hero-spec §5.4): the statement
-- "[SEP] + tokens" is appended to every subtitle row and embedded (embeddings only) into the
-- temporal transformer input next to the frames; attention pooling over the frames
-- (softmax of mask_logits(violin_pool(V))) -> violin_pred_head -> one logit per statement.
-- loss = BCE(sigmoid(logit), label), mean; prediction sigmoid(logit) > 0.5.
local core = require "hero.core"
local nn = require "hero.nn"
local layers = require "hero.models.layers"
local ds = require "hero.models.downstream"
local batch_shapes = require "hero.models.batch_shapes"

local M = ds.HeroModel:extend("HeroForViolin")

--- cfg: fine-tuning config; opts: vfeat_dim (required), max_frm_seq_len, dtype, generator.
-- Heads get PyTorch's default initialisation.
function M:__init(cfg, opts)
  local options = require "hero.models.options"
  opts = options.check(self.__name, opts, options.ENCODER, 3)
  ds.HeroModel.__init(self, cfg, opts)
  local H = cfg.c_config.hidden_size
  self:add_module("violin_pool", nn.Linear(H, 1, {bias = false, init = "torch", dtype = opts.dtype,
    generator = opts.generator}))
  self:add_module("violin_pred_head", layers.MLPLayer(H, 1, {init = "torch", dtype = opts.dtype,
    generator = opts.generator}))
end

--- The reference's binary_cross_entropy on probabilities: -(y log p + (1 - y) log(1 - p)) with
-- each log clamped at -100, mean.
local function bce(p, y)
  local lp = p:log():clamp(-100, nil)
  local lq = (1 - p):log():clamp(-100, nil)
  return ((y * lp + (1 - y) * lq) * -1):mean()
end

--- batch: the reference's violin_collate output (representation tensors of the N video rows with
-- num_subs / sub_idx2frame_idx, q_input_ids / q_pos_ids / q_attn_masks [N, Lq], targets [N, 1]).
-- Returns {logits [N, 1], scores [N] (sigmoid), intermediates, loss (with targets)}.
-- opts.compute_loss false skips the loss.
function M:forward(batch, task, opts)
  -- (draw and all_gather: what the Trainer hands every model's forward; this one has no use for them)
  opts = require("hero.models.options").check(self.__name .. ":forward", opts, {compute_loss = "boolean",
    draw = "function", all_gather = "any"}, 2)
  if task ~= nil and task ~= "violin" then self:error("unknown task '%s' (violin)", tostring(task)) end
  batch_shapes.check_batch(self, "forward: the batch", batch, batch_shapes.DOWNSTREAM.violin, self.v_encoder)
  local V, acts = ds.fuse_text(self.v_encoder, batch, batch.q_input_ids, batch.q_pos_ids, batch.q_attn_masks)
  acts.q_emb = acts.text_emb
  local N, H = V:size(1), V:size(3)
  local m = batch.c_attn_masks:to(V:dtype())
  local a = ds.pool_weights(self.violin_pool, V, m, 2)                      -- [N, L, 1]
  local pooled = core.matmul(a:transpose(2, 3), V):view(N, H)
  acts.pooled_video = pooled
  acts.logits = self.violin_pred_head:forward(pooled)                       -- [N, 1]
  acts.scores = acts.logits:sigmoid():squeeze(2)
  if opts.compute_loss == false or not batch.targets then return acts end
  acts.loss = bce(acts.scores, batch.targets:reshape(N):to(acts.scores:dtype()))
  return acts
end

--- Predictions (sigmoid > 0.5, as validate_violin) and the scores of a batch.
function M:predict(batch)
  local out = core.no_grad(function() return self:forward(batch, nil, {compute_loss = false}) end)
  return out.scores:gt(0.5), out.scores
end

return M
