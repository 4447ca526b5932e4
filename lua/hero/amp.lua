--- hero.amp: mixed-precision training helpers.
--
-- autocast(dtype, fn, ...) runs fn(...) with autocast on: the matrix products (linear, matmul, mm,
-- bmm, addmm, baddbmm, conv1d, and attention on GPUs) cast their f32 inputs to dtype ("bf16" or
-- "f16") and return dtype, while layer_norm, softmax, log_softmax and the losses (cross_entropy,
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
-- or `params`; a plain list of parameter tensors can be given to unscale_ as well.
local core = require "hero.core"

local amp = {}

local GradScaler = {}
GradScaler.__index = GradScaler

local function positive(v, what)
  if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge then
    error(string.format("GradScaler: %s must be a positive finite number, got %s", what, tostring(v)), 3)
  end
  return v
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
    scale_value = positive(opts.init_scale or 2.0 ^ 16, "init_scale"),
    growth_factor = positive(opts.growth_factor or 2.0, "growth_factor"),
    backoff_factor = positive(opts.backoff_factor or 0.5, "backoff_factor"),
    growth_interval = math.tointeger(opts.growth_interval or 2000),
    enabled = opts.enabled ~= false,
    growth_tracker = 0,
    -- per optimizer (or parameter list) since the last update(), as torch's per-optimizer state:
    -- {unscaled = bool, stepped = bool, found_inf = bool}
    per_optimizer = {},
    unscaled_params = setmetatable({}, {__mode = "k"}),
    steps_skipped = 0,
  }, GradScaler)
  if self.growth_factor <= 1 then error("GradScaler: growth_factor must be > 1", 2) end
  if self.backoff_factor >= 1 then error("GradScaler: backoff_factor must be < 1", 2) end
  if not self.growth_interval or self.growth_interval < 1 then
    error("GradScaler: growth_interval must be a positive integer", 2)
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
    if p and p.grad then grads[#grads + 1] = p.grad end
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
  if not st.unscaled then self:unscale_(optimizer) end
  if st.found_inf then
    st.stepped = true
    self.steps_skipped = self.steps_skipped + 1
    return false
  end
  -- stepped once the step has run: an optimizer that raised (a bad option) has not stepped, and
  -- update() must not count its update as a clean one
  optimizer:step(...)
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
    self.scale_value = positive(new_scale, "new_scale")
  else
    if next(self.per_optimizer) == nil then
      error("GradScaler:update: no inf checks were recorded (call step() or unscale_() first)", 2)
    end
    local found_inf = false
    for _, st in pairs(self.per_optimizer) do found_inf = found_inf or st.found_inf end
    if found_inf then
      self.scale_value = self.scale_value * self.backoff_factor
      self.growth_tracker = 0
    else
      self.growth_tracker = self.growth_tracker + 1
      if self.growth_tracker >= self.growth_interval then
        self.scale_value = self.scale_value * self.growth_factor
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
function GradScaler:is_enabled() return self.enabled end

function GradScaler:state_dict()
  -- torch's keys, so that states move between the two
  return {scale = self.scale_value, growth_factor = self.growth_factor, backoff_factor = self.backoff_factor,
          growth_interval = self.growth_interval, _growth_tracker = self.growth_tracker}
end

--- Loads a state_dict (torch's keys), checked as the constructor checks its options; nothing
-- changes when a value is refused.
function GradScaler:load_state_dict(sd)
  if type(sd) ~= "table" then error("GradScaler:load_state_dict: expected a state table, got " .. type(sd), 2) end
  local scale = positive(sd.scale, "scale")
  local growth = positive(sd.growth_factor or self.growth_factor, "growth_factor")
  local backoff = positive(sd.backoff_factor or self.backoff_factor, "backoff_factor")
  if growth <= 1 then error("GradScaler:load_state_dict: growth_factor must be > 1, got " .. growth, 2) end
  if backoff >= 1 then error("GradScaler:load_state_dict: backoff_factor must be < 1, got " .. backoff, 2) end
  local interval = sd.growth_interval == nil and self.growth_interval or math.tointeger(sd.growth_interval)
  if not interval or interval < 1 then
    error("GradScaler:load_state_dict: growth_interval must be a positive integer, got "
      .. tostring(sd.growth_interval), 2)
  end
  local tracker = sd._growth_tracker or sd.growth_tracker or 0
  if not math.tointeger(tracker) or tracker < 0 then
    error("GradScaler:load_state_dict: the growth tracker must be an integer >= 0, got " .. tostring(tracker), 2)
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

return amp
