--- The VSM / VCMR scoring and losses of the reference (hero-spec §4.5):
--   local:  start/end logits from video_query_linear(q) . Y, two 5-tap conv1d, mask_logits
--   global: S[i, v] = max_l mask_logits(cos(q_i, Y[v, l]), m[v, l])
--   ranking loss: hinge (margin) or lse over all in-batch negatives in both directions, with the
--   optional hard-negative weighting (x weight for the top pool_size negatives, x0.1 for the rest);
--   or (use_all_neg = false) over one negative drawn per query and per video.
local core = require "hero.core"
local F = require "hero.nn.functional"

local M = {}

--- Cross start/end logits: u [Nq, H], Y [Nv, L, H], mask [Nv, L] -> st, ed logits [Nq, Nv, L].
function M.st_ed_logits(u, Y, mask, conv_st, conv_ed)
  local Nq, Nv, L = u:size(1), Y:size(1), Y:size(2)
  local sim = core.matmul(Y:reshape(Nv * L, Y:size(3)), u:t()):view(Nv, L, Nq):permute(3, 1, 2) -- [Nq, Nv, L]
  local flat = sim:reshape(Nq * Nv, 1, L)
  local m = mask:unsqueeze(1):expand(Nq, Nv, L)
  local function head(w)
    return F.mask_logits(core.conv1d(flat, w, nil, w:size(3) // 2):view(Nq, Nv, L), m)
  end
  return head(conv_st), head(conv_ed)
end

--- Video-level scores: q [Nq, H], Y [Nv, L, H], mask [Nv, L] -> [Nq, Nv].
-- gather (optional): applied to the normalised queries, the normalised frames and the mask before
-- scoring, as the reference all-gathers them over the GPUs (hero.dist.all_gather_grad in a
-- distributed run: the scores are then [Nq of all ranks, Nv of all ranks], frames padded with
-- mask 0 to the longest rank's length).
function M.video_scores(q, Y, mask, gather)
  local qn = q / q:norm(2, 2, true):clamp(1e-5, nil)
  local yn = Y / Y:norm(2, 3, true):clamp(1e-5, nil)
  if gather then
    qn, yn, mask = gather(qn), gather(yn), gather(mask)
  end
  local Nq, Nv, L = qn:size(1), yn:size(1), yn:size(2)
  local cos = core.matmul(yn:reshape(Nv * L, yn:size(3)), qn:t()):view(Nv, L, Nq):permute(3, 1, 2)
  local m = mask:unsqueeze(1):expand(Nq, Nv, L)
  return (F.mask_logits(cos, m):max(3))
end

--- The ranking loss terms of S_neg - S_pos (`diff`): hinge max(0, margin + diff) or lse
-- log(1 + exp(diff)). opts: margin, loss_type ("hinge"|"lse").
local function rank_terms(diff, opts)
  if opts.loss_type == "lse" then return diff:exp():log1p() end
  return (diff + opts.margin):clamp(0, nil)
end

--- One direction of the ranking loss. pos [R] (one positive per row), neg_sorted [R, K] (negatives
-- sorted descending). opts: rank_terms's, hard (pool size and weight or nil), reduction ("mean":
-- mean over columns then rows; "sum", the reference's evaluation-mode value: the per-row means [R]).
local function rank_loss(pos, neg_sorted, opts)
  local l = rank_terms(neg_sorted - pos:unsqueeze(2), opts)
  if opts.hard then
    local K = l:size(2)
    local pool = math.min(opts.hard.pool_size, K)
    local w = core.full({K}, 0.1, {dtype = l:dtype(), device = l:device()})
    if pool > 0 then w:narrow(1, 1, pool):fill_(opts.hard.weight) end
    l = l * w
  end
  if opts.reduction == "sum" then return l:mean(2) end
  return l:mean(2):mean()
end

--- One negative per row of `sorted` [R, n] (each row sorted descending), drawn uniformly from the
-- positions [lo, hi) (0-based) as the reference's get_sampled_neg_scores does: [R, 1].
local function sampled_negatives(sorted, lo, hi, generator)
  local R = sorted:size(1)
  local at = core.randint(lo, hi, {R}, {generator = generator}):to{device = sorted:device()}
  return sorted:gather(2, at:view(R, 1))
end

--- The reference's use_all_neg = false branch: one sampled negative video per query and one
-- sampled negative query per video (among the pool_size highest with hard negatives on, without
-- their weighting). Returns loss_neg_ctx and loss_neg_q as means, or with opts.reduction = "sum"
-- as the reference's per-row means: [Nq] (one term per query) and [Nv] (each video's k terms).
local function sampled_losses(pos, filled, k, opts)
  local Nq, Nv = filled:size(1), filled:size(2)
  local pool = opts.hard and opts.hard.pool_size
  local function upper(lo, n) return pool and math.min(lo + pool, n) or n end
  local neg_ctx = sampled_negatives((filled:sort(2, true)), 1, upper(1, Nv), opts.generator)    -- [Nq, 1]
  local l_ctx = rank_terms(neg_ctx - pos:unsqueeze(2), opts):mean(2)                              -- [Nq]
  local neg_q = sampled_negatives((filled:t():sort(2, true)), k, upper(k, Nq), opts.generator)  -- [Nv, 1]
  -- each video's k positives against its one negative query: [Nv, k], per-video means [Nv]
  local l_q = rank_terms(neg_q - pos:view(Nv, k), opts):mean(2)
  if opts.reduction == "sum" then return l_ctx, l_q end
  return l_ctx:mean(), l_q:mean()
end

--- The reference's get_video_level_loss: S [Nq, Nv] with k = Nq / Nv queries per video
-- (video-major). Returns loss_neg_ctx, loss_neg_q (unweighted means; per-row vectors with
-- opts.reduction = "sum"). opts: margin, loss_type, hard, reduction, and sampled = true for the
-- reference's use_all_neg = false (one negative drawn per row from opts.generator).
function M.ranking_losses(S, opts)
  local Nq, Nv = S:size(1), S:size(2)
  local k = Nq // Nv
  local vids = {}
  for i = 1, Nq do vids[i] = (i - 1) // k end
  local vid = core.tensor(vids, {dtype = "i64", device = S:device()}) -- the video of each query
  local pos_mask = vid:unsqueeze(2):eq(core.arange(Nv, {device = S:device()}):unsqueeze(1))
  local pos = S:masked_select(pos_mask)                          -- [Nq], row-major = query order
  local filled = S:masked_fill(pos_mask, 999)
  if opts.sampled then
    if Nv == 1 then return S:sum() * 0, S:sum() * 0 end
    return sampled_losses(pos, filled, k, opts)
  end
  -- negative videos per query: sort the row descending, drop the first (the 999)
  local neg_ctx = (filled:sort(2, true)):narrow(2, 2, Nv - 1)
  local l_ctx = Nv > 1 and rank_loss(pos, neg_ctx, opts) or S:sum() * 0
  -- negative queries per video: sort the column descending, drop the k positives
  local cols = (filled:t():sort(2, true)):narrow(2, k + 1, Nq - k) -- [Nv, Nq - k]
  local neg_q = cols:index_select(1, vid)                          -- each query gets its video's negatives
  local l_q = Nq > k and rank_loss(pos, neg_q, opts) or S:sum() * 0
  return l_ctx, l_q
end

return M
