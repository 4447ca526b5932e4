--- Where the host time of a HERO pre-training step goes, op by op: wraps every C function of
-- hero.core and every tensor method with a timer, runs the bench model (examples/bench_pretrain.lua's
-- batch and configs) and prints the ops by total host time with their call counts. On a GPU the
-- kernels run asynchronously, so the times are what each call costs the host (launches,
-- allocations, argument checks, host-device copies that wait for the device); the remainder of
-- the step is Lua code between the calls.
--   lua5.4 examples/profile_ops.lua --device cuda:0 --amp bf16 --videos 32 --mode step [--top 30]
--   lua5.4 examples/profile_ops.lua --config small --mode fwd          (on the CPU)
--   lua5.4 examples/profile_ops.lua --config tiny --videos 32 --mode step  (the host's own work per step)
-- With --sync 1 every op waits for the device to finish its kernels, so that the times are the
-- ops' device times (plus their host time); the step is then slower than it runs normally.
-- With --mode fwdbwd or step a second table splits the backward pass by graph node
-- (core.backward_profile_start/stop), with the same meaning of --sync.
-- The header also counts the full Lua collections hero set off per step (core._gc_stats: a
-- collection releases the dead tensors that only Lua still held) and, on a GPU, the allocations
-- the caching allocator could not serve (cudaMalloc). --calls NAME (e.g. core.linear) lists every
-- call of that op in the last timed step: its host time, its tensor arguments, and whether a full
-- collection ran inside it. --gc SOFT,HARD sets the device collection limits as fractions of the
-- allocated device bytes (core._set_device_collect_fractions; default 0.25,0.5).
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local core = hero.core

local here = debug.getinfo(1, "S").source:match("^@(.*)/profile_ops%.lua$") or "examples"
local bench = assert(loadfile(here .. "/bench_pretrain.lua"))("library")

local a = {config = "hero", device = "cpu", amp = "", videos = 1, mode = "step", reps = 5, top = 30, threads = 1,
           sync = 0, calls = "", gc = ""}
local i = 1
while arg[i] do
  local key = arg[i]:match("^%-%-(.+)$")
  if not key or arg[i + 1] == nil then
    error("usage: profile_ops.lua [--config hero|small|tiny] [--device D] [--amp bf16] [--videos N] "
      .. "[--mode fwd|fwdbwd|step] [--reps N] [--top N] [--threads N] [--sync 0|1] [--calls NAME] [--gc SOFT,HARD]")
  end
  a[key] = tonumber(arg[i + 1]) or arg[i + 1]
  i = i + 2
end

local now = core._now or core._bench_now
local stats = {}
local depth = 0
local sync_each = a.sync == 1 and a.device ~= "cpu" and hero.cuda.synchronize or function() end

--- fn wrapped: the outermost wrapped call of a nest is charged (a C op calling back into Lua
-- that calls another op is charged once).
local gc_stats = core._gc_stats
local call_log -- the --calls op's calls in the step being timed: {seconds, arguments, collections}

--- The tensor arguments of a call as "shape dtype" strings.
local function describe(...)
  local parts = {}
  for k = 1, select("#", ...) do
    local v = select(k, ...)
    if core.is_tensor(v) then
      parts[#parts + 1] = "[" .. table.concat(v:size(), "x") .. "] " .. v:dtype()
    end
  end
  return table.concat(parts, ", ")
end

local function wrap(name, fn)
  local logged = name == a.calls
  return function(...)
    if depth > 0 then return fn(...) end
    depth = 1
    local collections0 = logged and gc_stats().collections
    local t0 = now()
    local r = table.pack(pcall(fn, ...))
    sync_each()
    local dt = now() - t0
    depth = 0
    if logged and call_log then
      call_log[#call_log + 1] = {dt, describe(...), gc_stats().collections - collections0}
    end
    local s = stats[name]
    if not s then
      s = {name = name, calls = 0, seconds = 0}
      stats[name] = s
    end
    s.calls, s.seconds = s.calls + 1, s.seconds + dt
    if not r[1] then error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end
end

hero.set_num_threads(a.threads)
if a.gc ~= "" then
  local soft, hard = tostring(a.gc):match("^([%d.]+),([%d.]+)$")
  if not soft then error("--gc SOFT,HARD: two fractions, e.g. 0.25,0.5", 0) end
  core._set_device_collect_fractions(tonumber(soft), tonumber(hard))
end
hero.manual_seed(0)
local c = bench.CONFIGS[a.config]
local model = hero.models.HeroForPretraining(bench.model_config(c), {vfeat_dim = bench.VFEAT,
  max_frm_seq_len = bench.MAX_FRM, generator = hero.Generator(1)})
local batch = bench.make_batch(a.videos, 20, 3, 30, 0.15)
if a.device ~= "cpu" then
  model:to(a.device)
  batch = hero.train.Trainer.batch_to(batch, a.device)
end
local opt = hero.optim.AdamW(model:named_parameters(), {lr = 3e-5, betas = {0.9, 0.98}, eps = 1e-6,
  weight_decay = 0.01, no_decay = {"bias", "LayerNorm"}})
local params = model:parameters()
local function sync() if a.device ~= "cpu" then hero.cuda.synchronize() end end

local function loss_of()
  local function plain() return model:forward_mlm(batch).loss end
  if a.amp ~= "" then return hero.amp.autocast(a.amp, plain) end
  return plain()
end

local function step()
  if a.mode == "fwd" then
    model:evaluate()
    return hero.no_grad(loss_of)
  end
  model:train()
  for _, p in ipairs(params) do p.grad = nil end
  loss_of():backward()
  if a.mode == "step" then
    local _, factor = hero.optim.clip_grad_norm(params, 1.0, {apply = false})
    opt:step {grad_scale = factor}
  end
end

for _ = 1, 2 do step() end -- warm-up: allocator caches, lazily made state
sync()

-- wrap after the warm-up, so that only the timed steps are counted
local originals = {}
for _, tbl in ipairs {core, core.Tensor} do
  for name, fn in pairs(tbl) do
    if type(fn) == "function" and debug.getinfo(fn, "S").what == "C" and name:sub(1, 1) ~= "_"
      and not name:match("^backward_profile") then
      originals[#originals + 1] = {tbl, name, fn}
      tbl[name] = wrap((tbl == core and "core." or ":") .. name, fn)
    end
  end
end

collectgarbage()
-- what a full collection costs with nothing to free: the traversal of the live heap (the model,
-- the batch, the optimizer's state); the rest of a collection's cost in the step is finalizing
local idle_collection
do
  local c0 = now()
  for _ = 1, 5 do collectgarbage() end
  idle_collection = (now() - c0) / 5
end
local profile_start, profile_stop = core.backward_profile_start, core.backward_profile_stop
local device_index = a.device ~= "cpu" and (tonumber(a.device:match(":(%d+)$")) or 0)
local function cuda_mallocs() return device_index and hero.cuda.memory_stats(device_index).num_cuda_mallocs or 0 end
if device_index then hero.cuda.reset_peak_memory_stats(device_index) end
local gc0, mallocs0 = gc_stats(), cuda_mallocs()
profile_start(a.sync == 1)
local t0 = now()
for rep = 1, a.reps do
  if rep == a.reps then call_log = {} end
  step()
end
local host = now() - t0
sync()
local total = now() - t0
local gc1, mallocs1 = gc_stats(), cuda_mallocs()
local nodes = profile_stop()
for _, o in ipairs(originals) do o[1][o[2]] = o[3] end

local list, in_ops, calls = {}, 0, 0
for _, s in pairs(stats) do
  list[#list + 1] = s
  in_ops, calls = in_ops + s.seconds, calls + s.calls
end
table.sort(list, function(x, y) return x.seconds > y.seconds end)
print(string.format("# %s %s amp=%s videos=%d mode=%s sync=%d: %.1f ms per step (host returns after %.1f ms); "
  .. "%d op calls per step, %.1f ms of host time in them (%.1f us per call), %.1f ms in Lua between them",
  a.config, a.device, a.amp ~= "" and a.amp or "none", a.videos, a.mode, a.sync, total / a.reps * 1e3,
  host / a.reps * 1e3, calls // a.reps,
  in_ops / a.reps * 1e3, in_ops / math.max(calls, 1) * 1e6, (host - in_ops) / a.reps * 1e3))
--- The a.top slowest rows of a list sorted by time: name, calls, milliseconds per step, per call.
local function print_rows(heading, rows, name_of)
  print(string.format("%-28s %8s %10s %10s", heading, "calls", "ms/step", "us/call"))
  for k = 1, math.min(a.top, #rows) do
    local s = rows[k]
    print(string.format("%-28s %8d %10.2f %10.1f", name_of(s), s.calls // a.reps, s.seconds / a.reps * 1e3,
      s.seconds / s.calls * 1e6))
  end
end
local per = function(field) return (gc1[field] - gc0[field]) / a.reps end
print(string.format("# per step: %.1f full collections (%.1f set off by new device bytes, %.1f by backward, %.1f while "
  .. "the host waited) taking %.2f ms, %.0f tensors finalized; %.1f cudaMalloc calls%s", per("collections"),
  per("device_collections"), per("pending_collections"), per("idle_collections"), per("seconds") * 1e3,
  per("finalized"), (mallocs1 - mallocs0) / a.reps, device_index and string.format("; peak device memory %.0f MiB",
  hero.cuda.memory_stats(device_index).peak / 2 ^ 20) or ""))
print(string.format("# Lua heap %.0f KiB; a full collection with nothing to free takes %.2f ms",
  collectgarbage("count"), idle_collection * 1e3))
print_rows("op", list, function(s) return s.name end)
if call_log then
  print(string.format("# every %s call of the last step: host us, collections inside, tensor arguments", a.calls))
  for k, entry in ipairs(call_log) do
    print(string.format("%4d %10.1f %3d  %s", k, entry[1] * 1e6, entry[3], entry[2]))
  end
end

if #nodes > 0 then
  table.sort(nodes, function(x, y) return x.seconds > y.seconds end)
  local in_nodes = 0
  for _, s in ipairs(nodes) do in_nodes = in_nodes + s.seconds end
  print(string.format("# backward by node (%s): %.1f ms per step in %d node kinds",
    a.sync == 1 and "device times: each node waits for the GPU" or "host times", in_nodes / a.reps * 1e3, #nodes))
  print_rows("node", nodes, function(s) return s.op end)
end
