--- Video feature LMDBs as written by the reference's scripts/convert_videodb.py and read by its
-- data/data.py:VideoFeatLmdb.
--
--   local db = hero.data.open_video_db("video_db/tv/resnet_slowfast_1.5", {max_clip_len = 100})
--   local feats = db:get("friends_s01e01_seg02_clip_00")   -- f32 [min(id2nframe[vid], 100), D]
--
-- `dir` is the LMDB directory itself; id2nframe.json is read from its parent directory. Values are
-- msgpack maps {"features": <msgpack_numpy array>} or, for `*_compressed` databases, .npz archives
-- with a member features.npy. `compressed` (nil: decided by the directory name ending in
-- "_compressed", as the reference does) selects the format.
--
-- :get(vid) returns features[:nframes] cast to float32 with nframes = min(id2nframe[vid],
-- max_clip_len) and Python slicing semantics, exactly like the reference. Note the reference's quirk:
-- with max_clip_len = -1 (its class default) nframes is -1 and the LAST FRAME IS DROPPED. Here
-- max_clip_len defaults to no limit (every frame); pass -1 to reproduce the reference's default.
-- A video id missing from the LMDB gives nil; one present in the LMDB but missing from
-- id2nframe.json is an error (the reference raises KeyError).
local core = require "hero.core"
local json = require "hero.json"
local util = require "hero.data.util"

local VideoDb = {}
VideoDb.__index = VideoDb
VideoDb.__name = "hero.data.VideoDb"

local M = {}

function M.open(dir, opts)
  util.check_string(dir, "argument #1 (the LMDB directory)", "open_video_db")
  if opts ~= nil and type(opts) ~= "table" then
    error("open_video_db: argument #2 must be an options table, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "max_clip_len" and k ~= "compressed" and k ~= "id2nframe" then
      error(string.format("open_video_db: unknown option '%s' (max_clip_len, compressed, id2nframe)", tostring(k)), 2)
    end
  end
  local max_clip_len = opts.max_clip_len
  if max_clip_len ~= nil and math.type(max_clip_len) ~= "integer" then
    error("open_video_db: max_clip_len must be an integer, got " .. (type(max_clip_len) == "number"
      and tostring(max_clip_len) or type(max_clip_len)), 2)
  end
  -- 0 kept no frame of any video; -5 dropped the last five (Python slicing), where only -1 is the
  -- reference's setting
  if max_clip_len ~= nil and max_clip_len ~= -1 and max_clip_len < 1 then
    error("open_video_db: max_clip_len must be -1 (the reference's default) or at least 1, got " .. max_clip_len, 2)
  end
  local compressed = opts.compressed
  if compressed == nil then
    compressed = dir:gsub("/+$", ""):match("_compressed$") ~= nil
  elseif type(compressed) ~= "boolean" then
    error("open_video_db: compressed must be nil or a boolean, got " .. type(compressed), 2)
  end
  local id2nframe_path = opts.id2nframe or (util.parent_dir(dir) .. "/id2nframe.json")
  local lmdb = core.lmdb_open(dir)
  local ok, id2nframe = pcall(json.read_file, id2nframe_path)
  if not ok then
    lmdb:close()
    error("open_video_db: " .. tostring(id2nframe), 2)
  end
  if type(id2nframe) ~= "table" or json.is_array(id2nframe) then
    lmdb:close()
    error(string.format("open_video_db: '%s' must hold an object {video_id: nframes}", id2nframe_path), 2)
  end
  return setmetatable({
    _lmdb = lmdb,
    _dir = dir,
    _id2nframe = id2nframe,
    _id2nframe_path = id2nframe_path,
    max_clip_len = max_clip_len,
    compressed = compressed,
  }, VideoDb)
end

local function check_open(self, op)
  if self._lmdb == nil then error(string.format("%s: the video db '%s' is closed", op, self._dir), 3) end
  return self._lmdb
end

--- The raw decoded value of vid: {features = tensor, ...} (msgpack) or {features = ..., allow_pickle
-- = ...} (npz), or nil when absent. The features keep their stored dtype and every frame.
function VideoDb:get_dump(vid)
  local lmdb = check_open(self, "VideoDb:get_dump")
  util.check_string(vid, "the video id", "VideoDb:get_dump")
  if self.compressed then return lmdb:get_npz(vid) end
  return lmdb:get_msgpack(vid)
end

--- f32 features [nframes, D] of vid (see the module comment), or nil when vid is not in the LMDB.
function VideoDb:get(vid)
  local lmdb = check_open(self, "VideoDb:get")
  util.check_string(vid, "the video id", "VideoDb:get")
  local dump
  if self.compressed then dump = lmdb:get_npz(vid) else dump = lmdb:get_msgpack(vid) end
  if dump == nil then return nil end
  local feats = type(dump) == "table" and dump.features or nil
  if not core.is_tensor(feats) then
    error(string.format("VideoDb:get: the value of '%s' in '%s' has no 'features' array", vid, self._dir), 2)
  end
  if feats:dim() < 1 then
    error(string.format("VideoDb:get: the features of '%s' in '%s' are a 0-d array", vid, self._dir), 2)
  end
  local n = self._id2nframe[vid]
  if n == nil then
    error(string.format("VideoDb:get: video '%s' is in the LMDB but not in '%s'", vid, self._id2nframe_path), 2)
  end
  if math.type(n) ~= "integer" then
    error(string.format("VideoDb:get: id2nframe['%s'] is not an integer (%s)", vid, tostring(n)), 2)
  end
  local nframes = n
  if self.max_clip_len ~= nil and self.max_clip_len < n then nframes = self.max_clip_len end
  -- Python's features[:nframes]: a negative stop counts from the end, a large one clamps.
  local rows = feats:size(1)
  local keep
  if nframes >= 0 then keep = math.min(nframes, rows) else keep = math.max(rows + nframes, 0) end
  if keep < rows then feats = feats:narrow(1, 1, keep):contiguous() end
  if feats:dtype() ~= "f32" then feats = feats:float() end
  return feats
end

--- Video ids in LMDB (byte) order.
function VideoDb:keys()
  local lmdb = check_open(self, "VideoDb:keys")
  return (lmdb:keys())
end

--- The id2nframe table (video id -> frame count).
function VideoDb:id2nframe()
  return self._id2nframe
end

function VideoDb:close()
  if self._lmdb ~= nil then
    self._lmdb:close()
    self._lmdb = nil
  end
end

VideoDb.__close = VideoDb.close
-- The LMDB handle closes itself when collected; this only drops the reference early.
VideoDb.__gc = VideoDb.close

function VideoDb:__tostring()
  return string.format("hero.data.VideoDb('%s'%s%s)", self._dir, self.compressed and ", compressed" or "",
                       self._lmdb == nil and ", closed" or "")
end

return M
