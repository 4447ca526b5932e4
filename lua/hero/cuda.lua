--- hero.cuda: the CUDA backend's queries and controls (from hero.core.cuda).
-- Works everywhere: without the backend compiled in, or on a machine without a GPU, available()
-- is false, device_count() is 0 and moving a tensor to "cuda" raises a clear error.
--   available()                 true when at least one GPU can be used
--   compiled()                  whether this build contains the backend
--   device_count()              number of usable GPUs
--   device_name([i])            name of GPU i (0-based ordinal, default 0)
--   memory_stats([i])           {allocated, reserved, peak, cached, free, total, num_allocs,
--                               num_cuda_mallocs, num_oom_retries} in bytes / counts; reserved also
--                               holds the free blocks kept for uploads (upload_async), which cached
--                               does not count
--   reset_peak_memory_stats([i])
--   empty_cache([i])            collects garbage, returns cached blocks to the driver (bytes released)
--   synchronize([i])            waits for the queued work of GPU i (default: every GPU used)
--   host_mirrored(t)            true when t (a GPU tensor) is a small integer or bool tensor uploaded
--                               whole from the host and not written since: its values are also kept
--                               on the host, and reading them back (index checks included) does not
--                               wait for the GPU
--   set_allow_tf32(b), allow_tf32()  TF32 tensor cores for f32 matrix products (off by default)
--   all_finite(t | {t, ...})    true when no element is inf or NaN (CPU and GPU tensors)
--   upload_async(device, fn, ...) -> ticket, fn's results
--                               runs fn(...) with this thread's copies from the host to `device`
--                               queued on the device's upload stream: they overlap the computation
--                               queued there, and the thread waits only while the driver takes in
--                               its bytes. fn should only copy host tensors to the device (a kernel
--                               it launched would not be ordered after the transfers). On the CPU
--                               it just runs fn (ticket false).
--   await_upload(ticket)        on the thread that uses the uploaded tensors: kernels queued after
--                               this read them complete (the host does not wait). Each ticket once;
--                               false does nothing. hero.data's PrefetchLoader{device = ...} uses
--                               the pair so that its workers upload the batches they make.
local core = require "hero.core"

local cuda = {}
for name, fn in pairs(core.cuda) do cuda[name] = fn end

--- Alias of available(), under PyTorch's name.
function cuda.is_available() return cuda.available() end

--- The device string of ordinal i (default 0): "cuda:i".
function cuda.device(i)
  local n = math.tointeger(i or 0)
  if not n or n < 0 then error("cuda.device: the index must be an integer >= 0, got " .. tostring(i), 2) end
  return "cuda:" .. n
end

local function finish_upload(ok, ...)
  local ticket = core.cuda._upload_end()
  if not ok then
    -- the tensors made so far are garbage: the compute stream still waits for their transfers, so
    -- that their blocks are not reused under them
    pcall(core.cuda._upload_await, ticket)
    error(..., 0)
  end
  return ticket, ...
end

function cuda.upload_async(device, fn, ...)
  if type(fn) ~= "function" then error("cuda.upload_async: expected (device, fn, ...), got a " .. type(fn), 2) end
  if device == "cpu" then return false, fn(...) end
  core.cuda._upload_begin(device)
  return finish_upload(pcall(fn, ...))
end

function cuda.await_upload(ticket)
  if ticket == false then return end
  if math.type(ticket) ~= "integer" then
    error("cuda.await_upload: expected a ticket from upload_async, got " .. tostring(ticket), 2)
  end
  core.cuda._upload_await(ticket)
end

return cuda
