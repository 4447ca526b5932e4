--- hero.autograd: functions whose forward and backward are written in Lua over tensor ops.
--
--   local Square = hero.autograd.Function {
--     forward = function(ctx, x) ctx.x = x; return x:mul(x) end,
--     backward = function(ctx, g) return g:mul(ctx.x):mul(2) end,
--   }
--   local y = Square(x)
--
-- forward runs with recording off and returns one tensor (an input returned as it is becomes an
-- alias of it, as torch's); backward receives the gradient of that output and returns one
-- gradient (or nil: none, as torch's None) per argument of forward, and no more. A field of ctx
-- holding the output itself is replaced by an alias without the autograd node (same values), so
-- that keeping the output for backward does not keep it alive forever; keep it in ctx's own fields,
-- not in a table inside ctx, where it would.
local core = require "hero.core"

local autograd = {}

function autograd.Function(def)
  if type(def) ~= "table" or type(def.forward) ~= "function" or type(def.backward) ~= "function" then
    error("autograd.Function: expected a table with forward and backward functions", 2)
  end
  local backward = def.backward
  return function(...)
    local ctx = {}
    local args = table.pack(...)
    local res = table.pack(core.no_grad(def.forward, ctx, ...))
    local out = res[1]
    if not core.is_tensor(out) then
      error("autograd.Function: forward must return one tensor, got " .. type(out), 2)
    end
    if res.n > 1 then
      error(string.format("autograd.Function: forward returned %d values; a Function has one output tensor", res.n),
        2)
    end
    -- an input (or any tensor already in a graph) handed back: its alias is this function's output
    if out.requires_grad then out = out:detach() end
    out = core.autograd_apply(backward, ctx, out, table.unpack(args, 1, args.n))
    if out.grad_fn then
      -- ctx.y = y, the natural way to keep an output for backward, would close a cycle the collector
      -- cannot see through (output -> its node, kept in C -> ctx -> output) and keep every such output
      -- and its graph alive. backward gets an alias of the output instead: the same values, without
      -- the node.
      local alias
      for key, value in next, ctx do
        if rawequal(value, out) then
          alias = alias or out:detach()
          rawset(ctx, key, alias)
        end
      end
    end
    return out
  end
end

return autograd
