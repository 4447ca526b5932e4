local hero = require "hero"
local helper = require "spec_helper"
local it_db = helper.it_needs(it, pending, "lmdb", "lz4") -- specs that read or write HERO databases
local json = hero.json
local data = hero.data
local core = hero.core

local tv_video = helper.fixture("data/video_db/tv/resnet_slowfast_1.5")
local tv_subs = helper.fixture("data/txt_db/tv_subtitles.db")

-- A pool whose produce returns the job unchanged.
local function echo_pool(n)
  return core.worker_pool{n = n or 1, script = "return function(job) return job end"}
end

-- Tensors equal bit for bit: same dtype and shape, and the same bytes (floats compared as their
-- integer bit patterns would be too strict for -0 vs 0 only if one side flipped a sign, which a copy
-- never does; values are compared exactly with eq, NaN-free data).
local function same_tensor(a, b)
  return a:dtype() == b:dtype() and json.encode(a:size()) == json.encode(b:size())
    and (a:numel() == 0 or a:eq(b):all():item())
end

local function same_batch(a, b)
  if (a == nil) ~= (b == nil) then return false, "one batch is nil" end
  for k, v in pairs(a) do
    if b[k] == nil then return false, k .. " missing" end
    if hero.is_tensor(v) then
      if not same_tensor(v, b[k]) then return false, k end
    elseif json.encode(v) ~= json.encode(b[k]) then
      return false, k
    end
  end
  for k in pairs(b) do if a[k] == nil then return false, k .. " extra" end end
  return true
end

local function tv_spec(task, extra)
  local spec = {dataset = {type = "VideoSubDataset", video_db = tv_video, sub_db = tv_subs, max_clip_len = 12},
    task = task, batch_size = 3, seed = 11, bucket = 1}
  for k, v in pairs(extra or {}) do spec[k] = v end
  return spec
end

local function sync_loader(spec)
  return require("hero.data.prefetch").loader_from_spec(spec)
end

local function roundtrip(path, value)
  hero.save(path, {s = value})
  return hero.load(path).s
end

