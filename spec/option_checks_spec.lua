--- The option tables of the models, their evaluation and decoding, checkpoints, loss scaling,
-- gradcheck and printing: a misspelt key or a value of the wrong kind is an error naming it, where
-- it used to leave a default in place or give a NaN result.
local hero = require "hero"
local helper = require "spec_helper"
local fx = helper.load_fixture("hero_smoke_batches.lua")
local cfg = fx.config

local load, batch = helper.smoke, helper.smoke_batch
local base = {vfeat_dim = cfg.constants.vfeat_dim, max_frm_seq_len = cfg.constants.max_frm_seq_len}
local function with(extra)
  local o = {}
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(extra) do o[k] = v end
  return o
end
local errs = helper.assert_error_contains

describe("model options", function()
  it("constructors refuse unknown options and values that would train otherwise", function()
    local P = hero.models.HeroForPretraining
    local pc = cfg.model_config.pretrain
    -- each of these built a model: a default kept (dropout, lw_st_edd, margn), hinge for "LSE", a NaN loss
    errs(function() P(pc, with {dropout = 0}) end, "HeroForPretraining: unknown option 'dropout'")
    errs(function() P(pc, with {margn = 0.7}) end, "unknown option 'margn'")
    errs(function() P(pc, with {ranking_loss_type = "LSE"}) end, "option ranking_loss_type must be one of hinge, lse")
    errs(function() P(pc, with {margin = 0 / 0}) end, "option margin must be a finite number")
    errs(function() P(pc, with {nce_temp = 0}) end, "option nce_temp must be a finite number > 0, got 0")
    errs(function() P(pc, with {drop_svmr_prob = 2}) end, "option drop_svmr_prob must be a probability in [0, 1]")
    errs(function() P(pc, with {use_all_neg = "false"}) end, "option use_all_neg must be a boolean")
    errs(function() P(pc, with {hard_negative = {pool_sise = 1, weight = 10}}) end,
      "hard_negative: unknown option 'pool_sise'")
    errs(function() hero.models.HeroForVcmr(cfg.model_config.finetune, with {lw_st_edd = 0.5}) end,
      "HeroForVcmr: unknown option 'lw_st_edd'")
    errs(function() hero.models.HeroForVideoQA(cfg.model_config.finetune, with {lw_st_edd = 0.5}) end,
      "HeroForVideoQA: unknown option 'lw_st_edd'")
    errs(function() hero.models.HeroForViolin(cfg.model_config.finetune, with {x = 1}) end,
      "HeroForViolin: unknown option 'x'")
    errs(function() hero.models.HeroForTvc(cfg.model_config.tvc, with {lsr = -0.1}) end,
      "HeroForTvc: option lsr must be a probability in [0, 1), got -0.1")
    errs(function() hero.models.HeroForTvc(cfg.model_config.tvc, with {lrs = 0}) end, "unknown option 'lrs'")
    errs(function() P(pc, 5) end, "HeroForPretraining: options must be a table, got number")
    local m = hero.models.HeroForVideoQA(cfg.model_config.finetune, base)
    errs(function() m:set_dropout(2) end, "set_dropout: p must be a probability in [0, 1), got 2")
  end)

  it("forwards, decoding and evaluation refuse options they would ignore or misread", function()
    local pre = hero.models.HeroForPretraining(cfg.model_config.pretrain,
      with {vocab_pad = cfg.constants.vocab_pad_pretraining})
    pre:load_state_dict(load("weights"), {strict = false})
    errs(function() pre:forward(batch("batch_vsm"), "vsm", {draw = 5}) end, "option draw must be a function")
    errs(function() pre:forward(batch("batch_vsm"), "vsm", {hard_negative = {pool_size = 0, weight = 1}}) end,
      "hard_negative: option pool_size must be an integer >= 1, got 0")
    local qa = hero.models.HeroForVideoQA(cfg.model_config.finetune, base)
    local b = batch("videoqa_batch")
    errs(function() qa:forward(b, "tvqa", {num_questions = 1.5}) end, "option num_questions must be an integer >= 1")
    local no_ts = batch("videoqa_batch")
    no_ts.ts_targets = nil
    errs(function() qa:forward(no_ts, "tvqa") end, "the batch has targets but no ts_targets")
    -- without targets, rows not five per question were read as fewer questions with more answers
    local four = batch("videoqa_batch")
    four.targets, four.ts_targets = nil, nil
    for _, k in ipairs {"qa_input_ids", "qa_attn_masks", "c_v_feats", "c_attn_masks"} do
      four[k] = four[k]:narrow(1, 1, 8):contiguous()
    end
    errs(function() qa:predict(four) end, "predict: 8 answer rows are not five per question; give batch.num_questions")

    local tvc = hero.models.HeroForTvc(cfg.model_config.tvc, base)
    local tb = batch("tvc_batch")
    errs(function() tvc:greedy_decode(tb, {max_steps = 2}) end, "HeroForTvc:greedy_decode: unknown option 'max_steps'")
    errs(function() tvc:beam_search(tb, {length_penalty = 0 / 0}) end, "option length_penalty must be a finite number")
    errs(function() tvc:beam_search(tb, {n_best = 0}) end, "option n_best must be an integer >= 1, got 0")
    errs(function() tvc:beam_search(tb, {beam_size = 1 << 40}) end, "beam_search: beam_size 1099511627776 exceeds")
    errs(function() tvc:greedy_decode(tb, {max_step = 1000}) end, "greedy_decode: max_step 1000 exceeds the decoder's")

    local R = hero.eval.retrieval
    errs(function() R.evaluate({}, nil, {nms_thresh = -1}) end, "retrieval.evaluate: unknown option 'nms_thresh'")
    errs(function() R.evaluate({}, nil, {q2c_alpha = 0 / 0}) end, "option q2c_alpha must be a finite number")
    errs(function() R.evaluate({}, nil, {tasks = {"vr"}}) end, "option tasks: 'vr' is not one of VCMR, SVMR, VR")
    errs(function() R.evaluate({}, nil, {tasks = {}}) end, "option tasks must list VCMR, SVMR or VR")
    errs(function() R.evaluate({}, nil, {max_vcmr_video = 0}) end, "option max_vcmr_video must be an integer >= 1")
    local vcmr = hero.models.HeroForVcmr(cfg.model_config.finetune, base)
    errs(function() vcmr:evaluate_full(nil, {}, nil) end, "evaluate_full: corpus must be")
    errs(function() vcmr:encode_corpus({batch("vcmr_eval_video_batch0")}, {max_clip_lenn = 5}) end,
      "encode_corpus: unknown option 'max_clip_lenn'")
  end)

  it("checkpoints refuse a misspelt option, a path that is no string and names given twice", function()
    local m = hero.models.HeroForVideoQA(cfg.model_config.finetune, base)
    errs(function() m:load_checkpoint(load("weights"), {stric = true}) end, "load_checkpoint: unknown option 'stric'")
    errs(function() m:save_checkpoint(5) end, "save_checkpoint: expected a file path, got number")
    local sd = load("weights")
    local name = "v_encoder.c_encoder.embeddings.LayerNorm.weight"
    assert.is_not_nil(sd[name])
    -- which of the two loaded depended on the order of a Lua table
    sd["v_encoder.c_encoder.embeddings.LayerNorm.gamma"] = sd[name]:clone()
    errs(function() m:load_checkpoint(sd) end, "both name '" .. name .. "'")
  end)
end)

