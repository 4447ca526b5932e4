--- Small tensor conveniences that are pure composition of C ops.
local M = {}

-- The view, shape and copy methods that are functions too (hero.reshape(t, 2, 3) is t:reshape(2, 3)),
-- as torch.reshape is Tensor.reshape: the same C functions, which take the tensor first.
local ALSO_FUNCTIONS = {"narrow", "view", "reshape", "transpose", "permute", "select", "squeeze", "unsqueeze",
                        "expand", "contiguous", "clone", "detach", "t", "fill_", "copy_"}

function M.install(hero, methods, _metatable)
  for _, name in ipairs(ALSO_FUNCTIONS) do
    if hero[name] == nil and methods[name] ~= nil then hero[name] = methods[name] end
  end
  --- Tensor of the same shape, dtype and device filled with zeros/ones/a value.
  local function like(t, who)
    if not hero.is_tensor(t) then error(string.format("%s: expected a hero.Tensor, got %s", who, type(t)), 3) end
    return {dtype = t:dtype(), device = t:device()}
  end
  local function shape_of(t, shape, who)
    if shape == nil then return t:size() end
    if type(shape) ~= "table" then
      error(string.format("%s: the shape must be a table of sizes such as {2, 3}, got %s", who, type(shape)), 3)
    end
    return shape
  end
  function methods.new_zeros(t, shape)
    local o = like(t, "new_zeros")
    return hero.zeros(shape_of(t, shape, "new_zeros"), o)
  end
  function methods.new_ones(t, shape)
    local o = like(t, "new_ones")
    return hero.ones(shape_of(t, shape, "new_ones"), o)
  end
  function hero.zeros_like(t) local o = like(t, "zeros_like"); return hero.zeros(t:size(), o) end
  function hero.ones_like(t) local o = like(t, "ones_like"); return hero.ones(t:size(), o) end
  function hero.full_like(t, v) local o = like(t, "full_like"); return hero.full(t:size(), v, o) end
  function hero.empty_like(t) local o = like(t, "empty_like"); return hero.empty(t:size(), o) end
end

return M
