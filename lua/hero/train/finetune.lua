--- hero.train.finetune: fine-tuning and evaluation of HERO's downstream tasks (hero-spec §5, §6),
-- driven by the reference's training configs (config/train-*.json) as they are.
--
--   local FT = require "hero.train.finetune"
--   local hps = FT.hparams("vcmr", hero.json.read_file("train-tvr-8gpu.json"))
--   local run = FT.setup{task = "vcmr", hps = hps, model_config = cfg, checkpoint = "hero-tv-ht100.pt",
--                        vfeat_db = "video_db/tv", sub_db = "txt_db/tv_subtitles.db",
--                        txt_db = "txt_db/tvr_train.db", out_dir = "run"}
--   run.trainer:train(10)
--   local results = FT.evaluate("vcmr", run.model, hps, {...})
--
-- Tasks: "vcmr" (TVR, How2R, DiDeMo with subtitles; HeroForVcmr), "vr" (MSR-VTT with subtitles;
-- HeroForVr), "videoqa" (TVQA, How2QA), "violin", "tvc". What follows the reference:
--   * AdamW (eps 1e-6, the config's betas, weight decay by name: no decay for names containing
--     bias / LayerNorm.bias / LayerNorm.weight) in four groups, parameters outside v_encoder first;
--     VideoQA, VIOLIN and TVC multiply the learning rate of the groups outside v_encoder by lr_mul,
--     VCMR and VR ignore lr_mul (train_*.py, hero-spec §6.2);
--   * warmup_linear schedule over num_train_steps, clipping at grad_norm (-1: none), accumulation of
--     gradient_accumulation_steps summed micro-batches;
--   * VCMR: the model starts without the local start/end loss (lw_st_ed 0) and gets lw_st_ed once
--     train_span_start_step updates are done (-1: never); hard negatives (hard_pool_size[i],
--     hard_neg_weights[i]) once hard_negtiave_start_step[i] updates are done (-1: never);
--   * a config key the released configs set but this one lacks takes the reference's argparse
--     default (config/config.py), except the keys in FT.REQUIRED, which must be present.
local core = require "hero.core"
local json = require "hero.json"
local config = require "hero.config"
local optim = require "hero.optim"
local data = require "hero.data"
local D = require "hero.data.downstream"
local tasks = require "hero.data.tasks"
local collate = require "hero.data.collate"

local FT = {}

FT.TASKS = {"vcmr", "vr", "videoqa", "violin", "tvc"}

-- The reference's task names each CLI task accepts (the first is the default).
FT.TASK_NAMES = {
  vcmr = {"tvr", "how2r", "didemo_video_sub", "didemo_video_only"},
  vr = {"msrvtt_video_sub", "msrvtt_video_only"},
  videoqa = {"tvqa", "how2qa"},
  violin = {"violin"},
  tvc = {"tvc"},
}

-- The reference script that trains each task (its command-line options: hero.cli.REFERENCE_OPTIONS).
FT.REFERENCE_SCRIPT = {vcmr = "train_vcmr", vr = "train_vr", videoqa = "train_videoQA", violin = "train_violin",
                       tvc = "train_tvc"}

--- Keys of the reference's configs that hero reads for nothing, with the reason (README, "Fine-tuning
-- and evaluation"). None of them changes what is computed. (fp16 is read by examples/finetune.lua:
-- FT.FP16.)
FT.UNUSED_KEYS = {
  n_workers = "the data is read on the training thread",
  pin_mem = "the data is read on the training thread",
  rank = "the rank is MPI's (--dist)",
  n_gpu = "the number of ranks is MPI's (--dist)",
  distributed_eval = "with --dist every full evaluation is shared by the ranks; the results are the same",
  vcmr_eval_batch_size = "no reference script reads it (the option is vcmr_eval_q_batch_size)",
  test_db = "train_tvc.py never reads it",
}

--- What examples/finetune.lua and pretrain.lua make of the config's fp16 (the reference's apex O2
-- mixed precision) when --amp does not say: on a GPU, f16 autocast with loss scaling; on the CPU,
-- whose half autocast is for checking numerics and not for speed, f32 (with a note).
FT.FP16 = {
  device = "the config's fp16: f16 autocast with loss scaling (--amp f32 or --amp bf16 to choose otherwise)",
  cpu = "the config's fp16 is not used on the CPU, which trains in f32 (--amp f16 to follow it)",
}

--- Keys a config must have, per task (their argparse defaults would silently change the run).
FT.REQUIRED = {
  common = {"learning_rate", "num_train_steps", "warmup_steps", "train_batch_size", "gradient_accumulation_steps",
            "optim", "weight_decay", "grad_norm"},
  vcmr = {"lw_neg_ctx", "lw_neg_q", "lw_st_ed"},
  vr = {"lw_neg_ctx", "lw_neg_q"},
  videoqa = {"lr_mul", "lw_st_ed"},
  violin = {"lr_mul"},
  tvc = {"lr_mul", "lsr"},
}

-- The reference's argparse defaults (config/config.py, train_tvc.py) for the keys it may lack.
local DEFAULTS = {
  common = {val_batch_size = 20, valid_steps = 1000, save_steps = 500, betas = {0.9, 0.98}, dropout = 0.1,
            lr_mul = 1.0, sub_ctx_len = 0, max_clip_len = 100, max_txt_len = 60, vfeat_version = "resnet_slowfast",
            vfeat_interval = 1.5, compressed_db = false, seed = 42},
  vsm = {drop_svmr_prob = 0, ranking_loss_type = "hinge", margin = 0.1, hard_pool_size = {20}, hard_neg_weights = {10},
         hard_negtiave_start_step = {10000}, train_span_start_step = -1, use_all_neg = false},
  vcmr = {vcmr_eval_video_batch_size = 40, vcmr_eval_q_batch_size = 80, eval_with_query_type = false,
          max_before_nms = 200, max_after_nms = 100, distributed_eval = false, nms_thd = 0.5, q2c_alpha = 20,
          max_vcmr_video = 100, full_eval_tasks = {"VCMR", "SVMR", "VR"}, min_pred_l = 2, max_pred_l = 16},
  vr = {vr_eval_video_batch_size = 40, vr_eval_q_batch_size = 80, distributed_eval = false, max_vr_video = 100},
  tvc = {max_gen_step = 30, max_cap_per_vid = -1, sub_ctx_len = 1},
}

