--- Small heads of the reference model, with its parameter names:
--   LinearLayer  (LayerNorm, net = [Dropout, Linear, ReLU])         frame_transform, query_input_proj
--   MLPLayer     (linear_1, LayerNorm, linear_2)                     fom_output, QA/VIOLIN heads
--   FrameFeatureRegression (net = [Linear, GELU, LayerNorm, Linear]) feat_regress
--   LMHead       (dense, LayerNorm, decoder tied to the word embeddings, bias)
local core = require "hero.core"
local nn = require "hero.nn"

local M = {}

M.LinearLayer = nn.Module:extend("LinearLayer")
--- opts: layer_norm (true), dropout (0.1), relu (true), eps (1e-5), init, dtype, generator.
function M.LinearLayer:__init(in_dim, out_dim, opts)
  opts = opts or {}
  if opts.layer_norm ~= false then
    self:add_module("LayerNorm", nn.LayerNorm(in_dim, {eps = opts.eps or 1e-5, dtype = opts.dtype}))
  end
  local net = nn.Sequential(nn.Dropout(opts.dropout or 0.1, {generator = opts.generator}),
    nn.Linear(in_dim, out_dim, {init = opts.init, std = opts.std, dtype = opts.dtype, generator = opts.generator}))
  if opts.relu ~= false then net:add(nn.ReLU()) end
  self:add_module("net", net)
end
function M.LinearLayer:forward(x)
  if self.LayerNorm then x = self.LayerNorm:forward(x) end
  return self.net:forward(x)
end

M.MLPLayer = nn.Module:extend("MLPLayer")
function M.MLPLayer:__init(in_dim, out_dim, opts)
  opts = opts or {}
  local o = {init = opts.init, std = opts.std, dtype = opts.dtype, generator = opts.generator}
  self:add_module("linear_1", nn.Linear(in_dim, in_dim * 2, o))
  self:add_module("LayerNorm", nn.LayerNorm(in_dim * 2, {eps = 1e-5, dtype = opts.dtype}))
  self:add_module("linear_2", nn.Linear(in_dim * 2, out_dim, o))
end
function M.MLPLayer:forward(x)
  return self.linear_2:forward(self.LayerNorm:forward(core.gelu(self.linear_1:forward(x))))
end

M.FrameFeatureRegression = nn.Module:extend("FrameFeatureRegression")
function M.FrameFeatureRegression:__init(hidden, feat_dim, opts)
  opts = opts or {}
  local o = {init = opts.init, std = opts.std, dtype = opts.dtype, generator = opts.generator}
  self:add_module("net", nn.Sequential(nn.Linear(hidden, hidden, o), nn.GELU(),
    nn.LayerNorm(hidden, {eps = 1e-5, dtype = opts.dtype}), nn.Linear(hidden, feat_dim, o)))
end
function M.FrameFeatureRegression:forward(x) return self.net:forward(x) end

--- The MLM head; `decoder.weight` is the very tensor of the word embeddings (tied).
M.LMHead = nn.Module:extend("LMHead")
function M.LMHead:__init(hidden, word_weight, opts)
  opts = opts or {}
  self:register_parameter("bias", core.zeros({word_weight:size(1)}, {dtype = opts.dtype or "f32"}))
  self:add_module("dense", nn.Linear(hidden, hidden,
    {init = opts.init, std = opts.std, dtype = opts.dtype, generator = opts.generator}))
  self:add_module("LayerNorm", nn.LayerNorm(hidden, {eps = 1e-5, dtype = opts.dtype}))
  local decoder = nn.Module:extend("Linear")() -- holds the tied weight under the name decoder.weight
  decoder:register_parameter("weight", word_weight)
  self:add_module("decoder", decoder)
end
function M.LMHead:forward(h)
  local t = self.LayerNorm:forward(core.gelu(self.dense:forward(h)))
  return core.linear(t, self.decoder.weight, self.bias)
end

return M
