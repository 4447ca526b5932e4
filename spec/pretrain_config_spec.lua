local hero = require "hero"
local helper = require "spec_helper"
local it_db = helper.it_needs(it, pending, "lmdb", "lz4") -- specs that read or write HERO databases
local json = hero.json
local PC = require "hero.train.pretrain_config"

local fx = helper.fixture("data")

-- The released pretrain-tv-16gpu.json, its paths pointing at the spec fixtures (txt_db / img_db
-- roots, one target "tv" with one split "all").
local function released(dir, over)
  local c = {
    txt_db = fx .. "/txt_db", img_db = fx .. "/video_db",
    targets = {{name = "tv", sub_txt_db = "tv_subtitles.db", vfeat_db = "tv", vfeat_interval = 1.5,
      splits = {{name = "all", tasks = {"mlm", "mfm-nce", "fom", "vsm"}, train_idx = dir .. "/train_ids.json",
        val_idx = dir .. "/train_ids.json", ratio = {2, 2, 1, 2}}}}},
    targets_ratio = {1}, mask_prob = 0.15, compressed_db = false, model_config = "hero_pretrain.json",
    checkpoint = dir .. "/roberta.safetensors", load_partial_pretrained = true, skip_layer_loading = true,
    output_dir = "/storage/default_pretrain_tv", max_clip_len = 12, max_txt_len = 60,
    vfeat_version = "resnet_slowfast", drop_svmr_prob = 0.8, train_batch_size = 3, val_batch_size = 3,
    gradient_accumulation_steps = 2, learning_rate = 1e-3, valid_steps = 2, save_steps = 2, num_train_steps = 4,
    optim = "adamw", betas = {0.9, 0.98}, dropout = 0.1, weight_decay = 0.01, grad_norm = 1.0, warmup_steps = 1,
    lw_neg_q = 8.0, lw_neg_ctx = 8.0, lw_st_ed = 0.01, ranking_loss_type = "hinge", margin = 0.1,
    hard_pool_size = {2}, hard_neg_weights = {10}, hard_negtiave_start_step = {2}, train_span_start_step = 0,
    sub_ctx_len = 0, use_all_neg = true, seed = 77, fp16 = true, n_workers = 4, pin_mem = true, rank = 0,
  }
  for k, v in pairs(over or {}) do c[k] = v end
  return c
end

--- hero_pretrain.json's vocabulary (RoBERTa's 50265 rows) and single token type, tiny
local function section(extra)
  local s = helper.tiny_section {type_vocab_size = 1, vocab_size = 50265}
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

-- hero_pretrain.json's shape (RoBERTa-sized vocabulary, one token type), tiny
local MODEL = {f_config = section {num_hidden_layers = 2},
  c_config = section {max_position_embeddings = 32, type_vocab_size = 2}, q_config = section {num_hidden_layers = 0}}

-- A 12-layer RoBERTa state dict whose layer l holds the value l.
local function roberta()
  local sd = {["roberta.embeddings.word_embeddings.weight"] = hero.randn(50265, 16),
    ["roberta.embeddings.position_embeddings.weight"] = hero.randn(514, 16),
    ["roberta.embeddings.token_type_embeddings.weight"] = hero.randn(1, 16),
    ["roberta.embeddings.LayerNorm.gamma"] = hero.full({16}, 2), ["lm_head.bias"] = hero.zeros(50265)}
  for l = 0, 11 do
    sd["roberta.encoder.layer." .. l .. ".attention.self.query.weight"] = hero.full({16, 16}, l)
    sd["roberta.encoder.layer." .. l .. ".output.LayerNorm.beta"] = hero.full({16}, -l)
  end
  return sd
end

