--- hero.amp: mixed-precision training helpers.
--
-- autocast(dtype, fn, ...) runs fn(...) with autocast on: the matrix products (linear, matmul, mm,
-- bmm, mv, dot, addmm, baddbmm, and conv1d and attention on GPUs; on the CPU those two run in f32)
-- cast their f32 inputs to dtype ("bf16" or "f16") and return dtype, while layer_norm (weight and
-- bias included), softmax, log_softmax and the losses (cross_entropy,
-- binary_cross_entropy_with_logits, mse_loss) cast half inputs up to f32 and return f32; mixed
-- elementwise ops promote to f32 as usual. The casts are on the tape, so f32 parameters (the
-- master weights) get f32 gradients. f64 tensors are left alone. Nested calls restore the outer
-- state; autocast(nil, fn) runs fn with autocast off. The state belongs to the calling thread.
--
-- GradScaler implements dynamic loss scaling: the loss is multiplied by a scale (2^16 at first)
-- before backward so that small half-precision gradients do not flush to zero; before the
-- optimizer step the gradients are divided by the scale again and checked: when any is inf or NaN
-- the step is skipped and the scale halved; after `growth_interval` (2000) clean steps in a row the
-- scale doubles. Typical use:
--   local scaler = hero.amp.GradScaler()
--   scaler:scale(loss):backward()
--   scaler:step(optimizer)   -- unscale_, check, optimizer:step() unless a gradient overflowed
--   scaler:update()
--   optimizer:zero_grad()
-- The optimizer is anything with :step() whose parameters are reachable as `entries` (hero.optim)
-- or `params`; a plain list of parameter tensors can be given to unscale_ as well (step() then sees
-- that its optimizer's gradients were unscaled). As torch's, the scale is an f32 value: it is
-- rounded to f32 and does not grow past f32's largest, and f16 gradients (f16 parameters instead
-- of f32 master weights) are refused.
local core = require "hero.core"

local amp = {}

local GradScaler = {}
GradScaler.__index = GradScaler

-- a value as a message shows it: strings quoted, so that "10" is not read as the number 10
local function shown(v) return type(v) == "string" and string.format("%q", v) or tostring(v) end

local function positive(v, what, level)
  if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge then
    error(string.format("GradScaler: %s must be a positive finite number, got %s", what, shown(v)), (level or 2) + 1)
  end
  return v
end

-- x rounded to the nearest f32 (torch keeps the scale in an f32 tensor)
local function to_f32(x) return (string.unpack("f", string.pack("f", x))) end

-- the scale: a positive number that is finite in f32, rounded to f32
local function f32_scale(v, what)
  positive(v, what, 3)
  local r = to_f32(v)
  if r == math.huge or r == 0 then
    error(string.format("GradScaler: %s must be a positive finite f32 number, got %s", what, tostring(v)), 3)
  end
  return r
end

-- an integer of at least lo given as a Lua number (a string "10" is refused, not converted)
local function integer_at_least(v, lo)
  return type(v) == "number" and math.tointeger(v) ~= nil and v >= lo and math.tointeger(v) or nil
end

--- amp.GradScaler{init_scale = 2^16, growth_factor = 2, backoff_factor = 0.5, growth_interval = 2000,
-- enabled = true}
function amp.GradScaler(opts)
  if opts ~= nil and type(opts) ~= "table" then error("GradScaler: opts must be a table, got " .. type(opts), 2) end
  opts = opts or {}
  for k in pairs(opts) do -- a misspelt {init_scal = 128} kept 2^16
    if k ~= "init_scale" and k ~= "growth_factor" and k ~= "backoff_factor" and k ~= "growth_interval"
      and k ~= "enabled" then
      error(string.format("GradScaler: unknown option '%s' (init_scale, growth_factor, backoff_factor, "
        .. "growth_interval, enabled)", tostring(k)), 2)
    end
  end
  if opts.enabled ~= nil and type(opts.enabled) ~= "boolean" then
    error("GradScaler: option enabled must be a boolean, got " .. type(opts.enabled), 2)
  end
  local self = setmetatable({
    scale_value = f32_scale(opts.init_scale or 2.0 ^ 16, "init_scale"),
    growth_factor = positive(opts.growth_factor or 2.0, "growth_factor", 2),
    backoff_factor = positive(opts.backoff_factor or 0.5, "backoff_factor", 2),
    growth_interval = integer_at_least(opts.growth_interval or 2000, 1),
    enabled = opts.enabled ~= false,
    growth_tracker = 0,
    -- per optimizer (or parameter list) since the last update(), as torch's per-optimizer state:
    -- {unscaled = bool, stepped = bool, found_inf = bool, failed = bool (its step raised)}
    per_optimizer = {},
    unscaled_params = setmetatable({}, {__mode = "k"}),
    steps_skipped = 0,
  }, GradScaler)
  if self.growth_factor <= 1 then error("GradScaler: growth_factor must be > 1", 2) end
  if self.backoff_factor >= 1 then error("GradScaler: backoff_factor must be < 1", 2) end
  if not self.growth_interval then
    error("GradScaler: growth_interval must be a positive integer, got " .. shown(opts.growth_interval), 2)
  end
  return self
