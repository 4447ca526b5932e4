local hero = require "hero"
local helper = require "spec_helper"
local tb = hero.tensorboard

describe("TensorBoard event files", function()
  it("uses CRC-32C and TFRecord's masked CRC", function()
    assert.equal(0xE3069283, tb.crc32c("123456789")) -- the CRC-32C check value
    assert.equal(0, tb.crc32c(""))
    local rec = tb.record("abc")
    assert.equal(8 + 4 + 3 + 4, #rec)
    assert.equal(3, string.unpack("<I8", rec))
    assert.equal(tb.masked_crc("abc"), string.unpack("<I4", rec, 16))
  end)

  it("writes scalars that read back with their steps and values", function()
    local dir = os.tmpname()
    os.remove(dir)
    local w = tb.Writer(dir)
    for s = 1, 4 do w:add_scalar("loss/mlm", 1 / s, s) end
    w:add_scalar("lr", 3e-5, 4)
    w:close()
    local got = tb.read_scalars(w.path)
    assert.equal(5, #got)
    assert.equal("loss/mlm", got[2].tag)
    assert.equal(2, got[2].step)
    assert.near(0.5, got[2].value, 1e-7)
    assert.near(3e-5, got[5].value, 1e-12)
    -- a flipped byte is caught by the CRC
    local f = assert(io.open(w.path, "r+b"))
    f:seek("set", 40)
    local b = f:read(1)
    f:seek("set", 40)
    f:write(string.char((b:byte() + 1) % 256))
    f:close()
    helper.assert_error_contains(function() tb.read_scalars(w.path) end, "CRC")
    helper.assert_error_contains(function() w:add_scalar("x", 1, 1) end, "closed")
    os.execute("rm -r '" .. dir .. "'")
  end)

  it("raises when a write fails (a full disk) and refuses to write after it", function()
    local dir = os.tmpname()
    os.remove(dir)
    local w = tb.Writer(dir)
    w:add_scalar("x", 1, 1)
    w:flush()
    -- /dev/full fails every write with ENOSPC, as a full disk does
    w.file:close()
    w.file = assert(io.open("/dev/full", "wb"))
    helper.assert_error_contains(function()
      w:add_scalar("x", 1, 2)
      w:flush()
    end, "No space left on device")
    -- a record after a torn one would be lost to every reader
    helper.assert_error_contains(function() w:add_scalar("x", 1, 3) end, "an earlier write to", "failed")
    helper.assert_error_contains(function() w:sync() end, "an earlier write to")
    w:close()
    os.execute("rm -r '" .. dir .. "'")
  end)

  it("raises when closing fails (a file size limit), naming the file", function()
    local dir = os.tmpname()
    os.remove(dir)
    local script = string.format([[
      local tb = require "hero.tensorboard"
      local w = tb.Writer(%q)
      for i = 1, 60 do w:add_scalar("loss", i * 0.5, i) end
      local ok, err = pcall(w.close, w)
      io.write(ok and "closed" or tostring(err))
    ]], dir)
    -- buffered records only reach the file at close: past the 1 KiB limit that write fails (EFBIG)
    local file = dir .. ".lua"
    local f = assert(io.open(file, "w"))
    f:write(script)
    f:close()
    -- the interpreter with this process's module paths, so that the child loads the same hero
    local cmd = "trap '' XFSZ; ulimit -f 1; LUA_PATH='%s' LUA_CPATH='%s' lua5.4 '%s' 2>&1"
    local p = io.popen(string.format("sh -c \"" .. cmd .. "\"", package.path, package.cpath, file))
    local out = p:read("a")
    p:close()
    assert.truthy(out:find("tensorboard.Writer:", 1, true), out)
    assert.truthy(out:find("failed: File too large", 1, true), out)
    os.remove(file)
    os.execute("rm -r '" .. dir .. "'")
  end)

  it("makes the directory, and names one it cannot make", function()
    local dir = os.tmpname()
    os.remove(dir)
    local w = tb.Writer(dir .. "/runs/a")
    w:add_scalar("x", 1, 1)
    w:close()
    assert.equal("x", tb.read_scalars(w.path)[1].tag)
    os.execute("rm -r '" .. dir .. "'")
    helper.assert_error_contains(function() tb.Writer("/proc/hero-nope/x") end,
      "tensorboard.Writer: fs_mkdir: cannot create the directory '/proc/hero-nope'")
  end)

  it("refuses an empty path, unknown options and an existing file, and names files after any it finds", function()
    -- "" wrote an event file at the root of the file system
    helper.assert_error_contains(function() tb.Writer("") end, "expected a directory path, got an empty string")
    local dir = os.tmpname()
    os.remove(dir)
    helper.assert_error_contains(function() tb.Writer(dir, {file_name = "ev"}) end,
      "tensorboard.Writer: unknown option 'file_name' (filename)")
    local w = tb.Writer(dir, {filename = "ev"})
    w:add_scalar("x", 1, 1)
    w:close()
    -- a second Writer with the same name truncated the first one's scalars
    helper.assert_error_contains(function() tb.Writer(dir, {filename = "ev"}) end, "already exists")
    assert.equal(1, #tb.read_scalars(dir .. "/ev"))
    helper.assert_error_contains(function() tb.Writer(dir, {filename = "a/b"}) end, "must be a file name")
    -- a name whose number is beyond a clock's (wrapped to a negative name before) is not counted
    local f = assert(io.open(dir .. "/events.out.tfevents.99999999999999999999.h.1", "wb"))
    f:close()
    local w2 = tb.Writer(dir)
    w2:close()
    local t = tonumber(w2.path:match("tfevents%.(%d+)%."))
    assert.is_true(t ~= nil and t > 0 and t < (1 << 53))
    os.execute("rm -r '" .. dir .. "'")
  end)
  -- Checked against bytes serialised by TensorBoard's own protocol buffers and against what its
  -- EventAccumulator shows (spec/fixtures/gen/tensorboard_events.py).
  describe("against TensorBoard", function()
    local golden = helper.load_fixture("tensorboard/events.lua")

    -- The TFRecord payloads of an event file, in order.
    local function bodies(path)
      local f = assert(io.open(path, "rb"))
      local data = f:read("a")
      f:close()
      local out, pos = {}, 1
      while pos <= #data do
        local len = string.unpack("<I8", data, pos)
        out[#out + 1] = data:sub(pos + 12, pos + 11 + len)
        pos = pos + 16 + len
      end
      return out
    end

    it("encodes scalars and session starts as TensorBoard's Event messages", function()
      local dir = os.tmpname()
      os.remove(dir)
      local w = tb.Writer(dir)
      w:add_session_start(3)
      w:add_scalar("loss/mlm", 0.25, 7)
      w:close()
      local got = bodies(w.path)
      assert.equal(3, #got)
      -- the same bytes after the wall time (field 1: a key byte and a double)
      assert.equal(golden.session_start_step_3:sub(10), got[2]:sub(10))
      assert.equal(golden.scalar_step_7:sub(10), got[3]:sub(10))
      os.execute("rm -r '" .. dir .. "'")
    end)

    it("reads a resumed run written by TensorBoard as TensorBoard shows it", function()
      local pts = tb.read_run(helper.fixture("tensorboard/resumed"))
      local shown = {}
      for _, p in ipairs(pts) do shown[#shown + 1] = {p.step, p.value} end
      assert.same(golden.resumed_shown, shown)
    end)
  end)
end)
