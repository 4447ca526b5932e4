--- hero.data.downstream: the fine-tuning data of HERO (hero-spec §5): query, question, statement
-- and caption items on top of the representation items of hero.data.tasks, the reference's
-- collates (data/vcmr.py:vcmr_collate, vcmr_full_eval_collate, data/videoQA.py:video_qa_collate,
-- data/violin.py:violin_collate, data/tvc.py:TvcTrainDataset.collate / TvcValDataset.collate),
-- datasets over the reference's text databases and a resumable loader.
--
--   local ds = hero.data.downstream.QueryDataset{task = "vcmr", video = video_ds,
--                                                query_db = "txt_db/tvr_train.db", max_txt_len = 60}
--   local L = hero.data.downstream.Loader{dataset = ds, batch_size = 32, seed = 77}
--   local batch = L:next()
--
-- Targets follow the reference exactly (frame interval Δ, nf frames after the max_clip_len cut):
--   VCMR / TVQA  st = min(floor(t0/Δ), nf-1), ed = min(max(ceil(t1/Δ)-1, st+1), nf-1)
--   TVC          st = min(floor(t0/Δ), nf),   ed = min(max(round_half_even(t1/Δ), st+1), nf)
-- A TVQA "st-ed" string that does not parse (or gives nan/inf) is the target {-1, -1}.
local core = require "hero.core"
local json = require "hero.json"
local tasks = require "hero.data.tasks"
local collate = require "hero.data.collate"
local data_util = require "hero.data.util"
local txt_db = require "hero.data.txt_db"

local M = {}

local PAD_ID = 1
local POS_CLAMP = 511

local function fail(op, fmt, ...)
  error(op .. ": " .. string.format(fmt, ...), 3)
end

local function i64(flat, shape)
  if #flat == 0 then return core.zeros(shape, {dtype = "i64"}) end
  return core.tensor(flat, {dtype = "i64"}):reshape(shape)
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

