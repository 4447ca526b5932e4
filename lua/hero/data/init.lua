--- hero.data: data preparation and loading for HERO: readers for the preprocessed databases (video
-- feature LMDBs, text LMDBs) and the formats inside them (lz4 frames, MessagePack with msgpack_numpy
-- arrays, .npz images), and subtitle/frame alignment.
--
-- The byte-level work is in C (hero.core): LMDB through liblmdb, lz4 through liblz4 (both optional
-- at build time; without them the functions raise "hero was built without ... support"), and
-- hero's own MessagePack decoder. Decoded values use hero.json's conventions: MessagePack nil is
-- json.null, arrays carry json.array_mt, maps are tables, str and bin are Lua strings and
-- msgpack_numpy arrays are tensors.
local core = require "hero.core"
local json = require "hero.json"

core.data_set_markers(json.null, json.array_mt)

local data = {}

--- MessagePack bytes -> Lua value (strict: trailing bytes, truncation, ext types and invalid UTF-8
-- in str are errors; nesting limited to 256).
data.decode_msgpack = core.decode_msgpack
--- lz4 frame bytes -> decompressed bytes; max_bytes (default 1 GiB) refuses bigger outputs.
data.lz4_frame_decompress = core.lz4_frame_decompress
--- .npz bytes -> {member = tensor}.
data.decode_npz = core.decode_npz
--- pad_rows(lists, width, pad) -> ids, mask: Lua arrays of integers as the rows of an i64
-- [#lists, width] tensor filled up with pad, and the i64 mask (1 where a row has an entry).
data.pad_rows = core.pad_rows
--- A raw read-only LMDB handle: :get(key) (string or nil), :get_msgpack(key), :get_lz4_msgpack(key
-- [, max_bytes]), :get_npz(key), :keys() (keys in LMDB order, value sizes), :count(), :close().
data.open_lmdb = core.lmdb_open
data.has_lmdb = core.has_lmdb()
data.has_lz4 = core.has_lz4()
--- Whether zip / .npz members (compressed video databases) are inflated by libdeflate (built with
-- it) rather than zlib: the same results and errors, faster.
data.has_libdeflate = core.has_libdeflate()
data.null = json.null

data.open_video_db = require("hero.data.video_db").open
data.open_txt_db = require("hero.data.txt_db").open

local align = require "hero.data.align"
data.align_subtitles = align.align_subtitles
data.subtitle_db_alignment = align.subtitle_db_alignment
data.compute_sub2frames = align.compute_sub2frames

-- Pre-training batches: datasets joining the two databases, the per-task samplers and item
-- builders, the reference's collates and a resumable task loader.
local datasets = require "hero.data.datasets"
data.VideoSubDataset = datasets.VideoSubDataset
data.MemoryDataset = datasets.MemoryDataset
data.VideoOnlyDataset = datasets.VideoOnlyDataset
data.ConcatDataset = datasets.ConcatDataset
data.tasks = require "hero.data.tasks"
data.collate = require "hero.data.collate"
-- is_fatal_error: which errors a loader lets through instead of skipping the item
data.util = require "hero.data.util"
data.TaskLoader = require("hero.data.loader").TaskLoader
--- Writing databases (hero.data.writer): MessagePack encoding, lz4 frames, atomic LMDB builders,
-- the video and text database writers and the reference's value layouts.
data.writer = require "hero.data.writer"
data.encode_msgpack = core.encode_msgpack
data.lz4_frame_compress = core.lz4_frame_compress
data.ordered = data.writer.ordered
--- Preprocessing into databases (features, subtitles, queries) and the embedded synthetic dataset.
data.prepro = require "hero.data.prepro"
data.synthetic = require "hero.data.synthetic"
-- Fine-tuning data: query / question / statement / caption items, collates, datasets, loader.
data.downstream = require "hero.data.downstream"
-- The same batches read and collated on worker threads while the model computes.
data.PrefetchLoader = require("hero.data.prefetch").PrefetchLoader
data.prefetch_loaders = require("hero.data.prefetch").prefetch_loaders

return data
