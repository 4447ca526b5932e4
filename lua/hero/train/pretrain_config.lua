--- hero.train.pretrain_config: the reference's pre-training configs (config/pretrain-*.json, read
-- by pretrain.py) as they are, turned into what examples/pretrain.lua builds.
--
--   local PC = require "hero.train.pretrain_config"
--   local hps = PC.hparams(hero.json.read_file("pretrain-tv-16gpu.json"), "pretrain-tv-16gpu.json")
--   for _, t in ipairs(PC.targets(hps, {txt_db = "/txt", img_db = "/video"})) do ... end
--
-- What follows the reference:
--   * keys the config lacks take pretrain.py's argparse defaults (config/config.py), except the
--     run-defining ones in PC.REQUIRED; note that a config without "use_all_neg" samples one
--     negative per row (the flag is store_true there);
--   * each target (a video db with its subtitle db) and each of its splits' tasks makes one loader
--     named "<task>_<target>_<split>" whose sampling ratio is the target's ratio times the task's;
--   * the model starts without the VSM start/end loss (lw_st_ed 0) and gets lw_st_ed once
--     train_span_start_step updates are done (-1: never); hard negatives (hard_pool_size[i],
--     hard_neg_weights[i]) from hard_negtiave_start_step[i] finished updates (-1: never);
--   * a target's vfeat_shards are read as one dataset (the videos of every shard's train_idx file);
--   * load_partial_pretrained: the checkpoint is a RoBERTa state dict mapped onto the cross-modal
--     transformer (every other layer with skip_layer_loading), v_encoder.mask_embedding row 0
--     zeroed; otherwise a HERO checkpoint loaded non-strictly.
local json = require "hero.json"
local checkpoint = require "hero.models.checkpoint"

local PC = {}

PC.TASKS = {mlm = true, ["mfm-nce"] = true, mffr = true, fom = true, vsm = true}

--- Keys of the reference's pre-training configs that hero reads for nothing, with the reason
-- (README, "Pre-training"). None of them changes what is computed. (fp16 is read by
-- examples/pretrain.lua as fine-tuning reads it: hero.train.finetune.FP16.)
PC.UNUSED_KEYS = {
  n_workers = "batches are made by --workers threads",
  pin_mem = "batches are made by --workers threads",
  rank = "the rank is MPI's (--dist)",
  max_txt_len = "pretrain.py never hands it to its datasets: subtitles are cut at 60 tokens (--max-txt-len)",
}

--- Keys a config must have (their argparse defaults would silently change the run).
PC.REQUIRED = {"targets", "learning_rate", "num_train_steps", "warmup_steps", "train_batch_size",
               "gradient_accumulation_steps", "optim", "weight_decay", "grad_norm", "lw_neg_ctx", "lw_neg_q",
               "lw_st_ed"}

-- config/config.py's defaults (shared, VSM and pre-training arguments) for the keys it may lack.
local DEFAULTS = {
  val_batch_size = 20, valid_steps = 1000, save_steps = 500, betas = {0.9, 0.98}, dropout = 0.1,
  sub_ctx_len = 0, max_clip_len = 100, max_txt_len = 60, vfeat_version = "resnet_slowfast", compressed_db = false,
  seed = 42, mask_prob = 0.15, drop_svmr_prob = 0, ranking_loss_type = "hinge", margin = 0.1,
  hard_pool_size = {20}, hard_neg_weights = {10}, hard_negtiave_start_step = {10000}, train_span_start_step = -1,
  use_all_neg = false, load_partial_pretrained = false, skip_layer_loading = false,
}

local function fail(fmt, ...) error(string.format(fmt, ...), 0) end

local function copy(t)
  if type(t) ~= "table" or t == json.null then return t end
  local o = {}
  for k, v in pairs(t) do o[k] = copy(v) end
  return o
end

local function is_null(v) return v == nil or v == json.null end

