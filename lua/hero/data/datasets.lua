--- hero.data.datasets: videos joined with their subtitles, as the reference's
-- VideoFeatSubTokDataset (data/data.py) sees them, and videos alone (VideoOnlyDataset).
--
--   local ds = hero.data.VideoSubDataset{video_db = "video_db/tv/resnet_slowfast_1.5",
--                                        sub_db = "txt_db/tv_subtitles.db", max_clip_len = 100}
--   local v = ds:get("friends_s01e01_seg02_clip_00")
--   -- v = {vid =, v_feat = f32 [nframes, D], sub2frames = {{sub_idx, {frames...}}, ...},
--   --      input_ids = {{tokens of subtitle 0}, ...}}
--
-- sub2frames is hero.data.compute_sub2frames(db value, max_clip_len) (a prefix of the subtitles,
-- frames >= max_clip_len dropped); frames at or past the video's feature length are dropped too
-- (the reference drops them from the frame inputs only, which misaligns the fusion, hero-spec §9.22;
-- here both agree) and counted in ds.stats.frames_dropped. A dataset is anything with :ids(),
-- :get(vid) -> video or nil, reason, :length(vid) and :special_ids(); MemoryDataset holds videos
-- in memory (tests, fixtures, synthetic data).
local video_db = require "hero.data.video_db"
local txt_db = require "hero.data.txt_db"
local align = require "hero.data.align"
local json = require "hero.json"
local core = require "hero.core"

local datasets = {}

local function fail(op, fmt, ...)
  error(op .. ": " .. string.format(fmt, ...), 3)
end

local function check_opts(op, opts, known)
  if type(opts) ~= "table" then fail(op, "expected an options table") end
  local ok = {}
  for _, k in ipairs(known) do ok[k] = true end
  for k in pairs(opts) do
    if not ok[k] then fail(op, "unknown option '%s' (%s)", tostring(k), table.concat(known, ", ")) end
  end
end

-- The least value of each integer option: -1 means "no limit" where it does (max_txt_len; max_clip_len,
-- whose other values must keep a frame), and a context cannot be negative (it removed the text).
local LEAST = {max_clip_len = -1, max_txt_len = -1, sub_ctx_len = 0}

local function opt_int(op, opts, name, default)
  local v = opts[name]
  if v == nil then return default end
  if math.type(v) ~= "integer" then
    -- the string "5" is named as one, not printed as if it were the number
    fail(op, "opts.%s must be an integer, got %s", name, type(v) == "number" and tostring(v) or type(v)
      .. (type(v) == "string" and " '" .. v .. "'" or ""))
  end
  if LEAST[name] and (v < LEAST[name] or (name == "max_clip_len" and v == 0)) then
    fail(op, "opts.%s must be %s, got %d", name, name == "max_clip_len" and "-1 (no limit) or at least 1"
      or name == "max_txt_len" and "-1 (no limit) or at least 0" or "at least 0", v)
  end
  return v
end

