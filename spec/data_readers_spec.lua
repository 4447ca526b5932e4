--- hero.data: the reference's video and text LMDBs read as-is, lz4 frames, MessagePack and
-- msgpack_numpy, and clear errors on broken inputs.
local helper = require "spec_helper"
local hero = require "hero"
local json = hero.json
local data = hero.data

local P = string.pack
local FX = helper.fixture("data/")
local VDB = FX .. "video_db/"
local TDB = FX .. "txt_db/"

local function err_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function assert_err(needle, fn, ...)
  local msg = err_of(fn, ...)
  assert.truthy(msg:find(needle, 1, true), string.format("error %q does not mention %q", msg, needle))
  return msg
end

-- Every element's float32 bit pattern, with dtype and shape: equal strings = bitwise equal tensors.
local function bits(t)
  local out = {}
  local function walk(v)
    if type(v) == "table" then
      for i = 1, #v do walk(v[i]) end
    else
      out[#out + 1] = P("<f", v)
    end
  end
  walk(t:totable())
  return t:dtype() .. "[" .. table.concat(t:size(), "x") .. "]" .. table.concat(out)
end

-- Deep equality that also checks integer/float subtypes and array marking.
local function deep_equal(a, b, path)
  path = path or "value"
  if type(a) ~= type(b) then return false, string.format("%s: %s vs %s", path, type(a), type(b)) end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) or a ~= b then
      return false, string.format("%s: %s %s vs %s %s", path, math.type(a), a, math.type(b), b)
    end
    return true
  end
  if type(a) ~= "table" or a == json.null or b == json.null then
    if a ~= b then return false, string.format("%s: %s vs %s", path, tostring(a), tostring(b)) end
    return true
  end
  if json.is_array(a) ~= json.is_array(b) then return false, path .. ": array vs object" end
  for k, v in pairs(a) do
    if b[k] == nil then return false, string.format("%s.%s missing on the right", path, tostring(k)) end
    local ok, msg = deep_equal(v, b[k], path .. "." .. tostring(k))
    if not ok then return false, msg end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, string.format("%s.%s missing on the left", path, tostring(k)) end
  end
  return true
end

local it_lz4 = helper.it_needs(it, pending, "lz4")
local it_lmdb = helper.it_needs(it, pending, "lmdb")
local it_both = helper.it_needs(it, pending, "lmdb", "lz4")

local function tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -p '" .. path .. "'"))
  return path
end

local write = helper.write_file

-- ------------------------------------------------------------------ MessagePack by hand

