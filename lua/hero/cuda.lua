--- hero.cuda: the CUDA backend's queries and controls (from hero.core.cuda).
-- Works everywhere: without the backend compiled in, or on a machine without a GPU, available()
-- is false, device_count() is 0 and moving a tensor to "cuda" raises a clear error.
--   available()                 true when at least one GPU can be used
--   compiled()                  whether this build contains the backend
--   device_count()              number of usable GPUs
--   device_name([i])            name of GPU i (0-based ordinal, default 0)
--   memory_stats([i])           {allocated, reserved, peak, cached, free, total, num_allocs,
--                               num_cuda_mallocs, num_oom_retries} in bytes / counts
--   reset_peak_memory_stats([i])
--   empty_cache([i])            collects garbage, returns cached blocks to the driver (bytes released)
--   synchronize([i])            waits for the queued work of GPU i (default: every GPU used)
--   host_mirrored(t)            true when t (a GPU tensor) is a small integer or bool tensor uploaded
--                               whole from the host and not written since: its values are also kept
--                               on the host, and reading them back (index checks included) does not
--                               wait for the GPU
--   set_allow_tf32(b), allow_tf32()  TF32 tensor cores for f32 matrix products (off by default)
--   all_finite(t | {t, ...})    true when no element is inf or NaN (CPU and GPU tensors)
local core = require "hero.core"

local cuda = {}
for name, fn in pairs(core.cuda) do cuda[name] = fn end

--- Alias of available(), under PyTorch's name.
function cuda.is_available() return cuda.available() end

--- The device string of ordinal i (default 0): "cuda:i".
function cuda.device(i) return "cuda:" .. tostring(math.tointeger(i or 0)) end

return cuda
