--- hero.dist: data-parallel training over MPI (processes started by mpirun, one per rank).
--
-- The collectives (hero.core.dist, in C, over MPI) work in place on CPU tensors; on CUDA tensors
-- they go through NCCL (one GPU per rank; the communicator is made on first use):
--   dist.init([{timeout = 600}]) -> rank, world_size   (timeout: the watchdog, see below; 0 = off)
--   dist.rank(), dist.world_size(), dist.available(), dist.is_initialized()
--   dist.all_reduce(t [, "sum"|"mean"|"max"|"min"])  in place, f32/f64/i64/i32 ("mean": floats)
--   dist.all_gather(t) -> tensor, counts   concatenated along dim 1; sizes may differ in every dim:
--                                          dims 2.. are zero-padded to the largest rank's size
--   dist.broadcast(t [, root = 0])         in place; ranks are 0-based as in MPI
--   dist.barrier(), dist.finalize(), dist.abort(msg [, code])
-- Every collective checks that the ranks passed matching tensors (an error on every rank rather
-- than a hang). The watchdog ends the whole job with a message when one collective waits longer
-- than the timeout for the other ranks (a rank died, hangs, or skipped the call).
--
-- Written in Lua on top of them: shard, all_gather_object, main, rank_seed/seed, pad_cat, all_gather_grad (the
-- differentiable gather of the VSM ranking loss), broadcast_parameters, average_gradients, run;
-- GradReducer (in C) overlaps the averaging with the backward pass.
local core = require "hero.core"
local autograd = require "hero.autograd"

local dist = {}
for name, fn in pairs(core.dist) do dist[name] = fn end
local mpi_all_reduce, mpi_all_gather, mpi_broadcast = dist.all_reduce, dist.all_gather, dist.broadcast
local mpi_finalize = dist.finalize

-- ------------------------------------------------------------------ CUDA tensors: NCCL

-- CUDA tensors go through NCCL (hero.cuda._nccl_*, loaded at run time); MPI still starts the
-- job, carries the communicator's id from rank 0 to the others and checks that the ranks passed
-- matching tensors, as it does for CPU tensors.
local function is_cuda(t) return core.is_tensor(t) and t:device() ~= "cpu" end

local DTYPE_CODE = {f32 = 1, f64 = 2, bf16 = 3, f16 = 4, i64 = 5, i32 = 6, u8 = 7, bool = 8}

-- The NCCL communicator of this process, on t's device (made on first use, by every rank).
local function nccl_ready(t, op)
  if not dist.is_initialized() then error(op .. ": call hero.dist.init() first", 3) end
  local dev = math.tointeger(t:device():match("^cuda:(%d+)$"))
  local have = core.cuda._nccl_device()
  if have == dev then return end
  if have ~= nil then
    error(string.format("%s: the tensor is on cuda:%d but this rank's NCCL communicator is on cuda:%d", op, dev, have),
      3)
  end
  -- the 128-byte id travels as 32 i32 words (what MPI broadcasts here)
  local words = core.zeros({32}, {dtype = "i32"})
  if dist.rank() == 0 then
    local id = core.cuda._nccl_unique_id()
    local w = {}
    for i = 1, 32 do w[i] = string.unpack("<i4", id, 4 * i - 3) end
    words:copy_(core.tensor(w, {dtype = "i32"}))
  end
  mpi_broadcast(words, 0)
  local parts = {}
  for i, v in ipairs(words:totable()) do parts[i] = string.pack("<i4", v) end
  core.cuda._nccl_init(dist.rank(), dist.world_size(), table.concat(parts), dev)
end

-- Checks over MPI that every rank passed a tensor with this dtype and (unless sizes_differ) this
-- element count, so a mismatch is an error on every rank rather than a hang inside NCCL.
local function check_matching(t, op, sizes_differ)
  local code, n = DTYPE_CODE[t:dtype()], sizes_differ and 0 or t:numel()
  local v = core.tensor({code, -code, n, -n}, {dtype = "i64"})
  mpi_all_reduce(v, "max")
  local m = v:totable()
  if m[1] ~= code or -m[2] ~= code then error(op .. ": the ranks passed different tensors (dtypes differ)", 3) end
  if m[3] ~= n or -m[4] ~= n then error(op .. ": the ranks passed different element counts", 3) end