describe("utility options", function()
  it("loss scaling, gradcheck, printing and device names", function()
    errs(function() hero.amp.GradScaler {init_scal = 128} end, "GradScaler: unknown option 'init_scal'")
    local s = hero.amp.GradScaler {init_scale = 8}
    errs(function() s:load_state_dict {scale = 2, growth_factor = 0.5} end, "growth_factor must be > 1")
    assert.equal(8, s:get_scale()) -- nothing changed
    errs(function() s:unscale_({5}) end, "GradScaler: parameter 1 is a number, not a tensor")
    -- a step that raises has not stepped: it can be retried, and update() does not count it
    local p = hero.ones(2):requires_grad_()
    p.grad = hero.full({2}, 8)
    local opt = hero.optim.AdamW({p}, {lr = 0.1})
    errs(function() s:step(opt, {grad_scal = 1}) end, "unknown option 'grad_scal'")
    assert.is_true(s:step(opt))

    local x = hero.randn({3}, {dtype = "f64"}):requires_grad_()
    local Wrong = hero.autograd.Function {
      forward = function(_, t) return t * 2 end,
      backward = function(_, g) return g * 20 end,
    }
    local function f(t) return Wrong(t) end
    -- eps 0 or a NaN tolerance passed this wrong gradient
    errs(function() hero.testing.gradcheck(f, {x}, {eps = 0}) end, "gradcheck: option eps must be a finite number > 0")
    errs(function() hero.testing.gradcheck(f, {x}, {atol = 0 / 0}) end, "option atol must be")
    errs(function() hero.testing.gradcheck(f, {x}, {epsilon = 1}) end, "unknown option 'epsilon'")
    errs(function() hero.testing.gradcheck(f, {x}) end, "gradcheck: input 1 element 1: analytic")
    errs(function() hero.testing.gradcheck(f, {x:detach()}) end, "no input requires grad")

    local tp = require "hero.tensor_print"
    tp.options.edgeitems = nil
    local ok, err = pcall(tostring, hero.ones(2))
    tp.options.edgeitems = 3
    assert.is_false(ok)
    assert.truthy(tostring(err):find("tensor_print.options.edgeitems must be an integer >= 1, got nil", 1, true))
    -- a huge edgeitems shows everything (2 * edgeitems overflowed and summarised every dimension)
    tp.options.edgeitems = math.maxinteger
    local text = tostring(hero.arange(2000))
    tp.options.edgeitems = 3
    assert.truthy(text:find("1999", 1, true))
    assert.falsy(text:find("...", 1, true))
    local saved = tp.options
    tp.options = nil
    ok, err = pcall(tostring, hero.ones(2))
    tp.options = saved
    assert.is_false(ok)
    assert.truthy(tostring(err):find("tensor_print.options must be a table", 1, true))
    errs(function() hero.cuda.device(1.5) end, "cuda.device: the index must be an integer >= 0, got 1.5")
    assert.equal("cuda:1", hero.cuda.device(1))
    errs(function() hero.parity.run(helper.fixture("hero-smoke"), {devce = "cuda:0"}) end,
      "parity.run: unknown option 'devce'")
  end)
end)

