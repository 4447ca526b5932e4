--- Torch-style printing of tensors (replaced by the full printer).
local M = {}

function M.install(methods, metatable)
  metatable.__tostring = function(t)
    if t:is_freed() then return "[hero.Tensor (freed)]" end
    local size = table.concat(t:size(), "x")
    return string.format("[hero.Tensor %s %s of size %s]", t:dtype(), t:device(), size)
  end
  methods.print = function(t) print(tostring(t)) end
end

return M
