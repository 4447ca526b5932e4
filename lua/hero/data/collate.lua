--- hero.data.collate: the reference's collate functions (data/data.py:video_collate,
-- data/mlm.py:mlm_collate, data/mfm.py:mfm_collate, data/fom.py:fom_collate,
-- data/vsm.py:vsm_collate), producing the same dictionaries: same keys, shapes, dtypes and padding
-- (ids pad 1, labels / targets -1, masks 0 or false, features 0), hero-spec §7.6 and §2.4.
--
-- Input: arrays of items from hero.data.tasks (one per video). Every frame tensor of the batch is
-- gathered in one pass from the videos' features (hero.gather_rows: each row written once, nothing
-- stacked first): padding, the zero dummy frame of a segment without frames and the frames MFM
-- masks read ZERO, a row of zeros. The token rows are padded in C (hero.core.pad_rows) and the
-- [segment, position] masks and indices are computed from per-segment lengths with tensor ops, so
-- that no Lua loop runs over every padded position of a batch (a batch of 32 TV videos has ~1000
-- segments of ~60 positions).
local core = require "hero.core"

local collate = {}

local POS_CLAMP = 511
local PAD_ID = 1
local ZERO = -1 -- the gather_rows index of a row of zeros

local function fail(op, fmt, ...)
  error(op .. ": " .. string.format(fmt, ...), 3)
end

local function i64(flat, shape)
  if #flat == 0 then return core.zeros(shape, {dtype = "i64"}) end
  return core.tensor(flat, {dtype = "i64"}):reshape(shape)
end

local function bools(flat, shape)
  if #flat == 0 then return core.zeros(shape, {dtype = "bool"}) end
  return core.tensor(flat, {dtype = "bool"}):reshape(shape)
end

local function arange_row(n, clamp)
  local t = {}
  for j = 1, n do
    local v = j - 1
    if clamp and v > clamp then v = clamp end
    t[j] = v
  end
  return i64(t, {1, n})
end

local function check_items(op, items)
  if type(items) ~= "table" or #items == 0 then fail(op, "expected a non-empty array of items") end
  local D
  for i, it in ipairs(items) do
    if type(it) ~= "table" or not core.is_tensor(it.v_feat) or type(it.segments) ~= "table" then
      fail(op, "item %d is not an item of hero.data.tasks (v_feat, segments)", i)
    end
    if it.v_feat:dim() ~= 2 then fail(op, "item %d: v_feat must be [nframes, D], got %d dims", i, it.v_feat:dim()) end
    local d = it.v_feat:size(2)
    if D and d ~= D then fail(op, "item %d has %d-dim frame features, item 1 has %d", i, d, D) end
    D = d
    if #it.segments == 0 then fail(op, "item %d ('%s') has no segment", i, tostring(it.vid)) end
  end
  return D
end

-- The frames of the batch: each item's f32 features, and the 0-based row of each item's first
-- frame in their concatenation (what the gather indices count in).
local function frame_source(items)
  local parts, base, n = {}, {}, 0
  for i, it in ipairs(items) do
    base[i] = n
    local f = it.v_feat
    if f:dtype() ~= "f32" then f = f:float() end
    parts[i] = f
    n = n + f:size(1)
  end
  return parts, base
end

-- The rows idx (a Lua array of indices into the concatenated frames, ZERO for zeros) as an f32
-- tensor of shape lead .. {D}.
local function gather_frames(parts, idx, lead)
  local index = #idx > 0 and core.tensor(idx, {dtype = "i64"}) or core.zeros({0}, {dtype = "i64"})
  return core.gather_rows(parts, index, lead)
end

-- Per-segment columns [S, 1] (i64) of the frame count (a dummy frame counts 1) and the text length,
-- and [S, 1] bool of whether the frame is the dummy.
local function segment_columns(segs)
  local nf, nt, dummy = {}, {}, {}
  for s, seg in ipairs(segs) do
    local n = #seg.frames
    nf[s], nt[s], dummy[s] = n == 0 and 1 or n, #seg.ids, n == 0
  end
  local S = #segs
  return core.tensor(nf, {dtype = "i64"}):view(S, 1), core.tensor(nt, {dtype = "i64"}):view(S, 1),
    core.tensor(dummy, {dtype = "bool"}):view(S, 1)
end

-- Frame counts of a segment in the compact sequence: n (a dummy frame counts 1) and whether it is
-- the dummy.
local function seg_frames(seg)
  local n = #seg.frames
  if n == 0 then return 1, true end
  return n, false
