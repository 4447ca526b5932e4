--- hero.train.device_batch: a batch made on the CPU, moved to the model's device.
--
--   local dev_batch = require("hero.train.device_batch").to(batch, "cuda:0")
--   -- the same as hero.train.Trainer.batch_to(batch, "cuda:0")
--
-- Every tensor at any depth of plain tables moves to `device`; on the CPU the same table comes back.
-- On another device the batch also carries the row indices of its loss masks, made from the host
-- copy (hero.models.mask_rows), so that the forward pass does not wait for the device to count
-- them. The result is marked with its device (`_device`): a batch that a PrefetchLoader{device =}
-- worker already moved (M.move inside hero.cuda.upload_async) comes back as it is.
--
-- M.to copies on the device's upload stream (hero.cuda.upload_async) and then orders the compute
-- stream after those copies (hero.cuda.await_upload): the host waits while the driver takes in the
-- batch's bytes, but no longer for the work the device has queued before them, and the device
-- goes on computing during the transfer. M.move(batch, device) is the plain move, for code already
-- inside an upload (a PrefetchLoader worker).
local core = require "hero.core"
local cuda = require "hero.cuda"
local mask_rows = require "hero.models.mask_rows"

local M = {}

function M.move(batch, device)
  if device == "cpu" then return batch end
  if type(batch) == "table" and getmetatable(batch) == nil and batch._device == device then return batch end
  local seen = {}
  local function walk(v)
    if core.is_tensor(v) then return v:device() == device and v or v:to {device = device} end
    if type(v) ~= "table" or getmetatable(v) ~= nil then return v end
    if seen[v] then return seen[v] end
    local out = {}
    seen[v] = out
    for k, x in pairs(v) do out[k] = walk(x) end
    return out
  end
  local out = walk(batch)
  if type(out) == "table" and getmetatable(out) == nil then
    local rows, host = mask_rows.precompute(batch, device)
    if next(rows) ~= nil then out._mask_rows, out._mask_rows_host = rows, host end
    out._device = device
  end
  return out
end

function M.to(batch, device)
  if device == "cpu" then return batch end
  if type(batch) == "table" and getmetatable(batch) == nil and batch._device == device then return batch end
  local ticket, out = cuda.upload_async(device, M.move, batch, device)
  cuda.await_upload(ticket)
  return out
end

return M