describe("common mistakes of a torch user", function()
  it("refuses keyword tables where a list of dims is read (they ran over everything)", function()
    local t = hero.arange(6):view(2, 3)
    helper.assert_error_contains(function() return t:sum {dim = 2} end, "sum:", "key 'dim'")
    helper.assert_error_contains(function() return t:double():mean {dim = 1} end, "mean:", "key 'dim'")
    helper.assert_error_contains(function() return t:flip {dims = {1}} end, "flip:", "key 'dims'")
    assert.same({3, 12}, t:sum {2}:totable())
  end)

  it("names the method and the fix for a '.' written for ':'", function()
    local lin = hero.nn.Linear(4, 2)
    helper.assert_error_contains(function() return lin.forward(hero.ones(1, 4)) end,
      "Linear.forward: called with '.'", "model:forward")
    helper.assert_error_contains(function() return lin.parameters() end, "Module.parameters: called with '.'")
    local opt = hero.optim.AdamW(lin:named_parameters(), {lr = 1})
    helper.assert_error_contains(function() opt.step() end, "optimizer.step: called with '.'")
    local scaler = hero.amp.GradScaler()
    -- it did nothing at all
    helper.assert_error_contains(function() scaler.unscale_(opt) end, "GradScaler.unscale_: called with '.'")
    local meta = hero.train.MetaLoader {tasks = {a = hero.train.CyclingLoader {{1}}}}
    helper.assert_error_contains(function() meta.next() end, "MetaLoader.next: called with '.'")
    -- a table standing for a model (its __index the model) is still one
    local wrapper = setmetatable({}, {__index = lin})
    assert.equal(2, #wrapper:named_parameters())
    assert.same({1, 2}, wrapper:forward(hero.ones(1, 4)):size())
    assert.equal(lin, lin:eval()) -- torch's name for evaluate()
    assert.is_false(lin.training)
  end)

  it("prints the training objects by what they hold", function()
    local meta = hero.train.MetaLoader {tasks = {a = hero.train.CyclingLoader {{1}, {2}}}}
    assert.equal("hero.train.MetaLoader(tasks a, accum 1, 0 micro-batches drawn)", tostring(meta))
    assert.equal("hero.train.CyclingLoader(2 batches, next 1)", tostring(hero.train.CyclingLoader {{1}, {2}}))
    local tok = hero.text.Tokenizer.from_files(helper.fixture("tokenizer/encoder.json"),
      helper.fixture("tokenizer/vocab.bpe"))
    tok:free()
    assert.truthy(tostring(tok):find("freed", 1, true))
  end)
end)
