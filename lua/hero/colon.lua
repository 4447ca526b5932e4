--- hero.colon: guards methods against a call with "." instead of ":" (`scaler.step(opt)`,
-- `loader.next()`), a habit from Python: the first argument became self, and the method failed
-- deep inside hero ("attempt to index a nil value") or, worse, did nothing without a word.
local M = {}

--- Wraps class[name] for each name so that a call whose self is not an instance (is_instance(self),
-- by default getmetatable(self) == class) is an error naming the method and the fix. The wrapped
-- method is tail-called, so errors it raises at level 2 still name the caller's line.
function M.guard(class, class_name, names, is_instance)
  is_instance = is_instance or function(self) return getmetatable(self) == class end
  for _, name in ipairs(names) do
    local f = class[name]
    if type(f) ~= "function" then error("colon.guard: " .. class_name .. " has no method " .. name, 2) end
    class[name] = function(self, ...)
      if not is_instance(self) then
        error(string.format("%s.%s: called with '.' or on something else (%s); write obj:%s(...)", class_name, name,
          self == nil and "no self" or type(self), name), 2)
      end
      return f(self, ...)
    end
  end
end

return M
