--- nn.Sequential(m1, m2, ...): children named "0", "1", ... (PyTorch's state_dict keys); forward
-- feeds each child's output to the next.
local Module = require "hero.nn.module"

local Sequential = Module:extend("Sequential")

function Sequential:__init(...)
  local n = select("#", ...)
  for i = 1, n do self:add_module(tostring(i - 1), (select(i, ...))) end
end

function Sequential:add(m)
  self:add_module(tostring(#self._module_order), m)
  return self
end

function Sequential:forward(x, ...)
  for _, name in ipairs(self._module_order) do x = self._modules[name]:forward(x, ...) end
  return x
end

return Sequential
