--- hero.nn.Module: the base of every layer. Torch's protocol (forward, parameters, training,
-- evaluate, printing as a tree) plus named_parameters, state_dict and load_state_dict whose names
-- are the reference implementation's PyTorch state_dict keys.
local core = require "hero.core"

local Module = {}
Module.__name = "Module"

-- Registered parameters, buffers and children live in their registries only, not as fields of the
-- instance: self.weight finds them through __index, and an assignment to their name reaches
-- __newindex, which keeps the registry and the field one thing (a tensor assigned to a registered
-- parameter's name used to run forward while state_dict, parameters() and :to kept the old one).
local function instance_index(cls)
  return function(t, k)
    local params = rawget(t, "_params")
    if params then
      local v = params[k]
      if v ~= nil then return v end
      v = rawget(t, "_buffers")[k]
      if v ~= nil then return v end
      v = rawget(t, "_modules")[k]
      if v ~= nil then return v end
    end
    return cls[k]
  end
end
Module.__index = instance_index(Module)

local function is_module(v) return type(v) == "table" and rawget(v, "_params") ~= nil end
-- a module, or a table standing for one (a wrapper whose __index is the model), as a method's self
local function acts_as_module(v) return type(v) == "table" and type(v._params) == "table" end

--- self.name = value: for a registered parameter, registers value in its place (as torch's
-- assignment of an nn.Parameter: an optimizer made before holds the old tensor); for a buffer,
-- replaces the buffer; for a child, or a new name given a module, adds that module as the child
-- (as torch registers it); anything else is a plain field.
function Module.__newindex(t, k, v)
  local params = rawget(t, "_params")
  -- names starting with "_" are the module's own bookkeeping (_parent, _name): plain fields
  if params and type(k) == "string" and k:sub(1, 1) ~= "_" then
    if params[k] ~= nil then
      if v == nil then t:error("parameter '%s' cannot be removed by assigning nil", k) end
      t:register_parameter(k, v)
      return
    elseif rawget(t, "_buffers")[k] ~= nil then
      if not core.is_tensor(v) then t:error("buffer '%s' must be a tensor, got %s", k, type(v)) end
      rawget(t, "_buffers")[k] = v
      return
    elseif rawget(t, "_modules")[k] ~= nil or is_module(v) then
      t:add_module(k, v)
      return
    end
  end
  rawset(t, k, v)
end

local function construct(cls, ...)
  local self = setmetatable({
    training = true, keeps_activations = false,
    _params = {}, _param_order = {},
    _buffers = {}, _buffer_order = {},
    _modules = {}, _module_order = {},
    _name = nil, _parent = nil,
  }, cls)
  if cls.__init then cls.__init(self, ...) end
  return self
end

--- Creates a subclass: `local Linear = Module:extend("Linear")`, then `function Linear:__init(...)`.
-- Instances are made by calling the class (`Linear(768, 768)`) or `Linear.new(768, 768)`.
function Module:extend(name)
  local cls = {}
  for k, v in pairs(self) do
    if k:find("^__") then cls[k] = v end -- metamethods are not inherited through __index
  end
  cls.__index = instance_index(cls)
  cls.__name = name
  cls.super = self
  cls.new = function(...) return construct(cls, ...) end
  -- a forward defined on the class is guarded against model.forward(x) (a "." for ":"), which
  -- failed inside the layer with "attempt to call a nil value (method 'error')"
  local function define(c, k, v)
    if k == "forward" and type(v) == "function" then
      local f = v
      v = function(m, ...)
        if not acts_as_module(m) then
          error(string.format("%s.forward: called with '.' (self is %s); write model:forward(...) or model(...)",
            name, m == nil and "nil" or type(m)), 2)
        end
        return f(m, ...)
      end
    end
    rawset(c, k, v)
  end
  local function call(c, ...) return construct(c, ...) end
  return setmetatable(cls, {__index = self, __newindex = define, __call = call})
end

--- The dotted path of this module from the root it was added to ("" for a root).
function Module:path()
  local parts = {}
  local m = self
  while m and m._name do
    table.insert(parts, 1, m._name)
    m = m._parent
  end
  return table.concat(parts, ".")
end

--- Raises an error prefixed with the module's class and path.
function Module:error(fmt, ...)
  local path = self:path()
  local where = path ~= "" and string.format("%s (%s)", self.__name, path) or self.__name
  error(where .. ": " .. string.format(fmt, ...), 2)
end

-- A name a parameter, buffer or child can be registered under: its state_dict key is the dotted path,
-- so a "." would collide with a child's entries, and self[name] must not hide a method or a field
-- of another kind.
local function check_name(self, kind, name, own)
  if type(name) ~= "string" or name == "" or name:find(".", 1, true) then
    self:error("%s name must be a non-empty string without '.', got %s", kind, type(name) == "string"
      and ("'" .. name .. "'") or type(name))
  end
  if own[name] == nil then
    local taken = (own ~= self._params and self._params[name] ~= nil and "a parameter")
      or (own ~= self._buffers and self._buffers[name] ~= nil and "a buffer")
      or (own ~= self._modules and self._modules[name] ~= nil and "a child module")
      or (rawget(self, name) ~= nil and "a field of another kind")
      or (self[name] ~= nil and "a method of the module")
    if taken then self:error("%s name '%s' is taken: self.%s is already %s", kind, name, name, taken) end
  end
end

--- Registers a trainable tensor under `name` (also reachable as self[name]).
function Module:register_parameter(name, t)
  if not core.is_tensor(t) then self:error("parameter '%s' must be a tensor", tostring(name)) end
  check_name(self, "parameter", name, self._params)
  -- an optimizer updates leaves only: a computed tensor would get no .grad and never change
  if t.grad_fn ~= nil then
    self:error("parameter '%s' must be a leaf tensor (it was computed by an op; detach() it)", name)
  end
  local dt = t:dtype()
  if dt ~= "f32" and dt ~= "f64" and dt ~= "bf16" and dt ~= "f16" then
    self:error("parameter '%s' must be a floating tensor (f32, f64, bf16, f16), got %s", name, dt)
  end
  if not self._params[name] then self._param_order[#self._param_order + 1] = name end
  if not t.requires_grad then t:requires_grad_(true) end
  self._params[name] = t
  return t
end

--- Registers a non-trainable tensor that is part of the state_dict (e.g. position ids), unless
-- persistent is false (torch's): then it moves with :to but stays out of state_dict.
function Module:register_buffer(name, t, persistent)
  if not core.is_tensor(t) then self:error("buffer '%s' must be a tensor, got %s", tostring(name), type(t)) end
  if persistent ~= nil and type(persistent) ~= "boolean" then
    self:error("register_buffer: persistent must be a boolean, got %s", type(persistent))
  end
  check_name(self, "buffer", name, self._buffers)
  if not self._buffers[name] then self._buffer_order[#self._buffer_order + 1] = name end
  self._buffers[name] = t
  local transient = rawget(self, "_non_persistent")
  if persistent == false then
    if not transient then
      transient = {}
      rawset(self, "_non_persistent", transient)
    end
    transient[name] = true
  elseif transient then
    transient[name] = nil
  end
  return t
end

--- Adds a child module under `name` (also reachable as self[name]).
function Module:add_module(name, m)
  if not is_module(m) then self:error("child '%s' is not a hero.nn.Module", tostring(name)) end
  check_name(self, "child", name, self._modules)
  -- a module inside itself would make every walk of the tree endless
  for _, entry in ipairs(m:named_modules()) do
    if entry[2] == self then
      self:error("child '%s' contains this module (%s), which would make the module tree a cycle", name,
        entry[1] == "" and "it is this module" or "as " .. entry[1])
    end
  end
  if not self._modules[name] then self._module_order[#self._module_order + 1] = name end
  self._modules[name] = m
  rawset(m, "_name", name)
  rawset(m, "_parent", self)
  return m
end

--- Children in registration order, as an array of {name, module}.
function Module:named_children()
  local out = {}
  for _, name in ipairs(self._module_order) do out[#out + 1] = {name, self._modules[name]} end
  return out
end

function Module:children()
  local out = {}
  for _, name in ipairs(self._module_order) do out[#out + 1] = self._modules[name] end
  return out
end

--- Every module of the tree (pre-order), as an array of {path, module}.
function Module:named_modules(prefix, out)
  out = out or {}
  prefix = prefix or ""
  out[#out + 1] = {prefix, self}
  for _, name in ipairs(self._module_order) do
    self._modules[name]:named_modules(prefix == "" and name or prefix .. "." .. name, out)
  end
  return out
end

--- Every parameter as an array of {name, tensor} in registration order. A tensor reachable under
-- two names (tied weights) is listed once, under the first name.
function Module:named_parameters()
  local out, seen = {}, {}
  for _, entry in ipairs(self:named_modules()) do
    local prefix, m = entry[1], entry[2]
    for _, pname in ipairs(m._param_order) do
      local t = m._params[pname]
      if not seen[t] then
        seen[t] = true
        out[#out + 1] = {prefix == "" and pname or prefix .. "." .. pname, t}
      end
    end
  end
  return out
end

function Module:parameters()
  local out = {}
  for _, pair in ipairs(self:named_parameters()) do out[#out + 1] = pair[2] end
  return out
end

--- Flat table name -> tensor of every parameter and persistent buffer (tied weights under every
-- name, as PyTorch's state_dict does). As torch's, the values are detached: they share the
-- parameters' memory but record no graph, so editing a copy of one (clone():fill_()) works.
function Module:state_dict()
  local sd = {}
  for _, entry in ipairs(self:named_modules()) do
    local prefix, m = entry[1], entry[2]
    local function key(n) return prefix == "" and n or prefix .. "." .. n end
    for _, n in ipairs(m._param_order) do sd[key(n)] = m._params[n]:detach() end
    local transient = rawget(m, "_non_persistent") or {}
    for _, n in ipairs(m._buffer_order) do
      if not transient[n] then sd[key(n)] = m._buffers[n] end
    end
  end
  return sd
end

local function shape_str(t) return t:dim() == 0 and "() (0-dim)" or table.concat(t:size(), "x") end

--- Copies tensors of `sd` into this module's parameters and buffers (converting dtypes).
-- opts.strict (default true): missing or unexpected keys are an error listing them all.
-- Returns a report {missing = {...}, unexpected = {...}} (sorted).
function Module:load_state_dict(sd, opts)
  if type(sd) ~= "table" then self:error("load_state_dict: expected a table of tensors by name, got %s", type(sd)) end
  opts = opts or {}
  if type(opts) ~= "table" then
    self:error("load_state_dict: opts must be a table such as {strict = false}, got %s", type(opts))
  end
  for k in pairs(opts) do -- a misspelt {strcit = false} would load strictly without a word
    if k ~= "strict" then self:error("load_state_dict: unknown option '%s' (strict)", tostring(k)) end
  end
  if opts.strict ~= nil and type(opts.strict) ~= "boolean" then
    self:error("load_state_dict: option strict must be a boolean, got %s", type(opts.strict))
  end
  local strict = opts.strict ~= false
  local own = self:state_dict()
  local missing, unexpected = {}, {}
  for name in pairs(own) do
    if sd[name] == nil then missing[#missing + 1] = name end
  end
  for name in pairs(sd) do
    if own[name] == nil then unexpected[#unexpected + 1] = tostring(name) end -- a number key too
  end
  table.sort(missing)
  table.sort(unexpected)
  if strict and (#missing > 0 or #unexpected > 0) then
    local parts = {}
    if #missing > 0 then parts[#parts + 1] = "missing keys: " .. table.concat(missing, ", ") end
    if #unexpected > 0 then parts[#parts + 1] = "unexpected keys: " .. table.concat(unexpected, ", ") end
    error(string.format("%s:load_state_dict: %s", self.__name, table.concat(parts, "; ")), 2)
  end
  -- every entry is checked before any is copied: a checkpoint that does not fit leaves the model as
  -- it was, not half loaded
  local names = {}
  for name, dst in pairs(own) do
    local src = sd[name]
    if src ~= nil then
      if not core.is_tensor(src) then
        error(string.format("%s:load_state_dict: '%s' is not a tensor", self.__name, name), 2)
      end
      if src:is_freed() then error(string.format("%s:load_state_dict: '%s' was freed", self.__name, name), 2) end
      if shape_str(src) ~= shape_str(dst) then
        error(string.format("%s:load_state_dict: '%s' has size %s in the checkpoint but %s in the model",
          self.__name, name, shape_str(src), shape_str(dst)), 2)
      end
      names[#names + 1] = name
    end
  end
  table.sort(names)
  core.no_grad(function()
    for _, name in ipairs(names) do own[name]:copy_(sd[name]) end
  end)
  return {missing = missing, unexpected = unexpected}
end

--- Training mode on (default) or off, for this module and every child.
function Module:train(mode)
  if mode == nil then mode = true end
  if type(mode) ~= "boolean" then self:error("train: mode must be a boolean, got %s", type(mode)) end
  for _, entry in ipairs(self:named_modules()) do entry[2].training = mode end
  return self
end

function Module:evaluate() return self:train(false) end
--- torch's name for evaluate().
function Module:eval() return self:train(false) end

--- Full intermediate activations on (true) or off (default), for this module and every child.
-- Off, a model computes only what its outputs and loss read (the last cross-modal layer of MLM
-- runs on the masked tokens alone); on, it also returns every intermediate tensor in full (the
-- cross-modal and temporal outputs of every position), as the parity checks compare them.
function Module:keep_activations(on)
  if on == nil then on = true end
  if type(on) ~= "boolean" then self:error("keep_activations: expected a boolean, got %s", type(on)) end
  for _, entry in ipairs(self:named_modules()) do entry[2].keeps_activations = on end
  return self
end

--- Moves (or casts) every parameter and buffer: `m:to("cuda:0")`, `m:to{device = "cuda:1", dtype =
-- "bf16"}`, `m:to("f64")`; floating buffers follow the dtype, integer ones keep theirs. Parameters
-- stay leaves that require gradients (their .grad is dropped), a tensor shared by several modules
-- (tied weights) stays shared, and a tensor already where it should be is kept as it is. Make the
-- optimizer after moving the model: it holds the tensors it was given. Returns the module.
function Module:to(where)
  local opts = where
  -- a dtype by any of its names ("float64", "half"), as Tensor:to takes them
  local function dtype_named(name)
    local ok, probe = pcall(core.empty, {0}, {dtype = name})
    return ok and probe:dtype() or nil
  end
  if type(where) == "string" then
    if where == "cpu" or where:find("^cuda") then
      opts = {device = where}
    else
      local dt = dtype_named(where)
      if not dt then
        self:error("to: '%s' is neither a dtype (f32, f64, bf16, f16) nor a device ('cpu', 'cuda', 'cuda:N')", where)
      end
      opts = {dtype = dt}
    end
  elseif type(where) == "table" then
    opts = {}
    for k, v in pairs(where) do
      if k ~= "dtype" and k ~= "device" then self:error("to: unknown option '%s' (dtype, device)", tostring(k)) end
      if type(v) ~= "string" then self:error("to: option %s must be a string, got %s", k, type(v)) end
      opts[k] = v
    end
    if opts.dtype then opts.dtype = dtype_named(opts.dtype) or opts.dtype end
  else
    self:error("to: expected a device ('cpu', 'cuda:0'), a dtype or {device =, dtype =}, got %s", type(where))
  end
  local floating = {f32 = true, f64 = true, bf16 = true, f16 = true}
  if opts.dtype ~= nil and not floating[opts.dtype] then
    self:error("to: modules are cast to a floating dtype (f32, f64, bf16, f16), not '%s'", tostring(opts.dtype))
  end
  local moved = {}
  local function move(t, is_param)
    if moved[t] then return moved[t] end
    local o = {device = opts.device or t:device()}
    o.dtype = (opts.dtype and floating[t:dtype()]) and opts.dtype or t:dtype()
    local r = t
    if o.device ~= t:device() or o.dtype ~= t:dtype() then
      r = core.no_grad(function() return t:detach():to(o) end)
      -- a frozen parameter (requires_grad_(false)) stays frozen, as torch's
      if is_param and t.requires_grad then r:requires_grad_(true) end
    end
    moved[t] = r
    return r
  end
  -- every copy first, so that a failure (out of device memory) leaves the module as it was
  local ok, err = pcall(function()
    for _, entry in ipairs(self:named_modules()) do
      local m = entry[2]
      for _, name in ipairs(m._param_order) do move(m._params[name], true) end
      for _, name in ipairs(m._buffer_order) do
        if core.is_tensor(m._buffers[name]) then move(m._buffers[name], false) end
      end
    end
  end)
  if not ok then
    local msg = tostring(err):gsub("^[^\n]-:%d+: ", "")
    self:error("%s", msg:find("^to: ") and msg or "to: " .. msg)
  end
  -- then every place that held a moved tensor (registrations, fields, tied references)
  for _, entry in ipairs(self:named_modules()) do
    local m = entry[2]
    for _, tbl in ipairs {m._params, m._buffers, m} do
      for k, v in pairs(tbl) do
        if core.is_tensor(v) and moved[v] then tbl[k] = moved[v] end
      end
    end
  end
  return self
end

--- m:cuda([index 0]) = m:to("cuda:index"); m:cpu() = m:to("cpu").
function Module:cuda(index) return self:to("cuda:" .. tostring(index or 0)) end
function Module:cpu() return self:to("cpu") end

--- The device of the first parameter ("cpu" for a module without parameters).
function Module:device()
  local p = self:parameters()[1]
  return p and p:device() or "cpu"
end

--- Sets every parameter's .grad to nil.
function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad = nil end
end

function Module:forward()
  self:error("forward is not implemented")
end

function Module:__call(...)
  return self:forward(...)
end

--- A one-line description of the module itself (subclasses override, e.g. "Linear(768 -> 768)").
function Module.extra_repr(_)
  return ""
end

function Module:__tostring()
  local lines = {}
  local function walk(m, indent, label)
    local extra = m:extra_repr()
    local head = (label and (label .. ": ") or "") .. m.__name .. (extra ~= "" and ("(" .. extra .. ")") or "")
    lines[#lines + 1] = indent .. head
    for _, name in ipairs(m._module_order) do walk(m._modules[name], indent .. "  ", name) end
  end
  walk(self, "", nil)
  return table.concat(lines, "\n")
end

require("hero.colon").guard(Module, "Module", {"named_parameters", "parameters", "state_dict", "load_state_dict",
  "train", "evaluate", "to", "zero_grad", "named_modules", "children", "named_children"}, acts_as_module)

return Module
