--- hero.data.prefetch: PrefetchLoader, a TaskLoader whose batches are read and collated on worker
-- threads (hero.core.worker_pool) while the model computes.
--
--   local L = hero.data.PrefetchLoader{workers = 2, depth = 4, loader_spec = {
--     dataset = {type = "VideoSubDataset", video_db = "video_db/tv", sub_db = "txt_db/tv_subtitles.db"},
--     task = "mlm", batch_size = 8, seed = 1, bucket = 4}}
--   local batch = L:next()       -- the same batches, bit for bit, as TaskLoader with these options
--   print(L:wait_seconds())      -- time :next() took in all (planning, hand-over, waiting)
--   print(L:blocked_seconds())   -- of which blocked on batches the workers had not finished
--
-- The main thread keeps everything that decides the sequence: a TaskLoader built from the same
-- spec plans each batch (its videos and its sampling seed, hero.data.loader's plan_next) and the
-- workers, each with its own Lua state, dataset and TaskLoader, only run make_batch(plan). Plans
-- are submitted up to `depth` ahead and the results come back in submission order, so the
-- sequence does not depend on the thread count or timing. Skips are counted (and on_skip called)
-- on the main thread when a batch is consumed; a worker's error (on_error = "error", a bug) is
-- raised by the :next() that consumes that batch, with the worker's traceback.
--
-- state() is the position of the next batch to consume (what TaskLoader:state() would say there:
-- the two are interchangeable), so in-flight batches are simply planned and read again after
-- set_state().
--
-- prefetch_loaders{loaders = {mlm = spec, vsm = spec, ...}, workers = 2} gives one loader per task
-- over ONE pool of worker threads (what examples/pretrain.lua --workers uses): every task keeps
-- `depth` batches in flight, so whichever task the MetaLoader draws next finds its batch ready.
--
-- device = "cuda:N" (either constructor): the workers also move each batch to that GPU
-- (hero.train.device_batch, the mask rows included) on the device's upload stream
-- (hero.cuda.upload_async), so that the transfer overlaps the model's computation instead of
-- stopping the training thread; :next() then returns the batch on the device, and the kernels
-- queued after it read it complete (hero.cuda.await_upload; the host does not wait). "cpu" or nil:
-- batches stay on the host.
local core = require "hero.core"
local loader = require "hero.data.loader"

local M = {}

local Prefetch = {}
Prefetch.__index = Prefetch
Prefetch.__name = "hero.data.PrefetchLoader"

local function fail(fmt, ...)
  error("PrefetchLoader: " .. string.format(fmt, ...), 3)
end

--- A dataset from a spec {type = "VideoSubDataset", "MemoryDataset" or "ConcatDataset", <its options>...}: plain
-- values, so that every worker state can build its own.
function M.dataset_from_spec(spec)
  if type(spec) ~= "table" or type(spec.type) ~= "string" then
    error("dataset spec must be a table {type = 'VideoSubDataset' or 'MemoryDataset', <options>}", 2)
  end
  local datasets = require "hero.data.datasets"
  local ctor = datasets[spec.type]
  if type(ctor) ~= "function" then
    error(string.format("dataset spec: unknown type '%s' (VideoSubDataset, MemoryDataset, ConcatDataset)", spec.type),
      2)
  end
  local opts = {}
  for k, v in pairs(spec) do if k ~= "type" then opts[k] = v end end
  return ctor(opts)
end

--- A TaskLoader from a spec: the TaskLoader's options with dataset = a dataset spec (or over the
-- dataset ds already built from it).
function M.loader_from_spec(spec, ds)
  local opts = {}
  for k, v in pairs(spec) do opts[k] = v end
  opts.dataset = ds or M.dataset_from_spec(spec.dataset)
  return loader.TaskLoader(opts)
end