describe("the reference's pre-training config (hero.train.pretrain_config)", function()
  local dir
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute('mkdir -p "' .. dir .. '"'))
    json.write_file(dir .. "/hero_pretrain.json", MODEL)
    hero.manual_seed(8)
    hero.save(dir .. "/roberta.safetensors", roberta())
    json.write_file(dir .. "/train_ids.json", json.keys(json.read_file(fx .. "/txt_db/tv_subtitles.db/vid2len.json")))
    json.write_file(dir .. "/pretrain.json", released(dir))
  end)
  teardown(function()
    if dir and dir:match("^/tmp/") then os.execute('rm -rf "' .. dir .. '"') end
  end)

  it("reads the released config as it is; absent keys take the reference's defaults", function()
    local hps = PC.hparams(released(dir), "c")
    assert.same({20000}, PC.hparams(released(dir, {hard_negtiave_start_step = {20000}})).hard_negative_start_step)
    assert.same({1}, hps.targets_ratio)
    local bare = released(dir)
    for _, k in ipairs {"use_all_neg", "sub_ctx_len", "val_batch_size", "ranking_loss_type", "targets_ratio"} do
      bare[k] = nil
    end
    bare.hard_pool_size, bare.hard_neg_weights, bare.hard_negtiave_start_step = nil, nil, nil
    local d = PC.hparams(bare, "c")
    assert.is_false(d.use_all_neg) -- store_true in config/config.py: absent means sampled negatives
    assert.same({0, 20, "hinge", {1}, {10000}}, {d.sub_ctx_len, d.val_batch_size, d.ranking_loss_type,
      d.targets_ratio, d.hard_negtiave_start_step})
    for _, k in ipairs(PC.REQUIRED) do
      local c = released(dir)
      c[k] = nil
      helper.assert_error_contains(function() PC.hparams(c, "cfg.json") end, "cfg.json lacks '" .. k .. "'")
    end
    -- the reference clips unless grad_norm is -1: 0 or another negative would zero or reverse its step
    for _, gn in ipairs {0, -2} do
      helper.assert_error_contains(function() PC.hparams(released(dir, {grad_norm = gn}), "c") end,
        "grad_norm must be > 0 (the norm to clip at) or -1 (no clipping)")
    end
    assert.equal(-1, PC.hparams(released(dir, {grad_norm = -1}), "c").grad_norm)
    helper.assert_error_contains(function() PC.hparams(released(dir, {optim = "sgd"}), "c") end,
      "optim 'sgd' is not one of the reference's adamw, adam, adamax")
    assert.equal("adam", PC.hparams(released(dir, {optim = "adam"}), "c").optim)
    helper.assert_error_contains(function() PC.hparams(released(dir, {warmup_steps = 4}), "c") end,
      "warmup_steps (4) must be below num_train_steps (4)")
    helper.assert_error_contains(function() PC.hparams(released(dir, {targets_ratio = {1, 2}}), "c") end,
      "one ratio per target")
    helper.assert_error_contains(function() PC.hparams(released(dir, {hard_neg_weights = {10, 1}}), "c") end,
      "matching length")
  end)

  it("makes one loader per target, split and task, named and weighted as pretrain.py", function()
    local c = released(dir, {targets_ratio = {3}})
    c.targets[1].splits[2] = {name = "extra", tasks = {"mffr"}, train_idx = "ids.json"}
    local hps = PC.hparams(c, "c")
    local t = PC.targets(hps, {img_db = "/video"})
    assert.equal(1, #t)
    assert.equal("/video/tv", t[1].video_db) -- no resolver: the directory as given
    assert.equal(fx .. "/txt_db/tv_subtitles.db", t[1].sub_db)
    local names, ratios = {}, {}
    for i, l in ipairs(t[1].loaders) do names[i], ratios[i] = l.name, l.ratio end
    assert.same({"mlm_tv_all", "mfm-nce_tv_all", "fom_tv_all", "vsm_tv_all", "mffr_tv_extra"}, names)
    assert.same({6, 6, 3, 6, 3}, ratios)
    assert.equal(fx .. "/txt_db/ids.json", t[1].loaders[5].train_ids)
    assert.is_nil(t[1].loaders[5].val_ids)
    -- the reference's directory layout: <vfeat_db>/<vfeat_version>_<vfeat_interval>
    local FT = require "hero.train.finetune"
    local resolved = PC.targets(PC.hparams(released(dir), "c"), nil, FT.video_db_dir)
    assert.equal(fx .. "/video_db/tv/resnet_slowfast_1.5", resolved[1].video_db)
    -- feature shards: <img_db>/<vfeat_db>/<shard> as pretrain.py's, one id file per shard
    local sh = released(dir)
    sh.targets[1].vfeat_db, sh.targets[1].vfeat_shards = "ht", {"s0", "s1"}
    sh.targets[1].splits[1].train_idx = {"a.json", "b.json"}
    local st = PC.targets(PC.hparams(sh, "c"), {img_db = "/video"})[1]
    assert.same({"/video/ht/s0", "/video/ht/s1"}, st.shards)
    assert.equal("/video/ht/s0", st.video_db)
    assert.same({fx .. "/txt_db/a.json", fx .. "/txt_db/b.json"}, st.loaders[1].train_ids)
    sh.targets[1].splits[1].train_idx = "a.json"
    helper.assert_error_contains(function() PC.targets(PC.hparams(sh, "c")) end, "one JSON file of video ids per shard")
    local bad = released(dir)
    bad.targets[1].splits[1].tasks[2] = "itm"
    helper.assert_error_contains(function() PC.targets(PC.hparams(bad, "c")) end, "unknown task 'itm'")
  end)

  it("switches the start/end loss and the hard negatives on at their updates", function()
    local hps = PC.hparams(released(dir, {train_span_start_step = 2, hard_negtiave_start_step = {1, 3},
      hard_pool_size = {5, 2}, hard_neg_weights = {10, 20}}), "c")
    local model = {opts = {lw_st_ed = 0}}
    local f = PC.forward_opts(model, hps)
    -- step n runs after n - 1 finished updates
    assert.is_nil(f("vsm_tv_all", 1))
    assert.equal(0, model.opts.lw_st_ed)
    assert.same({hard_negative = {pool_size = 5, weight = 10}}, f("vsm_tv_all", 2))
    assert.equal(0, model.opts.lw_st_ed)
    assert.is_nil(f("mlm_tv_all", 3)) -- only VSM ranks
    assert.equal(0.01, model.opts.lw_st_ed)
    assert.same({hard_negative = {pool_size = 2, weight = 20}}, f("vsm_tv_all", 4))
    local never = PC.forward_opts(model, PC.hparams(released(dir, {train_span_start_step = -1,
      hard_negtiave_start_step = {-1}}), "c"))
    assert.is_nil(never("vsm_tv_all", 100))
    assert.equal(0, model.opts.lw_st_ed)
    local m = PC.model_options(hps)
    assert.same({8.0, 8.0, 0, true, 0.8}, {m.lw_neg_ctx, m.lw_neg_q, m.lw_st_ed, m.use_all_neg, m.drop_svmr_prob})
  end)

  it("starts from RoBERTa as load_partial_pretrained: every other layer, padded vocabulary, two type rows", function()
    local cfg = hero.config.model(MODEL)
    local ck = require "hero.models.checkpoint"
    local sd = ck.read(dir .. "/roberta.safetensors")
    for _, skip in ipairs {true, false} do
      local m = hero.models.HeroForPretraining(cfg, {vfeat_dim = 24, max_frm_seq_len = PC.max_frm_seq_len(sd)})
      assert.equal(100, PC.max_frm_seq_len(sd)) -- no frame positions in a RoBERTa file
      local hps = PC.hparams(released(dir, {skip_layer_loading = skip}), "c")
      local report = PC.load_checkpoint(m, sd, hps, 2)
      assert.same({}, report.unexpected)
      -- with skip_layer_loading, RoBERTa layers 5 and 11 (gap 12 / 2); without, layers 0 and 1
      local want = skip and {5, 11} or {0, 1}
      for l = 0, 1 do
        local w = m:state_dict()["v_encoder.f_encoder.encoder.layer." .. l .. ".attention.self.query.weight"]
        assert.equal(want[l + 1], w:max():item())
        assert.equal(-want[l + 1], m:state_dict()["v_encoder.f_encoder.encoder.layer." .. l
          .. ".output.LayerNorm.bias"]:min():item()) -- beta renamed
      end
      local word = m:state_dict()["v_encoder.f_encoder.embeddings.word_embeddings.weight"]
      assert.same({50272, 16}, word:size())
      assert.equal(0, word:narrow(1, 50266, 7):abs():sum():item())
      assert(word:narrow(1, 1, 50265):eq(sd["roberta.embeddings.word_embeddings.weight"]):all():item())
      local types = m:state_dict()["v_encoder.f_encoder.embeddings.token_type_embeddings.weight"]
      assert(types[1]:eq(types[2]):all():item())
      assert(types[1]:eq(sd["roberta.embeddings.token_type_embeddings.weight"][1]):all():item())
      assert.equal(0, m.v_encoder.mask_embedding.weight[1]:abs():sum():item())
      assert.is_true(m.v_encoder.mask_embedding.weight[2]:abs():sum():item() > 0)
    end
  end)

  local lua_cmd = string.format("LUA_PATH='%s' LUA_CPATH='%s' lua5.4", package.path, package.cpath)
  local function pretrain(args)
    local q = {}
    for i, a in ipairs(args) do q[i] = "'" .. a:gsub("'", "'\\''") .. "'" end
    local p = io.popen(lua_cmd .. " examples/pretrain.lua " .. table.concat(q, " ") .. " 2>&1; echo \"rc=$?\"")
    local out = p:read("a")
    p:close()
    return tonumber(out:match("rc=(%d+)%s*$")), out
  end

  it("examples/pretrain.lua refuses settings it would ignore or that fail later, before it trains", function()
    local smoke = helper.fixture("hero-smoke")
    local out = dir .. "/refused"
    local cases = {
      {{"--batch-size", "1000"}, "--batch-size reads databases"},
      {{"--mask-prob", "2"}, "--mask-prob reads databases"},
      {{"--lr", "0x10"}, "--lr must be a finite decimal number, got '0x10'"},
      {{"--grad-norm", "1e999"}, "--grad-norm must be a finite decimal number"},
      {{"--grad-norm", "0"}, "--grad-norm must be > 0 (the norm to clip at) or -1 (no clipping)"},
      {{"--steps", "0x1"}, "--steps must be a positive integer, got '0x1'"},
      {{"--dropout", "1.5"}, "--dropout must be in [0, 1), got 1.5"},
      {{"--weight-decay", "-1"}, "--weight-decay must be >= 0"},
      {{"--warmup", "100"}, "--warmup (100 updates) must be below the run's 2 updates"},
      {{"--init", "/nonexistent"}, "--init /nonexistent: load_safetensors: no such file"},
    }
    for _, c in ipairs(cases) do
      local args = {"--fixture", smoke, "--out", out, "--steps", "2", "--quiet"}
      for _, a in ipairs(c[1]) do args[#args + 1] = a end
      local rc, text = pretrain(args)
      assert.equal(2, rc, text)
      assert.truthy(text:find("pretrain: " .. c[2], 1, true), text)
    end
    -- an empty --out wrote /hps.json
    local rc, text = pretrain {"--fixture", smoke, "--out", "", "--steps", "1", "--quiet"}
    assert.equal(2, rc, text)
    assert.truthy(text:find("the run directory is an empty path", 1, true), text)
    rc, text = pretrain {"--fixture", smoke, "--out", helper.fixture("hero-smoke/README.md"), "--steps", "1"}
    assert.equal(2, rc, text)
    assert.truthy(text:find("exists and is not a directory", 1, true), text)
  end)

  it_db("examples/pretrain.lua --train-config pre-trains from the released config's keys", function()
    local out = dir .. "/run"
    local rc, text = pretrain {"--train-config", dir .. "/pretrain.json", "--out", out, "--quiet"}
    assert.equal(0, rc, text)
    assert.matches("roberta.safetensors: %d+ parameters not in the checkpoint", text)
    -- the config's fp16 on the CPU: f32, with a note (on a GPU it is f16 autocast)
    local FT = require "hero.train.finetune"
    assert.truthy(text:find("note: " .. FT.FP16.cpu, 1, true), text)
    assert.is_nil(json.read_file(out .. "/hps.json").amp)
    local recs = {}
    for line in io.lines(out .. "/log.jsonl") do recs[#recs + 1] = json.decode(line) end
    assert.equal(4, #recs) -- num_train_steps
    local names = {mlm_tv_all = true, ["mfm-nce_tv_all"] = true, fom_tv_all = true, vsm_tv_all = true}
    for _, r in ipairs(recs) do
      assert.is_true(names[r.task], r.task)
      assert.equal(2, #r.micro_losses) -- gradient_accumulation_steps
    end
    assert.is_not_nil(recs[2].valid) -- valid_steps 2, on the val_idx videos
    assert.is_not_nil(recs[2].valid.vsm_tv_all)
    local hps = json.read_file(out .. "/hps.json")
    assert.equal(1e-3, hps.lr)
    assert.same({2, 2, 1, 2}, {hps.ratios.mlm_tv_all, hps.ratios["mfm-nce_tv_all"], hps.ratios.fom_tv_all,
      hps.ratios.vsm_tv_all})
    assert.equal("tv", hps.reference_config.targets[1].name)
    assert.is_true(io.open(out .. "/ckpt/step_4.safetensors") ~= nil)
    -- the command line wins over the config
    rc, text = pretrain {"--train-config", dir .. "/pretrain.json", "--out", dir .. "/run2", "--quiet", "--steps", "1",
      "--accum", "1", "--lr", "5e-4", "--amp", "f32"}
    assert.equal(0, rc, text)
    assert.is_nil(text:find("fp16", 1, true), text) -- --amp chose: no note
    local first = json.decode(io.lines(dir .. "/run2/log.jsonl")())
    assert.equal(1, #first.micro_losses)
    assert.equal(5e-4, first.lr)
    assert.equal(60, json.read_file(dir .. "/run2/hps.json").max_txt_len)
    -- --batch-size leaves the validation batches at the config's val_batch_size; --val-batch-size sets them
    rc, text = pretrain {"--train-config", dir .. "/pretrain.json", "--out", dir .. "/run2b", "--quiet", "--steps", "1",
      "--batch-size", "2"}
    assert.equal(0, rc, text)
    local h2 = json.read_file(dir .. "/run2b/hps.json")
    assert.same({2, 3}, {h2.batch_size, h2.val_batch_size})
    rc, text = pretrain {"--train-config", dir .. "/pretrain.json", "--out", dir .. "/run2c", "--quiet", "--steps", "1",
      "--val-batch-size", "5"}
    assert.equal(0, rc, text)
    assert.equal(5, json.read_file(dir .. "/run2c/hps.json").val_batch_size)
    -- the config's max_txt_len does not cut the subtitles (pretrain.py never passes it on)
    json.write_file(dir .. "/pretrain_txt7.json", released(dir, {max_txt_len = 7}))
    rc, text = pretrain {"--train-config", dir .. "/pretrain_txt7.json", "--out", dir .. "/run3", "--quiet",
      "--steps", "1", "--accum", "1"}
    assert.equal(0, rc, text)
    assert.equal(60, json.read_file(dir .. "/run3/hps.json").max_txt_len)
  end)

  it_db("examples/pretrain.lua takes pretrain.py's command line: --config FILE and its options over the config's",
    function()
    -- pretrain.py --config CONFIG --output_dir DIR --learning_rate X --gradient_accumulation_steps 1 ...
    local out = dir .. "/refcli"
    local rc, text = pretrain {"--config", dir .. "/pretrain.json", "--output_dir", out, "--quiet",
      "--learning_rate", "5e-4", "--gradient_accumulation_steps", "1", "--num_train_steps", "2",
      "--hard_negtiave_start_step", "-1", "--lw_neg_q", "3"}
    assert.equal(0, rc, text)
    local recs = json.read_lines(out .. "/log.jsonl")
    assert.equal(2, #recs) -- num_train_steps from the command line
    assert.equal(1, #recs[1].micro_losses)
    assert.equal(5e-4, recs[1].lr)
    local hps = json.read_file(out .. "/hps.json")
    assert.equal(dir .. "/pretrain.json", hps.train_config)
    assert.same({-1}, hps.reference_config.hard_negtiave_start_step)
    assert.equal(3.0, hps.reference_config.lw_neg_q)
    assert.is_nil(hps.reference_config.config)
    -- the config's output_dir is where --out defaults to
    json.write_file(dir .. "/pretrain_out.json", released(dir, {output_dir = dir .. "/from_config"}))
    rc, text = pretrain {"--train-config", dir .. "/pretrain_out.json", "--quiet", "--steps", "1"}
    assert.equal(0, rc, text)
    assert.is_true(io.open(dir .. "/from_config/ckpt/step_1.safetensors") ~= nil)
    -- options of the reference's config need that config; one setting said twice is refused
    rc, text = pretrain {"--fixture", helper.fixture("hero-smoke"), "--out", dir .. "/x", "--learning_rate", "1"}
    assert.equal(2, rc)
    assert.matches("%-%-learning_rate is an option of the reference's config: it goes with "
      .. "%-%-train%-config FILE", text)
    rc, text = pretrain {"--config", dir .. "/pretrain.json", "--out", dir .. "/y", "--output_dir", dir .. "/z"}
    assert.equal(2, rc)
    assert.matches("%-%-out and %-%-output_dir say the same: give one", text)
    rc, text = pretrain {"--config", dir .. "/pretrain.json", "--out", dir .. "/y", "--optim", "sgd"}
    assert.equal(2, rc)
    assert.matches("%-%-optim: invalid choice 'sgd' %(pretrain.py takes adam, adamax, adamw%)", text)
  end)

  it("is reachable as hero.train.pretrain_config, beside hero.train.pretrain_valid and .finetune", function()
    assert.equal(PC, hero.train.pretrain_config)
    assert.equal(require("hero.train.pretrain_valid"), hero.train.pretrain_valid)
    assert.equal(require("hero.train.finetune"), hero.train.finetune)
    assert.is_nil(hero.train.no_such_module)
  end)

  it_db("examples/pretrain.lua on databases without a config trains with the released TV recipe", function()
    local r = PC.released_tv() -- config/pretrain-tv-16gpu.json's values
    assert.same({2, 2, 1, 2}, {r.ratios.mlm, r.ratios["mfm-nce"], r.ratios.fom, r.ratios.vsm})
    assert.same({32, 0.8, 8.0, 8.0, 0.01, "hinge", 0.1, 20, 10, 20000, 0, true}, {r.train_batch_size,
      r.drop_svmr_prob, r.lw_neg_q, r.lw_neg_ctx, r.lw_st_ed, r.ranking_loss_type, r.margin, r.hard_pool_size[1],
      r.hard_neg_weights[1], r.hard_negtiave_start_step[1], r.train_span_start_step, r.use_all_neg})
    local out = dir .. "/recipe"
    local rc, text = pretrain {"--config", dir .. "/hero_pretrain.json", "--vfeat-db",
      fx .. "/video_db/tv/resnet_slowfast_1.5", "--sub-db", fx .. "/txt_db/tv_subtitles.db", "--max-clip-len", "12",
      "--batch-size", "3", "--accum", "1", "--steps", "2", "--total", "4", "--out", out, "--quiet"}
    assert.equal(0, rc, text)
    local hps = json.read_file(out .. "/hps.json")
    assert.same({2, 2, 1, 2}, {hps.ratios.mlm, hps.ratios["mfm-nce"], hps.ratios.fom, hps.ratios.vsm})
    assert.equal(3, hps.batch_size) -- the command line wins
    assert.equal(0, hps.bucket) -- random batches, as the reference
    assert.same(r, hps.vsm_recipe)
    local n = 0
    for _ in io.lines(out .. "/log.jsonl") do n = n + 1 end
    assert.equal(2, n)
    -- a second run there would mix its log and checkpoints with this one's
    local base = {"--config", dir .. "/hero_pretrain.json", "--vfeat-db", fx .. "/video_db/tv/resnet_slowfast_1.5",
      "--sub-db", fx .. "/txt_db/tv_subtitles.db", "--max-clip-len", "12", "--batch-size", "3", "--steps", "1",
      "--quiet"}
    local function with(...)
      local a = {table.unpack(base)}
      for _, x in ipairs {...} do a[#a + 1] = x end
      return a
    end
    rc, text = pretrain(with("--out", out))
    assert.equal(2, rc)
    assert.matches("already holds a run %(checkpoints up to step 2%): pass %-%-resume", text)
    n = 0
    for _ in io.lines(out .. "/log.jsonl") do n = n + 1 end
    assert.equal(2, n) -- the first run's log is as it was
    -- resumed with other settings: refused, naming them (the reference's TrainingRestorer asserts)
    local first = {"--config", dir .. "/hero_pretrain.json", "--vfeat-db", fx .. "/video_db/tv/resnet_slowfast_1.5",
      "--sub-db", fx .. "/txt_db/tv_subtitles.db", "--max-clip-len", "12", "--batch-size", "3", "--accum", "1",
      "--total", "4", "--out", out, "--quiet", "--resume", "--steps", "3"}
    local other = {table.unpack(first)}
    for _, x in ipairs {"--lr", "9e-4", "--accum", "2", "--amp", "bf16"} do other[#other + 1] = x end
    rc, text = pretrain(other)
    assert.equal(2, rc)
    assert.matches("started with other settings", text)
    assert.matches("lr: [%d.e-]+ then, 0.0009 now", text)
    assert.matches("accum: 1 then, 2 now", text)
    assert.matches('amp: %(absent%) then, "bf16" now', text) -- the f16 loss scalers, the numbers
    assert.equal(2, hero.train.Trainer.latest_step(out)) -- nothing trained
    -- the same settings (loader threads may differ) resume
    local same = {table.unpack(first)}
    for _, x in ipairs {"--workers", "1"} do same[#same + 1] = x end
    rc, text = pretrain(same)
    assert.equal(0, rc, text)
    assert.equal(3, hero.train.Trainer.latest_step(out))
    -- without ckpt/latest the newest complete checkpoint still counts: the run is neither started
    -- over (writing over its checkpoints) nor resumed unchecked
    local ckpt3 = hero.load(out .. "/ckpt/step_3.safetensors")
    os.remove(out .. "/ckpt/latest")
    assert.equal(3, hero.train.Trainer.latest_step(out))
    rc, text = pretrain(with("--out", out))
    assert.equal(2, rc)
    assert.matches("already holds a run %(checkpoints up to step 3%)", text)
    rc, text = pretrain(other)
    assert.equal(2, rc)
    assert.matches("started with other settings", text)
    -- nor resumed without the settings to check it against
    local hps_text = assert(io.open(out .. "/hps.json")):read("a")
    os.remove(out .. "/hps.json")
    rc, text = pretrain(same)
    assert.equal(2, rc)
    assert.matches("settings %(.*hps%.json%) are missing", text)
    local f = assert(io.open(out .. "/hps.json", "w"))
    f:write(hps_text)
    f:close()
    for k, t in pairs(hero.load(out .. "/ckpt/step_3.safetensors")) do
      assert.is_true(t:eq(ckpt3[k]):all():item(), k)
    end
    rc, text = pretrain(with("--out", dir .. "/r2", "--tasks", "mlm,mlm"))
    assert.equal(2, rc)
    assert.matches("'mlm' is listed twice", text)
    rc, text = pretrain(with("--out", dir .. "/r3", "--vfeat-dim", "7"))
    assert.equal(2, rc)
    assert.matches("%-%-vfeat%-dim 7, but the video database holds 24%-dimensional features", text)
    rc, text = pretrain(with("--out", dir .. "/r4", "--ratios", "1,,2,1,1"))
    assert.equal(2, rc)
    assert.matches("empty value", text)
    for _, name in ipairs {"accum", "threads", "batch-size"} do -- a usage error, not a traceback
      rc, text = pretrain(with("--out", dir .. "/r5", "--" .. name, "0"))
      assert.equal(2, rc)
      assert.matches("%-%-" .. name:gsub("%-", "%%-") .. " must be a positive integer, got '0'", text)
    end
  end)

  it_db("examples/pretrain.lua --train-config reads a target's feature shards as one dataset", function()
    -- two shards over the fixture's LMDB, each with half of the videos
    assert(os.execute(string.format('mkdir -p "%s/ht" && ln -sfn "$(realpath "%s/video_db/tv")" "%s/ht/s0" && '
      .. 'ln -sfn "$(realpath "%s/video_db/tv")" "%s/ht/s1"', dir, fx, dir, fx, dir)))
    local ids = json.keys(json.read_file(fx .. "/txt_db/tv_subtitles.db/vid2len.json"))
    table.sort(ids)
    local half = #ids // 2
    json.write_file(dir .. "/ids0.json", {table.unpack(ids, 1, half)})
    json.write_file(dir .. "/ids1.json", {table.unpack(ids, half + 1)})
    local c = released(dir, {num_train_steps = 2, valid_steps = 100, save_steps = 100})
    c.targets[1].vfeat_db, c.targets[1].vfeat_shards = dir .. "/ht", {"s0", "s1"}
    c.targets[1].splits[1].train_idx = {dir .. "/ids0.json", dir .. "/ids1.json"}
    json.write_file(dir .. "/sharded.json", c)
    for _, workers in ipairs {"0", "1"} do
      local out = dir .. "/sharded" .. workers
      local rc, text = pretrain {"--train-config", dir .. "/sharded.json", "--out", out, "--quiet",
        "--workers", workers}
      assert.equal(0, rc, text)
      local n = 0
      for _ in io.lines(out .. "/log.jsonl") do n = n + 1 end
      assert.equal(2, n)
    end
    -- the dataset itself: ids in shard order, each video read from its shard
    local parts = {}
    for k = 0, 1 do
      parts[k + 1] = hero.data.VideoSubDataset{video_db = dir .. "/ht/s" .. k .. "/resnet_slowfast_1.5",
        sub_db = fx .. "/txt_db/tv_subtitles.db", max_clip_len = 12,
        ids = json.read_file(dir .. "/ids" .. k .. ".json")}
    end
    local cat = hero.data.ConcatDataset {parts = parts}
    assert.same(ids, cat:ids())
    assert.equal(ids[1], cat:get(ids[1]).vid)
    assert.equal(ids[#ids], cat:get(ids[#ids]).vid)
    assert.is_nil((cat:get("nope")))
    assert.equal(parts[2]:length(ids[#ids]), cat:length(ids[#ids]))
    assert.same(parts[1]:special_ids(), cat:special_ids())
    helper.assert_error_contains(function() hero.data.ConcatDataset {parts = {}} end, "non-empty")
    helper.assert_error_contains(function() hero.data.ConcatDataset {parts = {1}} end, "parts[1]")
    cat:close()
  end)

  it("examples/pretrain.lua --train-config refuses what the config already says, and bad configs", function()
    local rc, text = pretrain {"--train-config", dir .. "/pretrain.json", "--out", dir .. "/x", "--tasks", "mlm"}
    assert.equal(2, rc)
    assert.matches("%-%-tasks and %-%-train%-config do not go together", text)
    json.write_file(dir .. "/bad.json", released(dir, {checkpoint = dir .. "/missing.pt"}))
    rc, text = pretrain {"--train-config", dir .. "/bad.json", "--out", dir .. "/x"}
    assert.equal(2, rc)
    assert.matches("checkpoint '[^']*missing.pt' does not exist", text)
    json.write_file(dir .. "/bad.json", released(dir, {learning_rate = json.null}))
    rc, text = pretrain {"--train-config", dir .. "/bad.json", "--out", dir .. "/x"}
    assert.equal(2, rc)
    assert.matches("lacks 'learning_rate'", text)
    json.write_file(dir .. "/bad.json", released(dir, {img_db = dir}))
    rc, text = pretrain {"--train-config", dir .. "/bad.json", "--out", dir .. "/x"}
    assert.equal(2, rc)
    assert.matches("no video feature LMDB", text)
  end)
end)
