--- Parameter-free layers: Dropout, GELU (erf form), ReLU, Tanh.
local core = require "hero.core"
local Module = require "hero.nn.module"

local M = {}

--- nn.Dropout(p [, {generator = g}]): inverted dropout while training (p = 1: zeros, as torch's),
-- identity in evaluation.
M.Dropout = Module:extend("Dropout")
function M.Dropout:__init(p, opts)
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then
    error("Dropout: p must be in [0, 1], got " .. tostring(p), 3)
  end
  if opts ~= nil then
    if type(opts) ~= "table" then error("Dropout: options must be a table ({generator = g}), got " .. type(opts), 3) end
    require("hero.nn.check").options("Dropout", 3, opts, {"generator"})
  end
  self.p = p
  self.generator = opts and opts.generator
end
function M.Dropout:forward(x)
  return core.dropout(x, self.p, self.training, self.generator and {generator = self.generator} or nil)
end
function M.Dropout:extra_repr() return string.format("p=%g", self.p) end

-- These take no options: torch's (GELU's approximate = "tanh", ReLU's inplace) would be ignored
-- without a word, so any argument is refused.
local function no_arguments(name, n)
  if n > 0 then
    error(string.format("%s: takes no arguments (torch's approximate and inplace options are not implemented)", name),
      4)
  end
end

M.GELU = Module:extend("GELU")
function M.GELU.__init(_, ...) no_arguments("GELU", select("#", ...)) end
function M.GELU.forward(_, x) return core.gelu(x) end

M.ReLU = Module:extend("ReLU")
function M.ReLU.__init(_, ...) no_arguments("ReLU", select("#", ...)) end
function M.ReLU.forward(_, x) return x:relu() end

M.Tanh = Module:extend("Tanh")
function M.Tanh.__init(_, ...) no_arguments("Tanh", select("#", ...)) end
function M.Tanh.forward(_, x) return x:tanh() end

return M
