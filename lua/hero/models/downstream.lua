--- HeroModel: the hierarchical encoder alone (`v_encoder`), the base of the fine-tuning models
-- that drop the pre-training query encoder (VideoQA, VIOLIN), plus what they share:
--   * fuse_text: the temporal transformer run over [frame embeddings ; embedded text] jointly,
--     the text embedded by the cross-modal transformer's embeddings only (hero-spec §5.3, §5.4);
--   * attention pooling with a 1-output linear scorer and the reference's mask_logits;
--   * set_dropout (every dropout probability, as the reference's utils.misc.set_dropout).
local core = require "hero.core"
local nn = require "hero.nn"
local F = require "hero.nn.functional"
local Hierarchical = require "hero.models.hierarchical"
local config = require "hero.config"

local M = {}

--- Sets every dropout probability of a model (nn.Dropout modules and attention dropout) to p.
function M.set_dropout(model, p)
  if type(p) ~= "number" or not (p >= 0 and p < 1) then
    error(string.format("set_dropout: p must be a probability in [0, 1), got %s", tostring(p)), 2)
  end
  for _, entry in ipairs(model:named_modules()) do
    local mod = entry[2]
    if mod.__name == "Dropout" then mod.p = p end
    if mod.attention_dropout then mod.attention_dropout = p end
  end
  return model
end

M.HeroModel = nn.Module:extend("HeroModel")

--- cfg: the reference's fine-tuning model config ({f_config, c_config}; the vocabulary is used as
-- given, fine-tuning never pads it); opts: vfeat_dim (required), max_frm_seq_len (100), dtype,
-- generator.
function M.HeroModel:__init(cfg, opts)
  -- the heads' classes check their own, larger, option sets first
  if self.__name == "HeroModel" then
    local options = require "hero.models.options"
    opts = options.check(self.__name, opts, options.ENCODER, 3)
  end
  opts = opts or {}
  config.check_model(cfg, self.__name)
  if not opts.vfeat_dim then error(self.__name .. ": opts.vfeat_dim is required", 3) end
  self.cfg = cfg
  self:add_module("v_encoder", Hierarchical(cfg, opts))
end

--- Loads a checkpoint (path or state dict) with the reference's non-strict rules; returns
-- {missing, unexpected} and the file's non-tensor entries. opts.strict raises on any mismatch.
function M.HeroModel:load_checkpoint(path, opts)
  return require("hero.models.checkpoint").load_into(self, path, opts)
end

--- Saves the state_dict as safetensors with the reference's key names.
function M.HeroModel:save_checkpoint(path)
  require("hero.models.checkpoint").save(self, path)
end

function M.HeroModel:set_dropout(p) return M.set_dropout(self, p) end

--- The frames of every video row and a text per row through the temporal transformer together:
-- X = frame fusion (no temporal pass), E = c_encoder.embeddings(X), T = f_encoder.embeddings(ids,
-- pos) (no transformer), Z = c_encoder.encoder(cat[E, T], cat[c_mask, mask]); returns Z[:, :L_c]
-- and the intermediates (frame_transform_out, matched_v_feats, c_in, c_emb, text_emb, fused).
function M.fuse_text(v_encoder, batch, ids, pos_ids, mask)
  local X, acts = v_encoder:forward_repr(batch, {encode_clip = false})
  local c = v_encoder.c_encoder
  local E = c.embeddings:forward(X)
  local T = v_encoder.f_encoder.embeddings:forward(ids, pos_ids)
  local cmask = batch.c_attn_masks
  if ids:size(1) ~= X:size(1) then
    error(string.format("fuse_text: %d text rows for %d video rows", ids:size(1), X:size(1)), 3)
  end
  local Z = c.encoder:forward(core.cat({E, T}, 2), core.cat({cmask, mask:to(cmask:dtype())}, 2))
  acts.c_emb, acts.text_emb, acts.fused = E, T, Z
  return Z:narrow(2, 1, X:size(2)), acts
end

--- Attention weights of a pooling scorer: softmax over `dim` of mask_logits(scorer(V), mask),
-- V [..., H], mask the shape of V without H; returns the weights with V's shape but H = 1.
function M.pool_weights(scorer, V, mask, dim)
  local s = scorer:forward(V)
  return F.mask_logits(s, mask:unsqueeze(-1)):softmax(dim)
end

return M
