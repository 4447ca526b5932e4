--- hero.train.Trainer: the pre-training loop of HERO (hero-spec §4.6, §6.1–6.5).
--
-- Per optimizer update: the MetaLoader draws one task; each of the `accum` micro-batches runs
-- `model:forward(batch, task).loss:backward()` (gradients summed over micro-batches, no division);
-- then global_step += 1, lr = warmup_linear(base_lr, step, warmup, total), clip_grad_norm, step,
-- zero_grad. Every `valid_every` updates every validation task is run in evaluation mode without
-- gradients; every `save_every` updates (and at the end) a checkpoint is written atomically.
-- Everything that decides what happens next (parameters, optimizer moments, step, every generator's
-- state, every task loader's position) is in the checkpoint, so a resumed run continues bit for bit.
--
-- Crashes (a kill, a power cut) at any moment leave a usable out_dir: every checkpoint file and the
-- `latest` pointer are replaced atomically and durably (temporary file beside it, fsync, rename,
-- fsync of the directory), and `latest` is written last, after the log and the TensorBoard events
-- of the updates it covers are fsynced, so it always names complete files. log.jsonl and the event
-- files are append-only: a killed run leaves at most a torn last line / record, which the readers
-- ignore. :resume() cuts log.jsonl back to the checkpoint's step (dropping the torn line and the
-- lines of updates that are done again; without a checkpoint, every line) and the new TensorBoard
-- file starts with a session start at step + 1, so every step appears once. Temporary files of a
-- killed writer (*.tmp.<pid>.<n>) are never read and are removed when training starts again.
--
-- Data-parallel (opts.dist, hero-spec §4.6, §6.3): one process per rank under mpirun, each with its
-- own shard of the data. The parameters are broadcast from rank 0 before the first update; the task
-- of an update is rank 0's draw; after the micro-batches of an update the gradients are averaged
-- over the ranks (one all-reduce over a flat buffer); every rank then takes the same optimizer step.
-- The VSM ranking loss runs on the queries and videos of all ranks (forward option all_gather).
-- Only rank 0 logs, draws the progress line and writes the checkpoint; the other ranks add their
-- own RNG and loader positions to it (train_state_<N>_rank<r>.safetensors), so a resumed run of as
-- many ranks continues bit for bit. Checkpoints must be on a file system every rank sees.
local core = require "hero.core"
local optim = require "hero.optim"
local amp = require "hero.amp"
local io_ = require "hero.io"
local json = require "hero.json"

local Trainer = {}
Trainer.__index = Trainer
Trainer.__name = "Trainer"
function Trainer:__tostring()
  return string.format("hero.train.Trainer(update %d of %d, lr %g, warmup %d%s)", self.global_step or 0,
    self.total or 0, self.base_lr or 0, self.warmup or 0, self.out_dir and (", out " .. self.out_dir) or "")
end

local FORMAT_VERSION = 1

local now = core._now or core._bench_now or os.clock

--- Fields each task's collated batch must have (what HeroForPretraining reads, which checks them
-- too): the trainer names the update and micro-batch of a batch that lacks one. A task not listed
-- here is not checked. Override per trainer with opts.required_fields.
Trainer.required_fields = require("hero.models.pretrain").required_fields

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function mkdir_p(dir)
  local ok = os.execute("mkdir -p -- " .. shell_quote(dir) .. " 2>/dev/null") -- "--": a name may start with "-"
  if not ok then error(string.format("Trainer: cannot create the directory '%s'", dir), 0) end
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- Writes text to path atomically and durably (hero.io.write_atomic: path.tmp.<pid>.<n>, fsync, rename,
-- fsync of the directory).
local function write_atomic(path, text)
  local ok, err = pcall(io_.write_atomic, path, text)
  if not ok then error(tostring(err), 0) end
end

local function finite_or_null(x)
  if type(x) == "number" and (x ~= x or x == math.huge or x == -math.huge) then return json.null end
  return x
end

