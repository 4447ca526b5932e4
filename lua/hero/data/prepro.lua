--- hero.data.prepro: HERO's preprocessing into databases, as the reference's scripts do it.
--
--   * convert_video_db (scripts/collect_video_feature_paths.py + convert_videodb.py): pairs the
--     extractor's ResNet and SlowFast .npz files by video id, keeps n = min(rows) frames of each,
--     concatenates [ResNet | SlowFast] into float32 [n, D] and writes the video LMDB and
--     id2nframe.json. A feature file that cannot be read (corrupt, wrong shape or dtype) or has no
--     partner in the other stream skips its video: the video is listed in corrupted.json beside
--     id2nframe.json (as the reference records it) and in the report; strict = true raises instead.
--   * subtitle_db (scripts/prepro_sub.py): tokenizes each video's subtitles, aligns them to the
--     frames (hero.data.align_subtitles / subtitle_db_alignment) and writes the subtitle LMDB with
--     the reference's exact value layout plus vid2len.json, vid2max_frame_sub_len.json,
--     sub_info.json and meta.json.
--
-- Bad subtitles (a text that is not a string, times that are not numbers, NaN, negative times, an
-- end before the start, starts out of order) raise an error naming the video and the subtitle
-- (subs[i], sub_idx i-1). With skip_bad_subs = true they are dropped instead, the rest are sorted
-- by start time, and every dropped subtitle is listed in the report (video, index, reason). Videos
-- without features are skipped and counted (report.no_features) unless strict.
local core = require "hero.core"
local json = require "hero.json"
local io_ = require "hero.io"
local util = require "hero.data.util"
local align = require "hero.data.align"
local writer = require "hero.data.writer"

local prepro = {}

--- mkdir -p.
function prepro.mkdir_p(path)
  local acc = path:sub(1, 1) == "/" and "" or nil
  for part in path:gmatch("[^/]+") do
    acc = acc and (acc .. "/" .. part) or part
    core.fs_mkdir(acc, true)
  end
end

-- Every *.npz / *.npy file under dir (recursively), as {video id = path}; a video id found twice
-- is an error naming both files.
local function feature_files(dir, what)
  if type(dir) ~= "string" then
    error(string.format("collect_feature_pairs: the %s directory must be a path, got %s", what, type(dir)), 3)
  end
  local out = {}
  local function walk(d)
    local names, is_dir = core.fs_listdir(d)
    for i, name in ipairs(names) do
      local p = d .. "/" .. name
      if is_dir[i] then
        walk(p)
      else
        local vid = name:match("^(.*)%.npz$") or name:match("^(.*)%.npy$")
        if vid then
          if out[vid] then
            error(string.format("prepro: video '%s' has two %s feature files: '%s' and '%s'", vid, what, out[vid], p),
              0)
          end
          out[vid] = p
        end
      end
    end
  end
  walk(dir:gsub("/+$", ""))
  return out
end

