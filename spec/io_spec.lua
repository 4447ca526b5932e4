local hero = require "hero"
local helper = require "spec_helper"

local fx = helper.load_fixture("io.lua")
local function fixture(name) return helper.fixture(name) end

-- A private scratch directory for the files the spec writes.
local tmpdir
local function tmp(name) return tmpdir .. "/" .. name end

local function read_bytes(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local write_bytes = helper.write_file

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- Row-major values of any tensor as a flat Lua list.
local function flat(t)
  if t:numel() == 0 then return {} end
  return t:reshape(t:numel()):totable()
end

-- Exact equality that also tells -0 from 0 and accepts NaN for NaN.
local function same_value(a, e)
  if type(e) == "number" and e ~= e then return a ~= a end
  if e == 0 and a == 0 and math.type(e) == "float" and math.type(a) == "float" then return 1 / a == 1 / e end
  return a == e
end

local function assert_values(t, spec, what)
  assert.equal(spec.dtype, t:dtype(), what .. ": dtype")
  assert.same(spec.shape, t:size(), what .. ": shape")
  local got = flat(t)
  assert.equal(#spec.values, #got, what .. ": element count")
  for i = 1, #spec.values do
    if not same_value(got[i], spec.values[i]) then
      error(string.format("%s: element %d is %s, expected %s", what, i, tostring(got[i]), tostring(spec.values[i])))
    end
  end
end

-- The exact bytes of a tensor (dtype, shape and every bit): its .npy image. bf16 has no .npy
-- dtype, so it goes through safetensors.
local function bytes_of(t)
  local p = tmp("bytes_of")
  if t:dtype() == "bf16" then
    hero.io.save_safetensors(p, {x = t})
  else
    hero.io.save_npy(p, t)
  end
  return read_bytes(p)
end

local function listdir(dir)
  local names = {}
  local p = io.popen('ls -A "' .. dir .. '"')
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

setup(function()
  tmpdir = os.tmpname()
  os.remove(tmpdir)
  assert(os.execute('mkdir -p "' .. tmpdir .. '"'))
end)

teardown(function()
  if tmpdir and tmpdir:match("^/tmp/") then os.execute('rm -rf "' .. tmpdir .. '"') end
end)

-- One tensor of every dtype, with awkward values.
local function every_dtype()
  return {
    f32 = hero.tensor({{1.5, -2.25, 3.4028234663852886e38}, {1e-45, 0 / 0, -1 / 0}}, {dtype = "f32"}),
    f64 = hero.tensor({0.1, -1e300, 5e-324, math.pi}, {dtype = "f64"}),
    bf16 = hero.tensor({1, -2.5, 3.140625, 1 / 0}, {dtype = "bf16"}),
    f16 = hero.tensor({{0, 65504}, {-6.103515625e-05, 5.960464477539063e-08}}, {dtype = "f16"}),
    i64 = hero.tensor({math.mininteger, math.maxinteger, 0, -1}, {dtype = "i64"}),
    i32 = hero.tensor({{-2147483648, 2147483647}}, {dtype = "i32"}),
    u8 = hero.tensor({0, 1, 255}, {dtype = "u8"}),
    bool = hero.tensor({true, false, true}),
    scalar = hero.tensor(2.5),
    empty = hero.zeros(0, 3),
  }
end

describe("safetensors", function()
  it("round-trips every dtype, scalars and empty tensors bit for bit", function()
    local src = every_dtype()
    hero.io.save_safetensors(tmp("all.safetensors"), src, {note = "x", ["caf\u{e9}"] = "\"quoted\"\n"})
    local got, meta = hero.io.load_safetensors(tmp("all.safetensors"))
    for name, t in pairs(src) do
      assert.is_not_nil(got[name], name)
      assert.equal(bytes_of(t), bytes_of(got[name]), name)
    end
    local n = 0
    for _ in pairs(got) do n = n + 1 end
    assert.equal(10, n)
    assert.same({note = "x", ["caf\u{e9}"] = "\"quoted\"\n"}, meta)
  end)

  it("saves non-contiguous tensors by value", function()
    local base = hero.arange(24):view(2, 3, 4):double()
    local src = {
      tr = base:transpose(1, 3),
      nar = base:narrow(3, 2, 2),
      exp = hero.tensor({{1}, {2}}):expand(2, 3),
      sel = base[2],
    }
    hero.io.save_safetensors(tmp("views.safetensors"), src)
    local got = hero.io.load_safetensors(tmp("views.safetensors"))
    for name, t in pairs(src) do
      assert.is_true(got[name]:is_contiguous(), name)
      assert.same(t:totable(), got[name]:totable(), name)
      assert.same(t:size(), got[name]:size(), name)
    end
  end)

  it("writes deterministic files: sorted keys, padded header, aligned data", function()
    local src = every_dtype()
    hero.io.save_safetensors(tmp("a.safetensors"), src)
    hero.io.save_safetensors(tmp("b.safetensors"), src)
    local a = read_bytes(tmp("a.safetensors"))
    assert.equal(a, read_bytes(tmp("b.safetensors")))
    local n = string.unpack("<I8", a)
    assert.equal(0, (8 + n) % 8)
    local header = a:sub(9, 8 + n)
    local names = {}
    for name in header:gmatch('"([%w_]+)":{"dtype"') do names[#names + 1] = name end
    assert.same({"bf16", "bool", "empty", "f16", "f32", "f64", "i32", "i64", "scalar", "u8"}, names)
    -- Every tensor lands on a multiple of its element size, so the loader maps them all.
    local got = hero.io.load_safetensors(tmp("a.safetensors"))
    for name, t in pairs(got) do
      if t:numel() > 0 then assert.is_true(t:shares_storage(got.f64), name .. " is a view of the mapping") end
    end
  end)

  it("reads the file into memory: rewriting it in place leaves the loaded tensors alone", function()
    hero.io.save_safetensors(tmp("inplace.safetensors"), {w = hero.ones(100000)})
    hero.io.save_safetensors(tmp("small.safetensors"), {w = hero.full({10}, 3)})
    local t = hero.load(tmp("inplace.safetensors"))
    -- cp writes over the same file (not a rename): a mapping of it would now read the new bytes,
    -- or fault past the shorter end
    assert(os.execute(string.format("cp '%s' '%s'", tmp("small.safetensors"), tmp("inplace.safetensors"))))
    assert.equal(100000, t.w:sum():item())
    -- {mmap = true}: the tensors view a private mapping (zero-copy), for files left alone
    hero.io.save_safetensors(tmp("mapped.safetensors"), {w = hero.ones(8)})
    local m = hero.load(tmp("mapped.safetensors"), {mmap = true})
    assert.equal(8, m.w:sum():item())
    assert.equal(8, hero.io.load_safetensors(tmp("mapped.safetensors"), {mmap = true}).w:sum():item())
    helper.assert_error_contains(function() hero.io.load_safetensors(tmp("mapped.safetensors"), {map = true}) end,
      "unknown option 'map' (mmap, verify)")
    -- "__metadata__": null is no metadata, as the safetensors library reads it
    local header = '{"__metadata__":null,"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    local f = assert(io.open(tmp("nullmeta.safetensors"), "wb"))
    f:write(string.pack("<I8", #header), header, string.pack("<f", 1.5))
    f:close()
    local got, meta = hero.io.load_safetensors(tmp("nullmeta.safetensors"))
    assert.equal(1.5, got.x:item())
    assert.same({}, meta)
  end)

  it("loads views of one buffer that outlive the table and never write to the file", function()
    hero.io.save_safetensors(tmp("m.safetensors"), {a = hero.ones(4), b = hero.full({2}, 7)})
    local before = read_bytes(tmp("m.safetensors"))
    local got = hero.io.load_safetensors(tmp("m.safetensors"))
    local a, b = got.a, got.b
    got = nil -- luacheck: ignore 311
    collectgarbage()
    assert.is_true(a:shares_storage(b))
    a:fill_(5) -- copy-on-write: the file keeps its bytes
    b:free()
    collectgarbage()
    assert.same({5, 5, 5, 5}, a:totable())
    assert.equal(before, read_bytes(tmp("m.safetensors")))
    assert.same({1, 1, 1, 1}, hero.io.load_safetensors(tmp("m.safetensors")).a:totable())
  end)

  it("replaces files atomically: tensors loaded from the old file keep their values", function()
    hero.io.save_safetensors(tmp("r.safetensors"), {w = hero.full({3}, 1)})
    local old = hero.io.load_safetensors(tmp("r.safetensors")).w
    hero.io.save_safetensors(tmp("r.safetensors"), {w = hero.full({3}, 2), extra = hero.zeros(1000)})
    assert.same({1, 1, 1}, old:totable())
    assert.same({2, 2, 2}, hero.io.load_safetensors(tmp("r.safetensors")).w:totable())
  end)

  it("replaces a file keeping its permissions, and the file a symbolic link names", function()
    -- a private file came back 0644; a link became a plain file and its target kept the old data
    local function mode(path)
      local p = io.popen("stat -c %a '" .. path .. "'")
      local m = p:read("l")
      p:close()
      return m
    end
    hero.json.write_file(tmp("priv.json"), {a = 1})
    assert(os.execute("chmod 600 '" .. tmp("priv.json") .. "'"))
    hero.json.write_file(tmp("priv.json"), {a = 2})
    assert.equal("600", mode(tmp("priv.json")))
    assert.same({a = 2}, hero.json.read_file(tmp("priv.json")))
    hero.io.save_safetensors(tmp("target.safetensors"), {w = hero.full({2}, 1)})
    assert(os.execute("ln -sf target.safetensors '" .. tmp("link.safetensors") .. "'"))
    hero.io.save_safetensors(tmp("link.safetensors"), {w = hero.full({2}, 7)})
    assert.equal("target.safetensors", io.popen("readlink '" .. tmp("link.safetensors") .. "'"):read("l"))
    assert.same({7, 7}, hero.io.load_safetensors(tmp("target.safetensors")).w:totable())
  end)

  it("replaces only regular files: a FIFO, a device or a link to one is refused and stays", function()
    local fifo = tmp("a.fifo")
    os.remove(fifo)
    assert(os.execute("mkfifo '" .. fifo .. "'"))
    helper.assert_error_contains(function() hero.json.write_file(fifo, {a = 1}) end, "it is a FIFO, not a regular file")
    assert(os.execute("ln -sf /dev/null '" .. tmp("null.link") .. "'"))
    helper.assert_error_contains(function() hero.save(tmp("null.link"), {w = hero.ones(1)}) end,
      "'/dev/null': it is a device")
    assert(os.execute("test -p '" .. fifo .. "' && test -c /dev/null"))
    os.remove(fifo)
    os.remove(tmp("null.link"))
  end)

  it("names the file in an error about the value being written, and leaves the file as it was", function()
    hero.json.write_file(tmp("named.json"), {old = true})
    helper.assert_error_contains(function() hero.json.write_file(tmp("named.json"), {y = {z = print}}) end,
      "json.write_file: '" .. tmp("named.json") .. "' is not written", "value.y.z is a function")
    assert.same({old = true}, hero.json.read_file(tmp("named.json")))
    local freed = hero.ones(2)
    freed:free()
    helper.assert_error_contains(function() hero.save(tmp("named.st"), {n = {a = hero.ones(1), b = freed}}) end,
      "hero.save: '" .. tmp("named.st") .. "' is not written", "'n.b' was freed")
  end)

  it("gives each write its own temporary file: threads replacing one file publish whole files", function()
    local path = tmp("shared.bin")
    local pool = hero.core.worker_pool{n = 2, init = {path = path}, script = [[
      local init, worker = ...
      local hero = require "hero"
      function produce()
        local ok, err = pcall(hero.io.write_atomic, init.path, string.rep(worker == 1 and "A" or "B",
          worker == 1 and 400000 or 200000))
        return ok and "ok" or tostring(err)
      end
    ]]}
    for _ = 1, 20 do
      pool:submit(1)
      pool:submit(2)
      for _ = 1, 2 do assert.equal("ok", pool:get()) end
      local f = assert(io.open(path, "rb"))
      local bytes = f:read("a")
      f:close()
      assert.is_true(bytes == string.rep("A", 400000) or bytes == string.rep("B", 200000))
    end
    pool:close()
    for _, name in ipairs(hero.fs_listdir(tmp(""))) do assert.is_nil(name:find("shared.bin.tmp", 1, true), name) end
    assert.is_true(hero.io.is_temporary("x.json.tmp.123.4"))
  end)

  for _, file in ipairs {"second_unaligned.safetensors", "second_aligned.safetensors"} do
    it("reads files of a second producer: " .. file, function()
      local got, meta = hero.io.load_safetensors(fixture("io/" .. file))
      for name, spec in pairs(fx.safetensors.tensors) do
        assert.is_not_nil(got[name], name)
        assert_values(got[name], spec, name)
      end
      assert.same(fx.safetensors.metadata, meta)
      if file == "second_aligned.safetensors" then
        assert.is_true(got.zeta:shares_storage(got.alpha))
      else
        -- the odd header length leaves the 8-byte tensors misaligned: they were copied
        assert.is_false(got.alpha:shares_storage(got.mask))
      end
    end)
  end

  it("loads the reference implementation's files (copies) with their values", function()
    local files = 0
    for fname, spec in pairs(fx.reference) do
      local got, meta = hero.io.load_safetensors(fixture("safetensors/" .. fname))
      files = files + 1
      assert.same(spec.metadata, meta)
      for name, info in pairs(spec.tensors) do
        local t = got[name]
        assert.is_not_nil(t, fname .. ":" .. name)
        assert.equal(info.dtype, t:dtype(), name)
        assert.same(info.shape, t:size(), name)
        local sum = 0.0
        for _, v in ipairs(flat(t)) do sum = sum + (v == true and 1 or v == false and 0 or v) end
        assert.is_true(math.abs(sum - info.sum) <= 1e-9 * math.max(1, math.abs(info.sum)),
          string.format("%s:%s sum %.17g, expected %.17g", fname, name, sum, info.sum))
        if info.first ~= nil then
          local first = flat(t)[1]
          assert.is_true(same_value(first, info.first), fname .. ":" .. name .. " first element")
        end
      end
    end
    assert.equal(6, files)
    -- and the two expected-array files of the feature set
    assert.is_not_nil(hero.io.load_safetensors(fixture("data/features/expected_npz_arrays.safetensors"))
      ["resnet_features/bbt_s06e12_seg01_clip_08"])
    assert.is_not_nil(hero.io.load_safetensors(fixture("data/features/edge/expected_edge_arrays.safetensors"))
      ["edge/compressed.npz"])
  end)

  it("stores each tensor's CRC-32 and refuses a damaged byte, naming the tensor", function()
    local src = every_dtype()
    hero.io.save_safetensors(tmp("crc.safetensors"), src, {note = "kept"})
    local bytes = read_bytes(tmp("crc.safetensors"))
    local n = string.unpack("<I8", bytes)
    local header = bytes:sub(9, 8 + n)
    -- an ordinary metadata entry for other readers: 8 hex digits per tensor, in name order
    local list = header:match('"hero%.crc32":"([^"]*)"')
    assert.equal(10 * 9 - 1, #list)
    assert.is_truthy(list:match("^%x%x%x%x%x%x%x%x") and not list:find("[A-F]"))
    local got, meta = hero.io.load_safetensors(tmp("crc.safetensors"))
    assert.same({note = "kept"}, meta) -- the list describes the file, not its content
    assert.same(src.f64:totable(), got.f64:totable())
    assert.is_nil(select(2, hero.io.load_safetensors(tmp("crc.safetensors"), {mmap = true}))["hero.crc32"])
    -- one bit flipped anywhere in a tensor's bytes: that tensor is named, whichever way it is read
    local function offsets(name)
      local a, b = header:match('"' .. name .. '":{"dtype":"[%w]+","shape":%[[%d,]*%],"data_offsets":%[(%d+),(%d+)%]}')
      return 8 + n + tonumber(a), 8 + n + tonumber(b)
    end
    for _, name in ipairs {"bf16", "bool", "f64", "i64", "u8", "scalar"} do
      local first, stop = offsets(name)
      local at = stop -- the last byte of the tensor (1-based index = offset)
      assert.is_true(at > first, name)
      local flip = (name == "bool") and 0 or 0x10 -- bool: 1 -> 0 stays a valid BOOL byte
      local bad = bytes:sub(1, at - 1) .. string.char(bytes:byte(at) ~ (flip == 0 and 1 or flip)) .. bytes:sub(at + 1)
      write_bytes(tmp("damaged.safetensors"), bad)
      for _, opts in ipairs {{}, {mmap = true}} do
        helper.assert_error_contains(function() hero.io.load_safetensors(tmp("damaged.safetensors"), opts) end,
          "damaged.safetensors': tensor '" .. name .. "' does not match the CRC-32 its writer stored",
          "{verify = false} loads it unchecked")
      end
      helper.assert_error_contains(function() hero.load(tmp("damaged.safetensors")) end, "tensor '" .. name .. "'")
      local t = hero.load(tmp("damaged.safetensors"), {verify = false})
      assert.are_not.same(src[name]:totable(), t[name]:totable(), name)
    end
    -- a damaged list is named as such; a file without one (other writers) is read unchecked
    local function with_list(l)
      local h = header:gsub('"hero%.crc32":"[^"]*"', '"hero.crc32":"' .. l .. '"')
      h = h .. string.rep(" ", n - #h)
      assert.equal(n, #h)
      write_bytes(tmp("list.safetensors"), bytes:sub(1, 8) .. h .. bytes:sub(9 + n))
      return tmp("list.safetensors")
    end
    helper.assert_error_contains(function() hero.io.load_safetensors(with_list(list:sub(1, -10))) end,
      "the 'hero.crc32' metadata holds 80 characters, not the 89 of 10 CRC-32 values")
    helper.assert_error_contains(function() hero.io.load_safetensors(with_list(list:gsub("^%x", "g"))) end,
      "the 'hero.crc32' metadata is malformed at value 1")
    helper.assert_error_contains(function() hero.io.load_safetensors(with_list(list:sub(1, 8) .. "," .. list:sub(10)))
    end, "malformed at value 1")
    assert.same(src.i64:totable(), hero.io.load_safetensors(with_list(list), {verify = false}).i64:totable())
    local plain = header:gsub('"hero%.crc32":"[^"]*",?', "")
    plain = plain .. string.rep(" ", n - #plain)
    write_bytes(tmp("plain.safetensors"), bytes:sub(1, 8) .. plain .. bytes:sub(9 + n))
    assert.same(src.u8:totable(), hero.io.load_safetensors(tmp("plain.safetensors")).u8:totable())
    -- the writer owns the key; no tensors, no list
    helper.assert_error_contains(function()
      hero.io.save_safetensors(tmp("x"), {a = hero.ones(2)}, {["hero.crc32"] = "00000000"})
    end, "metadata key 'hero.crc32' is reserved")
    hero.io.save_safetensors(tmp("none.safetensors"), {})
    assert.is_nil(read_bytes(tmp("none.safetensors")):find("crc32", 1, true))
    helper.assert_error_contains(function() hero.load(tmp("crc.safetensors"), {verify = "no"}) end,
      "option 'verify' must be a boolean, got string")
    helper.assert_error_contains(function() hero.load(tmp("crc.safetensors"), {verfy = false}) end,
      "unknown option 'verfy' (mmap, verify)")
  end)

  it("refuses bad arguments with the reason", function()
    local t = hero.ones(2)
    helper.assert_error_contains(function() hero.io.save_safetensors(tmp("x"), {[1] = t}) end,
      "save_safetensors", "keys must be strings")
    helper.assert_error_contains(function() hero.io.save_safetensors(tmp("x"), {a = 3}) end,
      "entry 'a' is a number, not a hero.Tensor")
    helper.assert_error_contains(function() hero.io.save_safetensors(tmp("x"), {__metadata__ = t}) end,
      "'__metadata__' is reserved")
    helper.assert_error_contains(function() hero.io.save_safetensors(tmp("x"), {a = t}, {k = 1}) end,
      "metadata must map strings to strings")
    helper.assert_error_contains(function() hero.io.save_safetensors(tmp("x"), {["\255"] = t}) end,
      "is not valid UTF-8")
    local f = hero.ones(2)
    f:free()
    helper.assert_error_contains(function() hero.io.save_safetensors(tmp("x"), {a = f}) end, "tensor 'a' was freed")
    assert.is_false(exists(tmp("x")))
  end)
end)

describe("broken files", function()
  for _, case in ipairs(fx.bad) do
    it("refuses " .. case.file, function()
      local loader = ({safetensors = hero.io.load_safetensors, npy = hero.io.load_npy,
                       npz = hero.io.load_npz})[case.loader]
      local path = fixture("io/" .. case.file)
      helper.assert_error_contains(function() loader(path) end, path, case.error)
    end)
  end

  it("reports missing files with their path", function()
    local p = tmp("does/not/exist.bin")
    for name, fn in pairs {load_safetensors = hero.io.load_safetensors, load_npy = hero.io.load_npy,
                           load_npz = hero.io.load_npz, load_features = hero.io.load_features,
                           load = hero.load} do
      helper.assert_error_contains(function() fn(p) end, name, "no such file", p)
    end
  end)
end)

-- Hostile files with very many names: duplicates are found by sorting (the pairwise check it replaced
-- took 6 s and 3 s on these, and grows with the square of the count).
-- The duplicate comes last, so the whole list is read before the error; os.clock counts only this
-- process's CPU time, so a loaded machine does not make the bounds flaky.
describe("many names", function()
  it("checks 50000 safetensors metadata keys for duplicates quickly", function()
    local parts = {}
    for i = 1, 50000 do parts[i] = string.format('"k%d":""', i) end
    parts[#parts + 1] = '"k7":""'
    local header = '{"__metadata__":{' .. table.concat(parts, ",") .. "}}"
    local p = tmp("many_meta.safetensors")
    write_bytes(p, string.pack("<I8", #header) .. header)
    local t0 = os.clock()
    helper.assert_error_contains(function() hero.io.load_safetensors(p) end, "duplicate key 'k7' in __metadata__")
    assert.is_true(os.clock() - t0 < 1, "took " .. (os.clock() - t0) .. " s")
  end)

  it("checks 30000 zip members for duplicate names quickly", function()
    local locals, central, off = {}, {}, 0
    for i = 1, 30000 do
      local name = i < 30000 and string.format("m%05d", i) or "m00042"
      local lh = string.pack("<I4I2I2I2I2I2I4I4I4I2I2", 0x04034b50, 20, 0, 0, 0, 0x21, 0, 0, 0, #name, 0) .. name
      central[i] = string.pack("<I4I2I2I2I2I2I2I4I4I4I2I2I2I2I2I4I4", 0x02014b50, 20, 20, 0, 0, 0, 0x21, 0, 0, 0,
        #name, 0, 0, 0, 0, 0, off) .. name
      locals[i] = lh
      off = off + #lh
    end
    local cd = table.concat(central)
    local p = tmp("many_members.npz")
    write_bytes(p, table.concat(locals) .. cd .. string.pack("<I4I2I2I2I2I4I4I2", 0x06054b50, 0, 0, 30000, 30000, #cd,
      off, 0))
    local t0 = os.clock()
    helper.assert_error_contains(function() hero.io.load_npz(p) end, "duplicate zip member 'm00042'")
    assert.is_true(os.clock() - t0 < 1, "took " .. (os.clock() - t0) .. " s")
  end)
end)

describe("npz member names", function()
  it("marks a name that is not ASCII as UTF-8 (zip flag bit 11), as numpy.savez does", function()
    local bytes = hero.io.npz_to_bytes({["café"] = hero.ones(2), plain = hero.ones(1)}, {order = {"café", "plain"}})
    -- the local header of the first member (flags at offset 6), then its central record (offset 8)
    assert.equal(0x800, string.unpack("<I2", bytes, 7))
    local central = bytes:find("PK\1\2", 1, true)
    assert.equal(0x800, string.unpack("<I2", bytes, central + 8))
    local second = bytes:find("PK\1\2", central + 4, true)
    assert.equal(0, string.unpack("<I2", bytes, second + 8))
    local p = tmp("utf8_names.npz")
    write_bytes(p, bytes)
    assert.equal(2, hero.io.load_npz(p)["café"]:numel())
  end)
end)

describe("NumPy files", function()
  for file, spec in pairs(fx.npy) do
    it("reads " .. file .. " as NumPy wrote it", function()
      assert_values(hero.io.load_npy(fixture("io/" .. file)), spec, file)
    end)
  end

  it("writes .npy files byte-identical to np.save", function()
    local n = 0
    for file in pairs(fx.npy) do
      if not (file:find("fortran") or file:find("v3") or file:find("lt_u1")) then
        local t = hero.io.load_npy(fixture("io/" .. file))
        hero.io.save_npy(tmp("out.npy"), t)
        assert.equal(read_bytes(fixture("io/" .. file)), read_bytes(tmp("out.npy")), file)
        n = n + 1
      end
    end
    assert.equal(10, n)
  end)

  it("saves non-contiguous tensors row-major", function()
    local t = hero.arange(12):view(3, 4):t()
    hero.io.save_npy(tmp("t.npy"), t)
    assert.same(t:totable(), hero.io.load_npy(tmp("t.npy")):totable())
  end)

  it("refuses dtypes NumPy lacks", function()
    helper.assert_error_contains(function() hero.io.save_npy(tmp("b.npy"), hero.ones(2):bfloat16()) end,
      "save_npy", "bf16 has no NumPy dtype")
    assert.is_false(exists(tmp("b.npy")))
  end)

  for file, members in pairs(fx.npz) do
    it("reads " .. file .. " as NumPy wrote it", function()
      local got = hero.io.load_npz(fixture("io/" .. file))
      local n, m = 0, 0
      for name, spec in pairs(members) do
        n = n + 1
        assert.is_not_nil(got[name], name)
        assert_values(got[name], spec, file .. ":" .. name)
      end
      for _ in pairs(got) do m = m + 1 end
      assert.equal(n, m)
    end)
  end

  it("reads a member not named .npy under its own name, as numpy.load, instead of dropping it", function()
    local bytes = hero.io.npz_to_bytes({raw = hero.arange(3, {dtype = "f64"})})
    local renamed, n = bytes:gsub("raw%.npy", "rawXnpy") -- the local and the central header
    assert.equal(2, n)
    local f = assert(io.open(tmp("renamed.npz"), "wb"))
    f:write(renamed)
    f:close()
    local got = hero.io.load_npz(tmp("renamed.npz"))
    assert.same({0, 1, 2}, got.rawXnpy:totable())
  end)

  for _, compress in ipairs {false, true} do
    it("round-trips .npz archives (compress = " .. tostring(compress) .. ")", function()
      local src = every_dtype()
      src.bf16 = nil
      src.big = hero.zeros(64, 64)
      src["dir/x"] = hero.arange(5)
      local p = tmp("rt.npz")
      hero.io.save_npz(p, src, {compress = compress})
      local got = hero.io.load_npz(p)
      for name, t in pairs(src) do assert.equal(bytes_of(t), bytes_of(got[name]), name) end
      local size = #read_bytes(p)
      if compress then assert.is_true(size < 16384, "deflated archive is small") else assert.is_true(size > 16384) end
      -- Corrupting one payload byte is caught by the CRC-32 (stored) or by inflate (deflated).
      local raw = read_bytes(p)
      local at = 30 + #"big.npy" + 20 -- inside the first member's payload
      write_bytes(tmp("corrupt.npz"), raw:sub(1, at - 1) .. string.char((raw:byte(at) + 1) % 256) .. raw:sub(at + 1))
      helper.assert_error_contains(function() hero.io.load_npz(tmp("corrupt.npz")) end, "zip member")
    end)
  end

  it("builds .npz archives in memory, equal to the files, and refuses bad input", function()
    local src = {features = hero.randn(5, 7), allow_pickle = hero.tensor(true, {dtype = "bool"})}
    for _, compress in ipairs {false, true} do
      local p = tmp("mem.npz")
      hero.io.save_npz(p, src, {compress = compress})
      local bytes = hero.io.npz_to_bytes(src, {compress = compress})
      assert.equal(read_bytes(p), bytes) -- the same archive, byte for byte
      local back = hero.data.decode_npz(bytes)
      for name, t in pairs(src) do assert.equal(bytes_of(t), bytes_of(back[name]), name) end
    end
    helper.assert_error_contains(function() hero.io.npz_to_bytes({x = 1}) end, "npz_to_bytes")
    helper.assert_error_contains(function() hero.io.npz_to_bytes(src, {compress = "yes"}) end,
      "option 'compress' must be a boolean")
    helper.assert_error_contains(function() hero.io.npz_to_bytes({w = hero.ones(2):bfloat16()}) end, "'w'")
    helper.assert_error_contains(function() hero.io.npz_to_bytes({w = hero.ones(1)}, {compres = true}) end,
      "unknown option 'compres' (compress, order)")
    -- members in a given order: every tensor named once
    local ordered = hero.io.npz_to_bytes({b = hero.ones(1), a = hero.zeros(1)}, {order = {"b", "a"}})
    assert.is_true(ordered:find("b.npy", 1, true) < ordered:find("a.npy", 1, true))
    local sorted = hero.io.npz_to_bytes({b = hero.ones(1), a = hero.zeros(1)})
    assert.is_true(sorted:find("a.npy", 1, true) < sorted:find("b.npy", 1, true))
    helper.assert_error_contains(function() hero.io.npz_to_bytes({a = hero.ones(1)}, {order = {"a", "a"}}) end,
      "names 2 members for 1 tensors")
    helper.assert_error_contains(function()
      hero.io.npz_to_bytes({a = hero.ones(1), b = hero.ones(1)}, {order = {"a", "a"}})
    end, "duplicate array name 'a'")
    helper.assert_error_contains(function() hero.io.npz_to_bytes({["a\0b"] = hero.ones(1)}) end, "holds a NUL byte")
    local many, one = {}, hero.ones(1)
    for i = 1, 65535 do many["m" .. i] = one end -- 0xFFFF entries would be zip64's marker
    helper.assert_error_contains(function() hero.io.npz_to_bytes(many) end, "65535 members")
  end)

  -- Damaged deflate members: inflated by libdeflate (hero.data.has_libdeflate) or by zlib, every
  -- case gives the same result and the same message, pinned here for both builds.
  describe("deflated members", function()
    -- A zip of one deflated member `name` (x.npy) holding `stream`; its directory says crc, usize
    -- and csize (default: the stream's length).
    local function zip_of(stream, usize, crc, csize, name)
      name, csize = name or "x.npy", csize or #stream
      local lh = string.pack("<I4I2I2I2I2I2I4I4I4I2I2", 0x04034b50, 20, 0, 8, 0, 0x21, crc, csize, usize, #name, 0)
      local cd = string.pack("<I4I2I2I2I2I2I2I4I4I4I2I2I2I2I2I4I4", 0x02014b50, 20, 20, 0, 8, 0, 0x21, crc, csize,
        usize, #name, 0, 0, 0, 0, 0, 0) .. name
      local body = lh .. name .. stream
      return body .. cd .. string.pack("<I4I2I2I2I2I4I4I2", 0x06054b50, 0, 0, 1, 1, #cd, #body, 0)
    end
    local t = hero.arange(3000, {dtype = "f32"}):mul(0.37):sin()
    -- The member's .npy image, its CRC-32 and zlib's deflate stream of it, from hero's own archives.
    local stored = hero.io.npz_to_bytes({x = t})
    local crc, usize = string.unpack("<I4", stored, 15), string.unpack("<I4", stored, 23)
    local image = stored:sub(36, 35 + usize)
    local packed = hero.io.npz_to_bytes({x = t}, {compress = true})
    local deflated = packed:sub(36, 35 + string.unpack("<I4", packed, 19))
    assert.equal(2, deflated:byte(1) >> 1 & 3) -- a block with its own (dynamic) Huffman codes
    local function stored_block(bytes, nlen) -- one final stored block
      return "\1" .. string.pack("<I2I2", #bytes, nlen or ~#bytes & 0xFFFF) .. bytes
    end
    local function refused(bytes, message)
      helper.assert_error_contains(function() hero.data.decode_npz(bytes) end, message)
    end
    local member = "zip member x.npy"

    it("inflates deflate streams to the same bits (dynamic, stored, trailing bytes ignored, empty)", function()
      for _, z in ipairs {zip_of(deflated, usize, crc), zip_of(stored_block(image), usize, crc),
                          zip_of(deflated .. "trailing", usize, crc)} do
        assert.equal(bytes_of(t), bytes_of(hero.data.decode_npz(z).x))
      end
      -- an empty member (a final block of fixed codes holding only its end) inflates to nothing,
      -- which the .npy reader then refuses
      helper.assert_error_contains(function() hero.data.decode_npz(zip_of("\3\0", 0, 0)) end,
        "bad .npy magic string (inside zip member x.npy)")
    end)

    it("refuses a truncated stream", function()
      local truncated = "corrupt deflate stream in " .. member .. " (truncated)"
      refused(zip_of(deflated:sub(1, #deflated // 2), usize, crc), truncated)
      refused(zip_of(stored_block(image):sub(1, 1000), usize, crc), truncated)
      refused(zip_of("", 0, 0), truncated)
      -- through a feature file too, named by its path
      local p = tmp("truncated_member.npz")
      write_bytes(p, zip_of(deflated:sub(1, 100), usize, crc, nil, "features.npy"))
      helper.assert_error_contains(function() hero.io.load_features(p) end, p,
        "corrupt deflate stream in zip member features.npy (truncated)")
    end)

    it("refuses a corrupt stream with zlib's reason", function()
      local function corrupt(bytes, why)
        refused(zip_of(bytes, usize, crc), "corrupt deflate stream in " .. member .. " (zlib: " .. why .. ")")
      end
      corrupt(string.char(deflated:byte(1) | 7) .. deflated:sub(2), "invalid block type")
      corrupt(stored_block(image, #image), "invalid stored block lengths")
      -- 288 literal/length codes: more than RFC 1951 allows (libdeflate would read them)
      corrupt(string.char(deflated:byte(1) | 31 << 3) .. deflated:sub(2), "too many length or distance symbols")
      -- fixed codes: a match of length 3 at distance 1 before any output
      refused(zip_of("\3\2\0", 3, 0),
        "corrupt deflate stream in " .. member .. " (zlib: invalid distance too far back)")
    end)

    it("refuses a member whose stream does not end at its declared size", function()
      refused(zip_of(deflated, usize + 1, crc),
        string.format("%s inflates to %d bytes, the directory says %d", member, usize, usize + 1))
      refused(zip_of(deflated, usize - 1, crc),
        string.format("%s inflates to more than the %d bytes the directory says", member, usize - 1))
      refused(zip_of(stored_block(image), 0, crc),
        member .. " inflates to more than the 0 bytes the directory says")
      local claim = #deflated * 1032 + 1025
      refused(zip_of(deflated, claim, crc), string.format(
        "%s claims %d bytes from %d compressed (more than deflate can produce)", member, claim, #deflated))
    end)

    it("refuses a member whose bytes do not match its CRC-32", function()
      local flipped = crc ~ 0x80
      refused(zip_of(deflated, usize, flipped),
        string.format("CRC-32 mismatch in %s (directory says %08x, data has %08x)", member, flipped, crc))
      refused(zip_of(stored_block(image), usize, flipped), "CRC-32 mismatch in " .. member)
    end)
  end)

  it("writes archives NumPy reads (checked with python3 + numpy when present)", function()
    if not os.execute("/usr/bin/python3 -c 'import numpy' 2>/dev/null") then
      pending("python3 with numpy is not installed")
      return
    end
    hero.io.save_npz(tmp("np_s.npz"), {a = hero.arange(6):view(2, 3), m = hero.tensor {true, false}})
    hero.io.save_npz(tmp("np_c.npz"), {a = hero.arange(6):view(2, 3), m = hero.tensor {true, false}},
      {compress = true})
    hero.io.save_npy(tmp("np_h.npy"), hero.tensor({1.5, -0.0}, {dtype = "f16"}))
    local script = table.concat({
      "import numpy as np, sys",
      "for f in ('np_s.npz', 'np_c.npz'):",
      "  z = np.load(sys.argv[1] + '/' + f, allow_pickle=False)",
      "  assert sorted(z.files) == ['a', 'm'], z.files",
      "  assert z['a'].dtype == np.int64 and z['a'].tolist() == [[0, 1, 2], [3, 4, 5]]",
      "  assert z['m'].dtype == np.bool_ and z['m'].tolist() == [True, False]",
      "h = np.load(sys.argv[1] + '/np_h.npy')",
      "assert h.dtype == np.float16 and h.tolist() == [1.5, 0.0] and np.signbit(h[1])",
    }, "\n")
    write_bytes(tmp("check.py"), script)
    assert.is_true(os.execute('/usr/bin/python3 "' .. tmp("check.py") .. '" "' .. tmpdir .. '"'))
  end)
end)

describe("feature files", function()
  local expected = hero.io.load_safetensors(fixture("data/features/expected_npz_arrays.safetensors"))
  local edge = hero.io.load_safetensors(fixture("data/features/edge/expected_edge_arrays.safetensors"))

  it("loads every good file to exactly the expected float16 array", function()
    local n = 0
    for key, want in pairs(expected) do
      local path = fixture("data/features/" .. key .. ".npz")
      if key ~= "slowfast_features/house_s01e07_seg01_clip_02" then
        local got = hero.io.load_features(path)
        assert.equal("f16", got:dtype())
        assert.equal(bytes_of(want), bytes_of(got), key)
        n = n + 1
      end
    end
    assert.is_true(n >= 14)
    local first = "friends_s01e01_seg02_clip_00"
    assert.equal(bytes_of(expected["resnet_features/" .. first]),
      bytes_of(hero.io.load_features(fixture("data/features/npy/" .. first .. ".resnet.npy"))))
    assert.equal(bytes_of(expected["slowfast_features/" .. first]),
      bytes_of(hero.io.load_features(fixture("data/features/npy/" .. first .. ".slowfast.npy"))))
  end)

  it("refuses the deliberately truncated archive", function()
    helper.assert_error_contains(function()
      hero.io.load_features(fixture("data/features/slowfast_features/house_s01e07_seg01_clip_02.npz"))
    end, "corrupt or truncated zip archive")
  end)

  it("loads every edge case to the expected array", function()
    local n = 0
    for key, want in pairs(edge) do
      local got = hero.io.load_features(fixture("data/features/" .. key))
      assert.equal(bytes_of(want), bytes_of(got), key)
      n = n + 1
    end
    assert.equal(7, n)
    assert.equal("f32", hero.io.load_features(fixture("data/features/edge/float32.npz")):dtype())
    assert.same({0, 8}, hero.io.load_features(fixture("data/features/edge/zero_rows.npz")):size())
  end)

  -- What the general readers say about the same files (they accept what is merely not a feature).
  local general = {
    ["bad/big_endian_f8.npz"] = "unsupported dtype '>f8' (big-endian arrays are not supported",
    ["bad/not_a_zip.npz"] = "not a zip archive",
    ["bad/object_array.npz"] = "object arrays need pickle; never unpickle",
    ["bad/int_dtype.npz"] = false,
    ["bad/ndim3.npz"] = false,
    ["bad/missing_key.npz"] = false,
  }

  for _, case in ipairs(fx.features_bad) do
    it("refuses " .. case.file .. " with the expected error", function()
      local path = fixture("data/features/" .. case.file)
      helper.assert_error_contains(function() hero.io.load_features(path) end, "load_features", path, case.error)
      local loader = case.file:match("%.npy$") and hero.io.load_npy or hero.io.load_npz
      local g = general[case.file]
      if g == false then
        assert.is_table(loader(path))
      else
        helper.assert_error_contains(function() loader(path) end, path, g or case.error)
      end
    end)
  end

  it("exposes the member name in dtype errors of the general reader", function()
    helper.assert_error_contains(function() hero.io.load_npz(fixture("data/features/bad/object_array.npz")) end,
      "zip member features.npy")
  end)
end)

describe("hero.save / hero.load", function()
  it("stores a flat table as plain safetensors", function()
    local src = {w = hero.ones(2, 2), b = hero.zeros(2)}
    hero.save(tmp("flat.safetensors"), src)
    local got, meta = hero.io.load_safetensors(tmp("flat.safetensors"))
    assert.same({}, meta)
    assert.same(src.w:totable(), got.w:totable())
    local back = hero.load(tmp("flat.safetensors"))
    assert.same({"b", "w"}, (function()
      local k = {}
      for name in pairs(back) do k[#k + 1] = name end
      table.sort(k)
      return k
    end)())
  end)

  it("round-trips nested tables of tensors and plain values exactly", function()
    local src = {
      model = {layers = {{w = hero.ones(2, 3), b = hero.zeros(3)}, {w = hero.full({1}, 2):double()}},
               emb = hero.arange(4)},
      step = 12, big = math.maxinteger, small = math.mininteger,
      lr = 0.1, third = 1 / 3, tiny = 5e-324, neg0 = -0.0, inf = 1 / 0, ninf = -1 / 0, nan = 0 / 0,
      whole = 3.0,
      name = "h\u{e9}ro \"x\"\n\t\1", bytes = "\255\0\254", flag = true, off = false,
      [7] = "int key", [2.5] = "float key", [true] = "bool key",
      ["a.b"] = hero.ones(1), a = {b = hero.zeros(1)},
      empty = {},
    }
    hero.save(tmp("nested.safetensors"), src)
    local got, meta = hero.load(tmp("nested.safetensors"))
    assert.is_string(meta[hero.io.STRUCTURE_KEY])
    assert.same(src.model.layers[1].w:totable(), got.model.layers[1].w:totable())
    assert.same({2}, got.model.layers[2].w:totable())
    assert.equal("f64", got.model.layers[2].w:dtype())
    assert.equal("i64", got.model.emb:dtype())
    assert.equal(12, got.step)
    assert.equal("integer", math.type(got.step))
    assert.equal(math.maxinteger, got.big)
    assert.equal(math.mininteger, got.small)
    for _, k in ipairs {"lr", "third", "tiny", "inf", "ninf", "whole"} do
      assert.equal("float", math.type(got[k]), k)
      assert.equal(src[k], got[k], k)
    end
    assert.equal(-math.huge, 1 / got.neg0)
    assert.is_true(got.nan ~= got.nan)
    assert.equal(src.name, got.name)
    assert.equal(src.bytes, got.bytes)
    assert.is_true(got.flag)
    assert.is_false(got.off)
    assert.equal("int key", got[7])
    assert.equal("float key", got[2.5])
    assert.equal("bool key", got[true])
    assert.same({1}, got["a.b"]:totable())
    assert.same({0}, got.a.b:totable())
    assert.same({}, got.empty)
    -- Other producers see the tensors under "."-joined names.
    local plain = hero.io.load_safetensors(tmp("nested.safetensors"))
    assert.is_not_nil(plain["model.layers.1.w"])
    assert.is_not_nil(plain["model.emb"])
  end)

  it("saves a single tensor or a plain value too", function()
    hero.save(tmp("one.safetensors"), hero.arange(3))
    assert.same({0, 1, 2}, hero.load(tmp("one.safetensors")):totable())
    hero.save(tmp("num.safetensors"), {1, 2, {x = "y"}})
    assert.same({1, 2, {x = "y"}}, hero.load(tmp("num.safetensors")))
  end)

  it("loads other producers' files as flat tables", function()
    local got = hero.load(fixture("io/second_aligned.safetensors"))
    assert_values(got.zeta, fx.safetensors.tensors.zeta, "zeta")
  end)

  it("refuses values it cannot store, naming where they are", function()
    helper.assert_error_contains(function() hero.save(tmp("bad.safetensors"), {a = {f = print}}) end,
      "hero.save", "'a.f'", "function")
    local cyc = {}
    cyc.self = cyc
    helper.assert_error_contains(function() hero.save(tmp("bad.safetensors"), {c = cyc}) end, "cycle")
    local f = hero.ones(1)
    f:free()
    helper.assert_error_contains(function() hero.save(tmp("bad.safetensors"), {x = {y = f}}) end, "'x.y'", "freed")
    assert.is_false(exists(tmp("bad.safetensors")))
  end)

  it("refuses a corrupt structure with a clear error", function()
    local key = hero.io.STRUCTURE_KEY
    hero.io.save_safetensors(tmp("cs.safetensors"), {a = hero.ones(1)}, {[key] = '{"k":[[{"s":"x"},{"t":"zz"}]]}'})
    helper.assert_error_contains(function() hero.load(tmp("cs.safetensors")) end, "no tensor named 'zz'")
    hero.io.save_safetensors(tmp("cs.safetensors"), {a = hero.ones(1)}, {[key] = '{"k":[}'})
    helper.assert_error_contains(function() hero.load(tmp("cs.safetensors")) end, "bad hero.structure JSON")
  end)

  it("names a file that is neither safetensors nor a PyTorch checkpoint", function()
    for name, bytes in pairs {["text.pt"] = "not a checkpoint at all", ["empty.bin"] = "", ["short.bin"] = "x"} do
      helper.write_file(tmp(name), bytes)
      helper.assert_error_contains(function() hero.load(tmp(name)) end, "hero.load: '" .. tmp(name) .. "'",
        "neither a safetensors file", "nor a PyTorch checkpoint")
    end
    -- a safetensors file cut short is still read as one, and says what is wrong with it
    local whole = read_bytes(fixture("io/second_aligned.safetensors"))
    helper.write_file(tmp("cut.safetensors"), whole:sub(1, #whole - 5))
    local ok, err = pcall(hero.load, tmp("cut.safetensors"))
    assert.is_false(ok)
    assert.is_nil(tostring(err):find("neither", 1, true), err)
  end)

  it("leaves the previous file intact when a save fails", function()
    local p = tmp("keep.safetensors")
    hero.save(p, {w = hero.ones(3)})
    local before = read_bytes(p)
    helper.assert_error_contains(function() hero.save(p, {w = hero.ones(3), f = print}) end,
      "the value at 'f' is a function")
    helper.assert_error_contains(function() hero.io.save_safetensors(p, {w = "not a tensor"}) end,
      "entry 'w' is a string, not a hero.Tensor")
    helper.assert_error_contains(function() hero.io.save_npz(p, {w = hero.ones(2):bfloat16()}) end,
      "bf16 has no NumPy dtype")
    assert.equal(before, read_bytes(p))
    -- A failure at the last step (the rename: the destination is a non-empty directory) removes the
    -- temporary file and leaves the destination alone.
    local d = tmp("dir.safetensors")
    assert(os.execute('mkdir -p "' .. d .. '/inner"'))
    helper.assert_error_contains(function() hero.save(d, {w = hero.ones(3)}) end, "cannot replace", d)
    assert.same({"inner"}, listdir(d))
    for _, name in ipairs(listdir(tmpdir)) do assert.is_nil(name:find(".tmp.", 1, true), name) end
    helper.assert_error_contains(function() hero.save(tmp("no/such/dir/x"), {w = hero.ones(1)}) end,
      "cannot create")
  end)
end)
