--- hero.testing: finite-difference gradient checks, and a digest of a batch.
local core = require "hero.core"

local testing = {}

local function flat_values(t)
  local out = {}
  local function walk(v)
    if type(v) == "table" then
      for i = 1, #v do walk(v[i]) end
    else
      out[#out + 1] = v
    end
  end
  walk(t:totable())
  return out
end

-- A fixed pseudo-random cotangent (a simple LCG; the check must not depend on the library's RNG).
local function cotangent_like(t, seed)
  local n = t:numel()
  local state = seed
  local vals = {}
  for i = 1, n do
    state = (state * 1103515245 + 12345) % 2147483648
    vals[i] = (state / 2147483648) * 2 - 1
  end
  local c = core.tensor(vals, {dtype = "f64"})
  return c:view(t:size())
end

local function dot(a_vals, b_vals)
  local s = 0
  for i = 1, #a_vals do s = s + a_vals[i] * b_vals[i] end
  return s
end

--- Checks the gradients of fn at `inputs` (an array of f64 tensors; those with requires_grad are
-- checked) against central finite differences of <v, fn(inputs)> for a fixed random cotangent v.
-- opts: eps (1e-6), atol (1e-5), rtol (1e-3). Also checks that two backward passes agree exactly
-- (determinism). Returns true or raises an error naming the input and element that differ.
local gradcheck_passes -- below: the analytic and numeric passes

function testing.gradcheck(fn, inputs, opts)
  if type(fn) ~= "function" and not (getmetatable(fn) or {}).__call then
    error("gradcheck: argument #1 must be a function of the inputs, got " .. type(fn), 2)
  end
  if type(inputs) ~= "table" then error("gradcheck: argument #2 must be a list of inputs, got " .. type(inputs), 2) end
  -- eps 0 or NaN made every numeric derivative NaN, which no comparison fails: any gradient passed
  opts = require("hero.models.options").check("gradcheck", opts, {eps = "number > 0", atol = "number >= 0",
    rtol = "number >= 0"}, 2)
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
  for i, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad and x:dtype() ~= "f64" then
      error(string.format("gradcheck: input %d is %s; use f64 inputs", i, x:dtype()), 2)
    end
  end
  local needs = false
  for _, x in ipairs(inputs) do needs = needs or (core.is_tensor(x) and x.requires_grad) end
  if not needs then error("gradcheck: no input requires grad (nothing to check)", 2) end
  local out = fn(table.unpack(inputs))
  if not core.is_tensor(out) then error("gradcheck: fn must return a tensor, got " .. type(out), 2) end
  local v = cotangent_like(out, 12345)
  local v_vals = flat_values(v)
  local function objective()
    return core.no_grad(function() return dot(flat_values(fn(table.unpack(inputs))), v_vals) end)
  end
  -- the inputs' own gradients are put back afterwards (torch's gradcheck leaves .grad alone)
  local saved = {}
  for i, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad then saved[i] = x.grad end
  end
  local ok, err = pcall(gradcheck_passes, fn, inputs, v, objective, eps, atol, rtol)
  for i, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad then x.grad = saved[i] end
  end
  if not ok then error(err, 2) end
  return true
end

-- The 0-dim view of element k (1-based, row-major) of t, whatever its strides.
local function element(t, k)
  local size = t:size()
  local e, rest = t, k - 1
  local stride = {}
  local acc = 1
  for d = #size, 1, -1 do
    stride[d] = acc
    acc = acc * size[d]
  end
  for d = 1, #size do
    local i = rest // stride[d]
    rest = rest % stride[d]
    e = e:select(1, i + 1)
  end
  return e
end

function gradcheck_passes(fn, inputs, v, objective, eps, atol, rtol)
  -- analytic, twice
  local analytic = {}
  for pass = 1, 2 do
    for _, x in ipairs(inputs) do
      if core.is_tensor(x) and x.requires_grad then x.grad = nil end
    end
    fn(table.unpack(inputs)):backward(v)
    for i, x in ipairs(inputs) do
      if core.is_tensor(x) and x.requires_grad then
        -- no gradient is a zero one, as torch's gradcheck takes it: the numeric derivative then
        -- says whether the function really ignores this input
        local g
        if x.grad then
          g = flat_values(x.grad)
        else
          g = {}
          for k = 1, x:numel() do g[k] = 0 end
        end
        if pass == 1 then
          analytic[i] = g
        else
          for k = 1, #g do
            -- NaN on both passes is no agreement either
            if g[k] ~= analytic[i][k] or g[k] ~= g[k] then
              error(string.format("gradcheck: input %d element %d: %s (%.17g vs %.17g)", i, k,
                g[k] ~= g[k] and "the gradient is NaN" or "backward is not deterministic", analytic[i][k], g[k]), 0)
            end
          end
        end
      end
    end
  end
  -- numeric
  for i, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad then
      local d = x:detach()
      for k = 1, d:numel() do
        local cell = element(d, k) -- a view: writes reach x, whatever its strides
        local orig = cell:item()
        core.no_grad(function() cell:fill_(orig + eps) end)
        local plus = objective()
        core.no_grad(function() cell:fill_(orig - eps) end)
        local minus = objective()
        core.no_grad(function() cell:fill_(orig) end)
        local numeric = (plus - minus) / (2 * eps)
        local a = analytic[i][k]
        -- written so that a NaN on either side fails
        local err = math.abs(a - numeric)
        if err ~= err or err > atol + rtol * math.abs(numeric) then
          error(string.format("gradcheck: input %d element %d: analytic %.10g, numeric %.10g", i, k, a, numeric), 0)
        end
      end
    end
  end
end

--- A text that pins a batch's content: one line per key, in key order, a tensor's dtype, shape and
-- the CRC-32 of its .npy image (which covers the header and every byte of the data), any other value
-- as JSON. Two batches with the same digest hold the same bits.
function testing.batch_digest(batch)
  if type(batch) ~= "table" then error("batch_digest: expected a table of batch fields, got " .. type(batch), 2) end
  local json = require "hero.json"
  local keys = {}
  for k in pairs(batch) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local lines = {}
  for _, k in ipairs(keys) do
    local v = batch[k]
    if core.is_tensor(v) then
      local bytes = require("hero.io").npz_to_bytes({x = v})
      lines[#lines + 1] = string.format("%s %s %s %08x", tostring(k), v:dtype(), table.concat(v:size(), "x"),
        string.unpack("<I4", bytes, 15)) -- the member's CRC-32 in its local header
    else
      lines[#lines + 1] = tostring(k) .. " " .. json.encode(v)
    end
  end
  return table.concat(lines, "\n")
end

return testing
