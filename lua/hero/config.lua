--- hero.config: the reference implementation's JSON configurations, read as they are.
--
-- Model configs (config/hero_pretrain.json, hero_finetune.json, hero_tvc.json) hold sub-dicts
-- f_config, c_config, q_config (and d_config for TVC). The reference turns each into a
-- RobertaModelConfig built from defaults and then overwritten by the JSON keys, so keys missing
-- from the JSON take the constructor defaults (notably layer_norm_eps = 1e-12, hero-spec §1).
-- Training configs (config/train-*.json, pretrain-*.json) are returned as they are, with their
-- misspelled keys (hard_negtiave_start_step) also available under the correct spelling.
local json = require "hero.json"
local spelling = require "hero.spelling"

local config = {}

local MODEL_DEFAULTS = {
  hidden_size = 768, num_hidden_layers = 12, num_attention_heads = 12, intermediate_size = 3072,
  hidden_act = "gelu", hidden_dropout_prob = 0.1, attention_probs_dropout_prob = 0.1,
  max_position_embeddings = 512, type_vocab_size = 2, initializer_range = 0.02, layer_norm_eps = 1e-12,
  vocab_size = -1,
}

--- Raises "<who>: cfg ..." naming what is wrong unless cfg is a model config (a table holding each
-- section named, f_config and c_config by default, as tables) as config.load returns them. The
-- message has no position: models call this from constructors nested to various depths.
function config.check_model(cfg, who, sections)
  sections = sections or {"f_config", "c_config"}
  local hint = "a model config as hero.config.load reads the reference's JSON"
  if type(cfg) ~= "table" then
    error(string.format("%s: cfg must be %s (with %s), got %s", who, hint, table.concat(sections, ", "),
      tostring(cfg)), 0)
  end
  for _, s in ipairs(sections) do
    if type(cfg[s]) ~= "table" then
      error(string.format("%s: cfg.%s must be a table (%s), got %s", who, s, hint, tostring(cfg[s])), 0)
    end
  end
  -- a section handed over as decoded JSON (not through config.model) still computes erf GELU only
  for _, s in ipairs {"f_config", "c_config", "q_config", "d_config"} do
    local act = type(cfg[s]) == "table" and cfg[s].hidden_act or nil
    if act ~= nil and act ~= "gelu" then
      error(string.format("%s: cfg.%s.hidden_act is %s; hero's layers compute \"gelu\" (erf) only", who, s,
        tostring(act)), 0)
    end
  end
end

--- A sub-config with the reference's defaults filled in (a copy).
function config.model_section(section, name)
  if type(section) ~= "table" then
    error(string.format("config: %s must be an object, got %s", name or "section", type(section)), 2)
  end
  local out = {}
  for k, v in pairs(MODEL_DEFAULTS) do out[k] = v end
  for k, v in pairs(section) do out[k] = v end
  name = name or "section"
  -- the reference keeps any key and reads only its own, so a misspelt one left the default in place
  for k in pairs(section) do
    local meant = MODEL_DEFAULTS[k] == nil and spelling.near_miss(k, MODEL_DEFAULTS)
    if meant and section[meant] == nil then
      error(string.format("config: %s.%s is not a key the model reads; did you mean %s? (as it is, %s keeps "
        .. "its default, %s)", name, k, meant, meant, tostring(MODEL_DEFAULTS[meant])), 2)
    end
  end
  local function need(ok, key, what)
    if not ok then
      error(string.format("config: %s.%s must be %s, got %s", name, key, what, tostring(out[key])), 3)
    end
  end
  for _, key in ipairs {"hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings",
                        "type_vocab_size"} do
    need(math.type(out[key]) == "integer" and out[key] >= 1, key, "a positive integer")
  end
  need(math.type(out.num_hidden_layers) == "integer" and out.num_hidden_layers >= 0, "num_hidden_layers",
    "a non-negative integer")
  need(math.type(out.vocab_size) == "integer" and (out.vocab_size >= 1 or out.vocab_size == -1), "vocab_size",
    "a positive integer (or -1: no word embeddings of its own)")
  need(type(out.initializer_range) == "number" and out.initializer_range >= 0, "initializer_range",
    "a number >= 0")
  for _, key in ipairs {"hidden_dropout_prob", "attention_probs_dropout_prob"} do
    need(type(out[key]) == "number" and out[key] >= 0 and out[key] < 1, key, "a probability in [0, 1)")
  end
  need(type(out.layer_norm_eps) == "number" and out.layer_norm_eps > 0, "layer_norm_eps", "a positive number")
  -- the transformer layers compute the erf GELU, HERO's (and RoBERTa's) activation
  need(out.hidden_act == "gelu", "hidden_act", "\"gelu\" (the activation hero's layers compute)")
  if out.hidden_size % out.num_attention_heads ~= 0 then
    error(string.format("config: %s.hidden_size %d is not a multiple of num_attention_heads %d", name,
      out.hidden_size, out.num_attention_heads), 2)
  end
  return out
end

--- A model config table (already decoded) with every section completed.
function config.model(t)
  if type(t) ~= "table" or type(t.f_config) ~= "table" then
    error("config: a model config needs an f_config object (hero_pretrain.json / hero_finetune.json format)", 2)
  end
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  local sections = {"f_config", "c_config", "q_config", "d_config"}
  for k in pairs(t) do
    local meant = spelling.near_miss(k, sections)
    if meant and t[meant] == nil then
      error(string.format("config: %s is not a section the model reads; did you mean %s?", tostring(k), meant), 2)
    end
  end
  for _, name in ipairs(sections) do
    if t[name] ~= nil then out[name] = config.model_section(t[name], name) end
  end
  out.c_config = out.c_config or config.model_section(t.f_config, "c_config")
  out.q_config = out.q_config or out.f_config
  -- the transformers hand each other their hidden states: one width for all (a mismatch failed
  -- only in the forward pass, as a broadcast error deep inside)
  for _, name in ipairs {"c_config", "q_config", "d_config"} do
    local s = out[name]
    if s and s.hidden_size ~= out.f_config.hidden_size then
      error(string.format("config: %s.hidden_size %d differs from f_config.hidden_size %d (the model's "
        .. "transformers share one width)", name, s.hidden_size, out.f_config.hidden_size), 2)
    end
  end
  return out
end

local MISSPELLED = {hard_negtiave_start_step = "hard_negative_start_step"}

--- Reads a JSON config file. Model configs (with f_config) are completed with the defaults;
-- any other config is returned as is, with misspelled keys mirrored under their correct name.
function config.load(path)
  local t = json.read_file(path)
  if type(t) ~= "table" then error(string.format("config: %s does not hold a JSON object", path), 2) end
  if t.f_config then return config.model(t) end
  for wrong, right in pairs(MISSPELLED) do
    if t[wrong] ~= nil and t[right] == nil then t[right] = t[wrong] end
  end
  return t
end

return config
