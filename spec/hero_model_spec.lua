local hero = require "hero"
local helper = require "spec_helper"
local fx = helper.load_fixture("hero_smoke_batches.lua")
local cfg = fx.config

local function load(name) return hero.load(helper.fixture("hero-smoke/" .. name .. ".safetensors")) end

--- The collated batch of a task: tensors from safetensors plus the JSON side (num_subs, ...).
local function batch(name)
  local b = load(name)
  for k, v in pairs(fx[name] or {}) do b[k] = v end
  return b
end

local function model()
  local m = hero.models.HeroForPretraining(cfg.model_config.pretrain, {
    vfeat_dim = cfg.constants.vfeat_dim, max_frm_seq_len = cfg.constants.max_frm_seq_len,
    vocab_pad = cfg.constants.vocab_pad_pretraining, lw_st_ed = 0.01, drop_svmr_prob = 0,
  })
  local w = load("weights")
  local report = m:load_state_dict(w, {strict = false})
  assert.same({}, report.missing)
  assert.same({}, report.unexpected)
  -- fixtures were made with every dropout p = 0, in training mode
  for _, entry in ipairs(m:named_modules()) do
    if entry[2].__name == "Dropout" then entry[2].p = 0 end
    for _, key in ipairs {"attention_dropout"} do
      if entry[2][key] then entry[2][key] = 0 end
    end
  end
  return m
end

local function check_outputs(out, expected, names)
  for _, name in ipairs(names) do
    assert.is_not_nil(out[name], "missing output " .. name)
    assert.parity(out[name], expected[name], "activations")
  end
end