--- A config value as a message shows it: a string as a string (num_train_steps "10" shown as 10
-- read as if a valid integer were refused), a table by its kind.
local function shown(v)
  if type(v) == "string" then return "a string (" .. json.encode(v) .. ")" end
  if v == json.null then return "null" end
  if type(v) == "table" then return json.is_array(v) and "a list" or "an object" end
  return tostring(v)
end
PC.shown = shown

local function check_int(source, hps, k, min)
  if math.type(hps[k]) ~= "integer" or hps[k] < min then
    fail("%s: %s must be an integer >= %d, got %s", source, k, min, shown(hps[k]))
  end
end

local function check_spelling(raw, source)
  for k in pairs(raw) do
    local meant = type(k) == "string" and require("hero.cli").misspelt_config_key(k, raw)
    if meant then
      fail("%s: '%s' is not a key the reference's scripts read; did you mean '%s'? (as it is, %s keeps its "
        .. "default)", source, k, meant, meant)
    end
  end
end
PC.check_spelling = check_spelling

local function finite(v) return type(v) == "number" and v == v and v > -math.huge and v < math.huge end

-- What each key of a training config must hold, where present: a wrong type failed deep inside a
-- run as a Lua error naming no key, and some values trained silently with another meaning.
local NUMBERS = {  -- key -> lowest value, and whether it is excluded
  learning_rate = {0, true}, weight_decay = {0}, grad_norm = {-math.huge}, lr_mul = {0, true},
  lw_st_ed = {0}, lw_neg_ctx = {0}, lw_neg_q = {0}, margin = {-math.huge}, vfeat_interval = {0, true},
  nms_thd = {-math.huge}, q2c_alpha = {-math.huge}, mask_prob = {0},
}
local PROBABILITIES = {dropout = true, drop_svmr_prob = true, lsr = true, mask_prob = true}
local INTEGERS = {  -- key -> lowest value
  valid_steps = 0, save_steps = 0, val_batch_size = 1, max_clip_len = -1, max_txt_len = 0, sub_ctx_len = 0,
  seed = math.mininteger, train_span_start_step = -1, max_before_nms = 1, max_after_nms = 1, max_vcmr_video = 1,
  min_pred_l = 0, max_pred_l = 0, max_gen_step = 1, max_cap_per_vid = -1, vcmr_eval_video_batch_size = 1,
  vcmr_eval_q_batch_size = 1, vr_eval_video_batch_size = 1, vr_eval_q_batch_size = 1, max_vr_video = 1,
}
local LISTS = {  -- key -> what each element must be
  hard_pool_size = "positive integer", hard_neg_weights = "number >= 0", hard_negtiave_start_step = "integer",
  betas = "number in [0, 1)",
}
local FULL_EVAL_TASKS = {VCMR = true, SVMR = true, VR = true}

