--- Crash consistency: real runs killed with SIGKILL at seeded pseudo-random moments.
--
-- Pre-training (examples/pretrain.lua on the smoke fixture, a checkpoint after every update, so
-- most of a run's time is spent writing checkpoints and many kills land inside a write): after
-- each kill the checkpoint named by ckpt/latest loads and is byte for byte the checkpoint of that
-- step of an uninterrupted run, log.jsonl reads back (a torn last line is ignored) with steps
-- 1, 2, 3, ...; finally --resume from what survived finishes the run, and its last checkpoint,
-- its log and its TensorBoard scalars are exactly those of the uninterrupted run, with no
-- temporary file left behind. Database writing (hero.data.writer, as examples/prepro.lua uses it):
-- after each kill the database is absent, the previous one or the new one, complete.
local hero = require "hero"
local helper = require "spec_helper"
local core = hero.core
local json = hero.json
local tensorboard = require "hero.tensorboard"

local FIXTURE = helper.fixture("hero-smoke")
local STEPS = 60
local KILLS = 24
local ASAN = (os.getenv("LD_PRELOAD") or ""):find("libasan") ~= nil

local tmpdir
setup(function()
  tmpdir = os.tmpname()
  os.remove(tmpdir)
  assert(os.execute('mkdir -p "' .. tmpdir .. '"'))
end)
teardown(function()
  if tmpdir and tmpdir:match("^/tmp/") then os.execute('rm -rf "' .. tmpdir .. '"') end
end)

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- A seeded generator of its own (xorshift64*), so the kill times do not depend on other specs.
local function rng(seed)
  local s = seed
  return function(lo, hi)
    s = s ~ (s >> 12)
    s = s ~ (s << 25)
    s = s ~ (s >> 27)
    local u = ((s * 0x2545F4914F6CDD1D) >> 11) / 9007199254740992.0
    return lo + (hi - lo) * u
  end
end

-- The interpreter with this process's module paths (the child must load the same hero).
local function lua_argv(script, args)
  local argv = {"env", "LUA_PATH=" .. package.path, "LUA_CPATH=" .. package.cpath, "lua5.4", script}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return argv
end

local function pretrain_args(out, extra)
  local a = {"--fixture", FIXTURE, "--out", out, "--steps", tostring(STEPS), "--save-every", "1", "--quiet",
             "--threads", "1"}
  for _, x in ipairs(extra or {}) do a[#a + 1] = x end
  return a
end

-- Runs to the end; fails with the child's stderr when it does not exit 0.
local function run(argv, errfile)
  local pid = core._spawn(argv, {stdout = "/dev/null", stderr = errfile})
  local how, code = core._wait(pid)
  if how ~= "exited" or code ~= 0 then
    error(string.format("%s %s: %s %s\n%s", argv[5], argv[6] or "", how, code, read(errfile) or ""), 2)
  end
end

local function temporaries(dir)
  local ok, names = pcall(core.fs_listdir, dir)
  local out = {}
  if ok then
    for _, n in ipairs(names) do
      if hero.io.is_temporary(n) or n:find("%.partial%-") then out[#out + 1] = n end
    end
  end
  return out
end

-- The records of log.jsonl without the fields that depend on timing.
local function log_records(path)
  local out = {}
  for _, r in ipairs(json.read_lines(path)) do
    r.seconds, r.tokens_per_s = nil, nil
    out[#out + 1] = r
  end
  return out
end

-- TensorBoard scalars of a run as "tag@step" -> value (tokens_per_s depends on timing).
local function tb_scalars(dir)
  local pts, torn = tensorboard.read_run(dir)
  local map, n = {}, 0
  for _, p in ipairs(pts) do
    if p.tag ~= "tokens_per_s" then
      local k = p.tag .. "@" .. p.step
      assert(map[k] == nil, "TensorBoard point " .. k .. " appears twice")
      map[k] = p.value
      n = n + 1
    end
  end
  return map, n, torn
end

describe("crash consistency", function()
  it("pre-training killed with SIGKILL resumes to the same parameters, bit for bit", function()
    local ref, out = tmpdir .. "/ref", tmpdir .. "/run"
    local err = tmpdir .. "/stderr.txt"
    local t0 = core._now()
    run(lua_argv("examples/pretrain.lua", pretrain_args(ref)), err)
    local per_step = (core._now() - t0) / STEPS
    local random = rng(20240611)
    local kills = ASAN and 8 or KILLS
    local stats = {kills = 0, with_tmp = 0, torn_log = 0, finished = 0, latest = {}}
    for k = 1, kills do
      local start = hero.train.Trainer.latest_step(out)
      -- what earlier kills left is removed by the next run; the spec looks only at new ones
      hero.io.remove_stale_temporaries(out .. "/ckpt")
      local pid = core._spawn(lua_argv("examples/pretrain.lua", pretrain_args(out, {"--resume"})),
        {stdout = "/dev/null", stderr = err})
      local how
      local function wait_until(cond)
        local deadline = core._now() + 30
        while not how and not cond() and core._now() < deadline do
          core._sleep(0.001)
          how = core._wait(pid, true)
        end
      end
      if k % 4 == 0 then
        -- during start-up and resume (the log is cut back there)
        core._sleep(random(0, 3) * per_step)
      elseif k % 4 == 1 then
        -- once the run has published a new checkpoint, at a random moment of the next update
        wait_until(function() return hero.train.Trainer.latest_step(out) ~= start end)
        if not how then core._sleep(random(0, 1.2) * per_step) end
      else
        -- once a checkpoint file is being written: a few milliseconds later, inside the write, the
        -- rename or the next file's write
        wait_until(function() return #temporaries(out .. "/ckpt") > 0 end)
        if not how then core._sleep(random(0, 0.02)) end
      end
      if not how then
        core._kill(pid, "KILL")
        how = core._wait(pid)
      end
      if how == "exited" then
        stats.finished = stats.finished + 1
        break
      end
      stats.kills = stats.kills + 1
      if #temporaries(out .. "/ckpt") > 0 or #temporaries(out) > 0 then stats.with_tmp = stats.with_tmp + 1 end
      -- the checkpoint `latest` names is complete and is exactly the uninterrupted run's
      local n = hero.train.Trainer.latest_step(out)
      if n then
        stats.latest[#stats.latest + 1] = n
        for _, f in ipairs {"step_%d.safetensors", "train_state_%d.safetensors"} do
          local name = string.format(f, n)
          local got = read(out .. "/ckpt/" .. name)
          assert.is_truthy(got, name .. " named by latest is missing")
          assert.is_true(got == read(ref .. "/ckpt/" .. name), name .. " differs from the uninterrupted run's")
          assert.has_no.errors(function() hero.load(out .. "/ckpt/" .. name) end)
        end
        -- only the latest checkpoint is needed (keeps the disk use small)
        for old = 1, n - 1 do
          os.remove(string.format("%s/ckpt/step_%d.safetensors", out, old))
          os.remove(string.format("%s/ckpt/train_state_%d.safetensors", out, old))
        end
      end
      -- the log reads back (a torn last line is left out), its steps are 1, 2, ...
      local text = read(out .. "/log.jsonl")
      if text and #text > 0 then
        if text:sub(-1) ~= "\n" then stats.torn_log = stats.torn_log + 1 end
        for i, r in ipairs(json.read_lines(out .. "/log.jsonl")) do assert.equals(i, r.step) end
      end
    end
    -- a torn last line and a torn last event record, as a kill inside a write leaves them
    local lf = assert(io.open(out .. "/log.jsonl", "ab"))
    lf:write('{"step":')
    lf:close()
    local tbdir = out .. "/tensorboard"
    local names = core.fs_listdir(tbdir)
    local ev = assert(io.open(tbdir .. "/" .. names[#names], "ab"))
    ev:write(tensorboard.record("torn"):sub(1, 9))
    ev:close()
    local _, torn = tensorboard.read_scalars(tbdir .. "/" .. names[#names])
    assert.is_truthy(torn, "the torn event record is reported")
    run(lua_argv("examples/pretrain.lua", pretrain_args(out, {"--resume"})), err)

    -- the final state is the uninterrupted run's, byte for byte
    for _, f in ipairs {"step_%d.safetensors", "train_state_%d.safetensors"} do
      local name = string.format(f, STEPS)
      assert.is_true(read(out .. "/ckpt/" .. name) == read(ref .. "/ckpt/" .. name), name .. " differs")
    end
    local a, b = hero.load(out .. "/ckpt/step_" .. STEPS .. ".safetensors"),
      hero.load(ref .. "/ckpt/step_" .. STEPS .. ".safetensors")
    for k, v in pairs(b) do assert.equals(0, (a[k] - v):abs():max():item(), k) end
    -- every update logged once, with the uninterrupted run's values
    assert.same(log_records(ref .. "/log.jsonl"), log_records(out .. "/log.jsonl"))
    assert.equals("\n", read(out .. "/log.jsonl"):sub(-1))
    local want, nwant = tb_scalars(ref .. "/tensorboard")
    local got, ngot, ntorn = tb_scalars(tbdir)
    assert.equals(nwant, ngot)
    assert.same(want, got)
    assert.is_true(ntorn >= 1)
    -- what the killed writers left behind is gone
    assert.same({}, temporaries(out .. "/ckpt"))
    assert.same({}, temporaries(out))
    assert.is_true(stats.kills >= (ASAN and 4 or 16), "too few kills landed before the run finished")
    print(string.format("\n  crash spec: %d SIGKILLs of pre-training (%d with a checkpoint temporary file present, "
      .. "%d with a torn log line), %d finished before its kill; latest after each kill: %s; %.3f s per update",
      stats.kills, stats.with_tmp, stats.torn_log, stats.finished, table.concat(stats.latest, ","), per_step))
  end)

  it("readers ignore a torn last line or record, and only that", function()
    local path = tmpdir .. "/torn.jsonl"
    local f = assert(io.open(path, "wb"))
    f:write('{"step":1}\n{"step":2}\n{"step":3,"lo')
    f:close()
    local recs = json.read_lines(path)
    assert.equals(2, #recs)
    assert.equals(2, recs[2].step)
    f = assert(io.open(path, "wb"))
    f:write('{"step":1}\n{"step":2,"lo\n{"step":3}\n')
    f:close()
    helper.assert_error_contains(function() json.read_lines(path) end, "torn.jsonl:2")
    -- an event file cut inside its last record (header or body): the complete records read back
    local w = tensorboard.Writer(tmpdir .. "/tb", {filename = "events.out.tfevents.1.test"})
    w:add_scalar("a", 1.5, 1)
    w:add_scalar("a", 2.5, 2)
    w:close()
    local full = read(w.path)
    for _, cut in ipairs {5, 20} do
      f = assert(io.open(w.path, "wb"))
      f:write(full:sub(1, #full - cut))
      f:close()
      local pts, torn = tensorboard.read_scalars(w.path)
      assert.equals(1, #pts)
      assert.equals(1.5, pts[1].value)
      assert.is_number(torn)
    end
  end)

  it("a fresh run appending to a log with a torn last line drops the partial line", function()
    local out = tmpdir .. "/fresh"
    assert(os.execute('mkdir -p "' .. out .. '"'))
    local f = assert(io.open(out .. "/log.jsonl", "wb"))
    f:write('{"step":1}\n{"step":2,"lo')
    f:close()
    local a = pretrain_args(out)
    a[6] = "1" -- --steps 1
    run(lua_argv("examples/pretrain.lua", a), tmpdir .. "/stderr.txt")
    local lines = {}
    for line in read(out .. "/log.jsonl"):gmatch("[^\n]+") do lines[#lines + 1] = json.decode(line) end
    assert.equals(2, #lines)
    assert.equals(1, lines[1].step)
    assert.equals(1, lines[2].step)
    assert.is_number(lines[2].loss)
  end)

  local it_lmdb = core.has_lmdb() and it or function(name) pending(name .. " (hero was built without LMDB support)") end
  it_lmdb("a database being written and killed is absent, the previous one or the new one, never partial", function()
    local driver = tmpdir .. "/db_driver.lua"
    local f = assert(io.open(driver, "wb"))
    -- generation g: 40 + g videos, video i holds the value 1000 g + i in every element
    f:write([[
local hero = require "hero"
local dest, g = arg[1], tonumber(arg[2])
local w = hero.data.writer.VideoDbWriter(dest, {overwrite = true})
for i = 1, 40 + g do w:add(string.format("v%03d", i), hero.full({256, 256}, 1000 * g + i)) end
w:commit()
]])
    f:close()
    local root = tmpdir .. "/db"
    assert(os.execute('mkdir -p "' .. root .. '"'))
    local dest = root .. "/resnet_slowfast_1.5"
    local err = tmpdir .. "/db_stderr.txt"
    local function check()
      if not read(dest .. "/data.mdb") then return nil end
      local db = core.lmdb_open(dest)
      local keys = db:keys()
      local n = #keys
      local g = n - 40
      assert.is_true(g >= 1, "a database with " .. n .. " videos")
      for i, k in ipairs(keys) do
        local v = db:get_msgpack(k).features
        assert.equals(1000 * g + i, v:mean():item())
      end
      db:close()
      return g
    end
    local random = rng(99)
    local t0 = core._now()
    run(lua_argv(driver, {dest, "1"}), err)
    local seconds = core._now() - t0
    assert.equals(1, check())
    local seen = {}
    local kills, previous, partial = 0, 1, 0
    for g = 2, ASAN and 5 or 13 do
      local pid = core._spawn(lua_argv(driver, {dest, tostring(g)}), {stdout = "/dev/null", stderr = err})
      local how
      if g % 2 == 0 then
        -- once the temporary directory exists: while videos are added, synced or renamed
        local deadline = core._now() + 30
        while not how and #temporaries(root) == 0 and core._now() < deadline do
          core._sleep(0.001)
          how = core._wait(pid, true)
        end
        if not how then core._sleep(random(0, 0.6) * seconds) end
      else
        core._sleep(random(0.2, 1.1) * seconds)
      end
      if not how then
        core._kill(pid, "KILL")
        how = core._wait(pid)
      end
      if how == "signaled" then kills = kills + 1 end
      if #temporaries(root) > 0 then partial = partial + 1 end
      -- a later writer cleans up (and puts back a previous database a kill left renamed aside)
      hero.data.writer.remove_stale(dest)
      assert.same({}, temporaries(root))
      local got = check()
      assert.is_true(got == previous or got == g, string.format("generation %s after killing the writer of %d",
        tostring(got), g))
      seen[#seen + 1] = got
      previous = got
    end
    run(lua_argv(driver, {dest, "20"}), err)
    assert.equals(20, check())
    assert.same({}, temporaries(root))
    assert.is_true(kills >= (ASAN and 1 or 4), kills .. " of the writers were killed before they finished")
    print(string.format("  crash spec: %d SIGKILLs of a database writer (%d left a partial directory); the "
      .. "database after each: generation %s", kills, partial, table.concat(seen, ",")))
  end)
end)
