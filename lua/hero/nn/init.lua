--- hero.nn: modules (layers) built from hero's C ops; parameter names follow the reference's
-- PyTorch state_dict keys.
local act = require "hero.nn.activations"
local transformer = require "hero.nn.transformer"

local nn = {}

nn.Module = require "hero.nn.module"
nn.Linear = require "hero.nn.linear"
nn.Embedding = require "hero.nn.embedding"
nn.LayerNorm = require "hero.nn.layer_norm"
nn.Sequential = require "hero.nn.sequential"
nn.Dropout = act.Dropout
nn.GELU = act.GELU
nn.ReLU = act.ReLU
nn.Tanh = act.Tanh
nn.SelfAttention = transformer.SelfAttention
nn.MultiHeadAttention = transformer.MultiHeadAttention
nn.TransformerLayer = transformer.TransformerLayer
nn.TransformerEncoder = transformer.TransformerEncoder
nn.extended_mask = transformer.extended_mask
nn.functional = require "hero.nn.functional"

return nn
