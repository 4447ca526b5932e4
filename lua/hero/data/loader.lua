--- hero.data.loader: TaskLoader, the batches of one pre-training task from a dataset, with the
-- interface hero.train.MetaLoader and Trainer expect (:next(), :state(), :set_state(), :iter()).
--
--   local L = hero.data.TaskLoader{dataset = ds, task = "mlm", batch_size = 32, seed = 1}
--   local batch = L:next()          -- forever: a new shuffled epoch after the last batch
--
-- Each epoch is a permutation of the dataset's videos drawn from a Philox generator (so a seed
-- fixes the order); with bucket = k the permutation is cut into pools of k * batch_size videos,
-- each pool sorted by video length (longest first, ties in drawn order) and cut into batches, and
-- the batches of the epoch are then shuffled, so a batch holds videos of similar length (less
-- padding) while the epoch stays random. The masks, shuffles and query choices come from a second
-- generator seeded per batch from (seed, epoch, position), so a batch does not depend on how many
-- draws the batches before it took: which videos form batch k and how they are sampled are known
-- before any video is read (plan_next() / make_batch(plan), what hero.data.PrefetchLoader runs on
-- worker threads). state() holds the epoch, the position in it and the order generator's state at
-- the start of the epoch (the epoch's batches are recomputed from it on resume): set_state()
-- continues bit for bit.
--
-- A video that cannot be read (missing from a database, corrupt value, no frames, no VSM query)
-- is reported by id and skipped (counted in L.stats) or, with on_error = "error", raises an
-- error naming it. A batch whose every video was skipped is replaced by the next one.
local core = require "hero.core"
local tasks = require "hero.data.tasks"
local collate = require "hero.data.collate"
local data_util = require "hero.data.util"

local M = {}

local TaskLoader = {}
TaskLoader.__index = TaskLoader
TaskLoader.__name = "hero.data.TaskLoader"

local KNOWN = {"dataset", "task", "batch_size", "seed", "shuffle", "bucket", "drop_last", "on_error", "task_opts",
               "on_skip", "rank", "world_size", "equal_shards", "max_skipped_ids"}

local function fail(fmt, ...)
  error("TaskLoader: " .. string.format(fmt, ...), 3)
end

local function int_opt(opts, name, default, min)
  local v = opts[name]
  if v == nil then return default end
  if math.type(v) ~= "integer" or v < min then
    fail("opts.%s must be an integer >= %d, got %s", name, min, tostring(v))
  end
  return v
end

--- TaskLoader{dataset =, task =, batch_size = 8, seed = 0, shuffle = true, bucket = 0,
--   drop_last = false, on_error = "skip", task_opts = {}, on_skip = function(vid, reason),
--   rank = 0, world_size = 1, equal_shards = false, max_skipped_ids = 100}
-- task: "mlm", "mfm-nce", "mffr", "fom", "vsm" or "video" (representation batches only).
-- batch_size counts videos. task_opts go to the item builders of hero.data.tasks (mask_prob,
-- query_per_video, sub_ctx_len, max_txt_len, truncate); the special ids come from the dataset.
-- rank / world_size: this process keeps videos rank, rank + world_size, ... as the reference's
-- per-GPU shards. equal_shards = true leaves out the last (#videos % world_size) videos so that
-- every rank holds as many videos, and so runs as many batches in a pass: validation passes
-- whose forward gathers the batches of all ranks (VSM) would otherwise wait on a rank that has
-- run out.
function M.TaskLoader(opts)
  if type(opts) ~= "table" then fail("expected an options table") end
  local ok = {}
  for _, k in ipairs(KNOWN) do ok[k] = true end
  for k in pairs(opts) do
    if not ok[k] then fail("unknown option '%s' (%s)", tostring(k), table.concat(KNOWN, ", ")) end
  end
  local ds = opts.dataset
  if type(ds) ~= "table" or type(ds.get) ~= "function" or type(ds.ids) ~= "function" then
    fail("opts.dataset must be a hero.data dataset (:ids(), :get(vid))")
  end
  local task = opts.task
  local col = collate.for_task(task)
  local on_error = opts.on_error or "skip"
  if on_error ~= "skip" and on_error ~= "error" then
    fail("opts.on_error must be 'skip' or 'error', got %s", tostring(on_error))
  end
  local world = int_opt(opts, "world_size", 1, 1)
  local rank = int_opt(opts, "rank", 0, 0)
  if rank >= world then fail("opts.rank %d is not below world_size %d", rank, world) end
  if opts.equal_shards ~= nil and type(opts.equal_shards) ~= "boolean" then
    fail("opts.equal_shards must be a boolean, got %s", type(opts.equal_shards))
  end
  local all = ds:ids()
  local usable = opts.equal_shards and #all - #all % world or #all
  local ids = {}
  for i = 1, usable do
    if (i - 1) % world == rank then ids[#ids + 1] = all[i] end
  end
  if #ids == 0 then fail("the dataset gives this process no video") end
  local seed = int_opt(opts, "seed", 0, 0)
  if opts.task_opts ~= nil and type(opts.task_opts) ~= "table" then
    fail("opts.task_opts must be a table of the item builders' options, got %s", type(opts.task_opts))
  end
  local topts = {}
  for k, v in pairs(opts.task_opts or {}) do topts[k] = v end
  topts.special_ids = topts.special_ids or (ds.special_ids and ds:special_ids())
  if topts.sub_ctx_len == nil then topts.sub_ctx_len = ds.sub_ctx_len end
  if topts.max_txt_len == nil then topts.max_txt_len = ds.max_txt_len end
  if topts.v_range == nil and topts.special_ids then topts.v_range = topts.special_ids.v_range end
  if opts.on_skip ~= nil and type(opts.on_skip) ~= "function" then fail("opts.on_skip must be a function") end
  for _, k in ipairs {"shuffle", "drop_last"} do -- "no" and 0 read as true and false
    if opts[k] ~= nil and type(opts[k]) ~= "boolean" then
      fail("opts.%s must be a boolean, got %s", k, type(opts[k]))
    end
  end
  -- checked here, not an epoch of skipped videos later
  local okt, terr = pcall(require("hero.models.options").check, "task_opts", topts,
    require("hero.data.tasks").ITEM_OPTIONS)
  if not okt then fail("%s", (tostring(terr):gsub("^[^\n]-:%d+: ", ""))) end
  local self = setmetatable({
    dataset = ds, task = task, collate = col, ids = ids, batch_size = int_opt(opts, "batch_size", 8, 1),
    seed = seed, shuffle = opts.shuffle ~= false, bucket = int_opt(opts, "bucket", 0, 0),
    drop_last = opts.drop_last == true, on_error = on_error, task_opts = topts, on_skip = opts.on_skip,
    max_skipped_ids = int_opt(opts, "max_skipped_ids", 100, 0),
    order_gen = core.Generator(seed), epoch = 0, pos = 1, plan = nil,
    stats = {batches = 0, videos = 0, skipped = 0, skipped_ids = {}},
  }, TaskLoader)
  self:_plan_epoch()
  return self
end

-- The batches (arrays of video ids) of the current epoch, drawn from order_gen.
function TaskLoader:_plan_epoch()
  self.epoch_start = self.order_gen:get_state()
  local n = #self.ids
  local order = {}
  if self.shuffle and n > 1 then
    local perm = core.randperm(n, {generator = self.order_gen}):totable()
    for i = 1, n do order[i] = self.ids[perm[i] + 1] end
  else
    for i = 1, n do order[i] = self.ids[i] end
  end
  local bs = self.batch_size
  local batches = {}
  local function cut(list)
    for s = 1, #list, bs do
      local b = {}
      for i = s, math.min(s + bs - 1, #list) do b[#b + 1] = list[i] end
      if #b == bs or not self.drop_last then batches[#batches + 1] = b end
    end
  end
  if self.bucket > 0 then
    local pool = self.bucket * bs
    local len = {}
    for i, vid in ipairs(order) do len[vid] = {self.dataset:length(vid), i} end
    for s = 1, n, pool do
      local chunk = {}
      for i = s, math.min(s + pool - 1, n) do chunk[#chunk + 1] = order[i] end
      table.sort(chunk, function(a, b)
        local la, lb = len[a], len[b]
        if la[1] ~= lb[1] then return la[1] > lb[1] end
        return la[2] < lb[2]
      end)
      cut(chunk)
    end
    if self.shuffle and #batches > 1 then
      local perm = core.randperm(#batches, {generator = self.order_gen}):totable()
      local shuffled = {}
      for i = 1, #batches do shuffled[i] = batches[perm[i] + 1] end
      batches = shuffled
    end
  else
    cut(order)
  end
  if #batches == 0 then
    fail("%d video(s) make no batch of %d with drop_last", n, bs)
  end
  self.plan = batches
end

--- The seed of the sampling generator of batch `pos` of epoch `epoch` (splitmix64 finalizers, so
-- neighbouring batches get unrelated Philox keys).
function M.batch_seed(seed, epoch, pos)
  local function mix(x)
    x = (x ~ (x >> 30)) * 0xbf58476d1ce4e5b9
    x = (x ~ (x >> 27)) * 0x94d049bb133111eb
    return x ~ (x >> 31)
  end
  return mix(mix(mix(seed + 0x9e3779b97f4a7c15) ~ epoch) ~ pos)
end

-- The collated batch of the given ids sampling from g (nil when every video was skipped), the ids
-- used and the skipped {vid, reason} pairs. Touches no loader state (it runs on worker threads);
-- with on_error = "error" a bad video raises.
function TaskLoader:_collate(ids, g)
  local items, used, skipped = {}, {}, {}
  local topts = setmetatable({generator = g}, {__index = self.task_opts})
  for _, vid in ipairs(ids) do
    local ok, item = pcall(function()
      local video, why = self.dataset:get(vid)
      if video == nil then error(why or "not found", 0) end
      if video.v_feat:size(1) == 0 then error("the video has no frame", 0) end
      return tasks.build_item(self.task, video, topts)
    end)
    if ok then
      items[#items + 1] = item
      used[#used + 1] = vid
    elseif data_util.is_fatal_error(item) then
      error(item, 0)
    else
      local msg = tostring(item):gsub("^[^:]*:%d+: ", "")
      if self.on_error == "error" then
        error(string.format("TaskLoader (%s): video '%s': %s", tostring(self.task), tostring(vid), msg), 0)
      end
      skipped[#skipped + 1] = {vid, msg}
    end
  end
  if #items == 0 then return nil, used, skipped end
  return (self.collate(items)), used, skipped
end

-- Counts what _collate reported (skips go to on_skip) and returns the batch.
function TaskLoader:_record(batch, used, skipped)
  local st = self.stats
  for _, p in ipairs(skipped) do
    st.skipped = st.skipped + 1
    if #st.skipped_ids < self.max_skipped_ids then st.skipped_ids[#st.skipped_ids + 1] = {p[1], p[2]} end
    if self.on_skip then self.on_skip(p[1], p[2]) end
  end
  if batch then
    st.videos = st.videos + #used
    self.last_ids = used
  end
  return batch
end

--- The plan of the next batch, moving the position past it (a new epoch is planned after the last
-- batch): {ids = {vid...}, seed = sampling seed, epoch =, pos =, before = the state() position
-- fields {epoch, pos, epoch_start} as they were before this batch}.
function TaskLoader:plan_next()
  local before = {epoch = self.epoch, pos = self.pos, epoch_start = self.epoch_start}
  if self.pos > #self.plan then
    self.epoch = self.epoch + 1
    self:_plan_epoch()
    self.pos = 1
  end
  local plan = {ids = self.plan[self.pos], epoch = self.epoch, pos = self.pos,
                seed = M.batch_seed(self.seed, self.epoch, self.pos), before = before}
  self.pos = self.pos + 1
  return plan
end

--- The work of one planned batch: returns the batch (nil when every video was skipped), the ids
-- used and the skipped {vid, reason} pairs, without touching the loader's position or counts.
function TaskLoader:make_batch(plan)
  return self:_collate(plan.ids, core.Generator(plan.seed))
end

-- Fails after a whole epoch of consecutive empty batches.
function TaskLoader:_check_empty(empty)
  if empty > #self.plan then
    fail("every video of a whole epoch of task '%s' was skipped (%d skipped in all; first: %s)", self.task,
      self.stats.skipped, self.stats.skipped_ids[1] and self.stats.skipped_ids[1][2] or "?")
  end
end

--- The next batch (a new epoch starts after the last batch of the current one).
function TaskLoader:next()
  local empty = 0
  while true do
    local plan = self:plan_next()
    local batch = self:_record(self:make_batch(plan))
    if batch then
      self.stats.batches = self.stats.batches + 1
      return batch
    end
    empty = empty + 1
    self:_check_empty(empty)
  end
end

--- One pass over the videos in dataset order (no shuffle, no bucketing) with masks drawn from a
-- generator seeded with `seed` each time, so every validation pass sees the same batches.
-- Skipping follows on_error; the loader's position is not moved.
function TaskLoader:iter()
  local g = core.Generator(self.seed)
  local i = 1
  local bs = self.batch_size
  return function()
    while i <= #self.ids do
      local ids = {}
      for k = i, math.min(i + bs - 1, #self.ids) do ids[#ids + 1] = self.ids[k] end
      i = i + bs
      local batch = self:_record(self:_collate(ids, g))
      if batch then return batch end
    end
    return nil
  end
end

--- Batches per epoch.
function TaskLoader:__len() return #self.plan end

--- The resumable position (plain values, for hero.save).
function TaskLoader:state()
  local skipped = {}
  for i, p in ipairs(self.stats.skipped_ids) do skipped[i] = {p[1], p[2]} end
  return {task = self.task, n = #self.ids, epoch = self.epoch, pos = self.pos, epoch_start = self.epoch_start,
          batches = self.stats.batches, videos = self.stats.videos, skipped = self.stats.skipped,
          skipped_ids = skipped, batch_size = self.batch_size, seed = self.seed, shuffle = self.shuffle,
          bucket = self.bucket, drop_last = self.drop_last}
end

-- The settings that decide the batches a state continues: a state of another loader would resume
-- other batches (states written before they were recorded carry none of them, and are taken as
-- they are).
local PLAN_SETTINGS = {"batch_size", "seed", "shuffle", "bucket", "drop_last"}

function TaskLoader:set_state(s)
  if type(s) ~= "table" or math.type(s.epoch) ~= "integer" or math.type(s.pos) ~= "integer"
      or type(s.epoch_start) ~= "table" then
    fail("set_state: expected the table that TaskLoader:state() returned")
  end
  if s.task ~= self.task then
    fail("set_state: the state is for task '%s', this loader serves '%s'", tostring(s.task), self.task)
  end
  if s.n ~= #self.ids then
    fail("set_state: the state is for %s videos, this loader has %d", tostring(s.n), #self.ids)
  end
  for _, k in ipairs(PLAN_SETTINGS) do
    if s[k] ~= nil and s[k] ~= self[k] then
      fail("set_state: the state is of a loader with %s = %s, this one has %s", k, tostring(s[k]), tostring(self[k]))
    end
  end
  if s.epoch < 0 then fail("set_state: epoch %d is negative", s.epoch) end
  for _, k in ipairs {"batches", "videos", "skipped"} do
    if s[k] ~= nil and (math.type(s[k]) ~= "integer" or s[k] < 0) then
      fail("set_state: %s must be a count, got %s", k, tostring(s[k]))
    end
  end
  if s.skipped_ids ~= nil and type(s.skipped_ids) ~= "table" then
    fail("set_state: skipped_ids must be a list of {id, reason}, got %s", type(s.skipped_ids))
  end
  -- the epoch's plan is rebuilt from the state's generator; a position outside it puts the loader
  -- back as it was
  local old_gen, old_plan, old_start = self.order_gen:get_state(), self.plan, self.epoch_start
  self.order_gen:set_state(s.epoch_start)
  self:_plan_epoch()
  if s.pos < 1 or s.pos > #self.plan + 1 then
    local n = #self.plan
    self.order_gen:set_state(old_gen)
    self.plan, self.epoch_start = old_plan, old_start -- state() would mix the two epochs
    fail("set_state: position %d is outside 1..%d", s.pos, n + 1)
  end
  self.epoch, self.pos = s.epoch, s.pos
  local ids = {}
  for i, p in ipairs(s.skipped_ids or {}) do ids[i] = {p[1], p[2]} end
  self.stats = {batches = s.batches or 0, videos = s.videos or 0, skipped = s.skipped or 0, skipped_ids = ids}
end

function TaskLoader:__tostring()
  return string.format("hero.data.TaskLoader(%s, %d videos, batch %d, epoch %d, batch %d/%d)", self.task, #self.ids,
    self.batch_size, self.epoch, self.pos, #self.plan)
end

require("hero.colon").guard(TaskLoader, "TaskLoader", {"next", "state", "set_state"})
M.TaskLoader_class = TaskLoader

return M