end

--- all_reduce(t [, op]): in place; CUDA tensors through NCCL, CPU tensors through MPI.
function dist.all_reduce(t, op)
  op = op or "sum"
  local what = "hero.dist.all_reduce"
  if op ~= "sum" and op ~= "mean" and op ~= "max" and op ~= "min" then
    error(string.format("%s: unknown reduction '%s' (sum, mean, max, min)", what, tostring(op)), 2)
  end
  if not is_cuda(t) then return mpi_all_reduce(t, op) end
  local floating = t:dtype() == "f32" or t:dtype() == "f64" or t:dtype() == "bf16" or t:dtype() == "f16"
  if op == "mean" and not floating then error(what .. ": 'mean' needs a floating tensor, got " .. t:dtype(), 2) end
  nccl_ready(t, what)
  check_matching(t, what)
  local c = t:is_contiguous() and t or t:contiguous()
  core.cuda._nccl_all_reduce_(c, op == "mean" and "sum" or op)
  if op == "mean" then c:div_(dist.world_size()) end
  if c ~= t then t:copy_(c) end
  return t
end

--- broadcast(t [, root = 0]): in place.
function dist.broadcast(t, root)
  if not is_cuda(t) then return mpi_broadcast(t, root) end
  local what = "hero.dist.broadcast"
  nccl_ready(t, what)
  check_matching(t, what)
  local c = t:is_contiguous() and t or t:contiguous()
  core.cuda._nccl_broadcast_(c, root or 0)
  if c ~= t then t:copy_(c) end
  return t
end

