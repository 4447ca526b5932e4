-- CPU-vs-CUDA parity of every op with a CUDA path (forward and backward), the dropout stream, the
-- allocator's statistics and out-of-memory recovery. Tagged #cuda: `lua5.4 spec/run.lua --run=cuda`
-- on a machine with a GPU (the default run excludes the tag). HERO_SPEC_DEVICE=cpu runs the same
-- checks with the CPU standing in for the GPU (a self-check of this file on machines without one).
local hero = require "hero"
local helper = require "spec_helper"

local DEVICE = os.getenv("HERO_SPEC_DEVICE") or "cuda:0"
local ON_GPU = DEVICE ~= "cpu"
-- Cases that only mean something on a real device (device queries, the caching allocator, out of
-- memory, mixed-device refusals) are reported pending when the CPU stands in, not passed.
local it_gpu = ON_GPU and it or function(name) pending(name .. " (needs a GPU)") end
local it_db = helper.it_needs(it, pending, "lmdb", "lz4") -- reads the fixture's HERO databases
local FLOATS = {"f32", "f64", "bf16", "f16"}

--- A copy of the CPU tensor t on the device under test (always a new tensor).
local function dev(t)
  if ON_GPU then return t:to {device = DEVICE} end
  return t:clone()
end

--- Checks that the device result g matches the CPU result c (values, shape, dtype, device).
local function same(g, c, tol)
  assert.equal(DEVICE, g:device())
  assert.equal(c:dtype(), g:dtype())
  assert.tensor_near(g:cpu(), c, tol)
end

--- Runs fn on CPU leaves and on device leaves made from the same values, compares the outputs,
-- back-propagates the same random upstream gradient and compares every input's gradient.
local function check_grad(fn, inputs, tol)
  local cl, gl = {}, {}
  for i, t in ipairs(inputs) do
    cl[i] = t:clone():requires_grad_()
    gl[i] = dev(t):detach():requires_grad_()
  end
  local yc, yg = fn(table.unpack(cl)), fn(table.unpack(gl))
  same(yg, yc, tol)
  local seed = hero.randn(yc:size(), {dtype = yc:dtype()})
  yc:backward(seed)
  yg:backward(dev(seed))
  for i = 1, #inputs do
    assert.equal(cl[i].grad == nil, gl[i].grad == nil)
    if cl[i].grad then same(gl[i].grad, cl[i].grad, tol) end
  end
end

local function randn(size, dt) return hero.randn(size, {dtype = dt or "f32"}) end

