--- hero.nn.functional: the differentiable building blocks as plain functions (the C nodes plus a
-- few compositions the reference uses).
local core = require "hero.core"

local F = {}

F.linear = core.linear
F.layer_norm = core.layer_norm
F.gelu = core.gelu
F.dropout = core.dropout
F.embedding = core.embedding
F.attention = core.attention
F.attention_packed = core.attention_packed
F.conv1d = core.conv1d
F.cross_entropy = core.cross_entropy
F.binary_cross_entropy_with_logits = core.binary_cross_entropy_with_logits
F.mse_loss = core.mse_loss
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

--- max(0, -y * (x1 - x2) + margin), PyTorch's margin_ranking_loss (y = 1 or -1, a number or tensor).
function F.margin_ranking_loss(x1, x2, y, opts)
  tensors("margin_ranking_loss", "x1", x1, "x2", x2)
  opts = opts or {}
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
