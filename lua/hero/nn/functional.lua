--- hero.nn.functional: the differentiable building blocks as plain functions (the C nodes plus a
-- few compositions the reference uses).
local core = require "hero.core"

local F = {}

local function hero_where(cond, a, b) return core.where(cond, a, b) end

F.linear = core.linear
F.layer_norm = core.layer_norm
F.dropout_add_layer_norm = core.dropout_add_layer_norm
F.gelu = core.gelu
F.dropout = core.dropout
F.embedding = core.embedding
F.attention = core.attention
F.attention_packed = core.attention_packed
F.conv1d = core.conv1d
-- cross_entropy: below (the C loss takes [N, C] logits with class indices)
-- binary_cross_entropy_with_logits and mse_loss: below (the fused C losses take equal shapes)
F.softmax = core.softmax
F.log_softmax = core.log_softmax

-- Raises "<who>: <name> must be a hero.Tensor" for each (name, value) pair that is not one.
local function tensors(who, ...)
  for i = 1, select("#", ...), 2 do
    local name, v = select(i, ...)
    if not core.is_tensor(v) then
      error(string.format("%s: %s must be a hero.Tensor, got %s", who, name, type(v)), 3)
    end
  end
end

local function reduce(loss, reduction)
  if reduction == "none" then return loss end
  if reduction == "sum" then return loss:sum() end
  if reduction == nil or reduction == "mean" then return loss:mean() end
  error("unknown reduction '" .. tostring(reduction) .. "' (none, mean or sum)", 3)
end

local function same_shape(a, b) return table.concat(a:size(), "x") == table.concat(b:size(), "x") end

