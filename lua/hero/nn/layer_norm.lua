--- nn.LayerNorm(dim [, opts]) over the last dimension: weight 1, bias 0; opts.eps (1e-5), dtype,
-- elementwise_affine (true; false: no weight or bias, as torch's).
-- The reference uses eps 1e-12 inside transformer layers and 1e-5 elsewhere: pass it explicitly.
local core = require "hero.core"
local Module = require "hero.nn.module"
local check = require "hero.nn.check"

local LayerNorm = Module:extend("LayerNorm")

function LayerNorm:__init(dim, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("LayerNorm: opts must be a table, got " .. type(opts), 3) end
  check.options("LayerNorm", 3, opts, {"eps", "dtype", "elementwise_affine"})
  check.float_dtype("LayerNorm", 3, opts.dtype)
  if opts.eps ~= nil and (type(opts.eps) ~= "number" or opts.eps ~= opts.eps or opts.eps < 0) then
    error("LayerNorm: opts.eps must be a number >= 0, got " .. tostring(opts.eps), 3)
  end
  check.sizes("LayerNorm", 3, "normalized size", dim)
  self.dim, self.eps = dim, opts.eps or 1e-5
  if opts.elementwise_affine ~= false then
    self:register_parameter("weight", core.ones({dim}, {dtype = opts.dtype or "f32"}))
    self:register_parameter("bias", core.zeros({dim}, {dtype = opts.dtype or "f32"}))
  end
end

function LayerNorm:forward(x)
  local ok, y = pcall(core.layer_norm, x, self.weight, self.bias, self.eps)
  if not ok then self:error("%s", tostring(y)) end
  return y
end

function LayerNorm:extra_repr() return string.format("%d, eps=%g", self.dim, self.eps) end

return LayerNorm