describe("worker_pool", function()
  it("returns results in submission order, whichever worker finishes first", function()
    local pool <close> = core.worker_pool{n = 2, script = [[
      local core = require "hero.core"
      return function(job)
        -- the first job is by far the slowest: the other worker finishes every later job first
        local t0 = core._now()
        while core._now() - t0 < (job == 1 and 0.15 or 0) do end
        return job * 10
      end]]}
    for i = 1, 12 do assert.are.equal(i, pool:submit(i)) end
    assert.are.equal(12, pool:pending())
    local got = {}
    for i = 1, 12 do
      local v, n = pool:get()
      got[i] = v
      assert.are.equal(i, n)
    end
    assert.are.same({10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120}, got)
    assert.are.equal(0, pool:pending())
    assert.are.equal(2, pool:size())
    assert(pool:wait_seconds() > 0.05, "get() waited for the slow job")
    helper.assert_error_contains(function() pool:get() end, "no job is pending")
  end)

  it("passes the init value and the worker number to the script", function()
    local pool <close> = core.worker_pool{n = 3, init = {scale = 7, t = hero.arange(4)}, script = [[
      local init, worker = ...
      function produce(job) return {job * init.scale, init.t:sum():item(), worker} end]]}
    for i = 1, 30 do pool:submit(i) end
    for i = 1, 30 do
      local r = pool:get()
      assert.are.equal(7 * i, r[1])
      assert.are.equal(6, r[2])
      assert(r[3] >= 1 and r[3] <= 3)
    end
  end)

  it("copies values and tensors between states exactly", function()
    local pool <close> = echo_pool()
    local shared = {x = 1}
    local v = {1, 2.5, -0.0, 1 / 0, -1 / 0, math.maxinteger, math.mininteger, "a\0b", true, false,
      nested = {deep = {deeper = {"z"}}}, shared1 = shared, shared2 = shared, [3.5] = "float key", [true] = 1,
      arr = json.array {}, null = json.null, empty = {}}
    v.self = v
    pool:submit(v)
    local r = pool:get()
    for i = 1, 10 do assert.are.equal(math.type(v[i]), math.type(r[i])) assert.are.equal(v[i], r[i]) end
    assert.are.equal("-0.0", string.format("%.1f", r[3]))
    assert.are.equal("z", r.nested.deep.deeper[1])
    assert.are.equal(r.shared1, r.shared2)
    assert.are.equal(r, r.self)
    assert.are.equal("float key", r[3.5])
    assert.are.equal(1, r[true])
    assert.are.equal(json.array_mt, getmetatable(r.arr))
    assert.are.equal("[]", json.encode(r.arr))
    assert.are.equal(json.null, r.null)
    assert.is_nil(getmetatable(r.empty))
    pool:submit(0 / 0)
    local nan = pool:get()
    assert(nan ~= nan)

    -- every dtype, views, scalars, empty tensors; the same tensor twice stays one object
    local base = hero.arange(24, {dtype = "f64"}):reshape(2, 3, 4) / 3
    local ts = {}
    for _, dt in ipairs {"f32", "f64", "bf16", "f16", "i64", "i32", "u8", "bool"} do ts[#ts + 1] = base:to(dt) end
    ts[#ts + 1] = base:transpose(1, 3)           -- not contiguous
    ts[#ts + 1] = base:narrow(3, 2, 2)           -- offset into a storage
    ts[#ts + 1] = hero.tensor(3.25)              -- scalar
    ts[#ts + 1] = hero.zeros(0, 5)               -- empty
    ts.again = ts[1]
    pool:submit(ts)
    local rt = pool:get()
    for i = 1, #ts do
      assert(same_tensor(ts[i], rt[i]), "tensor " .. i)
      assert(rt[i]:is_contiguous())
    end
    assert.are.equal(rawequal(rt.again, rt[1]), true)
    -- a copy: changing the sent tensor after submit changes nothing
    local t = hero.ones(3)
    pool:submit(t)
    t:fill_(5)
    assert.are.same({1, 1, 1}, pool:get():totable())
  end)

  it("hands over the result's tensors that alone use their storage (hand_over), and copies the others", function()
    local pool <close> = core.worker_pool{n = 1, hand_over = true, script = [[
      local hero = require "hero"
      local last, owner
      return function(job)
        if job == "freed?" then
          local r = {}
          for k, t in pairs(last) do r[k] = t:is_freed() end
          return r
        end
        owner = hero.arange(12, {dtype = "f32"}) -- kept: the view below shares its storage
        local base = owner:view(3, 4)
        last = {fresh = hero.arange(6, {dtype = "i64"}) * 7, view = base, transposed = base:t():contiguous():t(),
                scalar = hero.tensor(2.5), empty = hero.zeros(0, 3)}
        local out = {again = last.fresh}
        for k, t in pairs(last) do out[k] = t end
        return out
      end
    ]]}
    pool:submit(1)
    local r = pool:get()
    assert.are.same({0, 7, 14, 21, 28, 35}, r.fresh:totable())
    assert.are.equal(true, rawequal(r.fresh, r.again))
    assert.are.same({{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}}, r.view:totable())
    assert.are.same({{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}}, r.transposed:totable())
    assert.are.equal(2.5, r.scalar:item())
    assert.are.same({0, 3}, r.empty:size())
    pool:submit("freed?")
    -- moved: the worker's own objects are freed; copied: a view of a shared storage, a transposed one
    assert.are.same({fresh = true, scalar = true, empty = true, view = false, transposed = false}, pool:get())
    helper.assert_error_contains(function() core.worker_pool{n = 1, script = "", hand_over = 1} end,
      "opts.hand_over must be a boolean")
  end)

  it("raises a worker's error at the matching get, with the worker's traceback", function()
    local pool <close> = core.worker_pool{n = 2, script = [[
      local function read_video(id) error("cannot read video " .. id) end
      return function(job)
        if job == "bad" then read_video("v42") end
        if job == "fn" then return print end
        return job
      end]]}
    pool:submit(1)
    pool:submit("bad")
    pool:submit(3)
    pool:submit("fn")
    assert.are.equal(1, pool:get())
    local ok, err = pcall(pool.get, pool)
    assert.is_false(ok)
    assert.matches("job 2 failed in worker %d", err)
    assert.matches("cannot read video v42", err)
    assert.matches("stack traceback:", err)
    assert.matches("read_video", err)
    assert.are.equal(3, pool:get()) -- the pool goes on
    helper.assert_error_contains(function() pool:get() end, "job 4", "cannot send a function")
    -- start-up errors and bad options
    helper.assert_error_contains(function() core.worker_pool{n = 2, script = "error('no config')"} end,
      "start-up failed in worker", "no config", "stack traceback")
    helper.assert_error_contains(function() core.worker_pool{n = 1, script = "x = = 1"} end,
      "opts.script does not compile", "unexpected symbol near '='")
    helper.assert_error_contains(function() core.worker_pool{n = 1, script = "return 1"} end, "no produce(job)")
    helper.assert_error_contains(function() core.worker_pool{n = 0, script = ""} end, "opts.n must be an integer")
    helper.assert_error_contains(function() core.worker_pool{n = 1} end, "opts.script must be a string")
    -- a script that cannot compile is named at once, a file path given for the source with a hint
    helper.assert_error_contains(function() core.worker_pool{n = 1, script = "function produce("} end,
      "opts.script does not compile")
    helper.assert_error_contains(function() core.worker_pool{n = 1, script = "/tmp/x/produce.lua"} end,
      "it looks like a file path")
    helper.assert_error_contains(function() core.worker_pool{n = 1, script = "", thread = 1} end,
      "unknown option 'thread'")
    helper.assert_error_contains(function() pool:submit({f = print}) end, "cannot send a function", "value.f")
    helper.assert_error_contains(function() pool:submit({a = {io.stdout}}) end, "cannot send a userdata",
      "value.a[1]")
    local freed = hero.ones(2)
    freed:free()
    helper.assert_error_contains(function() pool:submit(freed) end, "freed tensor")
    helper.assert_error_contains(function() core.worker_pool{n = 1, script = "", init = {print}} end,
      "cannot send a function")
  end)

  it("closes with jobs in flight, from close(), the garbage collector or the end of the program", function()
    local script = [[
      local core = require "hero.core"
      return function(job)
        local t0 = core._now()
        while core._now() - t0 < 0.002 do end
        return core.ones(1000) * job
      end]]
    local pool = core.worker_pool{n = 2, script = script}
    for i = 1, 50 do pool:submit(i) end
    pool:get()
    pool:close()
    pool:close()
    assert.is_true(pool:is_closed())
    helper.assert_error_contains(function() pool:submit(1) end, "closed")
    helper.assert_error_contains(function() pool:get() end, "closed")
    do
      local p2 = core.worker_pool{n = 2, script = script}
      for i = 1, 20 do p2:submit(i) end
    end
    collectgarbage()
    collectgarbage()
    -- a program that ends with jobs in flight: lua_close runs the pool's __gc
    local code = string.format([[package.path = %q; package.cpath = %q
      local core = require "hero.core"
      local p = core.worker_pool{n = 2, script = %q}
      for i = 1, 40 do p:submit(i) end
      print("submitted")]], package.path, package.cpath, script)
    local file = os.tmpname()
    local fh = assert(io.open(file, "w"))
    fh:write(code)
    fh:close()
    local f = io.popen("lua5.4 " .. file .. " 2>&1")
    local out = f:read("a")
    local ok, how, rc = f:close()
    os.remove(file)
    assert.are.equal("submitted\n", out)
    assert.is_true(ok, tostring(how) .. " " .. tostring(rc))
  end)
end)

describe("PrefetchLoader", function()
  it_db("serves exactly the TaskLoader's batches for every task, across epochs", function()
    for _, task in ipairs {"mlm", "mfm-nce", "mffr", "fom", "vsm"} do
      local spec = tv_spec(task)
      local sync = sync_loader(spec)
      local P <close> = data.PrefetchLoader{loader_spec = spec, workers = 2, depth = 3}
      for i = 1, 7 do -- 3 batches per epoch
        local ok, why = same_batch(sync:next(), P:next())
        assert(ok, task .. " batch " .. i .. ": " .. tostring(why))
        assert.are.same(sync.last_ids, P.last_ids)
      end
      assert.are.equal(sync.epoch, P.epoch)
      assert.are.same(sync.stats, P.stats)
      assert.are.same(sync:state(), P:state())
      local waited, n = P:wait_seconds()
      assert.are.equal(7, n)
      assert(waited >= 0)
    end
  end)

  it_db("stays where it was when set_state refuses a state, and keeps its position when closed", function()
    local spec = tv_spec("mlm", {batch_size = 2, bucket = nil})
    local sync = sync_loader(spec)
    local P = data.PrefetchLoader{loader_spec = spec, workers = 2, depth = 3}
    for _ = 1, 2 do
      sync:next()
      P:next()
    end
    local bad = sync:state()
    bad.pos = 99
    local before = P:state()
    helper.assert_error_contains(function() P:set_state(bad) end, "position 99 is outside")
    helper.assert_error_contains(function() sync:set_state(bad) end, "position 99 is outside")
    assert.are.same(before, P:state())
    assert.are.same(before, sync:state()) -- the TaskLoader's epoch_start too: a checkpoint resumes right
    for i = 1, 4 do
      local ok, why = same_batch(sync:next(), P:next())
      assert(ok, "batch " .. i .. " after the refused state: " .. tostring(why))
    end
    -- closing drops the batches in flight, which were never consumed
    local at = P:state()
    P:close()
    assert.are.same(at, P:state())
    helper.assert_error_contains(function() P:set_state(at) end, "the loader is closed")
  end)

  it_db("shares one pool between loaders (prefetch_loaders) and keeps each sequence", function()
    local dspec = {type = "VideoSubDataset", video_db = tv_video, sub_db = tv_subs, max_clip_len = 12}
    local specs = {}
    for i, task in ipairs {"mlm", "vsm", "fom"} do
      specs[task] = {dataset = dspec, task = task, batch_size = 2, seed = 100 + i, bucket = 2}
    end
    local loaders = data.prefetch_loaders{loaders = specs, workers = 2, depth = 2}
    local syncs = {}
    for task, spec in pairs(specs) do syncs[task] = sync_loader(spec) end
    assert.are.equal(loaders.mlm.dataset, loaders.vsm.dataset) -- one dataset per spec table
    local order = {"vsm", "mlm", "mlm", "fom", "vsm", "vsm", "vsm", "mlm", "fom", "fom", "fom", "fom", "fom"}
    for i, task in ipairs(order) do
      local ok, why = same_batch(syncs[task]:next(), loaders[task]:next())
      assert(ok, task .. " draw " .. i .. ": " .. tostring(why))
    end
    for _, l in pairs(loaders) do l:close() end
    assert.is_nil(loaders.mlm.group)
  end)

  it_db("resumes exactly: state() is the next batch's position; set_state() drops batches in flight", function()
    local path = os.tmpname()
    for _, task in ipairs {"mlm", "vsm"} do
      local spec = tv_spec(task)
      local A <close> = data.PrefetchLoader{loader_spec = spec, workers = 2, depth = 4}
      local sync = sync_loader(spec)
      for _ = 1, 2 do A:next() sync:next() end
      local st = roundtrip(path, A:state())
      assert.are.same(sync:state(), st)
      local want = {}
      for i = 1, 5 do want[i] = sync:next() end
      -- a fresh prefetching loader, the same loader moved back, and a synchronous one
      local B <close> = data.PrefetchLoader{loader_spec = spec, workers = 1, depth = 2}
      B:set_state(st)
      for _ = 1, 3 do A:next() end
      A:set_state(st)
      local C = sync_loader(spec)
      C:set_state(st)
      for i = 1, 5 do
        local wb, wa, wc = B:next(), A:next(), C:next()
        assert(same_batch(want[i], wb), task .. ": B batch " .. i)
        assert(same_batch(want[i], wa), task .. ": A batch " .. i)
        assert(same_batch(want[i], wc), task .. ": C batch " .. i)
      end
      assert.are.same(sync:state(), A:state())
      assert.are.same(sync:state(), B:state())
      -- a synchronous loader's state starts a prefetching one
      local D <close> = data.PrefetchLoader{loader_spec = spec, workers = 2}
      D:set_state(roundtrip(path, sync:state()))
      assert(same_batch(sync:next(), D:next()))
    end
    os.remove(path)
  end)

  it_db("counts and reports skipped videos on the main thread; on_error = 'error' raises the worker's error", function()
    local ids = {"house_s01e07_seg01_clip_02", "met_s02e03_seg01_clip_05", "bbt_s06e12_seg01_clip_08"}
    local spec = tv_spec("mfm-nce", {seed = 1})
    spec.dataset.ids = ids
    local reported = {}
    local P <close> = data.PrefetchLoader{loader_spec = spec, workers = 2,
      on_skip = function(vid, why) reported[#reported + 1] = {vid, why} end}
    local sync = sync_loader(spec)
    assert(same_batch(sync:next(), P:next()))
    assert.are.equal(1, P.stats.skipped)
    assert.are.equal("house_s01e07_seg01_clip_02", reported[1][1])
    assert.matches("not in the subtitle db", reported[1][2])
    assert.are.same(sync.stats, P.stats)
    local E <close> = data.PrefetchLoader{loader_spec = tv_spec("mfm-nce", {seed = 1, on_error = "error",
      dataset = spec.dataset}), workers = 1}
    helper.assert_error_contains(function() E:next() end, "house_s01e07_seg01_clip_02", "not in the subtitle db",
      "stack traceback")
    local bad = tv_spec("fom", {batch_size = 1})
    bad.dataset.ids = {"nope1", "nope2"}
    local all_bad <close> = data.PrefetchLoader{loader_spec = bad, workers = 1, depth = 3}
    helper.assert_error_contains(function() all_bad:next() end, "every video of a whole epoch")
  end)

  it("sends in-memory datasets (tensors in the spec) and refuses bad options", function()
    local videos = {}
    for i = 1, 5 do
      videos["v" .. i] = {v_feat = hero.arange(6 * i, {dtype = "f32"}):reshape(i * 2, 3),
        sub2frames = {{0, {0, 1}}}, input_ids = {{5 + i, 6, 7}}}
    end
    local spec = {dataset = {type = "MemoryDataset", videos = videos,
      special_ids = {CLS = 0, SEP = 2, PAD = 1, MASK = 996, v_range = {4, 990}}},
      task = "mlm", batch_size = 2, seed = 3}
    local P <close> = data.PrefetchLoader{loader_spec = spec, workers = 2}
    local sync = sync_loader(spec)
    for i = 1, 6 do assert(same_batch(sync:next(), P:next()), "batch " .. i) end
    helper.assert_error_contains(function() data.PrefetchLoader{loader_spec = spec, worker = 2} end,
      "unknown option 'worker'")
    helper.assert_error_contains(function() data.PrefetchLoader{loader_spec = spec, workers = 0} end,
      "opts.workers must be an integer >= 1")
    helper.assert_error_contains(function() data.PrefetchLoader{loader_spec = spec, depth = 0} end,
      "opts.depth must be an integer >= 1")
    helper.assert_error_contains(function()
      data.PrefetchLoader{loader_spec = {dataset = {type = "Nope"}, task = "mlm"}}
    end, "unknown type 'Nope'")
    helper.assert_error_contains(function()
      data.PrefetchLoader{loader_spec = {dataset = spec.dataset, task = "mlm", batch_size = 2, on_skip = 3}}
    end, "on_skip")
    local Q = data.PrefetchLoader{loader_spec = spec, workers = 1}
    Q:close()
    helper.assert_error_contains(function() Q:next() end, "closed")
  end)
end)