describe("CUDA backend #cuda", function()
  before_each(function() hero.manual_seed(1234) end)

  describe("devices and copies", function()
    it_gpu("reports the devices", function()
      assert.is_true(hero.cuda.available())
      assert.is_true(hero.cuda.device_count() >= 1)
      assert.is_true(#hero.cuda.device_name(0) > 0)
      local s = hero.cuda.memory_stats(0)
      for _, k in ipairs {"allocated", "reserved", "peak", "cached", "free", "total"} do assert.is_number(s[k]) end
      hero.cuda.synchronize()
    end)

    it("moves every dtype to the device and back exactly", function()
      local values = {{1.5, -2.25, 0, 3}, {1e-3, -7, 65504, 0.125}}
      for _, dt in ipairs {"f32", "f64", "bf16", "f16", "i64", "i32", "u8", "bool"} do
        local src = dt == "bool" and hero.tensor {{true, false}, {false, true}}
          or hero.tensor(values, {dtype = dt == "u8" and "f32" or "f64"}):abs():to(dt)
        local g = dev(src)
        assert.equal(DEVICE, g:device())
        assert.equal(ON_GPU, g:is_cuda())
        assert.same(src:totable(), g:totable())
        assert.same(src:totable(), g:cpu():totable())
      end
      assert.equal(-7, dev(hero.tensor({-7}, {dtype = "i64"})):item())
    end)

    it("uploads small tensors without waiting, each from the values it had when moved", function()
      -- small uploads go through a pinned ring; the host may change or free its tensor at once,
      -- and the ring comes round many times here (5000 uploads of 1-4 KiB) with kernels between
      local want, got = {}, {}
      for i = 1, 5000 do
        local h = hero.arange(i % 4 == 0 and 1024 or 256, {dtype = i % 2 == 0 and "i64" or "f32"}) + i
        local g = dev(h)
        want[#want + 1], got[#got + 1] = h:sum():item(), g
        h:fill_(-1)
        if i % 7 == 0 then got[#got] = got[#got] * 1 end
      end
      for i = 1, #got, 97 do assert.equal(want[i], got[i]:sum():item()) end
      assert.equal(want[#got], got[#got]:sum():item())
      -- a strided host view and a dtype change on the way (uploaded then converted on the device)
      local h = hero.arange(64, {dtype = "f64"}):view(8, 8):t()
      local g = hero.empty({8, 8}, {dtype = "f32", device = DEVICE})
      g:copy_(h)
      assert.same(h:to("f32"):totable(), g:totable())
      -- bigger than the ring's limit: the plain copy
      local big = hero.randn({600000})
      assert.same(big:totable(), dev(big):totable())
    end)

    it("keeps small uploaded integer tensors on the host too, until anything writes them", function()
      local ids = dev(hero.tensor({{3, 1, 4}, {1, 5, 9}}, {dtype = "i64"}))
      if ON_GPU then assert.is_true(hero.cuda.host_mirrored(ids)) end
      assert.same({{3, 1, 4}, {1, 5, 9}}, ids:totable())
      assert.same({1, 5, 9}, ids[2]:totable()) -- a view reads its own elements
      assert.same({4, 9}, ids:select(2, 3):totable())
      local as_i32 = ids:to("i32") -- a copy on the device keeps the values on the host as well
      if ON_GPU then assert.is_true(hero.cuda.host_mirrored(as_i32)) end
      assert.same({{3, 1, 4}, {1, 5, 9}}, as_i32:totable())
      -- every kind of write retires the host copy: in-place arithmetic, a copy of bytes made on the
      -- device, a fill, a scatter (mk puts a write's operands where the written tensor is)
      local writes = {
        function(t) t:add_(1) end,
        function(t, mk) t:copy_(mk(hero.tensor({{7, 7, 7}, {8, 8, 8}}, {dtype = "i64"})):add(0)) end,
        function(t) t[1]:fill_(0) end,
        function(t, mk)
          t:index_copy_(1, mk(hero.tensor({1}, {dtype = "i64"})), mk(hero.zeros({1, 3}, {dtype = "i64"})))
        end,
      }
      local function on_host(t) return t end
      for _, write in ipairs(writes) do
        local d = dev(hero.tensor({{3, 1, 4}, {1, 5, 9}}, {dtype = "i64"}))
        local want = hero.tensor({{3, 1, 4}, {1, 5, 9}}, {dtype = "i64"})
        write(d, dev)
        write(want, on_host)
        if ON_GPU then assert.is_false(hero.cuda.host_mirrored(d)) end
        assert.same(want:totable(), d:totable())
      end
      -- a copy from a tensor that has a host copy passes that copy on, with the new values
      local d = dev(hero.tensor({{3, 1, 4}, {1, 5, 9}}, {dtype = "i64"}))
      d:copy_(dev(hero.tensor({{7, 7, 7}, {8, 8, 8}}, {dtype = "i64"})))
      if ON_GPU then assert.is_true(hero.cuda.host_mirrored(d)) end
      assert.same({{7, 7, 7}, {8, 8, 8}}, d:totable())
      -- floats, views of a bigger storage and big tensors are not kept
      if ON_GPU then
        assert.is_false(hero.cuda.host_mirrored(dev(hero.tensor {1.5, 2})))
        assert.is_false(hero.cuda.host_mirrored(dev(hero.zeros({200000}, {dtype = "i64"}))))
      end
      -- the index checks of ops read the host copy: bad values are still refused by name
      local w = dev(randn {10, 4})
      helper.assert_error_contains(function() hero.embedding(w, dev(hero.tensor({1, 10}, {dtype = "i64"}))) end,
        "embedding", "index 10 at position 2", "out of range")
      helper.assert_error_contains(function() w:index_select(1, dev(hero.tensor({0, -1}, {dtype = "i64"}))) end,
        "index_select", "index -1")
      helper.assert_error_contains(function()
        hero.cross_entropy(dev(randn {2, 5}), dev(hero.tensor({1, 5}, {dtype = "i64"})))
      end, "cross_entropy", "target 5", "out of range")
      same(hero.embedding(w, dev(hero.tensor({9, 0}, {dtype = "i64"}))), hero.embedding(w:cpu(),
        hero.tensor({9, 0}, {dtype = "i64"})))
    end)

    it("copies strided views, broadcasts and converts on the device", function()
      local a = hero.arange(24, {dtype = "f32"}):view(2, 3, 4)
      local g = dev(a)
      same(g:transpose(1, 3):contiguous(), a:transpose(1, 3):contiguous())
      same(dev(a:transpose(1, 3)), a:transpose(1, 3):contiguous())
      same(g:narrow(3, 2, 2):clone(), a:narrow(3, 2, 2):clone())
      same(g:to("f64"), a:to("f64"))
      same(g:to("bf16"):to("f32"), a:to("bf16"):to("f32"))
      same(g:to("i32"), a:to("i32"))
      local z = dev(hero.zeros(2, 3, 4))
      z:copy_(hero.tensor {1, 2, 3, 4}) -- host row broadcast into a device tensor
      same(z, hero.tensor {1, 2, 3, 4}:expand(2, 3, 4):contiguous())
      z:narrow(2, 1, 1):copy_(g:narrow(2, 3, 1)) -- device to device, overlapping-free views
      local want = hero.tensor {1, 2, 3, 4}:expand(2, 3, 4):contiguous()
      want:narrow(2, 1, 1):copy_(a:narrow(2, 3, 1))
      same(z, want)
      local host = hero.zeros(4, 3)
      host:copy_(g[1]:t()) -- device view into a host tensor
      assert.same(a[1]:t():totable(), host:totable())
      local ov = dev(hero.arange(10, {dtype = "f32"}))
      ov:narrow(1, 2, 8):copy_(ov:narrow(1, 1, 8)) -- overlapping: reads before writes
      assert.same({0, 0, 1, 2, 3, 4, 5, 6, 7, 9}, ov:totable())
    end)

    it("copies rows of 16-byte units, long unaligned rows and permuted heads exactly", function()
      for _, dt in ipairs {"f32", "bf16", "f16", "f64", "u8"} do
        local x = hero.arange(5 * 300, {dtype = "f32"}):view(5, 300):to(dt)
        local g = dev(x)
        -- a narrowed row (297 of 300): neither side's rows are whole units apart
        assert.same(x:narrow(2, 2, 297):contiguous():totable(), g:narrow(2, 2, 297):contiguous():cpu():totable())
        local z, zc = dev(hero.zeros(5, 300, {dtype = dt})), hero.zeros(5, 300, {dtype = dt})
        z:narrow(2, 4, 296):copy_(g:narrow(2, 1, 296))
        zc:narrow(2, 4, 296):copy_(x:narrow(2, 1, 296))
        assert.same(zc:totable(), z:cpu():totable())
        -- heads of 64 columns permuted (whole 16-byte units)
        local h = x:narrow(2, 1, 256):reshape(5, 4, 64)
        assert.same(h:permute(2, 1, 3):contiguous():totable(),
                    dev(h):permute(2, 1, 3):contiguous():cpu():totable())
      end
    end)

    it("fills, zeros, prints and reads single values", function()
      local g = dev(hero.zeros(3, 2, {dtype = "f16"}))
      same(g, hero.zeros(3, 2, {dtype = "f16"}))
      g:fill_(2.5)
      same(g, hero.full({3, 2}, 2.5, {dtype = "f16"}))
      g:narrow(1, 2, 1):zero_()
      assert.same({{2.5, 2.5}, {0, 0}, {2.5, 2.5}}, g:totable())
      local i = dev(hero.zeros(2, {dtype = "i64"})):fill_(9007199254740993)
      assert.same({9007199254740993, 9007199254740993}, i:totable())
      assert.equal(2.5, g[1][2]:item())
      assert.truthy(tostring(g):find("2.5", 1, true))
      assert.same(hero.zeros(2, 3, {device = DEVICE}):totable(), hero.zeros(2, 3):totable())
    end)

    it_gpu("refuses mixed devices and ops without a CUDA path with clear messages", function()
      local g, c = dev(hero.ones(3)), hero.ones(3)
      helper.assert_error_contains(function() return g + c end, "add", "different devices")
      helper.assert_error_contains(function() return hero.matmul(dev(hero.ones(2, 2)), hero.ones(2, 2)) end,
        "matmul", "different devices")
      local i64 = dev(hero.ones(2, 2, {dtype = "i64"}))
      helper.assert_error_contains(function() return hero.matmul(i64, i64) end, "matmul",
        "no CUDA implementation for i64 tensors yet")
      helper.assert_error_contains(function() return hero.cat {g, c} end, "cat", "tensor 2 of the list is on cpu")
      helper.assert_error_contains(function() return g:index_select(1, hero.tensor({0}, {dtype = "i64"})) end,
        "index_select", "the index tensor is on cpu")
      helper.assert_error_contains(function() return hero.ones(2):cuda(hero.cuda.device_count()) end, "does not exist")
    end)
  end)

  describe("uploads on the upload stream", function()
    it("moves tensors in upload_async, whole after await_upload, small integers kept on the host", function()
      local host = {
        ids = hero.arange(20000, {dtype = "i64"}):view(100, 200), -- 160 KB: a mirrored index list
        flags = hero.tensor({{true, false}, {false, true}}),
        feats = randn {3000, 400}, -- 4.8 MB: the driver stages it in parts
        half = randn({64, 72}):to("bf16"),
        strided = hero.arange(64, {dtype = "f32"}):view(8, 8):t(), -- made contiguous on the host first
      }
      local ticket, out, extra = hero.cuda.upload_async(DEVICE, function(tensors, n)
        local moved = {}
        for k, t in pairs(tensors) do moved[k] = t:to {device = DEVICE} end
        -- another dtype on the way: converted on the host, then uploaded
        moved.converted = hero.arange(12, {dtype = "f64"}):view(3, 4):to {device = DEVICE, dtype = "f32"}
        return moved, n + 1
      end, host, 41)
      assert.equal(42, extra)
      if ON_GPU then assert.is_true(math.type(ticket) == "integer") else assert.is_false(ticket) end
      hero.cuda.await_upload(ticket)
      for k, t in pairs(host) do
        assert.equal(DEVICE, out[k]:device())
        assert.same(t:contiguous():totable(), out[k]:totable())
      end
      assert.same(hero.arange(12, {dtype = "f32"}):view(3, 4):totable(), out.converted:totable())
      if ON_GPU then
        assert.is_true(hero.cuda.host_mirrored(out.ids))
        assert.is_true(hero.cuda.host_mirrored(out.flags))
        helper.assert_error_contains(function() hero.cuda.await_upload(ticket) end, "no upload has ticket")
      end
      helper.assert_error_contains(function() hero.cuda.await_upload("7") end, "expected a ticket")
    end)

    it_gpu("refuses nested uploads, leaves none open after an error, and names unknown tickets", function()
      helper.assert_error_contains(function()
        hero.cuda.upload_async(DEVICE, function() hero.cuda.upload_async(DEVICE, function() end) end)
      end, "upload_async", "uploads do not nest")
      helper.assert_error_contains(function()
        hero.cuda.upload_async(DEVICE, function() error("made up failure") end)
      end, "made up failure")
      local ticket = hero.cuda.upload_async(DEVICE, function() return randn {4}:to {device = DEVICE} end)
      hero.cuda.await_upload(ticket)
      helper.assert_error_contains(function() hero.cuda.await_upload(987654321) end, "no upload has ticket 987654321")
    end)

    it_gpu("never writes an upload into a block that queued kernels still read", function()
      -- a kernel queued behind a long queue of products reads a block; the block is then freed (an
      -- uploaded tensor's goes back to the upload blocks, which the next upload of that size takes
      -- at once) or written in place by an upload: either way the transfer must wait for the kernel
      local a, b = dev(randn {2048, 2048}), dev(randn {2048, 2048})
      local n = 1 << 18
      local function upload(fn)
        local ticket, t = hero.cuda.upload_async(DEVICE, fn)
        hero.cuda.await_upload(ticket)
        return t
      end
      local mallocs
      for round = 1, 8 do
        local y = upload(function() return hero.full({n}, round):to {device = DEVICE} end)
        for _ = 1, 24 do local _ = a:matmul(b) end
        local total = y:sum()
        y = nil -- luacheck: ignore
        collectgarbage()
        local z = upload(function() return hero.full({n}, -1):to {device = DEVICE} end)
        assert.equal(round * n, total:item())
        assert.equal(-n, z:sum():item())
        -- a tensor made on the compute stream, overwritten in place during an upload
        local w = dev(hero.full({n}, round))
        for _ = 1, 24 do local _ = a:matmul(b) end
        local before = w:sum()
        upload(function() w:copy_(hero.full({n}, 7)) end)
        assert.equal(round * n, before:item())
        assert.equal(7 * n, w:sum():item())
        -- after the first rounds the upload blocks serve every upload of these sizes
        if round == 3 then mallocs = hero.cuda.memory_stats().num_cuda_mallocs end
      end
      assert.equal(mallocs, hero.cuda.memory_stats().num_cuda_mallocs)
    end)

    it_gpu("hands device tensors over between Lua states whole, and refuses to copy them", function()
      local script = [[return function(job)
        local t = require("hero").arange(6, {dtype = "f32"}):to {device = job.device}
        if job.view then return {t = t, v = t:narrow(1, 1, 2)} end
        return {t = t}
      end]]
      local pool = hero.core.worker_pool{n = 1, script = script, hand_over = true}
      pool:submit({device = DEVICE})
      local r = pool:get()
      assert.equal(DEVICE, r.t:device())
      assert.same({0, 1, 2, 3, 4, 5}, r.t:totable())
      pool:submit({device = DEVICE, view = true}) -- two tensors on one storage: not handed over
      helper.assert_error_contains(function() pool:get() end, "cannot send a " .. DEVICE .. " tensor",
        "alone covers its storage")
      pool:close()
      local copying = hero.core.worker_pool{n = 1, script = script}
      copying:submit({device = DEVICE})
      helper.assert_error_contains(function() copying:get() end, "cannot send a " .. DEVICE .. " tensor", "hand_over")
      copying:close()
    end)

    it_db("PrefetchLoader{device =} serves the loader's batches moved to the device by its workers", function()
      local spec = {dataset = {type = "VideoSubDataset",
        video_db = helper.fixture("data/video_db/tv/resnet_slowfast_1.5"),
        sub_db = helper.fixture("data/txt_db/tv_subtitles.db"), max_clip_len = 12},
        task = "mlm", batch_size = 3, seed = 11, bucket = 1}
      local plain <close> = hero.data.PrefetchLoader{loader_spec = spec, workers = 2, depth = 2}
      local moved <close> = hero.data.PrefetchLoader{loader_spec = spec, workers = 2, depth = 3, device = DEVICE}
      local function same_values(want, got, path)
        if hero.is_tensor(want) then
          assert(hero.is_tensor(got), path .. " is not a tensor")
          assert.equal(want:device(), got:device(), path) -- the mask rows' host copies stay on the host
          assert.equal(want:dtype(), got:dtype(), path)
          assert.same(want:cpu():totable(), got:cpu():totable(), path)
        elseif type(want) == "table" then
          for k, v in pairs(want) do same_values(v, got[k], path .. "." .. tostring(k)) end
          for k in pairs(got) do assert(want[k] ~= nil, path .. "." .. tostring(k) .. " extra") end
        else
          assert.equal(want, got, path)
        end
      end
      for i = 1, 5 do
        local host = plain:next()
        -- moved on this thread (on the upload stream too, then awaited): the host batch's values
        local want = hero.train.Trainer.batch_to(host, DEVICE)
        for k, v in pairs(host) do
          if hero.is_tensor(v) then assert.same(v:totable(), want[k]:cpu():totable(), "batch_to " .. k) end
        end
        local got = moved:next()
        same_values(want, got, "batch " .. i)
        assert.equal(got, hero.train.Trainer.batch_to(got, DEVICE)) -- already there: not moved again
      end
      -- a batch in flight when the loader moves elsewhere is dropped safely
      moved:set_state(moved:state())
      same_values(hero.train.Trainer.batch_to(plain:next(), DEVICE), moved:next(), "batch after set_state")
      helper.assert_error_contains(function()
        hero.data.PrefetchLoader{loader_spec = spec, workers = 1, device = "gpu"}
      end, "opts.device must be 'cpu', 'cuda' or 'cuda:N'")
    end)
  end)

  describe("elementwise", function()
    it("binary arithmetic with broadcasting for every float dtype", function()
      for _, dt in ipairs(FLOATS) do
        local a, b = randn({3, 4}, dt), randn({4}, dt)
        local ga, gb = dev(a), dev(b)
        same(ga + gb, a + b)
        same(ga - gb, a - b)
        same(ga * gb, a * b)
        same(ga / gb, a / b)
        same(hero.maximum(ga, gb), hero.maximum(a, b))
        same(hero.minimum(ga, gb), hero.minimum(a, b))
        same(ga:abs():pow(gb), a:abs():pow(b))
        same(ga:pow(2), a:pow(2))
        same(ga:add(gb, 0.5), a:add(b, 0.5))
        same(ga + 2.5, a + 2.5)
        same(2 - ga, 2 - a)
        same(ga:lt(gb), a:lt(b))
        same(ga:eq(ga), a:eq(a))
        same(ga:ge(0), a:ge(0))
        same(hero.logical_and(ga:gt(0), gb:gt(0)), hero.logical_and(a:gt(0), b:gt(0)))
      end
    end)

    it("integer arithmetic, promotion and in-place forms", function()
      local a = hero.tensor({{1, -2, 3}, {40, 5, -6}}, {dtype = "i64"})
      local b = hero.tensor({7, 8, -9}, {dtype = "i64"})
      local ga, gb = dev(a), dev(b)
      same(ga + gb, a + b)
      same(ga * gb, a * b)
      same(ga - gb, a - b)
      same(ga:pow(3), a:pow(3))
      same(ga / gb, a / b) -- true division gives f32
      local f = randn({2, 3})
      same(dev(f) + ga, f + a) -- f32 + i64 -> f32
      same(dev(f:to("bf16")) + dev(f), f:to("bf16") + f) -- bf16 + f32 -> f32
      local x, gx = f:clone(), dev(f)
      x:add_(b:to("f32"))
      gx:add_(gb:to("f32"))
      same(gx, x)
      x:mul_(3)
      gx:mul_(3)
      same(gx, x)
      x:t():sub_(x:t()) -- self with itself
      gx:t():sub_(gx:t())
      same(gx, x)
    end)

    it("unary math, clamp, where and logical_not", function()
      local ops = {"neg", "abs", "sign", "square", "relu", "floor", "ceil", "round", "exp", "tanh", "sigmoid", "gelu",
                   "sin", "cos", "expm1"}
      local positive = {"log", "sqrt", "rsqrt", "reciprocal", "log1p"}
      for _, dt in ipairs {"f32", "f64", "bf16", "f16"} do
        local x = randn({5, 3}, dt)
        local gx = dev(x)
        for _, op in ipairs(ops) do same(gx[op](gx), x[op](x)) end
        local p = x:abs() + 0.1
        for _, op in ipairs(positive) do same(dev(p)[op](dev(p)), p[op](p)) end
        if dt == "f32" or dt == "f64" then same(hero.erf(gx), hero.erf(x)) end
        same(gx:clamp(-0.5, 0.5), x:clamp(-0.5, 0.5))
        -- PyTorch's edges: a NaN bound gives NaN everywhere, crossed bounds give max, sign(NaN) is 0
        local nan = 0 / 0
        local edges = hero.tensor({nan, -0.0, 0, -3, 2, 1 / 0, -1 / 0}):to(dt)
        for _, b in ipairs {{nan, 1}, {0, nan}, {nan, nan}, {1, -1}} do
          same(dev(edges):clamp(b[1], b[2]), edges:clamp(b[1], b[2]))
          same(gx:clamp(b[1], b[2]), x:clamp(b[1], b[2]))
        end
        same(dev(edges):clamp(nan), edges:clamp(nan))
        same(dev(edges):sign(), edges:sign())
        same(hero.where(gx:gt(0), gx, 0), hero.where(x:gt(0), x, 0))
        same(hero.logical_not(gx:gt(0)), hero.logical_not(x:gt(0)))
        local y, gy = x:clone(), gx:clone()
        y:exp_()
        gy:exp_()
        same(gy, y)
      end
      local i = hero.tensor({-3, 0, 4}, {dtype = "i64"})
      same(dev(i):neg(), i:neg())
      same(dev(i):abs(), i:abs())
      same(dev(i):exp(), i:exp()) -- integer input, f32 result
    end)

    it("remainder, fmod, floor_divide, atan2 and hypot for every dtype, numbers, in place", function()
      for _, dt in ipairs(FLOATS) do
        local a, b = randn({3, 4}, dt) * 4, randn({4}, dt)
        local ga, gb = dev(a), dev(b)
        for _, op in ipairs {"remainder", "fmod", "floor_divide", "atan2", "hypot"} do
          same(hero[op](ga, gb), hero[op](a, b))
          same(hero[op](ga:t(), 1.5), hero[op](a:t(), 1.5))
          same(hero[op](-2.5, gb), hero[op](-2.5, b))
          local y, gy = a:clone(), ga:clone()
          y[op .. "_"](y, b)
          gy[op .. "_"](gy, gb)
          same(gy, y)
        end
        -- the special values: zero divisors, signed zeros, infinities, NaN
        local s = hero.tensor({0, -0.0, 5, -5, 1 / 0, 0 / 0, 1, -1}, {dtype = dt})
        local d = hero.tensor({3, -3, 1 / 0, 1 / 0, 2, 1, 0, -0.0}, {dtype = dt})
        for _, op in ipairs {"remainder", "fmod", "floor_divide", "atan2", "hypot"} do
          same(hero[op](dev(s), dev(d)), hero[op](s, d))
        end
      end
      local a = hero.tensor({{-7, 7, -7, 7, 5, 0}, {9, -9, 100, -100, 1, -1}}, {dtype = "i64"})
      local b = hero.tensor({2, 2, -2, -2, 3, 4}, {dtype = "i64"})
      for _, op in ipairs {"remainder", "fmod", "floor_divide"} do
        same(hero[op](dev(a), dev(b)), hero[op](a, b))
        same(hero[op](dev(a:int()), dev(b:int())), hero[op](a:int(), b:int()))
        same(hero[op](dev(a), -3), hero[op](a, -3))
        same(hero[op](dev(a), 2.5), hero[op](a, 2.5)) -- a float number: f32
        same(hero[op](dev(hero.tensor({math.mininteger}, {dtype = "i64"})), -1),
          hero[op](hero.tensor({math.mininteger}, {dtype = "i64"}), -1))
        helper.assert_error_contains(function() hero[op](dev(a), dev(b:clone():fill_(0))) end,
          op .. ": integer division by zero")
        helper.assert_error_contains(function() hero[op](dev(a), 0) end, op .. ": integer division by zero")
      end
      same(hero.atan2(dev(a), dev(b)), hero.atan2(a, b)) -- integers: f32
    end)

    it("tan, asin, acos, atan, sinh, cosh, asinh, acosh, atanh, exp2 and frac for every float dtype", function()
      for _, dt in ipairs(FLOATS) do
        local x = randn({5, 3}, dt)
        local unit = x:tanh() * 0.9 -- inside (-1, 1)
        local above = x:abs() + 1.1 -- above 1
        local inputs = {tan = x, asin = unit, acos = unit, atan = x * 3, sinh = x, cosh = x, asinh = x * 5,
                        acosh = above, atanh = unit, exp2 = x * 4, frac = x * 7}
        for op, v in pairs(inputs) do
          same(dev(v)[op](dev(v)), v[op](v))
          same(hero[op](dev(v):t()), hero[op](v:t()))
        end
        local edges = hero.tensor({0, -0.0, 1, -1, 2, 1 / 0, -1 / 0, 0 / 0}, {dtype = dt})
        for op in pairs(inputs) do same(hero[op](dev(edges)), hero[op](edges)) end
      end
      local i = hero.tensor({-3, 0, 1, 4}, {dtype = "i64"})
      for _, op in ipairs {"atan", "sinh", "exp2"} do same(dev(i)[op](dev(i)), i[op](i)) end -- f32 results
    end)

    it("gradients of elementwise ops (with broadcasting)", function()
      for _, op in ipairs {"remainder", "fmod", "atan2", "hypot"} do
        check_grad(function(a, b) return hero[op](a, b) end, {randn {3, 4}, randn({4}) + 3})
        check_grad(function(a, b) return hero[op](a, b) end, {randn({2, 3}, "f64"), randn({2, 1}, "f64") - 3})
      end
      for _, op in ipairs {"tan", "atan", "sinh", "cosh", "asinh", "exp2", "frac"} do
        check_grad(function(a) return hero[op](a) end, {randn {4, 5}})
      end
      for _, op in ipairs {"asin", "acos", "atanh"} do
        check_grad(function(a) return hero[op](a) end, {randn({4, 5}):tanh() * 0.9})
      end
      check_grad(function(a) return a:acosh() end, {randn({4, 5}):abs() + 1.1})
      check_grad(function(a, b) return (a * b + a / (b:abs() + 1)):tanh() end, {randn {3, 4}, randn {4}})
      check_grad(function(a, b) return hero.maximum(a, b):sigmoid() - a:pow(2) end, {randn {2, 3}, randn {2, 1}})
      check_grad(function(a) return hero.gelu(a) end, {randn {4, 5}})
      check_grad(function(a) return hero.gelu(a) end, {randn({3}, "f64")})
      check_grad(function(a) return hero.erf(a) * 3 end, {randn {4, 5}})
      check_grad(function(a) return hero.erf(a) end, {randn({3}, "f64")})
      -- half GELU on the tape (autocast): exactly f32 GELU between two casts, forward and backward
      if ON_GPU then
        for _, dt in ipairs {"bf16", "f16"} do
          local x = dev(randn({70, 33}, dt))
          local seed = dev(randn({70, 33}, dt))
          local a, b = x:clone():requires_grad_(), x:clone():requires_grad_()
          local ya = hero.gelu(a)
          local yb = hero.gelu(b:to("f32")):to(dt)
          assert.tensor_near(ya:cpu(), yb:cpu(), {atol = 0, rtol = 0})
          ya:backward(seed)
          yb:backward(seed)
          assert.tensor_near(a.grad:cpu(), b.grad:cpu(), {atol = 0, rtol = 0})
        end
      end
    end)
  end)

  describe("reductions and softmax", function()
    it("sum, mean, max, min over one dim, several dims and everything", function()
      for _, dt in ipairs(FLOATS) do
        local x = randn({3, 4, 5}, dt)
        local g = dev(x)
        for _, d in ipairs {1, 2, 3, -1} do
          same(g:sum(d), x:sum(d))
          same(g:mean(d, true), x:mean(d, true))
          local gv, gi = g:max(d)
          local cv, ci = x:max(d)
          same(gv, cv)
          same(gi, ci)
          gv, gi = g:min(d, true)
          cv, ci = x:min(d, true)
          same(gv, cv)
          same(gi, ci)
          same(g:argmax(d), x:argmax(d))
        end
        same(g:sum(), x:sum())
        same(g:mean(), x:mean())
        same(g:max(), x:max())
        same(g:sum({1, 3}), x:sum({1, 3}))
        same(g:mean({2, 3}, true), x:mean({2, 3}, true))
      end
      -- few long rows: split over many blocks
      for _, dt in ipairs {"f32", "f64", "bf16"} do
        local tol = dt == "bf16" and helper.tolerance.half_sum_device or nil
        local x = randn({3, 200001}, dt)
        same(dev(x):sum(2), x:sum(2), tol)
        same(dev(x):mean(2), x:mean(2), tol)
        same(dev(x):sum(), x:sum(), tol)
        same(dev(x):sum(1), x:sum(1), tol)
        local long = randn({70, 65536}, dt) -- more rows than the split takes
        same(dev(long):sum(2), long:sum(2), tol)
        -- columns read in place: many row chunks, ragged column blocks, several outer indices
        local cols = randn({600, 48}, dt)
        same(dev(cols):sum(1), cols:sum(1), tol)
        same(dev(cols):mean(1, true), cols:mean(1, true), tol)
        local mid = randn({3, 700, 37}, dt)
        same(dev(mid):sum(2), mid:sum(2), tol)
        same(dev(mid):mean(1), mid:mean(1), tol)
        same(dev(mid):sum({1, 2}), mid:sum({1, 2}), tol)
        -- rows 16-byte aligned: a lane reads 4 (f32) or 8 (bf16) neighbouring columns at a time
        local aligned = randn({2, 300, 520}, dt)
        same(dev(aligned):sum(2), aligned:sum(2), tol)
        local bias_grad = randn({641, 1024}, dt)
        same(dev(bias_grad):sum(1), bias_grad:sum(1), tol)
        -- the 16-byte lanes sum each column in the element kernel's order: the same bits as the
        -- same values one element off 16-byte alignment (read an element at a time)
        if dt ~= "f64" then
          local flat = dev(hero.zeros({641 * 1024 + 1}, {dtype = dt}))
          local off = flat:narrow(1, 2, 641 * 1024):view(641, 1024)
          off:copy_(dev(bias_grad))
          assert.same(dev(bias_grad):sum(1):cpu():totable(), off:sum(1):cpu():totable())
        end
        local narrow_cols = randn({5, 300, 3}, dt) -- too few columns: transposed first
        same(dev(narrow_cols):sum(2), narrow_cols:sum(2), tol)
      end
      local ties = hero.tensor {{1, 3, 3, 0}, {0 / 0, 2, 0 / 0, 1}}
      local gv, gi = dev(ties):max(2)
      local cv, ci = ties:max(2)
      same(gv, cv)
      same(gi, ci)
      local i = hero.tensor({{1, 2}, {3, 4}}, {dtype = "i32"})
      same(dev(i):sum(1), i:sum(1)) -- integer sums are i64
      same(dev(hero.zeros(0, 3)):sum(1), hero.zeros(0, 3):sum(1))
    end)

    it("softmax and log_softmax along any dim, with gradients", function()
      for _, dt in ipairs(FLOATS) do
        local x = randn({2, 3, 7}, dt) * 3
        for _, d in ipairs {-1, 1, 2} do
          same(dev(x):softmax(d), x:softmax(d))
          same(dev(x):log_softmax(d), x:log_softmax(d))
        end
      end
      -- rows of every length: one warp per row up to 1024 elements (held in registers up to 32, 64
      -- and 128 elements), a block per row above
      for _, n in ipairs {1, 31, 32, 33, 64, 65, 128, 129, 1024, 1025, 3000} do
        for _, dt in ipairs(n <= 129 and {"f32", "bf16", "f64"} or {"f32", "bf16"}) do
          local x = randn({5, n}, dt) * 4
          same(dev(x):softmax(2), x:softmax(2))
          same(dev(x):log_softmax(2), x:log_softmax(2))
          local tol = dt == "bf16" and helper.tolerance.half_sum_device or nil
          same(dev(x):sum(2), x:sum(2), tol)
          same(dev(x):mean(2), x:mean(2), tol)
        end
      end
      local nan_row = hero.tensor {{1, 0 / 0, 2}, {1, 2, 3}}
      same(dev(nan_row):softmax(2), nan_row:softmax(2))
      -- masked scores: -inf entries, and a row that is -inf throughout (NaN, as on the CPU)
      local masked = hero.tensor {{-math.huge, 0, 1}, {-math.huge, -math.huge, -math.huge}, {2, -math.huge, 2}}
      for _, long in ipairs {false, true} do
        local x = long and masked:tile(1, 40) or masked -- rows of 3 and of 120
        same(dev(x):softmax(2), x:softmax(2))
        same(dev(x):log_softmax(2), x:log_softmax(2))
      end
      check_grad(function(a) return a:softmax(-1) end, {randn {4, 6}})
      check_grad(function(a) return a:log_softmax(1) end, {randn {4, 6}})
      check_grad(function(a) return a:sum(1) + a:mean(2, true):sum() end, {randn {3, 5}})
      check_grad(function(a) return a:max(2) end, {randn {3, 5}})
    end)
  end)

  describe("matrix products (cuBLAS)", function()
    it("matmul with batches, broadcasting, transposed views and vectors", function()
      for _, dt in ipairs(FLOATS) do
        local a, b = randn({2, 1, 3, 4}, dt), randn({5, 4, 2}, dt)
        same(hero.matmul(dev(a), dev(b)), hero.matmul(a, b))
        local m, n = randn({6, 4}, dt), randn({6, 5}, dt)
        same(dev(m):t():matmul(dev(n)), m:t():matmul(n))
        same(dev(n):t():matmul(dev(m)), n:t():matmul(m))
        local v = randn({4}, dt)
        same(dev(m):matmul(dev(v)), m:matmul(v))
        same(dev(v):matmul(dev(m):t()), v:matmul(m:t()))
        same(dev(v):dot(dev(v)), v:dot(v))
        local x, y = randn({3, 2, 5}, dt), randn({3, 5, 4}, dt)
        same(hero.bmm(dev(x), dev(y)), hero.bmm(x, y))
        same(hero.bmm(dev(x):narrow(3, 2, 3), dev(y):narrow(2, 1, 3)), hero.bmm(x:narrow(3, 2, 3), y:narrow(2, 1, 3)))
        local c = randn({5}, dt)
        same(hero.addmm(dev(c), dev(m):t(), dev(n), 0.5, 2), hero.addmm(c, m:t(), n, 0.5, 2))
        same(hero.matmul(dev(hero.zeros(3, 0, {dtype = dt})), dev(hero.zeros(0, 2, {dtype = dt}))),
          hero.zeros(3, 2, {dtype = dt}))
      end
    end)

    it("alpha = 0 gives beta * c without reading A @ B (BLAS's convention, as the CPU)", function()
      -- an infinity in A: cuBLAS's 0 * inf would be NaN; the CPU scales c alone (cpu/matmul.c)
      for _, dt in ipairs {"f32", "f64"} do
        local m = randn({6, 4}, dt)
        m[2][3] = 1 / 0
        local n, c, bias = randn({4, 5}, dt), randn({6, 5}, dt), randn({5}, dt)
        local exact = {atol = 0, rtol = 0}
        same(hero.addmm(dev(c), dev(m), dev(n), 0.5, 0), hero.addmm(c, m, n, 0.5, 0), exact)
        same(hero.addmm(dev(c), dev(m), dev(n), 1, 0), hero.addmm(c, m, n, 1, 0), exact)
        same(hero.addmm(dev(bias), dev(m), dev(n), 1, 0), hero.addmm(bias, m, n, 1, 0), exact) -- a bias row
        local nan_c = hero.full({6, 5}, 0 / 0, {dtype = dt})
        same(hero.addmm(dev(nan_c), dev(m), dev(n), 0, 0), hero.addmm(nan_c, m, n, 0, 0), exact) -- zeros
      end
    end)

    it("linear with and without bias, and gradients", function()
      for _, dt in ipairs(FLOATS) do
        local x, w, b = randn({2, 3, 8}, dt), randn({5, 8}, dt), randn({5}, dt)
        same(hero.linear(dev(x), dev(w), dev(b)), hero.linear(x, w, b))
        same(hero.linear(dev(x), dev(w)), hero.linear(x, w))
      end
      check_grad(function(x, w, b) return hero.linear(x, w, b) end, {randn {2, 3, 8}, randn {5, 8}, randn {5}})
      check_grad(function(a, b) return hero.matmul(a, b) end, {randn {2, 1, 3, 4}, randn {5, 4, 2}})
      check_grad(function(a, b) return hero.bmm(a, b:transpose(2, 3)) end, {randn {3, 2, 5}, randn {3, 4, 5}})
    end)

    it("folds a shared right operand over row blocks into one product, and the cases that cannot fold", function()
      for _, dt in ipairs {"f32", "bf16"} do
        local a, w = randn({4, 3, 5}, dt), randn({5, 6}, dt)
        same(hero.matmul(dev(a), dev(w)), hero.matmul(a, w)) -- folds into [12, 5] @ [5, 6]
        same(hero.matmul(dev(a):narrow(2, 1, 2), dev(w)), hero.matmul(a:narrow(2, 1, 2), w)) -- gaps: no fold
        local at = randn({4, 5, 3}, dt)
        same(hero.matmul(dev(at):transpose(2, 3), dev(w)), hero.matmul(at:transpose(2, 3), w)) -- column-major blocks
        local wb = randn({4, 5, 6}, dt)
        same(hero.matmul(dev(a), dev(wb)), hero.matmul(a, wb)) -- a right operand per block: batched
        local x, wl, bias = randn({2, 7, 4}, dt), randn({6, 4}, dt), randn({6}, dt)
        same(hero.linear(dev(x), dev(wl), dev(bias)), hero.linear(x, wl, bias))
      end
      check_grad(function(x, m) return hero.matmul(x, m) end, {randn {4, 3, 5}, randn {5, 6}})
      check_grad(function(x, m) return hero.matmul(x:narrow(2, 2, 2), m) end, {randn {4, 3, 5}, randn {5, 6}})
    end)

    it("adds a linear layer's bias in the product (cuBLASLt) and falls back where it cannot", function()
      -- small integers: every product and sum is exact in f32, so the one rounding into the dtype is
      -- all that can differ, and the device must give exactly the CPU's result
      local function ints(size, dt) return hero.randint(-3, 4, size):to(dt) end
      for _, dt in ipairs(FLOATS) do
        local exact = {atol = 0, rtol = 0}
        local x, w = ints({3, 37, 96}, dt), ints({200, 96}, dt)
        local long = ints({203}, dt)
        local b = long:narrow(1, 1, 200):clone()
        same(hero.linear(dev(x), dev(w), dev(b)), hero.linear(x, w, b), exact)
        -- a bias whose storage starts 2 elements in (less aligned), and a strided one
        local gl = dev(long)
        same(hero.linear(dev(x), dev(w), gl:narrow(1, 3, 200)), hero.linear(x, w, long:narrow(1, 3, 200)), exact)
        local wide = ints({200, 2}, dt)
        same(hero.linear(dev(x), dev(w), dev(wide):select(2, 1)), hero.linear(x, w, wide:select(2, 1)), exact)
        -- input rows that do not fold into one product, a vector input, alpha other than 1
        same(hero.linear(dev(x):narrow(2, 2, 30), dev(w), dev(b)), hero.linear(x:narrow(2, 2, 30), w, b), exact)
        same(hero.linear(dev(x)[1][1], dev(w), dev(b)), hero.linear(x[1][1], w, b), exact)
        local m2 = ints({11, 96}, dt)
        same(hero.addmm(dev(b), dev(m2), dev(w):t(), 1, 2), hero.addmm(b, m2, w:t(), 1, 2), exact)
      end
      check_grad(function(x, w, b) return hero.linear(x, w, b) end, {randn {4, 9, 16}, randn {24, 16}, randn {24}})
    end)

    it("reuses the bias product's plan for a shape with other operands and biases each call", function()
      -- the kernel chosen for a shape is kept; each call must still read its own bias and operands
      local function ints(size, dt) return hero.randint(-3, 4, size):to(dt) end
      for _, dt in ipairs {"f32", "bf16"} do
        local exact = {atol = 0, rtol = 0}
        for round = 1, 3 do
          for _, shape in ipairs {{20, 33, 64}, {660, 64}, {7, 64}} do
            local x, w, b = ints(shape, dt), ints({48, 64}, dt), ints({48}, dt)
            same(hero.linear(dev(x), dev(w), dev(b)), hero.linear(x, w, b), exact)
            local b2 = ints({48}, dt) + round
            same(hero.linear(dev(x), dev(w), dev(b2)), hero.linear(x, w, b2), exact)
          end
        end
      end
    end)

    it("multiplies the heads of permuted views in place (a list of matrix pointers)", function()
      local B, L, heads, dh = 3, 5, 4, 6
      for _, dt in ipairs(FLOATS) do
        local q, k = randn({B, L, heads * dh}, dt), randn({B, L, heads * dh}, dt)
        local function split(t) return t:view(B, L, heads, dh):permute(1, 3, 2, 4) end
        local function split_t(t) return t:view(B, L, heads, dh):permute(1, 3, 4, 2) end
        same(hero.matmul(split(dev(q)), split_t(dev(k))), hero.matmul(split(q), split_t(k)))
        local p = randn({B, heads, L, L}, dt)
        same(hero.matmul(dev(p), split(dev(k))), hero.matmul(p, split(k)))
        -- a broadcast batch dim next to a walked one
        local a, w = randn({2, 1, 3, 4}, dt), randn({5, 4, 2}, dt)
        same(hero.matmul(dev(a), dev(w)), hero.matmul(a, w))
      end
      check_grad(function(q, k)
        return hero.matmul(q:view(2, 5, 3, 4):permute(1, 3, 2, 4), k:view(2, 5, 3, 4):permute(1, 3, 4, 2))
      end, {randn {2, 5, 12}, randn {2, 5, 12}})
    end)

    it("keeps f32 products in full f32 unless TF32 is allowed", function()
      assert.is_false(hero.cuda.allow_tf32())
      -- 1 + 2^-20 is exact in f32 and lost by TF32's 10-bit mantissa
      local a = hero.full({1, 1}, 1 + 2 ^ -20)
      same(hero.matmul(dev(a), dev(hero.ones(1, 1))), a)
    end)
  end)

  describe("fused nn ops", function()
    it("layer_norm forward and backward", function()
      for _, dt in ipairs {"f32", "f64"} do
        local x, w, b = randn({4, 3, 16}, dt), randn({16}, dt), randn({16}, dt)
        same(hero.layer_norm(dev(x), dev(w), dev(b), 1e-5), hero.layer_norm(x, w, b, 1e-5))
        same(hero.layer_norm(dev(x), nil, nil, 1e-12), hero.layer_norm(x, nil, nil, 1e-12))
      end
      check_grad(function(x, w, b) return hero.layer_norm(x, w, b, 1e-5) end, {randn {6, 16}, randn {16}, randn {16}})
      check_grad(function(x) return hero.layer_norm(x, nil, nil, 1e-5) end, {randn({3, 700}, "f64")})
      -- rows that fill a warp's registers partly, exactly (HERO's 768), and past them (a block per row)
      for _, cols in ipairs {33, 768, 1500} do
        check_grad(function(x, w, b) return hero.layer_norm(x, w, b, 1e-12) end,
                   {randn {5, cols}, randn {cols}, randn {cols}})
      end
    end)

    it("cross_entropy of half logits under autocast: the f32 loss of their f32 copy, bit for bit", function()
      local target = dev(hero.tensor({0, 3, 30, 1, -100, 5, 6, 7, 36}, {dtype = "i64"}))
      for _, dt in ipairs {"bf16", "f16"} do
        local full = dev((randn {9, 40} * 3):to(dt))
        for _, cols in ipairs {40, 37} do -- all classes, and a narrowed vocabulary (strided rows)
          for _, opts in ipairs {{label_smoothing = 0.1}, {reduction = "none"}} do
            local function run(widen)
              local leaf = full:detach():requires_grad_()
              local logits = leaf:narrow(2, 1, cols)
              local loss = hero.amp.autocast("bf16", function()
                return hero.cross_entropy(widen and logits or logits:to("f32"), target, opts)
              end)
              loss:sum():backward()
              return {loss, leaf.grad}
            end
            local fused, composed = run(true), run(false)
            assert.equal("f32", fused[1]:dtype())
            assert.equal(dt, fused[2]:dtype())
            for i = 1, 2 do assert.same(composed[i]:cpu():totable(), fused[i]:cpu():totable()) end
            -- the classes read in place from the padded rows ({classes =}): the same loss and gradient
            local leaf = full:detach():requires_grad_()
            local with = {classes = cols}
            for k, v in pairs(opts) do with[k] = v end
            local loss = hero.amp.autocast("bf16", function() return hero.core.cross_entropy(leaf, target, with) end)
            loss:sum():backward()
            assert.same(composed[1]:cpu():totable(), loss:cpu():totable())
            assert.same(composed[2]:cpu():totable(), leaf.grad:cpu():totable())
          end
        end
      end
      -- rows of the MLM head's kind: many units of 8 columns per thread, a tail, padded columns
      local wide = dev((randn {6, 2056} * 3):to("bf16"))
      local t6 = dev(hero.tensor({0, 2052, 7, -100, 1000, 2047}, {dtype = "i64"}))
      local function wide_run(classes)
        local leaf = wide:detach():requires_grad_()
        local loss = hero.amp.autocast("bf16", function()
          if classes then return hero.core.cross_entropy(leaf, t6, {classes = 2053, reduction = "none"}) end
          return hero.core.cross_entropy(leaf:narrow(2, 1, 2053):to("f32"), t6, {reduction = "none"})
        end)
        loss:sum():backward()
        return {loss:cpu():totable(), leaf.grad:cpu():totable()}
      end
      assert.same(wide_run(false), wide_run(true))
    end)

    it("layer_norm of a half tensor under autocast: the f32 layer norm of its f32 copy, bit for bit", function()
      for _, dt in ipairs {"bf16", "f16"} do
        local x = dev(randn({7, 768}):to(dt))
        local w, b = dev(randn {768}), dev(randn {768})
        local seed = dev(randn {7, 768})
        local function run(widen)
          local xl = x:detach():requires_grad_()
          local wl, bl = w:detach():requires_grad_(), b:detach():requires_grad_()
          local y = hero.amp.autocast("bf16", function()
            return hero.layer_norm(widen and xl or xl:to("f32"), wl, bl, 1e-12)
          end)
          y:backward(seed)
          return {y, xl.grad, wl.grad, bl.grad}
        end
        local fused, composed = run(true), run(false)
        assert.equal("f32", fused[1]:dtype())
        assert.equal(dt, fused[2]:dtype())
        for i = 1, 4 do assert.same(composed[i]:cpu():totable(), fused[i]:cpu():totable()) end
      end
    end)

    -- the end of BERT's blocks as one node: a half projection under autocast read in place, the sum
    -- written once; against the dropout, add and layer_norm kernels on the same device
    it("dropout_add_layer_norm: the three ops' values, draws and gradients bit for bit, x of every dtype", function()
      local F = hero.nn.functional
      local dtypes = ON_GPU and {"f32", "bf16", "f16"} or {"f32"}
      for _, dt in ipairs(dtypes) do
        -- HERO's rows (the warp kernels), and rows of 37 read at an offset of one row (no vector
        -- loads; an element count that is not a whole number of counter blocks)
        for _, shape in ipairs {{6, 768}, {5, 37}} do
          local rows, cols = shape[1], shape[2]
          local xbase = dev(randn({rows + 1, cols}):to(dt))
          local r0, w0, b0, up = dev(randn(shape)), dev(randn {cols}), dev(randn {cols}), dev(randn(shape))
          for _, o in ipairs {{dropout = 0.1, training = true}, {dropout = 0.1, training = false}, {}} do
            local function run(fused)
              local xl = xbase:detach():requires_grad_()
              local x = xl:narrow(1, 2, rows)
              local r, w, b = r0:detach():requires_grad_(), w0:detach():requires_grad_(), b0:detach():requires_grad_()
              local g = hero.Generator(41)
              local opts = {dropout = o.dropout, training = o.training, generator = g}
              local y
              if fused then
                y = F.dropout_add_layer_norm(x, r, w, b, 1e-12, opts)
              else
                local d = hero.dropout(x, o.dropout or 0, o.training ~= false, {generator = g})
                y = hero.layer_norm(d + r, w, b, 1e-12)
              end
              y:backward(up)
              return {y, xl.grad, r.grad, w.grad, b.grad, hero.rand({3}, {generator = g})}
            end
            local fused, composed = run(true), run(false)
            assert.equal("f32", fused[1]:dtype())
            assert.equal(dt, fused[2]:dtype())
            for i = 1, 6 do assert.same(composed[i]:cpu():totable(), fused[i]:cpu():totable()) end
          end
        end
      end
      -- against the CPU: the same mask for the seed, the layer norm within tolerance
      check_grad(function(x, r, w, b)
        local opts = {dropout = 0.2, training = true, generator = hero.Generator(8)}
        return F.dropout_add_layer_norm(x, r, w, b, 1e-12, opts)
      end, {randn {6, 768}, randn {6, 768}, randn {768}, randn {768}})
      -- a transformer layer takes it (stock dropout and LayerNorm): the same as the three ops there
      local layer = hero.nn.TransformerLayer {hidden = 64, heads = 4, intermediate = 96, dropout = 0.1}
      if ON_GPU then layer:to(DEVICE) end
      local x = dev(randn {3, 9, 64})
      local function layer_run(split)
        for _, block in ipairs {layer.attention.output, layer.output} do
          block.dropout.forward = split and function(m, t) return hero.dropout(t, m.p, m.training) end or nil
        end
        layer:zero_grad()
        hero.manual_seed(12)
        local y = hero.amp.autocast("bf16", function() return layer:forward(x) end)
        y:sum():backward()
        return {y, layer.output.LayerNorm.weight.grad, layer.attention.self.query.weight.grad}
      end
      local one, three = layer_run(false), layer_run(true)
      for i = 1, 3 do assert.same(three[i]:cpu():totable(), one[i]:cpu():totable()) end
    end)

    it("embedding forward and backward (repeated rows, padding)", function()
      local w = randn {10, 6}
      local idx = hero.tensor({{1, 3, 3}, {0, 9, 1}}, {dtype = "i64"})
      same(hero.embedding(dev(w), dev(idx)), hero.embedding(w, idx))
      same(hero.embedding(dev(w), dev(idx:to("i32")), 3), hero.embedding(w, idx:to("i32"), 3))
      local cw, gw = w:clone():requires_grad_(), dev(w):requires_grad_()
      local seed = randn {2, 3, 6}
      hero.embedding(cw, idx, 3):backward(seed)
      hero.embedding(gw, dev(idx), 3):backward(dev(seed))
      same(gw.grad, cw.grad)
      hero.embedding(cw, idx):backward(seed) -- accumulates in place into the used rows
      hero.embedding(gw, dev(idx)):backward(dev(seed))
      same(gw.grad, cw.grad)
      local bad = dev(hero.tensor({2, 10}, {dtype = "i64"}))
      helper.assert_error_contains(function() return hero.embedding(dev(w), bad) end, "embedding",
        "index 10 at position 2")
    end)

    it("cross_entropy forward and backward (ignore_index, smoothing, reductions)", function()
      local logits = randn({6, 5}, "f32") * 2
      local target = hero.tensor({0, 4, -100, 2, 2, 1}, {dtype = "i64"})
      for _, red in ipairs {"mean", "sum", "none"} do
        for _, s in ipairs {0, 0.1} do
          local opts = {reduction = red, label_smoothing = s}
          same(hero.cross_entropy(dev(logits), dev(target), opts), hero.cross_entropy(logits, target, opts))
          check_grad(function(x) return hero.cross_entropy(x, target:to {device = x:device()}, opts) end, {logits})
        end
      end
      local t4 = hero.tensor({6, 0, 3, 1}, {dtype = "i32"})
      check_grad(function(x) return hero.cross_entropy(x:narrow(2, 1, 7), t4:to {device = x:device()}) end,
        {randn({4, 9}, "f64")}) -- strided rows (a narrowed vocabulary), i32 targets
      -- the classes in place ({classes =}), rows read 16 bytes at a time or one element at a time
      for _, shape in ipairs {{4, 9}, {4, 24}, {3, 1030}} do
        for _, dt in ipairs {"f32", "f64"} do
          check_grad(function(x) return hero.core.cross_entropy(x, t4:narrow(1, 1, shape[1]):to {device = x:device()},
            {classes = 7, reduction = "sum", label_smoothing = 0.1}) end, {randn(shape, dt)})
        end
      end
      helper.assert_error_contains(function()
        return hero.cross_entropy(dev(logits), dev(hero.tensor({0, 5, 0, 0, 0, 0}, {dtype = "i64"})))
      end, "cross_entropy", "target 5 at position 2")
    end)

    it("dropout draws exactly the CPU's mask for a seed", function()
      local x = hero.ones(7, 33)
      hero.manual_seed(99)
      local c = hero.dropout(x, 0.3)
      local after_cpu = hero.default_generator():get_state()
      hero.manual_seed(99)
      local g = hero.dropout(dev(x), 0.3)
      assert.same(c:totable(), g:totable())
      assert.same(after_cpu, hero.default_generator():get_state()) -- the stream advanced by as many blocks
      hero.manual_seed(5)
      local m1 = hero.dropout_mask({1000}, 0.5)
      hero.manual_seed(5)
      local m2 = dev(hero.zeros(1000)):bernoulli_(0.5)
      assert.same(m1:to("bool"):totable(), hero.logical_not(m2:to("bool")):totable())
      hero.manual_seed(3)
      local u1 = hero.rand(1001)
      hero.manual_seed(3)
      local u2 = hero.rand(1001, {device = DEVICE})
      assert.same(u1:totable(), u2:totable())
      hero.manual_seed(3)
      local d1 = hero.rand(1001, {dtype = "f64"})
      hero.manual_seed(3)
      local d2 = hero.rand(1001, {dtype = "f64", device = DEVICE})
      assert.same(d1:totable(), d2:totable())
      -- uniform_(a, b) with a != 0 in every float dtype (a + (b - a) * u one fused multiply-add on
      -- both; the halfs on their own grid), contiguous and strided, and the stream position after
      for _, dt in ipairs(FLOATS) do
        for _, ab in ipairs {{-0.1, 0.1}, {-2, 6}, {1 / 3, 0.7}} do
          hero.manual_seed(13)
          local cu = hero.empty({3001}, {dtype = dt}):uniform_(ab[1], ab[2])
          local state_cpu = hero.default_generator():get_state()
          hero.manual_seed(13)
          local gu = hero.empty({3001}, {dtype = dt, device = DEVICE}):uniform_(ab[1], ab[2])
          assert.same(cu:totable(), gu:totable())
          assert.same(state_cpu, hero.default_generator():get_state())
          hero.manual_seed(14)
          local cs = hero.zeros(40, 9, {dtype = dt})
          cs:narrow(2, 2, 5):t():uniform_(ab[1], ab[2])
          hero.manual_seed(14)
          local gs = hero.zeros(40, 9, {dtype = dt, device = DEVICE})
          gs:narrow(2, 2, 5):t():uniform_(ab[1], ab[2])
          assert.same(cs:totable(), gs:totable())
        end
        hero.manual_seed(15)
        local r1 = hero.rand({4099}, {dtype = dt})
        hero.manual_seed(15)
        local r2 = hero.rand({4099}, {dtype = dt, device = DEVICE})
        assert.same(r1:totable(), r2:totable())
        assert.is_true(r2:max():item() < 1) -- the halfs' grid never reaches 1
      end
      hero.manual_seed(7)
      check_grad(function(a)
        hero.manual_seed(7)
        return hero.dropout(a, 0.25)
      end, {randn {5, 9}})
      -- the backward draws the forward's mask again (the node keeps no noise tensor): of ones, the
      -- output is the noise, and the gradient is the upstream gradient times it, in every float
      -- dtype, for counts that are and are not whole vectors of 4 (the vector kernel's tail)
      local dtypes = DEVICE == "cpu" and {"f32", "f64"} or FLOATS
      for _, dt in ipairs(dtypes) do
        for _, n in ipairs {37 * 21, 4096} do
          local ones = dev(hero.ones({n + 1}, {dtype = dt})):narrow(1, 2, n):detach():requires_grad_()
          hero.manual_seed(21)
          local y = hero.dropout(ones, 0.3)
          local seed = dev(randn {n}):to(dt)
          y:backward(seed)
          assert.equal(dt, ones.grad:dtype())
          assert.same((seed * y:detach()):cpu():totable(), ones.grad:cpu():totable())
        end
      end
    end)

    it("normal_, randint, randperm and bernoulli_ with probabilities give the CPU's draws for a seed", function()
      --- runs make() from seed on the CPU and on the device: same values, same stream position after
      local function same_draws(seed, make)
        hero.manual_seed(seed)
        local c = make("cpu")
        local after_cpu = hero.default_generator():get_state()
        hero.manual_seed(seed)
        local g = make(DEVICE)
        assert.equal(DEVICE, g:device())
        assert.equal(c:dtype(), g:dtype())
        assert.same(c:totable(), g:cpu():totable())
        assert.same(after_cpu, hero.default_generator():get_state())
      end
      for _, dt in ipairs(FLOATS) do
        same_draws(41, function(d) return hero.randn({37, 5}, {dtype = dt, device = d}) end)
        same_draws(42, function(d) return hero.zeros(6, 9, {dtype = dt, device = d}):normal_(0.5, 2) end)
        -- a strided view: the draws land in the view's elements, in its order
        same_draws(43, function(d)
          local t = hero.zeros(8, 6, {dtype = dt, device = d})
          t:narrow(2, 2, 3):t():normal_(-1, 0.25)
          return t
        end)
      end
      same_draws(44, function(d) return hero.randint(-5, 7, {300}, {device = d}) end)
      same_draws(45, function(d) return hero.randint(10, {4, 4}, {dtype = "i32", device = d}) end)
      same_draws(46, function(d) return hero.zeros(50, {device = d}):random_(3, 9) end)
      same_draws(47, function(d) return hero.randperm(1000, {device = d}) end)
      same_draws(48, function(d) return hero.randperm(7, {dtype = "f32", device = d}) end)
      local probs = hero.rand(40, 3)
      same_draws(49, function(d) return hero.bernoulli(probs:to {device = d}) end)
      same_draws(50, function(d)
        return hero.zeros(40, 3, {dtype = "u8", device = d}):bernoulli_(probs:narrow(2, 1, 1):to {device = d})
      end)
      -- a failed fill leaves the generator where it was
      hero.manual_seed(51)
      local before = hero.default_generator():get_state()
      local ints = hero.zeros(4, {dtype = "u8", device = DEVICE})
      helper.assert_error_contains(function() return ints:random_(0, 300) end, "random_", "do not fit dtype u8")
      local bad = hero.tensor({0.5, 1.5}):to {device = DEVICE}
      helper.assert_error_contains(function() return hero.bernoulli(bad) end, "bernoulli", "got 1.5 at flat index 1")
      assert.same(before, hero.default_generator():get_state())
    end)

    it("attention with masks and dropout, forward and backward", function()
      local B, Lq, Lk, H, heads = 2, 3, 5, 8, 2
      local q, k, v = randn {B, Lq, H}, randn {B, Lk, H}, randn {B, Lk, H}
      local mask = hero.zeros(B, Lk)
      mask[2]:narrow(1, 4, 2):fill_(-10000)
      local mask3 = randn {B, Lq, Lk}
      for _, m in ipairs {mask, mask3} do
        same(hero.attention(dev(q), dev(k), dev(v), dev(m), heads), hero.attention(q, k, v, m, heads))
        check_grad(function(a, b, c) return hero.attention(a, b, c, m:to {device = a:device()}, heads) end, {q, k, v})
      end
      check_grad(function(a, b, c)
        hero.manual_seed(11)
        return hero.attention(a, b, c, nil, heads, {dropout = 0.2, training = true})
      end, {q, k, v})
    end)

    -- Sequences up to 64 run as one kernel per pass on a GPU, longer ones as composed ops: both
    -- against the CPU, with HERO's 64-wide heads, masks, the dropout stream and every gradient.
    it("attention on HERO's shapes and on longer sequences, f32 and half, dropout included", function()
      local heads
      --- output and input gradients of attention on `device` in dtype dt (inputs and upstream
      -- gradient rounded to dt first), as f32 CPU tensors
      local function run(device, dt, q, k, v, m, seed, opts)
        local leaves = {}
        for i, t in ipairs {q, k, v} do leaves[i] = t:to {device = device, dtype = dt}:detach():requires_grad_() end
        hero.manual_seed(21)
        local y = hero.attention(leaves[1], leaves[2], leaves[3], m and m:to {device = device, dtype = dt}, heads, opts)
        y:backward(seed:to {device = device, dtype = dt})
        local r = {y:detach():to {device = "cpu", dtype = "f32"}}
        for i = 1, 3 do r[i + 1] = leaves[i].grad:to {device = "cpu", dtype = "f32"} end
        return r
      end
      -- {Lq, Lk, H, heads}: the clips' and the videos' self-attention (64-wide heads), a longer
      -- sequence (composed path), queries and keys of different lengths, 20-wide heads (half
      -- inputs on the CUDA cores)
      for _, case in ipairs {{33, 33, 128, 2}, {60, 60, 128, 2}, {70, 70, 128, 2}, {20, 45, 128, 2}, {33, 33, 40, 2}} do
        local B, Lq, Lk, H = 3, case[1], case[2], case[3]
        heads = case[4]
        local q, k, v = randn {B, Lq, H}, randn {B, Lk, H}, randn {B, Lk, H}
        local mask = hero.zeros(B, Lk)
        mask[2]:narrow(1, Lk - 4, 5):fill_(-10000)
        local seed = randn {B, Lq, H}
        for _, opts in ipairs {{}, {dropout = 0.1, training = true}} do
          -- Half dtypes on the one-kernel path (tensor cores; the composed path rounds the scores
          -- between ops). f16 rounds P' and dS to f16 as operands of the next products, several
          -- roundings in a row, so it is held to bf16's tolerance: a check of its instruction path.
          for _, dt in ipairs((ON_GPU and math.max(Lq, Lk) <= 64) and {"f32", "bf16", "f16"} or {"f32"}) do
            local r = function(t) return dt == "f32" and t or t:to(dt):to("f32") end
            local want = run("cpu", "f32", r(q), r(k), r(v), mask, r(seed), opts)
            local got = run(DEVICE, dt, q, k, v, mask, seed, opts)
            local tol = helper.tolerance[dt == "f16" and "attention_f16_device" or dt]
            for i = 1, 4 do assert.tensor_near(got[i], want[i], tol) end
          end
        end
      end
    end)

    it("attention of q, k and v side by side: the split attention's values and gradients on the device", function()
      -- the packed kernels read the three column blocks in place and write one gradient; on the
      -- same device they must give exactly what the attention of the three column views gives
      for _, case in ipairs {{33, 128, 2}, {60, 768, 12}, {70, 128, 2}, {33, 40, 2}} do
        local B, L, H, heads = 3, case[1], case[2], case[3]
        local mask = hero.zeros(B, L)
        mask[2]:narrow(1, L - 4, 5):fill_(-10000)
        local base, up = randn {B, L, 3 * H}, randn {B, L, H}
        for _, dt in ipairs(ON_GPU and {"f32", "bf16", "f16"} or {"f32"}) do
          for _, opts in ipairs {{}, {dropout = 0.1, training = true}} do
            local packed = dev(base):to(dt):detach():requires_grad_()
            local split = dev(base):to(dt):detach():requires_grad_()
            local m = dev(mask):to(dt)
            hero.manual_seed(7)
            local y1 = hero.attention_packed(packed, m, heads, opts)
            hero.manual_seed(7)
            local y2 = hero.attention(split:narrow(3, 1, H), split:narrow(3, H + 1, H),
              split:narrow(3, 2 * H + 1, H), m, heads, opts)
            assert.same(y2:to("f32"):totable(), y1:to("f32"):totable())
            y1:backward(dev(up):to(dt))
            y2:backward(dev(up):to(dt))
            assert.same(split.grad:to("f32"):totable(), packed.grad:to("f32"):totable())
          end
        end
      end
      -- and a transformer layer projecting the three as one product gives the CPU's values
      local layer = hero.nn.TransformerLayer {hidden = 64, heads = 4, intermediate = 96, dropout = 0,
                                              generator = hero.Generator(8)}
      local x, mask = randn {4, 33, 64}, hero.ones(4, 33)
      mask[3]:narrow(1, 20, 14):fill_(0)
      local want = layer:forward(x, mask)
      layer:to(DEVICE)
      layer.attention.self.pack_projections = true
      same(layer:forward(dev(x), dev(mask)), want, helper.tolerance.layer_f32_device)
      layer:to("cpu")
    end)

    it("AdamW, Adam, Adamax and gradient clipping match the CPU", function()
      for _, kind in ipairs {"AdamW", "Adam", "Adamax"} do
        for _, dt in ipairs {"f32", "f64"} do
          local function run(device)
            hero.manual_seed(2)
            local p1, p2 = randn({4, 3}, dt), randn({5}, dt)
            local params = {{"a", p1:to {device = device}:requires_grad_()},
                            {"b", p2:to {device = device}:requires_grad_()}}
            local opt = hero.optim[kind](params, {lr = 1e-2, weight_decay = 0.1, no_decay = {"b"}})
            for step = 1, 3 do
              hero.manual_seed(100 + step)
              params[1][2].grad = randn({4, 3}, dt):to {device = device}
              params[2][2].grad = randn({5}, dt):to {device = device}
              if step == 2 then params[1][2].grad:narrow(1, 1, 1):zero_() end -- Adamax: |g| + eps against the max
              local norm = hero.optim.clip_grad_norm({params[1][2], params[2][2]}, 1.0)
              opt:step()
              params.norm = norm
            end
            return params
          end
          local c, g = run("cpu"), run(DEVICE)
          assert.near(c.norm, g.norm, 1e-5 * c.norm)
          same(g[1][2]:detach(), c[1][2]:detach())
          same(g[2][2]:detach(), c[2][2]:detach())
        end
      end
    end)

    it("the global gradient norm over many tensors of every size, dtype and layout", function()
      hero.manual_seed(5)
      local cpu = {}
      for _, n in ipairs {0, 1, 8191, 8192, 8193, 70001} do
        for _, dt in ipairs {"f32", "f64", "bf16"} do cpu[#cpu + 1] = randn({n}, dt) end
      end
      cpu[#cpu + 1] = randn {300, 41}:t()              -- not contiguous
      cpu[#cpu + 1] = randn({50272, 16}, "f32") * 1e-3 -- a long one, many chunks
      local on_dev = {}
      for i, t in ipairs(cpu) do on_dev[i] = dev(t) end
      local want = hero.core.global_norm(cpu)
      assert.near(want, hero.core.global_norm(on_dev), 1e-12 * want)
      -- a list mixing host and device tensors
      local mixed = {cpu[1], on_dev[2], cpu[3], on_dev[#on_dev]}
      local expect = hero.core.global_norm {cpu[1], cpu[2], cpu[3], cpu[#cpu]}
      assert.near(expect, hero.core.global_norm(mixed), 1e-12 * expect)
      assert.equal(0, hero.core.global_norm {dev(hero.zeros(0))})
    end)

    it("GradScaler skips steps with overflowed device gradients", function()
      local scaler = hero.amp.GradScaler {init_scale = 16}
      local w = dev(hero.ones(3)):requires_grad_()
      local stepped = 0
      local opt = {entries = {{name = "w", param = w}}, step = function() stepped = stepped + 1 end}
      scaler:scale((w * 2):sum()):backward()
      assert.is_true(scaler:step(opt))
      same(w.grad, hero.full({3}, 2))
      scaler:update()
      w.grad = dev(hero.tensor {1, 1 / 0, 2})
      assert.is_false(scaler:step(opt))
      scaler:update()
      assert.equal(8, scaler:get_scale())
      assert.equal(1, stepped)
    end)
  end)

  describe("indexing, joining and the ops that run on the host", function()
    local function i64(v) return hero.tensor(v, {dtype = "i64"}) end

    it("index_select, gather, scatter(_add), index_add_/index_copy_ for every dtype, with gradients", function()
      for _, dt in ipairs {"f32", "f64", "bf16", "f16", "i64", "i32", "u8"} do
        local x = (hero.randn({4, 5, 3}) * 4):to(dt)
        same(dev(x):index_select(1, dev(i64 {2, 0, 2})), x:index_select(1, i64 {2, 0, 2}))
        same(dev(x):index_select(3, dev(i64 {1})), x:index_select(3, i64 {1}))
        same(dev(x):transpose(1, 2):index_select(2, dev(i64 {3, 1})), x:transpose(1, 2):index_select(2, i64 {3, 1}))
        local gi = i64 {{{0, 1, 2}, {3, 3, 0}}, {{1, 1, 1}, {2, 0, 4}}}
        same(dev(x):narrow(1, 1, 2):gather(2, dev(gi)), x:narrow(1, 1, 2):gather(2, gi))
        local src = (hero.randn({4, 2, 3}) * 4):to(dt)
        same(dev(x):index_copy_(2, dev(i64 {4, 1}), dev(src)), x:clone():index_copy_(2, i64 {4, 1}, src))
        same(dev(x):scatter(2, dev(gi:narrow(1, 1, 1)), dev(src:narrow(1, 1, 1))),
          x:scatter(2, gi:narrow(1, 1, 1), src:narrow(1, 1, 1)))
      end
      for _, dt in ipairs {"f32", "f64", "bf16", "f16", "i64", "i32"} do
        local x, src = (hero.randn({4, 5, 3}) * 4):to(dt), (hero.randn({4, 2, 3}) * 4):to(dt)
        local tol = (dt == "bf16" or dt == "f16") and helper.tolerance.half_sum_device or nil
        -- repeated indices: the device sums with atomics, in any order
        same(dev(x):index_add_(2, dev(i64 {4, 4}), dev(src)), x:clone():index_add_(2, i64 {4, 4}, src), tol)
        local gi = i64 {{{0, 1, 2}, {0, 1, 2}}, {{1, 1, 1}, {2, 0, 4}}}
        same(dev(x):scatter_add(2, dev(gi), dev(src:narrow(1, 1, 2))), x:scatter_add(2, gi, src:narrow(1, 1, 2)), tol)
      end
      local x = randn({4, 5}, "f64")
      check_grad(function(t) return t:index_select(1, i64({2, 0, 2}):to {device = t:device()}) end, {x})
      check_grad(function(t) return t:gather(2, i64({{0, 4}, {1, 1}, {3, 2}, {0, 0}}):to {device = t:device()}) end,
        {x})
      check_grad(function(t, s) return t:scatter_add(1, i64({{0, 2}, {0, 1}}):to {device = t:device()}, s) end,
        {x, randn({2, 5}, "f64")})
      helper.assert_error_contains(function() return dev(x):index_select(1, dev(i64 {1, 4})) end, "index_select",
        "index 4 at position 2 of the index is out of range for dimension 1 of size 4")
      helper.assert_error_contains(function() return dev(x):gather(2, dev(i64 {{0}, {5}})) end, "gather",
        "index 5 at position [2, 1]")
      local before = dev(x)
      helper.assert_error_contains(function() before:index_add_(1, dev(i64 {0, -1}), dev(randn({2, 5}, "f64"))) end,
        "index_add_", "index -1")
      same(before, x) -- a refused in-place op writes nothing
    end)

    it("masked_fill, masked_select and nonzero with broadcast masks, with gradients", function()
      local x = randn({3, 4}, "f64")
      local mask = hero.tensor {{true, false, false, true}, {false, false, false, false}, {true, true, true, true}}
      local col = hero.tensor {{true}, {false}, {true}}
      for _, dt in ipairs {"f32", "f64", "bf16", "i64", "u8", "bool"} do
        local t = (x * 3):to(dt)
        same(dev(t):masked_fill(dev(mask), 7), t:masked_fill(mask, 7))
        same(dev(t):masked_fill(dev(col), 0), t:masked_fill(col, 0))
        same(dev(t):masked_select(dev(mask)), t:masked_select(mask))
        same(dev(t):masked_select(dev(col)), t:masked_select(col))
        same(dev(t):nonzero(), t:nonzero())
      end
      same(dev(x):masked_select(dev(hero.zeros({3, 4}, {dtype = "bool"}))), x:masked_select(hero.zeros({3, 4},
        {dtype = "bool"})))
      same(dev(x):t():masked_select(dev(mask:t())), x:t():masked_select(mask:t()))
      check_grad(function(t) return t:masked_fill(mask:to {device = t:device()}, 0) end, {x})
      check_grad(function(t) return t:masked_select(col:to {device = t:device()}) end, {x})
    end)

    it("saves device tensors from host copies and reads device scalars as fill values", function()
      local x = randn({3, 4}, "f32")
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p '" .. dir .. "'"))
      hero.save(dir .. "/w.safetensors", {w = dev(x), n = {v = dev(x:narrow(2, 2, 2))}})
      local back = hero.load(dir .. "/w.safetensors")
      assert.tensor_near(back.w, x, {rtol = 0, atol = 0})
      assert.tensor_near(back.n.v, x:narrow(2, 2, 2):contiguous(), {rtol = 0, atol = 0})
      hero.io.save_npy(dir .. "/w.npy", dev(x:t()))
      assert.tensor_near(hero.io.load_npy(dir .. "/w.npy"), x:t():contiguous(), {rtol = 0, atol = 0})
      hero.fs_rmtree(dir)
      local mask = hero.tensor {{true, false, false, true}, {false, true, false, false}, {true, true, true, true}}
      same(dev(x):masked_fill(dev(mask), dev(hero.tensor(-2.5))), x:masked_fill(mask, -2.5))
    end)

    it("cat, stack, flip and repeat on the device, with gradients", function()
      for _, dt in ipairs {"f32", "bf16", "i64", "bool"} do
        local a, b = (randn {2, 3} * 3):to(dt), (randn {2, 5} * 3):to(dt)
        same(hero.cat({dev(a), dev(b)}, 2), hero.cat({a, b}, 2))
        same(hero.cat({dev(a):t(), dev(b):t()}, 1), hero.cat({a:t(), b:t()}, 1))
        same(hero.stack({dev(a), dev(a)}, 2), hero.stack({a, a}, 2))
        same(dev(b):flip {1, 2}, b:flip {1, 2})
        same(dev(a):tile(2, 1, 3), a:tile(2, 1, 3))
      end
      same(hero.cat {dev(hero.ones(2, {dtype = "f32"})), dev(hero.ones(3, {dtype = "f64"}))},
        hero.cat {hero.ones(2, {dtype = "f32"}), hero.ones(3, {dtype = "f64"})}) -- promotes
      check_grad(function(p, q) return hero.cat({p, q:t()}, 2) end, {randn({3, 2}, "f64"), randn({4, 3}, "f64")})
      check_grad(function(p, q) return hero.stack {p, q} end, {randn({3, 2}, "f64"), randn({3, 2}, "f64")})
      check_grad(function(p) return p:flip(1, 2) end, {randn({3, 4}, "f64")})
      check_grad(function(p) return p:t():tile(2, 1, 3) end, {randn({3, 4}, "f64")})
      check_grad(function(p) return p["repeat"](p, 2, 2) end, {randn({3, 4}, "f32")})
      -- prod and cumprod: their gradients make a round trip through the host
      local z = randn({3, 4}, "f64")
      z[2][3] = 0
      check_grad(function(p) return p:prod(2) end, {z})
      check_grad(function(p) return p:prod() end, {z})
      check_grad(function(p) return p:t():cumprod(2) end, {z})
    end)

    it("conv1d and the elementwise losses, with gradients", function()
      for _, pad in ipairs {0, 2} do
        check_grad(function(x, w) return hero.conv1d(x, w, nil, pad) end,
          {randn({2, 1, 9}, "f64"), randn({1, 1, 5}, "f64")})
        check_grad(function(x, w, b) return hero.conv1d(x, w, b, pad) end,
          {randn({3, 2, 7}, "f64"), randn({4, 2, 3}, "f64"), randn({4}, "f64")})
      end
      local x, y = randn({4, 6}, "f64"), hero.rand({4, 6}, {dtype = "f64"})
      local w = hero.rand({4, 6}, {dtype = "f64"})
      local F = hero.nn.functional
      for _, red in ipairs {"mean", "sum", "none"} do
        check_grad(function(a, b) return F.binary_cross_entropy_with_logits(a, b, {reduction = red}) end, {x * 4, y})
        check_grad(function(a, b, c)
          return hero.nn.functional.binary_cross_entropy_with_logits(a, b, {weight = c, reduction = red})
        end, {x, y, w})
        check_grad(function(a, b) return hero.nn.functional.mse_loss(a, b, {reduction = red}) end, {x, y})
      end
    end)

    it("sorts, scans and the rarer reductions through the host, with gradients", function()
      local x = randn({5, 7}, "f64")
      for _, fn in ipairs {
        function(t) return (t:sort(2)) end, function(t) return select(2, t:sort(1, true)) end,
        function(t) return (t:topk(3, 2)) end, function(t) return select(2, t:topk(2, 1, false)) end,
        function(t) return t:cumsum(2) end, function(t) return t:cumprod(1) end, function(t) return t:prod(2) end,
        function(t) return t:var(1) end, function(t) return t:std() end, function(t) return t:norm() end,
        function(t) return t:gt(0):any(2) end, function(t) return t:gt(-3):all() end,
      } do
        same(fn(dev(x)), fn(x))
      end
      check_grad(function(t) return (t:topk(3, 2)) end, {x})
      check_grad(function(t) return t:cumsum(1) end, {x})
      check_grad(function(t) return t:var(2) end, {x})
    end)

    it("median, kthvalue, cummax/cummin, unique, bincount, searchsorted through the host; einsum, diff", function()
      local x = randn({5, 7}, "f64")
      for _, fn in ipairs {
        function(t) return (t:median(2)) end, function(t) return select(2, t:median(1, true)) end,
        function(t) return t:median() end, function(t) return (t:kthvalue(3, 2)) end,
        function(t) return (t:mode(2)) end, function(t) return select(2, t:mode(1, true)) end,
        function(t) return select(2, t:kthvalue(2, 1, true)) end, function(t) return (t:cummax(2)) end,
        function(t) return select(2, t:cummin(1)) end, function(t) return (t:round():unique()) end,
        function(t) return select(2, t:round():unique {return_inverse = true}) end,
        function(t) return select(2, t:round():unique {return_counts = true}) end,
        function(t) return (t:round():unique {dim = 1}) end,
        function(t) return select(2, t:round():unique {dim = 2, return_inverse = true}) end,
        function(t) return t:count_nonzero(2) end, function(t) return t:diff(1, 2) end,
        function(t) return hero.einsum("ij,kj->ik", t, t) end,
        function(t) return hero.einsum("ii", t:narrow(2, 1, 5)) end,
        function(t) return hero.cross(t:narrow(2, 1, 3), t:narrow(2, 4, 3), 2) end,
      } do
        same(fn(dev(x)), fn(x))
      end
      local idx = hero.tensor({0, 3, 1, 1, 5}, {dtype = "i64"})
      local w = randn({5}, "f32")
      same(hero.bincount(dev(idx)), hero.bincount(idx))
      same(hero.bincount(dev(idx), {weights = dev(w), minlength = 8}), hero.bincount(idx, {weights = w, minlength = 8}))
      local seq, vals = hero.tensor {1, 2, 2, 3, 5}, randn({3, 4}) * 3
      same(hero.searchsorted(dev(seq), dev(vals)), hero.searchsorted(seq, vals))
      same(hero.searchsorted(dev(seq), dev(vals), {right = true, out_int32 = true}),
        hero.searchsorted(seq, vals, {right = true, out_int32 = true}))
      same(hero.searchsorted(dev(seq), 2.0), hero.searchsorted(seq, 2.0))
      same(hero.bucketize(dev(vals), dev(seq)), hero.bucketize(vals, seq))
      local gx, gy = hero.meshgrid(dev(seq), dev(idx), {indexing = "xy"})
      local cx, cy = hero.meshgrid(seq, idx, {indexing = "xy"})
      same(gx, cx)
      same(gy, cy)
      check_grad(function(t) return (t:median(2)) end, {x})
      check_grad(function(t) return (t:mode(2)) end, {x})
      check_grad(function(t) return t:median() end, {x})
      check_grad(function(t) return (t:kthvalue(2, 1)) end, {x})
      check_grad(function(t) return (t:cummax(2)) end, {x})
      check_grad(function(a, b) return hero.einsum("bij,bjk->bik", a, b) end, {randn {2, 3, 4}, randn {2, 4, 5}})
      check_grad(function(t) return t:diff(2, 1) end, {x})
    end)

    it("reproduces the hero-smoke fixture (outputs, gradients, optimizer steps, downstream heads)", function()
      local root = debug.getinfo(1, "S").source:match("^@(.*)/spec/cuda_spec%.lua$") or "."
      local results, ok = hero.parity.run(root .. "/spec/fixtures/hero-smoke", {device = DEVICE})
      local bad = {}
      for _, r in ipairs(results) do
        if r.ok == false then
          bad[#bad + 1] = r.error and (r.case .. " raised: " .. r.error)
            or string.format("%s %s: abs %.3e > %.3e", r.case, r.tensor, r.max_abs, r.bound)
        end
      end
      assert(ok, #bad .. " beyond tolerance:\n" .. table.concat(bad, "\n", 1, math.min(#bad, 40)))
      assert.is_true(#results > 900)
    end)
  end)

  describe("the caching allocator", function()
    it_gpu("counts allocated, reserved and peak bytes and reuses released blocks", function()
      collectgarbage()
      hero.cuda.empty_cache()
      local before = hero.cuda.memory_stats()
      local during
      do
        local t = hero.zeros(16, 1024, 1024, {device = DEVICE}) -- 64 MiB
        during = hero.cuda.memory_stats()
        assert.equal(16 * 2 ^ 20, t:numel())
      end
      assert.is_true(during.allocated - before.allocated >= 64 * 2 ^ 20)
      assert.is_true(during.reserved >= during.allocated)
      assert.is_true(during.peak >= during.allocated)
      collectgarbage()
      local after = hero.cuda.memory_stats()
      assert.equal(before.allocated, after.allocated)
      assert.is_true(after.cached >= 64 * 2 ^ 20) -- kept for reuse
      do
        local again = hero.zeros(16, 1024, 1024, {device = DEVICE})
        assert.equal(after.num_cuda_mallocs, hero.cuda.memory_stats().num_cuda_mallocs) -- served from the cache
        assert.equal(16 * 2 ^ 20, again:numel())
      end
      collectgarbage()
      assert.is_true(hero.cuda.empty_cache() >= 64 * 2 ^ 20)
      assert.equal(before.reserved, hero.cuda.memory_stats().reserved)
    end)

    it_gpu("survives running out of device memory", function()
      local held, err = {}, nil
      for _ = 1, 4096 do
        local ok, e = pcall(hero.empty, {1024, 1024, 1024}, {device = DEVICE}) -- 4 GiB each
        if not ok then
          err = e
          break
        end
        held[#held + 1] = e
      end
      assert.truthy(err, "the device never ran out of memory")
      assert.is_true(#held >= 0) -- held kept every block alive until here
      assert.truthy(tostring(err):find("out of memory", 1, true))
      held = nil -- luacheck: ignore 311
      collectgarbage()
      hero.cuda.empty_cache()
      local t = hero.ones(1000, {device = DEVICE})
      assert.equal(1000, t:sum():item())
      assert.is_true(hero.cuda.memory_stats().num_oom_retries >= 1)
    end)
  end)

  describe("HERO on the device", function()
    it("makes only the asked-for rows of ragged batches, its layouts from host-held or device masks", function()
      local enc = hero.nn.TransformerEncoder {layers = 2, hidden = 16, heads = 2, intermediate = 24, dropout = 0,
                                              generator = hero.Generator(3)}
      local x = randn {3, 5, 16}
      local rows = hero.tensor({0, 2, 5, 9, 7, 10}, {dtype = "i64"})
      local lists = {{1, 1, 1, 0, 0}, {1, 1, 1, 1, 1}, {1, 0, 0, 0, 0}}
      local want = enc:forward(x, hero.tensor(lists, {dtype = "i64"}), {rows = rows})
      local g = enc
      g:to(DEVICE)
      -- an i64 mask moved from the host (laid out on the host), the same mask made on the device
      -- (laid out there), and the rows without and with their host copy
      local moved = dev(hero.tensor(lists, {dtype = "i64"}))
      local made = dev(hero.tensor(lists, {dtype = "f32"})):long()
      for _, mask in ipairs {moved, made} do
        same(g:forward(dev(x), mask, {rows = dev(rows)}), want, helper.tolerance.layer_f32_device)
        same(g:forward(dev(x), mask, {rows = dev(rows), rows_host = rows}), want, helper.tolerance.layer_f32_device)
      end
      g:to("cpu")
    end)

    it("pre-trains like on the CPU (Module:to, the Trainer moving batches, examples/pretrain.lua --device)",
      function()
        local root = debug.getinfo(1, "S").source:match("^@(.*)/spec/cuda_spec%.lua$") or "."
        local base = os.tmpname()
        os.remove(base)
        local losses = {}
        local function run(device, amp_dtype)
          local out = base .. "-" .. device:gsub(":", "") .. (amp_dtype or "")
          local cmd = string.format("cd '%s' && LUA_PATH='%s' LUA_CPATH='%s' lua5.4 examples/pretrain.lua --fixture "
            .. "spec/fixtures/hero-smoke --out '%s' --steps 3 --accum 1 --quiet --device %s%s 2>&1", root, package.path,
            package.cpath, out, device, amp_dtype and (" --amp " .. amp_dtype) or "")
          local p = assert(io.popen(cmd))
          local text = p:read("a")
          local ok = p:close()
          assert(ok, "pretrain.lua --device " .. device .. " failed:\n" .. text)
          local ckpt = hero.load(out .. "/ckpt/step_3.safetensors")
          local l = {}
          for line in io.lines(out .. "/log.jsonl") do l[#l + 1] = hero.json.decode(line).loss end
          losses[device .. (amp_dtype or "")] = l
          hero.fs_rmtree(out)
          return ckpt
        end
        local on_cpu, on_dev = run("cpu"), run(DEVICE)
        local n = 0
        for name, t in pairs(on_cpu) do
          local ok, msg = helper.parity(on_dev[name], t, "params")
          assert(ok, name .. ": " .. msg)
          n = n + 1
        end
        assert.is_true(n > 50)
        -- bf16 autocast on the device: the same losses within bf16's precision
        run(DEVICE, "bf16")
        for i, l in ipairs(losses.cpu) do
          local lb = losses[DEVICE .. "bf16"][i]
          assert.is_true(math.abs(lb - l) <= 0.02 * math.abs(l), string.format("update %d: %g vs %g", i, lb, l))
        end
      end)

    it_db("fine-tunes and evaluates like on the CPU (FT.setup and FT.evaluate with a device, "
      .. "examples/finetune.lua and evaluate.lua --device)", function()
      local FT = require "hero.train.finetune"
      local json = hero.json
      local dir = helper.tiny_finetune_dir(4)
      local txt = helper.fixture("data/txt_db")
      local DB = {vcmr = txt .. "/tvr_val.db", videoqa = txt .. "/tvqa_val.db"}
      -- pre-training's learning rate (the case above): AdamW's first steps are about lr * sign(g), so
      -- a gradient whose rounding differs from the CPU's moves a parameter by up to 2 lr
      local function config(task)
        local c = helper.finetune_config(task)
        c.learning_rate = 3e-5
        return c
      end
      -- 3 updates (validation losses after the third) and the evaluation of the split
      local function run(task, device, amp)
        local hps = FT.hparams(task, config(task), "train-" .. task .. ".json")
        local r = FT.setup{task = task, hps = hps, model_config = FT.model_config(hps, dir .. "/model.json"),
          checkpoint = dir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
          txt_db = DB[task], valid_txt_db = DB[task], valid_every = 3, full_eval = false, progress = false,
          device = device, amp = amp}
        assert.equal(device, r.model:device())
        local recs = r.trainer:train(3)
        local tensors
        local evaluate_full = r.model.evaluate_full
        r.model.evaluate_full = function(self, ...)
          local res = evaluate_full(self, ...)
          tensors = res.tensors
          return res
        end
        -- the results and (VCMR) the score tensors evaluate_full ranked
        local function evaluate(eval_amp)
          local res = FT.evaluate(task, r.model, hps, {video = r.video, txt_db = DB[task], amp = eval_amp,
            save_logits = task == "videoqa"})
          return res, tensors
        end
        local res = evaluate(amp)
        return {run = r, hps = hps, recs = recs, res = res, tensors = tensors, evaluate = evaluate}
      end
      local function valid_loss(rec, hps)
        local v = rec.valid[hps.task]
        return type(v) == "table" and v.loss_overall or v
      end
      local slack = helper.tolerance.ranking_autocast.queries * 100 / 9 + 0.005 -- 9 queries
      for _, task in ipairs {"vcmr", "videoqa"} do
        local c, g = run(task, "cpu"), run(task, DEVICE)
        -- f32: the parameters after 3 updates (AdamW's moments on the device), the losses
        local cp = {}
        for _, p in ipairs(c.run.model:named_parameters()) do cp[p[1]] = p[2] end
        for _, p in ipairs(g.run.model:named_parameters()) do
          assert.equal(DEVICE, p[2]:device())
          local ok, msg = helper.parity(p[2]:detach():cpu(), cp[p[1]]:detach(), "params")
          assert(ok, task .. " " .. p[1] .. ": " .. msg)
        end
        local tol = helper.tolerance.layer_f32_device
        for i = 1, 3 do
          assert.near(c.recs[i].loss, g.recs[i].loss, tol.atol + tol.rtol * math.abs(c.recs[i].loss), task)
        end
        local vc = valid_loss(c.recs[3], c.hps)
        assert.near(vc, valid_loss(g.recs[3], g.hps), tol.atol + tol.rtol * math.abs(vc), task .. " validation")
        -- the evaluation: its scores (VCMR) or logits (TVQA), read back to the host in f32
        if task == "vcmr" then
          for _, k in ipairs {"q2video_scores", "st_probs", "ed_probs"} do
            assert.equal("cpu", g.tensors[k]:device())
            assert.tensor_near(g.tensors[k], c.tensors[k], tol)
          end
          assert.is_true(math.abs(g.res.metrics.VR.r1 - c.res.metrics.VR.r1) <= slack)
          assert.is_true(math.abs(g.res.metrics.VCMR["0.5-r10"] - c.res.metrics.VCMR["0.5-r10"]) <= slack)
        else
          for qid, l in pairs(c.res.logits) do assert.tensor_near(hero.tensor(g.res.logits[qid]), l, tol) end
        end
        -- bf16 autocast on the device: the losses near the CPU's f32 ones; the f32 model's scores
        -- (logits) evaluated under it within bf16's
        local b = run(task, DEVICE, "bf16")
        for i = 1, 3 do
          local l = c.recs[i].loss
          assert.is_true(math.abs(b.recs[i].loss - l) <= helper.tolerance.loss_bf16_autocast.rtol * math.abs(l),
            string.format("%s update %d: %g vs %g", task, i, b.recs[i].loss, l))
        end
        local res, tensors = g.evaluate("bf16")
        if task == "vcmr" then
          for _, k in ipairs {"q2video_scores", "st_probs", "ed_probs"} do
            assert.equal("f32", tensors[k]:dtype())
            assert.tensor_near(tensors[k], c.tensors[k], helper.tolerance.outputs_bf16_autocast)
          end
        else
          for qid, l in pairs(c.res.logits) do
            assert.tensor_near(hero.tensor(res.logits[qid]), l, helper.tolerance.outputs_bf16_autocast)
          end
        end
      end
      -- the command lines: two updates on the device, evaluated there, as on the CPU
      local cfg = config("vcmr")
      cfg.model_config = dir .. "/model.json"
      json.write_file(dir .. "/train-tvr.json", cfg)
      local root = debug.getinfo(1, "S").source:match("^@(.*)/spec/cuda_spec%.lua$") or "."
      local function example(script, args)
        local p = assert(io.popen(string.format("cd '%s' && LUA_PATH='%s' LUA_CPATH='%s' lua5.4 examples/%s %s 2>&1",
          root, package.path, package.cpath, script, args)))
        local text = p:read("a")
        assert(p:close(), script .. " " .. args .. " failed:\n" .. text)
      end
      local results = {}
      for i, device in ipairs {"cpu", DEVICE} do
        local out = dir .. "/cli-" .. i
        example("finetune.lua", string.format("--task vcmr --config '%s' --checkpoint '%s' --txt-db '%s' "
          .. "--out '%s' --steps 2 --quiet --device %s", dir .. "/train-tvr.json", dir .. "/init.safetensors", DB.vcmr,
          out, device))
        assert.equal(device, json.read_file(out .. "/log/hps.json").device)
        example("evaluate.lua", string.format("--task vcmr --checkpoint '%s' --txt-db '%s' --out '%s' --device %s",
          out .. "/ckpt/step_2.safetensors", DB.vcmr, out .. "/results.json", device))
        results[i] = {ckpt = hero.load(out .. "/ckpt/step_2.safetensors"), res = json.read_file(out .. "/results.json")}
      end
      local on_cpu, on_dev = results[1], results[2]
      for name, t in pairs(on_cpu.ckpt) do
        local ok, msg = helper.parity(on_dev.ckpt[name], t, "params")
        assert(ok, name .. ": " .. msg)
      end
      assert.is_true(math.abs(on_dev.res.metrics.VR.r1 - on_cpu.res.metrics.VR.r1) <= slack)
      assert.equal(9, #on_dev.res.submission.VCMR)
      hero.fs_rmtree(dir)
    end)
  end)
end)