end

-- The layout shared by video_collate and mlm_collate: text lengths, frame counts, max_vl, out.
local function layout(segs)
  local max_sl, max_vl, out = 0, 0, 0
  for _, seg in ipairs(segs) do
    local nt = #seg.ids
    local nf = seg_frames(seg)
    if nt > max_sl then max_sl = nt end
    if nf > max_vl then max_vl = nf end
    if nf + nt > out then out = nf + nt end
  end
  return max_sl, max_vl, out
end

-- f_attn_masks and f_gather_index (hero-spec §2.4), [S, out] i64 each, from the segments' columns
-- (nf, nt, dummy) and j = 0 .. out - 1: the mask is 1 on the frames and text (j < nf + nt) but 0 on
-- a dummy frame (j = 0); the gather index is max_vl + (j - nf) on the text (nf <= j < nf + nt), j
-- elsewhere.
local function attn_and_gather(cols, max_vl, out)
  local nf, nt, dummy = cols[1], cols[2], cols[3]
  local j = core.arange(out, {dtype = "i64"}):view(1, out)
  local valid = j:lt(nf + nt)
  local mask = core.logical_and(valid, core.logical_not(core.logical_and(dummy, j:eq(0)))):long()
  local gather = core.where(core.logical_and(j:ge(nf), valid), j - nf + max_vl, j)
  return mask, gather
end

-- Padded ids [S, L] (pad 1) and the text-only masks [S, L].
local function pad_ids(rows, L, field)
  local lists = {}
  for i, r in ipairs(rows) do lists[i] = r[field or "ids"] end
  return core.pad_rows(lists, L, PAD_ID)
end

local function bad_frame(op, it, f)
  fail(op, "video '%s': aligned frame %s is outside its %d feature frames", tostring(it.vid), tostring(f),
    it.v_feat:size(1))
end

