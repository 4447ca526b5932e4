--- The three transformers of HERO (hero-spec §2.4, §2.6, §2.7):
--   CrossModalTrm  (f_encoder): text/frame embeddings, encoder.layer.*, pooler (unused), lm_head
--   TemporalTrm    (c_encoder): frame position embeddings, encoder.layer.*, pooler (unused)
--   QueryFeatEncoder (q_feat_attn): input projection, query positions, one attention block, pooling
local core = require "hero.core"
local nn = require "hero.nn"
local emb = require "hero.models.embeddings"
local layers = require "hero.models.layers"

local M = {}

local function encoder_opts(cfg, opts)
  return {
    hidden = cfg.hidden_size, heads = cfg.num_attention_heads, intermediate = cfg.intermediate_size,
    eps = cfg.layer_norm_eps or 1e-12, dropout = cfg.hidden_dropout_prob or 0.1,
    attention_dropout = cfg.attention_probs_dropout_prob or 0.1, init = "bert", std = cfg.initializer_range,
    dtype = opts and opts.dtype, generator = opts and opts.generator, layers = cfg.num_hidden_layers,
  }
end
M.encoder_opts = encoder_opts

local function pooler(cfg, opts)
  local p = nn.Module:extend("Pooler")()
  p:add_module("dense", nn.Linear(cfg.hidden_size, cfg.hidden_size,
    {init = "bert", std = cfg.initializer_range, dtype = opts and opts.dtype, generator = opts and opts.generator}))
  return p
end

--- The reference's tensor-core padding rows [8, H] (a buffer of zeros; numerically unused).
local function pad_buffer(hidden, opts) return core.zeros({8, hidden}, {dtype = opts and opts.dtype or "f32"}) end

M.CrossModalTrm = nn.Module:extend("CrossModalTrm")
function M.CrossModalTrm:__init(cfg, feat_dim, max_frm_seq_len, opts)
  self.cfg = cfg
  self:register_buffer("pad", pad_buffer(cfg.hidden_size, opts))
  self:add_module("encoder", nn.TransformerEncoder(encoder_opts(cfg, opts)))
  self:add_module("embeddings", emb.SubEmbeddings(cfg, opts))
  self:add_module("img_embeddings", emb.ImageEmbeddings(cfg, feat_dim, max_frm_seq_len, opts))
  self:add_module("pooler", pooler(cfg, opts))
  self:add_module("lm_head", layers.LMHead(cfg.hidden_size, self.embeddings.word_embeddings.weight,
    {init = "bert", std = cfg.initializer_range, dtype = opts and opts.dtype, generator = opts and opts.generator}))
end

--- The compact [frames; text] embedding of every subtitle row (hero-spec §2.4):
-- gather(cat(img_emb, txt_emb), gather_index). Returns f_emb, txt_emb, img_emb.
-- The MLM collate names its fields input_ids, position_ids, v_feat, gather_index (and has no frame
-- positions: arange); the representation path uses the f_* names.
function M.CrossModalTrm:embed(batch, img_masks)
  local ids = batch.f_sub_input_ids or batch.input_ids
  local pos = batch.f_sub_pos_ids or batch.position_ids
  local feats = batch.f_v_feats or batch.v_feat
  local fpos = batch.f_v_pos_ids or core.arange(feats:size(2), {device = feats:device()}):unsqueeze(1)
  local txt = self.embeddings:forward(ids, pos)
  local img = self.img_embeddings:forward(feats, fpos, self.embeddings:type_row(), img_masks)
  local both = core.cat({img, txt}, 2)
  local gi = batch.f_gather_index or batch.gather_index
  local idx = gi:unsqueeze(3):expand(gi:size(1), gi:size(2), both:size(3))
  return both:gather(2, idx), txt, img
end

--- Text-only path (queries): embeddings then the encoder with the text mask.
function M.CrossModalTrm:encode_text(ids, pos_ids, mask)
  return self.encoder:forward(self.embeddings:forward(ids, pos_ids), mask)
end

M.TemporalTrm = nn.Module:extend("TemporalTrm")
function M.TemporalTrm:__init(cfg, opts)
  self:add_module("embeddings", emb.FrameEmbeddings(cfg, opts))
  self:add_module("encoder", nn.TransformerEncoder(encoder_opts(cfg, opts)))
  self:add_module("pooler", pooler(cfg, opts))
end
--- x [B, L, H] (frame-fused inputs), mask [B, L]; opts.rows as TransformerEncoder's. Returns the
-- output and the embedding.
function M.TemporalTrm:forward(x, mask, opts)
  local e = self.embeddings:forward(x)
  return self.encoder:forward(e, mask, opts), e
end

M.QueryFeatEncoder = nn.Module:extend("QueryFeatEncoder")
function M.QueryFeatEncoder:__init(cfg, opts)
  opts = opts or {}
  -- heads of HeroForPretraining keep PyTorch's default initialisation (hero-spec §2.9)
  local o = {init = "torch", dtype = opts.dtype, generator = opts.generator}
  self:add_module("query_input_proj", layers.LinearLayer(cfg.hidden_size, cfg.hidden_size,
    {dropout = cfg.hidden_dropout_prob or 0.1, init = "torch", dtype = opts.dtype, generator = opts.generator}))
  -- a plain nn.Embedding outside init_weights' reach: N(0, 1)
  self:add_module("query_pos_embed", emb.QueryPosEmbed(cfg, {init = "torch", dtype = opts.dtype,
    generator = opts.generator}))
  local eo = encoder_opts(cfg, opts)
  eo.init = "torch"
  self:add_module("query_self_attention", nn.MultiHeadAttention(eo))
  self:add_module("modular_vector_mapping", nn.Linear(cfg.hidden_size, 1, {bias = false, init = o.init,
    dtype = o.dtype, generator = o.generator}))
end

--- z [Nq, Lq, H] (text-only cross-modal output), mask [Nq, Lq]. Returns the pooled queries [Nq, H]
-- and the intermediate tensors (for parity checks).
function M.QueryFeatEncoder:forward(z, mask)
  local F = nn.functional
  local proj = self.query_input_proj:forward(z)
  local pos = self.query_pos_embed:forward(proj)
  local ext = nn.extended_mask(mask, pos:dtype())
  local attn = self.query_self_attention:forward(pos, ext)
  -- modular pooling: softmax over l of mask_logits(w . attn[l], m)
  local logits = self.modular_vector_mapping:forward(attn):squeeze(3)
  local alpha = F.mask_logits(logits, mask):softmax(2)
  local q = core.matmul(alpha:unsqueeze(2), attn):squeeze(2)
  return q, {q_proj = proj, q_pos_emb = pos, q_attn = attn}
end

return M
