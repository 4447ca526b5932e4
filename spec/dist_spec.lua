local hero = require "hero"
local helper = require "spec_helper"
local dist = hero.dist
local train = hero.train
local vsm = require "hero.models.vsm"

local here = debug.getinfo(1, "S").source:match("^@(.*)/dist_spec%.lua$") or "spec"

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- Runs a shell command; returns its exit status, its output (stdout and stderr) and the seconds
-- it took.
local function run(cmd)
  local t0 = os.time()
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__status=$?\""))
  local text = p:read("a")
  p:close()
  local status = tonumber(text:match("__status=(%d+)%s*$"))
  return status, text:gsub("__status=%d+%s*$", ""), os.time() - t0
end

local function have_mpirun()
  local status = run("command -v mpirun >/dev/null")
  return status == 0
end

describe("hero.dist in one process", function()
  it("shards a list as the reference's ids[rank::world]", function()
    local ids = {"a", "b", "c", "d", "e"}
    assert.same({"a", "c", "e"}, dist.shard(ids, 0, 2))
    assert.same({"b", "d"}, dist.shard(ids, 1, 2))
    assert.same({"c"}, dist.shard(ids, 2, 3))
    assert.same({}, dist.shard({}, 1, 4))
    assert.same(ids, dist.shard(ids)) -- not distributed: rank 0 of 1
    helper.assert_error_contains(function() dist.shard(ids, 2, 2) end, "rank must be an integer in 0..1")
    helper.assert_error_contains(function() dist.shard(ids, 0, 0) end, "world must be a positive integer")
  end)

  it("runs a script's main function: true, or false and the error's message", function()
    assert.is_true((dist.main(function() end, false)))
    local ok, err = dist.main(function() error("no such checkpoint", 0) end, false)
    assert.is_false(ok)
    assert.equal("no such checkpoint", err)
  end)

  it("derives distinct per-rank seeds from one seed; rank 0 keeps it", function()
    assert.equal(77, dist.rank_seed(77, 0))
    local seen = {[77] = true}
    for r = 1, 64 do
      local s = dist.rank_seed(77, r)
      assert.is_true(math.type(s) == "integer" and s >= 0)
      assert.is_nil(seen[s])
      seen[s] = true
      assert.equal(s, dist.rank_seed(77, r))
    end
    assert.not_equal(dist.rank_seed(77, 1), dist.rank_seed(78, 1))
    helper.assert_error_contains(function() dist.rank_seed(1.5, 0) end, "seed must be an integer")
  end)

  it("pad_cat concatenates along dim 1, zero-pads the other dims and is differentiable", function()
    local a = hero.full({1, 2}, 1.0)
    local b = hero.full({2, 3}, 2.0)
    a.requires_grad, b.requires_grad = true, true
    local y = dist.pad_cat({a, b})
    assert.same({{1, 1, 0}, {2, 2, 2}, {2, 2, 2}}, y:totable())
    local w = hero.arange(9, {dtype = "f32"}):view(3, 3)
    ;(y * w):sum():backward()
    assert.same({{0, 1}}, a.grad:totable())
    assert.same({{3, 4, 5}, {6, 7, 8}}, b.grad:totable())
  end)

  it("reports rank 0 of 1 before init and refuses collectives with a clear message", function()
    assert.equal(0, dist.rank())
    assert.equal(1, dist.world_size())
    assert.is_false(dist.is_initialized())
    local why = dist.available() and "call hero.dist.init() first"
      or "hero was built without MPI (install libopenmpi-dev and rebuild)"
    helper.assert_error_contains(function() dist.all_reduce(hero.ones(2)) end, "hero.dist.all_reduce", why)
    helper.assert_error_contains(function() dist.all_gather(hero.ones(2)) end, "hero.dist.all_gather", why)
    helper.assert_error_contains(function() dist.broadcast(hero.ones(2)) end, "hero.dist.broadcast", why)
    helper.assert_error_contains(function() dist.broadcast(hero.ones(2), 3) end, "root 3 is not a rank (0..0)")
    helper.assert_error_contains(function() dist.barrier() end, why)
    helper.assert_error_contains(function() dist.all_reduce(hero.ones(2), "prod") end,
      "hero.dist.all_reduce: unknown reduction 'prod' (sum, mean, max, min)")
    helper.assert_error_contains(function() dist.GradReducer({hero.ones(2)}, {bucket_md = 1}) end,
      "GradReducer: unknown option 'bucket_md' (bucket_mb)")
    helper.assert_error_contains(function() dist.GradReducer({hero.ones(2)}, {bucket_mb = 0 / 0}) end,
      "bucket_mb must be a positive number of MiB")
    local t = hero.ones(2)
    t:free()
    helper.assert_error_contains(function() dist.all_reduce(t) end, "freed")
  end)

  it("leaves a non-distributed Trainer as it was (rank 0 of 1, no gather)", function()
    local m = {forward = function() end, named_parameters = function() return {} end}
    local opt = {step = 0, zero_grad = 0, set_lr = 0, state_dict = 0, load_state_dict = 0}
    for k in pairs(opt) do opt[k] = function() end end
    local meta = train.MetaLoader{tasks = {a = train.CyclingLoader {{}}}}
    local tr = train.Trainer{model = m, optimizer = opt, loader = meta, lr = 1, total = 2}
    assert.equal(0, tr.rank)
    assert.equal(1, tr.world)
    assert.is_nil(tr.dist)
    local fopts = tr:forward_options("vsm", 1)
    assert.is_nil(fopts.all_gather)
    -- the models' per-step draws come from the task-draw stream (the MetaLoader's generator)
    local g = meta.generator:get_state()
    assert.is_number(fopts.draw())
    assert.are_not.same(g, meta.generator:get_state())
  end)
