--- The reference's config/*.json files as released (spec/fixtures/reference_config): hero reads
-- every key with the reference's meaning, or names it as one it deliberately does not use (and the
-- README says why), and each training config runs with examples/finetune.lua --config as it is,
-- only its paths pointing at the spec's databases and a tiny model.
local hero = require "hero"
local helper = require "spec_helper"
local it_db = helper.it_needs(it, pending, "lmdb", "lz4") -- specs that read HERO databases
local json = hero.json
local FT = require "hero.train.finetune"
local PC = require "hero.train.pretrain_config"

local cfg_dir = helper.fixture("reference_config")
local txt_dir = helper.fixture("data/txt_db")
local tv_root = helper.fixture("data/video_db/tv")

local function readme()
  local path = helper.fixture(""):gsub("spec/fixtures/$", "") .. "README.md"
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

-- What hero does with each key of the released training configs (the spec fails on a key that
-- is not listed here nor in FT.UNUSED_KEYS, so a new key must be looked at). PATH keys name files;
-- examples/finetune.lua opens them (checked by running it below).
local PATH = {sub_txt_db = true, vfeat_db = true, train_query_txt_db = true, val_query_txt_db = true,
              test_query_txt_db = true, model_config = true, checkpoint = true, output_dir = true, train_db = true,
              val_db = true, val_ref = true}
local READ = {
  task = "the datasets and the loss (vcmr: tvr, how2r, didemo_video_sub / _only; ...)",
  compressed_db = "the video db's directory: <vfeat_version>_<vfeat_interval>_compressed",
  vfeat_version = "the video db's directory", vfeat_interval = "the video db's directory and the moments' seconds",
  max_clip_len = "frames per video", max_txt_len = "the training queries' length filter",
  sub_ctx_len = "preceding subtitles in each segment", train_batch_size = "the loader", val_batch_size = "validation",
  gradient_accumulation_steps = "the trainer", learning_rate = "the trainer", valid_steps = "the trainer",
  save_steps = "the trainer", num_train_steps = "the trainer", warmup_steps = "the trainer",
  grad_norm = "the trainer", optim = "the optimizer's class", betas = "the optimizer", weight_decay = "the optimizer",
  lr_mul = "the optimizer's groups", dropout = "every dropout of the model", seed = "the loader and generators",
  lw_neg_q = "the model", lw_neg_ctx = "the model", lw_st_ed = "the model (from train_span_start_step)",
  ranking_loss_type = "the model", margin = "the model", drop_svmr_prob = "the model", use_all_neg = "the model",
  hard_pool_size = "the hard-negative schedule", hard_neg_weights = "the hard-negative schedule",
  hard_negtiave_start_step = "the hard-negative schedule", train_span_start_step = "the local loss's schedule",
  eval_with_query_type = "the evaluation", max_before_nms = "the evaluation", max_after_nms = "the evaluation",
  nms_thd = "the evaluation", q2c_alpha = "the evaluation", max_vcmr_video = "the evaluation",
  full_eval_tasks = "the evaluation", min_pred_l = "the evaluation", max_pred_l = "the evaluation",
  vcmr_eval_video_batch_size = "the evaluation's video batches", max_vr_video = "the evaluation",
  vr_eval_video_batch_size = "the evaluation's video batches", vr_eval_q_batch_size = "the evaluation's query batches",
  lsr = "the TVC loss", max_cap_per_vid = "the TVC training captions", max_gen_step = "the TVC decoding",
  fp16 = "examples/finetune.lua and pretrain.lua: f16 autocast on a GPU unless --amp says otherwise (FT.FP16)",
}

local TRAIN = {
  {"train-tvr-8gpu.json", "vcmr", "tvr_val.db"},
  {"train-didemo_video_sub-8gpu.json", "vcmr", "tvr_val.db"},
  {"train-didemo_video_only-4gpu.json", "vcmr", "tvr_val.db"},
  {"train-msrvtt_video_sub-4gpu.json", "vr", "tvr_val.db"},
  {"train-msrvtt_video_only-4gpu.json", "vr", "tvr_val.db"},
  {"train-tvqa-8gpu.json", "videoqa", "tvqa_val.db"},
  {"train-violin-8gpu.json", "violin", "violin_test.db"},
  {"train-tvc-8gpu.json", "tvc", "tvr_val.db"},
}

