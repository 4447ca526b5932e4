--- hero.nn.check: the argument checks the nn constructors share, so that a bad size names the
-- module and the argument instead of failing later inside a tensor op.
local M = {}

--- Raises "<who>: <what> must be a positive integer, got <v>" unless every value is one. `level`
-- is the level the calling function would give error() itself (3 in a constructor's __init: the
-- line that called the constructor). Pairs of (what, value) follow:
--   check.sizes("Linear", 3, "in_features", 3, "out_features", 2)
function M.sizes(who, level, ...)
  local n = select("#", ...)
  for i = 1, n, 2 do
    local what, v = select(i, ...)
    if math.type(v) ~= "integer" or v < 1 then
      error(string.format("%s: %s must be a positive integer, got %s", who, what, tostring(v)), level + 1)
    end
  end
end

return M
