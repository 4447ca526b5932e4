--- Embedding modules of the reference (hero-spec §2.2, §2.3, §2.6, §2.7).
local core = require "hero.core"
local nn = require "hero.nn"

local M = {}

-- The rows of owner.position_embeddings at pos_ids. A position past the table names the table and
-- the setting that sized it (sized_by), which a bare embedding error does not.
local function pos_rows(owner, pos_ids, sized_by)
  local table_weight = owner.position_embeddings.weight
  local ok, rows = pcall(core.embedding, table_weight, pos_ids)
  if not ok then
    owner:error("position_embeddings has %d rows (%s): %s", table_weight:size(1), sized_by,
      tostring(rows):gsub("^[^\n]-%.lua:%d+: ", ""))
  end
  return rows
end

--- SubEmbeddings: LN_1e-5(word[id] + pos[pos] + type[1]) then dropout. Positions are passed
-- explicitly (0-based); every text uses token type row 1.
M.SubEmbeddings = nn.Module:extend("SubEmbeddings")
function M.SubEmbeddings:__init(cfg, opts)
  opts = opts or {}
  local o = {init = "bert", std = cfg.initializer_range, dtype = opts.dtype, generator = opts.generator}
  self:add_module("word_embeddings", nn.Embedding(cfg.vocab_size, cfg.hidden_size,
    {padding_idx = 1, init = "bert", std = cfg.initializer_range, dtype = opts.dtype, generator = opts.generator}))
  self:add_module("position_embeddings", nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size, o))
  self:add_module("token_type_embeddings", nn.Embedding(math.max(cfg.type_vocab_size or 1, 2), cfg.hidden_size, o))
  self:add_module("LayerNorm", nn.LayerNorm(cfg.hidden_size, {eps = 1e-5, dtype = opts.dtype}))
  self:add_module("dropout", nn.Dropout(cfg.hidden_dropout_prob or 0.1, {generator = opts.generator}))
end
--- The type-1 row, [H] (also used by the frame embeddings).
function M.SubEmbeddings:type_row() return self.token_type_embeddings.weight[2] end
function M.SubEmbeddings:forward(ids, pos_ids)
  local pos = pos_rows(self, pos_ids, "the config's max_position_embeddings")
  local x = self.word_embeddings:forward(ids) + pos + self:type_row()
  return self.dropout:forward(self.LayerNorm:forward(x))
end

--- ImageEmbeddings: x = img_linear(LN_Dv(f [+ mask_embedding[m]])); LN_1e-5(x + pos[p] + type[1]).
M.ImageEmbeddings = nn.Module:extend("ImageEmbeddings")
function M.ImageEmbeddings:__init(cfg, feat_dim, max_frm_seq_len, opts)
  opts = opts or {}
  local o = {init = "bert", std = cfg.initializer_range, dtype = opts.dtype, generator = opts.generator}
  self:add_module("img_linear", nn.Linear(feat_dim, cfg.hidden_size, o))
  self:add_module("img_LayerNorm", nn.LayerNorm(feat_dim, {eps = 1e-5, dtype = opts.dtype}))
  self:add_module("position_embeddings", nn.Embedding(max_frm_seq_len, cfg.hidden_size, o))
  -- padding_idx 0: row 0 is added to every unmasked frame but never learns (its gradient is 0)
  self:add_module("mask_embedding", nn.Embedding(2, feat_dim,
    {padding_idx = 0, init = "bert", std = cfg.initializer_range, dtype = opts.dtype,
      generator = opts.generator}))
  self:add_module("LayerNorm", nn.LayerNorm(cfg.hidden_size, {eps = 1e-5, dtype = opts.dtype}))
  self:add_module("dropout", nn.Dropout(cfg.hidden_dropout_prob or 0.1, {generator = opts.generator}))
end
--- feats [S, max_vl, Dv], pos_ids [1, max_vl], type_row [H], masks nil or [S, max_vl] bool.
function M.ImageEmbeddings:forward(feats, pos_ids, type_row, masks)
  if masks then feats = feats + self.mask_embedding:forward(masks:long()) end
  local x = self.img_linear:forward(self.img_LayerNorm:forward(feats))
  x = x + pos_rows(self, pos_ids, "max_frm_seq_len: the checkpoint's frame positions, or 100") + type_row
  return self.dropout:forward(self.LayerNorm:forward(x))
end

--- FrameEmbeddings of the temporal transformer: LN_1e-5(x + pos[arange(L)]) then dropout (no type).
-- opts.init: the position table's initialisation, "bert" (N(0, 0.02), default) or "torch" (N(0, 1)).
M.FrameEmbeddings = nn.Module:extend("FrameEmbeddings")
function M.FrameEmbeddings:__init(cfg, opts)
  opts = opts or {}
  self:add_module("position_embeddings", nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size,
    {init = opts.init or "bert", std = cfg.initializer_range, dtype = opts.dtype, generator = opts.generator}))
  self:add_module("LayerNorm", nn.LayerNorm(cfg.hidden_size, {eps = 1e-5, dtype = opts.dtype}))
  self:add_module("dropout", nn.Dropout(cfg.hidden_dropout_prob or 0.1, {generator = opts.generator}))
end
function M.FrameEmbeddings:forward(x)
  local pos = core.arange(x:size(2), {device = x:device()}):unsqueeze(1)
  return self.dropout:forward(self.LayerNorm:forward(x + pos_rows(self, pos, "the config's max_position_embeddings")))
end

--- The query position embedding (same computation as FrameEmbeddings, its own names).
M.QueryPosEmbed = M.FrameEmbeddings:extend("QueryPosEmbed")

return M
