local hero = require "hero"
local helper = require "spec_helper"

local fx = helper.load_fixture("torch.lua")
local function torch_file(name) return helper.fixture("torch/" .. name) end
local function smoke(name) return helper.fixture("hero-smoke/" .. name) end

local tmpdir
local function tmp(name) return tmpdir .. "/" .. name end

local function read_bytes(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local write_bytes = helper.write_file

setup(function()
  tmpdir = os.tmpname()
  os.remove(tmpdir)
  assert(os.execute('mkdir -p "' .. tmpdir .. '"'))
end)

teardown(function()
  if tmpdir and tmpdir:match("^/tmp/") then os.execute('rm -rf "' .. tmpdir .. '"') end
end)

-- Exact equality that also tells -0 from 0 and accepts NaN for NaN.
local function same_value(a, e)
  if type(e) == "number" and e ~= e then return a ~= a end
  if e == 0 and a == 0 and math.type(e) == "float" then return 1 / a == 1 / e end
  return a == e
end

local function flat(t)
  if t:numel() == 0 then return {} end
  return t:contiguous():reshape(t:numel()):totable()
end

local function assert_tensor(t, spec, what)
  assert(hero.is_tensor(t), what .. ": not a tensor")
  assert.equal(spec.dtype, t:dtype(), what .. ": dtype")
  assert.same(spec.shape, t:size(), what .. ": shape")
  assert.same(spec.stride, t:stride(), what .. ": stride")
  assert.equal(spec.offset, t:storage_offset(), what .. ": storage offset")
  assert.equal(spec.requires_grad, t.requires_grad, what .. ": requires_grad")
  local got = flat(t)
  assert.equal(#spec.values, #got, what .. ": element count")
  for i = 1, #spec.values do
    if not same_value(got[i], spec.values[i]) then
      error(string.format("%s: element %d is %s, expected %s", what, i, tostring(got[i]), tostring(spec.values[i])))
    end
  end
end

-- Follows a "."-joined path of the generator's flattened description.
local function at(tbl, path)
  local v = tbl
  for part in path:gmatch("[^.]+") do v = v[part] end
  return v
end

local function assert_matches(loaded, expected, what)
  for path, spec in pairs(expected) do
    local v = at(loaded, path)
    if spec.plain ~= nil then
      assert.same(spec.plain, v, what .. ": " .. path)
    else
      assert_tensor(v, spec, what .. ": " .. path)
    end
  end
end

describe("load_torch on the reference HERO checkpoint", function()
  local weights
  setup(function() weights = hero.load_safetensors(smoke("weights.safetensors")) end)

  for _, name in ipairs {"model_fp16.pt", "model_fp16_legacy.pt"} do
    it(name .. " holds every weight as fp16, bit for bit, plus vocab_padded", function()
      local ckpt = hero.io.load_torch(smoke(name))
      assert.is_true(ckpt.vocab_padded)
      local n = 0
      for key, w in pairs(weights) do
        n = n + 1
        local t = ckpt[key]
        assert(hero.is_tensor(t), key .. " is missing")
        assert.equal("f16", t:dtype(), key)
        assert.same(w:size(), t:size(), key)
        -- f16 -> f32 is exact, and same_value tells -0 from 0 and matches NaN with NaN.
        local got, want = flat(t:float()), flat(w:half():float())
        for i = 1, #want do
          if not same_value(got[i], want[i]) then
            error(string.format("%s: element %d is %s, fp16(weights.safetensors) has %s", key, i, got[i], want[i]))
          end
        end
      end
      local m = 0
      for key in pairs(ckpt) do
        m = m + 1
        assert(key == "vocab_padded" or weights[key], "unexpected key " .. key)
      end
      assert.equal(n + 1, m)
    end)

    it(name .. " keeps tied weights on one storage", function()
      local ckpt = hero.io.load_torch(smoke(name))
      local emb = ckpt["v_encoder.f_encoder.embeddings.word_embeddings.weight"]
      local dec = ckpt["v_encoder.f_encoder.lm_head.decoder.weight"]
      assert.is_true(emb:shares_storage(dec))
      assert.is_false(emb:shares_storage(ckpt["v_encoder.pad"]))
      assert.is_false(ckpt["v_encoder.pad"]:shares_storage(ckpt["v_encoder.f_encoder.pad"]))
      -- A write through one name is seen through the other, as in PyTorch.
      emb:select(1, 1):fill_(7)
      assert.equal(7, dec[1][1]:item())
    end)
  end

  it("hero.load dispatches on the file's first bytes", function()
    local a = hero.load(smoke("model_fp16.pt"))
    local b = hero.load(smoke("model_fp16_legacy.pt"))
    assert.is_true(a.vocab_padded)
    assert.is_true(b.vocab_padded)
    local key = "v_encoder.f_encoder.encoder.layer.0.attention.self.query.weight"
    assert.same(flat(a[key]:float()), flat(b[key]:float()))
    local w = hero.load(smoke("weights.safetensors"))
    assert.equal("f32", w[key]:dtype())
    helper.assert_error_contains(function() hero.load(torch_file("not_torch.zip")) end, "no data.pkl member")
  end)

  it("refuses every truncation of the files", function()
    for _, name in ipairs {"model_fp16.pt", "model_fp16_legacy.pt"} do
      local data = read_bytes(smoke(name))
      local p = tmp("cut.pt")
      for _, len in ipairs {0, 1, 2, 5, 16, 30, 64, 100, 500, 1000, 5000, 14000, 15000, 20000, 100000, 300000,
                            #data - 100, #data - 9, #data - 1} do
        write_bytes(p, data:sub(1, len))
        local ok, err = pcall(hero.io.load_torch, p)
        assert(not ok, name .. " cut to " .. len .. " bytes loaded")
        assert(tostring(err):find("load_torch: '" .. p .. "'", 1, true), err)
      end
    end
  end)
end)

describe("load_torch on files written by torch.save", function()
  for _, name in ipairs {"values.pt", "values_p4.pt", "values_legacy.pt", "values_be.pt", "values_legacy_be.pt"} do
    it(name .. ": dtypes, strides, offsets, scalars and plain values", function()
      local t = hero.io.load_torch(torch_file(name))
      assert_matches(t, fx.values, name)
      assert.is_nil(t.none)
      for _, pair in ipairs(fx.values_shared) do
        assert.is_true(t[pair[1]]:shares_storage(t[pair[2]]), pair[1] .. " / " .. pair[2])
      end
      assert.is_false(t.f32:shares_storage(t.f16))
      assert.is_false(t.i64:shares_storage(t.i32))
      if name == "values_p4.pt" then assert.equal("\0\1", t.bytes) end
    end)
  end

  for _, name in ipairs {"state.pt", "state_legacy.pt"} do
    it(name .. ": an OrderedDict state_dict and a Parameter", function()
      local t = hero.io.load_torch(torch_file(name))
      assert_matches(t, fx.state, name)
      assert.is_true(t.param.requires_grad)
      assert.is_false(t.sd.weight.requires_grad)
      local n = 0
      for _ in pairs(t.sd) do n = n + 1 end
      assert.equal(2, n) -- the _metadata attribute is dropped
    end)
  end

  it("a torch.Size and dtypes among the values, as torch.load(weights_only = True) takes them", function()
    local v = hero.load(torch_file("size_dtype.pt"))
    assert.same({2, 3}, v.s)
    assert.equal("torch.float16", v.d)
    assert.same({1, 1}, v.w:totable())
    -- and hero.load's torch errors name the caller's line, not hero's own
    local ok, err = pcall(hero.load, torch_file("complex.pt"))
    assert.is_false(ok)
    assert.is_nil(tostring(err):match("io%.lua:%d+"))
  end)

  it("a bare tensor at the root", function()
    local t = hero.io.load_torch(torch_file("scalar_root.pt"))
    assert(hero.is_tensor(t))
    assert.equal("f64", t:dtype())
    assert.equal(0, t:dim())
    assert.equal(2.5, t:item())
  end)

  it("shared and cyclic structures stay shared", function()
    local t = hero.io.load_torch(torch_file("cycle.pt"))
    assert.equal(t, t[1])
  end)

  it("every single-byte corruption of a legacy file loads or fails cleanly", function()
    -- The legacy stream has no checksum, so each altered byte reaches the pickle machine or the
    -- storage records (zip members are guarded by CRC-32 before unpickling).
    local p = tmp("flip.pt")
    local failures = 0
    for _, case in ipairs {{"values_legacy.pt", 3, {1}}, {"state_legacy.pt", 1, {1, 128}}} do
      local data = read_bytes(torch_file(case[1]))
      for pos = 1, #data, case[2] do
        for _, delta in ipairs(case[3]) do
          write_bytes(p, data:sub(1, pos - 1) .. string.char((data:byte(pos) + delta) % 256) .. data:sub(pos + 1))
          local ok, err = pcall(hero.io.load_torch, p)
          if ok then
            assert(type(err) == "table" or hero.is_tensor(err), "a corrupted load returned a " .. type(err))
          else
            failures = failures + 1
            assert(tostring(err):find("load_torch: '" .. p .. "'", 1, true), err)
          end
        end
      end
    end
    assert(failures > 100, "too few corruptions were noticed")
  end)

  it("torch_sniff tells the formats apart", function()
    assert.equal("zip", hero.core.torch_sniff(read_bytes(torch_file("values.pt")):sub(1, 32)))
    assert.equal("legacy", hero.core.torch_sniff(read_bytes(torch_file("values_legacy.pt")):sub(1, 32)))
    assert.is_nil(hero.core.torch_sniff(read_bytes(smoke("weights.safetensors")):sub(1, 32)))
    assert.is_nil(hero.core.torch_sniff(read_bytes(torch_file("not_torch.pkl"))))
    assert.is_nil(hero.core.torch_sniff(""))
  end)
end)

describe("load_torch refuses hostile and broken files", function()
  local cases = {
    {"evil_global.pt", "byte 2 (GLOBAL)", "refusing to unpickle global 'os.system'"},
    {"evil_stack_global.pt", "(STACK_GLOBAL)", "refusing to unpickle global 'builtins.eval'"},
    {"evil_legacy.pt", "pickle: byte 2 (GLOBAL)", "refusing to unpickle global 'subprocess.Popen'"},
    {"bytes_p2.pt", "refusing to unpickle global '_codecs.encode'"},
    {"evil_newobj.pt", "opcode NEWOBJ is not accepted"},
    {"evil_call_storage.pt", "refusing to call 'torch.FloatStorage'"},
    {"bad_opcode.pt", "byte 3: unknown pickle opcode 0xff"},
    {"memo_unset.pt", "(BINGET): memo index 5 is not set"},
    {"memo_huge.pt", "(LONG_BINPUT): memo index 4294967295 out of range"},
    {"stack_underflow.pt", "(REDUCE): stack underflow"},
    {"string_past_end.pt", "(BINUNICODE): truncated: string of 65535 bytes but only 3 left"},
    {"no_stop.pt", "the pickle ends without STOP"},
    {"truncated_pickle.pt", "member archive/data.pkl", "the pickle ends without STOP"},
    {"truncated_zip.pt", "corrupt or truncated zip archive"},
    {"truncated_legacy.pt", "truncated", "storage"},
    {"trailing_legacy.pt", "3 unexpected bytes after the last storage"},
    {"storage_small.pt",
     "tensor of size (10), stride (1), offset 0 reaches element 9 of storage '0', which holds 4 f32 elements"},
    {"stride_oob.pt",
     "tensor of size (2, 3), stride (10, 1), offset 0 reaches element 12 of storage '0', which holds 6"},
    {"offset_oob.pt", "offset 3 reaches element 4 of storage '0'"},
    {"absurd_size.pt", "tensor of size (4611686018427387904, 4), stride (4, 1) overflows 64-bit element counts"},
    {"absurd_numel.pt", "storage '0' declares an impossible element count 4611686018427387904"},
    {"huge_storage.pt", "zip member archive/data/0 holds 16 bytes but the pickle declares 4398046511104"},
    {"legacy_huge_count.pt", "truncated: storage '0' needs 4398046511104 bytes"},
    {"too_many_dims.pt", "tensor size has 9 dimensions (hero supports at most 8)"},
    {"negative_stride.pt", "tensor stride has a negative entry -1"},
    {"member_missing.pt", "storage '7' has no zip member archive/data/7"},
    {"numel_conflict.pt", "storage '0' is declared as 16 bytes and as 20 bytes"},
    {"bad_bool.pt", "bool storage '0' holds the byte 0x05"},
    {"bad_pid.pt", "persistent id must be a tuple"},
    {"bad_byteorder.pt", "member archive/byteorder must say 'little' or 'big'"},
    {"storage_view.pt", "storage '0' is a view of another storage"},
    {"int16.pt", "storage type torch.ShortStorage holds int16 elements, which no hero dtype represents"},
    {"complex.pt", "storage type torch.ComplexFloatStorage holds complex64 elements, which no hero dtype represents"},
    {"protocol0_legacy.pt", "a legacy PyTorch checkpoint written with pickle protocol 0 or 1"},
    {"deep.pt", "values nested deeper than 200 levels"},
    {"tuple_key.pt", "a dict key of type tuple cannot be a Lua table key"},
    {"not_torch.zip", "not a PyTorch checkpoint: the zip archive has no data.pkl member"},
    {"not_torch.pkl", "not a PyTorch checkpoint (neither a zip archive with data.pkl nor the legacy magic number)"},
  }
  for _, case in ipairs(cases) do
    it(case[1], function()
      local p = torch_file(case[1])
      helper.assert_error_contains(function() hero.io.load_torch(p) end, "load_torch: '" .. p .. "'",
        table.unpack(case, 2))
    end)
  end

  it("missing, empty and non-regular files", function()
    helper.assert_error_contains(function() hero.io.load_torch(tmp("nope.pt")) end, "no such file")
    write_bytes(tmp("empty.pt"), "")
    helper.assert_error_contains(function() hero.io.load_torch(tmp("empty.pt")) end, "empty file")
    helper.assert_error_contains(function() hero.io.load_torch(tmpdir) end, "not a readable regular file")
    helper.assert_error_contains(function() hero.io.load_torch() end,
      "argument #1: expected a path string, got no value")
    -- a number was read as the file named by its digits
    helper.assert_error_contains(function() hero.io.load_torch(5) end, "expected a path string, got number")
  end)
end)