-- rows: arrays of ids; pads with `pad` to the longest row; returns ids [N, L], masks [N, L].
local function pad_rows(rows, pad)
  local L = 0
  for _, r in ipairs(rows) do if #r > L then L = #r end end
  local ids, masks = {}, {}
  for _, r in ipairs(rows) do
    for j = 1, L do
      if j <= #r then
        ids[#ids + 1], masks[#masks + 1] = r[j], 1
      else
        ids[#ids + 1], masks[#masks + 1] = pad, 0
      end
    end
  end
  return i64(ids, {#rows, L}), i64(masks, {#rows, L}), L
end

local function is_null(v) return v == nil or v == json.null end

-- The options of tasks.video_item among a downstream builder's (which also holds frame_interval,
-- train, ...: video_item refuses keys it does not read).
local function video_opts(opts)
  return {special_ids = opts.special_ids, sub_ctx_len = opts.sub_ctx_len, max_txt_len = opts.max_txt_len,
          truncate = opts.truncate}
end

local function copy_ids(op, t, what)
  if type(t) ~= "table" then fail(op, "%s must be an array of token ids, got %s", what, type(t)) end
  local out = {}
  for i, v in ipairs(t) do
    if math.type(v) ~= "integer" then fail(op, "%s[%d] is not an integer id (%s)", what, i, tostring(v)) end
    out[i] = v
  end
  return out
end

-- ------------------------------------------------------------------ targets

--- Python's round() of a float: to the nearest integer, halves to even.
function M.round_half_even(x)
  local f = math.floor(x)
  local d = x - f -- exact for doubles
  if d > 0.5 or (d == 0.5 and f % 2 == 1) then f = f + 1 end
  return math.tointeger(f) or f
end

local function finite(x) return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge end

--- VCMR / TVQA frame targets of a moment ts = {t0, t1} (seconds): st, ed (0-based, ed inclusive)
-- as VcmrDataset.get_st_ed_label with max_idx = nframes - 1.
function M.st_ed_label(ts, frame_interval, max_idx)
  local op = "hero.data.downstream.st_ed_label"
  if type(ts) ~= "table" or type(ts[1]) ~= "number" or type(ts[2]) ~= "number" then
    fail(op, "ts must be {start, end} in seconds")
  end
  if not finite(ts[1]) or not finite(ts[2]) then
    fail(op, "ts {%s, %s} is not finite", tostring(ts[1]), tostring(ts[2]))
  end
  -- Python's unbounded ints: a huge time is capped at the last frame like any other
  local st = math.min(math.floor(ts[1] / frame_interval), max_idx)
  local ed = math.min(math.max(math.ceil(ts[2] / frame_interval) - 1, st + 1), max_idx)
  st, ed = math.tointeger(st), math.tointeger(ed)
  if not st or not ed then fail(op, "ts {%s, %s} is out of range", tostring(ts[1]), tostring(ts[2])) end
  return st, ed
end

-- Python's float() on a piece of a split string (hex and empty strings are refused, as there).
local function py_float(s)
  s = s:gsub("^%s+", ""):gsub("%s+$", "")
  if s == "" or s:find("[xXpP]") then return nil end
  local low = s:lower():gsub("^[+-]", "")
  if low == "nan" or low == "inf" or low == "infinity" then return 0 / 0 end
  if not s:match("^[+-]?[%d.]") then return nil end
  return tonumber(s)
end

--- The TVQA target of a "st-ed" string: st, ed, or -1, -1 when it does not parse, is nil / null or
-- is not finite (VideoQaDataset.get_st_ed_label's except branch).
function M.qa_st_ed_label(ts, frame_interval, max_idx)
  if type(ts) ~= "string" then return -1, -1 end
  local parts = {}
  for piece in (ts .. "-"):gmatch("(.-)%-") do parts[#parts + 1] = piece end
  if #parts < 2 then return -1, -1 end
  local st, ed = py_float(parts[1]), py_float(parts[2])
  if not (finite(st) and finite(ed)) then return -1, -1 end
  return M.st_ed_label({st, ed}, frame_interval, max_idx)
end

--- TVC segment of a clip ts = {t0, t1}: st, ed (0-based, ed exclusive) with max_idx = nframes
-- (TvcTrainDataset.get_st_ed_label: Python's banker's round for the end).
function M.tvc_st_ed(ts, frame_interval, nframes)
  local op = "hero.data.downstream.tvc_st_ed"
  if type(ts) ~= "table" or not finite(ts[1]) or not finite(ts[2]) then
    fail(op, "ts must be {start, end} finite seconds")
  end
  -- clamped as floats first: the frame index of a huge time does not fit an integer, and Python's
  -- unbounded ints cap it at nframes like any other
  local st = math.min(math.floor(ts[1] / frame_interval), nframes)
  local ed = math.min(math.max(M.round_half_even(ts[2] / frame_interval), st + 1), nframes)
  st, ed = math.tointeger(st), math.tointeger(ed)
  if not st or not ed then fail(op, "ts {%s, %s} is out of range", tostring(ts[1]), tostring(ts[2])) end
  return st, ed
end

--- The id of the VIOLIN statement paired with qid ("vl6660-0" <-> "vl6660-1"), as
-- get_paired_statement_id.
function M.paired_statement_id(qid)
  local stem, label = tostring(qid):match("^(.*)%-(%d+)$")
  if not stem then
    error(string.format("hero.data.downstream.paired_statement_id: '%s' does not end in -0 or -1", tostring(qid)), 2)
  end
  return stem .. "-" .. tostring(1 - math.tointeger(tonumber(label)))
end

-- ------------------------------------------------------------------ items

local function specials(opts, op)
  local sp = opts.special_ids
  if type(sp) ~= "table" or math.type(sp.CLS) ~= "integer" or math.type(sp.SEP) ~= "integer" then
    fail(op, "opts.special_ids (the text db's meta.json: CLS, SEP, BOS, EOS) is required")
  end
  return sp
end

local function interval(opts) return opts.frame_interval or 1.5 end

--- VCMR item (VcmrDataset.__getitem__): the representation item of the video plus its queries,
-- each {ids = [CLS] + input_ids, target = {st, ed}, qid}. examples: array of query db values
-- ({input_ids, target = {t0, t1} or nil, qid}); an example may carry st_ed = {st, ed} instead of
-- target (a recorded target). A missing target gives {-1, -1} (test splits).
-- opts: special_ids, sub_ctx_len, frame_interval (1.5).
function M.vcmr_item(video, examples, opts)
  local op = "hero.data.downstream.vcmr_item"
  opts = opts or {}
  local sp = specials(opts, op)
  local item = tasks.video_item(video, video_opts(opts))
  local max_idx = item.nframes - 1
  item.queries = {}
  for i, ex in ipairs(examples) do
    local ids = {sp.CLS}
    for _, t in ipairs(copy_ids(op, ex.input_ids, string.format("query %d input_ids", i))) do ids[#ids + 1] = t end
    local tgt
    if ex.st_ed then
      tgt = {ex.st_ed[1], ex.st_ed[2]}
    elseif not is_null(ex.target) then
      tgt = {M.st_ed_label(ex.target, interval(opts), max_idx)}
    else
      tgt = {-1, -1}
    end
    item.queries[i] = {ids = ids, target = tgt, qid = ex.qid}
  end
  return item
end

-- Representation copies of an item whose every segment text is extended by `extra` ids.
local function extended_copy(item, extra)
  local segs = {}
  for s, seg in ipairs(item.segments) do
    local ids = {}
    for j, t in ipairs(seg.ids) do ids[j] = t end
    for _, t in ipairs(extra) do ids[#ids + 1] = t end
    segs[s] = {ids = ids, frames = seg.frames}
  end
  return {vid = item.vid, v_feat = item.v_feat, nframes = item.nframes, sub2frames = item.sub2frames,
          num_subs = item.num_subs, segments = segs}
end

--- Video QA item (VideoQaDataset.__getitem__): per question and answer a copy of the video whose
-- every segment text is [SEP] + subtitles + qa with qa = [SEP] + q + [SEP] + a; the qa ids;
-- the answer target and the ts target. examples: array of {input_ids = {q, a0, a1, ...},
-- target = answer index or nil, ts = "st-ed" or nil, qid} (ts_target = {st, ed} overrides ts).
function M.videoqa_item(video, examples, opts)
  local op = "hero.data.downstream.videoqa_item"
  opts = opts or {}
  local sp = specials(opts, op)
  local base = tasks.video_item(video, video_opts(opts))
  local item = {vid = base.vid, copies = {}, qa_ids = {}, targets = {}, ts_targets = {}, qids = {},
                answer_counts = {}}
  for i, ex in ipairs(examples) do
    local lists = ex.input_ids
    if type(lists) ~= "table" or #lists < 2 then
      fail(op, "question %d: input_ids must be {question, answer1, ...} (%s)", i, tostring(ex.qid))
    end
    item.answer_counts[i] = #lists - 1
    local q = copy_ids(op, lists[1], "question input_ids")
    for a = 2, #lists do
      local qa = {sp.SEP}
      for _, t in ipairs(q) do qa[#qa + 1] = t end
      qa[#qa + 1] = sp.SEP
      for _, t in ipairs(copy_ids(op, lists[a], "answer input_ids")) do qa[#qa + 1] = t end
      item.copies[#item.copies + 1] = extended_copy(base, qa)
      item.qa_ids[#item.qa_ids + 1] = qa
    end
    local tgt = -1
    if not is_null(ex.target) then
      if math.type(ex.target) ~= "integer" then fail(op, "question %d: target must be an integer", i) end
      tgt = ex.target
    end
    item.targets[i] = tgt
    if ex.ts_target then
      item.ts_targets[i] = {ex.ts_target[1], ex.ts_target[2]}
    else
      item.ts_targets[i] = {M.qa_st_ed_label(ex.ts, interval(opts), base.nframes - 1)}
    end
    item.qids[i] = ex.qid
  end
  return item
end

local function truthy(v) return not (is_null(v) or v == false or v == 0) end

--- VIOLIN item (ViolinDataset.__getitem__): per statement a copy of the video whose segment
-- texts end with [SEP] + statement, the statement ids and the label (1 when the example's target
-- is truthy, else 0). examples: {input_ids, target, qid} (training passes a statement and its pair).
function M.violin_item(video, examples, opts)
  local op = "hero.data.downstream.violin_item"
  opts = opts or {}
  local sp = specials(opts, op)
  local base = tasks.video_item(video, video_opts(opts))
  local item = {vid = base.vid, copies = {}, q_ids = {}, targets = {}, qids = {}}
  for i, ex in ipairs(examples) do
    local q = {sp.SEP}
    for _, t in ipairs(copy_ids(op, ex.input_ids, "statement input_ids")) do q[#q + 1] = t end
    item.copies[i] = extended_copy(base, q)
    item.q_ids[i] = q
    item.targets[i] = truthy(ex.target) and 1 or 0
    item.qids[i] = ex.qid
  end
  return item
end

--- TVC item (TvcTrainDataset.__getitem__): the representation item plus its captions, each
-- {ids = ([BOS] + caption)[:max_txt_len], tgt = (caption + [EOS])[:max_txt_len], range = {st, ed}}.
-- examples: {input_ids, ts = {t0, t1}, clip_id} (range = {st, ed} overrides ts; input_ids may be
-- absent for inference clips). opts: special_ids, sub_ctx_len, frame_interval, max_txt_len (-1: all).
function M.tvc_item(video, examples, opts)
  local op = "hero.data.downstream.tvc_item"
  opts = opts or {}
  local sp = specials(opts, op)
  local bos, eos = sp.BOS or sp.CLS, sp.EOS or sp.SEP
  local item = tasks.video_item(video, video_opts(opts))
  local max_len = opts.max_txt_len or -1
  item.captions = {}
  for i, ex in ipairs(examples) do
    local st, ed
    if ex.range then
      st, ed = ex.range[1], ex.range[2]
    else
      st, ed = M.tvc_st_ed(ex.ts, interval(opts), item.nframes)
    end
    local cap = {range = {st, ed}, clip_id = ex.clip_id, ts = ex.ts, refs = ex.refs}
    if ex.input_ids ~= nil then
      local toks = copy_ids(op, ex.input_ids, string.format("caption %d input_ids", i))
      local ids, tgt = {bos}, {}
      for _, t in ipairs(toks) do
        ids[#ids + 1] = t
        tgt[#tgt + 1] = t
      end
      tgt[#tgt + 1] = eos
      if max_len >= 0 then
        while #ids > max_len do ids[#ids] = nil end
        while #tgt > max_len do tgt[#tgt] = nil end
      end
      cap.ids, cap.tgt = ids, tgt
    end
    item.captions[i] = cap
  end
  return item
end

-- ------------------------------------------------------------------ collates

--- vcmr_collate: video_collate of the items plus query_input_ids (pad 1), query_pos_ids (arange,
-- no clamp), query_attn_masks, targets [Nq, 2], vids and q_vidx (the LAST batch index of each
-- query's video when a video occurs twice, as the reference). opts.qids adds batch.qids.
function M.vcmr_collate(items, opts)
  local op = "hero.data.downstream.vcmr_collate"
  opts = opts or {}
  for i, it in ipairs(items) do
    if type(it) ~= "table" or type(it.queries) ~= "table" or #it.queries == 0 then
      fail(op, "item %d has no queries (build it with hero.data.downstream.vcmr_item)", i)
    end
  end
  local batch = collate.video_collate(items)
  local vids, vid2idx = {}, {}
  for i, it in ipairs(items) do
    vids[i] = it.vid
    vid2idx[it.vid] = i - 1
  end
  local rows, tg, vidx, qids = {}, {}, {}, {}
  for _, it in ipairs(items) do
    for _, q in ipairs(it.queries) do
      rows[#rows + 1] = q.ids
      tg[#tg + 1] = q.target[1]
      tg[#tg + 1] = q.target[2]
      vidx[#vidx + 1] = vid2idx[it.vid]
      qids[#qids + 1] = q.qid
    end
  end
  local L
  batch.query_input_ids, batch.query_attn_masks, L = pad_rows(rows, PAD_ID)
  batch.query_pos_ids = arange_row(L)
  batch.targets = i64(tg, {#rows, 2})
  batch.q_vidx = i64(vidx, {#rows})
  batch.vids = vids
  if opts.qids then batch.qids = qids end
  return batch
end

--- vcmr_full_eval_collate: the query side only (query_input_ids / pos / masks, targets), vids
-- (each query's ground-truth video) and qids. items: {ids, target, qid, vid}.
function M.query_collate(queries)
  local rows, tg, vids, qids = {}, {}, {}, {}
  for i, q in ipairs(queries) do
    rows[i] = q.ids
    tg[#tg + 1] = q.target[1]
    tg[#tg + 1] = q.target[2]
    vids[i], qids[i] = q.vid, q.qid
    if vids[i] == nil then vids[i] = -1 end -- an unknown video (test splits), the reference's vid = -1
  end
  local b = {}
  local L
  b.query_input_ids, b.query_attn_masks, L = pad_rows(rows, PAD_ID)
  b.query_pos_ids = arange_row(L)
  b.targets = i64(tg, {#rows, 2})
  b.vids, b.qids = vids, qids
  return b
end

local function copies_of(op, items)
  local all = {}
  for i, it in ipairs(items) do
    if type(it) ~= "table" or type(it.copies) ~= "table" then
      fail(op, "item %d is not a question/statement item of hero.data.downstream", i)
    end
    for _, c in ipairs(it.copies) do all[#all + 1] = c end
  end
  return all
end

--- video_qa_collate: video_collate of every answer copy plus targets [N, 1], ts_targets [N, 2],
-- qa_input_ids (pad 1), qa_pos_ids (arange clamped at 511), qa_attn_masks. opts.qids adds qids.
function M.videoqa_collate(items, opts)
  local op = "hero.data.downstream.videoqa_collate"
  opts = opts or {}
  local batch = collate.video_collate(copies_of(op, items))
  -- the model views the rows as [questions, answers]: a question with another number of answers
  -- would be regrouped with its neighbours' answers without a word
  local function question_name(i, k, qid)
    if qid ~= nil then return string.format("question '%s'", tostring(qid)) end
    return string.format("question %d of item %d", k, i)
  end
  local answers, first
  for i, it in ipairs(items) do
    if type(it.answer_counts) ~= "table" then
      fail(op, "item %d has no answer_counts (build it with hero.data.downstream.videoqa_item)", i)
    end
    for k, n in ipairs(it.answer_counts) do
      if answers == nil then
        answers, first = n, question_name(i, k, it.qids[k])
      elseif n ~= answers then
        fail(op, "%s has %d answers but %s has %d: every question of a batch needs the same number",
          question_name(i, k, it.qids[k]), n, first, answers)
      end
    end
  end
  local rows, tg, ts, qids = {}, {}, {}, {}
  for _, it in ipairs(items) do
    for _, r in ipairs(it.qa_ids) do rows[#rows + 1] = r end
    for i, t in ipairs(it.targets) do
      tg[#tg + 1] = t
      ts[#ts + 1] = it.ts_targets[i][1]
      ts[#ts + 1] = it.ts_targets[i][2]
      qids[#qids + 1] = it.qids[i]
    end
  end
  local L
  batch.qa_input_ids, batch.qa_attn_masks, L = pad_rows(rows, PAD_ID)
  batch.qa_pos_ids = arange_row(L, POS_CLAMP)
  batch.targets = i64(tg, {#tg, 1})
  batch.ts_targets = i64(ts, {#tg, 2})
  if opts.qids then batch.qids = qids end
  return batch
end

--- violin_collate: video_collate of every statement copy plus targets [N, 1], q_input_ids (pad 1),
-- q_pos_ids (arange clamped at 511), q_attn_masks. opts.qids adds qids.
function M.violin_collate(items, opts)
  local op = "hero.data.downstream.violin_collate"
  opts = opts or {}
  local batch = collate.video_collate(copies_of(op, items))
  local rows, tg, qids = {}, {}, {}
  for _, it in ipairs(items) do
    for i, r in ipairs(it.q_ids) do
      rows[#rows + 1] = r
      tg[#tg + 1] = it.targets[i]
      qids[#qids + 1] = it.qids[i]
    end
  end
  local L
  batch.q_input_ids, batch.q_attn_masks, L = pad_rows(rows, PAD_ID)
  batch.q_pos_ids = arange_row(L, POS_CLAMP)
  batch.targets = i64(tg, {#tg, 1})
  if opts.qids then batch.qids = qids end
  return batch
end

--- TvcTrainDataset.collate: cap_input_ids (pad 1), cap_pos_ids (arange), cap_tgt_ids (pad -1),
-- cap_attn_mask [Ncap, longest segment] (1 on each caption's ed - st frames), clip_ranges (per
-- video the {st, ed} of its captions) and the representation tensors. Captions without ids (the
-- validation / inference collate, TvcValDataset.collate) give only cap_attn_mask and clip_ranges,
-- plus vid_names, clip_ids, all_ts and gts (the references) as metadata.
function M.tvc_collate(items)
  local op = "hero.data.downstream.tvc_collate"
  local ranges, masks, ids, tgts = {}, {}, {}, {}
  local meta = {vid_names = {}, clip_ids = {}, all_ts = {}, gts = {}}
  local with_text
  local maxlen = 0
  for i, it in ipairs(items) do
    if type(it) ~= "table" or type(it.captions) ~= "table" then
      fail(op, "item %d has no captions (build it with hero.data.downstream.tvc_item)", i)
    end
    local r = json.array()
    for _, c in ipairs(it.captions) do
      r[#r + 1] = json.array {c.range[1], c.range[2]}
      local n = math.max(c.range[2] - c.range[1], 0)
      masks[#masks + 1] = n
      if n > maxlen then maxlen = n end
      local has = c.ids ~= nil
      if with_text == nil then with_text = has end
      if has ~= with_text then fail(op, "some captions have token ids and others do not") end
      if has then
        ids[#ids + 1], tgts[#tgts + 1] = c.ids, c.tgt
      end
      meta.vid_names[#meta.vid_names + 1] = it.vid
      meta.clip_ids[#meta.clip_ids + 1] = c.clip_id
      meta.all_ts[#meta.all_ts + 1] = c.ts
      meta.gts[#meta.gts + 1] = c.refs
    end
    ranges[i] = r
  end
  if #masks == 0 then fail(op, "the batch has no caption") end
  local batch = collate.video_collate(items)
  local m = {}
  for _, n in ipairs(masks) do
    for j = 1, maxlen do m[#m + 1] = j <= n and 1 or 0 end
  end
  batch.cap_attn_mask = i64(m, {#masks, maxlen})
  batch.clip_ranges = ranges
  if with_text then
    local L, _
    batch.cap_input_ids, _, L = pad_rows(ids, PAD_ID)
    batch.cap_pos_ids = arange_row(L)
    batch.cap_tgt_ids = pad_rows(tgts, -1)
  else
    for k, v in pairs(meta) do batch[k] = v end
  end
  return batch
end

-- ------------------------------------------------------------------ datasets

M.TASKS = {vcmr = true, vr = true, videoqa = true, violin = true, tvc = true}

local QueryDataset = {}
QueryDataset.__index = QueryDataset
QueryDataset.__name = "hero.data.downstream.QueryDataset"

local function check_opts(op, opts, known)
  if type(opts) ~= "table" then fail(op, "expected an options table") end
  local ok = {}
  for _, k in ipairs(known) do ok[k] = true end
  for k in pairs(opts) do
    if not ok[k] then fail(op, "unknown option '%s' (%s)", tostring(k), table.concat(known, ", ")) end
  end
end

local function open_db(op, db)
  if type(db) == "string" then return txt_db.open(db), true end
  if type(db) ~= "table" or type(db.get) ~= "function" then
    fail(op, "the text db must be a directory or an open hero.data text db")
  end
  return db, false
end

local function special_ids(meta)
  local sp = {}
  for _, k in ipairs {"CLS", "SEP", "PAD", "MASK", "BOS", "EOS", "UNK"} do sp[k] = meta[k] end
  return sp
end

--- QueryDataset{task = "vcmr" | "vr" | "videoqa" | "violin", video = a hero.data dataset
--   (VideoSubDataset), query_db = dir or TxtDb, max_txt_len = -1, frame_interval = 1.5,
--   train = true, ids = {...}, sub_ctx_len = video's}
-- The queries are the ids TxtTokLmdb(db, max_txt_len) keeps (id2len.json order, longer ones
-- dropped; -1 keeps all), or opts.ids. Each query's video is query2video.json's entry (else the
-- example's vid / vid_name). :item(qid) builds the item of one query: VCMR one query, TVQA one
-- question with its answers, VIOLIN the statement and, when training, its pair.
function M.QueryDataset(opts)
  local op = "hero.data.downstream.QueryDataset"
  check_opts(op, opts, {"task", "video", "query_db", "max_txt_len", "frame_interval", "train", "ids", "sub_ctx_len"})
  local task = opts.task
  if task ~= "vcmr" and task ~= "vr" and task ~= "videoqa" and task ~= "violin" then
    fail(op, "unknown task '%s' (vcmr, vr, videoqa, violin; TVC uses CaptionDataset)", tostring(task))
  end
  local video = opts.video
  if type(video) ~= "table" or type(video.get) ~= "function" then
    fail(op, "opts.video must be a hero.data dataset of videos (VideoSubDataset)")
  end
  if video.video_only and task ~= "vcmr" and task ~= "vr" then
    fail(op, "a video-only dataset serves the retrieval tasks (vcmr, vr: DiDeMo and MSR-VTT video_only); %s reads "
      .. "subtitles", task)
  end
  local options = require "hero.models.options"
  options.check(op, opts, {task = "any", video = "any", query_db = "any", max_txt_len = "integer >= -1",
    frame_interval = "number > 0", train = "boolean", ids = "list", sub_ctx_len = "integer >= 0"}, 2)
  local db, own = open_db(op, opts.query_db)
  local self = setmetatable({task = task, video = video, db = db, _own = own, train = opts.train ~= false,
    frame_interval = opts.frame_interval or 1.5, max_txt_len = opts.max_txt_len or -1,
    sub_ctx_len = opts.sub_ctx_len or video.sub_ctx_len or 0}, QueryDataset)
  if math.type(self.max_txt_len) ~= "integer" then fail(op, "opts.max_txt_len must be an integer") end
  local meta = db.meta and db:meta() or {}
  self._special = special_ids(meta)
  if math.type(self._special.CLS) ~= "integer" or math.type(self._special.SEP) ~= "integer" then
    fail(op, "the query db's meta.json lacks integer CLS and SEP ids")
  end
  self._q2v = db.has_file and db:has_file("query2video") and db:json("query2video") or {}
  if (task == "videoqa" or task == "violin") and next(self._q2v) == nil then
    fail(op, "the %s query db has no query2video.json", task)
  end
  local ids = opts.ids
  if ids == nil then ids = db:ids_with_max_len(self.max_txt_len) end
  local list = {}
  for i, id in ipairs(ids) do
    if type(id) ~= "string" then fail(op, "query id %d is not a string", i) end
    list[i] = id
  end
  self._ids = list
  self._id2len = db.has_file and db:has_file("id2len") and db:json("id2len") or {}
  return self
end

function QueryDataset:ids() return self._ids end
function QueryDataset:__len() return #self._ids end
function QueryDataset:special_ids() return self._special end

--- Length of a query for bucketing (id2len.json; a QA entry counts question + longest answer).
function QueryDataset:length(qid)
  local n = self._id2len[qid]
  if math.type(n) == "integer" then return n end
  if type(n) == "table" and #n >= 2 then
    local best = 0
    for i = 2, #n do if n[i] > best then best = n[i] end end
    return n[1] + best
  end
  return 0
end

--- The decoded query db value of qid (with qid set), or nil and the reason.
function QueryDataset:example(qid)
  if self.db == nil then fail("QueryDataset:example", "the dataset is closed") end
  local ex = self.db:get(qid)
  if ex == nil then return nil, string.format("query '%s' is not in the query db", qid) end
  if type(ex) ~= "table" then
    return nil, string.format("query '%s': its db value is a %s, not an annotation table", qid, type(ex))
  end
  ex.qid = qid
  return ex
end

--- The video id of a query.
function QueryDataset:video_of(qid, ex)
  local v = self._q2v[qid]
  if v == nil and ex then v = ex.vid or ex.vid_name end
  return v
end

--- The item of query qid (see the constructor), or nil and the reason.
function QueryDataset:item(qid)
  local ex, why = self:example(qid)
  if not ex then return nil, why end
  local vid = self:video_of(qid, ex)
  if type(vid) ~= "string" then return nil, string.format("query '%s' names no video", qid) end
  local video, vwhy = self.video:get(vid)
  if video == nil then return nil, vwhy end
  if video.v_feat:size(1) == 0 then return nil, string.format("video '%s' has no frame", vid) end
  local opts = {special_ids = self._special, sub_ctx_len = self.sub_ctx_len, frame_interval = self.frame_interval}
  if self.task == "vcmr" or self.task == "vr" then
    ex.vid = vid
    local it = M.vcmr_item(video, {ex}, opts)
    it.queries[1].vid = vid
    return it
  elseif self.task == "videoqa" then
    ex.target = is_null(ex.target) and ex.answer_idx or ex.target
    return M.videoqa_item(video, {ex}, opts)
  else
    local exs = {ex}
    if self.train then
      local pid = M.paired_statement_id(qid)
      local pex, pwhy = self:example(pid)
      if not pex then return nil, pwhy end
      exs[2] = pex
    end
    return M.violin_item(video, exs, opts)
  end
end

--- One query of a retrieval task (vcmr, vr) for evaluation, as VcmrFullEvalDataset /
-- VrFullEvalDataset serve them: {ids = [CLS] + input_ids, target = {st, ed}, qid, vid}. A query
-- whose video is unknown (a test split without query2video.json or vid_name) has vid nil and target
-- {-1, -1}, as the reference's vid = -1: it can still be ranked against the corpus. With a known
-- video the target is made from ts as in training ({-1, -1} without ts), on that video's frames
-- (read once per video). A target listing several moments (DiDeMo's val/test queries, whose
-- metrics come from query_data.jsonl's windows) gives the first one's frames, where the reference's
-- get_st_ed_label fails. Returns nil and the reason when the query or its video cannot be read.
function QueryDataset:query(qid)
  local op = "hero.data.downstream.QueryDataset:query"
  if self.task ~= "vcmr" and self.task ~= "vr" then
    error(string.format("QueryDataset:query: the %s task has no retrieval queries", self.task), 2)
  end
  local ex, why = self:example(qid)
  if not ex then return nil, why end
  local ids = {self._special.CLS}
  for _, t in ipairs(copy_ids(op, ex.input_ids, string.format("query '%s' input_ids", qid))) do ids[#ids + 1] = t end
  local vid = self:video_of(qid, ex)
  if vid == nil or vid == json.null then return {ids = ids, target = {-1, -1}, qid = qid} end
  if type(vid) ~= "string" then return nil, string.format("query '%s' names the video %s", qid, tostring(vid)) end
  self._eval_nframes = self._eval_nframes or {}
  local nf = self._eval_nframes[vid]
  if nf == nil then
    local video, vwhy = self.video:get(vid)
    if video == nil then return nil, vwhy end
    if video.v_feat:size(1) == 0 then return nil, string.format("video '%s' has no frame", vid) end
    nf = tasks.video_item(video, {special_ids = self._special, sub_ctx_len = self.sub_ctx_len}).nframes
    self._eval_nframes[vid] = nf
  end
  local target = {-1, -1}
  local ts = ex.target
  if type(ts) == "table" and type(ts[1]) == "table" then ts = ts[1] end
  if ex.st_ed then
    if type(ex.st_ed) ~= "table" or math.type(ex.st_ed[1]) ~= "integer" or math.type(ex.st_ed[2]) ~= "integer" then
      return nil, string.format("query '%s': st_ed must be two frame indices", qid)
    end
    target = {ex.st_ed[1], ex.st_ed[2]}
  elseif not is_null(ts) then
    target = {M.st_ed_label(ts, self.frame_interval, nf - 1)}
  end
  return {ids = ids, target = target, qid = qid, vid = vid}
end

--- The collate of the dataset's items (qids kept for evaluation when opts.qids).
function QueryDataset:collate(items, opts)
  if self.task == "vcmr" or self.task == "vr" then return M.vcmr_collate(items, opts) end
  if self.task == "videoqa" then return M.videoqa_collate(items, opts) end
  return M.violin_collate(items, opts)
end

-- The key of a query_data.jsonl entry: desc_id (TVR, How2R, DiDeMo: VCMR), else sen_id or
-- retrieval_key. VR tries those two first (eval_vr.py reads MSR-VTT through MsrvttQueryTokLmdb,
-- whose query_data tries sen_id for every entry, then retrieval_key, never desc_id), and desc_id
-- last, for a VR run on data keyed as TVR's.
local function gt_key_field(entries, task)
  local fields = task == "vr" and {"sen_id", "retrieval_key", "desc_id"} or {"desc_id", "sen_id", "retrieval_key"}
  for _, field in ipairs(fields) do
    local all = #entries > 0
    for _, e in ipairs(entries) do
      if type(e) ~= "table" or e[field] == nil then all = false break end
    end
    if all then return field end
  end
  return nil
end

--- Ground truth of the queries for hero.eval.retrieval: query_data.jsonl entries (desc_id,
-- vid_name, ts, type), in the order of `qids`; nil when the db has no query_data.jsonl.
-- MSR-VTT's entries (sen_id or retrieval_key, clip_name) come out as eval_vr.py reshapes them:
-- desc_id = the query id, vid_name = clip_name. opts.desc_ids: the desc_id each entry gets (the
-- submission's ids, in the order of qids).
function QueryDataset:ground_truth(qids, opts)
  if type(qids) ~= "table" then error("QueryDataset:ground_truth: qids must be an array of query ids", 2) end
  if not (self.db.has_file and self.db:has_file("query_data.jsonl")) then return nil end
  local entries = self.db:json("query_data.jsonl")
  local field = gt_key_field(entries, self.task)
  if field == nil then
    error("QueryDataset:ground_truth: query_data.jsonl entries carry no desc_id, sen_id or retrieval_key", 2)
  end
  local by = {}
  for _, e in ipairs(entries) do by[tostring(e[field])] = e end
  local desc_ids = opts and opts.desc_ids
  local out = {}
  for i, q in ipairs(qids) do
    local e = by[tostring(q)]
    if e == nil then error(string.format("QueryDataset:ground_truth: query '%s' is not in query_data.jsonl", q), 2) end
    if field ~= "desc_id" or desc_ids or (e.vid_name == nil and e.clip_name ~= nil) then
      local c = {}
      for k, v in pairs(e) do c[k] = v end
      if field ~= "desc_id" then c.desc_id = q end
      if desc_ids then c.desc_id = desc_ids[i] end
      if c.vid_name == nil then c.vid_name = c.clip_name end
      e = c
    end
    out[i] = e
  end
  return out
end

function QueryDataset:close()
  if self._own and self.db then self.db:close() end
  self.db = nil
end

function QueryDataset:__tostring()
  return string.format("hero.data.downstream.QueryDataset(%s, %d queries)", self.task, #self._ids)
end

-- ------------------------------------------------------------------ captions (TVC)

local CaptionDataset = {}
CaptionDataset.__index = CaptionDataset
CaptionDataset.__name = "hero.data.downstream.CaptionDataset"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- CaptionDataset{video =, cap_db = dir or TxtDb, clip_db = dir or TxtDb (optional),
--   vid2caps = {vid = {cap ids}}, vid2clips =, max_txt_len = 60, frame_interval = 1.5,
--   max_cap_per_vid = -1, ids = {vids}}
-- The reference's TVC databases: cap_db (key caption id: input_ids, ts, vid_name, clip_id) with
-- vid2caps.json, and for validation clip_db (key clip id: ts, captions = {{text = ...}, ...}) with
-- vid2clips.json. A directory holding cap.db/ and clip.db/ may be given as cap_db. Without
-- vid2caps.json the caption-to-video map is inverted from query2video.json (any query db with
-- input_ids and ts serves as captions). Items are per video: :item(vid) has every caption (or a
-- random max_cap_per_vid of them, drawn from opts.generator), :eval_item(vid) every clip
-- (clip_db, else each caption as its own clip) with its reference texts.
function M.CaptionDataset(opts)
  local op = "hero.data.downstream.CaptionDataset"
  check_opts(op, opts, {"video", "cap_db", "clip_db", "vid2caps", "vid2clips", "max_txt_len", "frame_interval",
                        "max_cap_per_vid", "ids", "sub_ctx_len"})
  local video = opts.video
  if type(video) ~= "table" or type(video.get) ~= "function" then
    fail(op, "opts.video must be a hero.data dataset of videos (VideoSubDataset)")
  end
  if video.video_only then fail(op, "TVC reads subtitles: a video-only dataset cannot serve it") end
  local cap, clip = opts.cap_db, opts.clip_db
  local meta_dir
  if type(cap) == "string" and exists(cap .. "/cap.db/data.mdb") then
    meta_dir = cap
    if clip == nil and exists(cap .. "/clip.db/data.mdb") then clip = cap .. "/clip.db" end
    cap = cap .. "/cap.db"
  end
  local cdb, own = open_db(op, cap)
  local self = setmetatable({video = video, db = cdb, _own = own, max_txt_len = opts.max_txt_len or 60,
    frame_interval = opts.frame_interval or 1.5, max_cap_per_vid = opts.max_cap_per_vid or -1,
    sub_ctx_len = opts.sub_ctx_len or video.sub_ctx_len or 0}, CaptionDataset)
  if clip ~= nil then self.clip_db, self._own_clip = open_db(op, clip) end
  local meta
  if meta_dir and exists(meta_dir .. "/meta.json") then
    meta = json.read_file(meta_dir .. "/meta.json")
  elseif cdb.has_file and cdb:has_file("meta") then
    meta = cdb:meta()
  else
    meta = {}
  end
  self._special = special_ids(meta)
  local sp = self._special
  sp.BOS, sp.EOS = sp.BOS or sp.CLS, sp.EOS or sp.SEP
  if math.type(sp.BOS) ~= "integer" or math.type(sp.EOS) ~= "integer" or math.type(sp.SEP) ~= "integer" then
    fail(op, "the caption db's meta.json lacks integer BOS, EOS and SEP ids")
  end
  local v2c = opts.vid2caps
  if v2c == nil and cdb.has_file and cdb:has_file("vid2caps") then v2c = cdb:json("vid2caps") end
  if v2c == nil and cdb.has_file and cdb:has_file("query2video") then
    local q2v = cdb:json("query2video")
    v2c = {}
    local order = {}
    for _, q in ipairs(json.keys(q2v)) do
      local v = q2v[q]
      if v2c[v] == nil then
        v2c[v] = {}
        order[#order + 1] = v
      end
      table.insert(v2c[v], q)
    end
    self._vid_order = order
  end
  if type(v2c) ~= "table" then fail(op, "no caption-to-video map: give opts.vid2caps or a db with vid2caps.json") end
  self._vid2caps = v2c
  if self.clip_db then
    local v2cl = opts.vid2clips
    if v2cl == nil and self.clip_db.has_file and self.clip_db:has_file("vid2clips") then
      v2cl = self.clip_db:json("vid2clips")
    end
    if type(v2cl) ~= "table" then fail(op, "the clip db has no vid2clips.json (or give opts.vid2clips)") end
    self._vid2clips = v2cl
  end
  local ids = opts.ids or self._vid_order or json.keys(v2c)
  local list = {}
  for i, v in ipairs(ids) do
    if type(v) ~= "string" then fail(op, "video id %d is not a string", i) end
    list[i] = v
  end
  self._ids = list
  return self
end

function CaptionDataset:ids() return self._ids end
function CaptionDataset:__len() return #self._ids end
function CaptionDataset:special_ids() return self._special end
function CaptionDataset:length(vid) return self.video.length and self.video:length(vid) or 0 end

local function item_opts(self)
  return {special_ids = self._special, sub_ctx_len = self.sub_ctx_len, frame_interval = self.frame_interval,
          max_txt_len = self.max_txt_len}
end

local function ref_texts(ex)
  local refs = {}
  if type(ex.captions) == "table" then
    for _, c in ipairs(ex.captions) do refs[#refs + 1] = type(c) == "table" and c.text or c end
  elseif type(ex.descs) == "table" then
    for _, d in ipairs(ex.descs) do refs[#refs + 1] = type(d) == "table" and d.desc or d end
  elseif type(ex.desc) == "string" then
    refs[1] = ex.desc
  end
  return refs
end

--- The training item of video vid (every caption), or nil and the reason. opts.generator draws
-- the captions when max_cap_per_vid is set.
function CaptionDataset:item(vid, opts)
  local caps = self._vid2caps[vid]
  if type(caps) ~= "table" or #caps == 0 then return nil, string.format("video '%s' has no caption", vid) end
  local chosen = caps
  if self.max_cap_per_vid ~= -1 and #caps > self.max_cap_per_vid then
    local g = opts and opts.generator
    if not g then error("CaptionDataset:item: max_cap_per_vid needs opts.generator", 2) end
    local perm = core.randperm(#caps, {generator = g}):totable()
    chosen = {}
    for i = 1, self.max_cap_per_vid do chosen[i] = caps[perm[i] + 1] end
  end
  local video, why = self.video:get(vid)
  if video == nil then return nil, why end
  if video.v_feat:size(1) == 0 then return nil, string.format("video '%s' has no frame", vid) end
  local exs = {}
  for i, cid in ipairs(chosen) do
    local ex = self.db:get(tostring(cid))
    if ex == nil then return nil, string.format("caption '%s' is not in the caption db", tostring(cid)) end
    exs[i] = {input_ids = ex.input_ids, ts = ex.ts, clip_id = ex.clip_id or cid, refs = ref_texts(ex)}
  end
  return M.tvc_item(video, exs, item_opts(self))
end

--- The validation item of video vid: every clip without token ids (TvcValDataset), with its ts
-- and reference texts.
function CaptionDataset:eval_item(vid)
  local video, why = self.video:get(vid)
  if video == nil then return nil, why end
  -- as item(): a video of no frame has no segment to caption, and its item would fail the collate
  -- of the whole batch
  if video.v_feat:size(1) == 0 then return nil, string.format("video '%s' has no frame", vid) end
  local exs = {}
  if self.clip_db then
    for i, cid in ipairs(self._vid2clips[vid] or {}) do
      local ex = self.clip_db:get(tostring(cid))
      if ex == nil then return nil, string.format("clip '%s' is not in the clip db", tostring(cid)) end
      exs[i] = {ts = ex.ts, clip_id = cid, refs = ref_texts(ex)}
    end
  else
    for i, cid in ipairs(self._vid2caps[vid] or {}) do
      local ex = self.db:get(tostring(cid))
      if ex == nil then return nil, string.format("caption '%s' is not in the caption db", tostring(cid)) end
      exs[i] = {ts = ex.ts, clip_id = ex.clip_id or cid, refs = ref_texts(ex)}
    end
  end
  if #exs == 0 then return nil, string.format("video '%s' has no clip", vid) end
  return M.tvc_item(video, exs, item_opts(self))
end

function CaptionDataset.collate(_, items) return M.tvc_collate(items) end

function CaptionDataset:close()
  if self._own and self.db then self.db:close() end
  if self._own_clip and self.clip_db then self.clip_db:close() end
  self.db, self.clip_db = nil, nil
end

function CaptionDataset:__tostring()
  return string.format("hero.data.downstream.CaptionDataset(%d videos)", #self._ids)
end

-- ------------------------------------------------------------------ clips to caption (TVC inference)

local ClipListDataset = {}
ClipListDataset.__index = ClipListDataset
ClipListDataset.__name = "hero.data.downstream.ClipListDataset"

--- ClipListDataset{video = VideoSubDataset, clips = JSON-lines path or array, frame_interval = 1.5,
--   sub_ctx_len = video's, special_ids = video's}
-- The clips of inf_tvc.py --target_clip (TvcEvalDataset): one {vid_name, clip_id, ts = {t0, t1},
-- descs = {{desc}} (optional references)} per line, grouped by video in first-seen order; every
-- line adds its clip to its video's list (a clip id seen again is captioned again, with the last
-- line's ts and references), as the reference's lists and dict do. Serves :eval_item(vid) (every
-- clip of the video, with its references when given) to a Loader with eval = true.
function M.ClipListDataset(opts)
  local op = "hero.data.downstream.ClipListDataset"
  check_opts(op, opts, {"video", "clips", "frame_interval", "sub_ctx_len", "special_ids"})
  local video = opts.video
  if type(video) ~= "table" or type(video.get) ~= "function" then
    fail(op, "opts.video must be a hero.data dataset of videos (VideoSubDataset)")
  end
  if video.video_only then fail(op, "TVC reads subtitles: a video-only dataset cannot serve it") end
  local clips, source = opts.clips, "opts.clips"
  if type(clips) == "string" then
    source = clips
    clips = json.read_lines(clips, {complete = true})
  end
  if type(clips) ~= "table" then fail(op, "opts.clips must be a JSON-lines file or an array of clips") end
  local vid2clips, order, by_id = {}, {}, {}
  for i, c in ipairs(clips) do
    local where = string.format("%s: clip %d", source, i)
    if type(c) ~= "table" or type(c.vid_name) ~= "string" or c.clip_id == nil then
      fail(op, "%s is not {vid_name, clip_id, ts, descs}", where)
    end
    local ts = c.ts
    if type(ts) ~= "table" or not finite(ts[1]) or not finite(ts[2]) or ts[1] < 0 or ts[2] < ts[1] then
      fail(op, "%s (clip_id %s): ts must be {start, end} in seconds with 0 <= start <= end", where,
        tostring(c.clip_id))
    end
    if c.descs ~= nil then
      local ok = type(c.descs) == "table"
      for _, d in ipairs(ok and c.descs or {}) do
        if type(d) ~= "string" and not (type(d) == "table" and type(d.desc) == "string") then ok = false end
      end
      if not ok then fail(op, "%s (clip_id %s): descs must be a list of {desc = text}", where, tostring(c.clip_id)) end
    end
    -- as TvcEvalDataset: every line adds its clip to its video's list (a repeated clip is captioned
    -- again, with the last line's ts and references)
    local key = tostring(c.clip_id)
    if vid2clips[c.vid_name] == nil then
      vid2clips[c.vid_name] = {}
      order[#order + 1] = c.vid_name
    end
    table.insert(vid2clips[c.vid_name], key)
    by_id[key] = c
  end
  if #order == 0 then fail(op, "%s holds no clip", source) end
  local sp = {}
  for k, v in pairs(opts.special_ids or (video.special_ids and video:special_ids()) or {}) do sp[k] = v end
  sp.BOS, sp.EOS = sp.BOS or sp.CLS, sp.EOS or sp.SEP
  if math.type(sp.BOS) ~= "integer" or math.type(sp.EOS) ~= "integer" or math.type(sp.SEP) ~= "integer" then
    fail(op, "no integer BOS, EOS and SEP ids: give opts.special_ids or a video dataset that has them")
  end
  return setmetatable({video = video, _vid2clips = vid2clips, _by_id = by_id, _ids = order, _special = sp,
    frame_interval = opts.frame_interval or 1.5, sub_ctx_len = opts.sub_ctx_len or video.sub_ctx_len or 0,
    max_txt_len = -1}, ClipListDataset)
end

function ClipListDataset:ids() return self._ids end
function ClipListDataset:__len() return #self._ids end
function ClipListDataset:special_ids() return self._special end
function ClipListDataset:length(vid) return self.video.length and self.video:length(vid) or 0 end

--- Every clip of video vid with its ts and references (TvcEvalDataset.__getitem__).
function ClipListDataset:eval_item(vid)
  local video, why = self.video:get(vid)
  if video == nil then return nil, why end
  if video.v_feat:size(1) == 0 then return nil, string.format("video '%s' has no frame", vid) end
  local exs = {}
  for i, key in ipairs(self._vid2clips[vid] or {}) do
    local c = self._by_id[key]
    exs[i] = {ts = c.ts, clip_id = c.clip_id, refs = ref_texts(c)}
  end
  if #exs == 0 then return nil, string.format("video '%s' has no clip", vid) end
  return M.tvc_item(video, exs, item_opts(self))
end

function ClipListDataset.item()
  error("ClipListDataset serves evaluation items only (a Loader with eval = true)", 2)
end

function ClipListDataset.collate(_, items) return M.tvc_collate(items) end

function ClipListDataset:__tostring()
  return string.format("hero.data.downstream.ClipListDataset(%d videos)", #self._ids)
end

-- ------------------------------------------------------------------ loader

local Loader = {}
Loader.__index = Loader
Loader.__name = "hero.data.downstream.Loader"

--- Loader{dataset = QueryDataset or CaptionDataset, batch_size = 8, seed = 0, shuffle = true,
--   on_error = "skip" | "error", on_skip = function(id, reason), eval = false, qids = false,
--   rank = 0, world_size = 1, equal_shards = false}
-- With world_size > 1 the loader serves ids[rank::world_size] only (a data-parallel rank's share);
-- equal_shards = true first leaves out the last (#ids % world_size) ids, so that every rank runs as
-- many batches in a pass (a validation whose forward gathers every rank's batch needs that).
-- Serves collated batches forever (:next(); a new Philox-shuffled epoch after the last batch),
-- one pass in dataset order (:iter()), and its resumable position (:state() / :set_state()).
-- An id whose item cannot be built is reported and skipped (or raises with on_error = "error").
-- eval = true builds CaptionDataset's evaluation items; qids = true keeps the ids in the batches.
function M.Loader(opts)
  local op = "hero.data.downstream.Loader"
  check_opts(op, opts, {"dataset", "batch_size", "seed", "shuffle", "on_error", "on_skip", "eval", "qids",
                        "drop_last", "rank", "world_size", "equal_shards"})
  local ds = opts.dataset
  if type(ds) ~= "table" or type(ds.item) ~= "function" or type(ds.ids) ~= "function" then
    fail(op, "opts.dataset must be a QueryDataset or CaptionDataset")
  end
  local ids = ds:ids()
  if #ids == 0 then fail(op, "the dataset has no query (after the length filter)") end
  local rank, world = opts.rank or 0, opts.world_size or 1
  if math.type(world) ~= "integer" or world < 1 or math.type(rank) ~= "integer" or rank < 0 or rank >= world then
    fail(op, "opts.rank and opts.world_size must be integers with 0 <= rank < world_size")
  end
  if world > 1 then
    -- this rank's share of the ids: ids[rank::world], as the reference partitions them by rank
    if opts.equal_shards ~= nil and type(opts.equal_shards) ~= "boolean" then
      fail(op, "opts.equal_shards must be a boolean")
    end
    local usable = opts.equal_shards and #ids - #ids % world or #ids
    local mine = {}
    for i = rank + 1, usable, world do mine[#mine + 1] = ids[i] end
    ids = mine
    if #ids == 0 then fail(op, "rank %d of %d gets no query", rank, world) end
  end
  local bs = opts.batch_size or 8
  if math.type(bs) ~= "integer" or bs < 1 then fail(op, "opts.batch_size must be a positive integer") end
  local seed = opts.seed or 0
  local on_error = opts.on_error or "skip"
  if on_error ~= "skip" and on_error ~= "error" then fail(op, "opts.on_error must be 'skip' or 'error'") end
  local self = setmetatable({dataset = ds, ids = ids, batch_size = bs, seed = seed, shuffle = opts.shuffle ~= false,
    on_error = on_error, on_skip = opts.on_skip, eval = opts.eval == true, qids = opts.qids == true,
    drop_last = opts.drop_last == true,
    order_gen = core.Generator(seed), sample_gen = core.Generator(seed + 1), epoch = 0, pos = 1,
    stats = {batches = 0, items = 0, skipped = 0, skipped_ids = {}}}, Loader)
  self:_plan()
  return self
end

function Loader:_plan()
  self.epoch_start = self.order_gen:get_state()
  local n = #self.ids
  local order = {}
  if self.shuffle and n > 1 then
    local perm = core.randperm(n, {generator = self.order_gen}):totable()
    for i = 1, n do order[i] = self.ids[perm[i] + 1] end
  else
    for i = 1, n do order[i] = self.ids[i] end
  end
  local plan = {}
  for s = 1, n, self.batch_size do
    local b = {}
    for i = s, math.min(s + self.batch_size - 1, n) do b[#b + 1] = order[i] end
    if #b == self.batch_size or not self.drop_last then plan[#plan + 1] = b end
  end
  if #plan == 0 then error(string.format("hero.data.downstream.Loader: %d ids make no full batch of %d", n,
    self.batch_size), 0) end
  self.plan = plan
end

function Loader:_skip(id, reason)
  if self.on_error == "error" then
    error(string.format("hero.data.downstream.Loader: '%s': %s", tostring(id), tostring(reason)), 0)
  end
  local st = self.stats
  st.skipped = st.skipped + 1
  if #st.skipped_ids < 100 then st.skipped_ids[#st.skipped_ids + 1] = {id, reason} end
  if self.on_skip then self.on_skip(id, reason) end
end

function Loader:_build(ids, g)
  local items = {}
  for _, id in ipairs(ids) do
    local ok, item, why = pcall(function()
      if self.eval and self.dataset.eval_item then return self.dataset:eval_item(id) end
      return self.dataset:item(id, {generator = g})
    end)
    if not ok and data_util.is_fatal_error(item) then
      error(item, 0)
    elseif not ok then
      self:_skip(id, tostring(item):gsub("^[^:]*:%d+: ", ""))
    elseif item == nil then
      self:_skip(id, why or "not found")
    else
      items[#items + 1] = item
    end
  end
  if #items == 0 then return nil end
  self.stats.items = self.stats.items + #items
  return self.dataset:collate(items, {qids = self.qids})
end

--- The next batch (forever).
function Loader:next()
  local empty = 0
  while true do
    if self.pos > #self.plan then
      self.epoch = self.epoch + 1
      self:_plan()
      self.pos = 1
    end
    local ids = self.plan[self.pos]
    self.pos = self.pos + 1
    local b = self:_build(ids, self.sample_gen)
    if b then
      self.stats.batches = self.stats.batches + 1
      return b
    end
    empty = empty + 1
    if empty > #self.plan then
      error(string.format("hero.data.downstream.Loader: every item of a whole epoch was skipped (first: %s)",
        self.stats.skipped_ids[1] and tostring(self.stats.skipped_ids[1][2]) or "?"), 0)
    end
  end
end

--- One pass in dataset order (validation / evaluation); the position is not moved.
function Loader:iter()
  local i = 1
  local g = core.Generator(self.seed)
  return function()
    while i <= #self.ids do
      local ids = {}
      for k = i, math.min(i + self.batch_size - 1, #self.ids) do ids[#ids + 1] = self.ids[k] end
      i = i + self.batch_size
      local b = self:_build(ids, g)
      if b then return b end
    end
    return nil
  end
end

function Loader:__len() return #self.plan end

-- The settings that decide the batches: a state saved under others would resume other batches.
local PLAN_SETTINGS = {"batch_size", "seed", "shuffle", "drop_last"}

function Loader:state()
  local s = {n = #self.ids, epoch = self.epoch, pos = self.pos, epoch_start = self.epoch_start,
             sampler = self.sample_gen:get_state(), batches = self.stats.batches, items = self.stats.items,
             skipped = self.stats.skipped}
  for _, k in ipairs(PLAN_SETTINGS) do s[k] = self[k] end
  return s
end

--- Resumes a state() of a loader over the same ids with the same settings (states saved before the
-- settings were recorded carry none and are taken as they are).
function Loader:set_state(s)
  local function refuse(fmt, ...)
    error("hero.data.downstream.Loader:set_state: " .. string.format(fmt, ...), 3)
  end
  if type(s) ~= "table" or math.type(s.pos) ~= "integer" or math.type(s.epoch) ~= "integer"
      or type(s.epoch_start) ~= "table" or type(s.sampler) ~= "table" then
    refuse("expected the table that state() returned")
  end
  if s.n ~= #self.ids then refuse("the state is for %s ids, this loader has %d", tostring(s.n), #self.ids) end
  for _, k in ipairs(PLAN_SETTINGS) do
    if s[k] ~= nil and s[k] ~= self[k] then
      refuse("the state is of a loader with %s = %s, this one has %s", k, tostring(s[k]), tostring(self[k]))
    end
  end
  if s.epoch < 0 then refuse("epoch %d is negative", s.epoch) end
  for _, k in ipairs{"batches", "items", "skipped"} do
    if s[k] ~= nil and (math.type(s[k]) ~= "integer" or s[k] < 0) then
      refuse("%s must be a count, got %s", k, tostring(s[k]))
    end
  end
  local old_gen, old_plan, old_start = self.order_gen:get_state(), self.plan, self.epoch_start
  self.order_gen:set_state(s.epoch_start)
  self:_plan()
  if s.pos < 1 or s.pos > #self.plan + 1 then
    local n = #self.plan
    self.order_gen:set_state(old_gen)
    self.plan, self.epoch_start = old_plan, old_start
    refuse("position %d is outside 1..%d", s.pos, n + 1)
  end
  self.epoch, self.pos = s.epoch, s.pos
  self.sample_gen:set_state(s.sampler)
  self.stats.batches, self.stats.items, self.stats.skipped = s.batches or 0, s.items or 0, s.skipped or 0
end

return M
