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

--- Raises "<who>: unknown option '<k>' (<known>)" for a key of opts that is not in `known`: an
-- option hero does not implement is refused rather than silently ignored.
function M.options(who, level, opts, known)
  local ok = {}
  for _, k in ipairs(known) do ok[k] = true end
  for k in pairs(opts) do
    if not ok[k] then
      error(string.format("%s: unknown option '%s' (%s)", who, tostring(k), table.concat(known, ", ")), level + 1)
    end
  end
end

--- Raises "<who>: opts.dtype must be a floating dtype ..." unless dtype is nil or one: parameters
-- are trained, so an integer dtype would fail later inside an initialiser, naming neither.
function M.float_dtype(who, level, dtype)
  if dtype == nil then return end
  local ok, probe = pcall(require("hero.core").empty, {0}, {dtype = dtype})
  local name = ok and probe:dtype() or nil
  if name ~= "f32" and name ~= "f64" and name ~= "bf16" and name ~= "f16" then
    error(string.format("%s: opts.dtype must be a floating dtype (f32, f64, bf16, f16), got %s", who, tostring(dtype)),
      level + 1)
  end
end

return M