--- {video id = {resnet = path, slowfast = path}} for ids with both files, the sorted ids, and the
-- ids with only one file ({vid, missing = "resnet"|"slowfast", have = path}).
function prepro.collect_feature_pairs(resnet_dir, slowfast_dir)
  local r = feature_files(resnet_dir, "ResNet")
  local s = feature_files(slowfast_dir, "SlowFast")
  local pairs_, ids, lonely = {}, {}, {}
  for vid, p in pairs(r) do
    if s[vid] then
      pairs_[vid] = {resnet = p, slowfast = s[vid]}
      ids[#ids + 1] = vid
    else
      lonely[#lonely + 1] = {vid = vid, missing = "slowfast", have = p}
    end
  end
  for vid, p in pairs(s) do
    if not r[vid] then lonely[#lonely + 1] = {vid = vid, missing = "resnet", have = p} end
  end
  table.sort(ids)
  table.sort(lonely, function(a, b) return a.vid < b.vid end)
  return pairs_, ids, lonely
end

--- The float32 [n, Dr + Ds] features of one video from its two files (n = min of the rows).
function prepro.load_video_features(vid, resnet_path, slowfast_path)
  local function load(path, what)
    local ok, t = pcall(io_.load_features, path)
    if not ok then error(string.format("video '%s': %s features: %s", vid, what, tostring(t)), 0) end
    return t
  end
  local r = load(resnet_path, "ResNet")
  local s = load(slowfast_path, "SlowFast")
  local n = math.min(r:size(1), s:size(1))
  -- convert_videodb.py's load_npz treats a video of no frame as corrupted
  if n == 0 then
    error(string.format("video '%s': no frame (%d ResNet rows, %d SlowFast rows)", vid, r:size(1), s:size(1)), 0)
  end
  return core.cat({r:narrow(1, 1, n):float(), s:narrow(1, 1, n):float()}, 2)
end

--- opts: resnet, slowfast (directories), out (the LMDB directory, e.g. ".../video_db/tv/
-- resnet_slowfast_1.5"), overwrite, strict, progress (function(i, n, vid)), compress (deflated
-- .npz values, convert_videodb.py --compress; the reference names such a directory
-- "<version>_<frame_length>_compressed"), clip_interval (seconds, -1 = whole videos: cut each video
-- into clips of int(clip_interval / frame_length) frames keyed "<vid>.<k>", as --clip_interval 60
-- does for HowTo100M) with frame_length (1.5).
-- Returns {videos = count, feat_dim = D, id2nframe = {...}, corrupted = {{vid, reason}...},
-- ids = {...}} (with clips, id2nframe and ids hold the clips).
function prepro.convert_video_db(opts)
  if type(opts) ~= "table" then error("convert_video_db: expected an options table", 2) end
  util.check_options("convert_video_db", opts, {"resnet", "slowfast", "out", "overwrite", "strict", "progress",
                                                "compress", "clip_interval", "frame_length"})
  for _, k in ipairs {"resnet", "slowfast", "out"} do
    if type(opts[k]) ~= "string" then error("convert_video_db: opts." .. k .. " (a path) is required", 2) end
  end
  for _, k in ipairs {"compress", "overwrite", "strict"} do
    if opts[k] ~= nil and type(opts[k]) ~= "boolean" then
      error(string.format("convert_video_db: opts.%s must be a boolean, got %s", k, type(opts[k])), 2)
    end
  end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    error("convert_video_db: opts.progress must be a function(i, n, vid), got " .. type(opts.progress), 2)
  end
  local clip_frames
  local interval = opts.clip_interval or -1
  if type(interval) ~= "number" then error("convert_video_db: opts.clip_interval must be a number of seconds", 2) end
  if interval ~= -1 then
    local fl = opts.frame_length or 1.5
    if type(fl) ~= "number" or fl <= 0 then error("convert_video_db: opts.frame_length must be positive", 2) end
    -- Python's int(): truncation toward zero
    local q = interval / fl
    clip_frames = math.tointeger(q >= 0 and math.floor(q) or math.ceil(q))
    if not clip_frames or clip_frames < 1 then
      error(string.format("convert_video_db: a clip_interval of %s s holds no %s s frame", tostring(interval),
        tostring(fl)), 2)
    end
  end
  local pairs_, ids, lonely = prepro.collect_feature_pairs(opts.resnet, opts.slowfast)
  local corrupted = {}
  for _, l in ipairs(lonely) do
    local reason = string.format("no %s feature file (only '%s')", l.missing == "resnet" and "ResNet" or "SlowFast",
      l.have)
    if opts.strict then error(string.format("convert_video_db: video '%s': %s", l.vid, reason), 0) end
    corrupted[#corrupted + 1] = {vid = l.vid, reason = reason}
  end
  prepro.mkdir_p(util.parent_dir(opts.out))
  local w = writer.VideoDbWriter(opts.out, {overwrite = opts.overwrite, compress = opts.compress == true})
  local kept = {}
  local ok, err = pcall(function()
    for i, vid in ipairs(ids) do
      if opts.progress then opts.progress(i, #ids, vid) end
      local fok, feats = pcall(prepro.load_video_features, vid, pairs_[vid].resnet, pairs_[vid].slowfast)
      if fok and clip_frames then
        local n, k = feats:size(1), 0
        for st = 0, n - 1, clip_frames do
          local clip = string.format("%s.%d", vid, k)
          w:add(clip, feats:narrow(1, st + 1, math.min(clip_frames, n - st)))
          kept[#kept + 1] = clip
          k = k + 1
        end
      elseif fok then
        w:add(vid, feats)
        kept[#kept + 1] = vid
      elseif util.is_fatal_error(feats) then
        error(feats, 0)
      elseif opts.strict then
        error("convert_video_db: " .. tostring(feats), 0)
      else
        corrupted[#corrupted + 1] = {vid = vid, reason = tostring(feats)}
      end
    end
  end)
  if not ok then
    w:abort()
    error(err, 0)
  end
  w:commit()
  table.sort(corrupted, function(a, b) return a.vid < b.vid end)
  local names = json.array()
  for i, c in ipairs(corrupted) do names[i] = c.vid end
  json.write_file(util.parent_dir(opts.out) .. "/corrupted.json", names)
  return {videos = #kept, ids = kept, feat_dim = w.feat_dim, id2nframe = w.id2nframe, corrupted = corrupted}
end

-- nil, or why subtitle s cannot be used.
local function sub_problem(s)
  if type(s) ~= "table" then return "not a table" end
  if type(s.text) ~= "string" then return "'text' is not a string" end
  for _, k in ipairs {"start", "end"} do
    local v = s[k]
    if type(v) ~= "number" then return string.format("'%s' is not a number", k) end
    if v ~= v then return string.format("'%s' is NaN", k) end
    if v < 0 then return string.format("'%s' is negative (%s s)", k, tostring(v)) end
    if v == math.huge then return string.format("'%s' is infinite", k) end
  end
  if s["end"] < s.start then
    return string.format("'end' (%s s) is before 'start' (%s s)", tostring(s["end"]), tostring(s.start))
  end
  return nil
end

--- The subtitle database value, sub_info entry and side-file numbers of one video.
-- sub: array of {text, start, end}; tokenize(text) -> array of ids (the caller prepares the text);
-- nframes: the video's frame count (0: derive from the last end, as the reference does).
function prepro.subtitle_entry(vid, subs, nframes, tokenize, opts)
  opts = opts or {}
  local dropped = {}
  if opts.skip_bad_subs then
    local good = {}
    for i, s in ipairs(subs) do
      local p = sub_problem(s)
      if p then
        dropped[#dropped + 1] = {vid = vid, index = i, reason = p}
      else
        good[#good + 1] = {s = s, i = i}
      end
    end
    table.sort(good, function(a, b)
      if a.s.start ~= b.s.start then return a.s.start < b.s.start end
      return a.i < b.i
    end)
    subs = {}
    for i, g in ipairs(good) do subs[i] = g.s end
  end
  local ok, info = pcall(align.align_subtitles, subs, nframes, {frame_length = opts.frame_length or 1.5})
  if not ok then error(string.format("video '%s': %s", vid, tostring(info)), 0) end
  local ids = {}
  for i, s in ipairs(subs) do ids[i] = tokenize(s.text) end
  local a = align.subtitle_db_alignment(info, #subs > 0 and ids or nil)
  local value = writer.subtitle_value{vid = vid, subs = subs, input_ids = ids, alignment = a}
  return value, writer.sub_info_entry(info), a, dropped
end

--- opts: subs (path of a JSON-lines file of {vid_name, sub = [{text, start, end}]}, or such an
-- array), out (the .db directory), tokenize (function(text) -> ids; the text is passed through
-- hero.text.prepare_subtitle first unless raw_text), vid2nframe ({vid = frames}; videos missing
-- from it are skipped and counted unless strict), frame_length (1.5), skip_bad_subs, strict,
-- overwrite, meta (extra meta.json fields), specials (token ids for meta.json: hero.data.writer.
-- specials_of(tokenizer)), vid2dur_idx (a vid2dur_idx.json copied into the database as it is).
-- Side files in the annotation's video order: vid2len, vid2max_frame_sub_len, sub_info.
-- Returns {videos = n, ids = {...}, no_features = {...}, dropped_subs = {{vid, index, reason}...}}.
function prepro.subtitle_db(opts)
  if type(opts) ~= "table" then error("prepro.subtitle_db: expected a table of options, got " .. type(opts), 2) end
  util.check_options("subtitle_db", opts, {"subs", "out", "tokenize", "raw_text", "vid2nframe", "frame_length",
                                           "skip_bad_subs", "strict", "overwrite", "meta", "specials", "vid2dur_idx",
                                           "queries", "task", "tokenizer_name"})
  if type(opts.out) ~= "string" then error("subtitle_db: opts.out (the database directory) is required", 2) end
  if type(opts.tokenize) ~= "function" then error("subtitle_db: opts.tokenize (text -> ids) is required", 2) end
  local lines = opts.subs
  if type(lines) == "string" then lines = json.read_lines(lines, {complete = true}) end
  if type(lines) ~= "table" then error("subtitle_db: opts.subs must be a JSON-lines path or an array", 2) end
  local prepare = require("hero.text").prepare_subtitle
  local function tokenize(text)
    if opts.raw_text then return opts.tokenize(text) end
    return opts.tokenize(prepare(text))
  end
  prepro.mkdir_p(util.parent_dir(opts.out))
  local w = writer.TxtDbWriter(opts.out, {overwrite = opts.overwrite})
  -- side files keep the annotation's video order, as prepro_sub.py's dicts do (readers list the
  -- videos in that order)
  local vid2len, vid2max, sub_info, order = {}, {}, {}, {}
  local report = {videos = 0, ids = {}, no_features = {}, dropped_subs = {}}
  local ok, err = pcall(function()
    for ln, ex in ipairs(lines) do
      -- sub given as one object {text, start, end} (not a list of them) would store no subtitle
      if type(ex) ~= "table" or type(ex.vid_name) ~= "string" or type(ex.sub) ~= "table"
        or (#ex.sub == 0 and next(ex.sub) ~= nil) then
        error(string.format("subtitle_db: line %d is not {vid_name = string, sub = [...]}", ln), 0)
      end
      local vid = ex.vid_name
      local nframes = opts.vid2nframe and opts.vid2nframe[vid]
      if opts.vid2nframe and nframes == nil then
        if opts.strict then error(string.format("subtitle_db: video '%s' (line %d) has no features", vid, ln), 0) end
        report.no_features[#report.no_features + 1] = vid
      else
        if vid2len[vid] then error(string.format("subtitle_db: video '%s' appears twice (line %d)", vid, ln), 0) end
        local value, info, a, dropped = prepro.subtitle_entry(vid, ex.sub, nframes or 0, tokenize, opts)
        for _, d in ipairs(dropped) do report.dropped_subs[#report.dropped_subs + 1] = d end
        w:put(vid, value)
        vid2len[vid] = a.duration
        vid2max[vid] = a.max_mtached_sub_len
        sub_info[vid] = info
        order[#order + 1] = vid
        report.videos = report.videos + 1
        report.ids[#report.ids + 1] = vid
      end
    end
    if opts.vid2dur_idx then
      -- create_txtdb.sh copies TVR's vid2dur_idx.json into the subtitle database: the video indices
      -- of the VCMR submissions come from it
      local f, ferr = io.open(opts.vid2dur_idx, "rb")
      if not f then error("subtitle_db: vid2dur_idx: " .. tostring(ferr), 0) end
      local bytes = f:read("a")
      f:close()
      local okj, parsed = pcall(json.decode, bytes)
      if not okj or type(parsed) ~= "table" or json.is_array(parsed) then
        error(string.format("subtitle_db: vid2dur_idx '%s' is not a JSON object {split: {video: [duration, index]}}",
          opts.vid2dur_idx), 0)
      end
      w:raw_file("vid2dur_idx.json", bytes)
    end
    w:json("vid2len", writer.ordered(vid2len, order))
    w:json("vid2max_frame_sub_len", writer.ordered(vid2max, order))
    w:json("sub_info", writer.ordered(sub_info, order))
    local extra = {frame_length = opts.frame_length or 1.5, task = opts.task or "tv",
                   tokenizer = opts.tokenizer_name or "roberta-base", toker = opts.tokenizer_name or "roberta-base",
                   output = opts.out}
    for k, v in pairs(opts.meta or {}) do extra[k] = v end
    w:json("meta", writer.meta(extra, opts.specials))
  end)
  if not ok then
    w:abort()
    error(err, 0)
  end
  w:commit()
  return report
end

-- Whether m is one moment {start, end} (seconds, 0 <= start <= end).
local function one_moment(m)
  return type(m) == "table" and #m == 2 and type(m[1]) == "number" and type(m[2]) == "number" and m[1] >= 0
    and m[2] >= m[1]
end

-- Whether ts is one moment {start, end} (seconds, 0 <= start <= end) or, as DiDeMo's, a list of them.
local function valid_moment(ts)
  if one_moment(ts) then return true end
  if type(ts) ~= "table" or #ts == 0 then return false end
  for _, m in ipairs(ts) do if not one_moment(m) then return false end end
  return true
end

-- Writes a text database of annotation lines (opts.queries: a JSON-lines path or an array) with
-- `entry(w, ln, q)` putting each value and returning its key, id2len entry and video (or nil);
-- then the side files. Nothing is left behind on an error.
local function annotation_db(opts, task, entry)
  local op = task == "tvr" and "query_db" or task == "tvqa" and "qa_db" or task .. "_db"
  if type(opts) ~= "table" then error(op .. ": expected an options table", 3) end
  util.check_options(op, opts, {"queries", "out", "tokenize", "raw_text", "overwrite", "meta", "specials"}, 4)
  if type(opts.queries) ~= "string" and type(opts.queries) ~= "table" then
    error(op .. ": opts.queries (a JSON-lines path or an array of annotations) is required", 3)
  end
  if type(opts.out) ~= "string" then error(op .. ": opts.out (the database directory) is required", 3) end
  if type(opts.tokenize) ~= "function" then error(op .. ": opts.tokenize (text -> ids) is required", 3) end
  local lines = opts.queries
  -- the annotation's own field order goes into the values, as Python's dicts keep it
  if type(lines) == "string" then lines = json.read_lines(lines, {ordered = true, complete = true}) end
  prepro.mkdir_p(util.parent_dir(opts.out))
  local w = writer.TxtDbWriter(opts.out, {overwrite = opts.overwrite})
  local ok, err = pcall(function()
    -- as prepro_query.py's dicts: ids in annotation order, a repeated id keeping its first place
    -- and its last line's value (db[str(id)] = example overwrites)
    local id2len, q2v, data, ids, vids = {}, {}, {}, {}, {}
    local seen = {}
    local replacing = setmetatable({}, {__index = {
      put = function(_, key, value) w:put(key, value, seen[key]) end,
      json = function(_, ...) return w:json(...) end,
    }})
    for ln, q in ipairs(lines) do
      local key, len, vid = entry(replacing, ln, q)
      if not seen[key] then ids[#ids + 1] = key end
      seen[key] = true
      id2len[key] = len
      if vid ~= nil then
        if q2v[key] == nil then vids[#vids + 1] = key end
        q2v[key] = vid
      end
      data[#data + 1] = q
    end
    w:json("id2len", writer.ordered(id2len, ids))
    w:json("query2video", writer.ordered(q2v, vids))
    w:json("query_data.jsonl", data)
    w:json("meta", writer.meta(opts.meta or {task = task}, opts.specials))
  end)
  if not ok then
    w:abort()
    error(err, 0)
  end
  w:commit()
end

-- The token ids of one annotation text, as prepro_query.py's roberta_tokenize makes them (all-caps
-- text lower-cased first), or of the text as it is with opts.raw_text.
local function annotation_ids(opts, text)
  if opts.raw_text then return opts.tokenize(text) end
  return opts.tokenize(require("hero.text").prepare_query(text))
end

-- Stores annotation ln, whose text is q.desc (a query, a statement), under its desc_id, its value
-- made by make_value(q, ids); returns what annotation_db records: the key, the length, the video.
-- An annotation's id (a database key): an integer or a non-empty string.
local function check_id(op, ln, field, id)
  if math.type(id) ~= "integer" and (type(id) ~= "string" or id == "") then
    local ok, shown = pcall(json.encode, id)
    error(string.format("%s: entry %d: %s %s is not an integer or a non-empty string", op, ln, field,
      ok and shown or tostring(id)), 0)
  end
end

local function put_desc_entry(op, w, opts, ln, q, make_value)
  check_id(op, ln, "desc_id", q.desc_id)
  local ids = annotation_ids(opts, q.desc)
  local key = tostring(q.desc_id)
  w:put(key, make_value(q, ids))
  return key, #ids, q.vid_name
end

--- A TVR-style query database (TVR, How2R, DiDeMo, MSR-VTT; prepro_query.py --task tvr). opts:
-- queries (JSON-lines path or array of {desc_id, desc, vid_name, ts, duration, type, ...}; vid_name
-- and ts may be absent, as on test splits; ts may list several moments, as DiDeMo's), out,
-- tokenize (text -> ids; text passed through prepare_query unless raw_text), overwrite, meta,
-- specials. Side files: id2len.json, query2video.json (the queries naming a video),
-- query_data.jsonl, meta.json.
function prepro.query_db(opts)
  annotation_db(opts, "tvr", function(w, ln, q)
    if type(q) ~= "table" or q.desc_id == nil or type(q.desc) ~= "string" then
      error(string.format("query_db: entry %d is not {desc_id, desc, vid_name, ts, ...}", ln), 0)
    end
    if q.vid_name ~= nil and type(q.vid_name) ~= "string" then
      error(string.format("query_db: query %s (entry %d): vid_name must be a string", tostring(q.desc_id), ln), 0)
    end
    if q.ts ~= nil and not valid_moment(q.ts) then
      error(string.format("query_db: query %s (entry %d): ts must be {start, end} seconds with 0 <= start <= end "
        .. "(or a list of them)", tostring(q.desc_id), ln), 0)
    end
    return put_desc_entry("query_db", w, opts, ln, q, writer.query_value)
  end)
end

--- A TVQA-style question database (TVQA, How2QA; prepro_query.py --task tvqa). opts: queries
-- (JSON-lines path or array of {qid, q, a0 .. a4, answer_idx, ts, vid_name, ...}; answer_idx and
-- ts may be absent), out, tokenize, raw_text, overwrite, meta, specials. id2len.json holds the six
-- lengths (question, five answers) of each question.
function prepro.qa_db(opts)
  annotation_db(opts, "tvqa", function(w, ln, q)
    if type(q) ~= "table" or q.qid == nil or type(q.q) ~= "string" or type(q.vid_name) ~= "string" then
      error(string.format("qa_db: entry %d is not {qid, q, a0 .. a4, answer_idx, ts, vid_name}", ln), 0)
    end
    check_id("qa_db", ln, "qid", q.qid)
    if q.answer_idx ~= nil and (math.type(q.answer_idx) ~= "integer" or q.answer_idx < 0 or q.answer_idx > 4) then
      error(string.format("qa_db: question %s (entry %d): answer_idx must be an integer 0..4, got %s",
        tostring(q.qid), ln, tostring(q.answer_idx)), 0)
    end
    local ids, lens = {}, {}
    for i, field in ipairs {"q", "a0", "a1", "a2", "a3", "a4"} do
      if type(q[field]) ~= "string" then
        error(string.format("qa_db: question %s (entry %d): %s must be a string", tostring(q.qid), ln, field), 0)
      end
      ids[i] = annotation_ids(opts, q[field])
      lens[i] = #ids[i]
    end
    local key = tostring(q.qid)
    w:put(key, writer.qa_value(q, ids))
    return key, json.array(lens), q.vid_name
  end)
end

--- A VIOLIN statement database (prepro_query.py --task violin). opts: queries (JSON-lines path or
-- array of {desc_id, desc, vid_name, label}), out, tokenize, raw_text, overwrite, meta, specials.
-- Side files: id2len.json, query2video.json, query_data.jsonl, meta.json.
function prepro.violin_db(opts)
  annotation_db(opts, "violin", function(w, ln, q)
    if type(q) ~= "table" or q.desc_id == nil or type(q.desc) ~= "string" or type(q.vid_name) ~= "string" then
      error(string.format("violin_db: entry %d is not {desc_id, desc, vid_name, label}", ln), 0)
    end
    if q.label ~= 0 and q.label ~= 1 then
      error(string.format("violin_db: statement %s (entry %d): label must be 0 or 1, got %s", tostring(q.desc_id), ln,
        tostring(q.label)), 0)
    end
    return put_desc_entry("violin_db", w, opts, ln, q, writer.violin_value)
  end)
end

-- The subtitles (0-based indices) overlapping a clip's moment ts = {st, ed}, by
-- prepro_tvc.py's rule: a subtitle starting or ending strictly inside it, or spanning it.
function prepro.overlapping_subs(ts, subs)
  local st, ed = ts[1], ts[2]
  local out = {}
  for i, sub in ipairs(subs) do
    local s0, s1 = sub.start, sub["end"]
    if (st < s0 and s0 < ed) or (st < s1 and s1 < ed) or (s0 < st and st < ed and ed < s1) then
      out[#out + 1] = i - 1
    end
  end
  return out
end

-- Appends id to groups[key] (a new group is remembered in `order`, the keys' first-seen order).
local function group(groups, order, key, id)
  if not groups[key] then
    groups[key] = json.array()
    order[#order + 1] = key
  end
  table.insert(groups[key], id)
end

--- The TVC caption databases as prepro_tvc.py writes them: out/cap.db (a value per caption, with
-- id2len.json (empty, as the reference leaves it), cap2vid.json, vid2caps.json), out/clip.db (a
-- value per clip, with clip2vid.json, vid2clips.json) and out/meta.json. opts: captions
-- (JSON-lines path or array of {clip_id, vid_name, ts, duration, descs = {{desc_id, desc}}}),
-- subs (the subtitle JSON lines {vid_name, sub = {{text, start, end}}}, for each clip's overlapping
-- subtitles), out, tokenize (text -> ids; captions are tokenized as they are), overwrite, meta,
-- specials. ts must be {start, end} seconds with 0 <= start <= end; a repeated desc_id or clip_id
-- replaces the earlier value, as in prepro_tvc.py. Returns {clips =, captions =}.
function prepro.caption_db(opts)
  if type(opts) ~= "table" then error("prepro.caption_db: expected a table of options, got " .. type(opts), 2) end
  util.check_options("caption_db", opts, {"captions", "subs", "out", "tokenize", "overwrite", "meta", "specials"})
  if type(opts.out) ~= "string" then error("caption_db: opts.out (the output directory) is required", 2) end
  local lines = opts.captions
  if type(lines) == "string" then lines = json.read_lines(lines, {complete = true}) end
  if type(lines) ~= "table" then error("caption_db: opts.captions must be a JSON-lines path or an array", 2) end
  local subs = opts.subs
  if type(subs) == "string" then subs = json.read_lines(subs, {complete = true}) end
  local vid2subs = {}
  for _, v in ipairs(subs or {}) do
    if type(v) == "table" and type(v.vid_name) == "string" then vid2subs[v.vid_name] = v.sub end
  end
  prepro.mkdir_p(opts.out)
  local cw = writer.TxtDbWriter(opts.out .. "/cap.db", {overwrite = opts.overwrite})
  local lw = writer.TxtDbWriter(opts.out .. "/clip.db", {overwrite = opts.overwrite})
  local report = {clips = 0, captions = 0}
  local ok, err = pcall(function()
    local cap2vid, clip2vid, vid2caps, vid2clips = {}, {}, {}, {}
    local cap_vids, clip_vids = {}, {} -- first-seen order of the videos
    -- a repeated desc_id or clip_id replaces the stored value, as prepro_tvc.py's
    -- cap_db[cap_id] = cap and clip_db[clip_id] = clip do; its id is listed again in vid2caps /
    -- vid2clips, as the reference's list appends
    local cap_written, clip_written = {}, {}
    for ln, ex in ipairs(lines) do
      if type(ex) ~= "table" or ex.clip_id == nil or type(ex.vid_name) ~= "string" or type(ex.descs) ~= "table" then
        error(string.format("caption_db: entry %d is not {clip_id, vid_name, ts, duration, descs}", ln), 0)
      end
      local ts = ex.ts
      -- as query_db: a negative or reversed moment is a broken annotation, not a clip to caption
      if not one_moment(ts) then
        error(string.format("caption_db: clip %s (entry %d): ts must be {start, end} seconds with 0 <= start <= end",
          tostring(ex.clip_id), ln), 0)
      end
      local vsubs = vid2subs[ex.vid_name]
      if vsubs == nil then
        error(string.format("caption_db: clip %s (entry %d): video '%s' has no subtitles in opts.subs",
          tostring(ex.clip_id), ln, ex.vid_name), 0)
      end
      local ids = {}
      for i, cap in ipairs(ex.descs) do
        if type(cap) ~= "table" or cap.desc_id == nil or type(cap.desc) ~= "string" then
          error(string.format("caption_db: clip %s (entry %d): caption %d is not {desc_id, desc}",
            tostring(ex.clip_id), ln, i), 0)
        end
        ids[i] = opts.tokenize(cap.desc)
      end
      local caps, clip = writer.caption_values(ex, ids, prepro.overlapping_subs(ts, vsubs))
      local clip_id, vid = tostring(ex.clip_id), ex.vid_name
      clip2vid[clip_id] = vid
      group(vid2clips, clip_vids, vid, clip_id)
      for i, cap in ipairs(ex.descs) do
        local cap_id = tostring(cap.desc_id)
        cw:put(cap_id, caps[i], cap_written[cap_id])
        cap_written[cap_id] = true
        cap2vid[cap_id] = vid
        group(vid2caps, cap_vids, vid, cap_id)
        report.captions = report.captions + 1
      end
      lw:put(clip_id, clip, clip_written[clip_id])
      clip_written[clip_id] = true
      report.clips = report.clips + 1
    end
    cw:json("id2len", {})
    cw:json("cap2vid", cap2vid)
    cw:json("vid2caps", writer.ordered(vid2caps, cap_vids))
    lw:json("clip2vid", clip2vid)
    lw:json("vid2clips", writer.ordered(vid2clips, clip_vids))
  end)
  if not ok then
    cw:abort()
    lw:abort()
    error(err, 0)
  end
  cw:commit()
  lw:commit()
  json.write_file(opts.out .. "/meta.json", writer.meta(opts.meta or {task = "tvc"}, opts.specials), {indent = 4})
  return report
end

return prepro