-- What each worker runs: one TaskLoader per loader key (datasets shared where the specs share
-- one dataset table), building planned batches.
local WORKER = [[
local specs = ...
local prefetch = require "hero.data.prefetch"
local loaders, datasets = {}, {}
for key, spec in pairs(specs) do
  local ds = datasets[spec.dataset]
  if ds == nil then
    ds = prefetch.dataset_from_spec(spec.dataset)
    datasets[spec.dataset] = ds
  end
  loaders[key] = prefetch.loader_from_spec(spec, ds)
end
return function(job)
  local L = loaders[job.key]
  local ds = L.dataset
  local dropped = ds.stats and ds.stats.frames_dropped or 0
  local batch, used, skipped = L:make_batch(job)
  local res = {batch = batch, used = used, skipped = skipped,
               frames_dropped = (ds.stats and ds.stats.frames_dropped or 0) - dropped}
  if job.device and batch ~= nil then
    -- the batch goes to the GPU from here, on the device's upload stream (hero.cuda.upload_async)
    res.upload, res.batch = require("hero.cuda").upload_async(job.device, require("hero.train.device_batch").move,
      batch, job.device)
  end
  return res
end
]]

-- ------------------------------------------------------------------ the shared pool

-- A worker pool serving several loaders: jobs of every loader go through one FIFO, and results are
-- collected in that order and kept until their loader asks for them.
local Group = {}
Group.__index = Group

function Group:submit(key, plan)
  if not self.pool then error("PrefetchLoader: the loader is closed", 3) end
  return self.pool:submit({key = key, ids = plan.ids, seed = plan.seed, device = self.device})
end

