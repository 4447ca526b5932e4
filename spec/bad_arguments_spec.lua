--- Public Lua functions given a missing or wrong argument name it, instead of failing inside with
-- "attempt to index a nil value".
local hero = require "hero"
local helper = require "spec_helper"

describe("bad arguments", function()
  it("tensor constructors from a template", function()
    for _, name in ipairs {"zeros_like", "ones_like", "full_like", "empty_like"} do
      helper.assert_error_contains(function() hero[name](nil) end, name .. ": expected a hero.Tensor, got nil")
    end
    helper.assert_error_contains(function() hero.Tensor.new_zeros(nil) end, "new_zeros: expected a hero.Tensor")
    assert.same({2, 3}, hero.zeros_like(hero.ones(2, 3)):size())
  end)

  it("functional losses and masks, gradcheck", function()
    local F = hero.nn.functional
    helper.assert_error_contains(function() F.hinge_loss(nil, hero.zeros(2)) end,
      "hinge_loss: pos must be a hero.Tensor")
    helper.assert_error_contains(function() F.margin_ranking_loss(hero.zeros(2), "x", 1) end,
      "margin_ranking_loss: x2 must be a hero.Tensor, got string")
    helper.assert_error_contains(function() F.mask_logits(hero.zeros(2), nil) end, "mask_logits: m must be")
    helper.assert_error_contains(function() hero.testing.gradcheck(nil, {}) end, "gradcheck: argument #1")
    helper.assert_error_contains(function() hero.testing.gradcheck(hero.exp, nil) end, "gradcheck: argument #2")
    helper.assert_error_contains(function() hero.amp.GradScaler(1) end, "GradScaler: opts must be a table")
  end)

  it("writers, parity runs and preprocessing", function()
    helper.assert_error_contains(function() hero.tensorboard.Writer(nil) end,
      "tensorboard.Writer: expected a directory")
    helper.assert_error_contains(function() hero.parity.run(nil) end, "parity.run: expected a fixture directory")
    local prepro = hero.data.prepro
    helper.assert_error_contains(function() prepro.subtitle_db(nil) end, "subtitle_db: expected a table of options")
    helper.assert_error_contains(function() prepro.caption_db({}) end, "caption_db: opts.out")
    helper.assert_error_contains(function() prepro.caption_db({out = "/nonexistent/x"}) end, "opts.captions must be")
  end)

  it("caption metrics, retrieval predictions and data-parallel helpers", function()
    local C = hero.eval.caption
    for _, name in ipairs {"bleu", "cider", "rouge_l"} do
      helper.assert_error_contains(function() C[name](nil, {}) end,
        name .. ": references and hypotheses must be arrays")
      helper.assert_error_contains(function() C[name]({{"a"}}, {}) end, name .. ": references and hypotheses differ",
        "(1 and 0)")
      -- an empty corpus: CIDEr-D and ROUGE-L gave NaN
      helper.assert_error_contains(function() C[name]({}, {}) end, name .. ": no sentence to score")
    end
    helper.assert_error_contains(function() hero.eval.retrieval.predict(nil) end, "retrieval.predict: inputs must be")
    helper.assert_error_contains(function() hero.dist.run(nil) end, "hero.dist.run: expected a function")
    helper.assert_error_contains(function() hero.train.check_run_dir(nil) end, "check_run_dir: expected the run")
    helper.assert_error_contains(function() hero.data.prepro.collect_feature_pairs(nil, "/tmp") end,
      "the ResNet directory must be a path")
    helper.assert_error_contains(function() hero.nn.extended_mask(nil) end, "extended_mask: the mask must be")
    helper.assert_error_contains(function() hero.plot.svg(nil) end, "plot.svg: expected an array of charts")
    helper.assert_error_contains(function() hero.plot.write_svg(nil, {}) end, "plot.write_svg: expected a path")
    helper.assert_error_contains(function() hero.plot.smooth({}, 0) end, "plot.smooth")
    for _, name in ipairs {"broadcast_parameters", "average_gradients", "GradReducer"} do
      helper.assert_error_contains(function() hero.dist[name](nil) end, "hero.dist: params must be a list")
    end
  end)

  it("model constructors and fine-tuning setup without their configs", function()
    local m = hero.models
    helper.assert_error_contains(function() m.HeroForPretraining(nil, {vfeat_dim = 8}) end,
      "HeroForPretraining: cfg must be a model config", "got nil")
    helper.assert_error_contains(function() m.HeroForPretraining({c_config = {}}, {vfeat_dim = 8}) end,
      "HeroForPretraining: cfg.f_config must be a table")
    helper.assert_error_contains(function() m.HeroForTvc({f_config = {}, c_config = {}}, {vfeat_dim = 8}) end,
      "HeroForTvc: cfg.d_config must be a table")
    helper.assert_error_contains(function() m.HeroForVcmr(nil, {vfeat_dim = 8}) end, "HeroForVcmr: cfg must be")
    helper.assert_error_contains(function() m.HeroForVideoQA(5, {vfeat_dim = 8}) end, "HeroForVideoQA: cfg must be",
      "got 5")
    helper.assert_error_contains(function() hero.train.finetune.setup(nil) end, "finetune.setup: expected a table")
    helper.assert_error_contains(function() hero.train.finetune.setup({task = "tvr", hps = {}}) end,
      "finetune.setup: spec.model_config must be a table, got nil")
    helper.assert_error_contains(function() hero.train.Trainer.latest_step(nil) end,
      "Trainer.latest_step: expected the run's output directory")
  end)
end)
