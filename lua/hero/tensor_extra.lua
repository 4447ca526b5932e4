--- Small tensor conveniences that are pure composition of C ops.
local M = {}

function M.install(hero, methods, _metatable)
  --- Tensor of the same shape, dtype and device filled with zeros/ones/a value.
  local function like(t, who)
    if not hero.is_tensor(t) then error(string.format("%s: expected a hero.Tensor, got %s", who, type(t)), 3) end
    return {dtype = t:dtype(), device = t:device()}
  end
  function methods.new_zeros(t, shape) local o = like(t, "new_zeros"); return hero.zeros(shape or t:size(), o) end
  function methods.new_ones(t, shape) local o = like(t, "new_ones"); return hero.ones(shape or t:size(), o) end
  function hero.zeros_like(t) local o = like(t, "zeros_like"); return hero.zeros(t:size(), o) end
  function hero.ones_like(t) local o = like(t, "ones_like"); return hero.ones(t:size(), o) end
  function hero.full_like(t, v) local o = like(t, "full_like"); return hero.full(t:size(), v, o) end
  function hero.empty_like(t) local o = like(t, "empty_like"); return hero.empty(t:size(), o) end
end

return M