describe("HERO pre-training model against the reference", function()
  local m = model():keep_activations()

  it("has exactly the reference's state_dict keys and shapes", function()
    local w = load("weights")
    local sd = m:state_dict()
    local missing = {}
    for k, t in pairs(w) do
      if not sd[k] then missing[#missing + 1] = k
      else assert.same(t:size(), sd[k]:size(), k) end
    end
    assert.same({}, missing)
  end)

  it("MLM: embeddings, cross-modal output, logits and loss", function()
    local out = m:forward(batch("batch_mlm"), "mlm")
    check_outputs(out, load("outputs_mlm"), {"txt_emb", "img_emb", "f_emb", "f_out", "mlm_logits",
                                             "loss_per_token", "loss"})
  end)

  it("MFM-NCE and MFFR: masked frames, fusion, temporal transformer, NCE logits", function()
    local names = {"txt_emb", "img_emb", "f_emb", "f_out", "c_v_feats_in", "frame_transform_out",
                   "matched_v_feats", "c_in", "c_emb", "c_out", "pred_feat", "loss_per_frame", "loss"}
    local out = m:forward(batch("batch_mfm-nce"), "mfm-nce")
    check_outputs(out, load("outputs_mfm-nce"), names)
    check_outputs(out, load("outputs_mfm-nce"), {"neg_pred_feat", "nce_logits"})
    out = m:forward(batch("batch_mffr"), "mffr")
    check_outputs(out, load("outputs_mffr"), names)
  end)

  it("FOM: shuffled temporal input and 100-way logits", function()
    local out = m:forward(batch("batch_fom"), "fom")
    check_outputs(out, load("outputs_fom"), {"f_out", "frame_transform_out", "matched_v_feats", "c_in",
                                             "c_in_shuffled", "c_emb", "c_out", "fom_logits", "loss"})
  end)

  it("VSM: query encoder, local and global scores, ranking losses and their variants", function()
    local b = batch("batch_vsm")
    local expected = load("outputs_vsm")
    local out = m:forward(b, "vsm")
    check_outputs(out, expected, {"f_out", "c_out", "q_f_out", "q_proj", "q_pos_emb", "q_attn", "q_mod",
                                  "q2video_scores", "st_logits_all", "ed_logits_all", "st_logits", "ed_logits",
                                  "loss_st_ed", "loss_neg_ctx", "loss_neg_q", "loss"})
    local hard = m:forward(b, "vsm", {hard_negative = {pool_size = 1, weight = 10}})
    assert.parity(hard.loss, expected.hardneg_loss, "activations")
    m.opts.ranking_loss_type = "lse"
    local lse = m:forward(b, "vsm")
    m.opts.ranking_loss_type = "hinge"
    assert.parity(lse.loss_neg_ctx, expected.lse_loss_neg_ctx, "activations")
    assert.parity(lse.loss, expected.lse_loss, "activations")
  end)

  it("VSM start/end predictors of another kernel size: padding kernel // 2, as the reference's Conv1d", function()
    local b = batch("batch_vsm")
    local opts = {vfeat_dim = cfg.constants.vfeat_dim, max_frm_seq_len = cfg.constants.max_frm_seq_len,
      vocab_pad = cfg.constants.vocab_pad_pretraining, lw_st_ed = 0.01, drop_svmr_prob = 0}
    local m3 = hero.models.HeroForPretraining(cfg.model_config.pretrain, setmetatable({conv_kernel_size = 3},
      {__index = opts}))
    assert.same({1, 1, 3}, m3.video_st_predictor.weight:size())
    local sd = m:state_dict()
    sd["video_st_predictor.weight"], sd["video_ed_predictor.weight"] = nil, nil
    m3:load_state_dict(sd, {strict = false}) -- every weight but the two predictors'
    local out = hero.no_grad(function() return m3:forward(b, "vsm") end)
    -- the frame scores conv1d'd with the 3-wide kernel, one per frame
    assert.equal(out.st_logits_all:size(3), b.c_attn_masks:size(2))
    for _, bad in ipairs {{conv_kernel_size = 4}, {conv_stride = 2}} do
      helper.assert_error_contains(function()
        hero.models.HeroForPretraining(cfg.model_config.pretrain, setmetatable(bad, {__index = opts}))
      end, next(bad))
    end
  end)
end)

describe("HERO pre-training model computing only what the losses read", function()
  local m = model()
  local read = {
    mlm = {"mlm_logits", "loss_per_token", "loss"},
    ["mfm-nce"] = {"c_out", "pred_feat", "neg_pred_feat", "nce_logits", "loss_per_frame", "loss"},
    mffr = {"matched_v_feats", "c_in", "pred_feat", "loss_per_frame", "loss"},
    fom = {"matched_v_feats", "c_out", "fom_logits", "loss"},
    vsm = {"matched_v_feats", "c_out", "q2video_scores", "loss"},
  }
  for _, task in ipairs {"mlm", "mfm-nce", "mffr", "fom", "vsm"} do
    it("gives the reference's outputs for " .. task .. " without the full cross-modal output", function()
      local out = m:forward(batch("batch_" .. task), task)
      assert.is_nil(out.f_out)
      check_outputs(out, load("outputs_" .. task), read[task])
    end)
  end

  it("runs the last cross-modal layer on the rows asked for only, equal to those of the full output", function()
    local b = batch("batch_mlm")
    local encoder = m.v_encoder.f_encoder.encoder
    local f_emb = m.v_encoder.f_encoder:embed(b)
    local full = encoder:forward(f_emb, b.attn_masks)
    local N, L, H = full:size(1), full:size(2), full:size(3)
    local rows = hero.tensor({0, L + 2, N * L - 1, 3}, {dtype = "i64"})
    local some = encoder:forward(f_emb, b.attn_masks, {rows = rows})
    assert.same({4, H}, some:size())
    assert.parity(some, full:reshape(N * L, H):index_select(1, rows), "activations")
    assert.same({0, H}, encoder:forward(f_emb, b.attn_masks, {rows = hero.tensor({}, {dtype = "i64"})}):size())
  end)

  it("reads the rows of its loss masks from the batch when a device batch carries them", function()
    -- Trainer.batch_to attaches them on a GPU (counting a device mask would make the host wait)
    local mask_rows = require "hero.models.mask_rows"
    for _, task in ipairs {"mlm", "mfm-nce", "mffr"} do
      local b = batch("batch_" .. task)
      local want = m:forward(b, task).loss:item()
      local rows = mask_rows.precompute(b, "cpu")
      for key, complement in pairs(mask_rows.MASKS) do
        if b[key] then
          assert.same(mask_rows.flat_index(b[key]):totable(), rows[key]:totable(), key)
          if complement then
            assert.same(mask_rows.flat_index(b[key]:logical_not()):totable(), rows["not " .. key]:totable(), key)
          end
        end
      end
      b._mask_rows = rows
      assert.equal(want, m:forward(b, task).loss:item(), task)
      -- and they are what the model uses: the rows in another order pair tokens with other labels
      if task == "mlm" then
        b._mask_rows = {txt_mask_tgt = rows.txt_mask_tgt:flip(1)}
        assert.are_not.equal(want, m:forward(b, task).loss:item())
        -- the last layer's query layout is worked out from the host copy the batch carries
        local _, host = mask_rows.precompute(b, "cpu")
        b._mask_rows = rows
        b._mask_rows_host = {txt_mask_tgt = host.txt_mask_tgt:flip(1)}
        assert.are_not.equal(want, m:forward(b, task).loss:item())
        b._mask_rows_host = host
        assert.equal(want, m:forward(b, task).loss:item())
        b._mask_rows_host = nil
      end
    end
    assert.is_nil(hero.train.Trainer.batch_to(batch("batch_mlm"), "cpu")._mask_rows) -- the CPU batch as it is
  end)

  it("refuses a batch without a field its task reads, by name", function()
    -- without attn_masks the MLM forward ran unmasked, silently
    for task, fields in pairs(hero.models.HeroForPretraining.required_fields) do
      local b = batch("batch_" .. task)
      for _, f in ipairs(fields) do assert.is_not_nil(b[f], task .. " fixture lacks " .. f) end
      b[fields[1]] = nil
      helper.assert_error_contains(function() m:forward(b, task) end, "HeroForPretraining", "the " .. task
        .. " batch has no field '" .. fields[1] .. "'")
    end
    local b = batch("batch_mlm")
    b.attn_masks = nil
    helper.assert_error_contains(function() m:forward(b, "mlm_tv_all") end, "no field 'attn_masks'")
    helper.assert_error_contains(function() m:forward(nil, "mlm") end, "the batch must be a table")
    -- the downstream models' path through the hierarchy checks the same fields
    local repr = batch("batch_vsm")
    repr.f_attn_masks = nil
    helper.assert_error_contains(function() m.v_encoder:forward_repr(repr) end, "HierarchicalVlModel",
      "forward_repr: the batch has no field 'f_attn_masks'")
    assert.is_true(hero.train.Trainer.required_fields == hero.models.HeroForPretraining.required_fields)
  end)
end)

describe("HERO pre-training gradients against the reference", function()
  local m = model()
  local params = m:named_parameters()

  for _, task in ipairs {"mlm", "mfm-nce", "mffr", "fom", "vsm"} do
    it("matches d loss / d parameter for " .. task, function()
      for _, p in ipairs(params) do p[2].grad = nil end
      local out = m:forward(batch("batch_" .. task), task)
      out.loss:backward()
      local file = "grads_" .. task .. ".safetensors"
      local expected = load("grads_" .. task)
      local info = cfg.parity.per_file[file]
      local near_zero = {}
      for _, n in ipairs(info.near_zero_tensors) do near_zero[n] = true end
      local without = {}
      for _, n in ipairs(cfg.parity.params_without_grad[file]) do without[n] = true end
      local checked = 0
      for _, p in ipairs(params) do
        local name, t = p[1], p[2]
        if expected[name] then
          assert.is_not_nil(t.grad, name .. " has no gradient")
          local ok, msg = helper.parity(t.grad, expected[name], "gradients", near_zero[name] and info.file_scale or nil)
          assert(ok, name .. ": " .. msg)
          checked = checked + 1
        elseif without[name] then
          assert.is_nil(t.grad, name .. " should get no gradient")
        end
      end
      assert.is_true(checked > 0)
    end)
  end
end)

describe("HERO pre-training optimizer updates against the reference", function()
  it("reproduces three AdamW updates (accumulation, warmup-linear, clipping) and the trace", function()
    local m = model()
    local oc = cfg.optimizer
    local params = m:named_parameters()
    local opt = hero.optim.AdamW(params, {lr = oc.learning_rate, betas = oc.betas, eps = oc.eps,
      weight_decay = oc.weight_decay, no_decay = {"bias", "LayerNorm.bias", "LayerNorm.weight"}})
    local trace = load("optim_trace")
    for step, task in ipairs(oc.tasks_per_update) do
      local losses = {}
      for mb, name in ipairs {"batch_" .. task, "optim_batch_" .. task .. "_mb1"} do
        local out = m:forward(batch(name), task)
        out.loss:backward()
        losses[mb] = out.loss
      end
      opt:set_lr(hero.optim.warmup_linear(oc.learning_rate, step, oc.warmup_steps, oc.num_train_steps))
      local norm = hero.optim.clip_grad_norm(params, oc.grad_norm)
      opt:step()
      opt:zero_grad()
      local prefix = "step" .. step .. "."
      assert.parity(hero.tensor(norm), trace[prefix .. "grad_norm_before_clip"], "activations")
      assert.parity(losses[1], trace[prefix .. "micro_loss0"], "activations")
      assert.parity(losses[2], trace[prefix .. "micro_loss1"], "activations")
    end
    local expected = load("params_after_step3")
    local initial = load("weights")
    local compared = 0
    for _, p in ipairs(params) do
      local name, t = p[1], p[2]
      -- parameters that never get a gradient (poolers) are not in the file: they must not move
      local ref = expected[name] or initial[name]
      local ok, msg = helper.parity(t:detach(), ref, "params")
      assert(ok, name .. ": " .. msg)
      if expected[name] then compared = compared + 1 end
    end
    assert.is_true(compared >= 100)
  end)
end)

describe("HERO checkpoints and configs", function()
  it("reads the reference's JSON model config with its defaults", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('{"f_config": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, ' ..
      '"intermediate_size": 128, "vocab_size": 997, "max_position_embeddings": 40}, ' ..
      '"c_config": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, ' ..
      '"intermediate_size": 128, "max_position_embeddings": 16}}')
    f:close()
    local c = hero.config.load(path)
    os.remove(path)
    assert.equal(1e-12, c.f_config.layer_norm_eps)
    assert.equal(0.1, c.c_config.hidden_dropout_prob)
    assert.equal(64, c.q_config.hidden_size)
    -- what the layers cannot honour is refused by name
    local function bad(section, msg)
      helper.assert_error_contains(function() hero.config.model({f_config = section}) end, msg)
    end
    bad({hidden_act = "relu"}, "f_config.hidden_act must be \"gelu\"")
    bad({hidden_size = "768"}, "f_config.hidden_size must be a positive integer, got 768")
    bad({num_hidden_layers = -1}, "f_config.num_hidden_layers must be a non-negative integer")
    bad({hidden_dropout_prob = 1}, "f_config.hidden_dropout_prob must be a probability in [0, 1)")
    bad({layer_norm_eps = 0}, "f_config.layer_norm_eps must be a positive number")
    bad({hidden_size = 64, num_attention_heads = 5}, "not a multiple of num_attention_heads 5")
    bad({vocab_size = 0}, "f_config.vocab_size must be a positive integer (or -1")
    bad({initializer_range = -0.02}, "f_config.initializer_range must be a number >= 0")
    -- sections of other widths failed only in the forward pass, deep inside
    helper.assert_error_contains(function()
      hero.config.model({f_config = {hidden_size = 64, num_attention_heads = 4},
                         c_config = {hidden_size = 32, num_attention_heads = 4}})
    end, "c_config.hidden_size 32 differs from f_config.hidden_size 64")
  end)

  it("names the position table and its setting when a batch has more positions than it", function()
    local function forward_with(model_cfg, max_frm)
      return function()
        local m = hero.models.HeroForPretraining(model_cfg, {vfeat_dim = cfg.constants.vfeat_dim,
          max_frm_seq_len = max_frm, vocab_pad = cfg.constants.vocab_pad_pretraining})
        m:forward(batch("batch_mlm"), "mlm")
      end
    end
    local small_text = hero.json.decode(hero.json.encode(cfg.model_config.pretrain))
    small_text.f_config.max_position_embeddings = 2
    helper.assert_error_contains(forward_with(small_text, cfg.constants.max_frm_seq_len),
      "SubEmbeddings (", "position_embeddings has 2 rows (the config's max_position_embeddings)",
      "out of range for 2 rows")
    helper.assert_error_contains(forward_with(cfg.model_config.pretrain, 1),
      "ImageEmbeddings (", "position_embeddings has 1 rows (max_frm_seq_len")
  end)

  it("initialises as the reference: init_weights' N(0, 0.02) in the encoders, PyTorch's defaults in the "
    .. "VSM heads", function()
    hero.manual_seed(11)
    local m = hero.models.HeroForPretraining(cfg.model_config.pretrain, {vfeat_dim = cfg.constants.vfeat_dim,
      max_frm_seq_len = cfg.constants.max_frm_seq_len, vocab_pad = cfg.constants.vocab_pad_pretraining})
    local sd = m:state_dict()
    local function std(k) return sd[k]:double():std():item() end
    -- RobertaPreTrainedModel.init_weights
    assert.near(0.02, std("v_encoder.c_encoder.embeddings.position_embeddings.weight"), 0.003)
    assert.near(0.02, std("v_encoder.f_encoder.embeddings.word_embeddings.weight"), 0.003)
    -- QueryFeatEmbeddings is a plain nn.Embedding created outside init_weights' reach: N(0, 1)
    local pos = "q_feat_attn.query_pos_embed.position_embeddings.weight"
    assert.near(1.0, std(pos), 0.1, pos)
    -- nn.Linear's default: U(+-1/sqrt(fan_in))
    local w = sd["q_feat_attn.modular_vector_mapping.weight"]
    assert.is_true(w:abs():max():item() <= 1 / math.sqrt(w:size(2)))
    -- initializer_range: f_config's for the hierarchical model, c_config's for the temporal
    -- transformer (HierarchicalVlModel.initialize re-initialises c_encoder with its own config)
    local other = hero.config.model(cfg.model_config.pretrain)
    other.f_config.initializer_range, other.c_config.initializer_range = 0.2, 0.5
    local sd2 = hero.models.HeroForPretraining(other, {vfeat_dim = cfg.constants.vfeat_dim,
      max_frm_seq_len = cfg.constants.max_frm_seq_len}):state_dict()
    local function std2(k) return sd2[k]:double():std():item() end
    assert.near(0.2, std2("v_encoder.f_encoder.encoder.layer.0.attention.self.query.weight"), 0.02)
    assert.near(0.2, std2("v_encoder.f_encoder.embeddings.word_embeddings.weight"), 0.02)
    assert.near(0.2, std2("v_encoder.frame_transform.net.1.weight"), 0.02)
    assert.near(0.5, std2("v_encoder.c_encoder.encoder.layer.0.attention.self.query.weight"), 0.05)
    assert.near(0.5, std2("v_encoder.c_encoder.embeddings.position_embeddings.weight"), 0.05)
    -- a raw section asking for another activation than the erf GELU the layers compute
    local relu = {f_config = helper.tiny_section {hidden_act = "relu"}, c_config = helper.tiny_section()}
    helper.assert_error_contains(function() hero.models.HeroForPretraining(relu, {vfeat_dim = 8}) end,
      "cfg.f_config.hidden_act is relu")
  end)

  it("starts pre-training from RoBERTa (or from nothing) as the reference's load_partial_pretrained does",
    function()
    -- the fixture's weights come from that path with an empty checkpoint: compare the statistics
    -- that tell the inits apart, and the rows it sets exactly
    local ref = load("weights")
    local f = "v_encoder.f_encoder."
    local function build()
      hero.manual_seed(12)
      return hero.models.HeroForPretraining(cfg.model_config.pretrain, {vfeat_dim = cfg.constants.vfeat_dim,
        max_frm_seq_len = cfg.constants.max_frm_seq_len, vocab_pad = cfg.constants.vocab_pad_pretraining})
    end
    local m = build()
    local report = hero.models.checkpoint.load_partial_pretrained(m, nil)
    assert.equal(0, #report.unexpected)
    local sd = m:state_dict()
    local H = cfg.model_config.pretrain.f_config.hidden_size
    local bound = 1 / math.sqrt(H)
    for _, k in ipairs {f .. "lm_head.dense.weight", f .. "lm_head.dense.bias"} do
      -- PyTorch's Linear default, U(+-1/sqrt(H)): std bound/sqrt(3), bias not zero
      local ours, theirs = sd[k]:double(), ref[k]:double()
      assert.is_true(ours:abs():max():item() <= bound, k)
      assert.is_true(theirs:abs():max():item() <= bound, k)
      local tol = k:match("weight$") and 0.1 or 0.35 -- 4096 and 64 draws
      assert.near(theirs:std():item(), ours:std():item(), tol * theirs:std():item(), k)
      assert.near(bound / math.sqrt(3), ours:std():item(), tol * bound, k)
    end
    local pad = cfg.constants.vocab_pad_pretraining
    assert.is_true(pad > 0)
    local word = sd[f .. "embeddings.word_embeddings.weight"]
    local V = word:size(1)
    for _, w in ipairs {word, ref[f .. "embeddings.word_embeddings.weight"]} do
      assert.equal(0, w:narrow(1, V - pad + 1, pad):abs():max():item())
      assert.near(0.02, w:narrow(1, 1, V - pad):double():std():item(), 0.003)
    end
    assert.equal(0, sd[f .. "lm_head.bias"]:abs():max():item())
    for _, w in ipairs {sd, ref} do
      local tt = w[f .. "embeddings.token_type_embeddings.weight"]
      assert.same(tt[1]:totable(), tt[2]:totable())
      assert.is_true(tt[1]:abs():max():item() > 0)
      assert.equal(0, w["v_encoder.mask_embedding.weight"][1]:abs():max():item())
    end
    -- a RoBERTa checkpoint's rows land over that init, its vocabulary padded with zeros
    local m2 = build()
    local rw = hero.randn(V - pad, H)
    hero.models.checkpoint.load_partial_pretrained(m2, {["roberta.embeddings.word_embeddings.weight"] = rw,
      ["roberta.embeddings.token_type_embeddings.weight"] = hero.full({1, H}, 0.5)}, {skip_layers = false})
    local w2 = m2.v_encoder.f_encoder.embeddings.word_embeddings.weight
    assert.same(rw:totable(), w2:narrow(1, 1, V - pad):totable())
    assert.equal(0, w2:narrow(1, V - pad + 1, pad):abs():max():item())
    local types = m2.v_encoder.f_encoder.embeddings.token_type_embeddings.weight
    assert.same(hero.full({2, H}, 0.5):totable(), types:totable())
  end)

  it("saves and reloads the model with the same key names, and reports foreign keys", function()
    local m = model()
    local path = os.tmpname() .. ".safetensors"
    m:save_checkpoint(path)
    local w = hero.load(path)
    assert.is_not_nil(w["v_encoder.f_encoder.lm_head.decoder.weight"])
    w.extra_head = hero.zeros(3)
    w["v_encoder.f_encoder.pooler.dense.bias"] = nil
    local m2 = hero.models.HeroForPretraining(cfg.model_config.pretrain, {vfeat_dim = cfg.constants.vfeat_dim,
      max_frm_seq_len = cfg.constants.max_frm_seq_len})
    local report = m2:load_checkpoint(w)
    assert.same({"extra_head"}, report.unexpected)
    assert.same({"v_encoder.f_encoder.pooler.dense.bias"}, report.missing)
    helper.assert_error_contains(function() m2:load_checkpoint(w, {strict = true}) end, "extra_head")
    w.extra_head = nil
    w["video_query_linear.weight"] = hero.zeros(3, 3)
    helper.assert_error_contains(function() m2:load_checkpoint(w) end, "video_query_linear.weight", "3x3")
    os.remove(path)
  end)

  it("maps a RoBERTa state dict onto the cross-modal transformer as the reference does", function()
    local sd = {
      ["roberta.embeddings.word_embeddings.weight"] = hero.ones(5, 2),
      ["roberta.embeddings.token_type_embeddings.weight"] = hero.tensor {{7, 8}},
      ["roberta.encoder.layer.3.output.LayerNorm.gamma"] = hero.ones(2),
      ["roberta.encoder.layer.2.output.LayerNorm.gamma"] = hero.ones(2),
      ["lm_head.bias"] = hero.ones(5),
    }
    local t = hero.models.checkpoint.normalize(sd)
    local out = hero.models.checkpoint.from_roberta(t)
    assert.same({8, 2}, out["v_encoder.f_encoder.embeddings.word_embeddings.weight"]:size())
    local word = out["v_encoder.f_encoder.embeddings.word_embeddings.weight"]
    assert.same({{1, 1}, {0, 0}}, word:narrow(1, 5, 2):totable())
    assert.same({{7, 8}, {7, 8}}, out["v_encoder.f_encoder.embeddings.token_type_embeddings.weight"]:totable())
    assert.is_not_nil(out["v_encoder.f_encoder.encoder.layer.1.output.LayerNorm.weight"]) -- RoBERTa layer 3
    assert.is_nil(out["v_encoder.f_encoder.encoder.layer.1.output.LayerNorm.gamma"])
    local n = 0
    for _ in pairs(out) do n = n + 1 end
    assert.equal(3, n) -- layer 2 dropped, top-level lm_head not under roberta. ignored
  end)
end)

describe("the reference's released checkpoint format", function()
  it("loads model_fp16.pt and its legacy twin into the model (fp16 upcast, vocab_padded set aside)", function()
    for _, name in ipairs {"model_fp16.pt", "model_fp16_legacy.pt"} do
      local m = hero.models.HeroForPretraining(cfg.model_config.pretrain, {vfeat_dim = cfg.constants.vfeat_dim,
        max_frm_seq_len = cfg.constants.max_frm_seq_len})
      local report, extras = m:load_checkpoint(helper.fixture("hero-smoke/" .. name))
      assert.same({}, report.missing)
      assert.same({}, report.unexpected)
      assert.is_true(extras.vocab_padded)
      local w = load("weights")
      local word = "v_encoder.f_encoder.embeddings.word_embeddings.weight"
      assert.equal("f32", m:state_dict()[word]:dtype())
      assert.parity(m:state_dict()[word], w[word]:half():float(), "params")
    end
  end)
end)
