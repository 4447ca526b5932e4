--- HeroForPretraining: the hierarchical encoder, the query encoder and the five pre-training tasks
-- (hero-spec §4). forward(batch, task, opts) returns {loss = scalar, ...intermediates}.
local core = require "hero.core"
local nn = require "hero.nn"
local enc = require "hero.models.encoders"
local Hierarchical = require "hero.models.hierarchical"
local vsm = require "hero.models.vsm"
local mask_rows = require "hero.models.mask_rows"
local config = require "hero.config"
local batch_shapes = require "hero.models.batch_shapes"
local options = require "hero.models.options"

local M = nn.Module:extend("HeroForPretraining")

--- cfg: the reference's model config ({f_config, c_config, q_config}); opts: vfeat_dim (required),
-- max_frm_seq_len (100), fom_classes (100), vocab_pad (rows of padding at the end of the vocabulary
-- that logits drop; 0), lw_st_ed (0.01), lw_neg_ctx (8), lw_neg_q (8), margin (0.1),
-- ranking_loss_type ("hinge"), hard_negative ({pool_size, weight} or nil), drop_svmr_prob (0),
-- use_all_neg (true: every in-batch negative; false: one drawn per query and per video, from
-- `generator`), nce_temp (1), conv_kernel_size (5: the start/end predictors' odd kernel; conv_stride
-- 1 only), dtype, generator.
function M:__init(cfg, opts)
  opts = options.check(self.__name, opts, options.PRETRAIN, 3)
  options.check_hard_negative(self.__name, opts.hard_negative, 3)
  config.check_model(cfg, self.__name)
  -- the reference pads the vocabulary to a multiple of 8 rows (pad_vocab) and drops the padding
  -- columns from the MLM logits
  local f = {}
  for k, v in pairs(cfg.f_config) do f[k] = v end
  local raw = f.vocab_size
  f.vocab_size = (raw + 7) // 8 * 8
  cfg = {f_config = f, c_config = cfg.c_config, q_config = cfg.q_config}
  self.opts = {
    vocab_pad = opts.vocab_pad or (f.vocab_size - raw), lw_st_ed = opts.lw_st_ed or 0.01,
    lw_neg_ctx = opts.lw_neg_ctx or 8,
    lw_neg_q = opts.lw_neg_q or 8, margin = opts.margin or 0.1,
    ranking_loss_type = opts.ranking_loss_type or "hinge",
    hard_negative = opts.hard_negative, drop_svmr_prob = opts.drop_svmr_prob or 0, nce_temp = opts.nce_temp or 1,
    use_all_neg = opts.use_all_neg ~= false,
  }
  self.generator = opts.generator
  self:add_module("v_encoder", Hierarchical(cfg, opts))
  local q = cfg.q_config or cfg.f_config
  self:add_module("q_feat_attn", enc.QueryFeatEncoder(q, opts))
  local o = {init = "torch", dtype = opts.dtype, generator = opts.generator}
  local H = cfg.f_config.hidden_size
  self:add_module("video_query_linear", nn.Linear(H, H, o))
  -- the start/end predictors: Conv1d(1, 1, conv_kernel_size, stride = conv_stride, padding =
  -- kernel // 2, bias = False), PyTorch's default init U(+-1/sqrt(kernel))
  local k = opts.conv_kernel_size or 5
  if math.type(k) ~= "integer" or k < 1 or k % 2 == 0 then
    -- an even kernel with padding k // 2 gives L + 1 outputs, which the reference's views refuse too
    error(string.format("%s: conv_kernel_size must be an odd positive integer, got %s", self.__name, tostring(k)), 3)
  end
  if (opts.conv_stride or 1) ~= 1 then
    error(string.format("%s: conv_stride %s is not supported (the frame scores need one per frame: 1)",
      self.__name, tostring(opts.conv_stride)), 3)
  end
  local function conv()
    local m = nn.Module:extend("Conv1d")()
    local bound = 1 / math.sqrt(k)
    m:register_parameter("weight", core.empty({1, 1, k}, {dtype = opts.dtype or "f32"}):uniform_(-bound, bound,
      opts.generator and {generator = opts.generator} or nil))
    return m
  end
  self:add_module("video_st_predictor", conv())
  self:add_module("video_ed_predictor", conv())
end

--- Rows of x [N, L, H] where the batch's mask `key` is true (false with `complement`), as [n, H]
-- (row-major), differentiably.
local function select_rows(x, batch, key, complement)
  local N, L, H = x:size(1), x:size(2), x:size(3)
  return x:reshape(N * L, H):index_select(1, mask_rows.of(batch, key, complement))
end

local function mean_or_nan(t)
  return t:mean()
end

function M:forward_mlm(batch)
  local v = self.v_encoder
  local f_emb, txt, img = v.f_encoder:embed(batch)
  local mask = batch.f_attn_masks or batch.attn_masks
  local f_out, h
  if self.keeps_activations then
    f_out = v.f_encoder.encoder:forward(f_emb, mask)
    h = select_rows(f_out, batch, "txt_mask_tgt")
  else -- the loss reads the masked tokens only: the last layer runs on those rows
    h = v.f_encoder.encoder:forward(f_emb, mask, {rows = mask_rows.of(batch, "txt_mask_tgt"),
      rows_host = mask_rows.host_of(batch, "txt_mask_tgt")})
  end
  if h:size(1) ~= batch.txt_labels:size(1) then
    self:error("forward: the mlm batch's txt_labels has %d labels, its txt_mask_tgt marks %d tokens",
      batch.txt_labels:size(1), h:size(1))
  end
  local padded = v.f_encoder.lm_head:forward(h)
  local vocab = padded:size(2) - self.opts.vocab_pad
  -- the loss reads the first `vocab` columns in place: the padding gets a zero gradient, with no
  -- narrowed copy of the logits' gradient
  local per_token = core.cross_entropy(padded, batch.txt_labels, {reduction = "none", classes = vocab})
  local logits = padded:narrow(2, 1, vocab)
  return {loss = mean_or_nan(per_token), loss_per_token = per_token, mlm_logits = logits, txt_emb = txt,
          img_emb = img, f_emb = f_emb, f_out = f_out}
end

function M:forward_mfm(batch, kind)
  local v = self.v_encoder
  local masked = kind == "mffr" and not self.keeps_activations
  local Y, acts = v:forward_repr(batch, {img_masks = batch.f_v_masks, c_masks = batch.c_v_masks,
    c_rows = masked and mask_rows.of(batch, "c_v_masks") or nil,
    c_rows_host = masked and mask_rows.host_of(batch, "c_v_masks") or nil})
  -- MFFR reads the masked frames only, so the temporal transformer's last layer made just those
  local pred = v.feat_regress:forward(masked and Y or select_rows(Y, batch, "c_v_masks"))
  acts.pred_feat = pred
  if pred:size(1) ~= batch.feat_targets:size(1) then
    self:error("forward: the %s batch's feat_targets has %d rows, its c_v_masks marks %d frames",
      kind == "mffr" and "mffr" or "mfm-nce", batch.feat_targets:size(1), pred:size(1))
  end
  if kind == "mffr" then
    local d = pred - batch.feat_targets
    local per = (d * d):sum(2):sqrt()
    acts.loss_per_frame, acts.loss = per, per:mean()
    return acts
  end
  local neg = v.feat_regress:forward(select_rows(Y, batch, "c_v_masks", true))
  acts.neg_pred_feat = neg
  local logits = core.cat({core.matmul(pred, batch.feat_targets:t()), core.matmul(pred, neg:t())}, 2):float()
  acts.nce_logits = logits
  local n = pred:size(1)
  local targets = core.arange(n, {device = logits:device()})
  local per = core.cross_entropy(logits / self.opts.nce_temp, targets, {reduction = "none"})
  acts.loss_per_frame, acts.loss = per, per:mean()
  return acts
end

function M:forward_fom(batch)
  local v = self.v_encoder
  local X, acts = v:forward_repr(batch, {encode_clip = false})
  local order = batch.shuffled_orders
  local idx = order:unsqueeze(3):expand(X:size(1), X:size(2), X:size(3))
  local Xs = core.zeros(X:size(), {dtype = X:dtype(), device = X:device()}):scatter_add(2, idx, X)
  acts.c_in_shuffled = Xs
  local Y, c_emb = v.c_encoder:forward(Xs, batch.c_attn_masks)
  acts.c_emb, acts.c_out = c_emb, Y
  local logits = v.fom_output:forward(Y):reshape(X:size(1) * X:size(2), -1)
  acts.fom_logits = logits
  acts.loss = core.cross_entropy(logits, batch.targets:reshape(-1), {ignore_index = -1})
  return acts
end

--- Encodes queries: the text-only cross-modal transformer then the query encoder.
function M:encode_queries(ids, pos_ids, mask)
  for i, t in ipairs {ids or false, pos_ids or false, mask or false} do
    if not core.is_tensor(t) then
      self:error("encode_queries: %s must be a tensor (the batch's %s)", ({"ids", "pos_ids", "mask"})[i],
        ({"query_input_ids", "query_pos_ids", "query_attn_masks"})[i])
    end
  end
  batch_shapes.check(self, "encode_queries: the queries", {query_input_ids = ids, query_pos_ids = pos_ids,
    query_attn_masks = mask}, batch_shapes.QUERIES)
  local z = self.v_encoder.f_encoder:encode_text(ids, pos_ids, mask)
  local q, acts = self.q_feat_attn:forward(z, mask)
  acts.q_f_out = z
  return q, acts
end

function M:forward_vsm(batch, opts)
  opts = options.check(self.__name .. ":forward", opts, options.RANKING_FORWARD, 2)
  options.check_hard_negative(self.__name .. ":forward", opts.hard_negative, 2)
  local o = self.opts
  -- the reference's evaluation-mode values (its validate_vsm) in evaluation mode, or when asked:
  -- the local loss always, summed over the queries, the ranking losses per row (reduction "sum")
  local evaluate = opts.evaluate
  if evaluate == nil then evaluate = self.training == false end
  local Y, acts = self.v_encoder:forward_repr(batch)
  local q, qa = self:encode_queries(batch.query_input_ids, batch.query_pos_ids, batch.query_attn_masks)
  for k, t in pairs(qa) do acts[k] = t end
  acts.q_mod = q
  local mask = batch.c_attn_masks
  local total
  -- local (start/end) loss on a fraction 1 - drop_svmr_prob of the training micro-batches
  local use_local = o.lw_st_ed ~= 0 and (evaluate or o.drop_svmr_prob == 0 or
    (opts.draw and opts.draw() or core.rand({1}, self.generator and {generator = self.generator} or nil):item())
      > o.drop_svmr_prob)
  if use_local then
    local u = self.video_query_linear:forward(q)
    local st_all, ed_all = vsm.st_ed_logits(u, Y, mask, self.video_st_predictor.weight, self.video_ed_predictor.weight)
    acts.st_logits_all, acts.ed_logits_all = st_all, ed_all
    local Nq, L = st_all:size(1), st_all:size(3)
    local vidx = batch.q_vidx:view(Nq, 1, 1):expand(Nq, 1, L)
    local st = st_all:gather(2, vidx):squeeze(2)
    local ed = ed_all:gather(2, vidx):squeeze(2)
    acts.st_logits, acts.ed_logits = st, ed
    local t = batch.targets
    local red = evaluate and "sum" or "mean"
    local l = core.cross_entropy(st, t:select(2, 1), {ignore_index = -1, reduction = red})
      + core.cross_entropy(ed, t:select(2, 2), {ignore_index = -1, reduction = red})
    acts.loss_st_ed = l * o.lw_st_ed
    total = acts.loss_st_ed
  end
  -- opts.all_gather (set by the distributed Trainer): the ranking loss runs on every rank's queries
  -- and videos (hero-spec 4.5, multi-GPU semantics); the local loss above stays per rank.
  local S = vsm.video_scores(q, Y, mask, opts.all_gather)
  acts.q2video_scores = S
  local l_ctx, l_q = vsm.ranking_losses(S, {margin = o.margin, loss_type = o.ranking_loss_type,
    hard = opts.hard_negative or o.hard_negative, sampled = not o.use_all_neg, generator = self.generator,
    reduction = evaluate and "sum" or nil})
  acts.loss_neg_ctx, acts.loss_neg_q = l_ctx * o.lw_neg_ctx, l_q * o.lw_neg_q
  local ranking = evaluate and acts.loss_neg_ctx:sum() + acts.loss_neg_q:sum()
    or acts.loss_neg_ctx + acts.loss_neg_q
  acts.loss = total and (total + ranking) or ranking
  -- what pretrain.py logs of a VSM micro-batch: each part divided by its weight (0 for a dropped
  -- local loss)
  if not evaluate then acts.log_parts = M.loss_parts(o, acts.loss_st_ed, l_ctx, l_q) end
  return acts
end

--- The VSM loss parts as the reference logs them (loss / weight; a weight of 0 logs the value as
-- is): {st_ed =, neg_ctx =, neg_q =} of scalar tensors or numbers.
function M.loss_parts(o, loss_st_ed, l_ctx, l_q)
  local st_ed = loss_st_ed and loss_st_ed:detach()
  return {st_ed = st_ed and (o.lw_st_ed ~= 0 and st_ed / o.lw_st_ed or st_ed) or 0,
          neg_ctx = l_ctx:detach(), neg_q = l_q:detach()}
end

--- Loads a checkpoint (safetensors or the reference's torch.save files, fp16 or fp32) with the
-- reference's non-strict rules; returns {missing = {...}, unexpected = {...}} and the file's
-- non-tensor entries. opts.strict raises on any missing or unexpected key.
function M:load_checkpoint(path, opts)
  return require("hero.models.checkpoint").load_into(self, path, opts)
end

--- Saves the state_dict as safetensors with the reference's key names.
function M:save_checkpoint(path)
  require("hero.models.checkpoint").save(self, path)
end

--- Fields each task's collated batch must have: what the forward pass reads (their shapes and
-- dtypes: hero.models.batch_shapes.PRETRAIN).
M.required_fields = {}
for task, fields in pairs(batch_shapes.PRETRAIN) do
  local names = {}
  if task ~= "mlm" then
    for _, f in ipairs(Hierarchical.REPR_FIELDS) do names[#names + 1] = f end
  end
  for _, f in ipairs(batch_shapes.required(fields)) do
    local listed = false
    for _, g in ipairs(names) do listed = listed or g == f end
    if not listed then names[#names + 1] = f end
  end
  M.required_fields[task] = names
end

--- forward(batch, task[, opts]) with task "mlm", "mfm-nce", "mffr", "fom" or "vsm", or a loader
-- name the reference's pretrain.py builds from one ("<task>_<target>_<split>", e.g. "mlm_tv_all").
-- A batch without a field its task reads is refused by name.
function M:forward(batch, task, opts)
  if type(task) == "string" then task = task:match("^([^_]+)") or task end
  if type(batch) ~= "table" then self:error("forward: the batch must be a table of tensors, got %s", type(batch)) end
  local fields = batch_shapes.PRETRAIN[task == "mfm" and "mfm-nce" or task]
  if fields then
    local what = "forward: the " .. task .. " batch"
    for _, f in ipairs(M.required_fields[task == "mfm" and "mfm-nce" or task]) do
      if batch[f] == nil then self:error("%s has no field '%s'", what, f) end
    end
    if task == "mlm" then batch_shapes.check(self, what, batch, fields, self.v_encoder:feature_dims())
    else batch_shapes.check_batch(self, what, batch, fields, self.v_encoder) end
  end
  if task == "mlm" then return self:forward_mlm(batch) end
  if task == "mfm-nce" or task == "mfm" then return self:forward_mfm(batch, "nce") end
  if task == "mffr" then return self:forward_mfm(batch, "mffr") end
  if task == "fom" then return self:forward_fom(batch) end
  if task == "vsm" then return self:forward_vsm(batch, opts) end
  self:error("unknown task '%s' (mlm, mfm-nce, mffr, fom or vsm)", tostring(task))
end

return M
