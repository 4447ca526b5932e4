--- hero.data.writer and hero.data.prepro: MessagePack encoding, lz4 frames, atomic LMDB writing and
-- the preprocessing scripts, checked against the reference's own databases (spec/fixtures/data,
-- written by msgpack-python, python-lz4 and py-lmdb): re-encoding their values gives the same bytes,
-- and preprocessing their inputs gives the same databases.
local helper = require "spec_helper"
local it_db = helper.it_needs(it, pending, "lmdb", "lz4") -- specs that read or write HERO databases
local it_lz4 = helper.it_needs(it, pending, "lz4")
local hero = require "hero"
local json = hero.json
local data = hero.data
local W = data.writer
local prepro = data.prepro

local FX = helper.fixture("data/")
local VDB = FX .. "video_db/tv/resnet_slowfast_1.5"
local TDB = FX .. "txt_db/"
local FEAT = FX .. "features/"
local TOK = helper.fixture("tokenizer/")

local enc = data.encode_msgpack

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

local function assert_err(needle, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error mentioning " .. needle)
  err = tostring(err)
  assert.truthy(err:find(needle, 1, true), string.format("error %q does not mention %q", err, needle))
  return err
end

local tmp_root
local function tmpdir(name)
  if not tmp_root then
    tmp_root = os.tmpname()
    os.remove(tmp_root)
    hero.fs_mkdir(tmp_root)
  end
  local d = tmp_root .. "/" .. name
  hero.fs_rmtree(d)
  return d
end

local function exists(p) return os.rename(p, p) and true or false end

local function lz4_payload(db, key) return data.lz4_frame_decompress(db:get_raw(key)) end

-- Whether the text db at got_dir holds the reference's db at ref_dir byte for byte: the same keys,
-- the same stored value bytes, and the same side files (names without .json). Returns its meta.json.
local function assert_same_txt_db(ref_dir, got_dir, side_files)
  local ref, got = data.open_txt_db(ref_dir), data.open_txt_db(got_dir)
  assert.are.same((ref:keys()), (got:keys()))
  for _, k in ipairs(ref:keys()) do assert.are.equal(lz4_payload(ref, k), lz4_payload(got, k), k) end
  for _, name in ipairs(side_files or {}) do assert.are.same(ref:json(name), got:json(name), name) end
  local meta = got:meta()
  ref:close()
  got:close()
  return meta
end

teardown(function() if tmp_root then hero.fs_rmtree(tmp_root) end end)

describe("encode_msgpack", function()
  it("writes integers in msgpack-python's smallest forms", function()
    local cases = {
      {0, "00"}, {127, "7f"}, {128, "cc80"}, {255, "ccff"}, {256, "cd0100"}, {65535, "cdffff"},
      {65536, "ce00010000"}, {4294967295, "ceffffffff"}, {4294967296, "cf0000000100000000"},
      {math.maxinteger, "cf7fffffffffffffff"}, {-1, "ff"}, {-32, "e0"}, {-33, "d0df"}, {-128, "d080"},
      {-129, "d1ff7f"}, {-32768, "d18000"}, {-32769, "d2ffff7fff"}, {-2147483648, "d280000000"},
      {-2147483649, "d3ffffffff7fffffff"}, {math.mininteger, "d38000000000000000"},
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[2], hex(enc(c[1])), "integer " .. tostring(c[1]))
      assert.are.equal(c[1], data.decode_msgpack(enc(c[1])))
    end
  end)

  it("writes floats as float64, strings, binary, nil, booleans and containers", function()
    assert.are.equal("cb3ff8000000000000", hex(enc(1.5)))
    assert.are.equal("cb0000000000000000", hex(enc(0.0)))
    assert.are.equal(math.type(data.decode_msgpack(enc(2.0))), "float")
    assert.are.equal("c0", hex(enc(nil)))
    assert.are.equal("c0", hex(enc(data.null)))
    assert.are.equal("c3c2", hex(enc(true)) .. hex(enc(false)))
    assert.are.equal("a3616263", hex(enc("abc")))
    assert.are.equal("d920" .. string.rep("78", 32), hex(enc(string.rep("x", 32))))
    assert.are.equal("da0100", hex(enc(string.rep("x", 256))):sub(1, 6))
    assert.are.equal("db00010000", hex(enc(string.rep("x", 65536))):sub(1, 10))
    -- not UTF-8: bin
    assert.are.equal("c402fffe", hex(enc("\xff\xfe")))
    assert.are.equal("c50100", hex(enc(string.rep("\xff", 256))):sub(1, 6))
    assert.are.equal("90", hex(enc(json.array())))
    assert.are.equal("80", hex(enc({})))
    assert.are.equal("93010203", hex(enc({1, 2, 3})))
    local big = {}
    for i = 1, 16 do big[i] = 0 end
    assert.are.equal("dc0010", hex(enc(big)):sub(1, 6))
    -- maps: keys sorted (numbers first, then strings bytewise) unless ordered
    assert.are.equal("82a16101a16202", hex(enc({b = 2, a = 1})))
    assert.are.equal("83" .. "0a" .. "a0" .. "a161" .. "a0" .. "a162" .. "a0", hex(enc({[10] = "", a = "", b = ""})))
    assert.are.equal("82a16202a16101", hex(enc(W.ordered({a = 1, b = 2}, {"b", "a"}))))
    -- integer keys not starting at 1 are a map, as msgpack.packb writes a dict with those keys
    -- (they were refused as an array with holes); ordered() always writes a map in its order
    assert.are.equal("810aa178", hex(enc({[10] = "x"})))
    assert.are.equal("8202a16203a163", hex(enc({[2] = "b", [3] = "c"})))
    assert.are.equal("8202a16201a161", hex(enc(W.ordered({[2] = "b", [1] = "a"}, {2, 1}))))
    assert.are.equal("8101a161", hex(enc(W.ordered({[1] = "a"}, {1}))))
  end)

  it("reads a map with a str 'nd' field as the map it is, not as a msgpack_numpy array", function()
    -- msgpack_numpy's keys are bin (b'nd'); an annotation's "nd" field is str
    local v = data.decode_msgpack(enc({desc_id = 7, desc = "a query", nd = true}))
    assert.are.same({desc_id = 7, desc = "a query", nd = true}, v)
    local t = data.decode_msgpack(enc({f = hero.tensor({1, 2}, {dtype = "f32"})})).f
    assert.is_true(hero.core.is_tensor(t))
    -- msgpack_numpy's five keys as str (a writer without bin types) still make an array
    local str_keys = "85a26e64c3a474797065a33c6634a46b696e64a0a57368617065910" .. "1a464617461c4040000803f"
    local bytes = str_keys:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
    assert.are.same({1}, data.decode_msgpack(bytes):totable())
  end)

  it("writes [] and null as an array and nil when the writer is loaded on its own", function()
    local lua = arg and arg[-1] or "lua5.4"
    local script = "local w = require 'hero.data.writer'; local json = require 'hero.json'; "
      .. "local b = w.encode_msgpack({json.array({}), json.null}); io.write((b:gsub('.', function(c) "
      .. "return string.format('%02x', c:byte()) end)))"
    local p = io.popen(lua .. " -e " .. string.format("%q", script) .. " 2>&1")
    local out = p:read("a")
    p:close()
    assert.equal("9290c0", out) -- fixarray of 2: fixarray of 0, nil
  end)

  it("reports what cannot be encoded, with its path", function()
    assert_err("value.a.b[2] is a function", enc, {a = {b = {1, print}}})
    assert_err("value.x is an array with holes", enc, {x = setmetatable({1, nil, 3}, json.array_mt)})
    assert_err("marked as an array but has keys other than 1..n", enc, setmetatable({a = 1}, json.array_mt))
    assert_err("boolean key", enc, {[true] = 1})
    assert_err("dtype bf16 has no NumPy equivalent", enc, {t = hero.zeros(2):bfloat16()})
    local t = hero.zeros(2)
    t:free()
    assert_err("value.t is a freed tensor", enc, {t = t})
    local cyc = {}
    cyc.self = cyc
    assert_err("nested deeper than 256 levels", enc, cyc)
    assert_err("has 2 keys but its __order lists 1", enc, W.ordered({a = 1, b = 2}, {"a"}))
    assert_err("has no key 'c'", enc, W.ordered({a = 1, b = 2}, {"a", "c"}))
  end)

  it("writes tensors as msgpack_numpy maps that decode to the same tensor", function()
    local x = hero.arange(6):view(2, 3)
    for _, dt in ipairs {"f32", "f64", "f16", "i64", "i32", "u8", "bool"} do
      local t = (dt == "bool") and x:gt(2) or x:to(dt)
      local back = data.decode_msgpack(enc({features = t})).features
      assert.are.equal(dt, back:dtype())
      assert.are.same(t:size(), back:size())
      assert.are.same(t:totable(), back:totable())
    end
    -- strided input is written in C order
    local tr = hero.arange(6):view(2, 3):t()
    assert.are.same(tr:totable(), data.decode_msgpack(enc(tr)):totable())
    -- the exact map: {nd: true, type: "<f4", kind: b"", shape: [1], data: 4 bytes}, keys bin
    assert.are.equal("85c4026e64c3c40474797065a33c6634c4046b696e64c400c40573686170659101c40464617461c40400000000",
      hex(enc(hero.zeros(1))))
  end)

  it_db("re-encodes every value of the reference's video database byte for byte", function()
    local l = data.open_lmdb(VDB)
    local keys = l:keys()
    assert.are.equal(7, #keys)
    for _, k in ipairs(keys) do
      assert.are.equal(l:get(k), enc(W.ordered(l:get_msgpack(k), {"features"})), k)
    end
    l:close()
  end)

  it_db("rebuilds the reference's subtitle and query values byte for byte", function()
    local db = data.open_txt_db(TDB .. "tv_subtitles.db")
    for _, k in ipairs(db:keys()) do
      local v = db:get(k)
      local rebuilt = W.subtitle_value{vid = v.vid_name, subs = v.sub, input_ids = v.input_ids, alignment = {
        unique_sub2frames = v.unique_sub2frames, sub2frames = v.sub2frames, unmatched_frames = v.unmatched_frames,
        duration = v.duration, max_mtached_sub_len = v.max_mtached_sub_len}}
      assert.are.equal(lz4_payload(db, k), enc(rebuilt), k)
    end
    db:close()
    local q = data.open_txt_db(TDB .. "tvr_val.db")
    for _, k in ipairs(q:keys()) do
      local v = q:get(k)
      assert.are.equal(lz4_payload(q, k), enc(W.query_value(v, v.input_ids)), k)
    end
    q:close()
  end)

  it("gives a video of 0 frames no token lists, as prepro_sub.py's pseudo-subtitle branch", function()
    local subs = {{text = "hi", start = 0.0, ["end"] = 0.0}}
    local function alignment(nframes)
      return data.subtitle_db_alignment((data.align_subtitles(subs, nframes)), {{552}})
    end
    local v = W.subtitle_value{vid = "v", subs = subs, input_ids = {{552}}, alignment = alignment(0)}
    assert.equal(0, #v.input_ids)
    assert.equal(0, v.duration)
    local with_frames = W.subtitle_value{vid = "v", subs = subs, input_ids = {{552}}, alignment = alignment(2)}
    assert.same({{552}}, with_frames.input_ids)
  end)
end)

describe("lz4_frame_compress", function()
  it_lz4("round-trips through the reader, including empty and multi-block inputs", function()
    local parts = {}
    for i = 1, 30000 do parts[i] = string.format("%d:%x;", i, (i * 2654435761) % 4294967296) end
    local big = table.concat(parts)  -- > 64 KiB: several blocks
    assert.is_true(#big > 3 * 65536)
    for _, s in ipairs {"", "a", string.rep("hero ", 1000), big} do
      local c = data.lz4_frame_compress(s)
      assert.are.equal(s, data.lz4_frame_decompress(c))
      for level = 1, 12, 11 do assert.are.equal(s, data.lz4_frame_decompress(data.lz4_frame_compress(s, level))) end
    end
  end)

  it_db("uses python-lz4's frame options (linked 64 KiB blocks, content size, no checksum)", function()
    local db = data.open_txt_db(TDB .. "tv_subtitles.db")
    local ref = db:get_raw(db:keys()[1])
    db:close()
    local c = data.lz4_frame_compress("x")
    assert.are.equal(hex(ref:sub(1, 6)), hex(c:sub(1, 6)))  -- magic, FLG, BD
    -- several blocks: linked (FLG 0x48: version 1, content size), as lz4.frame.compress writes them;
    -- a single block is marked independent (0x68) by liblz4 either way
    assert.are.equal("68", hex(c:sub(5, 5)))
    local big = data.lz4_frame_compress(string.rep("hero pre-training ", 8000))
    assert.are.equal("48", hex(big:sub(5, 5)))
    assert_err("level must be 0..12", data.lz4_frame_compress, "x", 13)
  end)

  it_lz4("is decoded by the lz4 command-line tool when it is installed", function()
    local probe = io.popen("command -v lz4 2>/dev/null")
    local path = probe:read("l")
    probe:close()
    if not path then return end
    local file = tmpdir("cli.lz4")
    local s = string.rep("frames and subtitles ", 500)
    local f = assert(io.open(file, "wb"))
    f:write(data.lz4_frame_compress(s))
    f:close()
    local p = io.popen("lz4 -d -c -q '" .. file .. "'")
    local out = p:read("a")
    p:close()
    assert.are.equal(s, out)
  end)
end)

describe("LmdbBuilder", function()
  it_db("builds in a temporary directory and renames it into place on commit", function()
    local dest = tmpdir("db1")
    local b = W.LmdbBuilder(dest)
    b:put("b", "2")
    b:put("a", "1")
    b:put_msgpack("m", {x = 1})
    assert.is_false(exists(dest))
    assert.are.equal(3, b:count())
    b:json("meta", {k = 1})
    b:commit()
    assert.is_true(exists(dest .. "/data.mdb"))
    assert.is_false(exists(dest .. "/lock.mdb"))
    local l = data.open_lmdb(dest)
    assert.are.same({"a", "b", "m"}, (l:keys()))
    assert.are.equal("2", l:get("b"))
    assert.are.same({x = 1}, l:get_msgpack("m"))
    l:close()
    assert.are.same({k = 1}, json.read_file(dest .. "/meta.json"))
    assert_err("already committed or aborted", b.put, b, "c", "3")
    -- nothing else is left beside it
    local names = hero.fs_listdir(tmp_root)
    for _, n in ipairs(names) do assert.is_nil(n:find("partial", 1, true), n) end
  end)

  it_db("refuses an existing destination unless told to replace it, and aborts cleanly", function()
    local dest = tmpdir("db2")
    local b = W.LmdbBuilder(dest)
    b:put("k", "old")
    b:commit()
    assert_err("already exists (pass overwrite = true", W.LmdbBuilder, dest)
    local c = W.LmdbBuilder(dest, {overwrite = true})
    c:put("k", "new")
    assert_err("key 'k' is already in the database", c.put, c, "k", "again")
    c:abort()
    assert.are.equal("old", data.open_lmdb(dest):get("k"))  -- untouched
    local d = W.LmdbBuilder(dest, {overwrite = true})
    d:put("k", "new")
    d:commit()
    assert.are.equal("new", data.open_lmdb(dest):get("k"))
    for _, n in ipairs(hero.fs_listdir(tmp_root)) do
      assert.is_nil(n:find("partial", 1, true), n)
    end
    -- a commit whose last rename fails puts the database that was there back
    local failing = W.LmdbBuilder(dest, {overwrite = true})
    failing:put("k", "newer")
    local real = hero.core.fs_rename
    hero.core.fs_rename = function(from, to)
      if to == dest and not from:find("%.old$") then error("fs_rename: injected failure", 0) end
      return real(from, to)
    end
    local committed, commit_err = pcall(failing.commit, failing)
    hero.core.fs_rename = real
    assert.is_false(committed)
    assert.truthy(tostring(commit_err):find("injected failure", 1, true))
    assert.are.equal("new", data.open_lmdb(dest):get("k"))
    for _, n in ipairs(hero.fs_listdir(tmp_root)) do
      assert.is_nil(n:find("partial", 1, true), n)
    end
    assert_err("does not exist", W.LmdbBuilder, tmpdir("nowhere") .. "/sub/db")
    assert_err("empty keys cannot be stored", function()
      local e = W.LmdbBuilder(tmpdir("db3"))
      local _, err = pcall(e.put, e, "", "v")
      e:abort()
      error(err)
    end)
  end)

  it_db("keeps the old database when a side file cannot be written whole (a file size limit)", function()
    local dest = tmpdir("db_full")
    local b = W.LmdbBuilder(dest)
    b:put("k", "old")
    b:json("side.jsonl", {{a = 1}, {a = 2}})
    b:commit()
    -- in a process whose files may not grow past 1 MB (and that ignores the signal that would
    -- kill it): the side file's write fails, and so does the commit that would have published
    -- the database without it
    local script = string.format([[
      local W = require("hero").data.writer
      local b = W.LmdbBuilder(%q, {overwrite = true})
      b:put("k", "new")
      local rows = {}
      for i = 1, 100000 do rows[i] = {a = i, pad = "xxxxxxxxxxxxxxxxxxxx"} end
      print(pcall(b.json, b, "side.jsonl", rows))
      print(pcall(b.raw_file, b, "raw.bin", string.rep("r", 3000000)))
      print(pcall(b.commit, b))
      b:abort()]], dest)
    local lua = arg and arg[-1] or "lua5.4"
    local p = io.popen("sh -c 'trap \"\" XFSZ; ulimit -f 1024; exec \"$0\" -e \"$1\"' " .. lua .. " "
      .. string.format("%q", script) .. " 2>&1")
    local out = p:read("a")
    p:close()
    assert.matches("false\tLmdbBuilder:json: .*side%.jsonl.*File too large", out)
    assert.matches("false\tLmdbBuilder:raw_file: .*raw%.bin.*File too large", out)
    assert.matches("false\tLmdbBuilder: '.*db_full' is not written: a side file failed", out)
    assert.are.equal("old", data.open_lmdb(dest):get("k"))
    assert.are.same({{a = 1}, {a = 2}}, json.read_lines(dest .. "/side.jsonl"))
  end)

  it_db("grows the map as values arrive", function()
    local dest = tmpdir("db_grow")
    local b = W.LmdbBuilder(dest, {map_size = 65536})
    local v = string.rep("z", 50000)
    for i = 1, 40 do b:put(string.format("k%02d", i), v .. i) end
    b:commit()
    local l = data.open_lmdb(dest)
    assert.are.equal(40, l:count())
    assert.are.equal(v .. 17, l:get("k17"))
    l:close()
  end)
end)

describe("LmdbBuilder side files and keys", function()
  it_db("refuses what would publish a damaged or partial database", function()
    assert_err("LmdbBuilder: the destination is an empty path or the root directory", W.LmdbBuilder, "")
    assert_err("the destination is an empty path or the root directory", W.LmdbBuilder, "/")
    assert_err("LmdbBuilder: unknown option 'overwrte'", W.LmdbBuilder, tmpdir("s0"), {overwrte = true})
    local dest = tmpdir("s1")
    local b = W.LmdbBuilder(dest)
    b:put("x", "1")
    -- a side file named data.mdb replaced the database committed with it
    assert_err("LmdbBuilder:raw_file: 'data.mdb' cannot name a side file", b.raw_file, b, "data.mdb", "garbage")
    assert_err("'lock.mdb' cannot name a side file", b.raw_file, b, "lock.mdb", "garbage")
    -- a .jsonl file of an object was empty, of a list with a hole one line short
    assert_err("x.jsonl takes a list of values without holes", b.json, b, "x.jsonl", {a = 1})
    assert_err("y.jsonl takes a list of values without holes", b.json, b, "y.jsonl", {1, nil, 3})
    b:json("z.jsonl", {1, 2})
    b:commit()
    local db = data.open_txt_db(dest)
    assert.equal("1", db:get_raw("x"))
    db:close()
    -- a key listed twice in ordered() dropped another key of the map
    assert_err("writer.ordered: key 'a' is listed twice (at 1 and 2)", W.ordered, {a = 1, b = 2}, {"a", "a"})
  end)
end)

describe("VideoDbWriter", function()
  it_db("writes float32 msgpack values and merges id2nframe.json by min", function()
    local root = tmpdir("vdb")
    prepro.mkdir_p(root)
    json.write_file(root .. "/id2nframe.json", {a = 2, z = 9})
    local w = W.VideoDbWriter(root .. "/feat_1.5")
    local fa = hero.arange(12):view(3, 4):half()
    w:add("a", fa)
    w:add("b", hero.ones(5, 4))
    assert_err("video 'b' was already added", w.add, w, "b", hero.ones(1, 4))
    assert_err("video 'c' has 3-dimensional features, the database holds 4", w.add, w, "c", hero.ones(2, 3))
    assert_err("video 'c': features must be a 2-D tensor", w.add, w, "c", hero.ones(4))
    assert_err("features must be floating point", w.add, w, "c", hero.ones(2, 4):long())
    w:commit()
    assert.are.same({a = 2, b = 5, z = 9}, json.read_file(root .. "/id2nframe.json"))
    local db = data.open_video_db(root .. "/feat_1.5")
    local got = db:get("a")
    assert.are.equal("f32", got:dtype())
    assert.are.same(fa:narrow(1, 1, 2):float():totable(), got:totable())
    assert.are.same({5, 4}, db:get("b"):size())
    db:close()
  end)
end)

describe("prepro", function()
  it_db("turns the extractor's feature files into the reference's video database", function()
    local out = tmpdir("pp") .. "/video_db/tv/resnet_slowfast_1.5"
    local r = prepro.convert_video_db{resnet = FEAT .. "resnet_features", slowfast = FEAT .. "slowfast_features",
                                      out = out}
    assert.are.equal(7, r.videos)
    assert.are.equal(24, r.feat_dim)
    assert.are.equal(1, #r.corrupted)
    assert.are.equal("house_s01e07_seg01_clip_02", r.corrupted[1].vid)
    assert.truthy(r.corrupted[1].reason:find("SlowFast features", 1, true))
    local a, b = data.open_lmdb(out), data.open_lmdb(VDB)
    assert.are.same((b:keys()), (a:keys()))
    for _, k in ipairs(b:keys()) do assert.are.equal(b:get(k), a:get(k), k) end
    a:close()
    b:close()
    local parent = out:gsub("/[^/]*$", "")
    assert.are.same(json.read_file(FX .. "video_db/tv/id2nframe.json"), json.read_file(parent .. "/id2nframe.json"))
    assert.are.same(json.read_file(FX .. "video_db/tv/corrupted.json"), json.read_file(parent .. "/corrupted.json"))
    -- strict: the unreadable file stops it, naming the video, and the database is left as it was
    assert_err("video 'house_s01e07_seg01_clip_02': SlowFast features: load_features", prepro.convert_video_db,
      {resnet = FEAT .. "resnet_features", slowfast = FEAT .. "slowfast_features", out = out, overwrite = true,
       strict = true})
    assert.are.equal(7, data.open_lmdb(out):count())
  end)

  it_db("cuts videos into clips (--clip_interval) and writes compressed databases (--compress) as the reference",
    function()
    local root = tmpdir("clips")
    local out = root .. "/video_db/ht_clips/resnet_slowfast_1.5"
    local r = prepro.convert_video_db{resnet = FEAT .. "resnet_features", slowfast = FEAT .. "slowfast_features",
                                      out = out, clip_interval = 6, frame_length = 1.5}
    local ref = FX .. "video_db/ht_clips/"
    local a, b = data.open_lmdb(out), data.open_lmdb(ref .. "resnet_slowfast_1.5")
    assert.are.same((b:keys()), (a:keys()))
    for _, k in ipairs(b:keys()) do assert.are.equal(b:get(k), a:get(k), k) end -- byte for byte
    a:close()
    b:close()
    for _, side in ipairs {"id2nframe.json", "corrupted.json"} do
      assert.are.same(json.read_file(ref .. side), json.read_file(root .. "/video_db/ht_clips/" .. side), side)
    end
    assert.are.equal(r.id2nframe["grey_s05e09_seg02_clip_17.4"], 2) -- 18 frames in clips of int(6 / 1.5) = 4
    assert_err("a clip_interval of 1 s holds no 1.5 s frame", prepro.convert_video_db, {resnet = FEAT ..
      "resnet_features", slowfast = FEAT .. "slowfast_features", out = root .. "/bad", clip_interval = 1})
    assert_err("opts.compress must be a boolean, got string", prepro.convert_video_db, {resnet = FEAT ..
      "resnet_features", slowfast = FEAT .. "slowfast_features", out = root .. "/bad", compress = "yes"})
    -- a foreign id2nframe.json beside the database is refused before anything is committed
    prepro.mkdir_p(root .. "/odd")
    json.write_file(root .. "/odd/id2nframe.json", {"x", "y"})
    assert_err("must map video ids to frame counts", prepro.convert_video_db, {resnet = FEAT .. "resnet_features",
      slowfast = FEAT .. "slowfast_features", out = root .. "/odd/resnet_slowfast_1.5"})
    assert.is_false(exists(root .. "/odd/resnet_slowfast_1.5/data.mdb"))
    -- compressed: each value a deflated .npz of features.npy and the reference's allow_pickle.npy (True)
    local cout = root .. "/video_db/tv/resnet_slowfast_1.5_compressed"
    prepro.convert_video_db{resnet = FEAT .. "resnet_features", slowfast = FEAT .. "slowfast_features", out = cout,
      compress = true}
    local got, want = data.open_lmdb(cout), data.open_lmdb(VDB .. "_compressed")
    assert.are.same((want:keys()), (got:keys()))
    for _, k in ipairs(want:keys()) do
      local g, w = data.decode_npz(got:get(k)), data.decode_npz(want:get(k))
      assert.are.same({"allow_pickle", "features"}, json.keys(g))
      assert(g.features:eq(w.features):all():item(), k)
      assert.are.equal("bool", g.allow_pickle:dtype())
      assert.is_true(g.allow_pickle:item())
      assert.is_true(#got:get(k) < #want:get(k) * 1.1, k) -- deflated as the reference's
      -- members in savez_compressed's keyword order, as the reference's values hold them
      assert.is_true(got:get(k):find("features.npy", 1, true) < got:get(k):find("allow_pickle.npy", 1, true), k)
      assert.is_true(want:get(k):find("features.npy", 1, true) < want:get(k):find("allow_pickle.npy", 1, true), k)
    end
    got:close()
    want:close()
    local vdb = data.open_video_db(cout) -- read back as a compressed database (its name says so)
    assert.is_true(vdb.compressed)
    assert.are.same({7, 24}, vdb:get("met_s02e03_seg01_clip_05"):size())
    vdb:close()
  end)

  it_db("reports a feature file without its partner", function()
    local root = tmpdir("lonely")
    prepro.mkdir_p(root .. "/r")
    prepro.mkdir_p(root .. "/s/nested")
    hero.io.save_npz(root .. "/r/v1.npz", {features = hero.ones(3, 2):half()})
    hero.io.save_npz(root .. "/s/nested/v1.npz", {features = hero.ones(4, 3):half()})
    hero.io.save_npz(root .. "/r/v2.npz", {features = hero.ones(3, 2):half()})
    -- a video of no frame is corrupted, as load_npz's nframes == 0 makes it
    hero.io.save_npz(root .. "/r/v3.npz", {features = hero.ones(0, 2):half()})
    hero.io.save_npz(root .. "/s/v3.npz", {features = hero.ones(4, 3):half()})
    local r = prepro.convert_video_db{resnet = root .. "/r", slowfast = root .. "/s", out = root .. "/db/x"}
    assert.are.equal(1, r.videos)
    assert.are.same({3, 5}, data.open_video_db(root .. "/db/x"):get("v1"):size())
    assert.are.equal("v2", r.corrupted[1].vid)
    assert.truthy(r.corrupted[1].reason:find("no SlowFast feature file", 1, true))
    assert.are.equal("v3", r.corrupted[2].vid)
    assert.truthy(r.corrupted[2].reason:find("no frame (0 ResNet rows, 4 SlowFast rows)", 1, true))
    assert_err("video 'v2': no SlowFast feature file", prepro.convert_video_db,
      {resnet = root .. "/r", slowfast = root .. "/s", out = root .. "/db/y", strict = true})
  end)

  local tok
  local function tokenize(s)
    tok = tok or hero.text.Tokenizer.from_files(TOK .. "roberta-base-vocab.json", TOK .. "vocab.bpe")
    return tok:encode(s)
  end

  it_db("tokenizes, aligns and writes the reference's subtitle database byte for byte", function()
    local ref = data.open_txt_db(TDB .. "tv_subtitles.db")
    local lines = {}
    for _, k in ipairs(ref:keys()) do lines[#lines + 1] = {vid_name = k, sub = ref:get(k).sub} end
    lines[#lines + 1] = {vid_name = "no_features", sub = {}}
    local out = tmpdir("subs") .. "/tv_subtitles.db"
    local r = prepro.subtitle_db{subs = lines, out = out, tokenize = tokenize, vid2nframe = ref:json("vid2len")}
    assert.are.equal(7, r.videos)
    assert.are.same({"no_features"}, r.no_features)
    local got = data.open_txt_db(out)
    assert.are.same((ref:keys()), (got:keys()))
    for _, k in ipairs(ref:keys()) do assert.are.equal(lz4_payload(ref, k), lz4_payload(got, k), k) end
    for _, name in ipairs {"vid2len", "vid2max_frame_sub_len", "sub_info"} do
      assert.are.same(ref:json(name), got:json(name), name)
    end
    local meta = got:meta()
    for _, k in ipairs {"CLS", "PAD", "SEP", "UNK", "MASK", "BOS", "EOS"} do
      assert.are.equal(ref:meta()[k], meta[k])
    end
    assert.are.same({4, 50261}, meta.v_range)
    got:close()
    ref:close()
  end)

  it_db("keeps the annotation's order in the side files, the last of a repeated query, the tokenizer's ids", function()
    local ref = data.open_txt_db(TDB .. "tv_subtitles.db")
    local lines = {}
    for _, k in ipairs(ref:keys()) do table.insert(lines, 1, {vid_name = k, sub = ref:get(k).sub}) end
    local base = tmpdir("order")
    prepro.mkdir_p(base)
    local out = base .. "/tv_subtitles.db"
    local idx = base .. "/vid2dur_idx.json"
    local f = assert(io.open(idx, "wb"))
    f:write('{"val": {"x": [10.5, 0]}}')
    f:close()
    prepro.subtitle_db{subs = lines, out = out, tokenize = tokenize, vid2nframe = ref:json("vid2len"),
      vid2dur_idx = idx}
    local text = assert(io.open(out .. "/vid2len.json")):read("a")
    local want = {}
    for i, l in ipairs(lines) do want[i] = l.vid_name end
    assert.same(want, json.keys(json.decode(text, {ordered = true}))) -- prepro_sub.py's dict order
    assert.equal('{"val": {"x": [10.5, 0]}}', assert(io.open(out .. "/vid2dur_idx.json")):read("a"))
    ref:close()
    -- a repeated desc_id: the last line's value, the first line's place (db[str(id)] = example)
    local qout = tmpdir("dup") .. "/q.db"
    prepro.query_db{queries = {{desc_id = 9, desc = "first one", vid_name = "b", ts = {0, 1}, duration = 3},
      {desc_id = 2, desc = "other", vid_name = "a", ts = {0, 1}, duration = 3},
      {desc_id = 9, desc = "second", vid_name = "c", ts = {0, 2}, duration = 3}}, out = qout, tokenize = tokenize}
    local q = data.open_txt_db(qout)
    assert.equal("second", q:get("9").desc)
    assert.same({"9", "2"}, json.keys(json.decode(assert(io.open(qout .. "/id2len.json")):read("a"), {ordered = true})))
    assert.equal("c", q:json("query2video")["9"])
    q:close()
    -- meta.json's ids come from the tokenizer, as prepro_*.py's convert_tokens_to_ids
    tok = tok or hero.text.Tokenizer.from_files(TOK .. "roberta-base-vocab.json", TOK .. "vocab.bpe")
    assert.same({CLS = 0, SEP = 2, PAD = 1, MASK = 50264, UNK = 3, v_range = {4, 50261}}, W.specials_of(tok))
  end)

  it_db("writes the reference's query database byte for byte", function()
    local ref = data.open_txt_db(TDB .. "tvr_val.db")
    local out = tmpdir("q") .. "/tvr_val.db"
    prepro.query_db{queries = TDB .. "tvr_val.db/query_data.jsonl", out = out, tokenize = tokenize}
    local got = data.open_txt_db(out)
    for _, k in ipairs(ref:keys()) do assert.are.equal(lz4_payload(ref, k), lz4_payload(got, k), k) end
    assert.are.same(ref:json("id2len"), got:json("id2len"))
    assert.are.same(ref:json("query2video"), got:json("query2video"))
    assert.are.same(ref:ids_with_max_len(60), got:ids_with_max_len(60))
    assert_err("query 7 (entry 1): ts must be", prepro.query_db, {queries = {{desc_id = 7, desc = "x", vid_name = "v",
      ts = {3, 1}, duration = 5}}, out = tmpdir("q2") .. "/bad.db", tokenize = tokenize})
  end)

  it_db("TVC caption databases: a repeated desc_id or clip_id replaces the value, as prepro_tvc.py", function()
    local subs = {{vid_name = "v1", sub = {{text = "hi", start = 0, ["end"] = 2}}}, {vid_name = "v2", sub = {}}}
    local out = tmpdir("cap_dup")
    local r = prepro.caption_db{captions = {
        {clip_id = 1, vid_name = "v1", ts = {0, 3}, duration = 5, descs = {{desc_id = 7, desc = "first"}}},
        {clip_id = 2, vid_name = "v1", ts = {3, 6}, duration = 5, descs = {{desc_id = 7, desc = "second"}}},
        {clip_id = 1, vid_name = "v2", ts = {1, 2}, duration = 4, descs = {{desc_id = 8, desc = "third"}}}},
      subs = subs, out = out, tokenize = tokenize}
    assert.same({clips = 3, captions = 3}, r)
    local cap, clip = data.open_txt_db(out .. "/cap.db"), data.open_txt_db(out .. "/clip.db")
    -- cap_db[cap_id] = cap, clip_db[clip_id] = clip: the last line's value
    assert.equal("second", cap:get("7").desc)
    assert.equal("2", cap:get("7").clip_id)
    assert.equal("v2", clip:get("1").vid_name)
    assert.equal("third", clip:get("1").captions[1].text)
    -- the dicts keep the last video; the lists append the id again, as the reference's
    assert.same({["7"] = "v1", ["8"] = "v2"}, cap:json("cap2vid"))
    assert.same({v1 = {"7", "7"}, v2 = {"8"}}, cap:json("vid2caps"))
    assert.same({["1"] = "v2", ["2"] = "v1"}, clip:json("clip2vid"))
    assert.same({v1 = {"1", "2"}, v2 = {"1"}}, clip:json("vid2clips"))
    cap:close()
    clip:close()
    -- negative or reversed moments are refused, as query_db refuses them
    for i, ts in ipairs {{-3, 2}, {6, 1}, {0 / 0, 3}, {1}} do
      assert_err("caption_db: clip 1 (entry 1): ts must be {start, end} seconds with 0 <= start <= end",
        prepro.caption_db, {captions = {{clip_id = 1, vid_name = "v1", ts = ts, duration = 5,
          descs = {{desc_id = 7, desc = "a"}}}}, subs = subs, out = tmpdir("cap_bad" .. i), tokenize = tokenize})
    end
  end)

  it_db("writes the reference's TVQA question database byte for byte (prepro_query.py --task tvqa)", function()
    local out = tmpdir("qa") .. "/tvqa_val.db"
    prepro.qa_db{queries = TDB .. "tvqa_val.db/query_data.jsonl", out = out, tokenize = tokenize}
    assert_same_txt_db(TDB .. "tvqa_val.db", out, {"id2len", "query2video"})
    assert_err("qa_db: question 5 (entry 1): a3 must be a string", prepro.qa_db, {queries = {{qid = 5, q = "x",
      a0 = "a", a1 = "b", a2 = "c", vid_name = "v"}}, out = tmpdir("qa2") .. "/bad.db", tokenize = tokenize})
  end)

  it_db("writes the reference's VIOLIN statement database byte for byte (prepro_query.py --task violin)", function()
    local out = tmpdir("violin") .. "/violin_test.db"
    prepro.violin_db{queries = TDB .. "violin_test.db/query_data.jsonl", out = out, tokenize = tokenize}
    local meta = assert_same_txt_db(TDB .. "violin_test.db", out, {"id2len", "query2video", "query_data.jsonl"})
    assert.are.equal("violin", meta.task)
    assert_err("violin_db: statement 5 (entry 1): label must be 0 or 1", prepro.violin_db, {queries = {{desc_id = 5,
      desc = "x", vid_name = "v", label = 2}}, out = tmpdir("violin2") .. "/bad.db", tokenize = tokenize})
    assert_err('violin_db: entry 1: desc_id {"x":1} is not an integer or a non-empty string', prepro.violin_db,
      {queries = {{desc_id = {x = 1}, desc = "x", vid_name = "v", label = 1}}, out = tmpdir("violin3") .. "/bad.db",
       tokenize = tokenize})
    assert_err("violin_db: opts.tokenize (text -> ids) is required", prepro.violin_db, {queries = {}, out = "x"})
    -- an annotation file must be whole: a torn last line is an error, not a statement fewer
    local tdir = tmpdir("violin4")
    prepro.mkdir_p(tdir)
    local torn = tdir .. "/torn.jsonl"
    local f = assert(io.open(torn, "wb"))
    f:write('{"desc_id": "a-1", "desc": "x", "vid_name": "v", "label": 1}\n{"desc_id": "a-0", "desc')
    f:close()
    assert_err("torn.jsonl:2", prepro.violin_db, {queries = torn, out = tdir .. "/t.db",
      tokenize = tokenize})
  end)

  it_db("writes test-split queries without moments or videos, and DiDeMo's lists of moments", function()
    local out = tmpdir("qt") .. "/test.db"
    prepro.query_db{queries = {{desc_id = 1, desc = "A man opens the door.", duration = 30.0, type = "v"},
      {desc_id = 2, desc = "SHE LAUGHS", vid_name = "v2", ts = {{0, 5}, {0, 10}, {5, 10}, {0, 5}}}},
      out = out, tokenize = tokenize}
    local db = data.open_txt_db(out)
    local a, b = db:get("1"), db:get("2")
    assert.are.equal(json.null, a.target)
    assert.is_nil(a.vid)
    assert.are.same({{0, 5}, {0, 10}, {5, 10}, {0, 5}}, b.target)
    assert.are.equal("v2", b.vid)
    assert.are.same(tokenize("she laughs"), b.input_ids) -- all-caps text is lower-cased first
    assert.are.same({["2"] = "v2"}, db:json("query2video"))
    db:close()
    -- what a reader makes of them: no target gives -1, -1; the training filter keeps both
    local ds = hero.data.downstream.QueryDataset{task = "vcmr", video = hero.data.MemoryDataset{videos = {},
      special_ids = {CLS = 0, SEP = 2, MASK = 3}}, query_db = out, train = false}
    assert.are.same({"1", "2"}, ds:ids())
    assert_err("ts must be {start, end}", prepro.query_db, {queries = {{desc_id = 3, desc = "x", ts = {{1, 0}}}},
      out = tmpdir("qt2") .. "/bad.db", tokenize = tokenize})
  end)

  it_db("names the video and the subtitle of bad input, or drops them with a count", function()
    local bad = {
      {vid_name = "v1", sub = {{text = "ok", start = 0.5, ["end"] = 2.0}, {text = "bad", start = 5.0, ["end"] = 3.0}}},
      {vid_name = "v2", sub = {{text = "neg", start = -1.0, ["end"] = 2.0},
                               {text = "fine", start = 0.1, ["end"] = 1.0}}},
      {vid_name = "v3", sub = {{text = "late", start = 3.0, ["end"] = 4.0},
                               {text = "early", start = 0.0, ["end"] = 1.0},
                               {text = 5, start = 1, ["end"] = 2}}},
    }
    local n = {v1 = 4, v2 = 4, v3 = 4}
    assert_err("video 'v1': hero.data.align_subtitles: subs[2] (sub_idx 1): 'end' (3.0 s) is before 'start' (5.0 s)",
      prepro.subtitle_db, {subs = {bad[1]}, out = tmpdir("b1"), tokenize = tokenize, vid2nframe = n})
    assert_err("video 'v2': hero.data.align_subtitles: subs[1] (sub_idx 0): 'start' is negative",
      prepro.subtitle_db, {subs = {bad[2]}, out = tmpdir("b2"), tokenize = tokenize, vid2nframe = n})
    assert_err("video 'v3': hero.data.align_subtitles: subs[2] (sub_idx 1): starts at 0.0 s, before subs[1]",
      prepro.subtitle_db, {subs = {bad[3]}, out = tmpdir("b3"), tokenize = tokenize, vid2nframe = n})
    assert.is_false(exists(tmpdir("b1")))
    local out = tmpdir("b4")
    local r = prepro.subtitle_db{subs = bad, out = out, tokenize = tokenize, vid2nframe = n, skip_bad_subs = true}
    assert.are.equal(3, r.videos)
    assert.are.equal(3, #r.dropped_subs)
    assert.are.same({vid = "v1", index = 2, reason = "'end' (3.0 s) is before 'start' (5.0 s)"}, r.dropped_subs[1])
    assert.are.same({vid = "v2", index = 1, reason = "'start' is negative (-1.0 s)"}, r.dropped_subs[2])
    assert.are.same({vid = "v3", index = 3, reason = "'text' is not a string"}, r.dropped_subs[3])
    local db = data.open_txt_db(out)
    local v3 = db:get("v3")
    assert.are.same({"early", "late"}, {v3.sub[1].text, v3.sub[2].text})  -- sorted by start
    assert.are.same({{0, {0}}, {1, {2}}}, v3.unique_sub2frames)
    db:close()
  end)

  it_db("refuses options and annotations it would misread", function()
    local n = {v1 = 4}
    local sub = {text = "ok", start = 0.5, ["end"] = 2.0}
    -- a misspelt skip_bad_subs was ignored; "sub" as one object (not a list) stored no subtitle
    assert_err("subtitle_db: unknown option 'skip_bad_sub'", prepro.subtitle_db,
      {subs = {{vid_name = "v1", sub = {sub}}}, out = tmpdir("o1"), tokenize = tokenize, vid2nframe = n,
       skip_bad_sub = true})
    assert_err("subtitle_db: line 1 is not {vid_name = string, sub = [...]}", prepro.subtitle_db,
      {subs = {{vid_name = "v1", sub = sub}}, out = tmpdir("o2"), tokenize = tokenize, vid2nframe = n})
    assert.is_false(exists(tmpdir("o2")))
    local q = {desc_id = 1, desc = "a query", vid_name = "v1", ts = {0, 1, 2}}
    assert_err("ts must be {start, end} seconds", prepro.query_db, {queries = {q}, out = tmpdir("o3"),
      tokenize = tokenize})
    assert_err("query_db: unknown option 'raw_txt'", prepro.query_db, {queries = {q}, out = tmpdir("o4"),
      tokenize = tokenize, raw_txt = true})
    local qa = {qid = 7, q = "q", a0 = "a", a1 = "b", a2 = "c", a3 = "d", a4 = "e", vid_name = "v1", answer_idx = 9}
    assert_err("qa_db: question 7 (entry 1): answer_idx must be an integer 0..4, got 9", prepro.qa_db,
      {queries = {qa}, out = tmpdir("o5"), tokenize = tokenize})
    qa.answer_idx = "2"
    assert_err("answer_idx must be an integer 0..4, got 2", prepro.qa_db,
      {queries = {qa}, out = tmpdir("o6"), tokenize = tokenize})
    assert_err("VideoDbWriter: unknown option 'compres'", W.VideoDbWriter, tmpdir("o7"), {compres = true})
    assert_err("convert_video_db: unknown option 'slowfst'", prepro.convert_video_db,
      {resnet = "r", slowfast = "s", out = tmpdir("o8"), slowfst = "s"})
  end)

  it_db("runs as examples/prepro.lua and fails with the precise message", function()
    local i = -1
    while arg and arg[i - 1] do i = i - 1 end
    local lua = arg and arg[i] or "lua5.4"
    local root = FX:gsub("spec/fixtures/data/$", "")
    local env = string.format("LUA_PATH='%s' LUA_CPATH='%s' ", package.path, package.cpath)
    local dir = tmpdir("cli")
    prepro.mkdir_p(dir)
    -- examples/prepro.lua with these arguments and the tokenizer's, which must succeed
    local function prepro_ok(...)
      local q = {}
      for _, a in ipairs {...} do q[#q + 1] = "'" .. a .. "'" end
      for _, a in ipairs {"--vocab", TOK .. "roberta-base-vocab.json", "--merges", TOK .. "vocab.bpe", "--quiet"} do
        q[#q + 1] = "'" .. a .. "'"
      end
      local p = io.popen(string.format("%s%s %sexamples/prepro.lua %s 2>&1", env, lua, root, table.concat(q, " ")))
      local text = p:read("a")
      assert.is_truthy(p:close(), text)
    end
    local subs = dir .. "/subs.jsonl"
    local f = assert(io.open(subs, "wb"))
    f:write('{"vid_name": "bbt_s06e12_seg01_clip_08", "sub": [{"text": "hi", "start": 2.0, "end": 1.0}]}\n')
    f:close()
    local cmd = string.format("%s%s %sexamples/prepro.lua --resnet %s --slowfast %s --subs %s --vocab %s --merges %s "
      .. "--out %s --quiet 2>&1", env, lua, root, FEAT .. "resnet_features", FEAT .. "slowfast_features", subs,
      TOK .. "roberta-base-vocab.json", TOK .. "vocab.bpe", dir .. "/out")
    local p = io.popen(cmd)
    local text = p:read("a")
    local ok, _, code = p:close()
    assert.is_falsy(ok)
    assert.are.equal(1, code)
    assert.truthy(text:find("video 'bbt_s06e12_seg01_clip_08'", 1, true), text)
    assert.truthy(text:find("'end' (1.0 s) is before 'start' (2.0 s)", 1, true), text)
    -- the video database was written; the subtitle database was not
    assert.is_true(exists(dir .. "/out/video_db/tv/resnet_slowfast_1.5/data.mdb"))
    assert.is_false(exists(dir .. "/out/txt_db/tv_subtitles.db"))
    -- a question database alone (no features), as prepro_query.py --task tvqa writes it
    prepro_ok("--queries", TDB .. "tvqa_val.db/query_data.jsonl", "--query-db", "tvqa_val", "--query-task", "tvqa",
      "--out", dir .. "/q")
    assert.are.equal("tvqa", assert_same_txt_db(TDB .. "tvqa_val.db", dir .. "/q/txt_db/tvqa_val.db").task)
    -- and a VIOLIN statement database (--task violin)
    prepro_ok("--queries", TDB .. "violin_test.db/query_data.jsonl", "--query-db", "violin_test", "--query-task",
      "violin", "--out", dir .. "/q")
    assert.are.equal("violin", assert_same_txt_db(TDB .. "violin_test.db", dir .. "/q/txt_db/violin_test.db").task)
    -- the subtitle database from the reference's own inputs, aligned with its --vid2nframe counts
    local ann = TDB .. "annotations/"
    prepro_ok("--subs", ann .. "tv_subtitles.jsonl", "--vid2nframe", ann .. "tv_vid2nframe.json", "--out", dir .. "/s")
    local meta = assert_same_txt_db(TDB .. "tv_subtitles.db", dir .. "/s/txt_db/tv_subtitles.db",
      {"vid2len", "vid2max_frame_sub_len", "sub_info"})
    assert.are.equal(ann .. "tv_vid2nframe.json", meta.vid2nframe)
    -- a compressed video database cut into clips (--compress --clip-interval 6)
    prepro_ok("--resnet", FEAT .. "resnet_features", "--slowfast", FEAT .. "slowfast_features", "--compress",
      "--clip-interval", "6", "--name", "ht", "--out", dir .. "/z")
    local clips = data.open_video_db(dir .. "/z/video_db/ht/resnet_slowfast_1.5_compressed")
    local plain = data.open_video_db(FX .. "video_db/ht_clips/resnet_slowfast_1.5")
    assert.are.same(plain:keys(), clips:keys())
    for _, k in ipairs(plain:keys()) do assert(clips:get(k):eq(plain:get(k)):all():item(), k) end
    clips:close()
    plain:close()
    -- TVC caption databases alone, the clips' subtitles from --subs
    local caps = dir .. "/caps.jsonl"
    f = assert(io.open(caps, "wb"))
    f:write('{"vid_name": "v1", "clip_id": 12, "ts": [1.0, 4.0], "duration": 9.0, '
      .. '"descs": [{"desc_id": 5, "desc": "She opens the door."}]}\n')
    f:close()
    local csubs = dir .. "/csubs.jsonl"
    f = assert(io.open(csubs, "wb"))
    f:write('{"vid_name": "v1", "sub": [{"text": "hi", "start": 0.5, "end": 2.0}, {"text": "no", "start": 5.0, '
      .. '"end": 6.0}]}\n')
    f:close()
    prepro_ok("--captions", caps, "--caption-db", "tvc", "--subs", csubs, "--out", dir .. "/c")
    local cap = data.open_txt_db(dir .. "/c/txt_db/tvc/cap.db")
    assert.are.same({0}, cap:get("5").sub_indices) -- only the subtitle ending inside [1, 4]
    assert.are.equal("12", cap:get("5").clip_id)
    cap:close()
    assert.is_true(exists(dir .. "/c/txt_db/tvc/clip.db/data.mdb"))
    assert.is_false(exists(dir .. "/c/video_db"))
  end)
end)
