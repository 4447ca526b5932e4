--- hero.data.synthetic: a small, deterministic video + subtitle world with real structure, written
-- through hero's own preprocessing into the same databases as real data, plus the batches HERO's
-- tasks need (its own small collate, see "Collate" below).
--
-- The world. K_obj objects, K_col colours and K_act actions each have a fixed random prototype
-- (Philox, from the seed). A video is a few scenes ("segments") of 2-6 frames, each showing one
-- coloured object doing one action, sometimes separated by empty frames. A frame's feature is
-- [object + 0.5 colour prototype | action prototype] plus noise, split like the extractor's two
-- streams (the first `d_resnet` dims play ResNet, the rest SlowFast); empty frames are noise. Each
-- segment has a subtitle spoken during it that talks about what is on screen ("look at the red cube
-- spinning ."), from a few templates, so words and frames are tied only through the data; some
-- empty stretches get small talk that says nothing about the picture. Retrieval queries describe
-- one segment ("the red cube spins") with its start and end in seconds.
--
-- The vocabulary is word level (synthetic.vocabulary()): ids 0..3 are <s> <pad> </s> <unk> as in
-- RoBERTa, then the words in a fixed order, then <mask> last. synthetic.tokenize(text) lowercases,
-- splits on spaces and punctuation and maps each word to its id (unknown words to <unk>).
--
-- synthetic.write(dir, opts) writes, through hero.io.save_npz and hero.data.prepro:
--   dir/features/{resnet,slowfast}_features/<vid>.npz   f16 extractor-style feature files
--   dir/video_db/syn/resnet_slowfast_1.5 (+ id2nframe.json)
--   dir/txt_db/syn_subtitles.db, dir/txt_db/syn_queries.db
--   dir/splits.json, dir/vocab.json
-- and the normal readers load it (synthetic.load(dir)).
--
-- Collate. The batch builders below (synthetic.collate_*) produce exactly the fields the model's
-- forward_* read (the layout of the reference's collates, see spec/fixtures/hero-smoke); they are
-- deliberately self-contained so they can later be replaced by the shared collate module.
local core = require "hero.core"
local json = require "hero.json"

local S = {}

S.FRAME_LENGTH = 1.5

-- ------------------------------------------------------------------ vocabulary

local OBJECTS = {"ball", "cube", "cat", "dog", "car", "bird", "lamp", "chair", "robot", "boat", "cup", "kite"}
local COLORS = {"red", "blue", "green", "yellow", "black", "white"}
-- {base, -ing, third person}
local ACTIONS = {
  {"roll", "rolling", "rolls"}, {"jump", "jumping", "jumps"}, {"spin", "spinning", "spins"},
  {"fall", "falling", "falls"}, {"slide", "sliding", "slides"}, {"shake", "shaking", "shakes"},
  {"fly", "flying", "flies"}, {"wait", "waiting", "waits"},
}
local FUNCTION_WORDS = {"the", "a", "look", "at", "is", "now", "wow", "i", "think", "that", "can", "see", "it",
                        "there", "here", "ok", "what", "time", "yes", "no", "so", "and", "then", "again", "where",
                        "did", "you", "go", "we", "should", "eat", "later", "hmm", "who", "said", "this", "one",
                        ",", ".", "!", "?"}
S.OBJECTS, S.COLORS, S.ACTIONS = OBJECTS, COLORS, ACTIONS

local SPECIALS = {"<s>", "<pad>", "</s>", "<unk>"}

--- {words = array of tokens by id (0-based id = index - 1), ids = {token = id}, size, CLS, PAD, SEP,
-- UNK, MASK, v_range}.
function S.vocabulary()
  local words = {}
  for _, w in ipairs(SPECIALS) do words[#words + 1] = w end
  for _, w in ipairs(FUNCTION_WORDS) do words[#words + 1] = w end
  for _, w in ipairs(OBJECTS) do words[#words + 1] = w end
  for _, w in ipairs(COLORS) do words[#words + 1] = w end
  for _, a in ipairs(ACTIONS) do for _, w in ipairs(a) do words[#words + 1] = w end end
  words[#words + 1] = "<mask>"
  local ids = {}
  for i, w in ipairs(words) do ids[w] = i - 1 end
  return {words = words, ids = ids, size = #words, CLS = 0, PAD = 1, SEP = 2, UNK = 3, MASK = #words - 1,
          v_range = {4, #words - 1}}
end

local VOCAB = S.vocabulary()

--- Word-level tokenizer of the synthetic vocabulary: lowercase, split on spaces and punctuation.
function S.tokenize(text)
  local ids = {}
  for piece in text:lower():gmatch("[^%s]+") do
    for word, punct in piece:gmatch("([^%p]*)(%p*)") do
      if word ~= "" then ids[#ids + 1] = VOCAB.ids[word] or VOCAB.UNK end
      for k = 1, #punct do ids[#ids + 1] = VOCAB.ids[punct:sub(k, k)] or VOCAB.UNK end
    end
  end
  return ids
end

function S.detokenize(ids)
  local out = {}
  for i, id in ipairs(ids) do out[i] = VOCAB.words[id + 1] or "?" end
  return table.concat(out, " ")
end

-- ------------------------------------------------------------------ random stream

-- Uniform numbers from a Philox generator, drawn in blocks.
local Stream = {}
Stream.__index = Stream

function S.stream(seed)
  return setmetatable({g = core.Generator(seed), buf = {}, pos = 1}, Stream)
end

function Stream:uniform()
  if self.pos > #self.buf then
    self.buf = core.rand({4096}, {dtype = "f64", generator = self.g}):totable()
    self.pos = 1
  end
  local u = self.buf[self.pos]
  self.pos = self.pos + 1
  return u
end

--- Integer in [lo, hi].
function Stream:int(lo, hi) return lo + math.floor(self:uniform() * (hi - lo + 1)) end
function Stream:pick(t) return t[self:int(1, #t)] end
function Stream:shuffle(t)
  for i = #t, 2, -1 do
    local j = self:int(1, i)
    t[i], t[j] = t[j], t[i]
  end
  return t
end
function Stream:randn(shape, std)
  return core.randn(shape, {generator = self.g}) * (std or 1)
end

-- ------------------------------------------------------------------ the world

local SUB_TEMPLATES = {
  "look at the {c} {o} {ing} .", "wow , the {o} is {ing} now !", "i think that {c} {o} can {b} .",
  "see the {c} {o} ? it {s} .", "the {o} {s} again .", "there , a {c} one is {ing} .", "that {c} {o} {s} !",
}
local SMALL_TALK = {"what time is it ?", "ok , so what then ?", "where did you go ?", "we should eat later .",
                    "hmm , who said that ?", "yes and no ."}
local QUERY_TEMPLATES = {"the {c} {o} {s}", "a {c} {o} is {ing}", "{c} {o} {ing}"}

local function fill(template, seg)
  local a = ACTIONS[seg.act]
  return (template:gsub("{(%a+)}", {c = COLORS[seg.color], o = OBJECTS[seg.obj], b = a[1], ing = a[2], s = a[3]}))
end

local DEFAULTS = {
  seed = 20240601, videos = 200, test_videos = 40, finetune_queries = 48, d_resnet = 16, d_slowfast = 16,
  min_segments = 2, max_segments = 4, min_seg_len = 2, max_seg_len = 5, noise = 0.6, max_frames = 16,
}
S.DEFAULTS = DEFAULTS

local function with_defaults(opts)
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

--- The world in memory: {opts, videos = {{vid, resnet = f32 [n, dr], slowfast = f32 [n, ds],
-- segments = {{first, last (0-based frames, inclusive), obj, color, act}}, subs = {{text, start,
-- end}}}}, queries = {{desc_id, desc, vid_name, ts, duration, type, split}}, splits}. Same seed,
-- same world (bit for bit).
function S.generate(opts)
  local o = with_defaults(opts)
  local rs = S.stream(o.seed)
  local K_obj, K_col, K_act = #OBJECTS, #COLORS, #ACTIONS
  local P_obj = rs:randn({K_obj, o.d_resnet})
  local P_col = rs:randn({K_col, o.d_resnet})
  local P_act = rs:randn({K_act, o.d_slowfast})
  local videos, queries = {}, {}
  local n_total = o.videos + o.test_videos
  for v = 1, n_total do
    local vid = string.format("syn_%04d", v - 1)
    local segs, frames = {}, 0
    local nseg = rs:int(o.min_segments, o.max_segments)
    local obj_rows, col_rows, act_rows, kind = {}, {}, {}, {}  -- per frame: prototype rows (0 = none)
    for s = 1, nseg do
      if frames > 0 and rs:uniform() < 0.35 and frames < o.max_frames - o.min_seg_len - 1 then
        -- an empty stretch between scenes
        local gap = rs:int(1, 2)
        for _ = 1, gap do
          frames = frames + 1
          obj_rows[frames], col_rows[frames], act_rows[frames], kind[frames] = 0, 0, 0, "gap"
        end
      end
      local len = rs:int(o.min_seg_len, o.max_seg_len)
      if frames + len > o.max_frames then len = o.max_frames - frames end
      if len < o.min_seg_len then break end
      local seg = {first = frames, last = frames + len - 1, obj = rs:int(1, K_obj), color = rs:int(1, K_col),
                   act = rs:int(1, K_act)}
      -- scenes of one video differ in object or action
      for _, prev in ipairs(segs) do
        if prev.obj == seg.obj and prev.act == seg.act then seg.act = seg.act % K_act + 1 end
      end
      for f = frames + 1, frames + len do
        obj_rows[f], col_rows[f], act_rows[f], kind[f] = seg.obj, seg.color, seg.act, "scene"
      end
      frames = frames + len
      segs[#segs + 1] = seg
      if s == nseg then break end
    end
    -- features: prototypes + noise (empty frames: noise only)
    local r = rs:randn({frames, o.d_resnet}, o.noise)
    local sf = rs:randn({frames, o.d_slowfast}, o.noise)
    for f = 1, frames do
      if kind[f] == "scene" then
        r[f]:add_(P_obj[obj_rows[f]]):add_(P_col[col_rows[f]] * 0.5)
        sf[f]:add_(P_act[act_rows[f]])
      end
    end
    -- subtitles: one per scene, spoken inside it; small talk over some gaps
    local subs = {}
    local fl = S.FRAME_LENGTH
    local covered = {}
    for _, seg in ipairs(segs) do
      local st = seg.first * fl + 0.1 + 0.2 * rs:uniform()
      local ed = (seg.last + 1) * fl - 0.1 - 0.2 * rs:uniform()
      subs[#subs + 1] = {text = fill(rs:pick(SUB_TEMPLATES), seg), start = st, ["end"] = ed}
      for f = seg.first, seg.last do covered[f] = true end
    end
    for f = 0, frames - 1 do
      if not covered[f] and kind[f + 1] == "gap" and rs:uniform() < 0.5 then
        subs[#subs + 1] = {text = rs:pick(SMALL_TALK), start = f * fl + 0.2, ["end"] = (f + 1) * fl - 0.2}
        covered[f] = true
      end
    end
    table.sort(subs, function(a, b) return a.start < b.start end)
    for _, s in ipairs(subs) do
      -- round to milliseconds, as subtitle files store them
      s.start = math.floor(s.start * 1000 + 0.5) / 1000
      s["end"] = math.floor(s["end"] * 1000 + 0.5) / 1000
    end
    videos[v] = {vid = vid, resnet = r, slowfast = sf, segments = segs, subs = subs, nframes = frames,
                 split = v <= o.videos and "train" or "test"}
  end
  -- queries: fine-tuning queries on the first training videos, one test query per test video
  local qid = 0
  local function add_query(video, split)
    local seg = rs:pick(video.segments)
    qid = qid + 1
    queries[#queries + 1] = {desc_id = qid, desc = fill(rs:pick(QUERY_TEMPLATES), seg), vid_name = video.vid,
                             ts = {seg.first * S.FRAME_LENGTH, (seg.last + 1) * S.FRAME_LENGTH},
                             duration = video.nframes * S.FRAME_LENGTH, type = "v", split = split}
  end
  for v = 1, math.min(o.finetune_queries, o.videos) do add_query(videos[v], "train") end
  for v = o.videos + 1, n_total do add_query(videos[v], "test") end
  local splits = {pretrain = json.array(), finetune = json.array(), test_videos = json.array(), test = json.array()}
  for _, v in ipairs(videos) do
    if v.split == "train" then splits.pretrain[#splits.pretrain + 1] = v.vid
    else splits.test_videos[#splits.test_videos + 1] = v.vid end
  end
  for _, q in ipairs(queries) do
    local t = q.split == "train" and splits.finetune or splits.test
    t[#t + 1] = tostring(q.desc_id)
  end
  return {opts = o, videos = videos, queries = queries, splits = splits}
end

--- Generates the world and writes it as extractor feature files and HERO databases under dir (see
-- the module comment). Returns the world and the paths {video_db, sub_db, query_db}.
--- Where S.write puts the databases of a world written to dir: {video_db =, sub_db =, query_db =}.
function S.paths(dir)
  dir = dir:gsub("/+$", "")
  return {video_db = dir .. "/video_db/syn/resnet_slowfast_1.5", sub_db = dir .. "/txt_db/syn_subtitles.db",
          query_db = dir .. "/txt_db/syn_queries.db"}
end

function S.write(dir, opts)
  local prepro = require "hero.data.prepro"
  local io_ = require "hero.io"
  local world = S.generate(opts)
  dir = dir:gsub("/+$", "")
  local rdir, sdir = dir .. "/features/resnet_features", dir .. "/features/slowfast_features"
  prepro.mkdir_p(rdir)
  prepro.mkdir_p(sdir)
  for _, v in ipairs(world.videos) do
    io_.save_npz(rdir .. "/" .. v.vid .. ".npz", {features = v.resnet:half()})
    io_.save_npz(sdir .. "/" .. v.vid .. ".npz", {features = v.slowfast:half()})
  end
  local paths = S.paths(dir)
  local rep = prepro.convert_video_db{resnet = rdir, slowfast = sdir, out = paths.video_db, strict = true,
                                      overwrite = opts and opts.overwrite}
  local lines = {}
  for i, v in ipairs(world.videos) do lines[i] = {vid_name = v.vid, sub = v.subs} end
  local specials = {CLS = VOCAB.CLS, PAD = VOCAB.PAD, SEP = VOCAB.SEP, UNK = VOCAB.UNK, MASK = VOCAB.MASK,
                    v_range = VOCAB.v_range}
  prepro.subtitle_db{subs = lines, out = paths.sub_db, tokenize = S.tokenize, vid2nframe = rep.id2nframe,
                     frame_length = S.FRAME_LENGTH, strict = true, specials = specials, task = "syn",
                     tokenizer_name = "hero-synthetic-words", overwrite = opts and opts.overwrite}
  local qs = {}
  for i, q in ipairs(world.queries) do
    qs[i] = {desc_id = q.desc_id, desc = q.desc, vid_name = q.vid_name, ts = q.ts, duration = q.duration, type = q.type}
  end
  prepro.query_db{queries = qs, out = paths.query_db, tokenize = S.tokenize, specials = specials,
                  meta = {task = "syn_vcmr", tokenizer = "hero-synthetic-words"}, overwrite = opts and opts.overwrite}
  json.write_file(dir .. "/splits.json", world.splits)
  json.write_file(dir .. "/vocab.json", {words = json.array(VOCAB.words), MASK = VOCAB.MASK,
                                         v_range = json.array(VOCAB.v_range)})
  return world, paths
end

-- ------------------------------------------------------------------ loading

--- Reads a written world back through hero.data's readers. Returns {videos = {vid = {vid, feats
-- f32 [n, D], subs = {{sub_idx, {frames}}} (compute_sub2frames), tokens = {ids per subtitle},
-- nframes}}, queries = {qid = {qid, vid, ids, ts, desc}}, splits, vocab}.
function S.load(dir, opts)
  opts = opts or {}
  dir = dir:gsub("/+$", "")
  local data = require "hero.data"
  local max_clip_len = opts.max_clip_len or DEFAULTS.max_frames
  local paths = S.paths(dir)
  local vdb <close> = data.open_video_db(paths.video_db, {max_clip_len = max_clip_len})
  local sdb <close> = data.open_txt_db(paths.sub_db)
  local qdb <close> = data.open_txt_db(paths.query_db)
  local videos = {}
  for _, vid in ipairs(vdb:keys()) do
    local feats = vdb:get(vid)
    local value = sdb:get(vid)
    if value == nil then error(string.format("synthetic.load: video '%s' has no subtitle entry", vid), 2) end
    local s2f = data.compute_sub2frames(value, max_clip_len)
    local tokens = {}
    for i, ids in ipairs(value.input_ids) do tokens[i] = ids end
    videos[vid] = {vid = vid, feats = feats, subs = s2f.sub2frames, tokens = tokens, nframes = feats:size(1)}
  end
  local queries = {}
  for _, qid in ipairs(qdb:keys()) do
    local q = qdb:get(qid)
    queries[qid] = {qid = qid, vid = q.vid, ids = q.input_ids, ts = q.target, desc = q.desc, duration = q.duration}
  end
  return {videos = videos, queries = queries, splits = json.read_file(dir .. "/splits.json"), vocab = VOCAB,
          feat_dim = vdb:get(vdb:keys()[1]):size(2), max_clip_len = max_clip_len}
end

-- ------------------------------------------------------------------ collate

local function i64(t) return core.tensor(t, {dtype = "i64"}) end

--- Rows of the cross-modal transformer: rows = {{ids = {...}, frames = {0-based frame ids}, feats =
-- video features}}. Returns the padded tensors (reference: video_collate / mlm_collate) and per
-- row the frame count n_f (1 for the dummy frame) and text length.
local function build_rows(rows, feat_dim)
  local nrows = #rows
  local max_sl, max_vl, out_len = 1, 1, 1
  for _, r in ipairs(rows) do
    r.n_f = math.max(#r.frames, 1)
    r.n_t = #r.ids
    max_sl = math.max(max_sl, r.n_t)
    max_vl = math.max(max_vl, r.n_f)
    out_len = math.max(out_len, r.n_f + r.n_t)
  end
  local ids, attn, gather, sub_attn = {}, {}, {}, {}
  local v_feats = core.zeros({nrows, max_vl, feat_dim})
  for i, r in ipairs(rows) do
    local row, sa = {}, {}
    for j = 1, max_sl do
      row[j] = r.ids[j] or VOCAB.PAD
      sa[j] = j <= r.n_t and 1 or 0
    end
    ids[i], sub_attn[i] = row, sa
    local a, g = {}, {}
    for j = 0, out_len - 1 do
      if j < r.n_f then
        a[j + 1] = (#r.frames == 0) and 0 or 1
        g[j + 1] = j
      elseif j < r.n_f + r.n_t then
        a[j + 1] = 1
        g[j + 1] = max_vl + (j - r.n_f)
      else
        a[j + 1] = 0
        g[j + 1] = j
      end
    end
    attn[i], gather[i] = a, g
    if #r.frames > 0 then
      v_feats[i]:narrow(1, 1, #r.frames):copy_(r.feats:index_select(1, i64(r.frames)))
    end
  end
  local pos = {}
  for j = 1, max_sl do pos[j] = math.min(j - 1, 511) end
  local vpos = {}
  for j = 1, max_vl do vpos[j] = j - 1 end
  return {ids = i64(ids), pos = i64({pos}), v_feats = v_feats, v_pos = i64({vpos}), attn = i64(attn),
          gather = i64(gather), sub_attn = i64(sub_attn), max_vl = max_vl, out_len = out_len}
end

local function truncate(ids, n)
  local out = {}
  for i = 1, math.min(#ids, n) do out[i] = ids[i] end
  return out
end

--- The representation-path batch of a list of videos (reference: video_collate). text_of(video,
-- sub_pos, sub_idx) may override a row's token ids (default [SEP] + the subtitle's tokens).
function S.collate_repr(videos, feat_dim, text_of, max_txt_len)
  max_txt_len = max_txt_len or 60
  local rows, num_subs, s2f = {}, {}, {}
  local L = 1
  for _, v in ipairs(videos) do L = math.max(L, v.nframes) end
  local c_feats = core.zeros({#videos, L, feat_dim})
  local c_mask, c_pos = {}, {}
  for b, v in ipairs(videos) do
    local pairs_ = {}
    for k, p in ipairs(v.subs) do
      local sid, frames = p[1], p[2]
      local ids
      if text_of then ids = text_of(v, k, sid) end
      if ids == nil then
        ids = {VOCAB.SEP}
        for _, t in ipairs(truncate(v.tokens[sid + 1] or {}, max_txt_len)) do ids[#ids + 1] = t end
      end
      rows[#rows + 1] = {ids = ids, frames = frames, feats = v.feats}
      pairs_[k] = {sid, frames}
    end
    num_subs[b], s2f[b] = #v.subs, pairs_
    c_feats[b]:narrow(1, 1, v.nframes):copy_(v.feats)
    local m, p = {}, {}
    for j = 1, L do
      m[j] = j <= v.nframes and 1 or 0
      p[j] = j - 1
    end
    c_mask[b], c_pos[b] = m, p
  end
  local r = build_rows(rows, feat_dim)
  return {
    f_sub_input_ids = r.ids, f_sub_pos_ids = r.pos, f_v_feats = r.v_feats, f_v_pos_ids = r.v_pos,
    f_attn_masks = r.attn, f_gather_index = r.gather, f_sub_input_attn_masks = r.sub_attn,
    c_v_feats = c_feats, c_pos_ids = i64(c_pos), c_attn_masks = i64(c_mask), num_subs = num_subs,
    sub_idx2frame_idx = s2f,
  }, rows
end

--- MLM batch (reference: mlm_collate over VideoMlmDataset): every subtitle segment of the videos
-- is a row [CLS] + tokens with 15% of the tokens selected (80% <mask>, 10% a random word, 10% kept;
-- the first token when none was selected), its own frames unmasked.
function S.collate_mlm(videos, feat_dim, rs, opts)
  opts = opts or {}
  local p = opts.mask_prob or 0.15
  local rows = {}
  local labels_all = {}
  local vr = VOCAB.v_range
  for _, v in ipairs(videos) do
    for _, pair in ipairs(v.subs) do
      local toks = truncate(v.tokens[pair[1] + 1] or {}, opts.max_txt_len or 60)
      local ids, labels = {VOCAB.CLS}, {-1}
      local any = false
      for i, t in ipairs(toks) do
        local u = rs:uniform()
        if u < p then
          any = true
          local u2 = u / p
          if u2 < 0.8 then ids[i + 1] = VOCAB.MASK
          elseif u2 < 0.9 then ids[i + 1] = rs:int(vr[1], vr[2] - 1)
          else ids[i + 1] = t end
          labels[i + 1] = t
        else
          ids[i + 1], labels[i + 1] = t, -1
        end
      end
      if not any and #toks > 0 then
        ids[2], labels[2] = VOCAB.MASK, toks[1]
      end
      rows[#rows + 1] = {ids = ids, frames = pair[2], feats = v.feats, labels = labels}
    end
  end
  local r = build_rows(rows, feat_dim)
  local tgt = {}
  for i, row in ipairs(rows) do
    local m = {}
    for j = 1, r.out_len do m[j] = false end
    for t, l in ipairs(row.labels) do
      if l ~= -1 then
        m[row.n_f + t] = true
        labels_all[#labels_all + 1] = l
      end
    end
    tgt[i] = m
  end
  return {input_ids = r.ids, position_ids = r.pos, v_feat = r.v_feats, attn_masks = r.attn, gather_index = r.gather,
          txt_mask_tgt = core.tensor(tgt, {dtype = "bool"}), txt_labels = i64(labels_all)}
end

--- MFM batch (reference: mfm_collate): each frame masked with probability 0.15 (one at random when
-- none was), feat_targets = the raw features of the masked frames, masked frames zeroed in both
-- levels, f_v_masks / c_v_masks.
function S.collate_mfm(videos, feat_dim, rs, opts)
  local p = opts and opts.mask_prob or 0.15
  local masks = {}
  for b, v in ipairs(videos) do
    local m, any = {}, false
    for f = 0, v.nframes - 1 do
      m[f] = rs:uniform() < p
      any = any or m[f]
    end
    if not any then m[rs:int(0, v.nframes - 1)] = true end
    masks[b] = m
  end
  local batch, rows = S.collate_repr(videos, feat_dim)
  local B, L = batch.c_v_feats:size(1), batch.c_v_feats:size(2)
  local cm, targets = {}, {}
  for b = 1, B do
    local row = {}
    for j = 1, L do
      row[j] = (j <= videos[b].nframes) and masks[b][j - 1] or false
      if row[j] then targets[#targets + 1] = {b, j} end
    end
    cm[b] = row
  end
  local feat_targets = core.zeros({#targets, feat_dim})
  for i, bt in ipairs(targets) do feat_targets[i]:copy_(batch.c_v_feats[bt[1]][bt[2]]) end
  for _, bt in ipairs(targets) do batch.c_v_feats[bt[1]][bt[2]]:zero_() end
  local fm = {}
  local max_vl = batch.f_v_feats:size(2)
  local r = 0
  for b, v in ipairs(videos) do
    for _, pair in ipairs(v.subs) do
      r = r + 1
      local row = {}
      for j = 1, max_vl do row[j] = false end
      for j, f in ipairs(pair[2]) do
        if masks[b][f] then
          row[j] = true
          batch.f_v_feats[r][j]:zero_()
        end
      end
      fm[r] = row
    end
  end
  assert(r == #rows)
  batch.f_v_masks = core.tensor(fm, {dtype = "bool"})
  batch.c_v_masks = core.tensor(cm, {dtype = "bool"})
  batch.feat_targets = feat_targets
  return batch
end

--- FOM batch (reference: fom_collate): each frame selected with probability 0.15, the selected
-- positions shuffled among themselves; shuffled_orders (identity elsewhere and on padding) and
-- targets (-1 where not selected). Redrawn while the whole batch has no target.
function S.collate_fom(videos, feat_dim, rs, opts)
  local p = opts and opts.shuffle_prob or 0.15
  local batch = S.collate_repr(videos, feat_dim)
  local L = batch.c_v_feats:size(2)
  local orders, targets
  repeat
    orders, targets = {}, {}
    local any = false
    for b, v in ipairs(videos) do
      local o, t = {}, {}
      for j = 1, L do o[j], t[j] = j - 1, -1 end
      local P = {}
      for f = 0, v.nframes - 1 do if rs:uniform() < p then P[#P + 1] = f end end
      local Q = {}
      for i, f in ipairs(P) do Q[i] = f end
      rs:shuffle(Q)
      for i = 1, #P do
        o[P[i] + 1] = Q[i]
        t[Q[i] + 1] = P[i]
        any = true
      end
      orders[b], targets[b] = o, t
    end
  until any
  batch.shuffled_orders = i64(orders)
  batch.targets = i64(targets)
  return batch
end

local function query_fields(batch, queries)
  local Lq = 1
  for _, q in ipairs(queries) do Lq = math.max(Lq, #q) end
  local ids, mask = {}, {}
  for i, q in ipairs(queries) do
    local r, m = {}, {}
    for j = 1, Lq do
      r[j] = q[j] or VOCAB.PAD
      m[j] = j <= #q and 1 or 0
    end
    ids[i], mask[i] = r, m
  end
  local pos = {}
  for j = 1, Lq do pos[j] = j - 1 end
  batch.query_input_ids = i64(ids)
  batch.query_pos_ids = i64({pos})
  batch.query_attn_masks = i64(mask)
end

--- VSM batch (reference: vsm_collate over VsmDataset): up to 5 subtitles with frames per video
-- become queries ([CLS] + tokens), removed from the video's text (their rows keep [SEP] only), padded
-- to 5 per video by repeating the last; targets = {first frame, min(max(first + 1, last), n - 1)}.
function S.collate_vsm(videos, feat_dim, rs, opts)
  local per = opts and opts.queries_per_video or 5
  local qsubs = {}
  local queries, q_vidx, targets = {}, {}, {}
  for b, v in ipairs(videos) do
    local cands = {}
    for k, pair in ipairs(v.subs) do
      if #pair[2] > 0 and #(v.tokens[pair[1] + 1] or {}) > 0 then cands[#cands + 1] = k end
    end
    rs:shuffle(cands)
    local chosen = {}
    for i = 1, math.min(per, #cands) do chosen[i] = cands[i] end
    if #chosen == 0 then error(string.format("collate_vsm: video '%s' has no subtitle with frames", v.vid), 0) end
    table.sort(chosen)
    local removed = {}
    for _, k in ipairs(chosen) do removed[k] = true end
    qsubs[b] = removed
    local last
    for i = 1, per do
      local k = chosen[i] or chosen[#chosen]
      local pair = v.subs[k]
      local q = {VOCAB.CLS}
      for _, t in ipairs(truncate(v.tokens[pair[1] + 1], 60)) do q[#q + 1] = t end
      local st = pair[2][1]
      local ed = math.min(math.max(st + 1, pair[2][#pair[2]]), v.nframes - 1)
      queries[#queries + 1], q_vidx[#q_vidx + 1], targets[#targets + 1] = q, b - 1, {st, ed}
      last = k
    end
    assert(last)
  end
  local bidx = {}
  for b, v in ipairs(videos) do bidx[v] = b end
  local batch = S.collate_repr(videos, feat_dim, function(v, k)
    if qsubs[bidx[v]][k] then return {VOCAB.SEP} end
  end)
  query_fields(batch, queries)
  batch.q_vidx = i64(q_vidx)
  batch.targets = i64(targets)
  return batch
end

--- Frame targets {st, ed} (inclusive, 0-based) of a moment in seconds.
function S.moment_frames(ts, nframes)
  local st = math.floor(ts[1] / S.FRAME_LENGTH + 1e-6)
  local ed = math.ceil(ts[2] / S.FRAME_LENGTH - 1e-6) - 1
  st = math.max(0, math.min(st, nframes - 1))
  ed = math.max(st, math.min(ed, nframes - 1))
  return st, ed
end

--- VCMR fine-tuning batch: pairs {video, query} (one query per video, distinct videos) with the
-- full subtitles as video text and the moment's frames as start/end targets.
function S.collate_vcmr(pairs_, feat_dim)
  local videos, queries, targets, q_vidx = {}, {}, {}, {}
  for i, p in ipairs(pairs_) do
    videos[i] = p.video
    local q = {VOCAB.CLS}
    for _, t in ipairs(truncate(p.query.ids, 60)) do q[#q + 1] = t end
    queries[i] = q
    local st, ed = S.moment_frames(p.query.ts, p.video.nframes)
    targets[i], q_vidx[i] = {st, ed}, i - 1
  end
  local batch = S.collate_repr(videos, feat_dim)
  query_fields(batch, queries)
  batch.q_vidx = i64(q_vidx)
  batch.targets = i64(targets)
  return batch
end

-- ------------------------------------------------------------------ task loaders

local TaskLoader = {}
TaskLoader.__index = TaskLoader

--- A task loader for hero.train.MetaLoader: draws `batch_size` distinct videos (a reshuffled pass
-- over `videos` each epoch) and collates them with `collate(videos, feat_dim, stream)`. Its
-- position and random stream are its state.
function S.TaskLoader(opts)
  local self = setmetatable({items = opts.items, batch_size = opts.batch_size, collate = opts.collate,
                             feat_dim = opts.feat_dim, rs = S.stream(opts.seed or 1), order = {}, pos = 1,
                             epoch = 0, seed = opts.seed or 1}, TaskLoader)
  return self
end

function TaskLoader:_reshuffle()
  self.epoch = self.epoch + 1
  local order = {}
  for i = 1, #self.items do order[i] = i end
  self.order = self.rs:shuffle(order)
  self.pos = 1
end

function TaskLoader:next()
  if self.pos + self.batch_size - 1 > #self.order then self:_reshuffle() end
  local chosen = {}
  for i = 0, self.batch_size - 1 do chosen[#chosen + 1] = self.items[self.order[self.pos + i]] end
  self.pos = self.pos + self.batch_size
  return self.collate(chosen, self.feat_dim, self.rs)
end

function TaskLoader:state()
  return {rng = self.rs.g:get_state(), buf_pos = self.rs.pos, buf = self.rs.buf, order = self.order,
          pos = self.pos, epoch = self.epoch}
end

function TaskLoader:set_state(s)
  self.rs.g:set_state(s.rng)
  self.rs.buf, self.rs.pos = s.buf, s.buf_pos
  self.order, self.pos, self.epoch = s.order, s.pos, s.epoch
end

-- ------------------------------------------------------------------ VCMR evaluation

--- Scores every query against every corpus video with the model and evaluates VCMR / SVMR / VR
-- with hero.eval.retrieval. corpus: array of loaded videos; queries: array of loaded queries.
-- opts: random (a seed: score with random numbers instead of the model, the chance baseline), and
-- the retrieval options (max_vcmr_video, min_pred_l, max_pred_l, ...). Returns the evaluation.
function S.evaluate_vcmr(model, corpus, queries, feat_dim, opts)
  opts = opts or {}
  local retrieval = require "hero.eval.retrieval"
  local vsm = require "hero.models.vsm"
  local video_ids, video2idx = {}, {}
  for i, v in ipairs(corpus) do video_ids[i], video2idx[v.vid] = v.vid, i - 1 end
  local qids, qvids, gt, qtoks = {}, {}, {}, {}
  for i, q in ipairs(queries) do
    qids[i], qvids[i] = q.qid, q.vid
    gt[i] = {desc_id = q.qid, vid_name = q.vid, ts = {q.ts[1], q.ts[2]}, type = "v"}
    local t = {VOCAB.CLS}
    for _, id in ipairs(q.ids) do t[#t + 1] = id end
    qtoks[i] = t
  end
  local scores, st, ed
  local batch = S.collate_repr(corpus, feat_dim)
  local mask = batch.c_attn_masks
  local Nq, Nv, L = #queries, #corpus, mask:size(2)
  if opts.random then
    local g = core.Generator(opts.random)
    scores = core.rand({Nq, Nv}, {generator = g})
    local m = mask:unsqueeze(1):expand(Nq, Nv, L):float()
    local F = require "hero.nn.functional"
    st = F.mask_logits(core.randn({Nq, Nv, L}, {generator = g}), m)
    ed = F.mask_logits(core.randn({Nq, Nv, L}, {generator = g}), m)
  else
    local was_training = model.training
    model:evaluate()
    core.no_grad(function()
      local Y = model.v_encoder:forward_repr(batch)
      local qb = {}
      query_fields(qb, qtoks)
      local q = model:encode_queries(qb.query_input_ids, qb.query_pos_ids, qb.query_attn_masks)
      scores = vsm.video_scores(q, Y, mask)
      st, ed = vsm.st_ed_logits(model.video_query_linear:forward(q), Y, mask, model.video_st_predictor.weight,
        model.video_ed_predictor.weight)
    end)
    if was_training ~= false then model:train() end
  end
  local ropts = {max_vcmr_video = opts.max_vcmr_video or 10, min_pred_l = opts.min_pred_l or 1,
                 max_pred_l = opts.max_pred_l or 8, max_before_nms = opts.max_before_nms or 50,
                 max_after_nms = opts.max_after_nms or 20, nms_thd = opts.nms_thd or 0.5,
                 vfeat_interval = S.FRAME_LENGTH}
  return retrieval.evaluate({q2video_scores = scores, st_logits = st, ed_logits = ed, video_ids = video_ids,
                             video2idx = video2idx, query_ids = qids, query_vids = qvids}, gt, ropts)
end

return S
