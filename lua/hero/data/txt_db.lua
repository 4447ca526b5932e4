--- Text LMDBs as written by the reference's scripts/prepro_*.py and read by its data/data.py:TxtLmdb
-- and TxtTokLmdb.
--
--   local db = hero.data.open_txt_db("txt_db/tvr_val.db")
--   local ex = db:get("90889")          -- {desc = ..., input_ids = {...}, ...}, or nil when absent
--   local ids = db:ids_with_max_len(60) -- TxtTokLmdb(db, 60).id2len's ids, in id2len.json order
--
-- Values are lz4 frames of MessagePack (decoded as hero.data.decode_msgpack does). Side files
-- (meta.json, id2len.json, query2video.json, ...) are read when first asked for and cached; objects
-- keep their file order (hero.json.keys(obj)).
local core = require "hero.core"
local json = require "hero.json"
local util = require "hero.data.util"

local TxtDb = {}
TxtDb.__index = TxtDb
TxtDb.__name = "hero.data.TxtDb"

local M = {}

--- opts.max_value_bytes: largest decompressed value accepted (default 1 GiB).
function M.open(dir, opts)
  util.check_string(dir, "argument #1 (the LMDB directory)", "open_txt_db")
  if opts ~= nil and type(opts) ~= "table" then
    error("open_txt_db: argument #2 must be an options table, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "max_value_bytes" then
      error(string.format("open_txt_db: unknown option '%s' (max_value_bytes)", tostring(k)), 2)
    end
  end
  local mx = opts.max_value_bytes
  if mx ~= nil and (math.type(mx) ~= "integer" or mx < 1) then
    error("open_txt_db: max_value_bytes must be an integer >= 1, got " .. (type(mx) == "string" and ("'" .. mx .. "'")
      or tostring(mx)), 2)
  end
  local lmdb = core.lmdb_open(dir)
  return setmetatable({_lmdb = lmdb, _dir = dir:gsub("/+$", ""), _json = {},
                       _max = opts.max_value_bytes}, TxtDb)
end

local function check_open(self, op)
  if self._lmdb == nil then error(string.format("%s: the text db '%s' is closed", op, self._dir), 3) end
  return self._lmdb
end

--- The decoded value of key, or nil when the key is not in the database.
function TxtDb:get(key)
  local lmdb = check_open(self, "TxtDb:get")
  util.check_string(key, "the key", "TxtDb:get")
  return lmdb:get_lz4_msgpack(key, self._max)
end

--- The raw (lz4-compressed) bytes of key, or nil.
function TxtDb:get_raw(key)
  local lmdb = check_open(self, "TxtDb:get_raw")
  util.check_string(key, "the key", "TxtDb:get_raw")
  return lmdb:get(key)
end

--- Keys in LMDB (byte) order, and the stored (compressed) value sizes.
function TxtDb:keys()
  return check_open(self, "TxtDb:keys"):keys()
end

--- Whether the side file exists (name with or without ".json").
function TxtDb:has_file(name)
  return util.file_exists(self._dir .. "/" .. name) or util.file_exists(self._dir .. "/" .. name .. ".json")
end

--- The side file `name` (e.g. "id2len" or "id2len.json"; ".jsonl" files give an array of lines),
-- decoded once and cached.
function TxtDb:json(name)
  util.check_string(name, "the file name", "TxtDb:json")
  local cached = self._json[name]
  if cached ~= nil then return cached end
  local path = self._dir .. "/" .. name
  if not name:match("%.jsonl?$") then path = path .. ".json" end
  if not util.file_exists(path) then
    error(string.format("TxtDb:json: '%s' has no %s", self._dir, path:match("[^/]*$")), 2)
  end
  local v
  if path:match("%.jsonl$") then
    v = json.read_lines(path, {ordered = true})
  else
    v = json.read_file(path, {ordered = true})
  end
  self._json[name] = v
  return v
end

--- meta.json (special token ids, v_range, tokenizer, preprocessing arguments).
function TxtDb:meta()
  return self:json("meta.json")
end

--- The ids the reference's TxtTokLmdb(db, max_txt_len) keeps, in id2len.json order: all of them for
-- -1; otherwise those whose length is <= max_txt_len, where a QA length list [q, a0, a1, ...]
-- counts as q + max(a). Entries of any other type are dropped, as in the reference.
function TxtDb:ids_with_max_len(max_txt_len)
  if math.type(max_txt_len) ~= "integer" then
    error("TxtDb:ids_with_max_len: max_txt_len must be an integer, got " .. (type(max_txt_len) == "number"
      and tostring(max_txt_len) or type(max_txt_len)), 2)
  end
  if not util.file_exists(self._dir .. "/id2len.json") then
    error(string.format("TxtDb:ids_with_max_len: '%s' has no id2len.json", self._dir), 2)
  end
  local id2len = self:json("id2len.json")
  if type(id2len) ~= "table" or json.is_array(id2len) then
    error(string.format("TxtDb:ids_with_max_len: '%s/id2len.json' must be an object {id: length}, got %s", self._dir,
      type(id2len) == "table" and "an array" or type(id2len)), 2)
  end
  local out = json.array()
  for _, id in ipairs(json.keys(id2len)) do
    local len = id2len[id]
    local keep
    if max_txt_len == -1 then
      keep = true
    elseif math.type(len) == "integer" and len >= 0 then
      keep = len <= max_txt_len
    elseif json.is_array(len) then
      if #len < 2 then
        error(string.format("TxtDb:ids_with_max_len: id2len['%s'] is a list of %d length(s); a QA entry "
                            .. "needs the question and at least one answer", id, #len), 2)
      end
      local best = -math.huge
      for i = 2, #len do
        if type(len[i]) ~= "number" then
          error(string.format("TxtDb:ids_with_max_len: id2len['%s'][%d] is not a number", id, i), 2)
        end
        if len[i] > best then best = len[i] end
      end
      keep = len[1] + best <= max_txt_len
    else -- a length that is no length: the database is damaged, and dropping the id would hide it
      error(string.format("TxtDb:ids_with_max_len: id2len['%s'] is %s, not a length (an integer >= 0, or a QA "
        .. "entry's list)", id, type(len) == "number" and tostring(len) or type(len)), 2)
    end
    if keep then out[#out + 1] = id end
  end
  return out
end

function TxtDb:close()
  if self._lmdb ~= nil then
    self._lmdb:close()
    self._lmdb = nil
  end
end

TxtDb.__close = TxtDb.close
TxtDb.__gc = TxtDb.close

function TxtDb:__tostring()
  return string.format("hero.data.TxtDb('%s'%s)", self._dir, self._lmdb == nil and ", closed" or "")
end

return M