describe("the reference's config/*.json", function()
  local tmp
  setup(function()
    tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute('mkdir -p "' .. tmp .. '"'))
    -- a tiny model whose own dropout (0.3) differs from the configs' (0.1), so set_dropout shows
    local function section(extra) return helper.tiny_section(extra or {hidden_dropout_prob = 0.3,
      attention_probs_dropout_prob = 0.3}) end
    local cfg = {f_config = section(), c_config = section(), q_config = section(), d_config = section()}
    cfg.q_config.num_hidden_layers = 0
    json.write_file(tmp .. "/model.json", cfg)
    hero.manual_seed(11)
    -- 100 frame positions, as the released checkpoints (a video-only segment holds every frame)
    hero.models.HeroForPretraining(hero.config.model(cfg), {vfeat_dim = 24, max_frm_seq_len = 100})
      :save_checkpoint(tmp .. "/init.safetensors")
    -- TVC's val_ref: the validation clips with their references, as tvc_val_release.jsonl
    local src <close> = hero.data.open_txt_db(txt_dir .. "/tvr_val.db")
    local f <close> = assert(io.open(tmp .. "/val_ref.jsonl", "w"))
    for _, e in ipairs(src:json("query_data.jsonl")) do
      f:write(json.encode({clip_id = e.desc_id, descs = {{desc = e.desc}}}), "\n")
    end
  end)
  teardown(function()
    if tmp and tmp:match("^/tmp/") then os.execute('rm -rf "' .. tmp .. '"') end
  end)

  -- The released config with its files in the spec's fixtures (every other key as released).
  local function local_paths(raw, name, db)
    local c = {}
    for k, v in pairs(raw) do c[k] = v end
    local function set(key, value) if type(c[key]) == "string" then c[key] = value end end
    set("sub_txt_db", txt_dir .. "/tv_subtitles.db")
    -- the fixtures have 1.5 s features only: an interval of 2 (MSR-VTT) reads that LMDB directly
    set("vfeat_db", c.vfeat_interval == 1.5 and tv_root or tv_root .. "/resnet_slowfast_1.5")
    for _, key in ipairs {"train_query_txt_db", "val_query_txt_db", "test_query_txt_db", "train_db", "val_db"} do
      set(key, txt_dir .. "/" .. db)
    end
    set("val_ref", tmp .. "/val_ref.jsonl")
    set("model_config", tmp .. "/model.json")
    set("checkpoint", tmp .. "/init.safetensors")
    set("output_dir", tmp .. "/" .. name)
    return c
  end

  it("model configs: every key of every section is the model's; absent ones take RobertaModelConfig's defaults",
    function()
    local known = hero.config.model_section({}, "defaults") -- every key the model config has
    for _, name in ipairs {"hero_pretrain", "hero_finetune", "hero_tvc"} do
      local path = cfg_dir .. "/" .. name .. ".json"
      local raw, cfg = json.read_file(path), hero.config.load(path)
      for section, keys in pairs(raw) do
        for k, v in pairs(keys) do
          assert.is_not_nil(known[k], name .. ": " .. section .. "." .. k)
          assert.are.equal(v, cfg[section][k], name .. ": " .. section .. "." .. k)
        end
        assert.are.equal(1e-12, cfg[section].layer_norm_eps, name .. ": " .. section) -- not in the JSON
      end
    end
  end)

  it("pretrain-tv-16gpu.json: every key read as pretrain.py reads it, or named as not used", function()
    local raw = json.read_file(cfg_dir .. "/pretrain-tv-16gpu.json")
    local hps = PC.hparams(raw, "pretrain-tv-16gpu.json")
    local text = readme()
    local pretrain_read = {txt_db = 1, img_db = 1, targets = 1, targets_ratio = 1, mask_prob = 1,
      load_partial_pretrained = 1, skip_layer_loading = 1}
    for k, v in pairs(raw) do
      if PC.UNUSED_KEYS[k] then
        assert.truthy(text:find("`" .. k .. "`", 1, true), "README names the unused key " .. k)
      else
        assert.truthy(READ[k] or PATH[k] or pretrain_read[k], "pretrain-tv-16gpu.json: what is " .. k .. "?")
        assert.are.same(v, hps[k], k)
      end
    end
    local t = PC.targets(hps)
    assert.are.same({"/txt/tv_subtitles.db", "/video/tv", 1.5}, {t[1].sub_db, t[1].video_db, t[1].vfeat_interval})
    local got = {}
    for _, l in ipairs(t[1].loaders) do
      got[l.name] = {l.ratio, l.train_ids, l.val_ids}
    end
    local ids = {"/txt/pretrain_splits/tv_train.json", "/txt/pretrain_splits/tv_val.json"}
    assert.are.same({mlm_tv_all = {2, ids[1], ids[2]}, ["mfm-nce_tv_all"] = {2, ids[1], ids[2]},
      fom_tv_all = {1, ids[1], ids[2]}, vsm_tv_all = {2, ids[1], ids[2]}}, got)
    assert.are.same({lw_neg_ctx = 8.0, lw_neg_q = 8.0, lw_st_ed = 0, ranking_loss_type = "hinge", margin = 0.1,
      use_all_neg = true, drop_svmr_prob = 0.8}, PC.model_options(hps))
  end)

  for _, case in ipairs(TRAIN) do
    local name, task, db = case[1], case[2], case[3]
    it_db(name .. ": every key read as train_*.py reads it, or named as not used", function()
      local raw = json.read_file(cfg_dir .. "/" .. name)
      local c = local_paths(raw, name, db)
      local hps = FT.hparams(task, c, name)
      local text = readme()
      for k, v in pairs(raw) do
        if FT.UNUSED_KEYS[k] then
          assert.truthy(text:find("`" .. k .. "`", 1, true), "README names the unused key " .. k)
        else
          assert.truthy(READ[k] or PATH[k], name .. ": what is " .. k .. "?")
          if not PATH[k] then assert.are.same(v, hps[k], name .. ": " .. k) end
        end
      end
      -- the video db's directory as VideoFeatLmdb names it: f'{vfeat_version}_{vfeat_interval}'
      -- with the JSON's number as Python prints it (2, not 2.0), _compressed with compressed_db
      local want = string.format("%s/%s_%s%s", tv_root, raw.vfeat_version, tostring(raw.vfeat_interval),
        raw.compressed_db and "_compressed" or "")
      if raw.vfeat_interval == 1.5 then
        assert.are.equal(want, FT.video_db_dir(tv_root, hps))
      else
        helper.assert_error_contains(function() FT.video_db_dir(tv_root, hps) end, want)
      end

      local run = FT.setup{task = task, hps = hps, model_config = FT.model_config(hps), checkpoint = hps.checkpoint,
        vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db, txt_db = hps.train_query_txt_db or hps.train_db,
        valid_txt_db = hps.val_query_txt_db or hps.val_db, out_dir = tmp .. "/setup_" .. name, progress = false}
      local tr, opt = run.trainer, run.optimizer
      -- train_tvc.py has no save_steps: it saves at each validation
      assert.are.same({raw.learning_rate, raw.warmup_steps, raw.num_train_steps, raw.grad_norm,
        raw.gradient_accumulation_steps, raw.valid_steps, raw.save_steps or raw.valid_steps},
        {tr.base_lr, tr.warmup, tr.total, tr.grad_norm, tr.accum, tr.valid_every, tr.save_every})
      assert.are.same({"adamw", raw.betas[1], raw.betas[2], raw.weight_decay}, {opt.kind:lower(), opt.beta1,
        opt.beta2, opt.weight_decay})
      local mul = (task == "vcmr" or task == "vr") and 1 or raw.lr_mul -- train_vcmr/vr.py ignore lr_mul
      assert.are.same({top = mul, top_no_decay = mul, v_encoder = 1, v_encoder_no_decay = 1}, opt.lr_mul)
      assert.are.same({raw.train_batch_size, raw.seed}, {run.loader.batch_size, run.loader.seed})
      assert.are.equal(raw.val_batch_size, tr.valid[hps.task].batch_size)
      for _, entry in ipairs(run.model:named_modules()) do
        if entry[2].__name == "Dropout" then assert.are.equal(raw.dropout, entry[2].p, entry[1]) end
      end
      assert.are.equal(raw.max_clip_len, run.video.max_clip_len)
      assert.are.equal(raw.task and raw.task:find("video_only") ~= nil or false, run.video.video_only == true)
      if not run.video.video_only then assert.are.equal(raw.sub_ctx_len or 0, run.video.sub_ctx_len) end
      assert.are.equal(raw.max_txt_len, run.dataset.max_txt_len)
      local o = run.model.opts
      if task == "vcmr" or task == "vr" then
        assert.are.same({raw.lw_neg_ctx, raw.lw_neg_q, raw.margin, raw.ranking_loss_type, raw.use_all_neg},
          {o.lw_neg_ctx, o.lw_neg_q, o.margin, o.ranking_loss_type, o.use_all_neg})
        local fo = FT.forward_opts(task, run.model, hps)
        local hn = raw.hard_negtiave_start_step[1]
        fo(hps.task, hn) -- hn - 1 updates done
        assert.is_nil(o.hard_negative)
        fo(hps.task, hn + 1)
        assert.are.same({pool_size = raw.hard_pool_size[1], weight = raw.hard_neg_weights[1]}, o.hard_negative)
        if task == "vcmr" then
          assert.are.equal(raw.drop_svmr_prob, o.drop_svmr_prob)
          fo(hps.task, raw.train_span_start_step + 1)
          assert.are.equal(raw.lw_st_ed, o.lw_st_ed)
        end
      elseif task == "videoqa" then
        assert.are.equal(raw.lw_st_ed, run.model.lw_st_ed)
      elseif task == "tvc" then
        assert.are.equal(raw.lsr, run.model.lsr)
        assert.are.equal(raw.max_cap_per_vid, run.dataset.max_cap_per_vid)
      end

      -- what the evaluation is handed (the model's evaluation is stopped there)
      local seen
      local stop = {}
      local function capture(what) return function(_, ...) seen = {what, ...}; error(stop) end end
      run.model.evaluate_full = capture("full")
      run.model.greedy_decode = capture("decode")
      local spec = {video = run.video, txt_db = hps.val_query_txt_db or hps.val_db, split = "val"}
      if task == "vcmr" or task == "vr" then
        -- the video batch size as the key says (3 here: the fixture's 7 videos in 3 batches)
        local key = task == "vcmr" and "vcmr_eval_video_batch_size" or "vr_eval_video_batch_size"
        local released = hps[key]
        hps[key] = 3
        local ok, err = pcall(FT.evaluate, task, run.model, hps, spec)
        hps[key] = released
        assert.are.equal(stop, err, tostring(err))
        assert.is_false(ok)
        assert.are.equal(3, #seen[2].batches)
        local eo = seen[5]
        if task == "vcmr" then
          for _, k in ipairs {"q2c_alpha", "max_vcmr_video", "min_pred_l", "max_pred_l", "max_before_nms",
                              "max_after_nms", "nms_thd", "eval_with_query_type", "max_clip_len", "vfeat_interval"} do
            assert.are.same(hps[k], eo[k], k) -- the config's value, or the argparse default
          end
          assert.are.same(raw.full_eval_tasks, eo.tasks)
        else
          assert.are.same({raw.max_vr_video, raw.max_clip_len}, {eo.max_vr_video, eo.max_clip_len})
          -- the query batches as vr_eval_q_batch_size says (80: one batch of the 9 queries)
          assert.are.equal(1, #seen[3].batches)
        end
      elseif task == "tvc" then
        local ok, err = pcall(FT.evaluate, task, run.model, hps, spec)
        assert.is_false(ok)
        assert.are.equal(stop, err, tostring(err))
        assert.are.equal(raw.max_gen_step, seen[3].max_step)
      end
    end)

    it_db(name .. ": examples/finetune.lua --config runs it and records every key in log/hps.json", function()
      local raw = json.read_file(cfg_dir .. "/" .. name)
      local path = tmp .. "/cfg-" .. name
      json.write_file(path, local_paths(raw, name, db))
      local lua = string.format("LUA_PATH='%s' LUA_CPATH='%s' lua5.4", package.path, package.cpath)
      local p = io.popen(string.format("%s examples/finetune.lua --task %s --config '%s' --steps 1 --quiet 2>&1; "
        .. "echo \"rc=$?\"", lua, task, path))
      local out = p:read("a")
      p:close()
      assert.truthy(out:find("rc=0", 1, true), out)
      assert.truthy(out:find("note: the config's fp16 is not used", 1, true), out) -- fp16: true in every one
      local hps = json.read_file(tmp .. "/" .. name .. "/log/hps.json")
      for k, v in pairs(raw) do
        if not PATH[k] then assert.are.same(v, hps[k], name .. ": " .. k) end
      end
      local f = io.open(tmp .. "/" .. name .. "/ckpt/step_1.safetensors", "rb")
      assert.is_not_nil(f, "the config's output_dir holds the checkpoint")
      f:close()
    end)
  end
end)

describe("misspelt config keys", function()
  it("are named with the key they were meant to be, where the reference would keep the default", function()
    local s = hero.spelling
    assert.are.equal(3, s.distance("kitten", "sitting"))
    assert.are.equal(1, s.distance("learning_rte", "learning_rate"))
    assert.are.equal(1, s.distance("lw_neg_cxt", "lw_neg_xct")) -- a swap of neighbours is one edit
    assert.are.equal(3, s.distance("abcdef", "xyz", 2)) -- past the limit: limit + 1
    assert.are.equal("q_config", s.near_miss("q_confg", {"f_config", "q_config"}))
    assert.is_nil(s.near_miss("output_attentions", {"attention_probs_dropout_prob"}))
    assert.is_nil(s.near_miss("q_config", {"f_config", "q_config"}))

    helper.assert_error_contains(function() hero.config.model({f_config = {num_hiden_layers = 2}}) end,
      "f_config.num_hiden_layers is not a key the model reads; did you mean num_hidden_layers?",
      "num_hidden_layers keeps its default, 12")
    helper.assert_error_contains(function() hero.config.model({f_config = {}, q_confg = {}}) end,
      "q_confg is not a section the model reads; did you mean q_config?")
    -- a key far from every known one is the reference's to ignore, and ours
    assert.are.equal(2, hero.config.model({f_config = {output_attentions = false, num_hidden_layers = 2}})
      .f_config.num_hidden_layers)
    -- a near key beside the one it resembles is not taken for a slip
    assert.is_table(hero.config.model({f_config = {num_hidden_layers = 2, num_hiden_layers = 3}}))

    local raw = json.read_file(cfg_dir .. "/train-tvr-8gpu.json")
    raw.lw_neg_q, raw.lw_neq_q = nil, 8
    helper.assert_error_contains(function() FT.hparams("vcmr", raw, "cfg.json") end,
      "cfg.json: 'lw_neq_q' is not a key the reference's scripts read; did you mean 'lw_neg_q'?")
    raw = json.read_file(cfg_dir .. "/pretrain-tv-16gpu.json")
    raw.warmup_step = raw.warmup_steps
    raw.warmup_steps = nil
    helper.assert_error_contains(function() PC.hparams(raw, "p.json") end, "'warmup_step'", "'warmup_steps'")
    -- every released config, and the run settings hero records in its hps.json, read as they are
    for _, name in ipairs {"pretrain-tv-16gpu", "train-didemo_video_only-4gpu", "train-didemo_video_sub-8gpu",
                           "train-msrvtt_video_only-4gpu", "train-msrvtt_video_sub-4gpu", "train-tvc-8gpu",
                           "train-tvqa-8gpu", "train-tvr-8gpu", "train-violin-8gpu"} do
      PC.check_spelling(json.read_file(cfg_dir .. "/" .. name .. ".json"), name)
    end
    PC.check_spelling({tasks = {"mlm"}, ratios = {1}, workers = 2, accum = 2, save_every = 5}, "hps.json")
  end)

  it("values of the wrong kind are named with their key (they failed deep in a run or trained otherwise)", function()
    local function with(k, v)
      local raw = json.read_file(cfg_dir .. "/train-tvr-8gpu.json")
      raw[k] = v
      return raw
    end
    -- "LSE" trained with the hinge loss; a negative pool size weighed every negative 0.1; VCMRX evaluated nothing
    helper.assert_error_contains(function() FT.hparams("vcmr", with("ranking_loss_type", "LSE"), "c.json") end,
      "c.json: ranking_loss_type must be hinge or lse, got LSE")
    helper.assert_error_contains(function() FT.hparams("vcmr", with("hard_pool_size", {-3}), "c.json") end,
      "hard_pool_size[1] must be a positive integer, got -3")
    helper.assert_error_contains(function() FT.hparams("vcmr", with("full_eval_tasks", {"VCMRX"}), "c.json") end,
      "full_eval_tasks: 'VCMRX' is not one of VCMR, SVMR, VR")
    helper.assert_error_contains(function() FT.hparams("vcmr", with("full_eval_tasks", {}), "c.json") end,
      "full_eval_tasks must be a non-empty list")
    for k, v in pairs {grad_norm = "x", margin = "x", lw_neg_q = "x", vfeat_interval = "x", learning_rate = 0} do
      helper.assert_error_contains(function() FT.hparams("vcmr", with(k, v), "c.json") end,
        "c.json: " .. k .. " must be")
    end
    helper.assert_error_contains(function() FT.hparams("vcmr", with("hard_neg_weights", {"x"}), "c.json") end,
      "hard_neg_weights[1] must be a number >= 0")
    helper.assert_error_contains(function() FT.hparams("vcmr", with("train_span_start_step", "x"), "c.json") end,
      "train_span_start_step must be an integer >= -1")
    helper.assert_error_contains(function() FT.hparams("vcmr", json.array {1, 2}, "c.json") end,
      "c.json is not a JSON object")
    local raw = json.read_file(cfg_dir .. "/pretrain-tv-16gpu.json")
    raw.dropout = 1.5
    helper.assert_error_contains(function() PC.hparams(raw, "p.json") end, "dropout must be a probability in [0, 1)")
    -- the released values stay valid: no NMS (nms_thd -1), hard negatives never switched on (-1)
    assert.is_table(FT.hparams("vcmr", with("nms_thd", -1), "c.json"))
    assert.is_table(FT.hparams("vcmr", with("hard_negtiave_start_step", {-1}), "c.json"))
  end)
end)
