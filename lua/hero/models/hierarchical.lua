--- HierarchicalVlModel (the reference's v_encoder, hero-spec §2.5): the cross-modal transformer
-- per subtitle row, frame fusion into the temporal transformer, and the frame-level heads.
local core = require "hero.core"
local nn = require "hero.nn"
local enc = require "hero.models.encoders"
local layers = require "hero.models.layers"
local config = require "hero.config"
local batch_shapes = require "hero.models.batch_shapes"

local M = nn.Module:extend("HierarchicalVlModel")

--- cfg: {f_config, c_config}; opts: vfeat_dim, max_frm_seq_len, fom_classes (100), dtype, generator.
function M:__init(cfg, opts)
  opts = opts or {}
  config.check_model(cfg, self.__name)
  local f, c = cfg.f_config, cfg.c_config
  local feat_dim = assert(opts.vfeat_dim, "HierarchicalVlModel: opts.vfeat_dim is required")
  self.hidden = f.hidden_size
  self.feat_dim = feat_dim
  self:register_buffer("pad", core.zeros({8, f.hidden_size}, {dtype = opts.dtype or "f32"}))
  self:add_module("f_encoder", enc.CrossModalTrm(f, feat_dim, opts.max_frm_seq_len or 100, opts))
  self:add_module("frame_transform", layers.LinearLayer(feat_dim, f.hidden_size,
    {dropout = f.hidden_dropout_prob or 0.1, init = "bert", std = f.initializer_range, dtype = opts.dtype,
    generator = opts.generator}))
  self:add_module("c_encoder", enc.TemporalTrm(c, opts))
  self:add_module("feat_regress", layers.FrameFeatureRegression(f.hidden_size, feat_dim,
    {init = "bert", std = f.initializer_range, dtype = opts.dtype, generator = opts.generator}))
  self:add_module("fom_output", layers.MLPLayer(f.hidden_size, opts.fom_classes or 100,
    {init = "bert", std = f.initializer_range, dtype = opts.dtype, generator = opts.generator}))
  self:add_module("mask_embedding", nn.Embedding(2, feat_dim, {padding_idx = 0, init = "bert",
    std = f.initializer_range, dtype = opts.dtype, generator = opts.generator}))
end

--- Flat indices for collect_frame_outputs: source rows of f_out (row * out + j) and destination
-- rows of M (b * L_c + frame), from batch.num_subs and batch.sub_idx2frame_idx (0-based).
-- An index out of its range would move a subtitle's outputs onto another video's frames (the
-- flat rows run on into the next video), so each is checked.
local function fusion_indices(owner, batch, out_len, l_c)
  local src, dst = {}, {}
  local start = 0
  for b, subs in ipairs(batch.sub_idx2frame_idx) do
    local n_subs = batch.num_subs[b]
    if type(subs) ~= "table" then
      owner:error("forward_repr: sub_idx2frame_idx[%d] must be a list of {subtitle, frames}, got %s", b, type(subs))
    end
    for k, pair in ipairs(subs) do
      local sid, frames = type(pair) == "table" and pair[1], type(pair) == "table" and pair[2]
      if math.type(sid) ~= "integer" or sid < 0 or sid >= n_subs or type(frames) ~= "table" then
        owner:error("forward_repr: sub_idx2frame_idx[%d][%d] must be {subtitle in [0, %d), {frames}}, got %s", b, k,
          n_subs, type(pair) == "table" and string.format("{%s, %s}", tostring(sid), type(frames)) or type(pair))
      end
      if #frames > out_len then
        owner:error("forward_repr: sub_idx2frame_idx[%d][%d] lists %d frames, a subtitle row has %d positions",
          b, k, #frames, out_len)
      end
      for j, f in ipairs(frames) do
        if math.type(f) ~= "integer" or f < 0 or f >= l_c then
          owner:error("forward_repr: sub_idx2frame_idx[%d][%d] frame %d is %s, not in [0, %d)", b, k, j,
            tostring(f), l_c)
        end
        src[#src + 1] = (start + sid) * out_len + (j - 1)
        dst[#dst + 1] = (b - 1) * l_c + f
      end
    end
    start = start + batch.num_subs[b]
  end
  return src, dst
end

--- The hierarchical representation. batch: the reference's collated tensors plus num_subs and
-- sub_idx2frame_idx (Lua arrays). opts.img_masks / opts.c_masks (MFM); opts.encode_clip = false
-- stops before the temporal transformer (FOM); opts.c_rows (i64 [n] of flat frame positions) asks
-- for those rows of Y only, [n, H] (opts.c_rows_host: the same rows on the CPU, when at hand).
-- Returns Y (or X) and a table of intermediates.
-- Only the frame positions of the cross-modal output reach the temporal transformer, so its last
-- layer runs on those rows alone unless the module keeps activations (then acts.f_out is whole).
--- The fields of a collated batch that forward_repr reads (the reference's video_collate; their
-- shapes: hero.models.batch_shapes.REPR).
M.REPR_FIELDS = batch_shapes.required(batch_shapes.REPR)
M.REPR_FIELDS[#M.REPR_FIELDS + 1] = "num_subs"
M.REPR_FIELDS[#M.REPR_FIELDS + 1] = "sub_idx2frame_idx"

--- The dimensions the model fixes, for batch_shapes.check: D, the frame feature width.
function M:feature_dims()
  return {D = {size = self.feat_dim, from = "the model's vfeat_dim"}}
end

function M:forward_repr(batch, opts)
  opts = opts or {}
  -- a missing mask would not fail: the encoders would attend everywhere
  if type(batch) ~= "table" then
    self:error("forward_repr: the batch must be a table of tensors, got %s", type(batch))
  end
  for _, f in ipairs(M.REPR_FIELDS) do
    if batch[f] == nil then self:error("forward_repr: the batch has no field '%s'", f) end
  end
  batch_shapes.check_batch(self, "forward_repr: the batch", batch, batch_shapes.REPR, self)
  local acts = {}
  local f_emb, txt, img = self.f_encoder:embed(batch, opts.img_masks)
  acts.txt_emb, acts.img_emb, acts.f_emb = txt, img, f_emb
  local c_feats = batch.c_v_feats
  if opts.c_masks then c_feats = c_feats + self.mask_embedding:forward(opts.c_masks:long()) end
  local B, L_c, H = c_feats:size(1), c_feats:size(2), self.hidden
  local src, dst = fusion_indices(self, batch, f_emb:size(2), L_c)
  local on = {dtype = "i64", device = f_emb:device()}
  local encoder = self.f_encoder.encoder
  local matched = core.zeros({B * L_c, H}, {dtype = f_emb:dtype(), device = f_emb:device()})
  if self.keeps_activations or #src == 0 then
    local f_out = encoder:forward(f_emb, batch.f_attn_masks)
    acts.f_out = f_out
    if #src > 0 then
      local rows = f_out:reshape(f_out:size(1) * f_out:size(2), H):index_select(1, core.tensor(src, on))
      matched = matched:scatter_add(1, core.tensor(dst, on):unsqueeze(2):expand(#dst, H), rows)
    end
  else
    local src_host = core.tensor(src, {dtype = "i64"})
    local rows = encoder:forward(f_emb, batch.f_attn_masks, {rows = src_host:to {device = on.device},
                                                             rows_host = src_host})
    matched = matched:scatter_add(1, core.tensor(dst, on):unsqueeze(2):expand(#dst, H), rows)
  end
  matched = matched:view(B, L_c, H)
  acts.c_v_feats_in = c_feats
  local R = self.frame_transform:forward(c_feats)
  acts.frame_transform_out = R
  acts.matched_v_feats = matched
  local X = R + matched
  acts.c_in = X
  if opts.encode_clip == false then return X, acts end
  local c_rows = not self.keeps_activations and opts.c_rows or nil
  local Y, c_emb = self.c_encoder:forward(X, batch.c_attn_masks,
    c_rows and {rows = c_rows, rows_host = opts.c_rows_host} or nil)
  acts.c_emb = c_emb
  if not c_rows then acts.c_out = Y end
  return Y, acts
end

return M