--- all_gather(t) -> tensor, counts: as for CPU tensors (sizes may differ; padded with zeros).
function dist.all_gather(t)
  if not is_cuda(t) then return mpi_all_gather(t) end
  local what = "hero.dist.all_gather"
  nccl_ready(t, what)
  check_matching(t, what, true)
  local world, nd = dist.world_size(), t:dim()
  -- every rank's shape, over MPI (a 0-dim tensor counts as one element along dim 1)
  local shape = nd == 0 and {1} or t:size()
  local ndims = core.tensor({nd, -nd}, {dtype = "i64"})
  mpi_all_reduce(ndims, "max")
  local nmax = ndims:totable()
  if nmax[1] ~= nd or -nmax[2] ~= nd then
    error(what .. ": the ranks passed different tensors (numbers of dimensions differ)", 2)
  end
  local shapes = mpi_all_gather(core.tensor({shape}, {dtype = "i64"})):totable()
  local maxsize, counts = {}, {}
  for r = 1, world do
    counts[r] = shapes[r][1]
    for d = 1, #shape do maxsize[d] = math.max(maxsize[d] or 0, shapes[r][d]) end
  end
  -- pad this rank's tensor to the largest shape, gather, then keep each rank's rows
  local padded = core.zeros(maxsize, {dtype = t:dtype(), device = t:device()})
  local view = padded
  for d = 1, #shape do view = view:narrow(d, 1, shape[d]) end
  view:copy_(nd == 0 and t:reshape({1}) or t)
  local out_shape = {world * maxsize[1]}
  for d = 2, #maxsize do out_shape[d] = maxsize[d] end
  local all = core.empty(out_shape, {dtype = t:dtype(), device = t:device()})
  core.cuda._nccl_all_gather(padded, all)
  local parts = {}
  for r = 1, world do
    if counts[r] > 0 then parts[#parts + 1] = all:narrow(1, (r - 1) * maxsize[1] + 1, counts[r]) end
  end
  local out = #parts > 0 and core.cat(parts, 1) or all:narrow(1, 1, 0)
  return out, counts
end

--- finalize(): ends NCCL (when used) and MPI.
function dist.finalize(...)
  if core.cuda and core.cuda._nccl_device and core.cuda._nccl_device() ~= nil then core.cuda._nccl_finalize() end
  return mpi_finalize(...)
end

--- The elements of list that rank `rank` of `world` reads: list[rank + 1], list[rank + 1 + world],
-- ... (the reference's video_ids[rank::world]). rank and world default to this process's.
function dist.shard(list, rank, world)
  rank = rank or dist.rank()
  world = world or dist.world_size()
  if type(list) ~= "table" then error("hero.dist.shard: expected an array, got " .. type(list), 2) end
  if math.type(world) ~= "integer" or world < 1 then
    error("hero.dist.shard: world must be a positive integer, got " .. tostring(world), 2)
  end
  if math.type(rank) ~= "integer" or rank < 0 or rank >= world then
    error(string.format("hero.dist.shard: rank must be an integer in 0..%d, got %s", world - 1, tostring(rank)), 2)
  end
  local out = {}
  for i = rank + 1, #list, world do out[#out + 1] = list[i] end
  return out
end

--- all_gather_object(value) -> {rank 0's value, rank 1's, ...}: a Lua value that JSON can hold
-- (tables of strings, numbers, booleans; no NaN or infinities), gathered from every rank over
-- MPI as its JSON text.
function dist.all_gather_object(value)
  local json = require "hero.json"
  local ok, text = pcall(json.encode, value)
  if not ok then error("hero.dist.all_gather_object: the value is not JSON: " .. tostring(text), 2) end
  local all, counts = mpi_all_gather(core.bytes_to_tensor(text))
  local out, at = {}, 0
  for r, n in ipairs(counts) do
    out[r] = json.decode(core.tensor_to_bytes(all:narrow(1, at + 1, n)), {source = "rank " .. (r - 1)})
    at = at + n
  end
  return out
end

--- Runs a script's main function: in a distributed job (distributed true) under dist.run, so that
-- a failing rank ends the whole job instead of leaving the others waiting, then finalize; else
-- as pcall. Returns true, or false and the error's message (its first line, not the traceback).
function dist.main(fn, distributed)
  if not distributed then return pcall(fn) end
  local ok, err = pcall(dist.run, fn)
  if not ok then return false, (tostring(err):match("^[^\n]*")) end
  dist.finalize()
  return true
end

--- The seed of rank `rank` derived from one run seed: rank 0 keeps the seed itself (a one-process
-- run is the same as before), the others get well-separated values (a splitmix64 step).
function dist.rank_seed(seed, rank)
  rank = rank or dist.rank()
  if math.type(seed) ~= "integer" then error("hero.dist.rank_seed: seed must be an integer", 2) end
  if math.type(rank) ~= "integer" or rank < 0 then error("hero.dist.rank_seed: rank must be an integer >= 0", 2) end
  if rank == 0 then return seed end
  local z = seed + rank * -7046029254386353131 -- 0x9E3779B97F4A7C15 (wraps around like uint64)
  z = (z ~ (z >> 30)) * -4658895280553007687     -- 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * -7723592293110705685     -- 0x94D049BB133111EB
  z = z ~ (z >> 31)
  return z & 0x7fffffffffffffff
end

--- Seeds hero's default generator with this rank's seed; returns it.
function dist.seed(seed)
  local s = dist.rank_seed(seed)
  core.manual_seed(s)
  return s
end

--- Zero-pads t at the end of every dimension from 2 on up to sizes[d] (differentiable: built
-- with cat).
local function pad_to(t, sizes)
  for d = 2, t:dim() do
    local missing = sizes[d] - t:size(d)
    if missing > 0 then
      local shape = t:size()
      shape[d] = missing
      t = core.cat({t, core.zeros(shape, {dtype = t:dtype()})}, d)
    end
  end
  return t
end

--- One process's all_gather: concatenates tensors along dim 1, zero-padding the other dims to
-- the largest size (what all_gather returns for these tensors on as many ranks). Differentiable.
function dist.pad_cat(list)
  if type(list) ~= "table" or #list == 0 then error("hero.dist.pad_cat: expected a non-empty array of tensors", 2) end
  local sizes = {}
  for _, t in ipairs(list) do
    for d = 2, t:dim() do sizes[d] = math.max(sizes[d] or 0, t:size(d)) end
  end
  local parts = {}
  for i, t in ipairs(list) do parts[i] = pad_to(t, sizes) end
  return core.cat(parts, 1)
end

--- all_gather as an autograd op (the reference's VsmAllgather): the forward gathers every rank's
-- tensor (padded as all_gather does), the backward returns only this rank's slice of the
-- gradient. Every rank computing the same loss on the gathered tensors and then averaging the
-- gradients gives the objective mean_r(local_r) + (1/R) * loss(gathered).
dist.all_gather_grad = autograd.Function {
  forward = function(ctx, t)
    local out, counts = dist.all_gather(t)
    local offset = 0
    for r = 1, dist.rank() do offset = offset + counts[r] end
    ctx.offset, ctx.size = offset, t:size()
    return out
  end,
  backward = function(ctx, g)
    local mine = g:narrow(1, ctx.offset + 1, ctx.size[1] or 1)
    for d = 2, #ctx.size do mine = mine:narrow(d, 1, ctx.size[d]) end
    if #ctx.size == 0 then mine = mine:reshape({}) end
    return mine:contiguous()
  end,
}

local function tensors_of(params)
  if type(params) ~= "table" then
    error("hero.dist: params must be a list of tensors or named_parameters(), got " .. type(params), 3)
  end
  local list = {}
  for i, p in ipairs(params) do
    local t = core.is_tensor(p) and p or (type(p) == "table" and p[2]) or nil
    if not core.is_tensor(t) then
      error(string.format("hero.dist: parameter %d is neither a tensor nor a {name, tensor} pair", i), 3)
    end
    list[#list + 1] = t
  end
  return list
end

-- Groups tensors by the dtype they are exchanged in (f32 and f64 as they are; the half types
-- travel as f32).
local function buckets(list)
  local by, order = {}, {}
  for _, t in ipairs(list) do
    local dt = t:dtype()
    if dt ~= "f64" then dt = "f32" end
    local key = dt .. "@" .. t:device()
    if not by[key] then
      by[key] = {dtype = dt, device = t:device(), tensors = {}}
      order[#order + 1] = by[key]
    end
    local b = by[key].tensors
    b[#b + 1] = t
  end
  return order
end

--- Gives every rank rank root's values of the parameters (an array of tensors or {name, tensor}
-- pairs): one flat buffer per dtype, one broadcast each.
function dist.broadcast_parameters(params, root)
  root = root or 0
  core.no_grad(function()
    for _, b in ipairs(buckets(tensors_of(params))) do
      local parts = {}
      for i, t in ipairs(b.tensors) do parts[i] = t:detach():reshape(-1):to(b.dtype) end
      local flat = core.cat(parts, 1)
      dist.broadcast(flat, root)
      local off = 0
      for _, t in ipairs(b.tensors) do
        local n = t:numel()
        t:detach():copy_(flat:narrow(1, off + 1, n):view(t:size()))
        off = off + n
      end
    end
  end)
end

--- Averages the gradients of params over the ranks: the gradients (a missing one counts as
-- zeros) and one has-gradient flag per parameter go into one flat buffer per dtype, reduced by
-- ONE all-reduce each; a parameter gets a gradient when any rank had one, so every rank updates
-- the same parameters. `extra` (optional array of numbers, e.g. losses) travels in the same
-- buffer; their means over the ranks are returned.
function dist.average_gradients(params, extra)
  local means
  core.no_grad(function()
    local bs = buckets(tensors_of(params))
    if #bs == 0 then bs = {{dtype = "f64", device = "cpu", tensors = {}}} end
    for bi, b in ipairs(bs) do
      local flags = {}
      local total = 0
      for i, t in ipairs(b.tensors) do
        flags[i] = t.grad and 1 or 0
        total = total + t:numel()
      end
      local tail = {}
      for _, f in ipairs(flags) do tail[#tail + 1] = f end
      local n_extra = (bi == 1 and extra) and #extra or 0
      for i = 1, n_extra do tail[#tail + 1] = extra[i] end
      if total + #tail == 0 then return end
      -- the flat buffer: each gradient copied into its slice (zeros for a missing one), then the tail
      local flat = core.empty({total + #tail}, {dtype = b.dtype, device = b.device})
      local pos = 0
      for _, t in ipairs(b.tensors) do
        local n = t:numel()
        local dst = flat:narrow(1, pos + 1, n)
        if t.grad then dst:view(t:size()):copy_(t.grad) else dst:zero_() end
        pos = pos + n
      end
      if #tail > 0 then flat:narrow(1, total + 1, #tail):copy_(core.tensor(tail, {dtype = b.dtype}):to(b.device)) end
      dist.all_reduce(flat, "mean")
      local off = 0
      local nparam = #b.tensors
      local flag_vals = #tail > 0 and flat:narrow(1, total + 1, #tail):totable() or {}
      for i, t in ipairs(b.tensors) do
        local n = t:numel()
        if flag_vals[i] > 0 then
          local avg = flat:narrow(1, off + 1, n):view(t:size())
          if t.grad == nil then
            t.grad = avg:to(t:dtype()):clone()
          else
            t.grad:copy_(avg)
          end
        end
        off = off + n
      end
      if n_extra > 0 then
        means = {}
        for i = 1, n_extra do means[i] = flag_vals[nparam + i] end
      end
    end
  end)
  return means
end

local core_grad_reducer = core.dist.GradReducer

--- Whether a GradReducer can take these parameters (f32/f64 tensors on the CPU).
function dist.overlap_possible(params)
  for _, t in ipairs(tensors_of(params)) do
    if t:device() ~= "cpu" or (t:dtype() ~= "f32" and t:dtype() ~= "f64") then return false end
  end
  return true
end

--- GradReducer(params [, {bucket_mb = 25}]): the gradient averaging of average_gradients,
-- overlapped with the backward pass. `r:begin()` before the last backward of an update: while that
-- pass runs, every parameter whose gradient is complete is copied into its bucket (the parameters
-- cut into buckets of about bucket_mb MiB, last layers first) and a complete bucket starts its sum
-- over the ranks at once; `r:finish([extra])` after it starts the rest, waits, leaves the means in
-- the parameters' .grad and returns the means of the extra numbers. `r:counts()` -> buckets,
-- buckets started during the pass. CPU f32/f64 parameters (see overlap_possible).
function dist.GradReducer(params, opts)
  if opts ~= nil then
    if type(opts) ~= "table" then error("hero.dist.GradReducer: options must be a table ({bucket_mb =})", 2) end
    for k in pairs(opts) do
      if k ~= "bucket_mb" then
        error(string.format("hero.dist.GradReducer: unknown option '%s' (bucket_mb)", tostring(k)), 2)
      end
    end
  end
  local mb = opts and opts.bucket_mb or 25
  -- NaN made buckets of one byte; past 2^30 MiB the byte count leaves the integers
  if type(mb) ~= "number" or not (mb > 0 and mb <= 2 ^ 30) then
    error("hero.dist.GradReducer: bucket_mb must be a positive number of MiB (at most 2^30), got " .. tostring(mb), 2)
  end
  return core_grad_reducer(tensors_of(params), math.max(1, math.floor(mb * 2 ^ 20)))
end

--- Runs fn(...) and returns its results; when it raises an error in a job of several ranks, prints
-- the error (with its traceback) and ends every rank of the job (MPI_Abort) instead of leaving
-- the others waiting in a collective. Use it around a worker's main function.
function dist.run(fn, ...)
  if type(fn) ~= "function" and not (type(fn) == "table" and (getmetatable(fn) or {}).__call) then
    error("hero.dist.run: expected a function, got " .. type(fn), 2)
  end
  local res = table.pack(xpcall(fn, debug.traceback, ...))
  if not res[1] then
    local err = tostring(res[2])
    if dist.is_initialized() and dist.world_size() > 1 then
      dist.abort("failed: " .. err, 1)
    end
    error(err, 0)
  end
  return table.unpack(res, 2, res.n)
end

return dist