-- Every distinct hero.Generator referenced by a module of the model (Dropout layers, attention,
-- the model's own `generator` for drop_svmr_prob), in module order.
local function model_generators(model)
  local list, seen = {}, {}
  if type(model.named_modules) ~= "function" then return list end
  for _, entry in ipairs(model:named_modules()) do
    local g = rawget(entry[2], "generator")
    if g ~= nil and not seen[g] then
      seen[g] = true
      list[#list + 1] = g
    end
  end
  return list
end

--- Number of text tokens in a batch (0 when it has none): subtitle tokens by their attention
-- masks (f_sub_input_attn_masks), MLM tokens (input_ids other than the padding id) and query
-- tokens (query_attn_masks).
local function count_tokens(batch, pad_id)
  local n = 0
  -- a batch a PrefetchLoader moved to a GPU is counted from its host copies (hero.cuda.host_mirrored:
  -- read back without waiting for the device)
  local function host(t)
    if core.is_tensor(t) and t:device() ~= "cpu" and core.cuda.host_mirrored(t) then return t:cpu() end
    return t
  end
  local function add(t) if core.is_tensor(t) then n = n + host(t):sum():item() end end
  if batch.f_sub_input_attn_masks then
    add(batch.f_sub_input_attn_masks)
  elseif core.is_tensor(batch.input_ids) then
    n = n + host(batch.input_ids):ne(pad_id):sum():item()
  end
  add(batch.query_attn_masks)
  return math.tointeger(n) or n
end

local function format_seconds(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, s % 3600 // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return string.format("%ds", s)
end

--- Trainer{model =, optimizer =, loader = MetaLoader, lr = base_lr, warmup =, total =,
--   grad_norm = 1.0, accum = loader.accum, valid_every =, valid = {task = batches or loader},
--   save_every =, out_dir =, log = true, progress = true, generator =, pad_id = 1,
--   required_fields =, forward_opts = function(task, step) -> opts or nil, dist = false, seed =,
--   device = the device of the model's first parameter, amp = nil | "bf16" | "f16",
--   overlap = true, bucket_mb = 25, validators = {task = {batch =, finish =}} or nil,
--   on_validate = function(step) -> {name = value or {metric = value}} or nil}
-- on_validate runs after the validation tasks every valid_every updates (also when `valid` is
-- empty); what it returns joins the update's validation results (log line, TensorBoard).
-- grad_norm <= 0 (or false) computes the norm without clipping. The optimizer's own lr_mul groups
-- apply on top of the scheduled lr. generator: a hero.Generator used by the model (e.g. its dropout
-- generator) when the model does not keep it on its modules; its state is checkpointed too.
-- A validation source is an array of batches or an object with :iter() (one pass). Batches come
-- from the loaders on the CPU and are moved to `device` (e.g. after model:cuda()) before forward.
-- amp runs each forward (validation's too) under hero.amp.autocast(amp); with "f16" each task's
-- loss is scaled by its own hero.amp.GradScaler, an update whose gradients overflow is skipped
-- (logged as skipped) and the scalers are checkpointed with the rest.
-- dist: true (or the options of hero.dist.init, e.g. {timeout = 600}) trains data-parallel over the
-- ranks of an MPI job (see the top of this file). seed: seeds hero's default generator; with dist,
-- each rank gets its own seed derived from it (hero.dist.rank_seed). With dist, the gradients of
-- CPU parameters are averaged while the last backward pass of an update still runs
-- (hero.dist.GradReducer, buckets of bucket_mb = 25 MiB); overlap = false averages them after it.
function Trainer.new(opts)
  if type(opts) ~= "table" then error("Trainer: expected an options table", 2) end
  local function need(name, kind)
    if type(opts[name]) ~= kind then
      error(string.format("Trainer: opts.%s must be a %s, got %s", name, kind, type(opts[name])), 3)
    end
  end
  need("model", "table")
  need("optimizer", "table")
  need("loader", "table")
  need("lr", "number")
  if type(opts.model.forward) ~= "function" then error("Trainer: opts.model has no forward method", 2) end
  for _, m in ipairs {"step", "zero_grad", "set_lr", "state_dict", "load_state_dict"} do
    if type(opts.optimizer[m]) ~= "function" then error("Trainer: opts.optimizer has no " .. m .. " method", 2) end
  end
  for _, m in ipairs {"next", "state", "set_state"} do
    if type(opts.loader[m]) ~= "function" then error("Trainer: opts.loader has no " .. m .. " method", 2) end
  end
  local total = opts.total or 0
  local warmup = opts.warmup or 0
  if math.type(total) ~= "integer" or total < 1 then
    error("Trainer: opts.total (number of updates of the schedule) must be a positive integer", 2)
  end
  if math.type(warmup) ~= "integer" or warmup < 0 or warmup >= total then
    error(string.format("Trainer: opts.warmup must be an integer in [0, total), got %s", tostring(warmup)), 2)
  end
  local accum = opts.accum or opts.loader.accum or 1
  if math.type(accum) ~= "integer" or accum < 1 then error("Trainer: opts.accum must be a positive integer", 2) end
  if opts.loader.accum and opts.loader.accum ~= accum then
    error(string.format("Trainer: opts.accum is %d but the loader draws a task every %d micro-batches", accum,
      opts.loader.accum), 2)
  end
  for _, k in ipairs {"valid_every", "save_every"} do
    local v = opts[k]
    if v ~= nil and (math.type(v) ~= "integer" or v < 0) then
      error(string.format("Trainer: opts.%s must be a non-negative integer", k), 2)
    end
  end
  if opts.out_dir == "" then error("Trainer: opts.out_dir is an empty path", 2) end
  if (opts.save_every or 0) > 0 and type(opts.out_dir) ~= "string" then
    error("Trainer: opts.save_every needs opts.out_dir", 2)
  end
  local grad_norm = opts.grad_norm
  if grad_norm == nil then grad_norm = 1.0 end
  if grad_norm == false then grad_norm = -1 end
  local self = setmetatable({
    model = opts.model, optimizer = opts.optimizer, loader = opts.loader,
    base_lr = opts.lr, warmup = warmup, total = total, grad_norm = grad_norm, accum = accum,
    valid_every = opts.valid_every or 0, valid = opts.valid or {}, save_every = opts.save_every or 0,
    out_dir = opts.out_dir, log = opts.log ~= false and opts.out_dir ~= nil,
    progress = opts.progress ~= false, generator = opts.generator, pad_id = opts.pad_id or 1,
    required_fields = opts.required_fields or Trainer.required_fields, forward_opts = opts.forward_opts,
    validators = opts.validators, on_validate = opts.on_validate,
    global_step = 0, last_saved = nil, history = {},
    -- the reference's RunningMeter of every micro-batch loss (and VSM part) per task, smoothing
    -- 0.99: what its scripts log as loss/<task> at every update
    running = {},
  }, Trainer)
  self.params = type(self.model.named_parameters) == "function" and self.model:named_parameters() or nil
  if not self.params then error("Trainer: opts.model has no named_parameters method", 2) end
  -- where the model computes; batches (made on the CPU by the loaders) are moved there
  self.device = opts.device or (self.params[1] and self.params[1][2]:device()) or "cpu"
  if type(self.device) ~= "string" then error("Trainer: opts.device must be a device name such as 'cuda:0'", 2) end
  if opts.amp ~= nil and opts.amp ~= "bf16" and opts.amp ~= "f16" then
    error(string.format("Trainer: opts.amp must be 'bf16', 'f16' or nil, got %s", tostring(opts.amp)), 2)
  end
  self.amp = opts.amp
  -- f16 needs loss scaling; one scaler per task, as the reference scales each task's loss apart
  self.scalers = opts.amp == "f16" and {} or nil
  self.rank, self.world = 0, 1
  if opts.dist then
    local dist = require "hero.dist"
    if not dist.is_initialized() then dist.init(type(opts.dist) == "table" and opts.dist or nil) end
    self.dist, self.rank, self.world = dist, dist.rank(), dist.world_size()
    self.overlap, self.bucket_mb = opts.overlap ~= false, opts.bucket_mb
    if self.rank ~= 0 then self.log, self.progress = false, false end
    if self.world > 1 then
      self.gather = dist.all_gather_grad
      -- every rank must run the same schedule over the same task pool: a rank with other tasks
      -- would index rank 0's task draw in its own pool, and one with other steps or accumulation
      -- would wait in a collective the others never reach (until the watchdog ends the job)
      local pool = type(self.loader.pool) == "table" and table.concat(self.loader.pool, ",") or "?"
      local mine = string.format("tasks %s, accum %d, steps %s, warmup %s, lr %s, amp %s", pool, accum,
        tostring(total), tostring(warmup), tostring(opts.lr), tostring(opts.amp or "none"))
      for r, theirs in ipairs(dist.all_gather_object(mine)) do
        if theirs ~= mine then
          error(string.format("Trainer: rank %d runs %s; rank %d runs %s: every rank must run the same schedule",
            self.rank, mine, r - 1, theirs), 2)
        end
      end
    end
    -- every rank trains the task rank 0 drew (the other ranks' draws only keep their generators moving)
    if type(self.loader.draw) == "function" then
      self.loader.share = function(i)
        local t = core.tensor({i}, {dtype = "i64"})
        dist.broadcast(t, 0)
        return t:item()
      end
    end
    if opts.seed ~= nil then dist.seed(opts.seed) end
  elseif opts.seed ~= nil then
    core.manual_seed(opts.seed)
  end
  return self
end

--- DistributedTrainer(opts): Trainer(opts) with opts.dist = true (unless opts.dist is a table).
function Trainer.distributed(opts)
  if type(opts) ~= "table" then error("DistributedTrainer: expected an options table", 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.dist = o.dist or true
  return Trainer.new(o)
end

setmetatable(Trainer, {__call = function(_, opts) return Trainer.new(opts) end})

function Trainer:ckpt_dir() return self.out_dir .. "/ckpt" end

-- ------------------------------------------------------------------ one update

function Trainer:check_batch(task, batch, mb)
  local fields = self.required_fields[task]
  if not fields then return end
  for _, f in ipairs(fields) do
    if batch[f] == nil then
      error(string.format("Trainer: the batch of task '%s' (update %d, micro-batch %d) has no field '%s'",
        task, self.global_step + 1, mb, f), 0)
    end
  end
end

--- The options handed to model:forward: opts.forward_opts's, plus all_gather in a distributed run.
function Trainer:forward_options(task, step)
  local fopts = self.forward_opts and self.forward_opts(task, step) or nil
  local loader = self.loader
  if self.gather or type(loader.uniform) == "function" then
    local o = {}
    if fopts then for k, v in pairs(fopts) do o[k] = v end end
    if self.gather and o.all_gather == nil then o.all_gather = self.gather end
    -- the models' per-step draws (VSM's start/end loss drop) come from the task-draw stream, in
    -- step on every rank, as the reference's Python `random`
    if type(loader.uniform) == "function" and o.draw == nil then o.draw = function() return loader:uniform() end end
    fopts = o
  end
  return fopts
end

-- A batch with every tensor on device (hero.train.device_batch).
local batch_to = require("hero.train.device_batch").to
Trainer.batch_to = batch_to

--- fn(...) under hero.amp.autocast(opts.amp) when the trainer has one, else fn(...) as it is.
function Trainer:autocast(fn, ...)
  if self.amp then return amp.autocast(self.amp, fn, ...) end
  return fn(...)
end

--- The loss scaler of a task (f16 training), made on first use; nil without loss scaling.
function Trainer:scaler(task)
  if not self.scalers then return nil end
  local sc = self.scalers[task]
  if not sc then
    sc = amp.GradScaler()
    self.scalers[task] = sc
  end
  return sc
end

--- The reducer that overlaps gradient averaging with the backward pass (hero.dist.GradReducer),
-- made on first use; nil without dist, with opts.overlap = false, or for parameters it cannot take
-- (on a GPU), which average_gradients handles after the pass instead.
function Trainer:grad_reducer()
  if not self.dist or not self.overlap then return nil end
  if self.reducer == nil then
    self.reducer = self.dist.overlap_possible(self.params)
      and self.dist.GradReducer(self.params, {bucket_mb = self.bucket_mb}) or false
  end
  return self.reducer or nil
end

--- Runs one optimizer update; returns the record that goes to log.jsonl.
function Trainer:update()
  local t0 = now()
  local task, losses, tokens, parts = nil, {}, 0, {}
  for mb = 1, self.accum do
    local t, batch, first = self.loader:next()
    if mb == 1 then
      if first == false then error("Trainer: the loader is in the middle of an update (micro-step out of step)", 0) end
      task = t
    elseif t ~= task then
      error(string.format("Trainer: the loader changed task within an update ('%s' then '%s')", task, t), 0)
    end
    self:check_batch(task, batch, mb)
    local fopts = self:forward_options(task, self.global_step + 1)
    local dev_batch = batch_to(batch, self.device)
    local out = self:autocast(self.model.forward, self.model, dev_batch, task, fopts)
    if type(out) ~= "table" or not core.is_tensor(out.loss) then
      error(string.format("Trainer: model:forward(batch, '%s') returned no loss tensor", task), 0)
    end
    local scaler = self:scaler(task)
    -- the last backward of the update starts averaging the finished gradients while it runs
    local reducer = mb == self.accum and self:grad_reducer() or nil
    if reducer then reducer:begin() end
    if scaler then scaler:scale(out.loss):backward() else out.loss:backward() end
    losses[mb] = out.loss:item()
    self:meter(task, losses[mb])
    tokens = tokens + count_tokens(batch, self.pad_id)
    -- the loss's parts a model reports (VSM: st_ed, neg_ctx, neg_q), averaged over the micro-batches
    if type(out.log_parts) == "table" then
      for k, v in pairs(out.log_parts) do
        local x = core.is_tensor(v) and v:item() or v
        parts[k] = (parts[k] or 0) + x / self.accum
        self:meter(task .. "_" .. k, x)
      end
    end
  end
  local sum = 0
  for _, l in ipairs(losses) do sum = sum + l end
  local mean_loss = sum / #losses
  if self.dist then
    -- the gradients, and this rank's mean loss, token count and loss parts: the log holds the
    -- ranks' means (every rank trains the same task, so the parts have the same names)
    local part_names = {}
    for k in pairs(parts) do part_names[#part_names + 1] = k end
    table.sort(part_names)
    local extra = {mean_loss, tokens}
    for i, k in ipairs(part_names) do extra[2 + i] = parts[k] end
    local m
    if self:grad_reducer() then
      m = self:grad_reducer():finish(extra)
    else
      m = self.dist.average_gradients(self.params, extra)
    end
    mean_loss, tokens = m[1], math.floor(m[2] * self.world + 0.5)
    for i, k in ipairs(part_names) do parts[k] = m[2 + i] end
  end
  self.global_step = self.global_step + 1
  local lr = optim.warmup_linear(self.base_lr, self.global_step, self.warmup, self.total)
  self.optimizer:set_lr(lr)
  -- grad_norm false (or <= 0): no clipping, as the reference's grad_norm -1 (the configs refuse its
  -- other values <= 0); the norm is still logged, and an inf norm must not turn into a NaN factor
  local clip = self.grad_norm > 0
  local scaler = self:scaler(task)
  local scale, skipped
  if scaler then
    scale = scaler:get_scale()
    scaler:unscale_(self.optimizer) -- before clipping, so the norm is the true one
  end
  -- hero's AdamW applies the clipping factor inside its update pass (the same numbers, one pass
  -- over the gradients fewer); other optimizers get clipped gradients
  local fused = self.optimizer.fused_grad_scale and not scaler
  local norm, factor = optim.clip_grad_norm(self.params, clip and self.grad_norm or math.huge,
    (fused or not clip) and {apply = false} or nil)
  if not clip then factor = 1 end
  if scaler then
    skipped = not scaler:step(self.optimizer)
    scaler:update()
  elseif fused and factor ~= 1 then
    self.optimizer:step{grad_scale = factor}
  else
    self.optimizer:step()
  end
  self.optimizer:zero_grad()
  local seconds = now() - t0
  local rec = {step = self.global_step, task = task, loss = mean_loss, micro_losses = losses, lr = lr,
               grad_norm = norm, seconds = seconds, loss_scale = scale, skipped = skipped or nil}
  if tokens > 0 then
    rec.tokens = tokens
    rec.tokens_per_s = seconds > 0 and tokens / seconds or nil
  end
  if next(parts) then rec.parts = parts end
  local running = {}
  for k, v in pairs(self.running) do running[k] = v end
  rec.running = running
  return rec
end

--- The RunningMeter of name (utils/logger.py): the first value as it is, then 0.99 old + 0.01 new.
function Trainer:meter(name, value)
  if value ~= value then return end -- a NaN loss (a skipped f16 update) would poison the mean for good
  local old = self.running[name]
  self.running[name] = old == nil and value or value * (1 - 0.99) + old * 0.99
end

-- ------------------------------------------------------------------ validation

local function iterate(src)
  if type(src) == "table" and type(src.iter) == "function" then return src:iter() end
  if type(src) == "table" and #src > 0 then
    local i = 0
    return function()
      i = i + 1
      return src[i]
    end
  end
  error("Trainer: a validation source must be a non-empty array of batches or have :iter()", 0)
end

--- The validator of a task: opts.validators[task], else that of the task's first "_"-separated
-- part (a loader named "mlm_tv_all" gets validators.mlm), else nil.
local function validator_of(validators, task)
  if not validators then return nil end
  return validators[task] or validators[task:match("^([^_]+)") or task]
end

--- Runs every validation task once (evaluation mode, no gradients); returns {task = mean loss},
-- or for a task with a validator (opts.validators) {task = {metric = value}}: the batches' sums
-- added (over the ranks too) and turned into metrics by the validator's finish.
function Trainer:validate()
  local names = {}
  for name in pairs(self.valid) do names[#names + 1] = name end
  table.sort(names)
  local results, sums = {}, {}
  local was_training = self.model.training
  if self.model.evaluate then self.model:evaluate() end
  local ok, err = pcall(function()
    for _, task in ipairs(names) do
      local val = validator_of(self.validators, task)
      local sum, n = 0, 0
      local totals = {}
      for batch in iterate(self.valid[task]) do
        self:check_batch(task, batch, n + 1)
        local fopts = self:forward_options(task, self.global_step)
        local dev_batch = batch_to(batch, self.device)
        -- under the training's autocast, as the reference validates its fp16 model
        if val then
          local s = core.no_grad(function() return self:autocast(val.batch, self.model, dev_batch, fopts) end)
          for k, x in pairs(s) do totals[k] = (totals[k] or 0) + x end
        else
          local loss = core.no_grad(function()
            return self:autocast(self.model.forward, self.model, dev_batch, task, fopts).loss:item()
          end)
          sum = sum + loss
        end
        n = n + 1
      end
      if val then sums[task] = totals else results[task] = sum / n end
    end
  end)
  if was_training ~= false and self.model.train then self.model:train() end
  if not ok then error(err, 0) end
  if self.dist and #names > 0 then
    -- losses: the mean over the ranks (each validates its own shard); validator sums: the sum
    local vals, slots = {}, {}
    for _, task in ipairs(names) do
      if sums[task] then
        local keys = {}
        for k in pairs(sums[task]) do keys[#keys + 1] = k end
        table.sort(keys)
        for _, k in ipairs(keys) do
          vals[#vals + 1] = sums[task][k]
          slots[#vals] = {task, k}
        end
      end
    end
    local means = {}
    for _, task in ipairs(names) do if results[task] then means[#means + 1] = task end end
    if #means > 0 then
      local mv = {}
      for i, task in ipairs(means) do mv[i] = results[task] end
      local t = core.tensor(mv, {dtype = "f64"})
      self.dist.all_reduce(t, "mean")
      mv = t:totable()
      for i, task in ipairs(means) do results[task] = mv[i] end
    end
    if #vals > 0 then
      local t = core.tensor(vals, {dtype = "f64"})
      self.dist.all_reduce(t, "sum")
      vals = t:totable()
      for i, slot in ipairs(slots) do sums[slot[1]][slot[2]] = vals[i] end
    end
  end
  for task, totals in pairs(sums) do results[task] = validator_of(self.validators, task).finish(totals) end
  return results
end

-- ------------------------------------------------------------------ logging

-- A log whose last line has no newline was cut by a kill in the middle of that line: drop the
-- partial line before appending (otherwise the next line would be glued onto it).
local function drop_torn_line(path)
  local f = io.open(path, "rb")
  if not f then return end
  local size = f:seek("end")
  local last = size > 0 and f:seek("set", size - 1) and f:read(1)
  f:close()
  if not last or last == "\n" then return end
  local text = read_file(path)
  local keep = text:match("^(.*\n)") or ""
  write_atomic(path, keep)
end

function Trainer:write_log(rec)
  if not self.log then return end
  if not self.log_file then
    mkdir_p(self.out_dir)
    local path = self.out_dir .. "/log.jsonl"
    drop_torn_line(path)
    local f, err = io.open(path, "ab")
    if not f then error("Trainer: cannot open the log: " .. tostring(err), 0) end
    self.log_file = f
  end
  local function cleaned(v)
    if type(v) ~= "table" or v == json.null then return finite_or_null(v) end
    local t = {}
    for kk, vv in pairs(v) do t[kk] = cleaned(vv) end
    return t
  end
  local clean = {}
  for k, v in pairs(rec) do clean[k] = cleaned(v) end
  -- a failed write (a full disk) stops the run: going on would leave lines out, or a torn line in
  -- the middle of the log, where a resumed run's reader stops; stopped here it is the last line,
  -- which the resumed run drops
  local ok, err = self.log_file:write(json.encode(clean), "\n")
  if ok then ok, err = self.log_file:flush() end
  if not ok then error(string.format("Trainer: writing %s/log.jsonl failed: %s", self.out_dir, tostring(err)), 0) end
  -- the same scalars as TensorBoard events (out_dir/tensorboard/), read by TensorBoard as they come
  if not self.tb then
    self.tb = require("hero.tensorboard").Writer(self.out_dir .. "/tensorboard")
    -- a resumed run: TensorBoard drops what the stopped run logged after the checkpoint
    if self.resumed_at then self.tb:add_session_start(self.resumed_at + 1) end
  end
  local step = math.tointeger(rec.step)
  if step then
    local function add(tag, v)
      if type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge then self.tb:add_scalar(tag, v, step) end
    end
    -- loss/<name>: the reference's running means of every task seen so far (its curves overlay
    -- these); loss_update/<task>: this update's own mean loss and parts
    if type(rec.running) == "table" then
      for name, v in pairs(rec.running) do add("loss/" .. name, v) end
    end
    if rec.task then add("loss_update/" .. rec.task, rec.loss) end
    if rec.task and type(rec.parts) == "table" then
      for k, v in pairs(rec.parts) do add("loss_update/" .. rec.task .. "_" .. k, v) end
    end
    add("lr", rec.lr)
    add("grad_norm", rec.grad_norm)
    add("tokens_per_s", rec.tokens_per_s)
    if type(rec.valid) == "table" then
      for task, v in pairs(rec.valid) do
        if type(v) == "table" then
          for metric, x in pairs(v) do add("valid/" .. task .. "/" .. metric, x) end
        else
          add("valid/" .. task, v)
        end
      end
    end
    self.tb:flush()
  end
end

function Trainer:draw_progress(rec, stats)
  if not self.progress then return end
  local done = stats.updates
  local left = self.target_step - self.global_step
  local eta = done > 0 and stats.seconds / done * left or math.huge
  local tps = stats.seconds > 0 and stats.tokens / stats.seconds or 0
  local line = string.format("step %d/%d  %-7s loss %.4f  lr %.3g  %s tok/s  ETA %s", self.global_step,
    self.target_step, rec.task, rec.loss, rec.lr, tps > 0 and string.format("%.0f", tps) or "-", format_seconds(eta))
  -- pad to the previous line's length so a shorter line fully covers it
  local pad = math.max(0, (self.last_line_len or 0) - #line)
  self.last_line_len = #line
  io.stderr:write("\r", line, string.rep(" ", pad))
  io.stderr:flush()
end

-- ------------------------------------------------------------------ checkpoints

--- The RNG state of every generator the run depends on.
function Trainer:rng_state()
  local mods = {}
  for i, g in ipairs(model_generators(self.model)) do mods[i] = g:get_state() end
  return {default = core.get_rng_state(), trainer = self.generator and self.generator:get_state() or nil,
          modules = mods}
end

function Trainer:set_rng_state(st)
  local gens = model_generators(self.model)
  local saved = st.modules or {}
  if #saved ~= #gens then
    error(string.format("Trainer:resume: the checkpoint has %d model generator states, the model has %d generators",
      #saved, #gens), 0)
  end
  for i, g in ipairs(gens) do g:set_state(saved[i]) end
  if self.generator then
    if not st.trainer then error("Trainer:resume: the checkpoint has no state for opts.generator", 0) end
    self.generator:set_state(st.trainer)
  end
  core.set_rng_state(st.default)
end

--- Writes ckpt/step_<N>.safetensors (the model's state_dict, reference key names),
-- The names of the parameters that hold a gradient (zeroed after each update, never freed): they
-- keep being updated by every later update, so a resumed run must give them gradients again.
function Trainer:names_with_grad()
  local names = {}
  for _, pair in ipairs(self.params) do
    if pair[2].grad ~= nil then names[#names + 1] = pair[1] end
  end
  return json.array(names)
end

-- The loss scalers' states by task (nil without loss scaling).
function Trainer:scalers_state()
  if not self.scalers then return nil end
  local out = {}
  for task, sc in pairs(self.scalers) do out[task] = sc:state_dict() end
  return out
end

-- ckpt/train_state_<N>.safetensors (optimizer, step, RNG states, loader states) and then the
-- `latest` pointer, each atomically. A failure leaves the previous checkpoint and `latest` as they
-- were and raises an error; with several ranks, on every rank: rank 0 publishes `latest` only when
-- every rank wrote its own train state.
function Trainer:save()
  local dir = self:ckpt_dir()
  local n = self.global_step
  local multi = self.dist and self.world > 1
  -- whether every rank's ok is true (the barrier between the phases): the worst over the ranks
  local function all_ranks(ok)
    local t = core.tensor({ok and 0 or 1}, {dtype = "i64"})
    self.dist.all_reduce(t, "max")
    return t:item() == 0
  end
  local ok, err = pcall(function()
    mkdir_p(dir)
    if multi and self.rank > 0 then
      -- this rank's own position; `latest` (written by rank 0 after the barrier) covers it
      io_.save(string.format("%s/train_state_%d_rank%d.safetensors", dir, n, self.rank),
        {global_step = n, rank = self.rank, rng = self:rng_state(), loader = self.loader:state()})
    end
  end)
  if multi and not all_ranks(ok) and ok then
    ok, err = false, "another rank could not write its train state (its own error says why)"
  end
  if ok and self.rank == 0 then ok, err = pcall(function()
    io_.save(string.format("%s/step_%d.safetensors", dir, n), self.model:state_dict())
    io_.save(string.format("%s/train_state_%d.safetensors", dir, n), {
      format_version = FORMAT_VERSION,
      global_step = n,
      optimizer = self.optimizer:state_dict(),
      rng = self:rng_state(),
      loader = self.loader:state(),
      schedule = {lr = self.base_lr, warmup = self.warmup, total = self.total, accum = self.accum,
                  grad_norm = self.grad_norm},
      world_size = self.world,
      scalers = self:scalers_state(),
      running = self.running,
      with_grad = self:names_with_grad(),
    })
    -- the log lines and events of the updates this checkpoint covers reach the disk before it is published
    if self.log_file then
      local flushed, ferr = self.log_file:flush()
      if not flushed then error("writing log.jsonl failed: " .. tostring(ferr), 0) end
      io_.fsync(self.out_dir .. "/log.jsonl")
    end
    if self.tb then self.tb:sync() end
    write_atomic(dir .. "/latest", tostring(n) .. "\n")
  end) end
  if multi and not all_ranks(ok) and ok then
    ok, err = false, "rank 0 could not write the checkpoint (its own error says why)"
  end
  if not ok then
    error(string.format("Trainer: saving the checkpoint of step %d failed: %s", n, tostring(err)), 0)
  end
  self.last_saved = n
end

--- The step recorded in out_dir/ckpt/latest, or nil when there is no checkpoint. Without the
-- latest file (a run killed between its first checkpoint's files and the file that names it, or a
-- file deleted by hand), the newest step whose weights and train state are both there: taking such
-- a directory for an empty one would start the run over and write over its checkpoints.
function Trainer.latest_step(out_dir)
  if type(out_dir) ~= "string" then
    error("Trainer.latest_step: expected the run's output directory, got " .. tostring(out_dir), 2)
  end
  local text = read_file(out_dir .. "/ckpt/latest")
  if not text then
    local ok, names = pcall(core.fs_listdir, out_dir .. "/ckpt")
    if not ok then return nil end
    local have, newest = {}, nil
    for _, name in ipairs(names) do have[name] = true end
    for _, name in ipairs(names) do
      local n = math.tointeger(tonumber(name:match("^step_(%d+)%.safetensors$")))
      if n and have[string.format("train_state_%d.safetensors", n)] and (not newest or n > newest) then newest = n end
    end
    return newest
  end
  local n = math.tointeger(tonumber(text:match("^%s*(%d+)%s*$")))
  if not n then error(string.format("Trainer: '%s/ckpt/latest' does not hold a step number", out_dir), 0) end
  return n
end

-- Keeps the lines of log.jsonl up to `step` (a run that stopped after its last checkpoint logged
-- updates that the resumed run does again).
local function truncate_log(path, step)
  local text = read_file(path)
  if not text then return end
  local keep = {}
  for line in text:gmatch("[^\n]+") do
    local ok, rec = pcall(json.decode, line)
    if ok and type(rec) == "table" and math.type(rec.step) == "integer" and rec.step <= step then
      keep[#keep + 1] = line
    end
  end
  write_atomic(path, #keep > 0 and table.concat(keep, "\n") .. "\n" or "")
end

--- Restores the checkpoint named by out_dir/ckpt/latest (or `step`): parameters, optimizer,
-- global step, every generator's state and every task loader's position. Returns the step, or nil
-- (and changes nothing else) when out_dir has no checkpoint. When out_dir is this trainer's own,
-- log.jsonl is cut back to the lines of steps <= the checkpoint's (to none without a checkpoint:
-- a stopped run's updates that no checkpoint covers are done again and logged again) and the
-- TensorBoard events get a session start at step + 1 (see the top of this file).
function Trainer:resume(out_dir, step)
  out_dir = out_dir or self.out_dir
  if type(out_dir) ~= "string" then error("Trainer:resume: no out_dir", 2) end
  step = step or Trainer.latest_step(out_dir)
  if not step then
    if self.out_dir == out_dir and self.log then
      truncate_log(out_dir .. "/log.jsonl", 0)
      self.resumed_at = 0
    end
    return nil
  end
  local dir = out_dir .. "/ckpt"
  local mpath = string.format("%s/step_%d.safetensors", dir, step)
  local spath = string.format("%s/train_state_%d.safetensors", dir, step)
  for _, p in ipairs {mpath, spath} do
    if not file_exists(p) then error(string.format("Trainer:resume: '%s' is missing", p), 2) end
  end
  local st = io_.load(spath)
  if st.format_version ~= FORMAT_VERSION or st.global_step ~= step then
    error(string.format("Trainer:resume: '%s' is not a train state of step %d (format %s)", spath, step,
      tostring(st.format_version)), 2)
  end
  if (st.world_size or 1) ~= self.world then
    error(string.format("Trainer:resume: the checkpoint of step %d was written by %d rank(s), this run has %d", step,
      st.world_size or 1, self.world), 2)
  end
  if self.rank > 0 then
    -- this rank's own RNG and loader positions
    local rpath = string.format("%s/train_state_%d_rank%d.safetensors", dir, step, self.rank)
    if not file_exists(rpath) then error(string.format("Trainer:resume: '%s' is missing", rpath), 2) end
    local own = io_.load(rpath)
    st.rng, st.loader = own.rng, own.loader
  end
  local sd = io_.load(mpath)
  self.model:load_state_dict(sd)
  self.optimizer:load_state_dict(st.optimizer)
  -- zero_grad zeroes gradients without freeing them, so every parameter that ever had a gradient
  -- keeps being updated (moment decay, weight decay) even by updates of other tasks: give those
  -- zero gradients again. The checkpoint lists them (an update skipped by the loss scaler leaves
  -- gradients without optimizer state); older checkpoints: the parameters with optimizer state.
  local with_grad = {}
  if type(st.with_grad) == "table" then
    for _, name in ipairs(st.with_grad) do with_grad[name] = true end
  else
    for name in pairs(self.optimizer.state or {}) do with_grad[name] = true end
  end
  for _, pair in ipairs(self.params) do
    local name, p = pair[1], pair[2]
    if with_grad[name] and p.grad == nil then
      p.grad = core.zeros(p:size(), {dtype = p:dtype(), device = p:device()})
    end
  end
  if self.scalers then
    self.scalers = {}
    for task, ssd in pairs(st.scalers or {}) do self:scaler(task):load_state_dict(ssd) end
  end
  self.loader:set_state(st.loader)
  self:set_rng_state(st.rng)
  self.running = {}
  for k, v in pairs(type(st.running) == "table" and st.running or {}) do self.running[k] = v end
  self.global_step = step
  self.last_saved = step
  self.params_synced = false
  if self.out_dir == out_dir and self.log then
    truncate_log(out_dir .. "/log.jsonl", step)
    self.resumed_at = step
  end
  return step
end

-- ------------------------------------------------------------------ the loop

--- Runs `num_updates` optimizer updates (validating and saving on schedule, saving at the end
-- when out_dir is set). Returns the array of update records.
function Trainer:train(num_updates)
  if math.type(num_updates) ~= "integer" or num_updates < 0 then
    error("Trainer:train: the number of updates must be a non-negative integer", 2)
  end
  if self.model.train then self.model:train() end
  if self.dist and not self.params_synced then
    self.dist.broadcast_parameters(self.params, 0)
    self.params_synced = true
  end
  if self.out_dir and self.rank == 0 and not self.cleaned then
    -- what a killed writer left behind (no rank writes between two train calls)
    io_.remove_stale_temporaries(self:ckpt_dir())
    io_.remove_stale_temporaries(self.out_dir)
    self.cleaned = true
  end
  self.target_step = self.global_step + num_updates
  local stats = {updates = 0, seconds = 0, tokens = 0}
  local records = {}
  local ok, err = pcall(function()
    for _ = 1, num_updates do
      local rec = self:update()
      stats.updates = stats.updates + 1
      stats.seconds = stats.seconds + rec.seconds
      stats.tokens = stats.tokens + (rec.tokens or 0)
      -- every valid_every updates, and once more at the schedule's last update when that is not a
      -- multiple (the reference's scripts validate after their loop in that case)
      local due = self.valid_every > 0 and (self.global_step % self.valid_every == 0 or self.global_step == self.total)
      if due and (next(self.valid) or self.on_validate) then
        rec.valid = next(self.valid) and self:validate() or {}
        if self.on_validate then
          -- a caller's own evaluation (e.g. the full retrieval evaluation of fine-tuning)
          local was_training = self.model.training
          local extra = self.on_validate(self.global_step)
          if was_training ~= false and self.model.train then self.model:train() end
          for k, v in pairs(extra or {}) do rec.valid[k] = v end
        end
      end
      self:write_log(rec)
      records[#records + 1] = rec
      self:draw_progress(rec, stats)
      if self.save_every > 0 and self.global_step % self.save_every == 0 then self:save() end
    end
    if self.out_dir and num_updates > 0 and self.last_saved ~= self.global_step then self:save() end
  end)
  if self.progress and stats.updates > 0 then io.stderr:write("\n") end
  if self.log_file then
    self.log_file:close()
    self.log_file = nil
  end
  if not ok then error(err, 0) end
  return records
end

return Trainer
