--- hero.data.writer: writes HERO databases in the formats hero.data's readers (and the reference's
-- data loaders) read: video feature LMDBs (msgpack_numpy values, id2nframe.json beside them) and
-- text LMDBs (lz4 frames of MessagePack, JSON side files).
--
--   local writer = hero.data.writer
--   local v = writer.VideoDbWriter("video_db/tv/resnet_slowfast_1.5")
--   v:add("vid1", feats)                -- f32/f16 [n, D]; stored as float32
--   v:commit()                          -- the LMDB appears; ../id2nframe.json is merged by min
--   local t = writer.TxtDbWriter("txt_db/tv_subtitles.db")
--   t:put("vid1", writer.subtitle_value{...})
--   t:json("vid2len", {vid1 = 12})
--   t:commit()
--
-- Every database is built in a temporary directory beside its destination and renamed into place
-- once complete (after syncing its files), so a crash or an error never leaves a half-written
-- database under the final name: the destination either does not exist or is complete. An
-- existing destination is refused unless opts.overwrite is set (it is then replaced whole).
-- :abort() (or an error inside :commit()) removes the temporary directory. A writer killed midway
-- leaves its "<dest>.partial-<pid>@<host>-..." directory, which no reader opens; the next builder
-- of the same destination removes it (writer.remove_stale).
--
-- Values are MessagePack as msgpack-python (use_bin_type=True) writes them: integers in their
-- smallest form, floats as float64, valid UTF-8 strings as str, tensors as msgpack_numpy maps.
-- Map keys are sorted unless the table was made with writer.ordered(t, keys), which fixes the
-- order (the reference's dicts keep insertion order; the subtitle and query values below use it).
local core = require "hero.core"
local json = require "hero.json"
local util = require "hero.data.util"

local writer = {}

writer.encode_msgpack = core.encode_msgpack
writer.lz4_frame_compress = core.lz4_frame_compress

--- t with its keys written in the order of `keys` (every key of t listed once). Returns t.
function writer.ordered(t, keys)
  if type(t) ~= "table" or type(keys) ~= "table" then
    error("writer.ordered: expected a table and an array of its keys", 2)
  end
  -- the encoder writes the listed keys (and checks them against the table's when it does): a key
  -- listed twice would stand for one that is missing, which would be dropped
  local listed = {}
  for i, k in ipairs(keys) do
    if listed[k] then
      error(string.format("writer.ordered: key '%s' is listed twice (at %d and %d)", tostring(k), listed[k], i), 2)
    end
    listed[k] = i
  end
  return setmetatable(t, {__order = keys, __name = "hero.data.ordered"})
end

--- The lz4 frame of the MessagePack of value: a text database value.
function writer.encode_txt_value(value)
  return core.lz4_frame_compress(core.encode_msgpack(value))
end

-- ------------------------------------------------------------------ atomic LMDB directories

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return os.rename(path, path) and true or false
end

local tmp_counter = 0
local hostname
local function host()
  if not hostname then
    local p = io.popen("hostname 2>/dev/null")
    hostname = (p and p:read("l") or "host"):gsub("[^%w%.]", "_")
    if p then p:close() end
  end
  return hostname
end

-- "<dest>.partial-<pid>@<host>-<stamp>": the writing process is named so that a later writer can
-- tell a directory left by a killed one (see remove_stale) from one still being written.
local function tmp_name(dest)
  tmp_counter = tmp_counter + 1
  -- time, CPU clock, a fresh table's address and a counter: unique within the process too
  local addr = tostring({}):match("0x(%x+)") or "0"
  local stamp = string.format("%x%x%s%04x", os.time(), math.floor((os.clock() * 1e6) % 0xffffff), addr, tmp_counter)
  return string.format("%s.partial-%d@%s-%s", dest, core._getpid(), host(), stamp)
end

--- Cleans up after writers of dest that were killed: their "<dest>.partial-<pid>@<host>-..."
-- directories (the process is gone from this host) and the "<file>.tmp.<pid>[.<n>]" files beside dest
-- of atomic writes whose process is gone (id2nframe.json's) are removed; when dest is missing and a
-- killed overwrite left the previous database as "<...>.old" (it was killed between its two
-- renames), that previous database is renamed back to dest. Directories of live writers, of other
-- hosts and of other names are left alone. Returns the number of directories removed or restored.
function writer.remove_stale(dest)
  dest = dest:gsub("/+$", "")
  local parent, base = util.parent_dir(dest), dest:match("([^/]+)$")
  local ok, names, is_dir = pcall(core.fs_listdir, parent)
  if not ok then return 0 end
  local n, prefix = 0, base .. ".partial-"
  local me = host()
  local olds = {}
  for i, name in ipairs(names) do
    -- "<file>.tmp.<pid>[.<n>]" of an atomic write (id2nframe.json, corrupted.json) of a dead process
    local tpid = not is_dir[i] and tonumber(name:match("%.tmp%.(%d+)$") or name:match("%.tmp%.(%d+)%.%d+$"))
    if tpid and tpid ~= core._getpid() and not core._alive(tpid) and os.remove(parent .. "/" .. name) then
      n = n + 1
    end
    if is_dir[i] and name:sub(1, #prefix) == prefix then
      local pid, h = name:sub(#prefix + 1):match("^(%d+)@([^-]+)%-")
      pid = tonumber(pid)
      if pid and h == me and pid ~= core._getpid() and not core._alive(pid) then
        if name:match("%.old$") then
          olds[#olds + 1] = name
        elseif pcall(core.fs_rmtree, parent .. "/" .. name) then
          n = n + 1
        end
      end
    end
  end
  for _, name in ipairs(olds) do
    if not exists(dest) and pcall(core.fs_rename, parent .. "/" .. name, dest) then
      n = n + 1
    elseif pcall(core.fs_rmtree, parent .. "/" .. name) then
      n = n + 1
    end
  end
  return n
end

local LmdbBuilder = {}
LmdbBuilder.__index = LmdbBuilder
LmdbBuilder.__name = "hero.data.LmdbBuilder"

--- An LMDB database directory built atomically at `dest`. opts: overwrite (replace an existing
-- dest), map_size (initial map size in bytes; it grows), what (a name for messages).
function writer.LmdbBuilder(dest, opts)
  util.check_string(dest, "argument #1 (the destination directory)", "LmdbBuilder")
  util.check_options("LmdbBuilder", opts, {"overwrite", "map_size", "what"})
  opts = opts or {}
  dest = dest:gsub("/+$", "")
  local what = opts.what or "LmdbBuilder"
  if dest == "" then error(string.format("%s: the destination is an empty path or the root directory", what), 2) end
  writer.remove_stale(dest)
  if exists(dest) and not opts.overwrite then
    error(string.format("%s: '%s' already exists (pass overwrite = true to replace it)", what, dest), 2)
  end
  local parent = util.parent_dir(dest)
  if not exists(parent) then
    error(string.format("%s: the parent directory '%s' of '%s' does not exist", what, parent, dest), 2)
  end
  local tmp = tmp_name(dest)
  core.fs_mkdir(tmp)
  local ok, lmdb = pcall(core.lmdb_writer, tmp, opts.map_size)
  if not ok then
    pcall(core.fs_rmtree, tmp)
    error(what .. ": " .. tostring(lmdb), 2)
  end
  return setmetatable({dest = dest, tmp = tmp, lmdb = lmdb, overwrite = opts.overwrite, what = what,
                       files = {}}, LmdbBuilder)
end

local function check_live(self, op)
  if not self.lmdb then
    error(string.format("%s: the database '%s' is already committed or aborted", op, self.dest), 3)
  end
end

--- Stores raw bytes under key (a key may be written once, unless replace is true).
function LmdbBuilder:put(key, bytes, replace)
  check_live(self, "LmdbBuilder:put")
  util.check_string(key, "the key", "LmdbBuilder:put")
  util.check_string(bytes, "the value", "LmdbBuilder:put")
  self.lmdb:put(key, bytes, replace == true)
end

--- Stores MessagePack(value).
function LmdbBuilder:put_msgpack(key, value, replace)
  self:put(key, core.encode_msgpack(value), replace)
end

--- Stores lz4(MessagePack(value)), the text database format.
function LmdbBuilder:put_lz4_msgpack(key, value, replace)
  self:put(key, writer.encode_txt_value(value), replace)
end

function LmdbBuilder:count()
  check_live(self, "LmdbBuilder:count")
  return self.lmdb:count()
end

-- A side file written whole (synced, renamed into place) or an error naming it: a write that
-- fails (a full disk, a file size limit) must not leave a torn file for commit() to publish, and
-- the builder then refuses to commit a database that lacks it.
local function write_whole(builder, path, bytes, who)
  local ok, err = pcall(core.fs_write_atomic, path, bytes)
  if not ok then
    builder.failed = string.format("%s: %s", who, tostring(err))
    error(builder.failed, 3)
  end
end

-- A side file's name: one file of the directory, not LMDB's own (a side file "data.mdb" would
-- replace the database committed with it).
local function check_side_name(name, who)
  util.check_string(name, "the file name", who)
  if name:find("/") then error(who .. ": the name must not contain '/': " .. name, 3) end
  if name == "" or name == "." or name == ".." or name == "data.mdb" or name == "lock.mdb" then
    error(string.format("%s: '%s' cannot name a side file (LMDB's own files are data.mdb and lock.mdb)", who, name), 3)
  end
end

-- The values of a list with no holes (1..n), or nil.
local function list_values(v)
  if type(v) ~= "table" then return nil end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v then return nil end
  return v
end

--- Writes a JSON side file into the database directory (name with or without ".json"; a
-- ".jsonl" name takes a list, without holes, and writes one value per line).
function LmdbBuilder:json(name, value, opts)
  check_live(self, "LmdbBuilder:json")
  check_side_name(name, "LmdbBuilder:json")
  local file = name
  if not file:match("%.jsonl?$") then file = file .. ".json" end
  local path = self.tmp .. "/" .. file
  if file:match("%.jsonl$") then
    -- an object, or a list with a hole, would be written as fewer lines (an empty file for {a = 1})
    if not list_values(value) then
      error(string.format("LmdbBuilder:json: %s takes a list of values without holes, one per line, got %s", file,
        type(value) == "table" and "a table that is not one" or type(value)), 2)
    end
    local lines = {}
    for i, v in ipairs(value) do lines[i] = json.encode(v) end
    write_whole(self, path, table.concat(lines, "\n") .. (#lines > 0 and "\n" or ""), "LmdbBuilder:json")
  else
    write_whole(self, path, json.encode(value, opts) .. "\n", "LmdbBuilder:json") -- json.write_file's bytes
  end
  self.files[#self.files + 1] = file
end

--- Writes a side file of the given bytes as they are (a file copied into the database directory,
-- as the reference's scripts `cp` vid2dur_idx.json into the subtitle database).
function LmdbBuilder:raw_file(name, bytes)
  check_live(self, "LmdbBuilder:raw_file")
  check_side_name(name, "LmdbBuilder:raw_file")
  util.check_string(bytes, "the bytes", "LmdbBuilder:raw_file")
  write_whole(self, self.tmp .. "/" .. name, bytes, "LmdbBuilder:raw_file")
  self.files[#self.files + 1] = name
end

--- Syncs everything and renames the directory into place. Returns dest.
function LmdbBuilder:commit()
  check_live(self, "LmdbBuilder:commit")
  if self.failed then
    error(string.format("%s: '%s' is not written: a side file failed (%s); the database there is as it was (abort "
      .. "the builder)", self.what, self.dest, self.failed), 2)
  end
  local lmdb = self.lmdb
  self.lmdb = nil
  local ok, err = pcall(function()
    lmdb:finish()
    core.fs_sync_dir(self.tmp)
    if exists(self.dest) then
      if not self.overwrite then error(string.format("'%s' appeared while it was being written", self.dest), 0) end
      local old = tmp_name(self.dest) .. ".old"
      core.fs_rename(self.dest, old)
      local put, perr = pcall(core.fs_rename, self.tmp, self.dest)
      if not put then
        -- the old database goes back where it was; only if that fails too, the error says where it is
        local back = pcall(core.fs_rename, old, self.dest)
        error(back and perr or string.format("%s (the database that was there is now '%s')", tostring(perr), old), 0)
      end
      core.fs_rmtree(old)
    else
      core.fs_rename(self.tmp, self.dest)
    end
  end)
  if not ok then
    pcall(core.fs_rmtree, self.tmp)
    error(string.format("%s: writing '%s' failed: %s", self.what, self.dest, tostring(err)), 2)
  end
  return self.dest
end

--- Drops everything written so far (the destination is untouched).
function LmdbBuilder:abort()
  if self.lmdb then
    self.lmdb:abort()
    self.lmdb = nil
    pcall(core.fs_rmtree, self.tmp)
  end
end

LmdbBuilder.__close = function(self, err) if err ~= nil then self:abort() end end
LmdbBuilder.__gc = LmdbBuilder.abort

function LmdbBuilder:__tostring()
  return string.format("hero.data.LmdbBuilder('%s'%s)", self.dest, self.lmdb and "" or ", closed")
end

-- ------------------------------------------------------------------ video feature databases

local VideoDbWriter = {}
VideoDbWriter.__index = VideoDbWriter
VideoDbWriter.__name = "hero.data.VideoDbWriter"

--- A video feature LMDB at `dir` (e.g. "video_db/tv/resnet_slowfast_1.5") in the format of the
-- reference's convert_videodb.py: key = video id, value = msgpack {"features": float32 [n, D]},
-- or with opts.compress (convert_videodb.py --compress, a "_compressed" directory) the bytes of
-- np.savez_compressed(features = ..., allow_pickle = True): a deflated .npz whose second member
-- allow_pickle.npy is the 0-d True that the reference's misplaced keyword stores. On commit,
-- id2nframe.json in dir's parent gets {video id: n}, merged with an existing file by min (as the
-- reference reconciles it). opts: overwrite, map_size, feat_dim (checked on every add), compress.
function writer.VideoDbWriter(dir, opts)
  util.check_options("VideoDbWriter", opts, {"overwrite", "map_size", "feat_dim", "compress"})
  opts = opts or {}
  if opts.compress ~= nil and type(opts.compress) ~= "boolean" then
    error("VideoDbWriter: opts.compress must be a boolean, got " .. type(opts.compress), 2)
  end
  local b = writer.LmdbBuilder(dir, {overwrite = opts.overwrite, map_size = opts.map_size, what = "VideoDbWriter"})
  return setmetatable({builder = b, dir = b.dest, id2nframe = {}, feat_dim = opts.feat_dim, n = 0,
    compress = opts.compress == true}, VideoDbWriter)
end

--- Adds the features of one video: a 2-D tensor [n, D], f32 or f16 (stored as float32).
function VideoDbWriter:add(vid, feats)
  util.check_string(vid, "the video id", "VideoDbWriter:add")
  if not core.is_tensor(feats) or feats:dim() ~= 2 then
    error(string.format("VideoDbWriter:add: video '%s': features must be a 2-D tensor [frames, dim], got %s", vid,
      core.is_tensor(feats) and (feats:dim() .. "-D " .. table.concat(feats:size(), "x")) or type(feats)), 2)
  end
  local dt = feats:dtype()
  if dt ~= "f32" and dt ~= "f16" and dt ~= "f64" then
    error(string.format("VideoDbWriter:add: video '%s': features must be floating point, got %s", vid, dt), 2)
  end
  if self.feat_dim and feats:size(2) ~= self.feat_dim then
    error(string.format("VideoDbWriter:add: video '%s' has %d-dimensional features, the database holds %d", vid,
      feats:size(2), self.feat_dim), 2)
  end
  self.feat_dim = self.feat_dim or feats:size(2)
  if self.id2nframe[vid] then error(string.format("VideoDbWriter:add: video '%s' was already added", vid), 2) end
  local f32 = feats:float():contiguous()
  if self.compress then
    -- np.savez_compressed(features=..., allow_pickle=True) writes its members in that order
    self.builder:put(vid, core.npz_to_bytes({features = f32, allow_pickle = core.tensor(true, {dtype = "bool"})},
      {compress = true, order = {"features", "allow_pickle"}}))
  else
    self.builder:put_msgpack(vid, writer.ordered({features = f32}, {"features"}))
  end
  self.id2nframe[vid] = feats:size(1)
  self.n = self.n + 1
end

--- Commits the LMDB, then writes the merged id2nframe.json (atomically). Returns the LMDB dir. An
-- existing id2nframe.json that is not {video id: frame count} is refused before anything is
-- committed.
function VideoDbWriter:commit()
  local path = util.parent_dir(self.dir) .. "/id2nframe.json"
  local merged = {}
  if util.file_exists(path) then
    local ok, old = pcall(json.read_file, path)
    local bad = not ok and tostring(old) or nil
    if ok and (type(old) ~= "table" or json.is_array(old) and next(old) ~= nil) then bad = "not a JSON object" end
    if not bad then
      for k, v in pairs(old) do
        if type(k) ~= "string" or math.type(v) ~= "integer" or v < 0 then
          bad = string.format("entry %s: %s is not a frame count", tostring(k), tostring(v))
          break
        end
        merged[k] = v
      end
    end
    if bad then
      self.builder:abort()
      error(string.format("VideoDbWriter:commit: the existing '%s' must map video ids to frame counts (%s); "
        .. "nothing was written", path, bad), 2)
    end
  end
  self.builder:commit()
  for k, v in pairs(self.id2nframe) do
    local o = merged[k]
    merged[k] = (math.type(o) == "integer" and o < v) and o or v
  end
  json.write_file(path, merged)
  return self.dir
end

function VideoDbWriter:abort() self.builder:abort() end

-- ------------------------------------------------------------------ text databases

--- A text LMDB at `dir`: :put(key, value [, replace]) stores lz4(MessagePack(value)) (a key once,
-- unless replace); :json(name, value) writes a side file; :commit(). opts: overwrite, map_size.
function writer.TxtDbWriter(dir, opts)
  util.check_options("TxtDbWriter", opts, {"overwrite", "map_size"})
  opts = opts or {}
  local b = writer.LmdbBuilder(dir, {overwrite = opts.overwrite, map_size = opts.map_size, what = "TxtDbWriter"})
  local w = {builder = b, dir = b.dest}
  function w:put(key, value, replace) self.builder:put_lz4_msgpack(key, value, replace) end
  function w:json(name, value, o) self.builder:json(name, value, o) end
  function w:raw_file(name, bytes) self.builder:raw_file(name, bytes) end
  function w:count() return self.builder:count() end
  function w:commit() return self.builder:commit() end
  function w:abort() self.builder:abort() end
  return setmetatable(w, {__name = "hero.data.TxtDbWriter", __close = function(s, err)
    if err ~= nil then s:abort() end
  end})
end

--- The special ids of meta.json as prepro_sub.py / prepro_query.py take them from the tokenizer
-- (tok: a hero.text.Tokenizer): <s>, </s>, <pad>, <mask>, <unk>, and v_range = {id of ".", id of
-- "<|endoftext|>" + 1}. A token the vocabulary lacks is <unk>'s id, as convert_tokens_to_ids gives;
-- one a vocabulary without <unk> lacks (GPT-2's has no <s>) is left to writer.meta's RoBERTa default.
function writer.specials_of(tok)
  local unk = tok:token_to_id("<unk>")
  local function id(t) return tok:token_to_id(t) or unk end
  local lo, eot = id("."), id("<|endoftext|>")
  return {CLS = id("<s>"), SEP = id("</s>"), PAD = id("<pad>"), MASK = id("<mask>"), UNK = unk,
          v_range = lo and eot and {lo, eot + 1} or nil}
end

--- meta.json of a text database: the special token ids and v_range of the tokenizer plus the
-- preprocessing arguments (extra). specials: {CLS/BOS, PAD, SEP/EOS, UNK, MASK} ids (default
-- RoBERTa's 0, 1, 2, 3, 50264) and v_range (default {4, 50261}).
function writer.meta(extra, specials)
  specials = specials or {}
  local m = {BOS = specials.CLS or 0, CLS = specials.CLS or 0, PAD = specials.PAD or 1, EOS = specials.SEP or 2,
             SEP = specials.SEP or 2, UNK = specials.UNK or 3, MASK = specials.MASK or 50264,
             v_range = json.array(specials.v_range or {4, 50261})}
  for k, v in pairs(extra or {}) do m[k] = v end
  return m
end

local function arr(t)
  local out = json.array()
  for i = 1, #t do out[i] = t[i] end
  return out
end

-- Pairs {k, {frames}} as MessagePack arrays [k, [frames]].
local function pair_list(pairs_in)
  local out = json.array()
  for i, p in ipairs(pairs_in) do out[i] = json.array {p[1], arr(p[2])} end
  return out
end

--- The subtitle database value of one video in the reference's exact layout (prepro_sub.py):
-- {vid_name, sub = [{text, start, end}], unmatched_frames, input_ids (one list per subtitle; one
-- empty list per pseudo-subtitle when the video has none; none at all for a video of 0 frames),
-- unique_sub2frames, sub2frames, v_id,
-- duration (= frames), max_mtached_sub_len}, keys in that order.
-- args: vid, subs (as given to align_subtitles), input_ids (array per subtitle), alignment (the
-- result of hero.data.subtitle_db_alignment).
function writer.subtitle_value(args)
  local a = args.alignment
  local subs = json.array()
  for i, s in ipairs(args.subs) do
    subs[i] = writer.ordered({text = s.text, start = s.start, ["end"] = s["end"]}, {"text", "start", "end"})
  end
  local ids = json.array()
  -- prepro_sub.py tokenises the subtitles only of a video with frames: one with none takes its
  -- pseudo-subtitle branch, which has no step to make (no token lists at all)
  if #args.subs > 0 and (a.duration or 0) > 0 then
    for i = 1, #args.subs do ids[i] = arr(args.input_ids[i] or {}) end
  else
    for i = 1, #a.unique_sub2frames do ids[i] = json.array() end
  end
  return writer.ordered({
    vid_name = args.vid, sub = subs, unmatched_frames = arr(a.unmatched_frames), input_ids = ids,
    unique_sub2frames = pair_list(a.unique_sub2frames), sub2frames = pair_list(a.sub2frames), v_id = args.vid,
    duration = a.duration, max_mtached_sub_len = a.max_mtached_sub_len,
  }, {"vid_name", "sub", "unmatched_frames", "input_ids", "unique_sub2frames", "sub2frames", "v_id", "duration",
      "max_mtached_sub_len"})
end

-- A deep copy of a JSON value, arrays kept as arrays.
local function json_copy(v)
  if type(v) ~= "table" or v == json.null then return v end
  local out = json.is_array(v) and json.array() or {}
  for k, x in pairs(v) do out[k] = json_copy(x) end
  return out
end

-- The annotation's fields (in its JSON order when known, else `fallback`'s), then the fields the
-- reference's prepro_query.py sets, in the order it sets them: a key the annotation already has
-- keeps its place.
local function annotated_value(q, fallback, added)
  local t, keys, seen = {}, {}, {}
  for _, k in ipairs(json.key_order(q) or fallback) do
    if q[k] ~= nil and not seen[k] then
      t[k], seen[k] = json_copy(q[k]), true
      keys[#keys + 1] = k
    end
  end
  for _, kv in ipairs(added) do
    local k, v = kv[1], kv[2]
    if not seen[k] then
      seen[k] = true
      keys[#keys + 1] = k
    end
    t[k] = v
  end
  return writer.ordered(t, keys)
end

--- The value of one TVR-style query (prepro_query.py's process_tvr): the annotation with vid (when
-- it names its video), input_ids, target (its ts, or nil on a split without moments) and qid.
function writer.query_value(q, input_ids)
  local added = {}
  if q.vid_name ~= nil then added[#added + 1] = {"vid", q.vid_name} end
  added[#added + 1] = {"input_ids", arr(input_ids)}
  added[#added + 1] = {"target", q.ts ~= nil and json_copy(q.ts) or json.null}
  added[#added + 1] = {"qid", tostring(q.desc_id)}
  return annotated_value(q, {"desc_id", "desc", "vid_name", "ts", "duration", "type"}, added)
end

--- The TVC caption database values (prepro_tvc.py's process_tvc) of one clip annotation
-- {clip_id, vid_name, ts, duration, descs = {{desc_id, desc, ...}}}: the cap.db value of each
-- caption (its annotation fields, then input_ids, vid_name, clip_id, ts, sub_indices, duration) and
-- the clip.db value {vid_name, ts, sub_indices, duration, captions = {{id, input_ids, text}}}.
-- caption_ids[i] are the token ids of descs[i]; sub_indices the overlapping subtitles.
function writer.caption_values(example, caption_ids, sub_indices)
  local clip_id = tostring(example.clip_id)
  local captions, caps = json.array(), {}
  for i, cap in ipairs(example.descs) do
    caps[i] = annotated_value(cap, {"desc_id", "desc", "type"}, {
      {"input_ids", arr(caption_ids[i])}, {"vid_name", example.vid_name}, {"clip_id", clip_id},
      {"ts", json_copy(example.ts)}, {"sub_indices", arr(sub_indices)}, {"duration", example.duration}})
    captions[i] = writer.ordered({id = cap.desc_id, input_ids = arr(caption_ids[i]), text = cap.desc},
      {"id", "input_ids", "text"})
  end
  local clip = writer.ordered({vid_name = example.vid_name, ts = json_copy(example.ts), sub_indices = arr(sub_indices),
    duration = example.duration, captions = captions}, {"vid_name", "ts", "sub_indices", "duration", "captions"})
  return caps, clip
end

--- The value of one VIOLIN statement (prepro_query.py's process_violin): the annotation
-- {desc_id, desc, vid_name, label} followed by vid, input_ids, target (= label) and qid.
function writer.violin_value(q, input_ids)
  return annotated_value(q, {"desc_id", "desc", "vid_name", "label"}, {
    {"vid", q.vid_name}, {"input_ids", arr(input_ids)}, {"target", q.label}, {"qid", tostring(q.desc_id)}})
end

--- The value of one TVQA / How2QA question (prepro_query.py's process_tvqa): the annotation with
-- input_ids (the question's, then the five answers'), vid, ts (nil when absent), target (answer_idx
-- or nil) and qid (a string).
function writer.qa_value(q, input_ids)
  local ids = json.array()
  for i, part in ipairs(input_ids) do ids[i] = arr(part) end
  return annotated_value(q, {"qid", "q", "a0", "a1", "a2", "a3", "a4", "answer_idx", "ts", "vid_name", "show_name"}, {
    {"input_ids", ids}, {"vid", q.vid_name}, {"ts", q.ts ~= nil and q.ts or json.null},
    {"target", q.answer_idx ~= nil and q.answer_idx or json.null}, {"qid", tostring(q.qid)}})
end

--- The sub_info.json entry of one video: align_subtitles' info with its pair lists turned into
-- JSON objects keyed by the index as a string (as the reference's dicts are dumped).
function writer.sub_info_entry(info)
  local out = {}
  for k, v in pairs(info) do
    if k == "unique_sub2frames" or k == "sub2frames" or k == "frame2subs" then
      local o = {}
      for _, p in ipairs(v) do o[tostring(p[1])] = arr(p[2]) end
      out[k] = o
    elseif k == "frame2unique_sub" then
      local o = {}
      for _, p in ipairs(v) do o[tostring(p[1])] = p[2] end
      out[k] = o
    elseif k == "unmatched_frames" then
      out[k] = arr(v)
    else
      out[k] = v
    end
  end
  return out
end

return writer