end)

describe("hero.dist over MPI (2 ranks on the CPU)", function()
  if not have_mpirun() then
    pending("mpirun is not installed (Debian: openmpi-bin, libopenmpi-dev): the MPI runs are skipped")
    return
  end
  if not dist.available() then
    pending("hero was built without MPI (install libopenmpi-dev and rebuild): the MPI runs are skipped")
    return
  end

  local common = require "dist.common"
  local tmpdir

  setup(function()
    tmpdir = os.tmpname()
    os.remove(tmpdir)
    assert(os.execute("mkdir -p " .. sh_quote(tmpdir)))
  end)

  teardown(function()
    if tmpdir and tmpdir:match("^/tmp/") then os.execute("rm -rf " .. sh_quote(tmpdir)) end
  end)

  -- Under the leak checker (make asan), OpenMPI's own allocations (mpirun, its plugins, which it
  -- unloads before exit so their frames cannot be named in suppressions) are left out of it.
  local asan = os.getenv("ASAN_OPTIONS")
  local env = asan and ("ASAN_OPTIONS=" .. sh_quote(asan .. ":detect_leaks=0") .. " ") or ""

  --- mpirun of the worker in MODE (each mode gets its own output directory), bounded in time.
  local function mpirun(mode, limit)
    local out = tmpdir .. "/" .. mode
    assert(os.execute("mkdir -p " .. sh_quote(out)))
    local cmd = string.format(env .. "LUA_PATH=%s LUA_CPATH=%s timeout -k 5 %d mpirun -np 2 --oversubscribe " ..
      "--allow-run-as-root --bind-to none --mca btl_vader_single_copy_mechanism none lua5.4 %s %s %s",
      sh_quote(package.path), sh_quote(package.cpath), limit, sh_quote(here .. "/dist/worker.lua"), mode, sh_quote(out))
    local status, text, seconds = run(cmd)
    return status, text, seconds, out
  end

  local main_status, main_text, main_out
  local function main_run()
    if main_status == nil then
      local _
      main_status, main_text, _, main_out = mpirun("main", 120)
    end
    assert(main_status == 0, "the MPI run failed:\n" .. main_text)
    return main_out
  end

  local function read(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return s
  end

  it("passes the collective checks of every rank (all_reduce, all_gather with padding, broadcast, errors)",
    function()
      local out = main_run()
      assert.equal("ok\n", read(out .. "/done_rank0.txt"))
      assert.equal("ok\n", read(out .. "/done_rank1.txt"))
      -- a save that rank 1 could not write failed on both ranks and left `latest` where it was
      assert.matches("another rank could not write its train state", read(out .. "/failed_save_rank0.txt"))
      assert.matches("is a directory, not a regular file", read(out .. "/failed_save_rank1.txt"))
    end)

  it("keeps or drops VSM's start/end loss on every rank together (the task-draw stream's draws)", function()
    local out = main_run()
    local r0, r1 = read(out .. "/svmr_rank0.txt"), read(out .. "/svmr_rank1.txt")
    assert.equal(r0, r1)
    assert.truthy(r0:find("1", 1, true) and r0:find("0", 1, true), r0) -- both kept and dropped
  end)

  it("validates with the reference's metrics over both ranks' batches, as one process pooling them", function()
    local out = main_run()
    local got = hero.json.decode(read(out .. "/valid.json"))
    local m = common.model()
    local both = {}
    for _, t in ipairs {"mlm", "fom", "mfm-nce"} do both[t] = {common.rank_batch(t, 0), common.rank_batch(t, 1)} end
    local loader = common.meta_loader(0, function(t) return train.CyclingLoader {common.rank_batch(t, 0)} end)
    local sc = common.schedule
    local tr = train.Trainer{model = m, optimizer = common.adamw(m), loader = loader, lr = sc.lr, warmup = sc.warmup,
      total = sc.total, progress = false, valid = {mlm_x = both.mlm, fom_x = both.fom, ["mfm-nce"] = both["mfm-nce"]},
      validators = require("hero.train.pretrain_valid").validators()}
    local want = tr:validate()
    for task, metrics in pairs(want) do
      for k, v in pairs(metrics) do assert.near(v, got[task][k], 1e-5 * math.max(1, math.abs(v)), task .. "." .. k) end
    end
    assert.is_number(got.mlm_x.acc)
  end)

  it("trains like one process averaging the two ranks' micro-batches (MLM, MFM-NCE, FOM)", function()
    local out = main_run()
    local t0 = read(out .. "/tasks_rank0.txt")
    local tasks = t0:match("^([^\n]+)")
    local losses = {}
    for v in t0:match("\n([^\n]+)"):gmatch("[^,]+") do losses[#losses + 1] = tonumber(v) end
    -- every rank trained rank 0's task draws; rank 1's own generator would have drawn others
    assert.equal(t0, read(out .. "/tasks_rank1.txt"))
    local own = common.meta_loader(1, function() return train.CyclingLoader {{}} end)
    local own_tasks = {}
    for i = 1, common.UPDATES do own_tasks[i] = own:draw() end
    assert.not_equal(tasks, table.concat(own_tasks, ","))
    -- one process: both ranks' batches as the 2 micro-batches of each update, each loss halved
    -- (the ranks' average of per-rank gradients)
    local m = common.model()
    local half = setmetatable({forward = function(_, b, task, o)
      local r = m:forward(b, task, o)
      return {loss = r.loss * 0.5}
    end}, {__index = m})
    local loaders = {}
    for _, t in ipairs(common.TASKS) do
      loaders[t] = train.CyclingLoader {common.rank_batch(t, 0), common.rank_batch(t, 1)}
    end
    local meta = train.MetaLoader{tasks = loaders, accum = 2, generator = hero.Generator(common.SEED)}
    local sc = common.schedule
    local tr = train.Trainer{model = half, optimizer = common.adamw(m), loader = meta, lr = sc.lr, warmup = sc.warmup,
      total = sc.total, progress = false}
    local recs = tr:train(common.UPDATES)
    local ref_tasks = {}
    for i, r in ipairs(recs) do
      ref_tasks[i] = r.task
      assert.is_true(math.abs(2 * r.loss - losses[i]) < 1e-5 * math.abs(losses[i]),
        string.format("update %d: loss %.9g, one process %.9g", i, losses[i], 2 * r.loss))
    end
    assert.equal(tasks, table.concat(ref_tasks, ","))
    local p0 = hero.load(out .. "/params_rank0.safetensors")
    local p1 = hero.load(out .. "/params_rank1.safetensors")
    local n = 0
    for name, t in pairs(m:state_dict()) do
      assert.is_true(p0[name]:eq(p1[name]):all():item(), name .. " differs between the ranks")
      assert.tensor_near(p0[name], t)
      n = n + 1
    end
    assert.is_true(n > 100)
    -- rank 0 alone logged; checkpoints hold every rank's own state
    local lines = 0
    for _ in read(out .. "/run/log.jsonl"):gmatch("[^\n]+") do lines = lines + 1 end
    assert.equal(common.UPDATES, lines)
    assert.is_not_nil(read(out .. "/run/ckpt/train_state_2_rank1.safetensors"))
    assert.equal(2, hero.load(out .. "/run/ckpt/train_state_2.safetensors").world_size)
  end)

  it("gives VSM the reference's gradient: mean of the local losses + (1/R) * the ranking loss on all ranks",
    function()
      local out = main_run()
      local got = hero.load(out .. "/vsm_grads.safetensors")
      local loss = tonumber(read(out .. "/vsm_loss.txt"))
      local m = common.model()
      local b0, b1 = common.rank_batch("vsm", 0), common.rank_batch("vsm", 1)
      local o0, o1 = m:forward(b0, "vsm"), m:forward(b1, "vsm")
      local q = hero.cat({o0.q_mod, o1.q_mod}, 1)
      local Y = dist.pad_cat({o0.c_out, o1.c_out})
      local mask = dist.pad_cat({b0.c_attn_masks, b1.c_attn_masks})
      local o = m.opts
      local l_ctx, l_q = vsm.ranking_losses(vsm.video_scores(q, Y, mask),
        {margin = o.margin, loss_type = o.ranking_loss_type, hard = o.hard_negative})
      local global = l_ctx * o.lw_neg_ctx + l_q * o.lw_neg_q
      local objective = (o0.loss_st_ed + o1.loss_st_ed) * 0.5 + global * 0.5
      objective:backward()
      -- each rank's loss is its local loss + the global loss; the log shows their mean
      local want = ((o0.loss_st_ed + o1.loss_st_ed) * 0.5 + global):item()
      assert.is_true(math.abs(loss - want) < 1e-5 * math.abs(want), string.format("loss %.9g, want %.9g", loss, want))
      local n = 0
      for _, p in ipairs(m:named_parameters()) do
        local name, g = p[1], p[2].grad
        if g then
          assert.is_not_nil(got[name], name .. " has no gradient in the MPI run")
          assert.tensor_near(got[name], g)
          n = n + 1
        else
          assert.is_nil(got[name], name)
        end
      end
      assert.is_true(n > 80)
    end)

  it("examples/pretrain.lua --dist validates each rank's equal share of the validation videos", function()
    if not (hero.data.has_lmdb and hero.data.has_lz4) then
      pending("hero was built without LMDB/LZ4: the database run is skipped")
      return
    end
    local fx = helper.fixture("data")
    local dir = tmpdir .. "/pretrain"
    assert(os.execute("mkdir -p " .. sh_quote(dir)))
    local section = helper.tiny_section {type_vocab_size = 1, vocab_size = 50265}
    local c_section = helper.tiny_section {type_vocab_size = 2, vocab_size = 50265, max_position_embeddings = 32}
    hero.json.write_file(dir .. "/model.json", {f_config = section, c_config = c_section, q_config = section})
    -- 7 videos: shares of 4 and 3 would give rank 0 two batches of 3 and rank 1 one, and rank 0's
    -- second VSM batch would wait forever for rank 1's part of the gather
    local ids = hero.json.keys(hero.json.read_file(fx .. "/txt_db/tv_subtitles.db/vid2len.json"))
    table.sort(ids)
    assert.equal(7, #ids)
    hero.json.write_file(dir .. "/ids.json", ids)
    local args = {"examples/pretrain.lua", "--dist", "--config", dir .. "/model.json", "--vfeat-db",
      fx .. "/video_db/tv/resnet_slowfast_1.5", "--sub-db", fx .. "/txt_db/tv_subtitles.db", "--max-clip-len", "12",
      "--tasks", "vsm,mlm", "--batch-size", "2", "--val-batch-size", "3", "--valid-ids", dir .. "/ids.json",
      "--valid-every", "1", "--steps", "1", "--accum", "1", "--out", dir .. "/run", "--quiet"}
    for i, a in ipairs(args) do args[i] = sh_quote(a) end
    local cmd = string.format(env .. "LUA_PATH=%s LUA_CPATH=%s timeout -k 5 120 mpirun -np 2 --oversubscribe " ..
      "--allow-run-as-root --bind-to none --mca btl_vader_single_copy_mechanism none lua5.4 %s",
      sh_quote(package.path), sh_quote(package.cpath), table.concat(args, " "))
    local status, text = run(cmd)
    assert(status == 0, "the MPI pre-training run failed:\n" .. text)
    local rec = hero.json.decode(io.lines(dir .. "/run/log.jsonl")())
    assert.is_number(rec.valid.vsm.loss_overall)
    assert.is_number(rec.valid.mlm.acc)
  end)

  it("ends every rank with a clear error when one rank fails", function()
    local status, text, seconds = mpirun("fail", 60)
    assert.is_true(status ~= 0, "the job should fail:\n" .. text)
    assert.is_true(seconds < 30, "it took " .. seconds .. " s")
    assert.is_truthy(text:find("hero.dist: rank 1: failed:", 1, true), text)
    assert.is_truthy(text:find("injected failure on rank 1", 1, true), text)
  end)

  -- One rank per GPU (NCCL refuses two ranks on one device): 2 ranks where there are 2 GPUs, else 1.
  it("runs the collectives on CUDA tensors through NCCL, as on CPU tensors #cuda", function()
    local ngpu = hero.cuda.device_count()
    if ngpu == 0 then
      pending("no GPU")
      return
    end
    local np = math.min(ngpu, 2)
    local out = tmpdir .. "/nccl"
    assert(os.execute("mkdir -p " .. sh_quote(out)))
    local cmd = string.format(env .. "LUA_PATH=%s LUA_CPATH=%s timeout -k 5 300 mpirun -np %d --oversubscribe " ..
      "--allow-run-as-root --bind-to none --mca btl_vader_single_copy_mechanism none lua5.4 %s nccl %s",
      sh_quote(package.path), sh_quote(package.cpath), np, sh_quote(here .. "/dist/worker.lua"), sh_quote(out))
    local status, text = run(cmd)
    assert(status == 0, "the NCCL run failed:\n" .. text)
    print(text:match("nccl all_reduce[^\n]*"))
    for r = 0, np - 1 do assert.equal("ok\n", read(string.format("%s/done_rank%d.txt", out, r))) end
  end)

  it("ends the job when a rank never joins a collective (watchdog)", function()
    local status, text, seconds = mpirun("hang", 60)
    assert.is_true(status ~= 0, "the job should fail:\n" .. text)
    assert.is_true(seconds < 30, "it took " .. seconds .. " s")
    assert.is_truthy(text:find("hero.dist: rank 0: hero.dist.all_reduce waited more than 1.5 s", 1, true), text)
  end)
end)
