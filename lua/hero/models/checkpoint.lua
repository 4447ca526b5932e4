--- Checkpoint handling with the reference's rules (hero-spec §3.3):
--   * legacy names: any key containing "gamma"/"beta" is renamed to "weight"/"bias";
--   * non-tensor entries (the release's vocab_padded = True) are set aside, not loaded;
--   * loading is non-strict by default: missing and unexpected keys are reported; a shape
--     mismatch is an error naming the key;
--   * RoBERTa initialisation of the cross-modal transformer: layers 1, 3, 5, 7, 9, 11 of a
--     12-layer RoBERTa become layers 0..5, the vocabulary is padded with zero rows to a multiple
--     of 8, and both token-type rows take RoBERTa's single row.
local core = require "hero.core"

local M = {}

--- Splits a loaded file into tensors (legacy names fixed) and other values.
function M.normalize(sd)
  if type(sd) ~= "table" then
    error("checkpoint: expected a path or a table of tensors by name, got " .. type(sd), 3)
  end
  local tensors, extras, from = {}, {}, {}
  for k, v in pairs(sd) do
    if type(k) ~= "string" then error("checkpoint: a key of the state dict is a " .. type(k) .. ", not a name", 3) end
    if core.is_tensor(v) then
      local name = k:gsub("gamma", "weight"):gsub("beta", "bias")
      -- "x.gamma" beside "x.weight" name one tensor twice: which one loads would depend on the
      -- order of a Lua table
      if from[name] then
        error(string.format("checkpoint: '%s' and '%s' both name '%s' (gamma/beta are read as weight/bias)",
          from[name], k, name), 3)
      end
      from[name] = k
      tensors[name] = v
    else
      extras[k] = v
    end
  end
  return tensors, extras
end

--- Reads a checkpoint file (safetensors, or the reference's torch.save files) into tensors and extras.
function M.read(path)
  local io_ = require "hero.io"
  return M.normalize(io_.load(path))
end

--- Frame-position rows of a checkpoint (the reference reads max_frm_seq_len from the file).
function M.max_frm_seq_len(sd, default)
  local t = sd["v_encoder.f_encoder.img_embeddings.position_embeddings.weight"]
  return t and t:size(1) or default or 100
end

--- Appends zero rows so the first dimension is a multiple of `multiple`.
local function pad_rows(t, multiple)
  local n = t:size(1)
  local padded = (n + multiple - 1) // multiple * multiple
  if padded == n then return t end
  local size = t:size()
  size[1] = padded - n
  return core.cat({t, core.zeros(size, {dtype = t:dtype()})}, 1)
end

--- The reference's load_partial_checkpoint + pad_vocab + init_type_embedding for a RoBERTa state
-- dict (keys "roberta.*"): returns a state dict for HeroForPretraining (v_encoder.f_encoder.* only,
-- plus v_encoder.mask_embedding row 0 reset by the caller). opts: n_layers (6), skip_layers (true),
-- prefix ("v_encoder.f_encoder.").
function M.from_roberta(sd, opts)
  opts = opts or {}
  local n_layers = opts.n_layers or 6
  local gap = opts.skip_layers == false and 1 or 12 // n_layers
  local prefix = opts.prefix or "v_encoder.f_encoder."
  local out = {}
  for k, v in pairs(sd) do
    local rest = k:match("^roberta%.(.*)$")
    if rest then
      local layer, tail = rest:match("^encoder%.layer%.(%d+)%.(.*)$")
      if layer then
        local l = tonumber(layer)
        if gap == 1 then
          if l < n_layers then out[prefix .. "encoder.layer." .. l .. "." .. tail] = v end
        elseif l % gap == gap - 1 then
          out[prefix .. "encoder.layer." .. (l // gap) .. "." .. tail] = v
        end
      else
        out[prefix .. rest] = v
      end
    end
  end
  local word = out[prefix .. "embeddings.word_embeddings.weight"]
  if word then
    out[prefix .. "embeddings.word_embeddings.weight"] = pad_rows(word, 8)
    out[prefix .. "lm_head.decoder.weight"] = nil -- tied to the word embeddings
  end
  local bias = out[prefix .. "lm_head.bias"]
  if bias then out[prefix .. "lm_head.bias"] = pad_rows(bias, 8) end
  local ttype = out[prefix .. "embeddings.token_type_embeddings.weight"]
  if ttype then
    out[prefix .. "embeddings.token_type_embeddings.weight"] = core.cat({ttype:narrow(1, 1, 1),
      ttype:narrow(1, 1, 1)}, 1)
  end
  return out
end

--- The reference's HeroModel.load_partial_pretrained on a HeroForPretraining (pretrain.py with
-- load_partial_pretrained; hero-spec §3.3), for a RoBERTa state dict `sd` (tensors as normalize
-- gives them) or none at all (the reference's default checkpoint is an empty dict):
--   * the cross-modal transformer is a fresh one whose lm_head.dense has PyTorch's default init
--     (U(+-1/sqrt(H)) for weight and bias), not the N(0, 0.02) of the rest;
--   * the RoBERTa weights are loaded over it (from_roberta), the vocabulary's padding rows are
--     zero (pad_vocab appends them to whatever the table held);
--   * both token-type rows take row 0 and v_encoder.mask_embedding row 0 is zero
--     (init_type_embedding).
-- opts: n_layers (6), skip_layers (true), generator. Returns the load report {missing, unexpected}.
function M.load_partial_pretrained(model, sd, opts)
  opts = opts or {}
  local f = model.v_encoder.f_encoder
  local mapped = M.from_roberta(sd or {}, {n_layers = opts.n_layers, skip_layers = opts.skip_layers})
  local report
  core.no_grad(function()
    local dense = f.lm_head.dense
    local bound = 1 / math.sqrt(dense.in_features)
    local g = opts.generator and {generator = opts.generator} or nil
    dense.weight:uniform_(-bound, bound, g)
    if dense.bias then dense.bias:uniform_(-bound, bound, g) end
    local word = f.embeddings.word_embeddings.weight
    local pad = model.opts and model.opts.vocab_pad or 0
    if pad > 0 then
      word:narrow(1, word:size(1) - pad + 1, pad):zero_()
      f.lm_head.bias:narrow(1, word:size(1) - pad + 1, pad):zero_()
    end
    report = M.load_into(model, mapped)
    local ttype = f.embeddings.token_type_embeddings.weight
    for row = 2, ttype:size(1) do ttype:narrow(1, row, 1):copy_(ttype:narrow(1, 1, 1)) end
    model.v_encoder.mask_embedding.weight:narrow(1, 1, 1):zero_()
  end)
  return report
end

--- Loads a checkpoint into a model with the reference's non-strict rules. Returns the report
-- {missing, unexpected} and the non-tensor entries of the file.
function M.load_into(model, path_or_sd, opts)
  opts = require("hero.models.options").check("load_checkpoint", opts, {strict = "boolean"}, 2)
  local tensors, extras
  if type(path_or_sd) == "string" then tensors, extras = M.read(path_or_sd)
  else tensors, extras = M.normalize(path_or_sd) end
  -- the model's tied decoder is the word embedding tensor: loading one name loads both
  local own = model:state_dict()
  local filtered = {}
  for k, v in pairs(tensors) do
    if own[k] ~= nil or opts.strict then filtered[k] = v end
  end
  local report = model:load_state_dict(filtered, {strict = false})
  local unexpected = {}
  for k in pairs(tensors) do
    if own[k] == nil then unexpected[#unexpected + 1] = k end
  end
  table.sort(unexpected)
  report.unexpected = unexpected
  if opts.strict and (#report.missing > 0 or #unexpected > 0) then
    error(string.format("load_checkpoint: %d missing keys (%s), %d unexpected keys (%s)", #report.missing,
      table.concat(report.missing, ", "), #unexpected, table.concat(unexpected, ", ")), 2)
  end
  return report, extras
end

--- Writes the model's state_dict as safetensors with the reference's key names.
function M.save(model, path)
  -- a number would be written as a file named "5" in the working directory
  if type(path) ~= "string" or path == "" then
    error("save_checkpoint: expected a file path, got " .. (path == "" and "an empty string" or type(path)), 3)
  end
  local io_ = require "hero.io"
  local sd = {}
  for k, v in pairs(model:state_dict()) do sd[k] = v:detach() end
  io_.save_safetensors(path, sd)
end

return M
