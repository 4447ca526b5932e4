--- HERO pre-training (hero-spec §4.6, §6): task mixing, accumulation, warmup-linear schedule,
-- clipping, AdamW, validation, JSON-lines log, atomic checkpoints and exact resume.
--
--   lua5.4 examples/pretrain.lua --fixture spec/fixtures/hero-smoke --out /tmp/run --steps 20
--   lua5.4 examples/pretrain.lua --fixture spec/fixtures/hero-smoke --out /tmp/run --steps 40 --resume
--   lua5.4 examples/pretrain.lua --config hero_pretrain.json --vfeat-db video_db/tv/resnet_slowfast_1.5 \
--       --sub-db txt_db/tv_subtitles.db --train-ids txt_db/pretrain_splits/tv_train.json --out /tmp/run
--
--   lua5.4 examples/pretrain.lua --train-config config/pretrain-tv-16gpu.json --txt-db /txt --img-db /video \
--       --out /tmp/run [--steps N]
--
-- Databases given without --train-config train with the released TV config's task ratios (2,2,1,2),
-- batch size (32 videos) and VSM losses and schedules (start/end loss on 20% of the VSM batches from
-- the first update, hard negatives after 20000 updates, all negatives): HERO's recipe, with the
-- options below on top. A fixture trains with equal ratios and the model's own defaults.
--
-- --train-config FILE takes the reference's pre-training config (pretrain-*.json) as it is: its
-- targets (video db + subtitle db, splits of tasks with ratios, train/val id files), model config,
-- checkpoint (a RoBERTa state dict with load_partial_pretrained), batch size, accumulation, learning
-- rate schedule, clipping, AdamW betas and decay, dropout, seed, validation and checkpoint intervals,
-- the VSM losses and their schedules (hard negatives, start/end loss) and use_all_neg; keys it lacks
-- take the reference's defaults (hero.train.pretrain_config). Loaders are named <task>_<target>_<split>.
-- Options given on the command line win over the config's values, pretrain.py's own spelled as
-- there too (--learning_rate 5e-5, --hard_negtiave_start_step 1000, --use_all_neg, --output_dir DIR,
-- ...), as its parse_with_config puts them over the config; a --config that holds targets (and no
-- model) is such a config, as pretrain.py --config FILE; its output_dir is where --out defaults to.
--
-- Options (defaults in brackets):
--   --train-config FILE  the reference's pre-training config (see above); with --txt-db DIR and
--                        --img-db DIR as the roots of its relative paths [its txt_db / img_db]
--   --config FILE        model config: the reference's JSON ({f_config, c_config, q_config}) or a Lua
--                        file returning such a table, or {model_config =, constants =} [fixture's]
--   --fixture DIR        train on the collated batches of a fixture directory (batch_<task>.safetensors,
--                        optim_batch_<task>_mb1.safetensors and their .json sides)
--   --vfeat-db DIR       or train on HERO databases: the video feature LMDB (e.g. video_db/tv/resnet_slowfast_1.5)
--   --sub-db DIR         ... and the subtitle text db (e.g. txt_db/tv_subtitles.db); both required together
--   --max-clip-len N     frames per video [100]      --max-txt-len N  tokens per subtitle (MLM, VSM) [60;
--                        the config's max_txt_len is not read, as the reference does not]
--   --sub-ctx-len N      preceding subtitles in each segment's text [0]
--   --batch-size N       videos per micro-batch [32, or the --train-config's train_batch_size]; this
--                        option and those below up to --prefetch read databases (a fixture's batches
--                        are already collated: they are refused with --fixture)
--   --val-batch-size N   videos per validation batch [the --train-config's val_batch_size, else --batch-size]
--   --bucket K           length buckets of K batches [0: none, random batches as the reference]
--   --mask-prob P        MLM / MFM / FOM rate [0.15] --train-ids FILE  JSON array of video ids [all of vid2len]
--   --valid-ids FILE     JSON array of validation video ids (one fixed pass per validation) [none]
--   --on-error skip|error  a video that cannot be read is skipped and reported, or stops the run [skip]
--   --workers N          threads reading and collating batches while the model computes (one pool
--                        shared by every task; the same batches as without; on a GPU they also
--                        upload them on a second stream) [0: on the training thread]
--   --prefetch N         batches read ahead per task with --workers [2]
--   --init FILE          initial weights (safetensors, reference key names) [DIR/weights.safetensors
--                        with --fixture, else the model's random initialisation]
--   --out DIR            output directory: log.jsonl, hps.json, ckpt/ (required) [--train-config's output_dir]
--   --steps N            train until update N [10]; also the schedule's total unless --total
--   --total N            updates of the learning-rate schedule [--steps]
--   --resume             continue from DIR/ckpt/latest when it exists
--   --threads N          hero.set_num_threads(N)
--   --tasks a,b,...      tasks to mix [mlm,mfm-nce,fom,vsm]
--   --ratios 2,2,1,2     pool ratio of each task [databases: the released 2,2,1,2 (others 1); fixture: 1 each]
--   --accum K            micro-batches per update [2]
--   --lr X               base learning rate [3e-5]
--   --warmup N           warmup updates [10% of --total]
--   --weight-decay X     [0.01]     --grad-norm X [1.0]     --dropout P [0.1]
--   --valid-every N      validate every task every N updates [0: never]
--   --save-every N       checkpoint every N updates [0: only at the end]
--   --seed N             seed of the task draws, the dropout generator and hero's default [77]
--   --vfeat-dim N        frame feature size [fixture's, else 4352]
--   --max-frm-seq-len N  frames per subtitle segment [fixture's, else 100]
--   --quiet              no progress line on stderr
--   --amp bf16|f16|f32   mixed precision: forward under hero.amp.autocast (f32 master weights); f16
--                        scales each task's loss with its own GradScaler [f32; a --train-config's
--                        fp16: true is f16 on a GPU]
--   --device D           where the model computes: cpu, cuda (with --dist: the GPU of the rank's index
--                        on its node) or cuda:N [cpu]; batches are made on the CPU and moved there
--   --dist               data-parallel over MPI (launch with mpirun): each rank reads its shard of the
--                        videos, rank 0 logs and checkpoints (README "Data-parallel training")
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local hero = require "hero"
local json = hero.json
local train = hero.train

local TASKS = {"mlm", "mfm-nce", "fom", "vsm"}
local rank, world = 0, 1 -- set by hero.dist.init() with --dist

-- ------------------------------------------------------------------ command line

local function usage(msg)
  -- a library's error reads without its position inside hero (hero.cli.error_text)
  io.stderr:write("pretrain: ", hero.cli.error_text(msg), "\n(lua5.4 examples/pretrain.lua --help for the options)\n")
  os.exit(2)
end

local function parse_args(argv)
  local opts, err = hero.cli.parse_options(argv, {flags = hero.cli.set {"resume", "quiet", "dist"},
    values = hero.cli.set {"config", "fixture", "init", "out", "steps", "total", "threads", "tasks", "ratios",
                           "accum", "lr", "warmup", "weight-decay", "grad-norm", "dropout", "valid-every",
                           "save-every", "seed", "vfeat-dim", "max-frm-seq-len", "vfeat-db", "sub-db",
                           "max-clip-len", "max-txt-len", "sub-ctx-len", "batch-size", "val-batch-size", "bucket",
                           "mask-prob", "train-ids", "valid-ids", "on-error", "workers", "prefetch", "device", "amp",
                           "train-config", "txt-db", "img-db"}})
  if not opts then usage(err) end
  return opts
end

local function int_opt(opts, name, default, min)
  local v = opts[name]
  if v == nil then return default end
  local n = hero.cli.decimal_integer(v)
  min = min or 0
  if not n or n < min then
    usage(string.format("--%s must be %s integer, got '%s'", name, min == 0 and "a non-negative" or "a positive", v))
  end
  return n
end

local function num_opt(opts, name, default)
  local v = opts[name]
  if v == nil then return default end
  local n = hero.cli.decimal_number(v)
  if not n then usage(string.format("--%s must be a finite decimal number, got '%s'", name, v)) end
  return n
end

local function split(s)
  local out = {}
  for part in s:gmatch("[^,]+") do out[#out + 1] = part end
  return out
end

local function read_file(path, flag)
  local s, err = hero.cli.read_file(path, flag)
  if not s then usage(err) end
  return s
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- A config file: JSON, or Lua returning a table.
local function load_config(path, flag)
  local ok, t
  if path:match("%.lua$") then
    local chunk, err = loadfile(path, "t", {math = math})
    if not chunk then usage(err) end
    ok, t = pcall(chunk)
  else
    ok, t = pcall(json.decode, read_file(path, flag), {source = path})
  end
  if not ok then usage(tostring(t)) end
  if type(t) ~= "table" then usage(string.format("%s does not hold a config object (got a %s)", path, type(t))) end
  return t
end

-- ------------------------------------------------------------------ data sources
-- A data source is function(options, tasks) -> {task = loader} for training and
-- {task = batches or loader} for validation. The database readers plug in here as another source.

local sources = {}

function sources.fixture(opts, tasks)
  local all = train.fixture_batches(opts.fixture, tasks)
  local loaders, valid = {}, {}
  for _, t in ipairs(tasks) do
    if not all[t] then usage(string.format("the fixture '%s' has no batch for task '%s'", opts.fixture, t)) end
    loaders[t] = train.CyclingLoader(all[t])
    valid[t] = all[t]
  end
  return loaders, valid
end

--- HERO databases: a TaskLoader per loader of each target (hps.targets: {video_db, sub_db,
-- loaders = {{name, task, train_ids = JSON file or nil (every video of the subtitle db's
-- vid2len.json), val_ids = JSON file or nil}}}), each with its own seed; a loader's val_ids give
-- one fixed pass of its task for validation. A skipped video is reported on stderr the first time.
function sources.db(opts, _, hps, device)
  -- an id file the command line names is named by its option in messages
  local flag_of = {}
  for _, k in ipairs {"train-ids", "valid-ids"} do
    if opts[k] then flag_of[opts[k]] = "--" .. k .. " " end
  end
  local function ids_from(path)
    if not path then return nil end
    local ids = json.decode(read_file(path), {source = path})
    if type(ids) ~= "table" or #ids == 0 then usage(path .. " must hold a non-empty JSON array of video ids") end
    return ids
  end
  local function dataset_opts(target, ids)
    return {video_db = target.video_db, sub_db = target.sub_db, max_clip_len = hps.max_clip_len,
            max_txt_len = hps.max_txt_len, sub_ctx_len = hps.sub_ctx_len, ids = ids}
  end
  -- The videos of an id file are looked up in both databases before anything is written: a file
  -- none of whose ids they hold ran until the first epoch found nothing to read, after hps.json
  -- was written. Some missing ids are fine: those videos are skipped and reported, as unreadable ones.
  local function check_ids(ds, path)
    if not path then return ds end
    local function set(list)
      local out = {}
      for _, k in ipairs(list) do out[k] = true end
      return out
    end
    local in_sub, in_video = set(ds.sub_db:keys()), set(ds.video_db:keys())
    local ids, found, first_missing = ds:ids(), 0, nil
    for _, vid in ipairs(ids) do
      if in_sub[vid] and in_video[vid] then found = found + 1 else first_missing = first_missing or vid end
    end
    if found == 0 then
      usage(string.format("%s%s: none of its %d video ids is in both the video db and the subtitle db (first: '%s')",
        flag_of[path] or "", path, #ids, tostring(first_missing)))
    end
    return ds
  end
  local opened = {} -- one dataset per (target, id file)
  local function dataset(target, path)
    local key = target.video_db .. "\0" .. target.sub_db .. "\0" .. tostring(path)
    if type(path) == "table" then key = key .. "\0" .. table.concat(path, "\0") end
    if not opened[key] then
      local ok, ds = pcall(function()
        if type(path) ~= "table" then
          return check_ids(hero.data.VideoSubDataset(dataset_opts(target, ids_from(path))), path)
        end
        -- the target's feature shards, each with its id file, as one dataset
        local parts = {}
        for k, shard in ipairs(target.shards) do
          local o = dataset_opts(target, ids_from(path[k]))
          o.video_db = shard
          parts[k] = check_ids(hero.data.VideoSubDataset(o), path[k])
        end
        return hero.data.ConcatDataset {parts = parts}
      end)
      if not ok then usage(tostring(ds)) end
      opened[key] = ds
    end
    return opened[key]
  end
  -- what a worker thread builds the same dataset from
  local function dataset_spec(target, ds)
    if not ds.parts then
      local spec = dataset_opts(target, ds:ids())
      spec.type = "VideoSubDataset"
      return spec
    end
    local parts = {}
    for k, part in ipairs(ds.parts) do
      parts[k] = dataset_opts(target, part:ids())
      parts[k].video_db, parts[k].type = target.shards[k], "VideoSubDataset"
    end
    return {type = "ConcatDataset", parts = parts}
  end
  local reported = {}
  local function report(task)
    return function(vid, why)
      if reported[vid] then return end -- once per video, not once per epoch and task
      reported[vid] = true
      io.stderr:write(string.format("\n[%s] skipped video %s: %s\n", task, vid, why))
    end
  end
  local loaders, valid = {}, {}
  local specs, skips = {}, {}
  local first_ds
  local i = 0
  for _, target in ipairs(hps.targets) do
    for _, l in ipairs(target.loaders) do
      i = i + 1
      local train_ds = dataset(target, l.train_ids)
      first_ds = first_ds or train_ds
      local common = {task = l.task, batch_size = hps.batch_size, on_error = hps.on_error, on_skip = report(l.name),
        task_opts = {mask_prob = hps.mask_prob}}
      local o = {dataset = train_ds, seed = hps.seed + 1000 * i, bucket = hps.bucket, rank = rank, world_size = world}
      for k, v in pairs(common) do o[k] = v end
      if hps.workers > 0 then
        -- with --workers, a dataset spec each worker opens for itself
        o.dataset, o.on_skip = dataset_spec(target, train_ds), nil
        specs[l.name], skips[l.name] = o, common.on_skip
      else
        local ok, tl = pcall(hero.data.TaskLoader, o)
        if not ok then usage(tostring(tl)) end
        -- time spent making batches on the training thread, reported as the workers' wait is
        loaders[l.name] = require("hero.data.prefetch").timed(tl)
      end
      if l.val_ids then
        -- each rank validates its own shard (the reference's video_ids[rank::size]); VSM's shards are
        -- of one size (the last n % world videos left out): it gathers every rank's batch, so the
        -- ranks must run as many batches
        local vo = {dataset = dataset(target, l.val_ids), seed = hps.seed + 1000 * i + 500, shuffle = false,
          rank = rank, world_size = world, equal_shards = l.task == "vsm"}
        for k, v in pairs(common) do vo[k] = v end
        vo.batch_size = hps.val_batch_size
        local ok, vl = pcall(hero.data.TaskLoader, vo)
        if not ok then usage(tostring(vl)) end
        valid[l.name] = vl
      end
    end
  end
  if hps.workers > 0 then
    -- on a GPU the workers also upload the batches, overlapping the model's computation
    local ok, l = pcall(hero.data.prefetch_loaders, {loaders = specs, workers = hps.workers, depth = hps.prefetch,
      on_skip = skips, device = device ~= "cpu" and device or nil})
    if not ok then usage(tostring(l)) end
    loaders = l
  end
  return loaders, valid, first_ds
end

-- ------------------------------------------------------------------ main

-- pretrain.py's options (--learning_rate 3e-5, --output_dir DIR, ...), which go over the
-- --train-config's keys as parse_with_config puts them; --config, --seed and --dropout are ours
local ref_values, ref_given, own_args
do
  local ok, v, rest, g = pcall(hero.cli.parse_reference, arg, "pretrain", {config = true, seed = true, dropout = true})
  if not ok then usage(tostring(v)) end
  ref_values, own_args, ref_given = v, rest, g
end
local opts = parse_args(own_args)
-- pretrain.py --config FILE names the training config: a --config holding targets (and no
-- model) is one, as --train-config
if opts.config and not opts.config:match("%.lua$") then
  local ok, t = pcall(json.decode, read_file(opts.config, "--config"), {source = opts.config})
  if ok and type(t) == "table" and t.targets ~= nil and t.f_config == nil then
    if opts["train-config"] then usage("--config and --train-config both name a pre-training config") end
    opts["train-config"], opts.config = opts.config, nil
  end
end
if #ref_given > 0 and not opts["train-config"] then
  usage("--" .. ref_given[1] .. " is an option of the reference's config: it goes with --train-config FILE")
end
for _, pair in ipairs {{"out", "output_dir"}, {"txt-db", "txt_db"}, {"img-db", "img_db"}} do
  if opts[pair[1]] and ref_values[pair[2]] ~= nil then
    usage(string.format("--%s and --%s say the same: give one", pair[1], pair[2]))
  end
end
if opts.dist then rank, world = hero.dist.init() end
if opts.threads then
  local ok, err = hero.cli.set_threads(opts.threads)
  if not ok then usage(err) end
end

-- the reference's pre-training config, when given
local PC = require "hero.train.pretrain_config"
local FT = require "hero.train.finetune"
local tc, tc_targets
if opts["train-config"] then
  for _, k in ipairs {"fixture", "vfeat-db", "sub-db", "tasks", "ratios", "train-ids", "valid-ids"} do
    if opts[k] then
      usage("--" .. k .. " and --train-config do not go together: the config gives the data and tasks")
    end
  end
  local ok, t = pcall(function()
    local raw = json.decode(read_file(opts["train-config"], "--train-config"), {source = opts["train-config"]})
    if type(raw) == "table" then raw = hero.cli.with_overrides(raw, ref_values) end
    local c = PC.hparams(raw, opts["train-config"])
    return {c, PC.targets(c, {txt_db = opts["txt-db"], img_db = opts["img-db"]}, FT.video_db_dir)}
  end)
  if not ok then usage((tostring(t):gsub("^[^\n]-:%d+: ", ""))) end
  tc, tc_targets = t[1], t[2]
  -- pretrain.py's output_dir, unless --out names another
  if not opts.out and type(tc.output_dir) == "string" then opts.out = tc.output_dir end
elseif opts["txt-db"] or opts["img-db"] then
  usage("--txt-db and --img-db are the roots of a --train-config's paths")
end
if not opts.out then usage("--out DIR is required") end
if hero.core.fs_kind(opts.out) and hero.core.fs_kind(opts.out) ~= "directory" then
  usage("--out " .. opts.out .. " exists and is not a directory")
end
do
  local ok, err = pcall(train.check_run_dir, opts.out, opts.resume)
  if not ok then usage(err) end
end

local source
if tc then
  source = sources.db
elseif opts.fixture and (opts["vfeat-db"] or opts["sub-db"]) then
  usage("give either --fixture DIR or --vfeat-db DIR --sub-db DIR, not both")
elseif opts.fixture then
  source = sources.fixture
elseif opts["vfeat-db"] and opts["sub-db"] then
  source = sources.db
elseif opts["vfeat-db"] or opts["sub-db"] then
  usage("--vfeat-db and --sub-db go together")
else
  usage("no data source: give --fixture DIR (collated batches), --vfeat-db DIR --sub-db DIR (databases) "
    .. "or --train-config FILE (the reference's pre-training config)")
end

-- Databases without --train-config train with the released TV config's task ratios, batch size
-- and VSM losses and schedules (PC.released_tv); --tasks, --ratios and --batch-size change them.
local recipe = (source == sources.db and not tc) and PC.released_tv() or nil
local vsm_config = tc or recipe

-- model config and constants
local model_cfg, constants = nil, {}
local cfg_path = opts.config or (opts.fixture and opts.fixture .. "/config.json")
if tc then
  local ok, c, p = pcall(FT.model_config, tc, opts.config, opts["train-config"])
  if not ok then usage(tostring(c)) end
  model_cfg, cfg_path = c, p
else
  if not cfg_path then usage("--config FILE is required") end
  local raw = load_config(cfg_path, opts.config and "--config" or nil)
  if raw.f_config then
    model_cfg = raw
  elseif raw.model_config then
    model_cfg = raw.model_config.pretrain or raw.model_config
    constants = raw.constants or {}
  end
end
if type(model_cfg) ~= "table" or not model_cfg.f_config or not model_cfg.c_config then
  usage(cfg_path .. " holds no model config (f_config, c_config, q_config)")
end
do -- every section complete and usable (sizes, activation), named in the error
  local ok, full = pcall(hero.config.model, model_cfg)
  if not ok then usage(cfg_path .. ": " .. tostring(full):gsub("^[^\n]-:%d+: ", "")) end
  if full.f_config.vocab_size < 1 then usage(cfg_path .. ": f_config.vocab_size (the word vocabulary) is required") end
  model_cfg = full
end
if opts.config and opts.fixture and exists(opts.fixture .. "/config.json") then
  constants = load_config(opts.fixture .. "/config.json").constants or constants
end

local tasks, ratios = {}, {}
if tc then
  for _, target in ipairs(tc_targets) do
    for _, l in ipairs(target.loaders) do
      tasks[#tasks + 1] = l.name
      ratios[l.name] = l.ratio
    end
  end
else
  tasks = opts.tasks and split(opts.tasks) or TASKS
  local seen = {}
  for _, t in ipairs(tasks) do
    if not PC.TASKS[t] then usage(string.format("--tasks: unknown task '%s' (mlm, mfm-nce, mffr, fom, vsm)", t)) end
    if seen[t] then usage(string.format("--tasks: '%s' is listed twice (weigh it with --ratios)", t)) end
    seen[t] = true
  end
  if #tasks == 0 then usage("--tasks lists no task") end
  if opts.ratios then
    if opts.ratios:find(",,") or opts.ratios:find("^,") or opts.ratios:find(",$") then
      usage("--ratios has an empty value: '" .. opts.ratios .. "'")
    end
    local r = split(opts.ratios)
    if #r ~= #tasks then usage(string.format("--ratios has %d values for %d tasks", #r, #tasks)) end
    for i, t in ipairs(tasks) do
      ratios[t] = hero.cli.decimal_integer(r[i]) -- decimal, as every other integer of the command line
      if not ratios[t] or ratios[t] < 1 then usage("--ratios must be positive integers, got '" .. r[i] .. "'") end
    end
  else
    for _, t in ipairs(tasks) do ratios[t] = recipe and recipe.ratios[t] or 1 end
  end
end

-- the config's checkpoint: a RoBERTa state dict (load_partial_pretrained) or a HERO one; --init wins
local init_sd
if tc and not opts.init and type(tc.checkpoint) == "string" then
  if not exists(tc.checkpoint) then usage("the config's checkpoint '" .. tc.checkpoint .. "' does not exist") end
  local ok, sd = pcall(require("hero.models.checkpoint").read, tc.checkpoint)
  if not ok then usage("the config's checkpoint: " .. tostring(sd)) end
  init_sd = sd
end

-- a value of the config (tc[key]) unless the command line gives it
local function cfg(key, default)
  if tc and tc[key] ~= nil and tc[key] ~= json.null then return tc[key] end
  return default
end
local steps = int_opt(opts, "steps", cfg("num_train_steps", 10), 1)
local total = int_opt(opts, "total", tc and tc.num_train_steps or steps, 1)
local hps = {
  config = cfg_path, fixture = opts.fixture, init = opts.init or (init_sd and tc.checkpoint), tasks = tasks,
  ratios = ratios, accum = int_opt(opts, "accum", cfg("gradient_accumulation_steps", 2), 1),
  lr = num_opt(opts, "lr", cfg("learning_rate", 3e-5)), total = total,
  warmup = int_opt(opts, "warmup", cfg("warmup_steps", total // 10)),
  weight_decay = num_opt(opts, "weight-decay", cfg("weight_decay", 0.01)),
  grad_norm = num_opt(opts, "grad-norm", cfg("grad_norm", 1.0)),
  dropout = num_opt(opts, "dropout", cfg("dropout", 0.1)),
  valid_every = int_opt(opts, "valid-every", cfg("valid_steps", 0)),
  save_every = int_opt(opts, "save-every", cfg("save_steps", 0)),
  seed = int_opt(opts, "seed", cfg("seed", 77)), betas = cfg("betas", {0.9, 0.98}),
  vfeat_dim = int_opt(opts, "vfeat-dim", constants.vfeat_dim or 4352, 1),
  max_frm_seq_len = int_opt(opts, "max-frm-seq-len", init_sd and PC.max_frm_seq_len(init_sd)
    or constants.max_frm_seq_len or 100),
  train_config = opts["train-config"], reference_config = tc, vsm_recipe = recipe,
  optim = cfg("optim", "adamw"),
}
if not (hps.lr > 0 and hps.lr < math.huge) then usage("--lr must be a positive number, got " .. tostring(hps.lr)) end
if not (hps.dropout >= 0 and hps.dropout < 1) then
  usage("--dropout must be in [0, 1), got " .. tostring(hps.dropout))
end
if hps.weight_decay < 0 then usage("--weight-decay must be >= 0, got " .. tostring(hps.weight_decay)) end
-- as the reference: -1 is "no clipping"; 0 or another negative would zero or turn the step around
if hps.grad_norm ~= -1 and hps.grad_norm <= 0 then
  usage("--grad-norm must be > 0 (the norm to clip at) or -1 (no clipping), got " .. tostring(hps.grad_norm))
end
if hps.warmup >= hps.total then
  usage(string.format("--warmup (%d updates) must be below the run's %d updates", hps.warmup, hps.total))
end
if hps.max_frm_seq_len < 1 then usage("--max-frm-seq-len must be at least 1") end
if hps.vfeat_dim < 1 then usage("--vfeat-dim must be at least 1") end
if source == sources.db then
  hps.vfeat_db, hps.sub_db, hps.train_ids, hps.valid_ids = opts["vfeat-db"], opts["sub-db"], opts["train-ids"],
    opts["valid-ids"]
  hps.max_clip_len = int_opt(opts, "max-clip-len", cfg("max_clip_len", 100), 1)
  -- subtitles are cut at 60 tokens whatever the config's max_txt_len says: pretrain.py's
  -- load_video_sub_dataset never passes it on (VideoFeatSubTokDataset's default); only
  -- --max-txt-len changes the cut
  hps.max_txt_len = int_opt(opts, "max-txt-len", 60, 1)
  hps.sub_ctx_len = int_opt(opts, "sub-ctx-len", cfg("sub_ctx_len", 0))
  hps.batch_size = int_opt(opts, "batch-size", cfg("train_batch_size", recipe and recipe.train_batch_size or 8), 1)
  -- validation batches keep their own size, as pretrain.py's val_batch_size: MFM-NCE's and VSM's
  -- validation metrics take their negatives from the batch
  hps.val_batch_size = int_opt(opts, "val-batch-size", tc and tc.val_batch_size or hps.batch_size, 1)
  -- the reference draws its batches at random, without length buckets
  hps.bucket = int_opt(opts, "bucket", 0)
  hps.mask_prob = num_opt(opts, "mask-prob", cfg("mask_prob", 0.15))
  if not (hps.mask_prob > 0 and hps.mask_prob < 1) then usage("--mask-prob must be in (0, 1)") end
  if hps.max_clip_len < 1 then usage("--max-clip-len must be at least 1") end
  hps.on_error = opts["on-error"] or "skip"
  if hps.on_error ~= "skip" and hps.on_error ~= "error" then usage("--on-error must be skip or error") end
  if hps.batch_size < 1 then usage("--batch-size must be at least 1") end
  if hps.val_batch_size < 1 then usage("--val-batch-size must be at least 1") end
  hps.workers = int_opt(opts, "workers", 0)
  if hps.workers > hero.cli.MAX_WORKERS then
    usage(string.format("--workers must be at most %d, got %d", hero.cli.MAX_WORKERS, hps.workers))
  end
  hps.prefetch = int_opt(opts, "prefetch", 2)
  if hps.prefetch < 1 then usage("--prefetch must be at least 1") end
  if tc then
    hps.targets = tc_targets
  else
    local loaders = {}
    for i, t in ipairs(tasks) do
      loaders[i] = {name = t, task = t, train_ids = opts["train-ids"], val_ids = opts["valid-ids"]}
    end
    hps.targets = {{video_db = opts["vfeat-db"], sub_db = opts["sub-db"], loaders = loaders}}
  end
else
  -- the settings of the database loaders: with a fixture they would be ignored
  for _, k in ipairs {"workers", "max-clip-len", "max-txt-len", "sub-ctx-len", "batch-size", "val-batch-size",
                      "bucket", "mask-prob", "on-error", "prefetch", "train-ids", "valid-ids"} do
    if opts[k] then usage("--" .. k .. " reads databases: give --vfeat-db and --sub-db (a fixture's batches are "
      .. "already collated)") end
  end
end

local device = opts.device or "cpu"
if device == "cuda" then
  -- one GPU per rank: the rank's index among the ranks of its node (what mpirun calls local rank)
  local ngpu = hero.cuda.device_count()
  if ngpu == 0 then usage("--device cuda: no GPU is visible (hero.cuda.device_count() is 0)") end
  local local_rank = tonumber(os.getenv("OMPI_COMM_WORLD_LOCAL_RANK") or os.getenv("MPI_LOCALRANKID")
    or os.getenv("SLURM_LOCALID") or "") or rank
  device = "cuda:" .. math.tointeger(local_rank % ngpu)
elseif device ~= "cpu" and not device:match("^cuda:%d+$") then
  usage("--device must be cpu, cuda or cuda:N, got '" .. device .. "'")
end
local task_loaders, valid, train_ds = source(opts, tasks, hps, device)
if train_ds then
  -- the databases must fit the model: token ids below the vocabulary, frames of the feature size
  local mask = train_ds:special_ids().MASK
  if mask >= model_cfg.f_config.vocab_size then
    usage(string.format("the subtitle db's ids go up to %d but the model's vocabulary has %d rows "
      .. "(f_config.vocab_size)", mask, model_cfg.f_config.vocab_size))
  end
  -- the frame feature size is the database's; --vfeat-dim, when given, must agree with it
  for _, vid in ipairs(train_ds:ids()) do
    local ok, v = pcall(train_ds.get, train_ds, vid)
    if ok and v then
      local d = v.v_feat:size(2)
      if opts["vfeat-dim"] and hps.vfeat_dim ~= d then
        usage(string.format("--vfeat-dim %d, but the video database holds %d-dimensional features", hps.vfeat_dim, d))
      end
      hps.vfeat_dim = d
      break
    end
  end
end

hero.manual_seed(hps.seed)
local dropout_gen = hero.Generator(hps.seed + 1)
local model_opts = {vfeat_dim = hps.vfeat_dim, max_frm_seq_len = hps.max_frm_seq_len, generator = dropout_gen,
  vocab_pad = constants.vocab_pad_pretraining}
if vsm_config then
  for k, v in pairs(PC.model_options(vsm_config)) do model_opts[k] = v end
end
local model = hero.models.HeroForPretraining(model_cfg, model_opts)
train.set_dropout(model, hps.dropout)
local init = opts.init or (opts.fixture and exists(opts.fixture .. "/weights.safetensors")
  and opts.fixture .. "/weights.safetensors")
if init then
  local ok, err = pcall(function() model:load_state_dict(hero.load(init), {strict = false}) end)
  if not ok then usage("--init " .. init .. ": " .. tostring(err):gsub("^[^\n]-%.lua:%d+: ", "")) end
elseif init_sd or (tc and tc.load_partial_pretrained) then
  -- with load_partial_pretrained and no checkpoint, the reference's RoBERTa path still runs (on an
  -- empty state dict): its lm_head.dense init, zero vocabulary padding, equal token-type rows
  local ok, report = pcall(PC.load_checkpoint, model, init_sd, tc, model_cfg.f_config.num_hidden_layers)
  if not ok then usage("the config's checkpoint: " .. tostring(report)) end
  if rank == 0 and init_sd then
    io.stderr:write(string.format("%s: %d parameters not in the checkpoint (initialised), %d of its keys unused\n",
      tc.checkpoint, #report.missing, #report.unexpected))
  end
end
if opts.amp and opts.amp ~= "bf16" and opts.amp ~= "f16" and opts.amp ~= "f32" then
  usage("--amp must be bf16, f16 or f32, got '" .. tostring(opts.amp) .. "'")
end
if device ~= "cpu" then
  local ok, err = pcall(model.to, model, device)
  if not ok then usage((tostring(err):gsub("^[^\n]-:%d+: ", ""))) end
end
-- the precision: --amp, else the training config's fp16 as fine-tuning reads it (FT.FP16): f16
-- autocast with loss scaling on a GPU, f32 on the CPU
local amp = opts.amp
if amp == nil and tc and tc.fp16 == true then
  amp = device ~= "cpu" and "f16" or nil
  if rank == 0 then io.stderr:write("note: ", FT.FP16[device ~= "cpu" and "device" or "cpu"], "\n") end
end
if amp == "f32" then amp = nil end
hps.amp = amp -- in hps.json (absent: f32), so that --resume refuses another precision

-- the config's optim (build_optimizer: lr and betas passed, eps the class's default: AdamW's 1e-6)
local optimizer = hero.optim.by_config_name(hps.optim)(model:named_parameters(), {lr = hps.lr,
  betas = {hps.betas[1], hps.betas[2]}, weight_decay = hps.weight_decay,
  no_decay = {"bias", "LayerNorm.bias", "LayerNorm.weight"}})

local meta = train.MetaLoader{tasks = task_loaders, ratios = ratios, order = tasks, accum = hps.accum,
  generator = hero.Generator(hps.seed)}
local trainer = train.Trainer{
  model = model, optimizer = optimizer, loader = meta, lr = hps.lr, warmup = hps.warmup, total = hps.total,
  grad_norm = hps.grad_norm ~= -1 and hps.grad_norm or false, accum = hps.accum, valid_every = hps.valid_every,
  valid = valid, forward_opts = vsm_config and PC.forward_opts(model, vsm_config) or nil,
  -- validation reports the reference's metrics per task (loss, accuracy, ...), with its loss weights
  validators = require("hero.train.pretrain_valid").validators(vsm_config or model.opts),
  save_every = hps.save_every, out_dir = opts.out, progress = not opts.quiet,
  dist = opts.dist and true or nil, seed = opts.dist and hps.seed or nil, device = device, amp = amp,
}

-- with --dist a rank that fails while the others wait in a collective ends the whole job at once
-- (hero.dist.run), instead of leaving them to the watchdog
local function guarded(fn, ...)
  if opts.dist then return hero.dist.run(fn, ...) end
  return fn(...)
end

local start = 0
if opts.resume then
  -- a checkpoint that cannot be read back (a torn or foreign ckpt/latest, a truncated step file)
  -- is named, without a traceback; with --dist, hero.dist.run ends every rank on it
  local function resume_failed(err)
    usage("--resume: " .. hero.cli.error_text(err):gsub("^Trainer:?%w*: ", ""))
  end
  local ok_latest, latest = pcall(train.Trainer.latest_step, opts.out)
  if not ok_latest then resume_failed(latest) end
  if latest then
    -- as the reference's TrainingRestorer: the same settings as the run was started with
    local ok, err = pcall(train.check_resumed_settings, opts.out .. "/hps.json", hps,
      {"workers", "prefetch", "on_error", "save_every", "valid_every", "val_batch_size"})
    if not ok then usage(err) end
  end
  if opts.dist then
    start = guarded(trainer.resume, trainer, opts.out) or 0
  else
    local ok_resume, step = pcall(trainer.resume, trainer, opts.out)
    if not ok_resume then resume_failed(step) end
    start = step or 0
  end
  if start > 0 then io.stderr:write(string.format("resumed from %s/ckpt/step_%d\n", opts.out, start)) end
end
if start == 0 and rank == 0 then
  local made, err = hero.cli.make_dir(opts.out, "--out")
  if not made then usage(err) end
  json.write_file(opts.out .. "/hps.json", hps, {indent = 1}) -- atomic: a kill leaves the old file or the new
end

local todo = math.max(0, steps - start)
local t0 = hero.core._now()
if opts.dist then
  guarded(trainer.train, trainer, todo)
else
  -- a failure while training (a video that cannot be read with --on-error error, a full disk) is
  -- its message, with the checkpoints written so far kept for --resume; exit status 1: not a usage error
  local ok, err = pcall(trainer.train, trainer, todo)
  if not ok then
    io.stderr:write("\npretrain: ", hero.cli.error_text(err), "\n")
    os.exit(1)
  end
end
local dt = hero.core._now() - t0
if rank == 0 then
  io.stderr:write(string.format("%d updates in %.2f s (%.4f s per update); checkpoint %s/ckpt/step_%d\n", todo, dt,
    todo > 0 and dt / todo or 0, opts.out, trainer.global_step))
end
if train_ds then
  local waited, served, firsts, blocked = 0, 0, 0, 0
  for _, t in ipairs(tasks) do
    local l = task_loaders[t]
    local st = l.stats
    io.stderr:write(string.format("  %-8s epoch %d, %d batches, %d videos, %d skipped\n", t, l.epoch,
      st.batches, st.videos, st.skipped))
    if l.wait_seconds then
      local w, n, f = l:wait_seconds()
      waited, served, firsts = waited + w, served + n, firsts + f
      blocked = blocked + l:blocked_seconds()
    end
  end
  if todo > 0 then
    -- the training step's wait for data; each task's first batch also waits for the pipeline to fill
    io.stderr:write(string.format("  data: %s, waited %.4f s per update (%.4f s per micro-batch; %.4f s per "
      .. "update after each task's first batch, which took %.3f s in all; %.4f s per update blocked on "
      .. "unfinished batches)\n",
      hps.workers > 0 and string.format("%d worker thread(s)", hps.workers) or "on the training thread",
      waited / todo, served > 0 and waited / served or 0, (waited - firsts) / todo, firsts, blocked / todo))
  end
  for _, t in ipairs(tasks) do
    if task_loaders[t].close then task_loaders[t]:close() end
  end
end