local function mp_str(s)
  if #s < 32 then return P("B", 0xa0 + #s) .. s end
  if #s < 256 then return P(">BB", 0xd9, #s) .. s end
  if #s < 65536 then return P(">BI2", 0xda, #s) .. s end
  return P(">BI4", 0xdb, #s) .. s
end
local function mp_bin(s)
  if #s < 256 then return P(">BB", 0xc4, #s) .. s end
  if #s < 65536 then return P(">BI2", 0xc5, #s) .. s end
  return P(">BI4", 0xc6, #s) .. s
end
local function mp_arr(items)
  local n = #items
  local head = n < 16 and P("B", 0x90 + n) or P(">BI2", 0xdc, n)
  return head .. table.concat(items)
end
-- kv: flat list k1, v1, k2, v2 (already encoded)
local function mp_map(kv)
  local n = #kv // 2
  local head = n < 16 and P("B", 0x80 + n) or P(">BI2", 0xde, n)
  return head .. table.concat(kv)
end
local function mp_int(i) return P(">Bi8", 0xd3, i) end
-- msgpack_numpy's encoding of an ndarray, keys as bin (key = mp_bin) or str (key = mp_str)
local function mp_nd(key, dtype, shape, bytes)
  local dims = {}
  for i, s in ipairs(shape) do dims[i] = mp_int(s) end
  return mp_map {key "nd", "\xc3", key "type", mp_str(dtype), key "kind", mp_bin "", key "shape", mp_arr(dims),
                 key "data", mp_bin(bytes)}
end

describe("hero.data.decode_msgpack", function()
  local dec = data.decode_msgpack

  it("decodes every type and width", function()
    assert.equal(json.null, dec "\xc0")
    assert.is_false(dec "\xc2"); assert.is_true(dec "\xc3")
    local ints = {
      {"\x00", 0}, {"\x7f", 127}, {"\xe0", -32}, {"\xff", -1},
      {"\xcc\xff", 255}, {"\xcd\xff\xff", 65535}, {"\xce\xff\xff\xff\xff", 4294967295},
      {"\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", math.maxinteger},
      {"\xd0\x80", -128}, {"\xd0\x7f", 127}, {"\xd1\x80\x00", -32768}, {"\xd1\x12\x34", 0x1234},
      {"\xd2\x80\x00\x00\x00", -2147483648}, {"\xd2\xff\xff\xff\xfe", -2},
      {"\xd3\x80\x00\x00\x00\x00\x00\x00\x00", math.mininteger}, {"\xd3\xff\xff\xff\xff\xff\xff\xff\xfd", -3},
    }
    for _, c in ipairs(ints) do
      local v = dec(c[1])
      assert.equal("integer", math.type(v)); assert.equal(c[2], v)
    end
    local big = dec "\xcf\xff\xff\xff\xff\xff\xff\xff\xff" -- uint64 above 2^63-1: nearest float
    assert.equal("float", math.type(big)); assert.equal(2.0 ^ 64, big)
    assert.equal(1.5, dec "\xca\x3f\xc0\x00\x00")
    assert.equal(string.unpack("<f", P("<f", 0.1)), dec(P(">Bf", 0xca, 0.1)))
    assert.equal("float", math.type(dec(P(">Bf", 0xca, 2.0))))
    assert.equal(0.1, dec(P(">Bd", 0xcb, 0.1)))
    assert.equal(-math.huge, dec(P(">Bd", 0xcb, -math.huge)))
    local nan = dec(P(">Bd", 0xcb, 0 / 0))
    assert.is_true(nan ~= nan)
    for _, n in ipairs {0, 5, 31, 32, 255, 256, 65535, 65536, 70000} do
      local s = string.rep("é", n // 2) .. string.rep("x", n % 2)
      assert.equal(s, dec(mp_str(s)))
      local b = string.rep("\0\255", n // 2) .. string.rep("\128", n % 2)
      assert.equal(b, dec(mp_bin(b)))
    end
    assert.equal("ab", dec "\xd9\x02ab"); assert.equal("ab", dec "\xda\x00\x02ab")
    assert.equal("ab", dec "\xdb\x00\x00\x00\x02ab"); assert.equal("\0\1", dec "\xc5\x00\x02\0\1")
    assert.equal("\0\1", dec "\xc6\x00\x00\x00\x02\0\1")
  end)

  it("decodes arrays and maps of every width; nil stays as json.null", function()
    local a = dec "\x93\x01\xc0\xa1x"
    assert.is_true(json.is_array(a)); assert.equal(3, #a)
    assert.equal(1, a[1]); assert.equal(json.null, a[2]); assert.equal("x", a[3])
    assert.is_true(json.is_array(dec "\x90")); assert.equal(0, #dec "\x90")
    assert.equal(2, #dec "\xdc\x00\x02\x01\x02"); assert.equal(2, #dec "\xdd\x00\x00\x00\x02\x01\x02")
    local items = {}
    for i = 1, 20 do items[i] = mp_int(i) end
    local long = dec(mp_arr(items))
    assert.equal(20, #long); assert.equal(20, long[20])
    local m = dec "\x83\xa1a\x01\xc4\x01b\xc0\x05\xa1v"
    assert.is_false(json.is_array(m))
    assert.equal(1, m.a); assert.equal(json.null, m.b); assert.equal("v", m[5])
    assert.same({x = 1}, dec "\xde\x00\x01\xa1x\x01"); assert.same({x = 1}, dec "\xdf\x00\x00\x00\x01\xa1x\x01")
    assert.same({[true] = 1, [2.5] = 2}, dec(mp_map {"\xc3", "\x01", P(">Bd", 0xcb, 2.5), "\x02"}))
    -- a repeated key keeps the last value (as Python's dict does)
    assert.same({k = 2}, dec "\x82\xa1k\x01\xa1k\x02")
    local nested = dec(mp_map {mp_str "l", mp_arr {mp_arr {}, mp_map {}}, mp_str "e", mp_map {}})
    assert.is_true(json.is_array(nested.l[1])); assert.is_false(json.is_array(nested.l[2]))
    assert.equal('{"e":{},"l":[[],{}]}', json.encode(nested))
  end)

  it("refuses corrupt input with the byte offset", function()
    assert_err("msgpack: at byte 0: empty input", dec, "")
    assert_err("at byte 0: 0xc1 is not a valid MessagePack type byte", dec, "\xc1")
    assert_err("at byte 1: ext types are not supported (type byte 0xd4)", dec, "\x91\xd4\x01\x00")
    assert_err("ext types are not supported (type byte 0xc7)", dec, "\xc7\x01\x05\x00")
    assert_err("uint16 needs 2 more bytes but only 1 are left", dec, "\xcd\xff")
    assert_err("float64 needs 8 more bytes", dec, "\xcb\0\0\0")
    assert_err("str32 length 4294967295 runs past the end of the input (3 bytes left)", dec, "\xdb\xff\xff\xff\xffabc")
    assert_err("bin32 length 5 runs past the end of the input (4 bytes left)", dec, "\xc6\x00\x00\x00\x05abcd")
    assert_err("fixstr length 3 runs past the end", dec, "\xa3ab")
    assert_err("array32 of 4294967295 elements runs past the end of the input (0 bytes left)", dec,
               "\xdd\xff\xff\xff\xff")
    assert_err("map32 of 2147483648 pairs runs past the end", dec, "\xdf\x80\x00\x00\x00\x01\x01")
    assert_err("fixmap of 2 pairs runs past the end of the input (3 bytes left)", dec, "\x82\x01\x02\x03")
    assert_err("at byte 0: fixarray of 3 elements runs past the end of the input (2 bytes left)", dec, "\x93\x01\x02")
    assert_err("at byte 3: unexpected end of input (truncated)", dec, "\x92\x91\x01")
    assert_err("at byte 1: uint16 needs 2 more bytes but only 1 are left", dec, "\x92\xcd\x01")
    assert_err("at byte 1: 2 trailing bytes after the object", dec, "\xc0\x01\x02")
    assert_err("at byte 2: invalid UTF-8 in a str", dec, "\xa3a\xffb")
    assert_err("invalid UTF-8", dec, "\xa3\xed\xa0\x80") -- an encoded surrogate
    assert_err("invalid UTF-8", dec, "\xa2\xc0\xaf") -- overlong
    assert_err("a map key is nil", dec, "\x81\xc0\x01")
    assert_err("a map key is an array", dec, "\x81\x90\x01")
    assert_err("a map key is NaN", dec, "\x81" .. P(">Bd", 0xcb, 0 / 0) .. "\x01")
    assert_err("decode_msgpack: ", dec, "\xc1")
    assert_err("bad argument #1", dec, nil)
  end)

  it("limits nesting to 256 levels", function()
    local ok = dec(string.rep("\x91", 256) .. "\x01")
    for _ = 1, 256 do ok = ok[1] end
    assert.equal(1, ok)
    assert_err("at byte 256: nesting deeper than 256 arrays/maps", dec, string.rep("\x91", 257) .. "\x01")
    assert_err("nesting deeper than 256", dec, string.rep("\x81\xa1k", 300) .. "\x01")
  end)

  it("turns msgpack_numpy arrays (bin or str keys) into tensors of every supported dtype", function()
    local cases = {
      {"<f4", {3}, P("<f<f<f", 1.5, -2, 0.25), "f32", {1.5, -2, 0.25}},
      {"<f8", {2, 1}, P("<d<d", 0.1, -1e300), "f64", {{0.1}, {-1e300}}},
      {"<f2", {3}, P("<I2<I2<I2", 0x3c00, 0xc000, 0x7bff), "f16", {1, -2, 65504}},
      {"<i8", {2}, P("<i8<i8", math.mininteger, 5), "i64", {math.mininteger, 5}},
      {"<i4", {2, 2}, P("<i4<i4<i4<i4", -1, 2, 2147483647, -2147483648), "i32", {{-1, 2}, {2147483647, -2147483648}}},
      {"|u1", {2}, "\0\255", "u8", {0, 255}},
      {"|b1", {3}, "\0\1\1", "bool", {false, true, true}},
      {"<f4", {0, 24}, "", "f32", nil},
    }
    for _, key in ipairs {mp_bin, mp_str} do
      for _, c in ipairs(cases) do
        local t = dec(mp_nd(key, c[1], c[2], c[3]))
        assert.is_true(hero.is_tensor(t), c[1])
        assert.equal(c[4], t:dtype())
        assert.same(c[2], t:size())
        if c[5] then assert.same(c[5], t:totable()) end
      end
    end
    -- as the reference stores it: {"features": ndarray}
    local v = dec(mp_map {mp_str "features", mp_nd(mp_bin, "<f4", {2, 2}, P("<f<f<f<f", 1, 2, 3, 4))})
    assert.same({{1, 2}, {3, 4}}, v.features:totable())
    -- numpy scalars (nd false) become 0-d tensors
    local s = dec(mp_map {mp_bin "nd", "\xc2", mp_bin "type", mp_str "<f8", mp_bin "data", mp_bin(P("<d", 2.5))})
    assert.equal(0, s:dim()); assert.equal(2.5, s:item())
    -- "nd" that is not a bool: an ordinary map
    local plain = dec(mp_map {mp_str "nd", "\x01", mp_str "type", mp_str "<f4"})
    assert.same({nd = 1, type = "<f4"}, plain)
  end)

  it("refuses msgpack_numpy maps that lie or use other dtypes", function()
    assert_err("shape 3x24 of <f4 (4 bytes each) needs 288 bytes but 'data' holds 280 bytes", dec,
               mp_nd(mp_bin, "<f4", {3, 24}, string.rep("\0", 280)))
    assert_err("needs more than", dec, mp_nd(mp_bin, "<f8", {1 << 62, 1 << 62}, ""))
    assert_err("unsupported dtype '>f4' (hero reads <f2 <f4 <f8 <i8 <i4 |u1 |b1)", dec,
               mp_nd(mp_bin, ">f4", {1}, "\0\0\0\0"))
    assert_err("unsupported dtype '|O'", dec, mp_nd(mp_bin, "|O", {1}, "\0\0\0\0\0\0\0\0"))
    assert_err("unsupported dtype '<c8'", dec, mp_nd(mp_str, "<c8", {1}, "\0\0\0\0\0\0\0\0"))
    assert_err("|b1 byte 1 is 2, not 0 or 1", dec, mp_nd(mp_bin, "|b1", {2}, "\1\2"))
    assert_err("shape entry 1 is not a non-negative integer", dec, mp_nd(mp_bin, "<f4", {1, -1}, ""))
    assert_err("missing or non-bytes 'data' field", dec,
               mp_map {mp_bin "nd", "\xc3", mp_bin "type", mp_str "<f4", mp_bin "shape", mp_arr {mp_int(1)}})
    assert_err("missing or non-array 'shape' field", dec,
               mp_map {mp_bin "nd", "\xc3", mp_bin "type", mp_str "<f4", mp_bin "data", mp_bin "\0\0\0\0"})
    assert_err("missing or non-string 'type' field", dec,
               mp_map {mp_bin "nd", "\xc3", mp_bin "type", mp_arr {}, mp_bin "data", mp_bin ""})
    local dims = {}
    for i = 1, 9 do dims[i] = mp_int(1) end
    assert_err("9 dimensions, hero supports at most", dec,
               mp_map {mp_bin "nd", "\xc3", mp_bin "type", mp_str "<f4", mp_bin "shape", mp_arr(dims),
                       mp_bin "data", mp_bin "\0\0\0\0"})
  end)
end)

-- ------------------------------------------------------------------ lz4 frames

-- The payload of spec/fixtures/gen/data_readers.py.
local function lz4_payload()
  local parts = {}
  for i = 0, 449 do parts[#parts + 1] = string.format("frame %d of video %d;", i, i % 7) end
  return table.concat(parts)
end

local function lz4_file(name)
  local f = assert(io.open(FX .. "lz4/" .. name, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

describe("hero.data.lz4_frame_decompress", function()
  local lz4 = data.lz4_frame_decompress

  it_lz4("accepts every frame variant", function()
    local payload = lz4_payload()
    local variants = {"default", "linked_blocks", "block_checksum", "content_size", "no_checksums", "everything"}
    for _, name in ipairs(variants) do
      assert.equal(payload, lz4(lz4_file(name .. ".lz4")), name)
    end
    assert.equal("", lz4(lz4_file "empty.lz4"))
    -- two frames back to back decode to both payloads
    assert.equal(payload .. payload, lz4(lz4_file "default.lz4" .. lz4_file "content_size.lz4"))
    -- exactly at the limit is fine
    assert.equal(payload, lz4(lz4_file "default.lz4", #payload))
    assert.equal(payload, lz4(lz4_file "content_size.lz4", #payload))
  end)

  it_lz4("refuses broken frames clearly", function()
    assert_err("lz4: truncated frame: the input ends after 1702 bytes", lz4, lz4_file "truncated.lz4")
    assert_err("lz4: truncated frame", lz4, lz4_file "header_only.lz4")
    assert_err("lz4_frame_decompress: lz4: corrupt frame data", lz4, lz4_file "bad_checksum.lz4")
    assert_err("not a valid lz4 frame", lz4, lz4_file "legacy.lz4")
    assert_err("not a valid lz4 frame (5 bytes)", lz4, "hello")
    assert_err("lz4: empty input is not an lz4 frame", lz4, "")
    assert_err("corrupt frame data at input byte 3404 of 3420", lz4, lz4_file "default.lz4" .. "junk-after-frame")
  end)

  it_lz4("refuses decompression bombs above the limit", function()
    local mib = 1 << 20
    assert_err("lz4: frame decompresses to more than the limit of 1048576 bytes; refusing it", lz4,
               lz4_file "zeros_2mib.lz4", mib)
    assert_err("frame declares 2097152 decompressed bytes, more than the limit of 1048576", lz4,
               lz4_file "zeros_2mib_sized.lz4", mib)
    local payload = lz4_payload()
    assert_err("more than the limit of " .. (#payload - 1), lz4, lz4_file "default.lz4", #payload - 1)
    assert_err("more than the limit", lz4, lz4_file "content_size.lz4", #payload - 1)
    -- under the default limit (1 GiB) they are fine
    assert.equal(string.rep("\0", 2 * mib), lz4(lz4_file "zeros_2mib.lz4"))
    assert.equal(2 * mib, #lz4(lz4_file "zeros_2mib_sized.lz4"))
    assert_err("max_bytes must be >= 0", lz4, "x", -1)
  end)
end)

-- ------------------------------------------------------------------ video LMDBs

describe("hero.data.open_video_db", function()
  local cases = {
    {"tv/resnet_slowfast_1.5", 12, "expected_video_feats"},
    {"tv/resnet_slowfast_1.5_compressed", 12, "expected_video_feats"},
    {"tv/resnet_slowfast_1.5", 100, "expected_video_feats_maxcliplen100"},
    {"tv/resnet_slowfast_1.5_compressed", 100, "expected_video_feats_maxcliplen100"},
    {"tv/resnet_slowfast_1.5", -1, "expected_video_feats_maxcliplen_minus1"},
    {"tv/resnet_slowfast_1.5_compressed", -1, "expected_video_feats_maxcliplen_minus1"},
    {"tv/resnet_slowfast_1.5", nil, "expected_video_feats_maxcliplen100"},
    {"ht_clips/resnet_slowfast_1.5", 100, "expected_clip_feats"},
  }
  for _, c in ipairs(cases) do
    local title = string.format("reads %s with max_clip_len %s to the reference's tensors, bitwise", c[1],
                                tostring(c[2]))
    it_lmdb(title, function()
      local db = data.open_video_db(VDB .. c[1], {max_clip_len = c[2]})
      local expected = hero.load_safetensors(VDB .. c[3] .. ".safetensors")
      local n = 0
      for _, vid in ipairs(db:keys()) do
        local e = expected[vid]
        assert.is_not_nil(e, vid)
        local got = db:get(vid)
        assert.equal(bits(e), bits(got), vid)
        n = n + 1
      end
      local ne = 0
      for _ in pairs(expected) do ne = ne + 1 end
      assert.equal(ne, n)
      db:close()
    end)
  end

  it_lmdb("lists keys in LMDB order with the sizes and layouts of lmdb_contents.json", function()
    local contents = json.read_file(VDB .. "lmdb_contents.json")
    for name, entries in pairs(contents) do
      local raw = data.open_lmdb(VDB .. name)
      local keys, sizes = raw:keys()
      assert.equal(#entries, #keys, name)
      assert.equal(#entries, raw:count())
      local db = data.open_video_db(VDB .. name)
      assert.same(keys, db:keys())
      for i, e in ipairs(entries) do
        assert.equal(e.key, keys[i]); assert.equal(e.value_bytes, sizes[i])
        assert.equal(e.value_bytes, #raw:get(e.key))
        local dump = db:get_dump(e.key)
        if e.msgpack then
          assert.same(e.msgpack.top_level_keys, json.keys(dump))
          assert.equal("f32", dump.features:dtype())
          assert.same(e.msgpack.shape, dump.features:size())
          assert.equal(e.msgpack.data_bytes, dump.features:numel() * 4)
        else
          assert.equal("features.npy", e.zip_members[1][1]); assert.equal("allow_pickle.npy", e.zip_members[2][1])
          assert.equal("f32", dump.features:dtype())
          assert.equal(0, dump.allow_pickle:dim()); assert.is_true(dump.allow_pickle:item())
        end
      end
      raw:close()
      db:close()
    end
  end)

  it_lmdb("returns nil for a video that is not in the LMDB, errors for one missing from id2nframe", function()
    local db = data.open_video_db(VDB .. "tv/resnet_slowfast_1.5", {max_clip_len = 12})
    assert.is_nil(db:get("house_s01e07_seg01_clip_02")) -- the corrupted video: never written
    assert.is_nil(db:get("no_such_video"))
    assert.is_nil(db:get(""))
    assert.is_nil(db:get(string.rep("k", 1000))) -- longer than any LMDB key
    assert.equal(12, db:id2nframe().friends_s01e01_seg02_clip_00)
    db:close()
    local dir = tmpdir()
    write(dir .. "/few.json", '{"castle_s03e10_seg02_clip_11": 4}')
    local db2 = data.open_video_db(VDB .. "tv/resnet_slowfast_1.5", {id2nframe = dir .. "/few.json"})
    assert.same({4, 24}, db2:get("castle_s03e10_seg02_clip_11"):size())
    assert_err("video 'met_s02e03_seg01_clip_05' is in the LMDB but not in '" .. dir .. "/few.json'",
               db2.get, db2, "met_s02e03_seg01_clip_05")
    db2:close()
    write(dir .. "/zero.json", '{"castle_s03e10_seg02_clip_11": 0}')
    local db3 = data.open_video_db(VDB .. "tv/resnet_slowfast_1.5", {id2nframe = dir .. "/zero.json"})
    assert.same({0, 24}, db3:get("castle_s03e10_seg02_clip_11"):size())
    db3:close()
    os.remove(dir .. "/few.json"); os.remove(dir .. "/zero.json"); os.remove(dir)
  end)

  it_lmdb("gives clear errors for missing or broken databases", function()
    assert_err("lmdb_open: no such LMDB directory: '" .. VDB .. "tv/nope'", data.open_video_db, VDB .. "tv/nope")
    local dir = tmpdir()
    assert_err("has no data.mdb", data.open_txt_db, dir)
    write(dir .. "/data.mdb", string.rep("not an lmdb file ", 1000))
    assert_err("cannot open LMDB '" .. dir .. "'", data.open_txt_db, dir)
    write(dir .. "/data.mdb", "")
    assert_err("LMDB '" .. dir .. "': data.mdb is empty", data.open_txt_db, dir)
    -- a copy cut short opens in liblmdb, and its first page read past the end was a SIGBUS
    local f = assert(io.open(TDB .. "tvr_val.db/data.mdb", "rb"))
    local whole = f:read("a")
    f:close()
    write(dir .. "/data.mdb", whole:sub(1, #whole - 4096))
    assert_err("data.mdb is truncated (" .. (#whole - 4096) .. " bytes; its header counts", data.open_txt_db, dir)
    os.remove(dir .. "/data.mdb")
    -- a database without id2nframe.json next to it
    assert_err("id2nframe.json", data.open_video_db, TDB .. "tvr_val.db")
    os.remove(dir)
    assert_err("is not a directory", data.open_lmdb, VDB .. "lmdb_contents.json")
    assert_err("max_clip_len must be an integer", data.open_video_db, VDB .. "tv/resnet_slowfast_1.5",
               {max_clip_len = 1.5})
    assert_err("unknown option 'max_len'", data.open_video_db, VDB .. "tv/resnet_slowfast_1.5", {max_len = 3})
    -- the wrong format for the values
    local db = data.open_video_db(VDB .. "tv/resnet_slowfast_1.5_compressed", {compressed = false})
    assert_err("msgpack (key 'bbt_s06e12_seg01_clip_08' of '", db.get, db, "bbt_s06e12_seg01_clip_08")
    db:close()
    db = data.open_video_db(VDB .. "tv/resnet_slowfast_1.5", {compressed = true})
    assert_err("not a zip archive", db.get, db, "bbt_s06e12_seg01_clip_08")
    db:close()
  end)

  it_lmdb("closes idempotently, by :close(), <close> and the collector", function()
    local db = data.open_video_db(VDB .. "tv/resnet_slowfast_1.5")
    db:close()
    db:close()
    assert_err("VideoDb:get: the video db '" .. VDB .. "tv/resnet_slowfast_1.5' is closed", db.get, db, "x")
    assert_err("is closed", db.keys, db)
    assert.truthy(tostring(db):find("closed", 1, true))
    do
      local scoped <close> = data.open_video_db(VDB .. "tv/resnet_slowfast_1.5")
      assert.equal(7, #scoped:keys())
    end
    local raw = data.open_lmdb(VDB .. "tv/resnet_slowfast_1.5")
    raw:close(); raw:close()
    assert.is_true(raw:closed())
    assert_err("lmdb:get: the LMDB handle of", raw.get, raw, "x")
    for _ = 1, 50 do data.open_video_db(VDB .. "tv/resnet_slowfast_1.5") end
    collectgarbage(); collectgarbage()
  end)
end)

-- ------------------------------------------------------------------ text LMDBs

describe("hero.data.open_txt_db", function()
  local expected = json.read_file(TDB .. "expected_txt_db.json", {ordered = true})

  it_both("decodes every value to what the reference's TxtLmdb returns", function()
    for _, name in ipairs(json.keys(expected.dbs)) do
      local entries = expected.dbs[name]
      local db = data.open_txt_db(TDB .. name)
      local keys, sizes = db:keys()
      assert.equal(#entries, #keys, name)
      for i, e in ipairs(entries) do
        assert.equal(e.key, keys[i])
        assert.equal(e.lz4_frame_bytes, sizes[i])
        local raw = db:get_raw(e.key)
        assert.equal(e.lz4_frame_bytes, #raw)
        assert.equal(e.msgpack_bytes, #data.lz4_frame_decompress(raw))
        local ok, msg = deep_equal(db:get(e.key), e.value, name .. "[" .. e.key .. "]")
        assert.is_true(ok, msg)
      end
      assert.is_nil(db:get("no such key"))
      db:close()
    end
  end)

  it_both("keeps the ids TxtTokLmdb(db, max_txt_len) keeps, in id2len.json order", function()
    local result = expected.length_filter.result
    local checked = 0
    for _, name in ipairs(json.keys(result)) do
      local db = data.open_txt_db(TDB .. name)
      for _, max_len in ipairs(json.keys(result[name])) do
        assert.same(result[name][max_len], db:ids_with_max_len(math.tointeger(tonumber(max_len))))
        checked = checked + 1
      end
      db:close()
    end
    assert.equal(4, checked)
    local db = data.open_txt_db(TDB .. "tvr_val.db")
    assert.same({}, db:ids_with_max_len(0))
    assert_err("max_txt_len must be an integer", db.ids_with_max_len, db, "60")
    db:close()
    local sub = data.open_txt_db(TDB .. "tv_subtitles.db")
    assert_err("has no id2len.json", sub.ids_with_max_len, sub, 60)
    sub:close()
    -- a damaged id2len.json is named, not read as fewer (or other) ids
    local dir = tmpdir()
    assert(os.execute(string.format("cp '%stvr_val.db/data.mdb' '%s/'", TDB, dir)))
    for _, case in ipairs {{'{"90889": "x"}', "id2len['90889'] is string, not a length"},
                           {'{"90889": -5}', "id2len['90889'] is -5, not a length"},
                           {"[1, 2, 3]", "must be an object {id: length}, got an array"}} do
      write(dir .. "/id2len.json", case[1])
      local d = data.open_txt_db(dir)
      assert_err(case[2], d.ids_with_max_len, d, 60)
      d:close()
    end
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it_both("reads side files lazily, in file order", function()
    local db = data.open_txt_db(TDB .. "tvqa_val.db/")
    local meta = db:meta()
    assert.equal(1, meta.PAD); assert.equal(0, meta.CLS); assert.equal(2, meta.SEP)
    assert.equal(50264, meta.MASK); assert.same({4, 50261}, meta.v_range)
    assert.equal(meta, db:meta())
    local id2len = db:json("id2len")
    assert.equal(id2len, db:json("id2len"))
    assert.same({"130002", "130010", "130018", "130025"}, json.keys(id2len))
    assert.same({8, 14, 15, 7, 144, 8}, id2len["130018"])
    assert.equal("met_s02e03_seg01_clip_05", db:json("query2video")["130002"])
    assert.equal(4, #db:json("query_data.jsonl"))
    assert.is_true(db:has_file("query2video")); assert.is_false(db:has_file("vid2len"))
    assert_err("has no vid2len.json", db.json, db, "vid2len")
    db:close()
    assert_err("TxtDb:get: the text db", db.get, db, "130002")
  end)

  it_both("names the key and database when a value is not an lz4 frame", function()
    local db = data.open_txt_db(VDB .. "tv/resnet_slowfast_1.5")
    assert_err("lmdb:get_lz4_msgpack: key 'bbt_s06e12_seg01_clip_08' of '", db.get, db, "bbt_s06e12_seg01_clip_08")
    assert_err("not a valid lz4 frame", db.get, db, "bbt_s06e12_seg01_clip_08")
    db:close()
    local small = data.open_txt_db(TDB .. "tvr_val.db", {max_value_bytes = 100})
    assert_err("more than the limit of 100 bytes", small.get, small, "90889")
    small:close()
  end)
end)

describe("hero.data.decode_npz", function()
  it_lmdb("reads an .npz held in a string and names it in errors", function()
    local raw = data.open_lmdb(VDB .. "tv/resnet_slowfast_1.5_compressed")
    local z = data.decode_npz(raw:get("met_s02e03_seg01_clip_05"))
    assert.same({7, 24}, z.features:size())
    assert_err("blob: not a zip archive", data.decode_npz, "not a zip", "blob")
    -- its member's stream cut short (the directory's compressed size halved) and its CRC-32 changed:
    -- the same messages whether libdeflate or zlib inflates (data.has_libdeflate)
    local v = raw:get("met_s02e03_seg01_clip_05")
    local cd = string.unpack("<I4", v, #v - 21 + 16) + 1 -- the central directory's (only) entry
    assert.equal("features.npy", v:sub(cd + 46, cd + 45 + string.unpack("<I2", v, cd + 28)))
    local crc, csize = string.unpack("<I4I4", v, cd + 16)
    local function patched(at, fmt, x) return v:sub(1, at - 1) .. string.pack(fmt, x) .. v:sub(at + 4) end
    assert_err("blob: corrupt deflate stream in zip member features.npy (truncated)", data.decode_npz,
      patched(cd + 20, "<I4", csize // 2), "blob")
    assert_err(string.format("blob: CRC-32 mismatch in zip member features.npy (directory says %08x, data has %08x)",
      crc ~ 1, crc), data.decode_npz, patched(cd + 16, "<I4", crc ~ 1), "blob")
    raw:close()
  end)

  it("reports whether LMDB, lz4 and libdeflate support were built in", function()
    assert.equal("boolean", type(data.has_lmdb)); assert.equal("boolean", type(data.has_lz4))
    assert.equal("boolean", type(data.has_libdeflate))
    if not data.has_lmdb then
      assert_err("hero was built without LMDB support (install liblmdb-dev and rebuild)", data.open_lmdb, VDB)
    end
    if not data.has_lz4 then
      assert_err("hero was built without LZ4 support (install liblz4-dev and rebuild)", data.lz4_frame_decompress, "x")
    end
  end)
end)
