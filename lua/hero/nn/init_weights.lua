--- Parameter initialisation schemes shared by the layers.
--   "torch": PyTorch's defaults (Linear: U(+-1/sqrt(fan_in)) for weight and bias; Embedding: N(0, 1)).
--   "bert":  the reference's init_weights (Linear and Embedding weights N(0, 0.02), Linear bias 0).
local core = require "hero.core"

local M = {}

local function opts_for(dtype, generator) return {dtype = dtype or "f32", generator = generator} end

function M.uniform(shape, bound, dtype, generator)
  local t = core.empty(shape, opts_for(dtype))
  return t:uniform_(-bound, bound, generator and {generator = generator} or nil)
end

function M.normal(shape, std, dtype, generator)
  local t = core.empty(shape, opts_for(dtype))
  return t:normal_(0, std, generator and {generator = generator} or nil)
end

--- Checks the scheme name once for a clear error.
function M.check(scheme, who)
  if scheme ~= "torch" and scheme ~= "bert" then
    error(string.format("%s: init must be \"torch\" or \"bert\", got %s", who, tostring(scheme)), 3)
  end
  return scheme
end

return M
