--- Parameter initialisation schemes shared by the layers.
--   "torch": PyTorch's defaults (Linear: U(+-1/sqrt(fan_in)) for weight and bias; Embedding: N(0, 1)).
--   "bert":  the reference's init_weights (Linear and Embedding weights N(0, std), Linear bias 0;
--            std is the config's initializer_range, 0.02 by default).
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

--- The standard deviation of the "bert" scheme: std (a config's initializer_range) or 0.02.
function M.bert_std(std, who)
  if std == nil then return 0.02 end
  if type(std) ~= "number" or not (std >= 0 and std < math.huge) then
    error(string.format("%s: std (initializer_range) must be a non-negative number, got %s", who, tostring(std)), 4)
  end
  return std
end

--- Checks the scheme name once for a clear error.
function M.check(scheme, who)
  if scheme ~= "torch" and scheme ~= "bert" then
    error(string.format("%s: init must be \"torch\" or \"bert\", got %s", who, tostring(scheme)), 3)
  end
  return scheme
end

return M