local function check_options(who, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(string.format("%s: options must be a table, got %s", who, type(opts)), 3) end
  for k in pairs(opts) do
    local ok = false
    for _, name in ipairs(known) do ok = ok or k == name end
    if not ok then
      error(string.format("%s: unknown option '%s' (%s)", who, tostring(k), table.concat(known, ", ")), 3)
    end
  end
  return opts
end

local function shape_str(t) return table.concat(t:size(), "x") end

--- cross_entropy(logits, target [, {ignore_index = -100, label_smoothing = 0, reduction = "mean",
-- weight = [C]}]) as PyTorch's: logits [N, C] (the fused C loss), [C] with a 0-dim target, or
-- [N, C, d1, ...] with targets [N, d1, ...] (the classes along dimension 2; "none" gives the
-- target's shape); a float target of the logits' shape holds class probabilities (soft labels:
-- -sum w p log softmax, smoothed as p (1 - s) + s / C, the mean over the positions). A class
-- weight w makes the mean over class indices a weighted one (divided by the sum of the targets'
-- weights) and weighs the smoothing term as torch's does.
function F.cross_entropy(logits, target, opts)
  local who = "cross_entropy"
  tensors(who, "logits", logits, "target", target)
  local o = check_options(who, opts, {"ignore_index", "label_smoothing", "reduction", "weight"})
  local red = o.reduction or "mean"
  if red ~= "none" and red ~= "mean" and red ~= "sum" then
    error("cross_entropy: unknown reduction '" .. tostring(red) .. "' (none, mean or sum)", 2)
  end
  local nd = logits:dim()
  if nd < 1 then error("cross_entropy: logits must have at least one dimension", 2) end
  local cdim = nd == 1 and 1 or 2
  local C = logits:size(cdim)
  local w = o.weight
  if w ~= nil then
    tensors(who, "weight", w)
    if w:dim() ~= 1 or w:size(1) ~= C then
      error(string.format("cross_entropy: weight %s must be a vector of the %d classes", shape_str(w), C), 2)
    end
  end
  -- every position a row [M, C] (the classes moved last); out_shape: the per-position result's
  local rows, out_shape
  if nd == 1 then
    rows, out_shape = logits:unsqueeze(1), {}
  elseif nd == 2 then
    rows, out_shape = logits, {logits:size(1)}
  else
    local perm = {1}
    for d = 3, nd do perm[#perm + 1] = d end
    perm[#perm + 1] = 2
    rows = logits:permute(perm):reshape(-1, C)
    out_shape = {logits:size(1)}
    for d = 3, nd do out_shape[#out_shape + 1] = logits:size(d) end
  end
  local function shaped(per) return per:view(out_shape) end
  local s = o.label_smoothing or 0
  if type(s) ~= "number" then
    error("cross_entropy: option label_smoothing must be a number, got " .. type(s), 2)
  elseif not (s >= 0 and s <= 1) then -- (the class-index path checks it in C too)
    error("cross_entropy: label_smoothing must be in [0, 1], got " .. tostring(s), 2)
  end
  local float_target = target:dtype() == "f32" or target:dtype() == "f64" or target:dtype() == "bf16"
    or target:dtype() == "f16"
  if float_target then
    if not same_shape(logits, target) then
      error(string.format("cross_entropy: class probabilities %s must have the logits' shape %s",
        shape_str(target), shape_str(logits)), 2)
    end
    local p = target
    if nd > 2 then
      local perm = {1}
      for d = 3, nd do perm[#perm + 1] = d end
      perm[#perm + 1] = 2
      p = p:permute(perm):reshape(-1, C)
    elseif nd == 1 then
      p = p:unsqueeze(1)
    end
    if s > 0 then p = p * (1 - s) + s / C end
    local lp = rows:log_softmax(2)
    if w ~= nil then lp = lp * w:view(1, C) end
    local per = -(p * lp):sum(2)
    if red == "none" then return shaped(per) end
    if red == "sum" then return per:sum() end
    return per:sum() / per:numel() -- torch: the sum over numel / C positions
  end
  -- class indices
  local t
  if nd == 1 then
    if target:dim() ~= 0 then error("cross_entropy: [C] logits take a 0-dimensional target", 2) end
    t = target:view(1)
  else
    -- [N, C] logits too: a [1, N] or [N, 1] target would be read flat (PyTorch refuses it)
    -- (a vector of another length: the C loss names it)
    if (nd > 2 or target:dim() ~= 1) and table.concat(target:size(), "x") ~= table.concat(out_shape, "x") then
      error(string.format("cross_entropy: target %s must be %s for logits %s", shape_str(target),
        table.concat(out_shape, "x"), shape_str(logits)), 2)
    end
    t = target:reshape(-1)
  end
  if w == nil then
    local copts = {ignore_index = o.ignore_index, label_smoothing = o.label_smoothing, reduction = red}
    local r = core.cross_entropy(rows, t, copts)
    if red == "none" then return shaped(r) end
    return r
  end
  -- weighted (torch's nll_loss with weight, and its smoothing term -sum_c w_c log p_c)
  local ignore = o.ignore_index or -100
  local keep = t:ne(ignore)
  local safe = hero_where(keep, t, 0)
  local lp = rows:log_softmax(2)
  local wt = w:index_select(1, safe) * keep:to(w:dtype())
  -- ignored rows are chosen out by where, not multiplied by 0: with every row ignored the mean
  -- divides by a total of 0, and 0 * inf would give them NaN gradients (torch: 0)
  local nll = hero_where(keep, -lp:gather(2, safe:unsqueeze(2)):squeeze(2) * wt, 0)
  local smooth
  if s > 0 then smooth = hero_where(keep, -(lp * w:view(1, C)):sum(2), 0) end
  local function combine(a, b) return b and a * (1 - s) + b * (s / C) or a end
  if red == "none" then return shaped(combine(nll, smooth)) end
  if red == "sum" then return combine(nll:sum(), smooth and smooth:sum()) end
  local total = wt:sum()
  return combine(nll:sum() / total, smooth and smooth:sum() / total)
end


--- binary_cross_entropy_with_logits(x, y [, {weight =, pos_weight =, reduction = "mean"}]) as
-- PyTorch's: y has x's shape; weight broadcasts to it; pos_weight (broadcast along the last
-- dimension, one per class) weighs the positive term: (1 - y) x + (1 + (pos_weight - 1) y) *
-- log(1 + exp(-x)). Without pos_weight and with a weight of x's shape (or none) it is the fused C loss.
function F.binary_cross_entropy_with_logits(x, y, opts)
  local who = "binary_cross_entropy_with_logits"
  tensors(who, "input", x, "target", y)
  local o = check_options(who, opts, {"weight", "pos_weight", "reduction"})
  if not same_shape(x, y) then
    error(string.format("%s: target size %s must be the input size %s", who, table.concat(y:size(), "x"),
      table.concat(x:size(), "x")), 2)
  end
  local w = o.weight
  if w ~= nil then tensors(who, "weight", w) end
  if o.pos_weight == nil and (w == nil or same_shape(w, x)) then
    return core.binary_cross_entropy_with_logits(x, y, o)
  end
  local loss
  if o.pos_weight ~= nil then
    tensors(who, "pos_weight", o.pos_weight)
    -- log(1 + exp(-x)), stable: log1p(exp(-x)) for x >= 0, log1p(exp(x)) - x below, each branch
    -- fed only its own side's values so that exp never overflows (the values of log1p(exp(-|x|)) +
    -- max(-x, 0), whose gradient at 0 would be abs's and relu's 0 instead of -1/2)
    local pos = x:detach():ge(0)
    local sp = hero_where(pos, (-hero_where(pos, x, 0)):exp():log1p(),
                          hero_where(pos, 0, x):exp():log1p() - x)
    loss = (1 - y) * x + (1 + (o.pos_weight - 1) * y) * sp
  else
    loss = core.binary_cross_entropy_with_logits(x, y, {reduction = "none"})
  end
  if w ~= nil then loss = loss * w end
  local ok, r = pcall(reduce, loss, o.reduction)
  if not ok then error(who .. ": " .. tostring(r), 2) end
  return r
end

--- mse_loss(x, y [, {reduction = "mean"}]): the fused C loss for equal shapes; as PyTorch, shapes
-- that broadcast give the mean (or sum, or every term) of the broadcast squared differences.
function F.mse_loss(x, y, opts)
  tensors("mse_loss", "input", x, "target", y)
  local o = check_options("mse_loss", opts, {"reduction"})
  if same_shape(x, y) then return core.mse_loss(x, y, o) end
  local okd, d = pcall(function() return x - y end)
  if not okd then
    error(string.format("mse_loss: input %s and target %s must have the same shape (or shapes that broadcast)",
      table.concat(x:size(), "x"), table.concat(y:size(), "x")), 2)
  end
  local ok, r = pcall(reduce, d:square(), o.reduction)
  if not ok then error("mse_loss: " .. tostring(r), 2) end
  return r
end

--- pad(t, pads [, mode = "constant"] [, value = 0]) as torch.nn.functional.pad: pads = {left,
-- right} for the last dimension, {left, right, top, bottom} for the last two, and so on; a negative
-- amount crops. Constant mode only; differentiable (cat and narrow).
function F.pad(t, pads, mode, value)
  tensors("pad", "t", t)
  if type(pads) ~= "table" or #pads % 2 ~= 0 or #pads == 0 then
    error("pad: pads must be a list of an even number of amounts {left, right, ...}", 2)
  end
  if #pads // 2 > t:dim() then
    error(string.format("pad: %d pairs of amounts for a %d-D tensor", #pads // 2, t:dim()), 2)
  end
  if mode ~= nil and mode ~= "constant" then
    error("pad: mode '" .. tostring(mode) .. "' is not supported (constant)", 2)
  end
  value = value or 0
  if type(value) ~= "number" and type(value) ~= "boolean" then
    error("pad: the value must be a number, got " .. type(value), 2)
  end
  local out = t
  for pair = 1, #pads // 2 do
    local dim = t:dim() - pair + 1
    local before, after = pads[2 * pair - 1], pads[2 * pair]
    if math.type(before) ~= "integer" or math.type(after) ~= "integer" then
      error("pad: the amounts must be integers", 2)
    end
    -- beyond any tensor's size (and the sums below cannot wrap around)
    if math.abs(before) > 1 << 48 or math.abs(after) > 1 << 48 then
      error(string.format("pad: amount %d is beyond any size", math.abs(before) > 1 << 48 and before or after), 2)
    end
    local n = out:size(dim)
    -- the crops come first: each side's, or both together, may not take more than the dimension has
    local crop = math.max(0, -before) + math.max(0, -after)
    if crop > n or n + before + after < 0 then
      error(string.format("pad: cropping %d from a dimension of size %d", math.max(crop, -(before + after)), n), 2)
    end
    -- crops first (negative amounts), then the constant blocks
    local lo, hi = math.max(0, -before), math.max(0, -after)
    if lo + hi > 0 then out = out:narrow(dim, lo + 1, n - lo - hi) end
    local parts = {}
    local function block(k)
      local size = out:size()
      size[dim] = k
      return core.full(size, value, {dtype = out:dtype(), device = out:device()})
    end
    if before > 0 then parts[#parts + 1] = block(before) end
    parts[#parts + 1] = out
    if after > 0 then parts[#parts + 1] = block(after) end
    if #parts > 1 then out = core.cat(parts, dim) end
  end
  return out
end

--- max(0, -y * (x1 - x2) + margin), PyTorch's margin_ranking_loss (y = 1 or -1, a number or tensor).
function F.margin_ranking_loss(x1, x2, y, opts)
  tensors("margin_ranking_loss", "x1", x1, "x2", x2)
  opts = check_options("margin_ranking_loss", opts, {"margin", "reduction"})
  -- as torch's: the three of one size (a number y aside)
  for name, t in pairs {x2 = x2, y = y} do
    if core.is_tensor(t) and not same_shape(t, x1) then
      error(string.format("margin_ranking_loss: %s %s must have x1's size %s", name, shape_str(t), shape_str(x1)), 2)
    end
  end
  local loss = ((x1 - x2) * y * -1 + (opts.margin or 0)):clamp(0, nil)
  return reduce(loss, opts.reduction)
end

--- The ranking hinge of the reference's VSM/VCMR losses: clamp(margin + neg - pos, min = 0).
function F.hinge_loss(pos, neg, opts)
  tensors("hinge_loss", "pos", pos, "neg", neg)
  opts = opts or {}
  return reduce((neg - pos + (opts.margin or 0.1)):clamp(0, nil), opts.reduction)
end

--- The reference's mask_logits: t * m + (1 - m) * -1e4 (masked positions become exactly -1e4 when
-- t is finite; hero-spec §2.1).
function F.mask_logits(t, m, value)
  tensors("mask_logits", "t", t, "m", m)
  local mf = m:to(t:dtype())
  return t * mf + (1 - mf) * (value or -1e4)
end

return F