local function fail(fmt, ...) error(string.format(fmt, ...), 0) end

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = (type(v) == "table" and v ~= json.null) and copy(v) or v end
  return o
end

local function contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- The device a run computes on, checked: "cpu" (or nil), "cuda:N", or "cuda" (the GPU of the
-- process's index among the ranks of its node, as examples/pretrain.lua --device cuda: `local_rank`,
-- else mpirun's OMPI_COMM_WORLD_LOCAL_RANK / MPI_LOCALRANKID / SLURM_LOCALID, else 0, modulo the
-- number of GPUs). A CUDA device this machine does not have is an error naming it.
function FT.device(name, local_rank)
  if name == nil or name == "cpu" then return "cpu" end
  if type(name) ~= "string" or not (name == "cuda" or name:match("^cuda:%d+$")) then
    fail("device must be cpu, cuda or cuda:N, got '%s'", tostring(name))
  end
  local cuda = require "hero.cuda"
  local n = cuda.device_count()
  if n == 0 then
    fail("device '%s': no CUDA device is available (no GPU, no driver, or hero built without CUDA)", name)
  end
  if name == "cuda" then
    local r = local_rank or tonumber(os.getenv("OMPI_COMM_WORLD_LOCAL_RANK") or os.getenv("MPI_LOCALRANKID")
      or os.getenv("SLURM_LOCALID") or "") or 0
    return "cuda:" .. math.tointeger(r % n)
  end
  local i = math.tointeger(tonumber(name:match("%d+$")))
  if i >= n then
    fail("device '%s': this machine has %d GPU%s (cuda:0 to cuda:%d)", name, n, n == 1 and "" or "s", n - 1)
  end
  return name
end

--- Checks an amp setting: nil (f32), "bf16" or "f16" (hero.amp.autocast); returns it.
function FT.check_amp(amp)
  if amp ~= nil and amp ~= "bf16" and amp ~= "f16" then
    fail("amp must be 'bf16', 'f16' or nil (f32), got %s", tostring(amp))
  end
  return amp
end

--- Checks a CLI task name; returns it.
function FT.check_task(task)
  if FT.TASK_NAMES[task] == nil then
    fail("unknown task '%s' (%s)", tostring(task), table.concat(FT.TASKS, ", "))
  end
  return task
end

