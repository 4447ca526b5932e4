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
    helper.assert_error_contains(function() hero.zeros(1, 3):expand(-5, 3) end,
      "expand: size -5 of dimension 1 is negative")
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
      -- a sentence without references: ROUGE-L gave NaN, BLEU a Lua error
      helper.assert_error_contains(function() C[name]({{"a b"}, {}}, {"a b", "a man walks"}) end,
        name .. ": sentence 2 has no reference")
    end
    local R = hero.eval.retrieval
    helper.assert_error_contains(function()
      R.eval_retrieval({VCMR = {}, SVMR = {}, VR = {}, video2idx = {}}, {}, {})
    end, "eval_retrieval: the VCMR submission has no query") -- all its metrics were 0 / 0
    helper.assert_error_contains(function() R.temporal_nms({{0, 1, 0.5}, {0, 1, 0 / 0}}, 0.5) end,
      "temporal_nms: prediction 2 must be {st, ed, score} with a score that is a number, got")
    helper.assert_error_contains(function()
      hero.eval.qa.violin(hero.tensor {0.3, -0.2}, hero.tensor({2, 1}, {dtype = "i64"}), {"a", "b"})
    end, "violin: target 1 is 2.0; a statement is true (1) or false (0)")
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

  it("sizes followed by something that is neither a size nor an options table", function()
    helper.assert_error_contains(function() hero.zeros("a") end,
      "zeros: argument #1: expected a size (integer) or an options table, got string")
    helper.assert_error_contains(function() hero.ones(2, 3, "f64") end, "ones: argument #3", "got string")
    helper.assert_error_contains(function() hero.ones(6):view(6, "x") end, "view: argument #3")
    helper.assert_error_contains(function() hero.ones(2):new_ones(hero.ones(2)) end,
      "new_ones: the shape must be a table of sizes")
    assert.same({2, 3}, hero.ones(2, 3, {dtype = "f64"}):size())
    assert.equal("f64", hero.randn(2, 3, {dtype = "f64"}):dtype())
  end)

  it("loss options, embedding padding rows and layer options", function()
    local a, b = hero.randn(3), hero.randn(3)
    helper.assert_error_contains(function() hero.mse_loss(a, b, {reduction = "avg"}) end,
      "mse_loss: option reduction must be none, mean or sum, got 'avg'")
    helper.assert_error_contains(function() hero.binary_cross_entropy_with_logits(a, b, {reduction = 1}) end,
      "binary_cross_entropy_with_logits: option reduction must be none, mean or sum, got a number")
    local logits, target = hero.randn(2, 3), hero.tensor({0, 1}, {dtype = "i64"})
    helper.assert_error_contains(function() hero.cross_entropy(logits, target, {ignore_index = "x"}) end,
      "cross_entropy: option ignore_index must be an integer, got string")
    helper.assert_error_contains(function() hero.cross_entropy(logits, target, {label_smoothing = {}}) end,
      "cross_entropy: option label_smoothing must be a number, got table")
    local ids = hero.tensor({1, 3}, {dtype = "i64"})
    helper.assert_error_contains(function() hero.embedding(hero.ones(4, 3), ids, 9) end,
      "embedding: padding_idx must be an integer row in [-4, 4) (0-based) or nil, got 9")
    helper.assert_error_contains(function() hero.nn.Embedding(5, 3, {padding_idx = 5}) end,
      "Embedding: padding_idx must be an integer in [-5, 5)")
    -- as torch: negative from the end; the torch init leaves the padding row at zero
    local e = hero.nn.Embedding(5, 3, {padding_idx = -1})
    assert.equal(4, e.padding_idx)
    assert.equal(0, e.weight[5]:abs():sum():item())
    helper.assert_error_contains(function() hero.nn.Embedding(5, 3, 7) end, "Embedding: opts must be a table")
    helper.assert_error_contains(function() hero.nn.Linear(3, 4, 5) end, "Linear: opts must be a table")
    helper.assert_error_contains(function() hero.nn.LayerNorm(4, {eps = "x"}) end,
      "LayerNorm: opts.eps must be a number >= 0, got x")
    helper.assert_error_contains(function() hero.nn.TransformerLayer(5) end,
      "TransformerLayer: expected a table of options")
    helper.assert_error_contains(function() hero.nn.TransformerLayer {hidden = 8, heads = 2, eps = "x"} end,
      "TransformerLayer: opts.eps must be a number")
    local layer = hero.nn.TransformerLayer {hidden = 8, heads = 2, intermediate = 16}
    helper.assert_error_contains(function() layer:forward(nil) end,
      "TransformerLayer: forward: x must be a hero.Tensor [B, L, H], got nil")
  end)

  it("loss scaling, samplers, retrieval post-processing and text helpers", function()
    local scaler = hero.amp.GradScaler()
    helper.assert_error_contains(function() scaler:scale(5) end, "GradScaler:scale: expected the loss tensor")
    helper.assert_error_contains(function() scaler:step(5) end, "GradScaler:step: expected an optimizer")
    local tasks = hero.data.tasks
    helper.assert_error_contains(function() tasks.random_word(nil, {}) end,
      "hero.data.tasks.random_word: tokens must be a table, got nil")
    helper.assert_error_contains(function() tasks.word_decisions(3) end, "word_decisions: opts must be a table")
    helper.assert_error_contains(function() tasks.frame_mask(3) end, "frame_mask: opts must be a table")
    helper.assert_error_contains(function() tasks.random_reorder(-1, {}) end,
      "random_reorder: n must be an integer >= 0, got -1")
    helper.assert_error_contains(function() tasks.reorder_from(3) end, "reorder_from: P (the selected positions)")
    helper.assert_error_contains(function() tasks.sample_queries(5, 1, {}) end,
      "sample_queries: candidates must be a table, got number")
    helper.assert_error_contains(function() tasks.apply_word_decisions(nil, {}) end,
      "apply_word_decisions: tokens must be a table")
    helper.assert_error_contains(function() hero.eval.retrieval.temporal_nms(5, 0.5) end,
      "temporal_nms: preds must be an array")
    helper.assert_error_contains(function() hero.text.prepare_query(nil) end, "prepare_query: expected a string")
    helper.assert_error_contains(function() hero.text.prepare_subtitle(3) end, "prepare_subtitle: expected a string")
    helper.assert_error_contains(function() hero.cli.help_if_asked(5) end, "help_if_asked: argv must be")
  end)

  it("writes into expanded views and odd gradients, refused", function()
    local e = hero.zeros(1, 4):expand(3, 4)
    local cases = {
      {function() e:fill_(1) end, "fill_: cannot write in place"},
      {function() e:zero_() end, "expanded view whose elements overlap"},
      {function() e:copy_(hero.ones(3, 4)) end, "copy_: cannot write in place"},
      {function() e:index_add_(1, hero.tensor({0}, {dtype = "i64"}), hero.ones(1, 4)) end, "index_add_: cannot write"},
      {function() e:masked_fill_(hero.ones(3, 4):gt(0), 2) end, "masked_fill_: cannot write"},
      {function() e[1] = 5 end, "index assignment: cannot write"},
      {function() e:uniform_() end, "uniform_: cannot write"},
      {function() hero.addmm_(e, hero.ones(3, 2), hero.ones(2, 4)) end, "addmm_: cannot write"},
      {function() hero.core.scale_all_({hero.ones(1):expand(10)}, 2) end, "scale_all_: cannot write"},
    }
    for _, c in ipairs(cases) do helper.assert_error_contains(c[1], c[2]) end
    local p = hero.randn(3, 4):requires_grad_()
    helper.assert_error_contains(function() p.grad = hero.zeros(3, 4, {dtype = "i64"}) end, "gradients are floating")
    helper.assert_error_contains(function() p.grad = hero.zeros(1, 4):expand(3, 4) end, "expanded view")
    helper.assert_error_contains(function() p.grad = p end, "shares the tensor's own memory")
    helper.assert_error_contains(function() p.grad = p:view(12):view(3, 4) end, "shares the tensor's own memory")
    p.grad = hero.zeros(3, 4, {dtype = "bf16"}) -- a half gradient of a f32 parameter is kept
    assert.equal("bf16", p.grad:dtype())
    -- unrecorded writes into the graph: a view of a leaf, an intermediate result
    helper.assert_error_contains(function() p[1]:fill_(1) end, "a view of a leaf tensor that requires grad")
    helper.assert_error_contains(function() p:t():zero_() end, "a view of a leaf tensor that requires grad")
    local y = p * 2
    helper.assert_error_contains(function() y:view(12):fill_(1) end, "in-place writes are not recorded")
    helper.assert_error_contains(function() y:masked_fill_(y:gt(0), 0) end, "in-place writes are not recorded")
    hero.no_grad(function() p[1]:fill_(1) end) -- an initialisation, outside the graph
    assert.same({1, 1, 1, 1}, p[1]:totable())
  end)

  it("backward calls nested through a Lua backward, and Lua code run while arguments are read", function()
    -- a backward inside a Lua backward through the same graph would clobber the outer pass's sums
    local p = hero.randn(3, 4):requires_grad_()
    local y, calls = nil, 0
    local F = hero.autograd.Function {forward = function(_, x) return x:mul(2) end,
      backward = function(_, g)
        calls = calls + 1
        if calls == 1 then y:backward {retain_graph = true} end
        return g:mul(2)
      end}
    y = F(p:exp()):sum()
    helper.assert_error_contains(function() y:backward {retain_graph = true} end,
      "part of a graph an enclosing backward call is still differentiating")
    -- a Lua backward that frees the graph's root: the pass still holds its nodes
    p = hero.randn(3, 4):requires_grad_()
    F = hero.autograd.Function {forward = function(_, x) return x:mul(2) end,
      backward = function(_, g)
        y:free()
        collectgarbage()
        return g:mul(2)
      end}
    y = F(p):exp():sum()
    local want = (p:detach() * 2):exp():sum():item()
    y:backward()
    assert.near(2 * want, p.grad:sum():item(), 1e-3 * want)
    -- lists, shapes and option tables are read before any tensor is taken, or without metamethods
    local t = hero.randn(2, 3)
    local evil_shape = setmetatable({}, {__len = function() return 2 end, __index = function(_, i)
      t:free()
      collectgarbage()
      return ({3, 2})[i]
    end})
    helper.assert_error_contains(function() t:view(evil_shape) end, "view")
    assert.is_false(pcall(hero.cat, setmetatable({}, {__len = function() return 2 end,
      __index = function() return hero.randn(2) end}), 1))
    -- option tables are read raw: a metamethod that would free an argument never runs
    local x = hero.randn(2, 3)
    local freed = false
    local evil_opts = setmetatable({}, {__index = function()
      freed = true
      x:free()
      collectgarbage()
    end})
    local raw_reads = {
      function() return hero.core.cross_entropy(x, hero.tensor({0, 1}, {dtype = "i64"}), evil_opts) end,
      function() return x:sum(evil_opts) end,
      function() return hero.core.mse_loss(x, hero.zeros(2, 3), evil_opts) end,
      function() return hero.core.dropout(x, 0.5, true, evil_opts) end,
      function() return hero.addmm(hero.zeros(2, 2), x, hero.zeros(3, 2), evil_opts) end,
      function() return x:to(evil_opts) end,
      function() return hero.randn_like(x, evil_opts) end,
    }
    for i, call in ipairs(raw_reads) do
      local ok, err = pcall(call)
      assert.is_false(freed, "call " .. i .. " ran the options' metamethod")
      assert(ok or not tostring(err):match("freed"), tostring(err))
    end
    assert.equal(6, x:numel())
  end)

  it("convolution paddings and activation options it cannot honour", function()
    local x, w = hero.randn(1, 3, 5), hero.randn(4, 3, 3)
    helper.assert_error_contains(function() hero.conv1d(x, w, nil, 1 << 62) end,
      "padding 4611686018427387904 is too large")
    helper.assert_error_contains(function() hero.conv1d(hero.ones(1, 1, 2), hero.ones(1, 1, 3)) end,
      "kernel 3 is longer than the padded input (2)")
    assert.same({1, 1, 2}, hero.conv1d(hero.ones(1, 1, 2), hero.ones(1, 1, 3), nil, 1):size())
    helper.assert_error_contains(function() x:gelu("tanh") end, "approximate 'tanh' is not supported")
    assert.equal(x:gelu():sum():item(), x:gelu("none"):sum():item())
    helper.assert_error_contains(function() hero.nn.TransformerEncoder {layers = -1, hidden_size = 8} end,
      "layers must be a non-negative integer")
  end)

  it("extreme integers named as they were given, and NUL bytes in process arguments", function()
    -- the position was cut to an int (-1) and the amount wrapped around
    helper.assert_error_contains(function() hero.zeros(2):unsqueeze(math.maxinteger) end,
      "position 9223372036854775807 out of range")
    helper.assert_error_contains(function() hero.nn.functional.pad(hero.zeros(2), {math.maxinteger, 1}) end,
      "amount 9223372036854775807 is beyond any size")
    -- a redirection to "/tmp/x\0y" created /tmp/x
    helper.assert_error_contains(function() hero.core._spawn({"true"}, {stdout = "/tmp/x\0y"}) end, "NUL byte")
    helper.assert_error_contains(function() hero.core._spawn({"echo", "a\0b"}) end, "argv[2] holds a NUL byte")
  end)
end)
