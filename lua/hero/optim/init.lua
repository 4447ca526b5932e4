--- hero.optim: AdamW exactly as the HERO reference (HuggingFace AdamW with bias correction), and
-- torch's Adam and Adamax (the reference's other optim choices), the warmup-linear schedule and
-- global-norm gradient clipping. The arithmetic runs in C, over all
-- parameters in one fused pass.
local core = require "hero.core"

local optim = {}

--- Normalises parameters to an ordered array of {name = string, param = tensor}. Accepts the array
-- of {name, tensor} pairs that Module:named_parameters() returns, or a table name -> tensor (then
-- sorted by name so the order is reproducible).
local function ordered_params(params, who)
  local list = {}
  if #params > 0 then
    for i, pair in ipairs(params) do
      if core.is_tensor(pair) then
        -- a plain list of tensors (model:parameters(), as torch.optim takes): named by position
        list[#list + 1] = {name = tostring(i - 1), param = pair}
      else
        local name, t = type(pair) == "table" and pair[1], type(pair) == "table" and pair[2]
        if type(name) ~= "string" or not core.is_tensor(t) then
          error(string.format("%s: parameter entry %d must be a tensor or {name, tensor}", who, i), 4)
        end
        list[#list + 1] = {name = name, param = t}
      end
    end
    -- a name is a parameter's key in the state: two under one name would share their moments
    local seen = {}
    for i, e in ipairs(list) do
      if seen[e.name] then
        error(string.format("%s: parameter entries %d and %d are both named '%s'", who, seen[e.name], i, e.name), 4)
      end
      seen[e.name] = i
    end
  else
    local names = {}
    for name, t in pairs(params) do
      if not core.is_tensor(t) then
        error(string.format("%s: parameter '%s' is not a tensor", who, tostring(name)), 4)
      end
      names[#names + 1] = name
    end
    table.sort(names)
    for _, name in ipairs(names) do list[#list + 1] = {name = name, param = params[name]} end
  end
  -- one tensor listed twice would be updated twice a step; a computed tensor never gets a .grad
  local where = {}
  for _, e in ipairs(list) do
    if where[e.param] then
      error(string.format("%s: parameters '%s' and '%s' are the same tensor (it would be updated twice a step)",
        who, where[e.param], e.name), 4)
    end
    where[e.param] = e.name
    if e.param.grad_fn ~= nil then
      error(string.format("%s: parameter '%s' is not a leaf tensor (it was computed by an op, so it never gets "
        .. "a gradient)", who, e.name), 4)
    end
  end
  return list
end

-- a value as messages show it: a string quoted, so that "0.01" does not read as the number
local function shown(v) return type(v) == "string" and string.format("%q", v) or tostring(v) end

local function contains_any(name, substrings)
  for _, s in ipairs(substrings) do
    if name:find(s, 1, true) then return true end
  end
  return false
end

-- The three optimizers of the reference's build_optimizer (optim/misc.py: optim = "adamw", "adam",
-- "adamax") share everything but their update rule (hr_optim.h), their defaults and the name of
-- their second moment in state_dict (torch's: exp_avg_sq, or exp_inf for Adamax).
local KINDS = {
  AdamW = {rule = "adamw", eps = 1e-6, second = "exp_avg_sq"}, -- the reference's own AdamW (optim/adamw.py)
  Adam = {rule = "adam", eps = 1e-8, second = "exp_avg_sq"},   -- torch.optim.Adam
  Adamax = {rule = "adamax", eps = 1e-8, second = "exp_inf"},  -- torch.optim.Adamax
}

local Adam = {}
Adam.__index = Adam

local function new_optimizer(kind, params, opts)
  local name = kind
  local spec = KINDS[kind]
  opts = opts or {}
  if type(params) ~= "table" then
    error(name .. ": params must be named_parameters() or a name -> tensor table, got " .. type(params), 3)
  end
  if type(opts) ~= "table" then
    error(string.format("%s: opts must be a table such as {lr = 1e-4}, got %s", name, type(opts)), 3)
  end
  for k in pairs(opts) do
    local known = {lr = true, betas = true, eps = true, weight_decay = true, no_decay = true, lr_mul = true,
                   group = true}
    if not known[k] then
      error(string.format("%s: unknown option '%s' (lr, betas, eps, weight_decay, no_decay, lr_mul, group; "
        .. "amsgrad, maximize and the like are not implemented)", name, tostring(k)), 3)
    end
  end
  if type(opts.lr) ~= "number" then error(name .. ": opts.lr must be a number, got " .. shown(opts.lr), 3) end
  local betas = opts.betas or {0.9, 0.999}
  if type(betas) ~= "table" or type(betas[1]) ~= "number" or type(betas[2]) ~= "number" then
    error(name .. ": opts.betas must be a pair of numbers {beta1, beta2}", 3)
  end
  local no_decay = opts.no_decay or {}
  if type(no_decay) ~= "table" then
    error(string.format("%s: opts.no_decay must be a list of name substrings such as {\"bias\", \"LayerNorm\"}, got %s",
      name, type(no_decay)), 3)
  end
  for i, s in ipairs(no_decay) do
    if type(s) ~= "string" then
      error(string.format("%s: opts.no_decay[%d] must be a string, got %s", name, i, type(s)), 3)
    end
  end
  if opts.group ~= nil and type(opts.group) ~= "function" then
    error(string.format("%s: opts.group must be a function of a parameter's name, got %s", name, type(opts.group)), 3)
  end
  -- as torch.optim: a negative (or NaN) rate, eps or decay is refused; an infinite one too (as
  -- set_lr refuses it), since it turns every weight it touches into inf or NaN
  for _, key in ipairs {"lr", "eps", "weight_decay"} do
    local v = opts[key]
    if v ~= nil and (type(v) ~= "number" or not (v >= 0 and v < math.huge)) then
      error(string.format("%s: opts.%s must be a finite number >= 0, got %s", name, key, shown(v)), 3)
    end
  end
  local entries = ordered_params(params, name)
  local self = setmetatable({
    kind = kind, rule = spec.rule, second = spec.second,
    lr = opts.lr,
    beta1 = betas[1], beta2 = betas[2],
    eps = opts.eps or spec.eps,
    weight_decay = opts.weight_decay or 0,
    no_decay = opts.no_decay or {},
    lr_mul = opts.lr_mul or {},
    entries = entries,
    state = {},
    fused_grad_scale = true, -- step{grad_scale =} (hero.train.Trainer folds clipping into the step)
  }, Adam)
  if type(self.lr_mul) ~= "table" then
    error(string.format("%s: opts.lr_mul must be a table {[group] = multiplier} (opts.group names the groups), "
      .. "got %s", name, type(self.lr_mul)), 3)
  end
  for k, v in pairs(self.lr_mul) do
    if type(v) ~= "number" or not (v >= 0 and v < math.huge) then -- as the rate itself: no ascent, no NaN
      error(string.format("%s: opts.lr_mul[%s] must be a finite number >= 0, got %s", name, tostring(k), shown(v)), 3)
    end
  end
  -- written so that NaN fails too
  if not (self.beta1 >= 0 and self.beta1 < 1 and self.beta2 >= 0 and self.beta2 < 1) then
    error(string.format("%s: betas must be in [0, 1), got {%g, %g}", name, self.beta1, self.beta2), 3)
  end
  for _, e in ipairs(self.entries) do
    e.decay = not contains_any(e.name, self.no_decay)
    e.group = opts.group and opts.group(e.name) or (e.decay and "decay" or "no_decay")
  end
  -- without opts.group the groups are "decay" and "no_decay": a multiplier for another key (lr_mul
  -- given without its group function) would be ignored without a word. (With opts.group a group
  -- may be empty, as the reference's param groups may.)
  if not opts.group then
    for k in pairs(self.lr_mul) do
      if k ~= "decay" and k ~= "no_decay" then
        error(string.format("%s: opts.lr_mul names the group '%s', but without opts.group the groups are 'decay' "
          .. "and 'no_decay'", name, tostring(k)), 3)
      end
    end
  end
  return self
end

-- optim.<kind>(params, opts): a constructor (not a tail call, so that errors name its caller).
local function constructor(kind)
  return function(params, opts)
    local o = new_optimizer(kind, params, opts)
    return o
  end
end

--- optim.AdamW(params, opts): the reference's AdamW (HuggingFace's, bias-corrected step size,
-- decoupled weight decay).
-- opts: lr (required), betas = {0.9, 0.999}, eps = 1e-6, weight_decay = 0, no_decay = list of name
-- substrings that get weight_decay 0, group = function(name) -> group key (parameters with the same
-- key share lr multipliers; default: one group per decay/no-decay), lr_mul = {[key] = multiplier}.
optim.AdamW = constructor("AdamW")

--- optim.Adam(params, opts): torch.optim.Adam (weight decay added to the gradient, L2), the
-- reference's optim = "adam". The same opts as AdamW; eps defaults to 1e-8.
optim.Adam = constructor("Adam")

--- optim.Adamax(params, opts): torch.optim.Adamax (the infinity norm of the gradients instead of
-- the second moment; weight decay added to the gradient), the reference's optim = "adamax". The
-- same opts as AdamW; eps defaults to 1e-8.
optim.Adamax = constructor("Adamax")

--- The optimizer class the reference's config key `optim` names ("adamw", "adam", "adamax"), or nil.
function optim.by_config_name(name)
  return ({adamw = optim.AdamW, adam = optim.Adam, adamax = optim.Adamax})[name]
end

--- What the REPL shows: the class, its settings and how many parameters it updates (and have state).
function Adam:__tostring()
  local stepped = 0
  for _ in pairs(self.state) do stepped = stepped + 1 end
  local muls = {}
  for k, v in pairs(self.lr_mul) do muls[#muls + 1] = string.format("%s=%g", tostring(k), v) end
  table.sort(muls)
  return string.format("%s(lr=%g, betas=(%g, %g), eps=%g, weight_decay=%g%s; %d parameters, %d with state)", self.kind,
    self.lr, self.beta1, self.beta2, self.eps, self.weight_decay,
    #muls > 0 and (", lr_mul={" .. table.concat(muls, ", ") .. "}") or "", #self.entries, stepped)
end

--- Sets the base learning rate (before the per-group multipliers): a number >= 0, as the
-- constructor takes (a negative rate would ascend, NaN would spread to every weight).
function Adam:set_lr(lr)
  if type(lr) ~= "number" or not (lr >= 0 and lr < math.huge) then
    error(string.format("%s:set_lr: the rate must be a finite number >= 0, got %s", self.kind, shown(lr)), 2)
  end
  self.lr = lr
end

--- One update of every parameter with a gradient (parameters whose .grad is nil are skipped, as
-- in the reference). opts.grad_scale (clip_grad_norm's factor with {apply = false}) scales the
-- gradients inside the same pass, exactly as scaling them in place first would, without touching
-- them (a gradient whose dtype differs from its parameter's is scaled in place first).
function Adam:step(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(string.format("%s:step: the argument must be an options table such as {grad_scale = s}, got %s", self.kind,
      type(opts)), 2)
  end
  for k in pairs(opts or {}) do
    if k ~= "grad_scale" then
      error(string.format("%s:step: unknown option '%s' (grad_scale)", self.kind, tostring(k)), 2)
    end
  end
  local grad_scale = opts and opts.grad_scale or 1
  -- clip_grad_norm's factors lie in [0, 1]; a negative or infinite one would ascend or give NaN
  if type(grad_scale) ~= "number" or not (grad_scale >= 0 and grad_scale < math.huge) then
    error(self.kind .. ":step: opts.grad_scale must be a finite number >= 0, got " .. tostring(grad_scale), 2)
  end
  local items = {}
  for _, e in ipairs(self.entries) do
    local p = e.param
    if p:is_freed() then error(string.format("%s:step: parameter '%s' was freed", self.kind, e.name), 2) end
    local g = p.grad
    if g then
      local st = self.state[e.name]
      if not st then
        local where = {dtype = p:dtype(), device = p:device()} -- the state lives with its parameter
        st = {step = 0, exp_avg = core.zeros(p:size(), where), exp_avg_sq = core.zeros(p:size(), where)}
        self.state[e.name] = st
      end
      st.step = st.step + 1
      local lr = self.lr * (self.lr_mul[e.group] or 1)
      local bc1 = 1 - self.beta1 ^ st.step
      local bc2 = 1 - self.beta2 ^ st.step
      local gs = grad_scale
      if gs ~= 1 and g:dtype() ~= p:dtype() then
        -- the fused scaling needs the parameter's dtype: scale this gradient in place instead
        core.scale_all_({g}, gs)
        gs = 1
      end
      local wd = e.decay and self.weight_decay or 0
      local item = {param = p, grad = g:contiguous(), exp_avg = st.exp_avg, exp_avg_sq = st.exp_avg_sq,
                    grad_scale = gs, rule = self.rule}
      if self.rule == "adamw" then
        item.step_size, item.decay = lr * math.sqrt(bc2) / bc1, lr * wd
      else -- torch: step_size = lr / bias_correction1; the decay goes into the gradient
        item.step_size, item.decay = lr / bc1, wd
        item.bias2_sqrt = math.sqrt(bc2)
      end
      items[#items + 1] = item
    end
  end
  core.adamw_step(items, self.beta1, self.beta2, self.eps)
end

--- Zeroes every gradient in place (they stay allocated, so parameters that had one keep being
-- updated, as the reference's zero_grad does).
function Adam:zero_grad()
  for _, e in ipairs(self.entries) do
    local g = e.param.grad
    if g then core.no_grad(function() g:zero_() end) end
  end
end

--- Optimizer state as a nested table of tensors and numbers (for hero.save); the second moment is
-- named as torch names it (exp_avg_sq, or exp_inf for Adamax). A snapshot: the moments are copies,
-- so a state taken before a step still holds that moment's moments with its step count (the live
-- tensors with a copied count resumed with the wrong bias correction).
function Adam:state_dict()
  local state = {}
  for name, st in pairs(self.state) do
    state[name] = {step = st.step, exp_avg = st.exp_avg:clone(), [self.second] = st.exp_avg_sq:clone()}
  end
  return {lr = self.lr, betas = {self.beta1, self.beta2}, eps = self.eps, weight_decay = self.weight_decay,
          state = state}
end

--- Restores what state_dict returned (copies, so the saved tensors can be freed afterwards): the
-- moments and steps of every parameter it names, and the learning rate, betas, eps and weight decay
-- (as torch's load_state_dict restores its groups' settings). Everything is checked before anything
-- changes: a state that does not fit leaves the optimizer as it was.
function Adam:load_state_dict(sd)
  local kind = self.kind
  if type(sd) ~= "table" then
    error(string.format("%s:load_state_dict: expected the table state_dict() returned, got %s", kind, type(sd)), 2)
  end
  if sd.state ~= nil and type(sd.state) ~= "table" then
    error(string.format("%s:load_state_dict: sd.state must be a table, got %s", kind, type(sd.state)), 2)
  end
  local known = {}
  for _, e in ipairs(self.entries) do known[e.name] = e.param end
  local state = {}
  for key, st in pairs(sd.state or {}) do
    -- torch's layout keys a plain list's parameters by their 0-based position, hero's by its string
    local name = math.type(key) == "integer" and tostring(key) or key
    local p = known[name]
    if not p then error(string.format("%s:load_state_dict: state for unknown parameter '%s'", kind, name), 2) end
    local step = type(st) == "table" and st.step
    if type(step) ~= "number" or step ~= math.floor(step) or step < 0 or step > 2 ^ 53 then
      error(string.format("%s:load_state_dict: the state of '%s' lacks its step count (an integer >= 0, got %s)", kind,
        name, tostring(step)), 2)
    end
    local function copy(t, what)
      if not core.is_tensor(t) then
        error(string.format("%s:load_state_dict: %s of '%s' is missing (is this another optimizer's state?)", kind,
          what, name), 3)
      end
      if table.concat(t:size(), "x") ~= table.concat(p:size(), "x") then
        error(string.format("%s:load_state_dict: %s of '%s' has size %s, the parameter has %s", kind, what, name,
          table.concat(t:size(), "x"), table.concat(p:size(), "x")), 3)
      end
      return t:to{dtype = p:dtype(), device = p:device()}:clone()
    end
    state[name] = {step = math.tointeger(st.step) or st.step, exp_avg = copy(st.exp_avg, "exp_avg"),
                   exp_avg_sq = copy(st[self.second], self.second)}
  end
  local function number(key, v)
    if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
      error(string.format("%s:load_state_dict: sd.%s must be a number >= 0, got %s", kind, key, tostring(v)), 3)
    end
    return v
  end
  local lr, eps, wd = number("lr", sd.lr), number("eps", sd.eps), number("weight_decay", sd.weight_decay)
  local betas = sd.betas
  if betas ~= nil and (type(betas) ~= "table" or type(betas[1]) ~= "number" or type(betas[2]) ~= "number"
      or not (betas[1] >= 0 and betas[1] < 1 and betas[2] >= 0 and betas[2] < 1)) then
    error(string.format("%s:load_state_dict: sd.betas must be two numbers in [0, 1)", kind), 2)
  end
  self.state = state
  if lr then self.lr = lr end
  if eps then self.eps = eps end
  if wd then self.weight_decay = wd end
  if betas then self.beta1, self.beta2 = betas[1], betas[2] end
end

--- Learning rate of the reference's warmup_linear schedule at update `step` (counted from 1).
function optim.warmup_linear(base_lr, step, warmup, total)
  local args = {base_lr, step, warmup, total}
  for i = 1, 4 do
    local v = args[i]
    if type(v) ~= "number" then
      error(string.format("warmup_linear: argument #%d (%s) must be a number, got %s", i,
        ({"base_lr", "step", "warmup", "total"})[i], type(v)), 2)
    end
  end
  if step >= warmup and total == warmup then
    error(string.format("warmup_linear: the decay from update %d to %d has no length (total = warmup)", warmup,
      total), 2)
  end
  local factor
  if step < warmup then
    factor = step / warmup
  else
    factor = math.max(0, (total - step) / (total - warmup))
  end
  local lr = base_lr * factor
  if lr <= 0 then lr = 1e-8 end
  return lr
end

--- Clips the global norm of the gradients of `params` (a list of tensors, a named_parameters()
-- array or a name -> tensor table) to max_norm, with the reference's scale = max_norm / (norm +
-- 1e-6) applied only when below 1. Returns the norm before clipping and the factor (1 when nothing
-- was clipped). opts (or a number, torch's positional norm_type): norm_type 2 (default) or
-- math.huge (the largest absolute value); apply == false leaves the gradients as they are, for
-- AdamW:step{grad_scale = factor} to apply the factor in its own pass.
function optim.clip_grad_norm(params, max_norm, opts)
  if type(params) ~= "table" then
    error("clip_grad_norm: params must be a list of tensors or named parameters, got " .. type(params), 2)
  end
  if type(max_norm) ~= "number" or max_norm ~= max_norm then
    error("clip_grad_norm: max_norm must be a number, got " .. tostring(max_norm), 2)
  end
  if type(opts) == "number" then opts = {norm_type = opts} end
  if opts ~= nil and type(opts) ~= "table" then
    error("clip_grad_norm: the third argument must be the norm type or an options table, got " .. type(opts), 2)
  end
  for k in pairs(opts or {}) do
    if k ~= "norm_type" and k ~= "apply" then
      error(string.format("clip_grad_norm: unknown option '%s' (norm_type, apply)", tostring(k)), 2)
    end
  end
  local norm_type = opts and opts.norm_type or 2
  if norm_type ~= 2 and norm_type ~= math.huge then
    error("clip_grad_norm: norm_type must be 2 or math.huge (inf), got " .. tostring(norm_type), 2)
  end
  local grads = {}
  if core.is_tensor(params[1]) then
    for i, p in ipairs(params) do
      if not core.is_tensor(p) then
        error(string.format("clip_grad_norm: params[%d] must be a tensor (as params[1] is), got %s", i, type(p)), 2)
      end
      grads[#grads + 1] = p.grad
    end
  else
    for _, e in ipairs(ordered_params(params, "clip_grad_norm")) do grads[#grads + 1] = e.param.grad end
  end
  local norm
  if norm_type == 2 then
    norm = core.global_norm(grads)
  else
    norm = 0
    for _, g in pairs(grads) do
      if g:numel() > 0 then
        -- math.max drops a NaN; the norm of NaN gradients is NaN, as the 2-norm's
        local m = g:detach():abs():max():item()
        if m ~= m or m > norm then norm = m end
        if norm ~= norm then break end
      end
    end
  end
  local scale = max_norm / (norm + 1e-6)
  if scale >= 1 then return norm, 1 end
  -- {apply = false}: leave the gradients and return the factor, for AdamW:step{grad_scale = factor}
  if not (opts and opts.apply == false) then core.scale_all_(grads, scale) end
  return norm, scale
end

require("hero.colon").guard(Adam, "optimizer", {"set_lr", "step", "zero_grad", "state_dict", "load_state_dict"})

return optim