--- The CLI task and the reference's task name of a --task value: a CLI task (vcmr, vr, videoqa,
-- violin, tvc) gives itself and nil; a reference task name (tvr, how2r, didemo_video_sub,
-- didemo_video_only, msrvtt_video_sub, msrvtt_video_only, tvqa, how2qa) gives its CLI task and
-- itself. Raises an error for anything else.
function FT.task_family(name)
  if FT.TASK_NAMES[name] then return name, nil end
  for _, family in ipairs(FT.TASKS) do
    for _, n in ipairs(FT.TASK_NAMES[family]) do
      if n == name then return family, name end
    end
  end
  local all = {}
  for _, family in ipairs(FT.TASKS) do
    for _, n in ipairs(FT.TASK_NAMES[family]) do if n ~= family then all[#all + 1] = n end end
  end
  fail("unknown task '%s' (%s; or the reference's %s)", tostring(name), table.concat(FT.TASKS, ", "),
    table.concat(all, ", "))
end

--- The run's hyper-parameters: the training config (decoded JSON, as the reference writes it) with
-- the reference's defaults for absent keys, the misspelled hard_negtiave_start_step also read as
-- hard_negative_start_step, and `task` set to the reference's task name. `source` names the
-- config in errors.
function FT.hparams(task, raw, source)
  FT.check_task(task)
  source = source or "the config"
  if type(raw) ~= "table" or json.is_array(raw) then fail("%s is not a JSON object", source) end
  local PC = require "hero.train.pretrain_config"
  PC.check_spelling(raw, source)
  local hps = copy(raw)
  if hps.hard_negtiave_start_step == nil and hps.hard_negative_start_step ~= nil then
    hps.hard_negtiave_start_step = hps.hard_negative_start_step
  end
  local names = FT.TASK_NAMES[task]
  if hps.task == nil then
    hps.task = names[1]
  elseif not contains(names, hps.task) then
    fail("%s is for task '%s', which --task %s does not run (%s)", source, tostring(hps.task), task,
      table.concat(names, ", "))
  end
  for _, list in ipairs {FT.REQUIRED.common, FT.REQUIRED[task]} do
    for _, k in ipairs(list) do
      if hps[k] == nil then fail("%s lacks '%s' (needed for task %s)", source, k, task) end
    end
  end
  local function defaults(t)
    for k, v in pairs(t) do if hps[k] == nil then hps[k] = copy({v})[1] end end
  end
  -- the task's own first: train_tvc.py's parser has sub_ctx_len 1 where config.py's has 0
  if DEFAULTS[task] then defaults(DEFAULTS[task]) end
  if task == "vcmr" or task == "vr" then defaults(DEFAULTS.vsm) end
  defaults(DEFAULTS.common)
  if task == "tvc" and raw.save_steps == nil then
    -- train_tvc.py has no save_steps: it writes the model at every validation, each valid_steps
    hps.save_steps = hps.valid_steps
  end
  if not optim.by_config_name(hps.optim) then
    fail("%s: optim '%s' is not one of the reference's adamw, adam, adamax", source, tostring(hps.optim))
  end
  PC.check_types(hps, source)
  for _, k in ipairs {"num_train_steps", "warmup_steps", "train_batch_size", "gradient_accumulation_steps"} do
    if math.type(hps[k]) ~= "integer" or hps[k] < (k == "warmup_steps" and 0 or 1) then
      fail("%s: %s must be a positive integer, got %s", source, k, PC.shown(hps[k]))
    end
  end
  if hps.warmup_steps >= hps.num_train_steps then
    fail("%s: warmup_steps (%d) must be below num_train_steps (%d)", source, hps.warmup_steps, hps.num_train_steps)
  end
  if task == "vcmr" or task == "vr" then
    local hs, hp, hw = hps.hard_negtiave_start_step, hps.hard_pool_size, hps.hard_neg_weights
    if type(hs) ~= "table" or type(hp) ~= "table" or type(hw) ~= "table" or #hs ~= #hw or #hp < #hs then
      fail("%s: hard_negtiave_start_step, hard_pool_size and hard_neg_weights must be lists of matching length", source)
    end
  end
  hps.hard_negative_start_step = hps.hard_negtiave_start_step
  return hps
end

--- The model config: `path` (a JSON file, the reference's hero_finetune.json / hero_tvc.json) or
-- the config's model_config, looked up as given and next to the training config.
function FT.model_config(hps, path, config_path)
  local p = path or hps.model_config
  if type(p) ~= "string" then fail("no model config: give --model-config or set model_config in the config") end
  local tried = {p}
  if not file_exists(p) and config_path then
    local dir = config_path:match("^(.*)/[^/]*$") or "."
    local alt = dir .. "/" .. p:match("[^/]*$")
    tried[#tried + 1] = alt
    if file_exists(alt) then p = alt end
  end
  if not file_exists(p) then fail("model config not found (tried %s)", table.concat(tried, ", ")) end
  local cfg = config.load(p)
  if type(cfg.f_config) ~= "table" then fail("%s holds no model config (f_config)", p) end
  return cfg, p
end

--- The video LMDB directory of a --vfeat-db argument: the LMDB itself, or (as the reference's
-- vfeat_db) the directory holding id2nframe.json and <vfeat_version>_<vfeat_interval>[_compressed].
function FT.video_db_dir(dir, hps)
  if file_exists(dir .. "/data.mdb") then return dir end
  local iv = hps.vfeat_interval
  local name = (hps.vfeat_version or "resnet_slowfast") .. "_" .. (math.type(iv) == "integer" and tostring(iv)
    or tostring(iv + 0.0))
  if hps.compressed_db then name = name .. "_compressed" end
  local p = dir .. "/" .. name
  if file_exists(p .. "/data.mdb") then return p end
  fail("no video feature LMDB at '%s' nor '%s'", dir, p)
end

--- Whether the run's task is a video-only one (didemo_video_only, msrvtt_video_only: no subtitles).
function FT.video_only(hps) return type(hps.task) == "string" and hps.task:find("video_only", 1, true) ~= nil end

--- The videos with their subtitles (VideoSubDataset with the config's max_clip_len, sub_ctx_len),
-- or for a video-only task the videos alone (VideoOnlyDataset, its special ids from the query db
-- `query_db`'s meta.json, as the reference's load_video_only_dataset).
function FT.video_dataset(hps, vfeat_db, sub_db, query_db)
  if FT.video_only(hps) then
    if type(query_db) ~= "string" then fail("no text db: give --txt-db DIR") end
    if not file_exists(query_db .. "/meta.json") then fail("text db '%s' has no meta.json", query_db) end
    return data.VideoOnlyDataset{video_db = FT.video_db_dir(vfeat_db, hps), query_db = query_db,
      max_clip_len = hps.max_clip_len}
  end
  if type(sub_db) ~= "string" then fail("no subtitle db: give --sub-db or set sub_txt_db in the config") end
  if not file_exists(sub_db .. "/data.mdb") then fail("subtitle db '%s' not found", sub_db) end
  return data.VideoSubDataset{video_db = FT.video_db_dir(vfeat_db, hps), sub_db = sub_db,
    max_clip_len = hps.max_clip_len, max_txt_len = hps.max_txt_len, sub_ctx_len = hps.sub_ctx_len}
end

--- Reads a checkpoint (.safetensors or the reference's .pt): tensors and extras; a clear error
-- when the file is missing.
function FT.read_checkpoint(path)
  if type(path) ~= "string" then fail("no checkpoint: --checkpoint FILE is required") end
  if not file_exists(path) then fail("checkpoint '%s' does not exist", path) end
  return require("hero.models.checkpoint").read(path)
end

--- Builds the task's model from the model config and a checkpoint state (tensors): frame feature
-- size and frame positions from the checkpoint (vfeat_dim from img_linear, max_frm_seq_len from
-- the position table, 100 without it; VIOLIN zero-pads a shorter table to 100 rows), the
-- reference's constructor options from hps, dropout set, the checkpoint loaded non-strictly.
-- Returns the model and the load report.
function FT.build_model(task, cfg, hps, sd, opts)
  opts = opts or {}
  local ck = require "hero.models.checkpoint"
  local lin = sd["v_encoder.f_encoder.img_embeddings.img_linear.weight"]
  local vfeat_dim = opts.vfeat_dim or (lin and lin:size(2))
  if not vfeat_dim then fail("the checkpoint has no v_encoder.f_encoder.img_embeddings.img_linear.weight; "
    .. "the frame feature size is unknown") end
  local pos_key = "v_encoder.f_encoder.img_embeddings.position_embeddings.weight"
  local pos = sd[pos_key]
  if task == "violin" and pos ~= nil and pos:dim() == 2 and pos:size(1) < 100 then
    -- train_violin.py: a shorter frame-position table is zero-padded to MAX_FRM_SEQ_LEN (100) rows
    local padded = core.zeros({100, pos:size(2)}, {dtype = pos:dtype()})
    padded:narrow(1, 1, pos:size(1)):copy_(pos)
    local with_padded = {}
    for k, v in pairs(sd) do with_padded[k] = v end
    with_padded[pos_key] = padded
    sd = with_padded
  end
  local mopts = {vfeat_dim = vfeat_dim, max_frm_seq_len = ck.max_frm_seq_len(sd, 100), generator = opts.generator}
  local models = require "hero.models"
  local model
  if task == "vcmr" or task == "vr" then
    mopts.lw_neg_ctx, mopts.lw_neg_q = hps.lw_neg_ctx, hps.lw_neg_q
    mopts.margin, mopts.ranking_loss_type = hps.margin, hps.ranking_loss_type
    mopts.drop_svmr_prob, mopts.use_all_neg = hps.drop_svmr_prob, hps.use_all_neg
    if task == "vcmr" then
      mopts.lw_st_ed = 0 -- switched on at train_span_start_step (set_train_st_ed)
      model = models.HeroForVcmr(cfg, mopts)
    else
      model = models.HeroForVr(cfg, mopts)
    end
  elseif task == "videoqa" then
    mopts.lw_st_ed = hps.lw_st_ed
    model = models.HeroForVideoQA(cfg, mopts)
  elseif task == "violin" then
    model = models.HeroForViolin(cfg, mopts)
  else
    if type(cfg.d_config) ~= "table" then fail("task tvc needs a model config with d_config (hero_tvc.json)") end
    mopts.lsr = hps.lsr
    model = models.HeroForTvc(cfg, mopts)
  end
  local report = model:load_checkpoint(sd)
  require("hero.train").set_dropout(model, hps.dropout)
  return model, report
end

--- Raises a clear error when the first readable video of the dataset has frame features of
-- another size than the model's (vfeat_dim).
function FT.check_features(model, video, ds)
  local ok0, want = pcall(function() return model.v_encoder.frame_transform.LayerNorm.weight:size(1) end)
  if not ok0 then return end
  for i, id in ipairs(ds:ids()) do
    if i > 20 then break end
    local vid = ds.video_of and ds:video_of(id, ds:example(id)) or id
    local ok, v = pcall(video.get, video, vid)
    if ok and v then
      if v.v_feat:size(2) ~= want then
        fail("the video db's frame features have %d values, the checkpoint's model expects %d (vfeat_dim)",
          v.v_feat:size(2), want)
      end
      return
    end
  end
end

--- The reference's four AdamW groups (hero-spec §6.1): lr_mul on the groups outside v_encoder for
-- VideoQA, VIOLIN and TVC only.
function FT.optimizer(model, task, hps)
  local no_decay = {"bias", "LayerNorm.bias", "LayerNorm.weight"}
  local function decays(name)
    for _, s in ipairs(no_decay) do if name:find(s, 1, true) then return false end end
    return true
  end
  local mul = (task == "videoqa" or task == "violin" or task == "tvc") and hps.lr_mul or 1
  -- build_optimizer passes lr and betas only: eps is each class's default (AdamW's 1e-6, torch's 1e-8)
  return optim.by_config_name(hps.optim or "adamw")(model:named_parameters(), {
    lr = hps.learning_rate, betas = {hps.betas[1], hps.betas[2]}, weight_decay = hps.weight_decay,
    no_decay = no_decay,
    group = function(name)
      return (name:find("v_encoder", 1, true) and "v_encoder" or "top") .. (decays(name) and "" or "_no_decay")
    end,
    lr_mul = {top = mul, top_no_decay = mul, v_encoder = 1, v_encoder_no_decay = 1}})
end

--- Per-update model options (VCMR / VR): the hard-negative and local-loss schedules of
-- train_vcmr.py, decided from the number of finished updates (step - 1), so a resumed run decides
-- the same way.
function FT.forward_opts(task, model, hps)
  if task ~= "vcmr" and task ~= "vr" then return nil end
  return function(_, step)
    local done = step - 1
    local hard
    for i, hn in ipairs(hps.hard_negtiave_start_step) do
      if hn ~= -1 and done >= hn then hard = {pool_size = hps.hard_pool_size[i], weight = hps.hard_neg_weights[i]} end
    end
    if hard then model:set_hard_negative(true, hard.pool_size, hard.weight) else model:set_hard_negative(false) end
    if task == "vcmr" then
      local s = hps.train_span_start_step
      model:set_train_st_ed((s ~= -1 and done >= s) and hps.lw_st_ed or 0)
    end
    return nil
  end
end

--- The training (or evaluation) dataset of a task: QueryDataset over the query db (training
-- filters by max_txt_len) or CaptionDataset for TVC.
function FT.dataset(task, hps, video, txt_db, train)
  if type(txt_db) ~= "string" then fail("no text db: give --txt-db DIR") end
  if not (file_exists(txt_db .. "/data.mdb") or file_exists(txt_db .. "/cap.db/data.mdb")) then
    fail("text db '%s' not found", txt_db)
  end
  if task == "tvc" then
    return D.CaptionDataset{video = video, cap_db = txt_db, max_txt_len = hps.max_txt_len,
      frame_interval = hps.vfeat_interval, max_cap_per_vid = hps.max_cap_per_vid, sub_ctx_len = hps.sub_ctx_len}
  end
  return D.QueryDataset{task = task, video = video, query_db = txt_db, frame_interval = hps.vfeat_interval,
    max_txt_len = train and hps.max_txt_len or -1, train = train, sub_ctx_len = hps.sub_ctx_len}
end

--- Everything a fine-tuning run needs. spec: task, hps, model_config (table), checkpoint (path),
-- vfeat_db, sub_db, txt_db, out_dir, valid_txt_db (optional: validation losses every valid_steps,
-- and unless full_eval = false the full evaluation of that split, as FT.evaluate; tokenizer and
-- caption_eval for TVC), test_txt_db (optional, with valid_txt_db and the full evaluation: the full
-- evaluation of that split too at every validation, as train_*.py do with test_query_txt_db),
-- on_error ("skip"), progress, save_every (default hps.save_steps), valid_every (default
-- hps.valid_steps when valid_txt_db is given), dist (data-parallel over hero.dist: each rank
-- trains on its share of the queries, gradients averaged, rank 0 logs and checkpoints), val_ref
-- (TVC: the validation captions' references, JSON lines as train_tvc.py's val_ref, instead of the
-- caption db's), device ("cpu"; "cuda:N", see FT.device: the model, and so the optimizer's state,
-- is moved there and the Trainer moves every batch there, validation included), amp (nil, "bf16",
-- "f16": the Trainer's hero.amp.autocast of every forward, with a checkpointed loss scaler for f16;
-- the full evaluations run under it too).
-- Returns {model, optimizer, loader, trainer, dataset, video, report, device, max_token}.
function FT.setup(spec)
  if type(spec) ~= "table" then error("finetune.setup: expected a table of options, got " .. tostring(spec), 2) end
  for _, key in ipairs {"hps", "model_config"} do
    if type(spec[key]) ~= "table" then
      error(string.format("finetune.setup: spec.%s must be a table, got %s", key, tostring(spec[key])), 2)
    end
  end
  local task = FT.check_task(spec.task)
  local hps = spec.hps
  local amp = FT.check_amp(spec.amp)
  local device = FT.device(spec.device)
  local sd = FT.read_checkpoint(spec.checkpoint)
  local video = FT.video_dataset(hps, spec.vfeat_db, spec.sub_db, spec.txt_db)
  local ds = FT.dataset(task, hps, video, spec.txt_db, true)
  local vocab = spec.model_config.f_config.vocab_size
  local sp = ds:special_ids()
  if math.type(sp.MASK) == "integer" and sp.MASK >= vocab then
    fail("the text db's token ids go up to %d but the model's vocabulary has %d rows (f_config.vocab_size)",
      sp.MASK, vocab)
  end
  core.manual_seed(hps.seed)
  local gen = core.Generator(hps.seed + 1)
  local model, report = FT.build_model(task, spec.model_config, hps, sd, {generator = gen})
  FT.check_features(model, video, ds)
  -- before the optimizer, which holds the tensors it is given (its moments are made beside them)
  if device ~= "cpu" then model:to(device) end
  local opt = FT.optimizer(model, task, hps)
  local reported = {}
  local dist = spec.dist and require("hero.dist") or nil
  if dist and not dist.is_initialized() then dist.init() end
  local rank, world = dist and dist.rank() or 0, dist and dist.world_size() or 1
  local loader = D.Loader{dataset = ds, batch_size = hps.train_batch_size, seed = hps.seed, rank = rank,
    world_size = world, on_error = spec.on_error or "skip", on_skip = function(id, why)
      if reported[id] then return end
      reported[id] = true
      io.stderr:write(string.format("\n[%s] skipped %s: %s\n", hps.task, tostring(id), tostring(why)))
    end}
  local train = require "hero.train"
  local meta = train.MetaLoader{tasks = {[hps.task] = loader}, ratios = {[hps.task] = 1}, order = {hps.task},
    accum = hps.gradient_accumulation_steps, generator = core.Generator(hps.seed)}
  local valid = {}
  if spec.valid_txt_db then
    -- evaluation items (all queries, single VIOLIN statements); TVC validates on its captions
    local vds = FT.dataset(task, hps, video, spec.valid_txt_db, false)
    -- each rank validates its share (the reference's qids[rank::size]); for VCMR/VR, shares of one
    -- size (the last n % world queries left out): the ranking losses gather every rank's batch
    valid[hps.task] = D.Loader{dataset = vds, batch_size = hps.val_batch_size, seed = hps.seed, shuffle = false,
      rank = rank, world_size = world, equal_shards = task == "vcmr" or task == "vr"}
  end
  -- VCMR/VR: train_vcmr.py's validate_vcmr / train_vr.py's validate_vr (the evaluation-mode losses
  -- over the examples, each part divided by its weight); the other tasks log their mean loss per batch
  local validators
  if spec.valid_txt_db and (task == "vcmr" or task == "vr") then
    local PV = require "hero.train.pretrain_valid"
    validators = {[hps.task] = PV.ranking_validator({lw_st_ed = hps.lw_st_ed, lw_neg_ctx = hps.lw_neg_ctx,
      lw_neg_q = hps.lw_neg_q, st_ed = task == "vcmr"},
      function(m, batch, fopts) return m:forward(batch, hps.task, fopts) end)}
  end
  if spec.test_txt_db and not (spec.valid_txt_db and spec.full_eval ~= false) then
    error("finetune.setup: test_txt_db is evaluated at validation time: it needs valid_txt_db and the full "
      .. "evaluation (full_eval not false)", 2)
  end
  local trainer
  local on_validate
  if spec.valid_txt_db and spec.full_eval ~= false then
    -- as train_*.py do at every valid_steps: the full evaluation of the validation split (VCMR/VR
    -- retrieval with its metrics, QA/VIOLIN accuracy, TVC captions), its results written to
    -- OUT/results_val/step_<N>.json and its numbers logged under "full_eval"
    local function full_eval(step, txt_db, split)
      local res = FT.evaluate(task, model, hps, {video = video, txt_db = txt_db, split = split,
        tokenizer = spec.tokenizer, caption_eval = spec.caption_eval, distributed = dist ~= nil and world > 1,
        references = split == "val" and spec.val_ref or nil, amp = amp})
      if rank ~= 0 then return nil end
      if spec.out_dir then
        local d = spec.out_dir .. "/results_" .. split
        os.execute("mkdir -p -- '" .. d:gsub("'", "'\\''") .. "'")
        -- as train_*.py's json.dump: a metric of no sample (a query type the split lacks) is NaN;
        -- the log and TensorBoard get null / nothing for it (Trainer:write_log)
        json.write_file(string.format("%s/step_%d.json", d, step), res, {allow_nan = true})
      end
      local flat = {}
      local source = (task == "vcmr" or task == "vr") and res.val_log or res.metrics
      if type(source) == "table" and source ~= json.null then
        for k, v in pairs(source) do if type(v) == "number" then flat[k] = v end end
      end
      return flat
    end
    on_validate = function(step)
      -- distributed: the ranks share the queries (videos for TVC) and every rank gets the joined
      -- results
      local val = full_eval(step, spec.valid_txt_db, "val")
      local test = spec.test_txt_db and full_eval(step, spec.test_txt_db, "test")
      if rank ~= 0 then return nil end
      return {full_eval = val, full_eval_test = test or nil}
    end
  end
  trainer = train.Trainer{model = model, optimizer = opt, loader = meta, lr = hps.learning_rate,
    warmup = hps.warmup_steps, total = hps.num_train_steps, grad_norm = hps.grad_norm ~= -1 and hps.grad_norm or false,
    accum = hps.gradient_accumulation_steps, out_dir = spec.out_dir, progress = spec.progress,
    save_every = spec.out_dir and (spec.save_every or hps.save_steps) or 0,
    valid_every = spec.valid_txt_db and (spec.valid_every or hps.valid_steps) or 0, valid = valid,
    forward_opts = FT.forward_opts(task, model, hps), generator = gen, on_validate = on_validate,
    validators = validators, device = device, amp = amp,
    dist = dist ~= nil or nil, seed = dist and hps.seed or nil}
  return {model = model, optimizer = opt, loader = loader, meta = meta, trainer = trainer, dataset = ds,
          video = video, report = report, device = device}
end

-- ------------------------------------------------------------------ evaluation

-- The corpus of a retrieval evaluation and each video's index in the submission: with the
-- subtitle db's vid2dur_idx.json (VCMR on TV), that file's split; otherwise, as the reference's
-- VcmrFullEvalDataset and VrFullEvalDataset (whose subtitle db never reads that file) do, the
-- video's position among the sorted keys of the video db's id2nframe.json (its global index).
local function vcmr_corpus(task, hps, video, qds, split, qids)
  local vid2idx
  local sdb = video.sub_db
  if task == "vcmr" and sdb and sdb.has_file and sdb:has_file("vid2dur_idx") then
    local all = sdb:json("vid2dur_idx")
    local part = all[split]
    if type(part) == "table" then
      vid2idx = {}
      for v, info in pairs(part) do vid2idx[v] = info[2] end
    end
  end
  local ids = {}
  -- get_video_ids: query2video.json over the queries, else the query db's video_ids.json (a test
  -- split whose queries name no video)
  local listed = next(qds._q2v) == nil and qds.db.has_file and qds.db:has_file("video_ids")
    and qds.db:json("video_ids") or nil
  local seen = {}
  local function add(v)
    if type(v) == "string" and not seen[v] then
      seen[v] = true
      ids[#ids + 1] = v
    end
  end
  local function add_listed_or_queried()
    if listed then
      for _, v in ipairs(listed) do add(v) end
    else
      for _, q in ipairs(qids) do add(qds:video_of(q, qds:example(q))) end
    end
  end
  if vid2idx then
    for v in pairs(vid2idx) do ids[#ids + 1] = v end
  else
    add_listed_or_queried()
    local global = video.vid2idx -- VideoOnlyDataset keeps it
    local vdb = video.video_db
    if not global and type(vdb) == "table" and type(vdb.id2nframe) == "function" then
      local all = json.keys(vdb:id2nframe())
      table.sort(all)
      global = {}
      for i, v in ipairs(all) do global[v] = i - 1 end
    end
    if global then
      vid2idx = {}
      for _, v in ipairs(ids) do
        vid2idx[v] = global[v]
        if vid2idx[v] == nil then fail("corpus video '%s' is not in the video db's id2nframe.json", v) end
      end
    end
  end
  if #ids == 0 then
    fail("the %s corpus has no video: the queries name none and the query db has no video_ids.json", split)
  end
  table.sort(ids)
  if not vid2idx then -- a dataset without one video db (no global index): positions in the corpus
    vid2idx = {}
    for i, v in ipairs(ids) do vid2idx[v] = i - 1 end
  end
  local bs = hps.vcmr_eval_video_batch_size or hps.vr_eval_video_batch_size or 40
  local batches = {}
  local sp = qds:special_ids()
  for s = 1, #ids, bs do
    local items = {}
    for i = s, math.min(s + bs - 1, #ids) do
      local v, why = video:get(ids[i])
      if v == nil then fail("corpus video '%s' cannot be read: %s", ids[i], tostring(why)) end
      items[#items + 1] = tasks.video_item(v, {special_ids = sp, sub_ctx_len = hps.sub_ctx_len})
    end
    batches[#batches + 1] = collate.video_collate(items)
  end
  return {batches = batches, video_ids = ids, video2idx = vid2idx}
end

-- The results of every rank of a distributed evaluation joined, as eval_vcmr.py's
-- distributed_eval does: the submissions' lists in rank order, the metrics averaged over the
-- ranks weighted by their query counts (hero.eval.retrieval.gather_metrics).
local function join_ranks(parts, split, nms_thd)
  local R = require "hero.eval.retrieval"
  local function lists(key)
    if parts[1][key] == nil or parts[1][key] == json.null then return nil end
    local out = {video2idx = parts[1][key].video2idx}
    for _, p in ipairs(parts) do
      for name, list in pairs(p[key]) do
        if name ~= "video2idx" then
          out[name] = out[name] or json.array()
          for _, e in ipairs(list) do out[name][#out[name] + 1] = e end
        end
      end
    end
    return out
  end
  local n, with_gt, scored = 0, true, 0
  for _, p in ipairs(parts) do
    n = n + p.n
    -- a rank with no queries has no metrics, and no weight in the average
    if p.n > 0 then
      scored = scored + 1
      if p.metrics == nil or p.metrics == json.null then with_gt = false end
    end
  end
  with_gt = with_gt and scored > 0
  local res = {submission = lists("submission"), submission_nms = lists("submission_nms"), num_queries = n,
               metrics = json.null, val_log = {}}
  if with_gt then
    local per, per_nms = {}, {}
    for _, p in ipairs(parts) do
      if p.n > 0 then
        per[#per + 1] = {n = p.n, metrics = p.metrics}
        if p.metrics_nms and p.metrics_nms ~= json.null then
          per_nms[#per_nms + 1] = {n = p.n, metrics = p.metrics_nms}
        end
      end
    end
    res.metrics = R.gather_metrics(per)
    if #per_nms == #per then res.metrics_nms = R.gather_metrics(per_nms) end
    res.val_log = R.val_log(split, res.metrics, res.metrics_nms, nms_thd)
  end
  return res
end

-- A batch made on the CPU, on the model's device (hero.train.Trainer.batch_to; on the CPU the
-- batch itself).
local function to_model(batch, device)
  return require("hero.train.trainer").batch_to(batch, device)
end

-- fn(...) under hero.amp.autocast(dtype) when dtype ("bf16", "f16") is given, else fn(...) as it is.
local function autocast(dtype, fn, ...)
  if dtype then return require("hero.amp").autocast(dtype, fn, ...) end
  return fn(...)
end

-- Logits on the host in f32 or f64 (autocast leaves them bf16/f16, a GPU keeps them there), as
-- the accuracy, the loss and the JSON read them; a CPU f32 tensor is returned as it is.
local function host_logits(t)
  local half = t:dtype() == "bf16" or t:dtype() == "f16"
  if t:device() == "cpu" and not half then return t end
  return t:to{device = "cpu", dtype = half and "f32" or t:dtype()}
end

local function eval_vcmr(task, model, hps, qds, spec)
  local split = spec.split or "val"
  local all_qids = qds:ids()
  local corpus = vcmr_corpus(task, hps, qds.video, qds, split, all_qids)
  -- distributed: every rank encodes the whole corpus and ranks its share of the queries
  -- (queries[rank::world], as the reference's distributed_eval)
  local dist = spec.distributed and require("hero.dist") or nil
  local qids = dist and dist.shard(all_qids) or all_qids
  local qbs = hps.vcmr_eval_q_batch_size or hps.vr_eval_q_batch_size or 80
  local batches, all_q, all_v = {}, {}, {}
  -- eval_vcmr.py scores only when every query has a target; eval_vr.py always (MSR-VTT's queries
  -- have no moment), from query_data.jsonl
  local has_gt = true
  for s = 1, #qids, qbs do
    local qs = {}
    for i = s, math.min(s + qbs - 1, #qids) do
      local q, why = qds:query(qids[i])
      if q == nil then fail("query '%s': %s", qids[i], tostring(why)) end
      q.qid = qids[i]
      qs[#qs + 1] = q
      -- the reference's VCMR submissions carry desc_id = int(qid); eval_vr.py's the qid itself
      local numeric = task == "vcmr" and qids[i]:match("^%d+$")
      all_q[#all_q + 1] = numeric and math.tointeger(tonumber(qids[i])) or qids[i]
      all_v[#all_v + 1] = q.vid
      if task == "vcmr" and (q.target[1] < 0 or q.vid == nil) then has_gt = false end
    end
    batches[#batches + 1] = D.query_collate(qs)
  end
  local gt = has_gt and qds:ground_truth(qids, task == "vr" and {desc_ids = all_q} or nil) or nil
  local res
  if task == "vcmr" then
    -- SVMR ranks moments inside each query's own video: only with the ground truth, as there
    res = model:evaluate_full(corpus, {batches = batches, query_ids = all_q, query_vids = has_gt and all_v or nil},
      gt, {
      q2c_alpha = hps.q2c_alpha, max_vcmr_video = hps.max_vcmr_video, min_pred_l = hps.min_pred_l,
      max_pred_l = hps.max_pred_l, max_before_nms = hps.max_before_nms, max_after_nms = hps.max_after_nms,
      nms_thd = hps.nms_thd, vfeat_interval = hps.vfeat_interval, tasks = hps.full_eval_tasks,
      eval_with_query_type = hps.eval_with_query_type, max_clip_len = hps.max_clip_len, split = split,
      amp = spec.amp})
  else
    res = model:evaluate_full(corpus, {batches = batches, query_ids = all_q}, gt, {
      max_vr_video = hps.max_vr_video, max_clip_len = hps.max_clip_len, split = split, amp = spec.amp})
  end
  if dist then
    local parts = dist.all_gather_object({n = #all_q, submission = res.submission, metrics = res.metrics or json.null,
      submission_nms = res.submission_nms or json.null, metrics_nms = res.metrics_nms or json.null})
    local joined = join_ranks(parts, split, hps.nms_thd)
    joined.num_videos = #corpus.video_ids
    return joined
  end
  return {submission = res.submission, metrics = res.metrics or json.null, submission_nms = res.submission_nms,
          metrics_nms = res.metrics_nms, val_log = res.val_log or {}, num_queries = #all_q,
          num_videos = #corpus.video_ids}
end

local function cat_rows(list)
  if #list == 1 then return list[1] end
  return core.cat(list, 1)
end

-- A distributed evaluation's rank and world size (the loader's share: ids[rank::world]), or nil.
local function eval_ranks(spec)
  if not spec.distributed then return nil end
  local dist = require "hero.dist"
  return {dist = dist, rank = dist.rank(), world = dist.world_size()}
end

local function eval_qa(task, model, hps, qds, spec)
  local ranks = eval_ranks(spec)
  local loader = D.Loader{dataset = qds, batch_size = hps.val_batch_size, shuffle = false, on_error = "error",
    qids = true, rank = ranks and ranks.rank, world_size = ranks and ranks.world}
  local logits, targets, qids = {}, {}, {}
  local has_gt = true
  local device = model:device()
  model:evaluate()
  for batch in loader:iter() do
    local on_device = to_model(batch, device)
    local out = core.no_grad(function()
      return autocast(spec.amp, model.forward, model, on_device, nil,
        {compute_loss = false, num_questions = task == "videoqa" and batch.targets:size(1) or nil})
    end)
    logits[#logits + 1] = host_logits(out.logits:detach())
    targets[#targets + 1] = batch.targets:reshape(batch.targets:size(1))
    if batch.targets:min():item() < 0 then has_gt = false end
    for _, q in ipairs(batch.qids) do qids[#qids + 1] = q end
  end
  model:train()
  local L, T = cat_rows(logits), cat_rows(targets)
  if ranks then
    -- every rank's questions joined in rank order (eval_videoQA.py / eval_violin.py gather their
    -- per-rank results): every rank then scores them all, as one process would
    local parts = ranks.dist.all_gather_object({qids = qids, has_gt = has_gt})
    qids, has_gt = {}, true
    for _, part in ipairs(parts) do
      for _, q in ipairs(part.qids) do qids[#qids + 1] = q end
      has_gt = has_gt and part.has_gt
    end
    L, T = ranks.dist.all_gather(L), ranks.dist.all_gather(T)
  end
  local Q = require "hero.eval.qa"
  local val_log, results
  if task == "videoqa" then
    val_log, results = Q.videoqa(L, has_gt and T or nil, qids, {batch_size = hps.val_batch_size})
  else
    if not has_gt then
      results = {}
      local p = Q.sigmoid_f32(L):reshape(L:size(1)):gt(0.5):totable()
      for i, q in ipairs(qids) do results[tostring(q)] = p[i] and 1 or 0 end
      val_log = {}
    else
      val_log, results = Q.violin(L, T, qids, {batch_size = hps.val_batch_size, split = spec.split or "val"})
    end
  end
  local metrics = json.null
  for k, v in pairs(val_log) do
    if k:find("acc$") then metrics = metrics == json.null and {} or metrics; metrics.accuracy = v end
    if k:find("loss$") then metrics = metrics == json.null and {} or metrics; metrics.loss = v end
  end
  local out = {results = results, metrics = metrics, val_log = val_log, num_queries = #qids}
  if spec.save_logits then
    -- eval_videoQA.py / eval_violin.py --save_logits: each question's logits, by its id
    out.logits = {}
    local rows = L:float():cpu():totable()
    for i, q in ipairs(qids) do out.logits[tostring(q)] = rows[i] end
  end
  return out
end

local function eval_tvc(model, hps, cds, spec)
  local ranks = eval_ranks(spec)
  local loader = D.Loader{dataset = cds, batch_size = hps.val_batch_size, shuffle = false, on_error = "error",
    eval = true, rank = ranks and ranks.rank, world_size = ranks and ranks.world}
  local sp = cds:special_ids()
  local tok = spec.tokenizer
  local results, refs = {}, {}
  local with_refs = true
  local device = model:device()
  for batch in loader:iter() do
    -- the captions come back as Lua arrays of ids; the batch's names and references stay on the host
    local caps = autocast(spec.amp, model.greedy_decode, model, to_model(batch, device),
      {max_step = hps.max_gen_step, bos = sp.BOS, eos = sp.EOS})
    for i, ids in ipairs(caps) do
      local text
      if tok then text = tok:decode(ids) else
        local w = {}
        for j, t in ipairs(ids) do w[j] = tostring(t) end
        text = table.concat(w, " ")
      end
      local cid = batch.clip_ids[i]
      -- TvcValDataset.collate: clip_ids.append(int(cid))
      if type(cid) == "string" and cid:match("^%d+$") then cid = math.tointeger(tonumber(cid)) end
      results[#results + 1] = {vid_name = batch.vid_names[i], clip_id = cid, ts = batch.all_ts[i],
                               descs = {{desc = text}}}
      local r = batch.gts[i]
      if type(r) ~= "table" or #r == 0 then with_refs = false end
      refs[#refs + 1] = {clip_id = cid, descs = r or {}}
    end
  end
  if ranks then
    -- inf_tvc.py: each rank captions its share of the videos; the captions are joined in rank order
    local parts = ranks.dist.all_gather_object({results = results, refs = refs, with_refs = with_refs})
    results, refs = {}, {}
    for _, part in ipairs(parts) do
      for _, r in ipairs(part.results) do results[#results + 1] = r end
      for _, r in ipairs(part.refs) do refs[#refs + 1] = r end
      with_refs = with_refs and part.with_refs
    end
  end
  if spec.references then
    -- train_tvc.py scores against its val_ref file (TVCEval), not the caption db
    refs, with_refs = {}, true
    for k, line in ipairs(json.read_lines(spec.references, {complete = true})) do
      if type(line) ~= "table" or line.clip_id == nil or type(line.descs) ~= "table" then
        fail("%s: line %d is not {clip_id, descs = [{desc}]}", spec.references, k)
      end
      refs[k] = {clip_id = line.clip_id, descs = line.descs}
    end
  end
  local out = {results = results, num_clips = #results}
  if with_refs and tok then
    local ev = require("hero.eval.caption").tvc_eval(refs, results, spec.caption_eval)
    out.metrics = ev.scores_x100
  else
    out.metrics = json.null
    out.note = tok and "the clips have no reference captions" or
      "no tokenizer (--vocab/--merges): captions are token ids and no text metrics were computed"
  end
  return out
end

--- Evaluates a model on a split, as the reference's eval_vcmr.py / eval_vr.py / eval_videoQA.py /
-- eval_violin.py / inf_tvc.py do. spec: video (a VideoSubDataset), txt_db, split ("val"),
-- tokenizer (TVC: a hero.text.Tokenizer for the caption text), distributed (in a hero.dist job:
-- each rank evaluates its share of the queries, ids[rank::world], TVC its share of the videos;
-- every rank gets the joined results),
-- clips (TVC: the clips to caption instead of a db, as inf_tvc.py --target_clip: a JSON-lines
-- path or array, see ClipListDataset; scored when they carry descs), caption_eval (TVC: options
-- of hero.eval.caption.tvc_eval, e.g. meteor_jar, ptb_jar), references (TVC: a JSON-lines file of
-- {clip_id, descs = [{desc}]}, the references the captions are scored against instead of the
-- db's, as train_tvc.py's val_ref), save_logits (TVQA/VIOLIN: the results also hold logits =
-- {qid = {...}}), amp (nil, "bf16", "f16": every forward pass under hero.amp.autocast; the scores
-- and logits are read in f32).
-- The model may be on a GPU (model:to("cuda:0")): every batch, made on the CPU, is moved to the
-- device of its first parameter, and the scores, rankings and captions come back to the host.
-- Returns the results table:
--   vcmr/vr: {submission = {video2idx, VCMR, SVMR, VR}, metrics, submission_nms, metrics_nms, val_log}
--   videoqa/violin: {results = {qid = answer}, metrics = {accuracy, loss}, val_log}
--   tvc: {results = {{vid_name, clip_id, ts, descs = {{desc}}}}, metrics = {Bleu_1..4, ROUGE_L, CIDEr}}
function FT.evaluate(task, model, hps, spec)
  FT.check_task(task)
  FT.check_amp(spec.amp)
  local ds
  if spec.clips ~= nil then
    if task ~= "tvc" then fail("clips to caption (spec.clips, --target-clip) are for the tvc task, not %s", task) end
    ds = D.ClipListDataset{video = spec.video, clips = spec.clips, frame_interval = hps.vfeat_interval,
      sub_ctx_len = hps.sub_ctx_len}
  else
    ds = FT.dataset(task, hps, spec.video, spec.txt_db, false)
  end
  local res
  if task == "vcmr" or task == "vr" then
    res = eval_vcmr(task, model, hps, ds, spec)
  elseif task == "videoqa" or task == "violin" then
    res = eval_qa(task, model, hps, ds, spec)
  else
    res = eval_tvc(model, hps, ds, spec)
  end
  res.task, res.split = hps.task, spec.split or "val"
  return res
end

return FT
