--- Small tensor conveniences that are pure composition of C ops.
local M = {}

function M.install(hero, methods, _metatable)
  --- Tensor of the same shape, dtype and device filled with zeros/ones/a value.
  function methods.new_zeros(t, shape)
    return hero.zeros(shape or t:size(), {dtype = t:dtype(), device = t:device()})
  end
  function methods.new_ones(t, shape) return hero.ones(shape or t:size(), {dtype = t:dtype(), device = t:device()}) end
  function hero.zeros_like(t) return hero.zeros(t:size(), {dtype = t:dtype(), device = t:device()}) end
  function hero.ones_like(t) return hero.ones(t:size(), {dtype = t:dtype(), device = t:device()}) end
  function hero.full_like(t, v) return hero.full(t:size(), v, {dtype = t:dtype(), device = t:device()}) end
  function hero.empty_like(t) return hero.empty(t:size(), {dtype = t:dtype(), device = t:device()}) end
end

return M