-- The compute stream waits for the transfers of a batch a worker moved to the GPU: what is queued
-- from now on reads it complete (and a dropped batch's blocks are not reused under its transfers).
local function await_upload(value)
  if type(value) == "table" and value.upload then
    local ticket = value.upload
    value.upload = nil
    require("hero.cuda").await_upload(ticket)
  end
end

function Group:get(seq)
  while self.collected < seq do
    local ok, r = pcall(self.pool.get, self.pool)
    local n = self.collected + 1
    self.collected = n
    if self.discard[n] then
      self.discard[n] = nil
      if ok then pcall(await_upload, r) end
    else
      self.results[n] = ok and {value = r} or {err = r}
    end
  end
  local r = self.results[seq]
  self.results[seq] = nil
  if r.err then error(r.err, 0) end
  await_upload(r.value)
  return r.value
end

-- A job whose result nobody will ask for (its loader moved elsewhere).
function Group:drop(seq)
  if seq <= self.collected then
    local r = self.results[seq]
    if r and r.value then pcall(await_upload, r.value) end
    self.results[seq] = nil
  else
    self.discard[seq] = true
  end
end

function Group:release()
  self.open = self.open - 1
  if self.open == 0 and self.pool then
    self.pool:close()
    self.pool = nil
  end
end

local function check_common(opts, what)
  local workers = opts.workers or 2
  if math.type(workers) ~= "integer" or workers < 1 then
    fail("opts.workers must be an integer >= 1, got %s", tostring(workers))
  end
  local depth = opts.depth or what
  if math.type(depth) ~= "integer" or depth < 1 then
    fail("opts.depth must be an integer >= 1, got %s", tostring(depth))
  end
  local device = opts.device
  if device ~= nil then
    if type(device) ~= "string" or not (device == "cpu" or device == "cuda" or device:match("^cuda:%d+$")) then
      fail("opts.device must be 'cpu', 'cuda' or 'cuda:N', got %s", tostring(device))
    end
    if device == "cuda" then device = "cuda:0" end
    if device == "cpu" then device = nil end
  end
  return workers, depth, device
end

local function check_keys(opts, known)
  for k in pairs(opts) do
    local ok = false
    for _, n in ipairs(known) do ok = ok or k == n end
    if not ok then fail("unknown option '%s' (%s)", tostring(k), table.concat(known, ", ")) end
  end
end

--- prefetch_loaders{loaders = {name = loader_spec, ...}, workers = 2, depth = 2,
--   on_skip = function(vid, reason) or {name = function}, device = nil | "cuda:N"} -> {name = PrefetchLoader}
-- Several loaders (one per pre-training task) sharing one pool of `workers` threads; each keeps up
-- to `depth` batches in flight. Specs that share one dataset spec table share the dataset (on the
-- main thread and in each worker).
function M.prefetch_loaders(opts)
  if type(opts) ~= "table" then fail("expected an options table") end
  check_keys(opts, {"loaders", "workers", "depth", "on_skip", "device"})
  if opts.on_skip ~= nil and type(opts.on_skip) ~= "function" and type(opts.on_skip) ~= "table" then
    fail("on_skip must be a function or a table {loader name = function}, got %s", type(opts.on_skip))
  end
  for name in pairs(type(opts.on_skip) == "table" and opts.on_skip or {}) do
    if type(opts.loaders) == "table" and opts.loaders[name] == nil then
      fail("on_skip names '%s', which is not one of the loaders", tostring(name))
    end
  end
  local workers, depth, device = check_common(opts, 2)
  if type(opts.loaders) ~= "table" or next(opts.loaders) == nil then
    fail("opts.loaders must be a non-empty table {name = loader_spec}")
  end
  local sent, planners, datasets = {}, {}, {}
  for key, spec in pairs(opts.loaders) do
    if type(spec) ~= "table" then fail("opts.loaders[%s] must be a loader spec table", tostring(key)) end
    local on_skip = spec.on_skip
    if type(opts.on_skip) == "function" then on_skip = opts.on_skip end
    if type(opts.on_skip) == "table" then on_skip = opts.on_skip[key] or on_skip end
    if on_skip ~= nil and type(on_skip) ~= "function" then fail("on_skip of '%s' must be a function", tostring(key)) end
    local copy = {}
    for k, v in pairs(spec) do if k ~= "on_skip" then copy[k] = v end end
    sent[key] = copy
    local main = {}
    for k, v in pairs(copy) do main[k] = v end
    main.on_skip = on_skip
    local ok, err = pcall(function()
      local ds = datasets[spec.dataset]
      if ds == nil then
        ds = M.dataset_from_spec(spec.dataset)
        datasets[spec.dataset] = ds
      end
      planners[key] = M.loader_from_spec(main, ds)
    end)
    if not ok then fail("loader '%s': %s", tostring(key), tostring(err)) end
  end
  -- hand_over: a batch's tensors are made afresh for each job and the worker keeps none of them, so
  -- they move to this thread instead of being copied (the frame tensors are most of a batch's
  -- ~100 MiB at 32 videos)
  local pool = core.worker_pool{n = workers, script = WORKER, init = sent, name = "=hero.data.PrefetchLoader worker",
    hand_over = true}
  local group = setmetatable({pool = pool, collected = 0, results = {}, discard = {}, open = 0, device = device}, Group)
  local out = {}
  for key, planner in pairs(planners) do
    group.open = group.open + 1
    out[key] = setmetatable({loader = planner, dataset = planner.dataset, group = group, key = key, depth = depth,
      workers = workers, inflight = {}, task = planner.task, stats = planner.stats, epoch = planner.epoch,
      waited = 0, waits = 0, blocked = 0}, Prefetch)
  end
  return out
end

--- PrefetchLoader{loader_spec = {dataset = {type =, ...}, task =, batch_size =, seed =, ...},
--   workers = 2, depth = 4, on_skip = function(vid, reason), device = nil | "cuda:N"}
-- loader_spec: hero.data.TaskLoader's options, plain values only (it is copied to every worker),
-- except on_skip which may be given there or beside it (it runs on the main thread).
-- depth: batches planned ahead (in flight); at least 1.
function M.PrefetchLoader(opts)
  if type(opts) ~= "table" then fail("expected an options table") end
  check_keys(opts, {"loader_spec", "workers", "depth", "on_skip", "device"})
  local workers, depth = check_common(opts, 4)
  if type(opts.loader_spec) ~= "table" then
    fail("opts.loader_spec must be the TaskLoader's options with a dataset spec")
  end
  return M.prefetch_loaders{loaders = {opts.loader_spec}, workers = workers, depth = depth, on_skip = opts.on_skip,
    device = opts.device}[1]
end

-- Plans and submits batches until `depth` are in flight.
function Prefetch:_fill()
  local inflight = self.inflight
  while #inflight < self.depth do
    local plan = self.loader:plan_next()
    plan.job = self.group:submit(self.key, plan)
    inflight[#inflight + 1] = plan
  end
end

--- The next batch: the TaskLoader's next batch for the same spec, read ahead by the workers.
function Prefetch:next()
  if not self.group then fail("the loader is closed") end
  local t0 = core._now()
  local L = self.loader
  local empty = 0
  while true do
    self:_fill()
    local plan = table.remove(self.inflight, 1)
    local tb = core._now()
    local res = self.group:get(plan.job)
    self.blocked = self.blocked + (core._now() - tb)
    self.epoch = plan.epoch
    if self.dataset.stats and res.frames_dropped then
      self.dataset.stats.frames_dropped = (self.dataset.stats.frames_dropped or 0) + res.frames_dropped
    end
    local batch = L:_record(res.batch, res.used, res.skipped)
    if batch then
      L.stats.batches = L.stats.batches + 1
      self.last_ids = L.last_ids
      self:_fill()
      local dt = core._now() - t0
      if self.waits == 0 then self.first_wait = dt end
      self.waited = self.waited + dt
      self.waits = self.waits + 1
      return batch
    end
    empty = empty + 1
    L:_check_empty(empty)
  end
end

--- Seconds :next() has spent in all (waiting for workers, planning, submitting), the number of
-- batches served and the seconds of the first of them (which waits for the pipeline to fill).
function Prefetch:wait_seconds() return self.waited, self.waits, self.first_wait or 0 end

--- Seconds :next() has spent blocked on a batch the workers had not finished yet: the part of
-- wait_seconds() that faster or more workers would remove (the rest is planning and hand-over).
function Prefetch:blocked_seconds() return self.blocked end

--- The resumable position: TaskLoader:state() at the next batch to consume (after close(), the
-- one it had when closed: the batches dropped in flight were never consumed).
function Prefetch:state()
  if self.closed_state then return self.closed_state end
  local s = self.loader:state()
  local first = self.inflight[1]
  if first then
    s.epoch, s.pos, s.epoch_start = first.before.epoch, first.before.pos, first.before.epoch_start
  end
  return s
end

--- Continues from a state() of a PrefetchLoader or TaskLoader with the same spec. Batches in
-- flight are dropped when they arrive (errors included) and planned again from the new position.
function Prefetch:set_state(s)
  if not self.group then error("PrefetchLoader:set_state: the loader is closed", 2) end
  -- the state is checked (TaskLoader:set_state puts itself back when it refuses one) before the
  -- batches in flight are dropped: a refused state leaves the loader where it was
  self.loader:set_state(s)
  for _, plan in ipairs(self.inflight) do self.group:drop(plan.job) end
  self.inflight = {}
  self.stats = self.loader.stats
  self.epoch = s.epoch
end

--- One pass in dataset order for validation (synchronous, on the main thread: TaskLoader:iter()).
function Prefetch:iter() return self.loader:iter() end

function Prefetch:__len() return #self.loader end

--- Leaves the shared pool: the last loader of a pool to close stops the workers (joining them).
-- Idempotent. The datasets are closed by the garbage collector (loaders may share them).
function Prefetch:close()
  if self.group then
    self.closed_state = self:state()
    self.group:release()
  end
  self.group, self.inflight = nil, {}
end

Prefetch.__close = Prefetch.close

function Prefetch:__tostring()
  return string.format("hero.data.PrefetchLoader(%s, %d shared workers, depth %d, %d in flight)", tostring(self.task),
    self.workers, self.depth, #self.inflight)
end

--- Wraps a loader made on the training thread (hero.data.TaskLoader) so that it reports the time
-- its :next() took like a PrefetchLoader does: wait_seconds() -> seconds, batches, seconds of the
-- first; blocked_seconds() is all of it (nothing else makes the batches). Returns the loader.
function M.timed(l)
  local make, waited, served, first = l.next, 0, 0, 0
  l.next = function(self, ...)
    local t0 = core._now()
    local b = make(self, ...)
    local dt = core._now() - t0
    if served == 0 then first = dt end
    waited, served = waited + dt, served + 1
    return b
  end
  l.wait_seconds = function() return waited, served, first end
  l.blocked_seconds = function() return waited end
  return l
end

require("hero.colon").guard(Prefetch, "PrefetchLoader", {"next", "state", "set_state", "close"})
M.PrefetchLoader_class = Prefetch

return M