-- Frames of sub2frames at or past n removed; returns the new list and how many were removed.
local function clip_frames(s2f, n)
  local out, dropped = json.array(), 0
  for i, pair in ipairs(s2f) do
    local keep = json.array()
    for _, f in ipairs(pair[2]) do
      if f < n then keep[#keep + 1] = f else dropped = dropped + 1 end
    end
    out[i] = json.array {pair[1], keep}
  end
  return out, dropped
end

local function special_ids_of(meta, op)
  local sp = {}
  for _, k in ipairs {"CLS", "SEP", "PAD", "MASK", "BOS", "EOS", "UNK"} do sp[k] = meta[k] end
  if meta.v_range then sp.v_range = {meta.v_range[1], meta.v_range[2]} end
  if math.type(sp.CLS) ~= "integer" or math.type(sp.SEP) ~= "integer" or math.type(sp.MASK) ~= "integer" then
    fail(op, "the text db's meta.json lacks integer CLS, SEP and MASK ids")
  end
  return sp
end

-- A copy of opts.ids (an array of video id strings), or an error naming the bad entry.
local function copy_ids(op, ids)
  if type(ids) ~= "table" then fail(op, "opts.ids must be an array of video ids") end
  -- a table with holes or other keys would be read as fewer ids (or none)
  local n = 0
  for _ in pairs(ids) do n = n + 1 end
  if n ~= #ids then
    fail(op, "opts.ids must be an array of video ids (1..n, no holes), got %d entries for %d", n, #ids)
  end
  local copy = {}
  for i, v in ipairs(ids) do
    if type(v) ~= "string" then fail(op, "opts.ids[%d] is not a string", i) end
    copy[i] = v
  end
  return copy
end

-- The frame count of vid in `counts` (vid -> frames) capped at max_clip_len (-1: no cap); 0 when
-- unknown.
local function capped_length(counts, vid, max_clip_len)
  local n = counts[vid]
  if math.type(n) ~= "integer" then return 0 end
  if max_clip_len >= 0 and n > max_clip_len then n = max_clip_len end
  return n
end

-- ------------------------------------------------------------------ VideoSubDataset

local VideoSub = {}
VideoSub.__index = VideoSub
VideoSub.__name = "hero.data.VideoSubDataset"

--- VideoSubDataset{video_db = dir or VideoDb, sub_db = dir or TxtDb, max_clip_len = 100,
--   max_txt_len = 60, sub_ctx_len = 0, ids = {vid...}}
-- ids: the videos (default: the keys of the subtitle db's vid2len.json, in file order, as the
-- reference's SubTokLmdb lists them). max_clip_len = -1 is the reference's uncapped setting, quirk
-- included: every subtitle and frame of the alignment, but the features without their last frame
-- (VideoFeatLmdb's features[:-1]; the alignment's frames past them are dropped and counted).
-- max_txt_len and sub_ctx_len are defaults for the task builders (hero.data.tasks).
function datasets.VideoSubDataset(opts)
  local op = "hero.data.VideoSubDataset"
  check_opts(op, opts, {"video_db", "sub_db", "max_clip_len", "max_txt_len", "sub_ctx_len", "ids"})
  local max_clip_len = opt_int(op, opts, "max_clip_len", 100)
  local self = setmetatable({max_clip_len = max_clip_len, max_txt_len = opt_int(op, opts, "max_txt_len", 60),
    sub_ctx_len = opt_int(op, opts, "sub_ctx_len", 0), stats = {frames_dropped = 0}}, VideoSub)
  local vdb = opts.video_db
  if type(vdb) == "string" then
    vdb = video_db.open(vdb, {max_clip_len = max_clip_len})
    self._own_vdb = true
  elseif type(vdb) ~= "table" or type(vdb.get) ~= "function" then
    fail(op, "opts.video_db must be a directory or an open video db")
  end
  local sdb = opts.sub_db
  if type(sdb) == "string" then
    sdb = txt_db.open(sdb)
    self._own_sdb = true
  elseif type(sdb) ~= "table" or type(sdb.get) ~= "function" then
    fail(op, "opts.sub_db must be a directory or an open text db")
  end
  self.video_db, self.sub_db = vdb, sdb
  self._special = special_ids_of(sdb:meta(), op)
  local vid2len = sdb:has_file("vid2len") and sdb:json("vid2len") or nil
  self._vid2len = vid2len or {}
  local ids = opts.ids
  if ids == nil then
    if vid2len == nil then fail(op, "the subtitle db has no vid2len.json; pass opts.ids") end
    ids = json.keys(vid2len)
  end
  self._ids = copy_ids(op, ids)
  return self
end

function VideoSub:ids() return self._ids end
function VideoSub:__len() return #self._ids end
function VideoSub:special_ids() return self._special end

--- Frames of vid for length bucketing (vid2len.json capped at max_clip_len; 0 when unknown).
function VideoSub:length(vid) return capped_length(self._vid2len, vid, self.max_clip_len) end

--- The video vid (see the module comment), or nil and the reason when one of the databases
-- lacks it. Corrupt values raise errors naming the video.
function VideoSub:get(vid)
  local op = "VideoSubDataset:get"
  if type(vid) ~= "string" then fail(op, "the video id must be a string, got %s", type(vid)) end
  if self.sub_db == nil then fail(op, "the dataset is closed") end
  local sub = self.sub_db:get(vid)
  if sub == nil then return nil, string.format("video '%s' is not in the subtitle db", vid) end
  local feats = self.video_db:get(vid)
  if feats == nil then return nil, string.format("video '%s' is not in the video db", vid) end
  if feats:dim() ~= 2 then fail(op, "video '%s': features must be [nframes, D], got %d dims", vid, feats:dim()) end
  if type(sub.input_ids) ~= "table" then fail(op, "video '%s': the subtitle db value has no input_ids", vid) end
  local s2f = align.compute_sub2frames(sub, self.max_clip_len).sub2frames
  local dropped
  s2f, dropped = clip_frames(s2f, feats:size(1))
  self.stats.frames_dropped = self.stats.frames_dropped + dropped
  return {vid = vid, v_feat = feats, sub2frames = s2f, input_ids = sub.input_ids}
end

function VideoSub:close()
  if self._own_vdb and self.video_db then self.video_db:close() end
  if self._own_sdb and self.sub_db then self.sub_db:close() end
  self.video_db, self.sub_db = nil, nil
end

VideoSub.__close = VideoSub.close

function VideoSub:__tostring()
  return string.format("hero.data.VideoSubDataset(%d videos, max_clip_len %d)", #self._ids, self.max_clip_len)
end

-- ------------------------------------------------------------------ VideoOnlyDataset

local VideoOnly = {}
VideoOnly.__index = VideoOnly
VideoOnly.__name = "hero.data.VideoOnlyDataset"

--- VideoOnlyDataset{video_db = dir or VideoDb, special_ids = the query db's meta.json (or
--   query_db = its directory), max_clip_len = 100, ids = {vid...}}
-- Videos without subtitles, as the reference's VideoFeatDataset (data/vr_video_only.py) gives them
-- to DiDeMo and MSR-VTT "video_only": one segment holding every frame, whose text is [CLS] alone
-- (tasks.video_item builds it from video_only = true). ids: default the video db's id2nframe.json
-- keys, sorted; vid2idx: each of those keys' 0-based position in that order (the reference's
-- global video index, written into retrieval submissions).
function datasets.VideoOnlyDataset(opts)
  local op = "hero.data.VideoOnlyDataset"
  check_opts(op, opts, {"video_db", "special_ids", "query_db", "max_clip_len", "ids"})
  local max_clip_len = opt_int(op, opts, "max_clip_len", 100)
  local self = setmetatable({max_clip_len = max_clip_len, max_txt_len = 60, sub_ctx_len = 0, video_only = true},
    VideoOnly)
  local meta = opts.special_ids
  if meta == nil and opts.query_db ~= nil then
    local qdb = opts.query_db
    if type(qdb) == "string" then
      local path = qdb .. "/meta.json"
      local ok, m = pcall(json.read_file, path)
      if not ok then fail(op, "cannot read the query db's meta.json: %s", tostring(m)) end
      meta = m
    elseif type(qdb) == "table" and type(qdb.meta) == "function" then
      meta = qdb:meta()
    else
      fail(op, "opts.query_db must be a directory or an open text db")
    end
  end
  if type(meta) ~= "table" then
    fail(op, "opts.special_ids (the query db's meta.json: CLS, SEP) or opts.query_db is required")
  end
  self._special = {}
  for _, k in ipairs {"CLS", "SEP", "PAD", "MASK", "BOS", "EOS", "UNK"} do self._special[k] = meta[k] end
  if math.type(self._special.CLS) ~= "integer" or math.type(self._special.SEP) ~= "integer" then
    fail(op, "the special ids lack integer CLS and SEP")
  end
  local vdb = opts.video_db
  if type(vdb) == "string" then
    vdb = video_db.open(vdb, {max_clip_len = max_clip_len})
    self._own_vdb = true
  elseif type(vdb) ~= "table" or type(vdb.get) ~= "function" or type(vdb.id2nframe) ~= "function" then
    fail(op, "opts.video_db must be a directory or an open video db")
  end
  self.video_db = vdb
  self._id2nframe = vdb:id2nframe()
  local all = json.keys(self._id2nframe)
  table.sort(all)
  self.vid2idx = {}
  for i, v in ipairs(all) do self.vid2idx[v] = i - 1 end
  self._ids = copy_ids(op, opts.ids == nil and all or opts.ids)
  return self
end

function VideoOnly:ids() return self._ids end
function VideoOnly:__len() return #self._ids end
function VideoOnly:special_ids() return self._special end

--- Frames of vid for length bucketing (id2nframe.json capped at max_clip_len; 0 when unknown).
function VideoOnly:length(vid) return capped_length(self._id2nframe, vid, self.max_clip_len) end

--- The video vid: {vid, v_feat, sub2frames = {{0, {0 .. nframes-1}}}, input_ids = {},
-- video_only = true}, or nil and the reason when the video db lacks it.
function VideoOnly:get(vid)
  local op = "VideoOnlyDataset:get"
  if type(vid) ~= "string" then fail(op, "the video id must be a string, got %s", type(vid)) end
  if self.video_db == nil then fail(op, "the dataset is closed") end
  local feats = self.video_db:get(vid)
  if feats == nil then return nil, string.format("video '%s' is not in the video db", vid) end
  if feats:dim() ~= 2 then fail(op, "video '%s': features must be [nframes, D], got %d dims", vid, feats:dim()) end
  local frames = json.array()
  for f = 0, feats:size(1) - 1 do frames[#frames + 1] = f end
  return {vid = vid, v_feat = feats, sub2frames = json.array {json.array {0, frames}}, input_ids = {},
          video_only = true}
end

function VideoOnly:close()
  if self._own_vdb and self.video_db then self.video_db:close() end
  self.video_db = nil
end

VideoOnly.__close = VideoOnly.close

function VideoOnly:__tostring()
  return string.format("hero.data.VideoOnlyDataset(%d videos, max_clip_len %d)", #self._ids, self.max_clip_len)
end

-- ------------------------------------------------------------------ ConcatDataset

local Concat = {}
Concat.__index = Concat
Concat.__name = "hero.data.ConcatDataset"

--- ConcatDataset{parts = {dataset or dataset spec, ...}}: the videos of several datasets as one,
-- as the reference's ConcatDataset joins the feature shards of a pre-training target
-- (vfeat_shards): ids in part order, each video read from the first part listing it. A part may be
-- given as a dataset spec ({type = "VideoSubDataset", ...}, as worker threads build them). Special
-- ids, max_txt_len and sub_ctx_len are the first part's.
function datasets.ConcatDataset(opts)
  local op = "hero.data.ConcatDataset"
  check_opts(op, opts, {"parts"})
  if type(opts.parts) ~= "table" or #opts.parts == 0 then fail(op, "opts.parts must be a non-empty list") end
  local parts, ids, owner = {}, {}, {}
  for i, p in ipairs(opts.parts) do
    if type(p) == "table" and type(p.type) == "string" and type(p.get) ~= "function" then
      p = require("hero.data.prefetch").dataset_from_spec(p)
    end
    if type(p) ~= "table" or type(p.get) ~= "function" or type(p.ids) ~= "function" then
      fail(op, "opts.parts[%d] must be a hero.data dataset or a dataset spec", i)
    end
    parts[i] = p
    for _, vid in ipairs(p:ids()) do
      ids[#ids + 1] = vid
      if owner[vid] == nil then owner[vid] = p end
    end
  end
  local first = parts[1]
  return setmetatable({parts = parts, _ids = ids, _owner = owner, max_txt_len = first.max_txt_len,
    sub_ctx_len = first.sub_ctx_len, max_clip_len = first.max_clip_len, stats = first.stats}, Concat)
end

function Concat:ids() return self._ids end
function Concat:__len() return #self._ids end
function Concat:special_ids() return self.parts[1]:special_ids() end

function Concat:length(vid)
  local p = self._owner[vid]
  return p and p.length and p:length(vid) or 0
end

function Concat:get(vid)
  local p = self._owner[vid]
  if p == nil then return nil, string.format("video '%s' is in none of the dataset's parts", tostring(vid)) end
  return p:get(vid)
end

function Concat:close()
  for _, p in ipairs(self.parts) do if p.close then p:close() end end
end

Concat.__close = Concat.close

function Concat:__tostring()
  return string.format("hero.data.ConcatDataset(%d parts, %d videos)", #self.parts, #self._ids)
end

-- ------------------------------------------------------------------ MemoryDataset

local Memory = {}
Memory.__index = Memory
Memory.__name = "hero.data.MemoryDataset"

--- MemoryDataset{videos = {vid = {v_feat = tensor [n, D], sub2frames = {{k, {frames}}, ...} or
--   unique_sub2frames = ..., input_ids = {{...}, ...}}}, ids = {...} (default: sorted keys),
--   special_ids = {CLS =, SEP =, MASK =, v_range = {lo, hi}}, max_clip_len = -1,
--   max_txt_len = 60, sub_ctx_len = 0}
-- unique_sub2frames (a subtitle db value's) is cut with compute_sub2frames(max_clip_len) and
-- v_feat to max_clip_len frames; sub2frames is taken as it is. A vid listed in ids but absent
-- from videos is "missing" (nil, reason), like a video absent from the LMDB.
function datasets.MemoryDataset(opts)
  local op = "hero.data.MemoryDataset"
  check_opts(op, opts, {"videos", "ids", "special_ids", "max_clip_len", "max_txt_len", "sub_ctx_len"})
  if type(opts.videos) ~= "table" then fail(op, "opts.videos must be a table {vid = video}") end
  if type(opts.special_ids) ~= "table" then fail(op, "opts.special_ids is required ({CLS, SEP, MASK, v_range})") end
  local ids = opts.ids
  if ids == nil then
    ids = {}
    for k in pairs(opts.videos) do ids[#ids + 1] = k end
    table.sort(ids)
  end
  return setmetatable({videos = opts.videos, _ids = ids, _special = opts.special_ids,
    max_clip_len = opt_int(op, opts, "max_clip_len", -1), max_txt_len = opt_int(op, opts, "max_txt_len", 60),
    sub_ctx_len = opt_int(op, opts, "sub_ctx_len", 0), stats = {frames_dropped = 0}}, Memory)
end

function Memory:ids() return self._ids end
function Memory:__len() return #self._ids end
function Memory:special_ids() return self._special end

function Memory:length(vid)
  local v = self.videos[vid]
  if v == nil or not core.is_tensor(v.v_feat) then return 0 end
  local n = v.v_feat:size(1)
  if self.max_clip_len >= 0 and n > self.max_clip_len then n = self.max_clip_len end
  return n
end

function Memory:get(vid)
  local v = self.videos[vid]
  if v == nil then return nil, string.format("video '%s' is not in the dataset", tostring(vid)) end
  if v.error then error(string.format("MemoryDataset:get: video '%s': %s", vid, v.error), 2) end
  local feats = v.v_feat
  if not core.is_tensor(feats) or feats:dim() ~= 2 then
    error(string.format("MemoryDataset:get: video '%s' has no [nframes, D] v_feat", vid), 2)
  end
  if self.max_clip_len >= 0 and feats:size(1) > self.max_clip_len then
    feats = feats:narrow(1, 1, self.max_clip_len)
  end
  local s2f = v.sub2frames
  if s2f == nil then
    s2f = align.compute_sub2frames(v, self.max_clip_len, feats:size(1)).sub2frames
  end
  local dropped
  s2f, dropped = clip_frames(s2f, feats:size(1))
  self.stats.frames_dropped = self.stats.frames_dropped + dropped
  return {vid = vid, v_feat = feats, sub2frames = s2f, input_ids = v.input_ids}
end

function Memory.close() end

return datasets
