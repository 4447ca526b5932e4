--- HERO preprocessing: extractor features and subtitles into the databases the readers load.
--
--   lua5.4 examples/prepro.lua --resnet resnet_features --slowfast slowfast_features \
--     --subs tv_subtitles.jsonl --vocab vocab.json --merges merges.txt --out data
--
-- writes
--   data/video_db/<name>/resnet_slowfast_<frame length>   video LMDB (float32 [n, 2048 + 2304] per video)
--   data/video_db/<name>/id2nframe.json, corrupted.json
--   data/txt_db/<name>_subtitles.db                      subtitle LMDB + vid2len.json,
--                                                        vid2max_frame_sub_len.json, sub_info.json, meta.json
--
--   lua5.4 examples/prepro.lua --queries tvr_val_release.jsonl --query-db tvr_val --vocab vocab.json \
--     --merges merges.txt --out data [--query-task tvr|tvqa|violin]
--
-- writes data/txt_db/tvr_val.db, a query database as the reference's prepro_query.py writes it
-- (id2len.json, query2video.json, query_data.jsonl, meta.json): --query-task tvr (the default) for
-- TVR, How2R, DiDeMo and MSR-VTT queries {desc_id, desc, vid_name, ts, ...} (test splits without
-- ts or vid_name included), tvqa for TVQA / How2QA questions {qid, q, a0 .. a4, answer_idx, ts,
-- vid_name}, violin for VIOLIN statements {desc_id, desc, vid_name, label}. It needs no
-- features; with --resnet and --slowfast the video database is built too.
--
--   lua5.4 examples/prepro.lua --captions tvc_train_release.jsonl --caption-db tvc_train --subs \
--     tv_subtitles.jsonl --vocab vocab.json --merges merges.txt --out data
--
-- writes data/txt_db/tvc_train/{cap.db, clip.db, meta.json}, the TVC caption databases as
-- prepro_tvc.py writes them (each clip's overlapping subtitles from --subs).
-- Options: --name tv, --frame-length 1.5, --overwrite (replace existing databases), --strict
-- (stop at the first unreadable or unpaired feature file instead of skipping the video and
-- listing it in corrupted.json), --skip-bad-subs (drop invalid subtitles, e.g. an end before the
-- start or a negative time, and list them, instead of stopping with an error naming the video and
-- the subtitle), --quiet, --compress (the video database's values as deflated .npz archives,
-- convert_videodb.py --compress, in resnet_slowfast_<frame length>_compressed), --clip-interval S
-- (cut each video into clips of S seconds keyed <vid>.<k>, as --clip_interval 60 does for
-- HowTo100M; the subtitle database is then not aligned here), --vid2nframe FILE (align the
-- subtitles with these frame counts, as prepro_sub.py --vid2nframe tv_vid2nframe.json does,
-- instead of the features' own; with it --subs needs no features), --vid2dur-idx FILE (copied into
-- the subtitle database, as create_txtdb.sh copies TVR's vid2dur_idx.json there: the VCMR
-- submissions' video indices). meta.json's special ids are the tokenizer's (<s>, </s>, <pad>,
-- <mask>, <unk>, v_range from "." to "<|endoftext|>"), as the reference's scripts take them.
-- The subtitle file has one JSON object per line: {"vid_name": "...", "sub": [{"text": "...",
-- "start": 0.4, "end": 4.1}, ...]}. Features without subtitles are fine; subtitles of videos without
-- features are skipped and counted.
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local hero = require "hero"
local prepro = require "hero.data.prepro"

local function usage(msg)
  io.stderr:write("prepro: ", msg, "\n(lua5.4 examples/prepro.lua --help for the options)\n")
  os.exit(2)
end

-- A step that failed: its error in the command line's words, exit status 1.
local function failed(err, newline)
  -- the library's own file:line says nothing to the command line's user
  local msg = hero.cli.error_text(err)
  msg = msg:gsub("pass overwrite = true", "pass --overwrite")
  io.stderr:write(newline and "\n" or "", "prepro: ", msg, "\n")
  os.exit(1)
end

local opts
do
  local err
  opts, err = hero.cli.parse_options(arg, {
    flags = hero.cli.set {"overwrite", "strict", "skip-bad-subs", "quiet", "compress"},
    values = hero.cli.set {"resnet", "slowfast", "subs", "vocab", "merges", "out", "name", "frame-length", "queries",
                           "query-db", "query-task", "captions", "caption-db", "clip-interval", "vid2nframe",
                           "vid2dur-idx"}})
  if not opts then usage(err) end
end
if not opts.out then usage("--out is required") end
local features = opts.resnet or opts.slowfast
local subs_alone = opts.subs and opts.vid2nframe and not features
if features or not (opts.queries or opts.captions or subs_alone) then
  for _, k in ipairs {"resnet", "slowfast"} do
    if not opts[k] then usage("--" .. k .. " is required") end
  end
end
if opts.subs and not features and not opts.captions and not opts.vid2nframe then
  usage("--subs needs the features (--resnet, --slowfast) or --vid2nframe FILE: frames are aligned")
end
if opts.captions then
  if not (opts.vocab and opts.merges) then usage("--captions needs --vocab and --merges (the tokenizer)") end
  if not opts["caption-db"] then usage("--captions needs --caption-db NAME (the databases in data/txt_db/NAME)") end
  if not opts.subs then usage("--captions needs --subs (the subtitles each clip overlaps)") end
end
if opts.subs and not (opts.vocab and opts.merges) then usage("--subs needs --vocab and --merges (the tokenizer)") end
if opts["vid2dur-idx"] and not opts.subs then usage("--vid2dur-idx goes into the subtitle database: give --subs") end
if opts.queries then
  if not (opts.vocab and opts.merges) then usage("--queries needs --vocab and --merges (the tokenizer)") end
  if not opts["query-db"] then usage("--queries needs --query-db NAME (the database data/txt_db/NAME.db)") end
  local t = opts["query-task"] or "tvr"
  if t ~= "tvr" and t ~= "tvqa" and t ~= "violin" then
    usage("--query-task must be tvr, tvqa or violin, got '" .. t .. "'")
  end
end
local name = opts.name or "tv"
local frame_length = hero.cli.decimal_number(opts["frame-length"] or "1.5")
if not frame_length or not (frame_length > 0 and frame_length < math.huge) then
  usage("--frame-length must be a positive number of seconds")
end
local clip_interval = opts["clip-interval"] and hero.cli.decimal_number(opts["clip-interval"])
if opts["clip-interval"] then
  if not (clip_interval and clip_interval > 0) then
    usage("--clip-interval must be a positive number of seconds, got '" .. opts["clip-interval"] .. "'")
  end
  if not features then usage("--clip-interval cuts the video database: give --resnet and --slowfast") end
  if opts.subs then usage("--clip-interval and --subs do not go together: clips have no subtitles here") end
end
local function say(...) if not opts.quiet then io.stderr:write(string.format(...)) end end

-- ------------------------------------------------------------------ every input checked first
-- Nothing is written before every input has been read or looked at: a bad --vocab or --vid2nframe
-- found after the video database was built left it behind, and the rerun with the input fixed
-- then stopped at "already exists (pass --overwrite)".

-- the input files the options name: present, and files rather than directories
for _, k in ipairs {"subs", "queries", "captions", "vid2dur-idx"} do
  local path = opts[k]
  if path then
    local kind = hero.core.fs_kind(path)
    if kind == nil then usage(string.format("--%s %s does not exist", k, path)) end
    if kind == "directory" then usage(string.format("--%s %s is a directory, not a file", k, path)) end
  end
end

local tok
if opts.queries or opts.captions or opts.subs then
  local err
  tok, err = hero.cli.tokenizer(opts.vocab, opts.merges)
  if not tok then usage(err) end
end

local function read_vid2nframe(path)
  local ok, t = pcall(hero.json.read_file, path)
  if not ok then usage("--vid2nframe: " .. hero.cli.error_text(t)) end
  if type(t) ~= "table" or next(t) == nil or hero.json.is_array(t) then
    usage(string.format("--vid2nframe: '%s' must be a JSON object mapping video ids to frame counts", path))
  end
  for vid, n in pairs(t) do
    if type(vid) ~= "string" or math.type(n) ~= "integer" or n < 0 then
      usage(string.format("--vid2nframe: '%s' must map video ids to frame counts (video %s: %s)", path, tostring(vid),
        tostring(n)))
    end
  end
  return t
end
local vid2nframe = opts.vid2nframe and read_vid2nframe(opts.vid2nframe)

-- the feature files: at least one video with both (empty directories built an empty database
-- and reported "0 videos of nil-dimensional features")
local video_dir
if features then
  local ok, pairs_, _, lonely = pcall(prepro.collect_feature_pairs, opts.resnet, opts.slowfast)
  if not ok then failed(pairs_) end
  if next(pairs_) == nil then
    usage(string.format("--resnet %s and --slowfast %s hold no features: no video has both a ResNet and a "
      .. "SlowFast file (*.npz, *.npy)%s", opts.resnet, opts.slowfast,
      #lonely > 0 and string.format("; %d have only one", #lonely) or ""))
  end
  -- the directory name holds the frame length as convert_videodb.py formats it: Python's str of a
  -- float (2 -> "2.0", 1/3 -> "0.3333333333333333")
  local fl = require("hero.eval.util").pyrepr(frame_length + 0.0)
  video_dir = string.format("%s/video_db/%s/resnet_slowfast_%s%s", opts.out, name, fl,
    opts.compress and "_compressed" or "")
end

-- the databases this run writes: without --overwrite, none may exist yet
local outputs = {}
if opts.queries then outputs[#outputs + 1] = string.format("%s/txt_db/%s.db", opts.out, opts["query-db"]) end
if opts.captions then outputs[#outputs + 1] = string.format("%s/txt_db/%s/cap.db", opts.out, opts["caption-db"]) end
if subs_alone or (opts.subs and features) then
  outputs[#outputs + 1] = string.format("%s/txt_db/%s_subtitles.db", opts.out, name)
end
if video_dir then outputs[#outputs + 1] = video_dir end
if not opts.overwrite then
  for _, dir in ipairs(outputs) do
    if hero.core.fs_kind(dir) then usage(string.format("'%s' already exists (pass --overwrite to replace it)", dir)) end
  end
end

-- ------------------------------------------------------------------ the databases
local function tokenize(s) return tok:encode(s) end

if opts.queries then
  local task = opts["query-task"] or "tvr"
  local out = string.format("%s/txt_db/%s.db", opts.out, opts["query-db"])
  local writers = {tvr = prepro.query_db, tvqa = prepro.qa_db, violin = prepro.violin_db}
  local qok, err = pcall(writers[task], {
    queries = opts.queries, out = out, tokenize = tokenize, overwrite = opts.overwrite,
    meta = {annotation = opts.queries, task = task}, specials = hero.data.writer.specials_of(tok),
  })
  if not qok then
    failed(err)
  end
  say("query database %s\n", out)
end
if opts.captions then
  local out = string.format("%s/txt_db/%s", opts.out, opts["caption-db"])
  local cok, r = pcall(prepro.caption_db, {captions = opts.captions, subs = opts.subs, out = out,
    tokenize = tokenize, overwrite = opts.overwrite,
    meta = {annotation = opts.captions, subtitles = opts.subs, task = "tvc"},
    specials = hero.data.writer.specials_of(tok)})
  if not cok then
    failed(r)
  end
  say("caption databases %s: %d clips, %d captions\n", out, r.clips, r.captions)
end

-- The subtitle database, aligned with the frame counts {vid = n} read from counts_path.
local function build_subtitles(counts, counts_path)
  local txt_dir = string.format("%s/txt_db/%s_subtitles.db", opts.out, name)
  local sok, sub = pcall(prepro.subtitle_db, {
    subs = opts.subs, out = txt_dir, tokenize = tokenize, vid2nframe = counts,
    frame_length = frame_length, skip_bad_subs = opts["skip-bad-subs"], strict = opts.strict,
    overwrite = opts.overwrite, task = name, specials = hero.data.writer.specials_of(tok),
    vid2dur_idx = opts["vid2dur-idx"],
    meta = {annotation = opts.subs, vid2nframe = counts_path},
  })
  if not sok then
    failed(sub)
  end
  say("subtitle database %s: %d videos\n", txt_dir, sub.videos)
  if #sub.no_features > 0 then
    say("  %d videos with subtitles but no features skipped: %s\n", #sub.no_features,
      table.concat(sub.no_features, ", "))
  end
  for _, d in ipairs(sub.dropped_subs) do say("  dropped subtitle %d of %s: %s\n", d.index, d.vid, d.reason) end
  if #sub.dropped_subs > 0 then say("  %d invalid subtitles dropped\n", #sub.dropped_subs) end
end

if subs_alone then build_subtitles(vid2nframe, opts.vid2nframe) end
if not features then os.exit(0) end

local ok, report = pcall(prepro.convert_video_db, {
  resnet = opts.resnet, slowfast = opts.slowfast, out = video_dir, overwrite = opts.overwrite, strict = opts.strict,
  compress = opts.compress, clip_interval = clip_interval, frame_length = frame_length,
  progress = function(k, n, vid) say("\rvideo %d/%d %s\27[K", k, n, vid) end,
})
if not ok then
  failed(report, true)
end
say("\rvideo database %s: %d %s of %s-dimensional features\27[K\n", video_dir, report.videos,
  clip_interval and "clips" or "videos",
  tostring(report.feat_dim))
for _, c in ipairs(report.corrupted) do say("  skipped %s: %s\n", c.vid, c.reason) end
if #report.corrupted > 0 then say("  %d videos skipped (listed in corrupted.json)\n", #report.corrupted) end

if opts.subs then
  -- the reference aligns with the frame counts of its --vid2nframe file (tv_vid2nframe.json) when given
  local counts, counts_path = report.id2nframe, video_dir:gsub("/[^/]*$", "") .. "/id2nframe.json"
  if vid2nframe then counts, counts_path = vid2nframe, opts.vid2nframe end
  build_subtitles(counts, counts_path)
end
