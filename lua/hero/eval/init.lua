--- Evaluation of HERO's downstream tasks, numerically as the reference computes it:
--   hero.eval.retrieval  VCMR / SVMR / VR (TVR, How2R, DiDeMo): predictions from score tensors,
--                        temporal NMS, R@K at IoU thresholds, query-type breakdowns
--   hero.eval.qa         Video QA (TVQA, How2QA) and VIOLIN accuracy and loss from logits
--   hero.eval.caption    TVC captioning: BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR with Java)
-- `require "hero.eval"` returns this table; the submodules load on first use.
local M = {}

local SUB = {retrieval = "hero.eval.retrieval", qa = "hero.eval.qa", caption = "hero.eval.caption",
  util = "hero.eval.util"}

return setmetatable(M, {
  __index = function(t, k)
    local name = SUB[k]
    if name == nil then return nil end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})
