--- hero.data.tasks: the random parts of HERO's pre-training data (hero-spec §4.1–4.5) and the
-- per-task item builders that turn one video (hero.data.datasets) into what the collates of
-- hero.data.collate batch.
--
-- Every random choice is drawn from a hero.Generator (Philox) given as opts.generator, never from
-- math.random, so a seed gives the same masks everywhere and g:get_state()/set_state() resume them.
-- The draws, in order (documented so that a run can be replayed):
--   random_word(tokens):   u = rand(n, f64); then randint(v_lo, v_hi, k) for the k tokens whose
--                          u/p falls in [0.8, 0.9) (in token order). Nothing is drawn for n = 0.
--   frame_mask(n):         u = rand(n, f64); if no u < p: randint(0, n, 1) picks the forced frame.
--   random_reorder(n):     u = rand(n, f64); P = positions with u < p; if #P > 1: randperm(#P).
--   sample_queries(cands): randperm(#cands) when #cands > per_video; the first per_video win.
-- Every item builder also takes the choice itself instead of a generator (opts.decisions,
-- opts.c_mask, opts.reorder, opts.query_subs), which is how recorded batches are rebuilt exactly.
--
-- Items hold Lua arrays of 0-based ids/frame indices and the video's f32 features; nothing is
-- padded here.
local core = require "hero.core"

local tasks = {}

--- The options of the item builders (TaskLoader's task_opts): a misspelt mask_prb kept 0.15, a
-- mask_prob of 2 masked every frame, a negative sub_ctx_len removed the text.
tasks.ITEM_OPTIONS = {
  generator = "generator", special_ids = "table", sub_ctx_len = "integer >= 0", max_txt_len = "integer >= -1",
  truncate = "boolean", mask_prob = "probability", reorder_prob = "probability", v_range = "table",
  decisions = "table", c_mask = "table", reorder = "table", query_per_video = "integer >= 1", query_subs = "list",
  mask_id = "integer",
}

local function check_item_opts(op, opts)
  require("hero.models.options").check(op, opts, tasks.ITEM_OPTIONS, 3)
end

local function fail(op, fmt, ...)
  error(op .. ": " .. string.format(fmt, ...), 3)
end

local function gen_opts(g)
  return {generator = g, dtype = "f64"}
end

--- The arguments every sampler takes: a table (tokens, candidates, positions) and an options table.
-- (level 4: the error points at the sampler's caller)
local function check_table(op, what, t)
  if type(t) ~= "table" then error(string.format("%s: %s must be a table, got %s", op, what, type(t)), 4) end
end

local function check_count(op, what, n)
  if math.type(n) ~= "integer" or n < 0 then
    error(string.format("%s: %s must be an integer >= 0, got %s", op, what, tostring(n)), 4)
  end
end

local function check_generator(op, g)
  if type(g) ~= "userdata" or type(g.get_state) ~= "function" then
    fail(op, "opts.generator must be a hero.Generator (or give the recorded choice), got %s", type(g))
  end
end

-- A masking probability in [0, 1] (2 masked everything; NaN and negative values are refused; 0
-- selects nothing, so the one forced position is all).
local function probability(op, p)
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then
    fail(op, "the masking probability must be in [0, 1], got %s", tostring(p))
  end
  return p
end

local function uniforms(n, g)
  if n == 0 then return {} end
  return core.rand({n}, gen_opts(g)):totable()
end

-- ------------------------------------------------------------------ samplers

-- The replacement ids' range {lo, hi} (hi exclusive) of word masking.
local function check_v_range(op, vr)
  if type(vr) ~= "table" or math.type(vr[1]) ~= "integer" or math.type(vr[2]) ~= "integer" or vr[2] <= vr[1] then
    fail(op, "opts.v_range must be {lo, hi} integers with lo < hi")
  end
  return vr
end

--- MLM masking decisions for n tokens (hero-spec §4.1): an array of n entries, each false (not
-- selected), "mask", "keep" or an integer (the random replacement id). opts: generator, mask_prob
-- (0.15), v_range ({lo, hi}, hi exclusive; required).
function tasks.word_decisions(n, opts)
  local op = "hero.data.tasks.word_decisions"
  check_count(op, "n", n)
  check_table(op, "opts", opts)
  check_generator(op, opts.generator)
  local p = probability(op, opts.mask_prob or 0.15)
  local vr = check_v_range(op, opts.v_range)
  local u = uniforms(n, opts.generator)
  local out, random_at = {}, {}
  for i = 1, n do
    local x = u[i]
    if x < p then
      x = x / p
      if x < 0.8 then
        out[i] = "mask"
      elseif x < 0.9 then
        out[i] = 0
        random_at[#random_at + 1] = i
      else
        out[i] = "keep"
      end
    else
      out[i] = false
    end
  end
  if #random_at > 0 then
    local r = core.randint(vr[1], vr[2], {#random_at}, {generator = opts.generator}):totable()
    for j, i in ipairs(random_at) do out[i] = r[j] end
  end
  return out
end

--- Applies MLM decisions to tokens (a copy is made): returns ids, labels (-1 where not selected).
-- When nothing is selected the first token is masked (the reference's "at least mask 1"); an
-- empty token list stays empty with no label (the reference raises IndexError there).
function tasks.apply_word_decisions(tokens, decisions, mask_id)
  local op = "hero.data.tasks.apply_word_decisions"
  check_table(op, "tokens", tokens)
  check_table(op, "decisions", decisions)
  local ids, labels = {}, {}
  local any = false
  for i = 1, #tokens do
    local d, t = decisions[i], tokens[i]
    if d == nil or d == false then
      ids[i], labels[i] = t, -1
    else
      any = true
      labels[i] = t
      if d == "mask" then
        ids[i] = mask_id
      elseif d == "keep" then
        ids[i] = t
      elseif math.type(d) == "integer" then
        ids[i] = d
      else
        fail("hero.data.tasks.apply_word_decisions", "decision %d is %s (false, 'mask', 'keep' or an id)", i,
          tostring(d))
      end
    end
  end
  if not any and #tokens > 0 then
    labels[1] = tokens[1]
    ids[1] = mask_id
  end
  return ids, labels
end

--- random_word of the reference: tokens -> masked ids, labels (see word_decisions).
function tasks.random_word(tokens, opts)
  check_table("hero.data.tasks.random_word", "tokens", tokens)
  check_table("hero.data.tasks.random_word", "opts", opts)
  -- without it the masked positions became holes in the ids
  if math.type(opts.mask_id) ~= "integer" then
    fail("hero.data.tasks.random_word", "opts.mask_id (the MASK token id) must be an integer, got %s",
      tostring(opts.mask_id))
  end
  local d = tasks.word_decisions(#tokens, opts)
  return tasks.apply_word_decisions(tokens, d, opts.mask_id)
end

--- MFM frame mask (hero-spec §4.2): n booleans, each true with probability p; one uniformly
-- chosen frame when none is. n must be >= 1.
function tasks.frame_mask(n, opts)
  local op = "hero.data.tasks.frame_mask"
  check_table(op, "opts", opts)
  check_generator(op, opts.generator)
  if math.type(n) ~= "integer" or n < 1 then fail(op, "a video needs at least one frame, got %s", tostring(n)) end
  local p = probability(op, opts.mask_prob or 0.15)
  local u = uniforms(n, opts.generator)
  local m, any = {}, false
  for i = 1, n do
    m[i] = u[i] < p
    any = any or m[i]
  end
  if not any then
    local j = core.randint(0, n, {1}, {generator = opts.generator}):item()
    m[j + 1] = true
  end
  return m
end

--- FOM orders and targets from the selected positions P (0-based, ascending) and their shuffle Q
-- (a permutation of P): order[P_i] = Q_i, target[Q_i] = P_i, identity / -1 elsewhere (0-based
-- values in 1-based Lua arrays of length n).
function tasks.reorder_from(n, P, Q)
  local op = "hero.data.tasks.reorder_from"
  check_count(op, "n", n)
  check_table(op, "P (the selected positions)", P)
  check_table(op, "Q (their shuffle)", Q)
  if #P ~= #Q then fail(op, "%d selected positions but %d shuffled ones", #P, #Q) end
  local order, target = {}, {}
  for j = 1, n do order[j], target[j] = j - 1, -1 end
  local seen = {}
  for i = 1, #P do
    local p, q = P[i], Q[i]
    if math.type(p) ~= "integer" or p < 0 or p >= n or math.type(q) ~= "integer" or q < 0 or q >= n then
      fail(op, "position pair %d (%s -> %s) is outside 0..%d", i, tostring(p), tostring(q), n - 1)
    end
    if i > 1 and p <= P[i - 1] then fail(op, "selected positions must be ascending") end
    seen[p] = (seen[p] or 0) + 1
    seen[q] = (seen[q] or 0) - 1
    order[p + 1] = q
    target[q + 1] = p
  end
  for k, c in pairs(seen) do
    if c ~= 0 then fail(op, "the shuffle is not a permutation of the selected positions (frame %d)", k) end
  end
  return order, target
end

--- FOM shuffle (hero-spec §4.4): each of n frames selected with probability p; the selection is
-- shuffled. Returns order, target (see reorder_from) and P, Q.
function tasks.random_reorder(n, opts)
  check_count("hero.data.tasks.random_reorder", "n", n)
  check_table("hero.data.tasks.random_reorder", "opts", opts)
  check_generator("hero.data.tasks.random_reorder", opts.generator)
  local p = probability("hero.data.tasks.random_reorder", opts.reorder_prob or opts.mask_prob or 0.15)
  local u = uniforms(n, opts.generator)
  local P = {}
  for i = 1, n do
    if u[i] < p then P[#P + 1] = i - 1 end
  end
  local Q = {}
  if #P > 1 then
    local perm = core.randperm(#P, {generator = opts.generator}):totable()
    for i = 1, #P do Q[i] = P[perm[i] + 1] end
  else
    for i = 1, #P do Q[i] = P[i] end
  end
  local order, target = tasks.reorder_from(n, P, Q)
  return order, target, P, Q
end

--- VSM query choice: min(#candidates, per_video) distinct entries of candidates, without
-- replacement, returned as a set {value = true}.
function tasks.sample_queries(candidates, per_video, opts)
  local op = "hero.data.tasks.sample_queries"
  check_table(op, "candidates", candidates)
  check_count(op, "per_video", per_video)
  check_table(op, "opts", opts)
  local set = {}
  if #candidates <= per_video then
    for _, c in ipairs(candidates) do set[c] = true end
    return set
  end
  check_generator("hero.data.tasks.sample_queries", opts.generator)
  local perm = core.randperm(#candidates, {generator = opts.generator}):totable()
  for i = 1, per_video do set[candidates[perm[i] + 1]] = true end
  return set
end

-- ------------------------------------------------------------------ item builders

local function specials(opts, op)
  local sp = opts.special_ids or opts
  local cls, sep, mask = sp.CLS or sp.cls, sp.SEP or sp.sep, sp.MASK or sp.mask
  if math.type(cls) ~= "integer" or math.type(sep) ~= "integer" then
    fail(op, "the special token ids (CLS, SEP) are missing: pass opts.special_ids (the text db's meta.json)")
  end
  return cls, sep, mask, sp.v_range
end

local function check_video(op, video)
  if type(video) ~= "table" or not core.is_tensor(video.v_feat) or type(video.sub2frames) ~= "table"
      or type(video.input_ids) ~= "table" then
    fail(op, "expected a video {vid, v_feat, sub2frames, input_ids} from a hero.data dataset")
  end
end

-- Appends the tokens of subtitle k (0-based), cut to max_len (-1 or nil: whole), to out; returns
-- out. (table.move copies in C: a batch of 32 TV videos copies ~50,000 tokens.)
local function append_tokens(out, video, k, max_len)
  local t = video.input_ids[k + 1]
  if t == nil then
    error(string.format("video '%s' has no text for subtitle %d (%d texts)", tostring(video.vid), k,
      #video.input_ids), 0)
  end
  local n = #t
  if max_len ~= nil and max_len >= 0 and max_len < n then n = max_len end
  return table.move(t, 1, n, #out + 1, out)
end

-- Appends the context text of the segment of subtitle s to out: tokens of subtitles s-k..s (only
-- those < num_subs, none in `skip`), each cut to max_len. Returns out.
local function append_context(out, video, s, ctx, num_subs, max_len, skip)
  for k = s - ctx, s do
    if k >= 0 and k < num_subs and not (skip and skip[k]) then append_tokens(out, video, k, max_len) end
  end
  return out
end

local function base_item(video)
  return {vid = video.vid, v_feat = video.v_feat, nframes = video.v_feat:size(1), sub2frames = video.sub2frames,
          num_subs = #video.sub2frames, segments = {}}
end

--- The representation-path item of a video (the reference's VideoFeatSubTokDataset.__getitem__):
-- one segment per subtitle with ids [SEP] + context tokens and its aligned frames; a video of a
-- VideoOnlyDataset (video_only = true) has its one segment with ids [CLS]. As in the
-- reference this text is NOT cut to max_txt_len unless opts.truncate is true.
-- opts: special_ids, sub_ctx_len (0), max_txt_len (60), truncate (false).
function tasks.video_item(video, opts)
  local op = "hero.data.tasks.video_item"
  opts = opts or {}
  check_item_opts(op, opts)
  check_video(op, video)
  local cls, sep = specials(opts, op)
  local item = base_item(video)
  if video.video_only then -- VideoFeatDataset: one segment of every frame, text [CLS] alone
    for i, pair in ipairs(video.sub2frames) do item.segments[i] = {ids = {cls}, frames = pair[2]} end
    return item
  end
  local max_len = opts.truncate and (opts.max_txt_len or 60) or -1
  for i, pair in ipairs(video.sub2frames) do
    local ids = append_context({sep}, video, pair[1], opts.sub_ctx_len or 0, item.num_subs, max_len)
    item.segments[i] = {ids = ids, frames = pair[2]}
  end
  return item
end

-- word_decisions(#tokens, opts) then apply_word_decisions(tokens, decisions, mask_id) with [CLS]
-- (label -1) in front, in one pass: the same draws in the same order, the same ids and labels,
-- without the decisions array and the two insertions at the front (a batch of 32 TV videos masks
-- ~1000 segments).
local function mask_words(tokens, opts, mask_id, cls)
  local op = "hero.data.tasks.word_decisions"
  check_generator(op, opts.generator)
  local p = probability(op, opts.mask_prob or 0.15)
  local vr = check_v_range(op, opts.v_range)
  local n = #tokens
  local ids, labels = {cls}, {-1}
  if n == 0 then return ids, labels end
  local u = uniforms(n, opts.generator)
  local random_at, any = nil, false
  for i = 1, n do
    local x, t = u[i], tokens[i]
    if x < p then
      any = true
      labels[i + 1] = t
      x = x / p
      if x < 0.8 then
        ids[i + 1] = mask_id
      elseif x < 0.9 then
        ids[i + 1] = 0 -- the random id drawn below
        random_at = random_at or {}
        random_at[#random_at + 1] = i + 1
      else
        ids[i + 1] = t
      end
    else
      ids[i + 1], labels[i + 1] = t, -1
    end
  end
  if random_at then
    local r = core.randint(vr[1], vr[2], {#random_at}, {generator = opts.generator}):totable()
    for j, at in ipairs(random_at) do ids[at] = r[j] end
  end
  if not any then
    labels[2] = tokens[1]
    ids[2] = mask_id
  end
  return ids, labels
end

--- MLM item (hero-spec §4.1): per segment [CLS] + masked context tokens (each subtitle cut to
-- max_txt_len), labels [-1] + labels, the segment's frames (unmasked).
-- opts: generator, mask_prob, special_ids (CLS, MASK, v_range), sub_ctx_len, max_txt_len, or
-- decisions = {per segment: an array as tasks.word_decisions returns} instead of the generator.
function tasks.mlm_item(video, opts)
  local op = "hero.data.tasks.mlm_item"
  check_item_opts(op, opts)
  check_video(op, video)
  local cls, _, mask, v_range = specials(opts, op)
  if math.type(mask) ~= "integer" then fail(op, "the MASK id is missing from opts.special_ids") end
  local item = base_item(video)
  local wopts = {generator = opts.generator, mask_prob = opts.mask_prob, v_range = opts.v_range or v_range}
  for i, pair in ipairs(video.sub2frames) do
    local toks = append_context({}, video, pair[1], opts.sub_ctx_len or 0, item.num_subs, opts.max_txt_len or 60)
    local ids, labels
    if opts.decisions then
      local d = opts.decisions[i]
      if type(d) ~= "table" then fail(op, "opts.decisions has no entry for segment %d", i) end
      ids, labels = tasks.apply_word_decisions(toks, d, mask)
      table.insert(ids, 1, cls)
      table.insert(labels, 1, -1)
    else
      ids, labels = mask_words(toks, wopts, mask, cls)
    end
    item.segments[i] = {ids = ids, labels = labels, frames = pair[2]}
  end
  return item
end

--- MFM / MFFR item (hero-spec §4.2): the representation item plus c_mask (nframes booleans).
-- opts: generator, mask_prob, or c_mask (a recorded mask); plus video_item's options.
function tasks.mfm_item(video, opts)
  local op = "hero.data.tasks.mfm_item"
  local item = tasks.video_item(video, opts)
  local n = item.nframes
  local m = opts.c_mask
  if m == nil then
    m = tasks.frame_mask(n, opts)
  elseif #m ~= n then
    fail(op, "opts.c_mask has %d entries for a video of %d frames", #m, n)
  else
    -- 1 and 0 read as unmasked: an MFM batch with no masked frame
    for i, v in ipairs(m) do
      if type(v) ~= "boolean" then fail(op, "opts.c_mask[%d] must be a boolean, got %s", i, tostring(v)) end
    end
  end
  item.c_mask = m
  return item
end

--- FOM item (hero-spec §4.4): the representation item plus orders and targets (0-based values).
-- opts: generator, reorder_prob (or mask_prob, 0.15), or reorder = {P = {...}, Q = {...}}.
function tasks.fom_item(video, opts)
  local item = tasks.video_item(video, opts)
  local n = item.nframes
  if opts.reorder then
    item.orders, item.targets = tasks.reorder_from(n, opts.reorder.P, opts.reorder.Q)
  else
    item.orders, item.targets = tasks.random_reorder(n, opts)
  end
  return item
end

--- VSM item (hero-spec §4.5): up to query_per_video (5) subtitles that have frames become queries
-- ([CLS] + tokens cut to max_txt_len, target {first frame, min(max(first + 1, last), nframes - 1)}),
-- their text is removed from every segment's context, and the query list is padded to
-- query_per_video by repeating the last query. A video without any subtitle that has frames
-- cannot give a query: an error (the reference crashes there too); loaders skip such videos.
-- opts: generator, query_per_video, special_ids, sub_ctx_len, max_txt_len, or query_subs =
-- {sub indices} (the recorded choice).
function tasks.vsm_item(video, opts)
  local op = "hero.data.tasks.vsm_item"
  check_item_opts(op, opts)
  check_video(op, video)
  local cls, sep = specials(opts, op)
  local per_video = opts.query_per_video or 5
  local item = base_item(video)
  local candidates = {}
  for _, pair in ipairs(video.sub2frames) do
    if #pair[2] > 0 then candidates[#candidates + 1] = pair[1] end
  end
  if #candidates == 0 then
    error(string.format("%s: video '%s' has no subtitle with aligned frames, so no VSM query", op,
      tostring(video.vid)), 2)
  end
  local chosen
  if opts.query_subs then
    chosen = {}
    local is_candidate = {}
    for _, k in ipairs(candidates) do is_candidate[k] = true end
    for i, k in ipairs(opts.query_subs) do
      if not is_candidate[k] then
        fail(op, "opts.query_subs[%d] = %s is not a subtitle of '%s' with aligned frames", i, tostring(k),
          tostring(video.vid))
      end
      chosen[k] = true
    end
  else
    chosen = tasks.sample_queries(candidates, per_video, opts)
  end
  local max_len = opts.max_txt_len or 60
  local ctx = opts.sub_ctx_len or 0
  local queries = {}
  for i, pair in ipairs(video.sub2frames) do
    local s, frames = pair[1], pair[2]
    local ids = append_context({sep}, video, s, ctx, item.num_subs, max_len, chosen)
    item.segments[i] = {ids = ids, frames = frames}
    if #frames > 0 and chosen[s] then
      local q = append_tokens({cls}, video, s, max_len)
      local st = frames[1]
      local ed = math.min(math.max(st + 1, frames[#frames]), item.nframes - 1)
      queries[#queries + 1] = {ids = q, target = {st, ed}}
    end
  end
  if #queries == 0 then fail(op, "none of the chosen query subtitles of '%s' has frames", tostring(video.vid)) end
  while #queries < per_video do queries[#queries + 1] = queries[#queries] end
  item.queries = queries
  return item
end

--- Builds the item of `task` ("mlm", "mfm-nce", "mfm", "mffr", "fom", "vsm", "video").
function tasks.build_item(task, video, opts)
  if task == "mlm" then return tasks.mlm_item(video, opts) end
  if task == "mfm-nce" or task == "mfm" or task == "mffr" then return tasks.mfm_item(video, opts) end
  if task == "fom" then return tasks.fom_item(video, opts) end
  if task == "vsm" then return tasks.vsm_item(video, opts) end
  if task == "video" then return tasks.video_item(video, opts) end
  error(string.format("hero.data.tasks.build_item: unknown task '%s' (mlm, mfm-nce, mffr, fom, vsm, video)",
    tostring(task)), 2)
end

return tasks