end

--- loss * scale (a new tensor on the tape); the loss itself when disabled.
function GradScaler:scale(loss)
  if not core.is_tensor(loss) then error("GradScaler:scale: expected the loss tensor, got " .. type(loss), 2) end
  if not self.enabled then return loss end
  return loss:mul(self.scale_value)
end

--- The gradients of an optimizer (entries/params) or of a list of parameter tensors.
local function gradients(target)
  if type(target) ~= "table" and not core.is_tensor(target) then
    error("GradScaler: expected an optimizer or a list of parameters, got " .. type(target), 3)
  end
  local grads, params = {}, {}
  local list = target.entries or target.params or target
  for i, e in ipairs(list) do
    if not core.is_tensor(e) and not (type(e) == "table" and core.is_tensor(e.param)) then
      error(string.format("GradScaler: parameter %d is a %s, not a tensor", i, type(e)), 3)
    end
    local p = core.is_tensor(e) and e or e.param
    if p then params[#params + 1] = p end
    if p and p.grad then
      -- torch refuses these too: an f16 gradient cannot hold the scaled values it would need
      if p.grad:dtype() == "f16" then
        error(string.format("GradScaler: parameter %d has an f16 gradient; loss scaling needs f32 parameters "
          .. "(the master weights; autocast casts them for the products)", i), 3)
      end
      grads[#grads + 1] = p.grad
    end
  end
  return grads, params
end

local function state_of(self, target)
  local st = self.per_optimizer[target]
  if not st then
    st = {unscaled = false, stepped = false, found_inf = false}
    self.per_optimizer[target] = st
  end
  return st
end

--- Divides every gradient of target (an optimizer, or a list of parameters) by the scale in place
-- and records whether any is inf or NaN. Call it before clipping gradients; step() calls it when
-- it was not called. Once per optimizer between two update()s, as torch's.
function GradScaler:unscale_(target)
  if not self.enabled then return end
  local grads, params = gradients(target)
  local st = state_of(self, target)
  if st.stepped then error("GradScaler:unscale_: called after step() for this optimizer", 2) end
  -- once per parameter: a second call (the same optimizer, or a list naming the same tensors)
  -- would divide the gradients twice
  for _, p in ipairs(params) do
    if st.unscaled or self.unscaled_params[p] then
      error("GradScaler:unscale_: already called for these parameters since the last update()", 2)
    end
  end
  for _, p in ipairs(params) do self.unscaled_params[p] = true end
  local inv = 1.0 / self.scale_value
  core.no_grad(function()
    for _, g in ipairs(grads) do g:mul_(inv) end
  end)
  st.found_inf = not core.all_finite(grads)
  st.unscaled = true
end

--- Unscales the optimizer's gradients (if needed) and steps it unless one of them overflowed.
-- Returns true when the optimizer stepped. Once per optimizer between two update()s.
function GradScaler:step(optimizer, ...)
  if type(optimizer) ~= "table" or type(optimizer.step) ~= "function" then
    error("GradScaler:step: expected an optimizer (with a step method), got " .. type(optimizer), 2)
  end
  if not self.enabled then
    optimizer:step(...)
    return true
  end
  local st = state_of(self, optimizer)
  if st.stepped then error("GradScaler:step: already called for this optimizer since the last update()", 2) end
  if not st.unscaled then
    -- its parameters may have been unscaled as a list (unscale_ {params...}): then only check them
    local grads, params = gradients(optimizer)
    local done = 0
    for _, p in ipairs(params) do if self.unscaled_params[p] then done = done + 1 end end
    if done == 0 then
      self:unscale_(optimizer)
    elseif done == #params then
      st.found_inf = not core.all_finite(grads)
      st.unscaled = true
    else
      error(string.format("GradScaler:step: %d of this optimizer's %d parameters were unscaled by unscale_ "
        .. "on a list since the last update(), the others not; unscale all of them or none", done, #params), 2)
    end
  end
  if st.found_inf then
    st.stepped = true
    self.steps_skipped = self.steps_skipped + 1
    return false
  end
  -- stepped once the step has run: an optimizer that raised (a bad option) has not stepped, it
  -- can be stepped again, and update() does not count its update (neither clean nor overflowed)
  local ok, err = pcall(optimizer.step, optimizer, ...)
  if not ok then
    st.failed = true
    error(err, 0)
  end
  st.failed = false
  st.stepped = true
  return true
end

--- Adjusts the scale after the steps: halves it when any optimizer's gradients overflowed, doubles
-- it after growth_interval clean updates in a row. new_scale (optional) sets it directly, the count
-- of clean updates kept (torch's). Without new_scale, some step() or unscale_() must have run since
-- the last update().
function GradScaler:update(new_scale)
  if not self.enabled then return end
  if new_scale then
    self.scale_value = f32_scale(new_scale, "new_scale")
  else
    if next(self.per_optimizer) == nil then
      error("GradScaler:update: no inf checks were recorded (call step() or unscale_() first)", 2)
    end
    local found_inf, counted = false, false
    for _, st in pairs(self.per_optimizer) do
      if not st.failed then
        counted = true
        found_inf = found_inf or st.found_inf
      end
    end
    if not counted then -- luacheck: ignore 542
      -- only steps whose optimizer raised: they tell nothing about the scale
    elseif found_inf then
      -- f32 arithmetic, as torch's (its factors are f32 too); never 0, which would unscale by 1/0
      self.scale_value = math.max(to_f32(self.scale_value * to_f32(self.backoff_factor)), 0x1p-149)
      self.growth_tracker = 0
    else
      self.growth_tracker = self.growth_tracker + 1
      if self.growth_tracker >= self.growth_interval then
        -- as torch's: a scale that would not be finite in f32 stays where it is
        local grown = to_f32(self.scale_value * to_f32(self.growth_factor))
        if grown < math.huge then self.scale_value = grown end
        self.growth_tracker = 0
      end
    end
  end
  self.per_optimizer = {}
  self.unscaled_params = setmetatable({}, {__mode = "k"})
end

--- Whether a gradient overflowed in this update's unscale_/step calls (any optimizer).
function GradScaler:found_inf()
  for _, st in pairs(self.per_optimizer) do if st.found_inf then return true end end
  return false
end

function GradScaler:get_scale() return self.enabled and self.scale_value or 1.0 end

--- What the REPL shows: the scale and the rules that move it.
function GradScaler:__tostring()
  if not self.enabled then return "GradScaler(disabled)" end
  return string.format("GradScaler(scale=%.9g, growth_factor=%g, backoff_factor=%g, growth_interval=%d, "
    .. "clean steps=%d, skipped=%d)", self.scale_value, self.growth_factor, self.backoff_factor, self.growth_interval,
    self.growth_tracker, self.steps_skipped)
end
function GradScaler:is_enabled() return self.enabled end

function GradScaler:state_dict()
  -- torch's keys, so that states move between the two; a disabled scaler's is empty, as torch's
  if not self.enabled then return {} end
  return {scale = self.scale_value, growth_factor = self.growth_factor, backoff_factor = self.backoff_factor,
          growth_interval = self.growth_interval, _growth_tracker = self.growth_tracker}
end

--- Loads a state_dict (torch's keys), checked as the constructor checks its options; nothing
-- changes when a value is refused.
function GradScaler:load_state_dict(sd)
  if type(sd) ~= "table" then error("GradScaler:load_state_dict: expected a state table, got " .. type(sd), 2) end
  if not self.enabled then return end -- as torch's: a disabled scaler keeps no state
  if next(sd) == nil then
    error("GradScaler:load_state_dict: the state is empty (saved from a disabled GradScaler?)", 2)
  end
  local scale = f32_scale(sd.scale, "scale")
  local growth = positive(sd.growth_factor or self.growth_factor, "growth_factor", 2)
  local backoff = positive(sd.backoff_factor or self.backoff_factor, "backoff_factor", 2)
  if growth <= 1 then error("GradScaler:load_state_dict: growth_factor must be > 1, got " .. growth, 2) end
  if backoff >= 1 then error("GradScaler:load_state_dict: backoff_factor must be < 1, got " .. backoff, 2) end
  local interval = sd.growth_interval == nil and self.growth_interval or integer_at_least(sd.growth_interval, 1)
  if not interval then
    error("GradScaler:load_state_dict: growth_interval must be a positive integer, got "
      .. shown(sd.growth_interval), 2)
  end
  local tracker = sd._growth_tracker or sd.growth_tracker or 0
  if not integer_at_least(tracker, 0) then
    error("GradScaler:load_state_dict: the growth tracker must be an integer >= 0, got " .. shown(tracker), 2)
  end
  self.scale_value, self.growth_factor, self.backoff_factor = scale, growth, backoff
  self.growth_interval, self.growth_tracker = interval, math.tointeger(tracker)
end

--- Runs fn(...) under autocast with dtype ("bf16", "f16", or nil: off); returns fn's results. The
-- previous state comes back afterwards, also when fn raises an error.
function amp.autocast(dtype, fn, ...)
  if dtype ~= nil and dtype ~= "bf16" and dtype ~= "f16" then
    error(string.format("hero.amp.autocast: dtype must be 'bf16', 'f16' or nil (off), got %s", tostring(dtype)), 2)
  end
  if type(fn) ~= "function" then error("hero.amp.autocast: expected a function to run", 2) end
  local prev = core._autocast(dtype)
  local res = table.pack(pcall(fn, ...))
  core._autocast(prev)
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

--- The dtype autocast casts to in this thread, or nil when it is off.
function amp.autocast_dtype() return core._autocast_state() end

require("hero.colon").guard(GradScaler, "GradScaler", {"scale", "unscale_", "step", "update", "found_inf",
  "get_scale", "is_enabled", "state_dict", "load_state_dict"})

return amp