function PC.check_types(hps, source)
  for k, lim in pairs(NUMBERS) do
    local v = hps[k]
    if v ~= nil and v ~= json.null and (not finite(v) or v < lim[1] or (lim[2] and v == lim[1])) then
      fail("%s: %s must be a finite number %s %s, got %s", source, k, lim[2] and ">" or ">=", tostring(lim[1]),
        shown(v))
    end
  end
  -- the reference clips unless grad_norm is -1 (`if opts.grad_norm != -1`): at 0 it zeroes every
  -- gradient and below 0 it turns the step around, which no config means; hero's Trainer took any
  -- value <= 0 as "off", so these configs trained another model without a word
  local gn = hps.grad_norm
  if gn ~= nil and gn ~= json.null and finite(gn) and gn ~= -1 and gn <= 0 then
    fail("%s: grad_norm must be > 0 (the norm to clip at) or -1 (no clipping), got %s", source, shown(gn))
  end
  for k in pairs(PROBABILITIES) do
    local v = hps[k]
    if v ~= nil and v ~= json.null and not (finite(v) and v >= 0 and v < 1) then
      fail("%s: %s must be a probability in [0, 1), got %s", source, k, shown(v))
    end
  end
  for k, lo in pairs(INTEGERS) do
    local v = hps[k]
    if v ~= nil and v ~= json.null and (math.type(v) ~= "integer" or v < lo) then
      fail("%s: %s must be an integer >= %d, got %s", source, k, lo, shown(v))
    end
  end
  for k, what in pairs(LISTS) do
    local list = hps[k]
    if list ~= nil and list ~= json.null then
      if type(list) ~= "table" then
        fail("%s: %s must be a list of %s values, got %s", source, k, what, shown(list))
      end
      for i, v in ipairs(list) do
        local ok = (what == "positive integer" and math.type(v) == "integer" and v >= 1)
          or (what == "number >= 0" and finite(v) and v >= 0)
          or (what == "integer" and math.type(v) == "integer")
          or (what == "number in [0, 1)" and finite(v) and v >= 0 and v < 1)
        if not ok then fail("%s: %s[%d] must be %s %s, got %s", source, k, i, what:find("^i") and "an" or "a", what,
          shown(v)) end
      end
    end
  end
  -- AdamW's (beta1, beta2): one value, or three, failed in the optimizer as a bare Lua error
  local betas = hps.betas
  if type(betas) == "table" and #betas ~= 2 then
    fail("%s: betas must be a pair [beta1, beta2], got %d value%s", source, #betas, #betas == 1 and "" or "s")
  end
  local rl = hps.ranking_loss_type
  if rl ~= nil and rl ~= "hinge" and rl ~= "lse" then
    fail("%s: ranking_loss_type must be hinge or lse, got %s", source, tostring(rl))
  end
  local tasks = hps.full_eval_tasks
  if tasks ~= nil then
    if type(tasks) ~= "table" or #tasks == 0 then
      fail("%s: full_eval_tasks must be a non-empty list of VCMR, SVMR, VR", source)
    end
    for _, t in ipairs(tasks) do
      if not FULL_EVAL_TASKS[t] then
        fail("%s: full_eval_tasks: '%s' is not one of VCMR, SVMR, VR", source, tostring(t))
      end
    end
  end
end

--- The run's hyper-parameters: the decoded config with the reference's defaults for absent keys,
-- hard_negtiave_start_step also read as hard_negative_start_step, everything checked.
function PC.hparams(raw, source)
  source = source or "the config"
  if type(raw) ~= "table" or json.is_array(raw) then fail("%s is not a JSON object", source) end
  check_spelling(raw, source)
  local hps = copy(raw)
  if hps.hard_negtiave_start_step == nil and hps.hard_negative_start_step ~= nil then
    hps.hard_negtiave_start_step = hps.hard_negative_start_step
  end
  for _, k in ipairs(PC.REQUIRED) do
    if is_null(hps[k]) then fail("%s lacks '%s' (needed for pre-training)", source, k) end
  end
  for k, v in pairs(DEFAULTS) do
    if is_null(hps[k]) then hps[k] = copy(v) end
  end
  if not require("hero.optim").by_config_name(hps.optim) then
    fail("%s: optim '%s' is not one of the reference's adamw, adam, adamax", source, tostring(hps.optim))
  end
  for _, k in ipairs {"num_train_steps", "train_batch_size", "gradient_accumulation_steps", "val_batch_size"} do
    check_int(source, hps, k, 1)
  end
  for _, k in ipairs {"warmup_steps", "valid_steps", "save_steps", "max_txt_len", "sub_ctx_len", "seed"} do
    check_int(source, hps, k, 0)
  end
  if math.type(hps.max_clip_len) ~= "integer" then fail("%s: max_clip_len must be an integer", source) end
  if hps.warmup_steps >= hps.num_train_steps then
    fail("%s: warmup_steps (%d) must be below num_train_steps (%d)", source, hps.warmup_steps, hps.num_train_steps)
  end
  PC.check_types(hps, source)
  local hs, hp, hw = hps.hard_negtiave_start_step, hps.hard_pool_size, hps.hard_neg_weights
  if type(hs) ~= "table" or type(hp) ~= "table" or type(hw) ~= "table" or #hs ~= #hw or #hp < #hs then
    fail("%s: hard_negtiave_start_step, hard_pool_size and hard_neg_weights must be lists of matching length", source)
  end
  hps.hard_negative_start_step = hps.hard_negtiave_start_step
  if type(hps.targets) ~= "table" or #hps.targets == 0 then fail("%s: targets must be a non-empty list", source) end
  local ratios = hps.targets_ratio
  if is_null(ratios) then
    ratios = {}
    for i = 1, #hps.targets do ratios[i] = 1 end
    hps.targets_ratio = ratios
  end
  if type(ratios) ~= "table" or #ratios ~= #hps.targets then
    fail("%s: targets_ratio must give one ratio per target (%d)", source, #hps.targets)
  end
  return hps
end

local function join(root, path)
  if is_null(root) or path:sub(1, 1) == "/" then return path end
  return root .. "/" .. path
end

--- The targets of the config: a list of {name, video_db (the LMDB directory), sub_db, vfeat_interval,
-- loaders = {{name = "<task>_<target>_<split>", task, ratio, train_ids (path), val_ids (path or nil)}}}.
-- A target with vfeat_shards also has shards = {LMDB directory per shard} (video_db is the first,
-- which validation reads, as the reference's) and each loader's train_ids is a list, one per shard.
-- dirs: txt_db and img_db roots (default the config's txt_db / img_db); video_db_dir(dir, hps)
-- resolves a video db directory the reference's way (hero.train.finetune.video_db_dir).
function PC.targets(hps, dirs, video_db_dir)
  dirs = dirs or {}
  local txt_root = dirs.txt_db or hps.txt_db
  local img_root = dirs.img_db or hps.img_db
  local out = {}
  for i, t in ipairs(hps.targets) do
    local where = string.format("targets[%d]", i)
    if type(t) ~= "table" or type(t.name) ~= "string" then fail("%s needs a name", where) end
    if type(t.sub_txt_db) ~= "string" or type(t.vfeat_db) ~= "string" then
      fail("%s (%s) needs sub_txt_db and vfeat_db", where, t.name)
    end
    local interval = is_null(t.vfeat_interval) and 1.5 or t.vfeat_interval
    local vhps = {vfeat_version = hps.vfeat_version, vfeat_interval = interval, compressed_db = hps.compressed_db}
    local function resolve(d) return video_db_dir and video_db_dir(d, vhps) or d end
    local target = {name = t.name, sub_db = join(txt_root, t.sub_txt_db), vfeat_interval = interval, loaders = {}}
    local shards = t.vfeat_shards
    if not is_null(shards) then
      -- the feature shards of one target (HowTo100M): <img_db>/<vfeat_db>/<shard> each
      -- (pretrain.py:build_target_loaders), one train_idx file per shard
      if type(shards) ~= "table" or #shards == 0 then fail("%s (%s): vfeat_shards must be a non-empty list", where,
        t.name) end
      target.shards = {}
      for k, sh in ipairs(shards) do target.shards[k] = resolve(join(img_root, t.vfeat_db) .. "/" .. tostring(sh)) end
      target.video_db = target.shards[1]
    else
      target.video_db = resolve(join(img_root, t.vfeat_db))
    end
    if type(t.splits) ~= "table" or #t.splits == 0 then fail("%s (%s) has no splits", where, t.name) end
    for j, s in ipairs(t.splits) do
      local sw = string.format("%s.splits[%d]", where, j)
      if type(s.name) ~= "string" or type(s.tasks) ~= "table" or #s.tasks == 0 then
        fail("%s needs a name and a non-empty task list", sw)
      end
      local train_ids
      if target.shards then
        if type(s.train_idx) ~= "table" or #s.train_idx ~= #target.shards then
          fail("%s needs train_idx: one JSON file of video ids per shard (%d)", sw, #target.shards)
        end
        train_ids = {}
        for k, f in ipairs(s.train_idx) do train_ids[k] = join(txt_root, f) end
      elseif type(s.train_idx) ~= "string" then
        fail("%s needs train_idx (one JSON file of video ids)", sw)
      else
        train_ids = join(txt_root, s.train_idx)
      end
      local r = s.ratio
      if is_null(r) then
        r = {}
        for k = 1, #s.tasks do r[k] = 1 end
      end
      if #r ~= #s.tasks then fail("%s: %d ratios for %d tasks", sw, #r, #s.tasks) end
      for k, task in ipairs(s.tasks) do
        if not PC.TASKS[task] then fail("%s: unknown task '%s' (mlm, mfm-nce, mffr, fom, vsm)", sw, tostring(task)) end
        local ratio = hps.targets_ratio[i] * r[k]
        if math.type(ratio) ~= "integer" or ratio < 1 then
          fail("%s: the ratio of %s (target ratio x task ratio) must be a positive integer, got %s", sw, task,
            tostring(ratio))
        end
        target.loaders[#target.loaders + 1] = {name = task .. "_" .. t.name .. "_" .. s.name, task = task,
          ratio = ratio, train_ids = train_ids,
          val_ids = type(s.val_idx) == "string" and join(txt_root, s.val_idx) or nil}
      end
    end
    out[#out + 1] = target
  end
  return out
end

--- The task ratios, batch size and VSM losses and schedules of the released TV pre-training config
-- (config/pretrain-tv-16gpu.json). examples/pretrain.lua trains with them when it is given
-- databases without a config, so that such a run is HERO's recipe unless told otherwise.
function PC.released_tv()
  return {ratios = {mlm = 2, ["mfm-nce"] = 2, fom = 1, vsm = 2}, train_batch_size = 32, drop_svmr_prob = 0.8,
          lw_neg_q = 8.0, lw_neg_ctx = 8.0, lw_st_ed = 0.01, ranking_loss_type = "hinge", margin = 0.1,
          hard_pool_size = {20}, hard_neg_weights = {10}, hard_negtiave_start_step = {20000}, train_span_start_step = 0,
          use_all_neg = true}
end

--- HeroForPretraining's constructor options of the config (lw_st_ed 0 until train_span_start_step).
function PC.model_options(hps)
  return {lw_neg_ctx = hps.lw_neg_ctx, lw_neg_q = hps.lw_neg_q, lw_st_ed = 0, ranking_loss_type = hps.ranking_loss_type,
          margin = hps.margin, use_all_neg = hps.use_all_neg == true, drop_svmr_prob = hps.drop_svmr_prob}
end

--- The per-update schedules of pretrain.py as the Trainer's forward_opts: decided from the number of
-- finished updates (step - 1), so a resumed run decides the same way. VSM micro-batches get the
-- hard negatives in force; the start/end loss weight is switched on in the model.
function PC.forward_opts(model, hps)
  return function(task, step)
    local done = step - 1
    local s = hps.train_span_start_step
    model.opts.lw_st_ed = (s ~= -1 and done >= s) and hps.lw_st_ed or 0
    if not task:match("^vsm") then return nil end
    local hard
    for i, hn in ipairs(hps.hard_negtiave_start_step) do
      if hn ~= -1 and done >= hn then hard = {pool_size = hps.hard_pool_size[i], weight = hps.hard_neg_weights[i]} end
    end
    return hard and {hard_negative = hard} or nil
  end
end

--- Frame positions of the model the config's checkpoint asks for (its img position table, else 100).
function PC.max_frm_seq_len(sd)
  return checkpoint.max_frm_seq_len(sd or {}, 100)
end

--- Loads the config's checkpoint (tensors `sd`, as hero.models.checkpoint.read gives them, or nil
-- for none) into the model: with load_partial_pretrained the reference's RoBERTa initialisation
-- (checkpoint.load_partial_pretrained; it runs without a checkpoint too, as pretrain.py's does with
-- an empty one), else a HERO state dict. Returns the load report {missing, unexpected}.
function PC.load_checkpoint(model, sd, hps, n_layers)
  if hps.load_partial_pretrained then
    return checkpoint.load_partial_pretrained(model, sd, {n_layers = n_layers,
      skip_layers = hps.skip_layer_loading == true, generator = model.generator})
  end
  return checkpoint.load_into(model, sd or {})
end

return PC