-- f_v_feats-style gather indices [S * max_vl] for the segments of items; masked(i, f) tells
-- whether frame f of item i reads zeros. With masked, also whether each position is a masked
-- frame (mfm_collate's f_v_masks).
local function segment_frame_index(op, items, base, max_vl, masked)
  local idx, fm, k = {}, masked and {} or nil, 0
  for i, it in ipairs(items) do
    local nf, b = it.v_feat:size(1), base[i]
    for _, seg in ipairs(it.segments) do
      local frames = seg.frames
      for j = 1, max_vl do
        local f = frames[j]
        local m = false
        k = k + 1
        if f ~= nil then
          if math.type(f) ~= "integer" or f < 0 or f >= nf then bad_frame(op, it, f) end
          m = masked ~= nil and masked(i, f)
          idx[k] = m and ZERO or b + f
        else
          idx[k] = ZERO
        end
        if fm then fm[k] = m end
      end
    end
  end
  return idx, fm
end

local function all_segments(items)
  local segs = {}
  for _, it in ipairs(items) do
    for _, seg in ipairs(it.segments) do segs[#segs + 1] = seg end
  end
  return segs
end

-- video_collate's batch, plus the frame parts and bases, and with opts.masked the masks of the
-- masked frames (f_v_masks and c_v_masks as flat arrays) and their rows (mfm_collate's).
local function video_batch(op, items, opts)
  check_items(op, items)
  local segs = all_segments(items)
  local S = #segs
  local max_sl, max_vl, out = layout(segs)
  local parts, base = frame_source(items)

  local batch = {}
  batch.f_sub_input_ids, batch.f_sub_input_attn_masks = pad_ids(segs, max_sl)
  batch.f_sub_pos_ids = arange_row(max_sl, POS_CLAMP)
  local masked = opts.masked
  local fidx, fm = segment_frame_index(op, items, base, max_vl, masked)
  batch.f_v_feats = gather_frames(parts, fidx, {S, max_vl})
  batch.f_v_pos_ids = arange_row(max_vl)
  batch.f_attn_masks, batch.f_gather_index = attn_and_gather({segment_columns(segs)}, max_vl, out)

  local B, L_c = #items, 0
  for _, it in ipairs(items) do L_c = math.max(L_c, it.v_feat:size(1)) end
  local cidx, nframes, k = {}, {}, 0
  local cm, tgt = masked and {} or nil, masked and {} or nil
  for i, it in ipairs(items) do
    local nf, b = it.v_feat:size(1), base[i]
    nframes[i] = nf
    for l = 0, L_c - 1 do
      local m = false
      k = k + 1
      if l < nf then
        m = masked ~= nil and masked(i, l)
        cidx[k] = m and ZERO or b + l
        if m then tgt[#tgt + 1] = b + l end
      else
        cidx[k] = ZERO
      end
      if cm then cm[k] = m end
    end
  end
  batch.c_v_feats = gather_frames(parts, cidx, {B, L_c})
  local pos = core.arange(L_c, {dtype = "i64"}):view(1, L_c)
  batch.c_pos_ids = pos:expand(B, L_c):contiguous()
  batch.c_attn_masks = pos:lt(core.tensor(nframes, {dtype = "i64"}):view(B, 1)):long()
  local num_subs, s2f = {}, {}
  for i, it in ipairs(items) do
    num_subs[i] = #it.segments
    s2f[i] = it.sub2frames
  end
  batch.num_subs, batch.sub_idx2frame_idx = num_subs, s2f
  return batch, parts, {f_v_masks = fm, c_v_masks = cm, rows = tgt}
end

--- video_collate: the representation-path tensors (hero-spec §7.6) of items from
-- tasks.video_item (or mfm/fom/vsm items). opts.masked(i, frame) -> true zeroes that frame of item
-- i in f_v_feats and c_v_feats (MFM).
function collate.video_collate(items, opts)
  return (video_batch("hero.data.collate.video_collate", items, opts or {}))
end

--- mlm_collate: items from tasks.mlm_item -> {input_ids, position_ids (no clamp), v_feat,
-- attn_masks, gather_index, txt_mask_tgt, txt_labels} (hero-spec §4.1).
function collate.mlm_collate(items)
  local op = "hero.data.collate.mlm_collate"
  check_items(op, items)
  local segs = all_segments(items)
  local S = #segs
  local max_sl, max_vl, out = layout(segs)
  local parts, base = frame_source(items)
  local batch = {}
  batch.input_ids = pad_ids(segs, max_sl)
  batch.position_ids = arange_row(max_sl)
  local fidx = segment_frame_index(op, items, base, max_vl)
  batch.v_feat = gather_frames(parts, fidx, {S, max_vl})
  local cols = {segment_columns(segs)}
  batch.attn_masks, batch.gather_index = attn_and_gather(cols, max_vl, out)
  local lists = {}
  for s, seg in ipairs(segs) do
    local lab = seg.labels
    if type(lab) ~= "table" or #lab ~= #seg.ids then
      fail(op, "segment %d has %s labels for %d ids", s, type(lab) == "table" and #lab or "no", #seg.ids)
    end
    lists[s] = lab
  end
  -- txt_mask_tgt [S, out]: the text positions nf <= j < nf + nt whose label (labels[j - nf], -1:
  -- none) is set; txt_labels: those labels in row-major order.
  local labels = core.pad_rows(lists, max_sl, -1)
  if max_sl > 0 then
    local nf, nt = cols[1], cols[2]
    local j = core.arange(out, {dtype = "i64"}):view(1, out)
    local text = core.logical_and(j:ge(nf), j:lt(nf + nt))
    local picked = labels:gather(2, (j - nf):clamp(0, max_sl - 1))
    batch.txt_mask_tgt = core.logical_and(text, picked:ne(-1))
    batch.txt_labels = labels:masked_select(labels:ne(-1))
  else
    batch.txt_mask_tgt = core.zeros({S, out}, {dtype = "bool"})
    batch.txt_labels = core.zeros({0}, {dtype = "i64"})
  end
  return batch
end

--- mfm_collate (also MFFR): video_collate with the frames of each item.c_mask zeroed at both
-- levels, plus f_v_masks [S, max_vl], c_v_masks [B, L_c] (bool, padding false) and feat_targets
-- (the raw features of the masked frames, row-major over (video, frame)).
function collate.mfm_collate(items)
  local op = "hero.data.collate.mfm_collate"
  check_items(op, items)
  for i, it in ipairs(items) do
    if type(it.c_mask) ~= "table" or #it.c_mask ~= it.v_feat:size(1) then
      fail(op, "item %d has no c_mask of %d booleans (build it with hero.data.tasks.mfm_item)", i, it.v_feat:size(1))
    end
  end
  local function masked(i, f) return items[i].c_mask[f + 1] == true end
  local batch, parts, masks = video_batch(op, items, {masked = masked})
  local S, max_vl = batch.f_v_feats:size(1), batch.f_v_feats:size(2)
  local B, L_c = batch.c_v_feats:size(1), batch.c_v_feats:size(2)
  batch.f_v_masks = bools(masks.f_v_masks, {S, max_vl})
  batch.c_v_masks = bools(masks.c_v_masks, {B, L_c})
  batch.feat_targets = gather_frames(parts, masks.rows)
  return batch
end

--- fom_collate: video_collate plus shuffled_orders (identity padding), targets (-1 padding), and
-- the pairwise reordered_frame_idx / binary_targets the reference builds (unused by the model).
function collate.fom_collate(items)
  local op = "hero.data.collate.fom_collate"
  check_items(op, items)
  for i, it in ipairs(items) do
    if type(it.orders) ~= "table" or type(it.targets) ~= "table" or #it.orders ~= it.v_feat:size(1) then
      fail(op, "item %d has no orders/targets for its %d frames (build it with hero.data.tasks.fom_item)", i,
        it.v_feat:size(1))
    end
  end
  local batch = collate.video_collate(items)
  local B, L_c = batch.c_v_feats:size(1), batch.c_v_feats:size(2)
  local ord, tgt = {}, {}
  for _, it in ipairs(items) do
    local nf = #it.orders
    for l = 1, L_c do
      ord[#ord + 1] = l <= nf and it.orders[l] or l - 1
      tgt[#tgt + 1] = l <= nf and it.targets[l] or -1
    end
  end
  batch.shuffled_orders = i64(ord, {B, L_c})
  batch.targets = i64(tgt, {B, L_c})
  local pairs_idx, bin = {}, {}
  for c, it in ipairs(items) do
    local t = it.targets
    local nf = #t
    local base = (c - 1) * L_c
    for i = 0, nf - 1 do
      if t[i + 1] ~= -1 then
        for j = i + 1, nf - 1 do
          if t[j + 1] ~= -1 then
            pairs_idx[#pairs_idx + 1] = base + i
            pairs_idx[#pairs_idx + 1] = base + j
            bin[#bin + 1] = t[i + 1] > t[j + 1] and 0 or 1
            pairs_idx[#pairs_idx + 1] = base + j
            pairs_idx[#pairs_idx + 1] = base + i
            bin[#bin + 1] = t[j + 1] > t[i + 1] and 0 or 1
          end
        end
      end
    end
  end
  batch.reordered_frame_idx = i64(pairs_idx, {#pairs_idx})
  batch.binary_targets = i64(bin, {#bin})
  return batch
end

--- vsm_collate: video_collate plus the queries of every item, video-major: query_input_ids
-- (pad 1), query_pos_ids (arange, no clamp), query_attn_masks, targets [Nq, 2], q_vidx (batch
-- index of each query's video; the LAST index when a video occurs twice, as in the reference)
-- and vids.
function collate.vsm_collate(items)
  local op = "hero.data.collate.vsm_collate"
  check_items(op, items)
  local batch = collate.video_collate(items)
  local vids, vid2idx = {}, {}
  for i, it in ipairs(items) do
    if type(it.queries) ~= "table" or #it.queries == 0 then
      fail(op, "item %d has no queries (build it with hero.data.tasks.vsm_item)", i)
    end
    vids[i] = it.vid
    vid2idx[it.vid] = i - 1
  end
  local qs, vidx, tg = {}, {}, {}
  local Lq = 0
  for _, it in ipairs(items) do
    for _, q in ipairs(it.queries) do
      qs[#qs + 1] = q
      vidx[#vidx + 1] = vid2idx[it.vid]
      tg[#tg + 1] = q.target[1]
      tg[#tg + 1] = q.target[2]
      if #q.ids > Lq then Lq = #q.ids end
    end
  end
  batch.query_input_ids, batch.query_attn_masks = pad_ids(qs, Lq)
  batch.query_pos_ids = arange_row(Lq)
  batch.targets = i64(tg, {#qs, 2})
  batch.q_vidx = i64(vidx, {#qs})
  batch.vids = vids
  return batch
end

--- The collate of `task` ("mlm", "mfm-nce", "mfm", "mffr", "fom", "vsm", "video").
function collate.for_task(task)
  if task == "mlm" then return collate.mlm_collate end
  if task == "mfm-nce" or task == "mfm" or task == "mffr" then return collate.mfm_collate end
  if task == "fom" then return collate.fom_collate end
  if task == "vsm" then return collate.vsm_collate end
  if task == "video" then return collate.video_collate end
  error(string.format("hero.data.collate.for_task: unknown task '%s' (mlm, mfm-nce, mffr, fom, vsm, video)",
    tostring(task)), 2)
end

return collate
