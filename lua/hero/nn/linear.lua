--- nn.Linear(in_features, out_features [, opts]): y = x·Wᵀ + b with W [out, in] (PyTorch layout).
-- opts: bias (true), init ("torch" | "bert"), std (the "bert" init's, 0.02: a config's
-- initializer_range), dtype ("f32"), generator.
local core = require "hero.core"
local Module = require "hero.nn.module"
local init = require "hero.nn.init_weights"
local check = require "hero.nn.check"

local Linear = Module:extend("Linear")

function Linear:__init(in_features, out_features, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("Linear: opts must be a table, got " .. type(opts), 3) end
  check.options("Linear", 3, opts, {"bias", "init", "std", "dtype", "generator"})
  check.float_dtype("Linear", 3, opts.dtype)
  check.sizes("Linear", 3, "in_features", in_features, "out_features", out_features)
  self.in_features, self.out_features = in_features, out_features
  local scheme = init.check(opts.init or "torch", "Linear")
  local w, b
  if scheme == "bert" then
    w = init.normal({out_features, in_features}, init.bert_std(opts.std, "Linear"), opts.dtype, opts.generator)
    b = core.zeros({out_features}, {dtype = opts.dtype or "f32"})
  else
    local bound = 1 / math.sqrt(in_features)
    w = init.uniform({out_features, in_features}, bound, opts.dtype, opts.generator)
    b = init.uniform({out_features}, bound, opts.dtype, opts.generator)
  end
  self:register_parameter("weight", w)
  if opts.bias ~= false then self:register_parameter("bias", b) end
end

function Linear:forward(x)
  local ok, y = pcall(core.linear, x, self.weight, self.bias)
  if not ok then self:error("%s", tostring(y)) end
  return y
end

function Linear:extra_repr()
  return string.format("%d -> %d%s", self.in_features, self.out_features, self.bias and "" or ", no bias")
end

return Linear
