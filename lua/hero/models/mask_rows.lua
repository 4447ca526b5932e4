--- hero.models.mask_rows: the rows a pre-training loss reads (masked tokens, masked frames), as
-- flat row indices of a [N, L] mask.
--
-- Counting a mask's set elements fixes the size of what follows, so on a GPU it makes the host
-- wait for the device in the middle of the forward pass. A batch moved to a GPU by
-- hero.train.Trainer.batch_to therefore carries these indices already, made from its host copy
-- and moved with the rest of the batch (batch._mask_rows); the model uses them when present.
local core = require "hero.core"

local M = {}

-- The masks whose rows the models select: key -> whether the complement's rows are read too
-- (MFM-NCE's negatives are the unmasked frames).
M.MASKS = {txt_mask_tgt = false, c_v_masks = true}

--- Flat positions (i64 [n], 0-based, row-major) where mask [N, L] is true.
function M.flat_index(mask)
  return mask:reshape(mask:size(1) * mask:size(2)):nonzero():squeeze(2)
end

local function name(key, complement) return complement and ("not " .. key) or key end

--- The row indices of batch[key] (of its complement when `complement`): the precomputed ones of
-- batch._mask_rows when present, else computed from the mask.
function M.of(batch, key, complement)
  local pre = batch._mask_rows and batch._mask_rows[name(key, complement)]
  if pre ~= nil then return pre end
  local mask = batch[key]
  return M.flat_index(complement and mask:logical_not() or mask)
end

--- The row indices of batch[key] on the host (CPU i64), when they are there without a read-back
-- from the device: those batch._mask_rows_host keeps beside the precomputed ones, or the rows
-- themselves when the mask is on the CPU. nil otherwise.
function M.host_of(batch, key, complement)
  local pre = batch._mask_rows_host and batch._mask_rows_host[name(key, complement)]
  if pre ~= nil then return pre end
  local mask = batch[key]
  if core.is_tensor(mask) and mask:device() == "cpu" then return M.of(batch, key, complement) end
  return nil
end

--- The row indices of the batch's masks (M.MASKS) made from its host tensors and moved to
-- `device`, keyed as M.of reads them; and the host tensors they were moved from, keyed alike
-- (M.host_of: layouts worked out on the host read them instead of the device's).
function M.precompute(batch, device)
  local rows, host = {}, {}
  for key, complement in pairs(M.MASKS) do
    local mask = batch[key]
    if core.is_tensor(mask) and mask:dim() == 2 then
      host[name(key, false)] = M.flat_index(mask)
      if complement then host[name(key, true)] = M.flat_index(mask:logical_not()) end
    end
  end
  for k, t in pairs(host) do rows[k] = t:to {device = device} end
  return rows, host
end

return M
