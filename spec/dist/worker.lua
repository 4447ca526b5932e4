--- One rank of the MPI runs of spec/dist_spec.lua:
--   mpirun -np 2 lua5.4 spec/dist/worker.lua MODE OUT_DIR
-- MODE "main": the collectives, a VSM update, a data-parallel training run (with a resume) and a
-- validation, whose results the spec compares with one process; "fail": rank 1 raises an error while rank 0 waits in
-- a collective; "hang": rank 1 never reaches the collective rank 0 waits in (watchdog 1.5 s);
-- "nccl": the collectives on CUDA tensors (one GPU per rank) against the same ones on CPU tensors.
-- A failed check raises an error, which hero.dist.run turns into the end of the whole job.
local here = debug.getinfo(1, "S").source:match("^@(.*)/dist/worker%.lua$") or "spec"
package.path = here .. "/?.lua;" .. here .. "/../lua/?.lua;" .. here .. "/../lua/?/init.lua;" .. package.path

local hero = require "hero"
local dist = hero.dist
local train = hero.train

local mode, out = arg[1], arg[2]
if not mode or not out then
  io.stderr:write("usage: worker.lua main|fail|hang|nccl OUT_DIR\n")
  os.exit(2)
end

local function check(cond, fmt, ...)
  if not cond then error(string.format(fmt, ...), 2) end
end

local function same(a, b)
  return table.concat(a:size(), "x") == table.concat(b:size(), "x") and a:eq(b):all():item()
end

local function near(a, b, tol)
  return table.concat(a:size(), "x") == table.concat(b:size(), "x") and
    (a:double() - b:double()):abs():max():item() <= (tol or 0)
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

-- ------------------------------------------------------------------ collectives

local function collectives(rank, world)
  check(world == 2, "the spec runs 2 ranks, got %d", world)
  -- all_reduce: sum on f32, mean on f64, max on i64, a non-contiguous view
  local a = hero.tensor({1, 2, 3}):add(rank * 10)
  check(dist.all_reduce(a) == a, "all_reduce returns its tensor")
  check(same(a, hero.tensor({12, 14, 16})), "all_reduce sum f32: %s", tostring(a))
  local m = hero.tensor({1, 2, 4}, {dtype = "f64"}):mul(rank + 1)
  dist.all_reduce(m, "mean")
  check(same(m, hero.tensor({1.5, 3, 6}, {dtype = "f64"})), "all_reduce mean f64")
  local i = hero.tensor({rank, 5 - rank, 2 ^ 40 + rank}, {dtype = "i64"})
  dist.all_reduce(i, "max")
  check(same(i, hero.tensor({1, 5, 2 ^ 40 + 1}, {dtype = "i64"})), "all_reduce max i64")
  local base = hero.arange(6, {dtype = "f32"}):view(2, 3):add(rank)
  local tv = base:t()
  dist.all_reduce(tv)
  check(same(base, hero.arange(6, {dtype = "f32"}):view(2, 3):mul(2):add(1)), "all_reduce on a transposed view")
  local ok, err = pcall(dist.all_reduce, hero.ones({3}, {dtype = "i64"}), "mean")
  check(not ok and err:find("needs a floating tensor", 1, true), "mean on i64: %s", tostring(err))
  ok, err = pcall(dist.all_reduce, hero.ones(rank + 2))
  check(not ok and err:find("the ranks passed different element counts", 1, true), "mismatch: %s", tostring(err))
  ok, err = pcall(dist.all_reduce, hero.ones({2}, {dtype = "bf16"}))
  check(not ok and err:find("bf16 is not supported", 1, true), "bf16: %s", tostring(err))
  -- all_gather: sizes differ along both dims, dim 2 padded with zeros (a mask gathers as 0)
  local g, counts = dist.all_gather(hero.full({rank + 1, rank + 2}, rank + 1, {dtype = "i64"}))
  check(same(g, hero.tensor({{1, 1, 0}, {2, 2, 2}, {2, 2, 2}}, {dtype = "i64"})), "all_gather padded: %s",
    tostring(g))
  check(counts[1] == 1 and counts[2] == 2 and #counts == 2, "all_gather counts")
  local s = dist.all_gather(hero.tensor(rank + 0.5))
  check(same(s, hero.tensor({0.5, 1.5})), "all_gather of scalars")
  ok, err = pcall(dist.all_gather, rank == 0 and hero.ones(2) or hero.ones(2, 2))
  check(not ok and err:find("the ranks passed different tensors", 1, true), "all_gather mismatch: %s", tostring(err))
  -- the differentiable gather: the backward returns this rank's slice of the gradient
  local x = hero.full({rank + 1, rank + 2}, 1.0)
  x.requires_grad = true
  local y = dist.all_gather_grad(x)
  local w = hero.arange(9, {dtype = "f32"}):view(3, 3)
  local loss = (y * w):sum()
  loss:backward()
  local want = rank == 0 and hero.tensor({{0, 1}}) or hero.tensor({{3, 4, 5}, {6, 7, 8}})
  check(same(x.grad, want), "all_gather_grad backward on rank %d: %s", rank, tostring(x.grad))
  check(same(dist.pad_cat({hero.full({1, 2}, 1.0), hero.full({2, 3}, 1.0)}), y:detach()),
    "pad_cat equals the gathered tensor")
  -- broadcast (also into a non-contiguous view)
  local b = hero.tensor({rank, rank * 2}, {dtype = "f64"})
  dist.broadcast(b, 1)
  check(same(b, hero.tensor({1, 2}, {dtype = "f64"})), "broadcast from rank 1")
  local bb = hero.arange(6, {dtype = "f32"}):view(2, 3):mul(rank + 1)
  dist.broadcast(bb:t())
  check(same(bb, hero.arange(6, {dtype = "f32"}):view(2, 3)), "broadcast into a transposed view")
  -- gradient averaging: a parameter with a gradient on rank 0 only gets half of it on both ranks
  local p1, p2, p3 = hero.zeros(2), hero.zeros(3), hero.zeros(1)
  if rank == 0 then p1.grad = hero.tensor({2, 4}) end
  p2.grad = hero.tensor({1, 2, 3}):mul(rank + 1)
  local means = dist.average_gradients({{"p1", p1}, {"p2", p2}, {"p3", p3}}, {rank + 1, 10})
  check(same(p1.grad, hero.tensor({1, 2})), "average_gradients: one-rank gradient %s", tostring(p1.grad))
  check(same(p2.grad, hero.tensor({1.5, 3, 4.5})), "average_gradients: %s", tostring(p2.grad))
  check(p3.grad == nil, "average_gradients: a parameter without gradients keeps none")
  check(means[1] == 1.5 and means[2] == 10, "average_gradients extras: %s %s", means[1], means[2])
  dist.barrier()
end

-- ------------------------------------------------------------------ VSM through the Trainer

--- An optimizer that records the gradients the trainer hands it.
local function recorder(m)
  local rec = {grads = {}}
  local params = m:named_parameters()
  function rec.set_lr(_, lr) rec.lr = lr end
  function rec.step()
    for _, p in ipairs(params) do
      if p[2].grad then rec.grads[p[1]] = p[2].grad:clone() end
    end
  end
  function rec.zero_grad()
    for _, p in ipairs(params) do p[2].grad = nil end
  end
  function rec.state_dict() return {} end
  function rec.load_state_dict() end
  return rec
end

local function vsm_update(common, rank)
  local m = common.model()
  local rec = recorder(m)
  local loader = train.MetaLoader{tasks = {vsm = train.CyclingLoader {common.rank_batch("vsm", rank)}}}
  local tr = train.DistributedTrainer{model = m, optimizer = rec, loader = loader, lr = 1e-3, warmup = 1, total = 10,
    grad_norm = false, progress = false}
  local r = tr:train(1)[1]
  if rank == 0 then
    hero.save(out .. "/vsm_grads.safetensors", rec.grads)
    write(out .. "/vsm_loss.txt", string.format("%.17g\n", r.loss))
  end
end

-- ------------------------------------------------------------------ data-parallel training

local function trainer(common, rank, m, opt, dir)
  local loader = common.meta_loader(rank, function(t) return train.CyclingLoader {common.rank_batch(t, rank)} end)
  local sc = common.schedule
  return train.Trainer{model = m, optimizer = opt, loader = loader, lr = sc.lr, warmup = sc.warmup, total = sc.total,
    progress = false, out_dir = dir, save_every = 2, dist = true, seed = common.SEED}
end

local function data_parallel(common, rank)
  local m = common.model()
  if rank == 1 then
    -- start from other values: the broadcast from rank 0 must replace them
    hero.no_grad(function()
      for _, p in ipairs(m:named_parameters()) do p[2]:detach():add_(0.25) end
    end)
  end
  local tr = trainer(common, rank, m, common.adamw(m), out .. "/run")
  local tasks, losses = {}, {}
  for i, r in ipairs(tr:train(common.UPDATES)) do
    tasks[i] = r.task
    losses[i] = string.format("%.9g", r.loss)
  end
  hero.save(string.format("%s/params_rank%d.safetensors", out, rank), m:state_dict())
  write(string.format("%s/tasks_rank%d.txt", out, rank), table.concat(tasks, ",") .. "\n" ..
    table.concat(losses, ",") .. "\n")
  -- resuming from the checkpoint of update 2 gives the same parameters on every rank
  local m2 = common.model()
  local tr2 = trainer(common, rank, m2, common.adamw(m2), out .. "/resumed")
  check(tr2:resume(out .. "/run", 2) == 2, "resume")
  tr2:train(common.UPDATES - 2)
  local p2 = {}
  for _, p in ipairs(m2:named_parameters()) do p2[p[1]] = p[2] end
  for _, p in ipairs(m:named_parameters()) do
    check(near(p[2]:detach(), p2[p[1]]:detach(), 0), "rank %d: %s differs after resuming", rank, p[1])
  end
end

-- A checkpoint that one rank cannot write fails the save on every rank, and `latest` keeps naming
-- the previous checkpoint (rank 0 published it although rank 1 had failed, and the run could not be
-- resumed). Writes each rank's error.
local function failed_save(common, rank)
  local m = common.model()
  local dir = out .. "/failed_save"
  local tr = trainer(common, rank, m, common.adamw(m), dir)
  tr:train(2) -- the checkpoint of update 2 (save_every = 2)
  check(read_file(dir .. "/ckpt/latest") == "2\n", "rank %d: no checkpoint of update 2", rank)
  -- a directory where rank 1's train state of update 4 goes: its rename fails
  if rank == 1 then hero.core.fs_mkdir(dir .. "/ckpt/train_state_4_rank1.safetensors", true) end
  dist.barrier()
  local ok, err = pcall(tr.train, tr, 2)
  check(not ok, "rank %d: the save of update 4 did not fail", rank)
  check(tostring(err):find("saving the checkpoint of step 4 failed", 1, true), "rank %d: %s", rank, tostring(err))
  dist.barrier()
  check(read_file(dir .. "/ckpt/latest") == "2\n", "rank %d: latest moved past the failed save", rank)
  write(string.format("%s/failed_save_rank%d.txt", out, rank), tostring(err) .. "\n")
end

-- Ranks given different schedules are refused by every rank when the Trainer is made (a rank with
-- more steps waited in a collective until the watchdog ended the job).
local function mismatched_schedule(common, rank)
  local m = common.model()
  local loader = common.meta_loader(rank, function(t) return train.CyclingLoader {common.rank_batch(t, rank)} end)
  local sc = common.schedule
  local ok, err = pcall(train.Trainer, {model = m, optimizer = common.adamw(m), loader = loader, lr = sc.lr,
    warmup = sc.warmup, total = sc.total + rank, progress = false, dist = true, seed = common.SEED})
  check(not ok, "rank %d: a Trainer with another rank's schedule was made", rank)
  check(tostring(err):find("every rank must run the same schedule", 1, true), "rank %d: %s", rank, tostring(err))
end

-- Validation with the reference's metrics: each rank its own batch; the sums are added over the
-- ranks before the metrics are made, so the results are the pooled ones of one process.
-- VSM with drop_svmr_prob 0.8 and dropout 0.1, each rank its own batch: the keep/drop decision of the
-- start/end loss must be the same on every rank at every update (the reference draws it from the
-- Python `random` stream its task choice uses, alike on every rank), although dropout consumes
-- each rank's model generator by its own batch's sizes. Writes the decisions of each rank.
local function svmr_lockstep(common, rank)
  local cfg = common.cfg
  local m = hero.models.HeroForPretraining(cfg.model_config.pretrain, {
    vfeat_dim = cfg.constants.vfeat_dim, max_frm_seq_len = cfg.constants.max_frm_seq_len,
    vocab_pad = cfg.constants.vocab_pad_pretraining, lw_st_ed = 0.01, drop_svmr_prob = 0.8,
    generator = hero.Generator(78)})
  m:load_state_dict(hero.load(common.dir .. "/weights.safetensors"), {strict = false})
  train.set_dropout(m, 0.1)
  local loader = train.MetaLoader{tasks = {vsm = train.CyclingLoader {common.rank_batch("vsm", rank)}},
    generator = hero.Generator(79)}
  local tr = train.DistributedTrainer{model = m, optimizer = common.adamw(m), loader = loader, lr = 1e-5,
    warmup = 1, total = 100, progress = false}
  local used = {}
  for i, r in ipairs(tr:train(16)) do used[i] = (r.parts and r.parts.st_ed ~= 0) and "1" or "0" end
  write(string.format("%s/svmr_rank%d.txt", out, rank), table.concat(used) .. "\n")
end

local function distributed_validation(common, rank)
  local m = common.model()
  local loader = common.meta_loader(rank, function(t) return train.CyclingLoader {common.rank_batch(t, rank)} end)
  local sc = common.schedule
  local tr = train.Trainer{model = m, optimizer = common.adamw(m), loader = loader, lr = sc.lr, warmup = sc.warmup,
    total = sc.total, progress = false, dist = true, seed = common.SEED,
    valid = {mlm_x = {common.rank_batch("mlm", rank)}, fom_x = {common.rank_batch("fom", rank)},
             ["mfm-nce"] = {common.rank_batch("mfm-nce", rank)}},
    validators = require("hero.train.pretrain_valid").validators()}
  local r = tr:validate()
  if rank == 0 then write(out .. "/valid.json", hero.json.encode(r)) end
end

-- ------------------------------------------------------------------ NCCL (CUDA tensors)

-- The collectives on CUDA tensors give what they give on CPU tensors (one GPU per rank: rank r on
-- cuda:r), then the time of an all-reduce of a 120M-element f32 gradient.
local function nccl_collectives(rank, world)
  local devname = "cuda:" .. rank
  local function gpu(t) return t:to {device = devname} end
  local function agree(g, c, what)
    check(g:device() == devname, "%s: result on %s", what, g:device())
    check(same(g:cpu(), c), "%s: %s vs %s", what, tostring(g:cpu()), tostring(c))
  end
  for _, op in ipairs {"sum", "mean", "max", "min"} do
    local c = hero.tensor({1, 2, 3, -4}):mul(rank + 1)
    local g = gpu(c)
    dist.all_reduce(c, op)
    dist.all_reduce(g, op)
    agree(g, c, "all_reduce " .. op)
  end
  local ci = hero.tensor({rank, 7 - rank, 2 ^ 40 + rank}, {dtype = "i64"})
  local gi = gpu(ci)
  dist.all_reduce(ci, "max")
  check(hero.cuda.host_mirrored(gi), "an uploaded i64 tensor keeps its values on the host")
  dist.all_reduce(gi, "max")
  -- written in place by NCCL: the host copy of the old values is retired, on 1 rank as on 2
  check(not hero.cuda.host_mirrored(gi), "all_reduce left a stale host copy")
  agree(gi, ci, "all_reduce max i64")
  local base = gpu(hero.arange(6, {dtype = "f32"}):view(2, 3):add(rank))
  dist.all_reduce(base:t())
  agree(base, hero.arange(6, {dtype = "f32"}):view(2, 3):mul(world):add(world * (world - 1) / 2),
    "all_reduce on a transposed view")
  local ok, err = pcall(dist.all_reduce, gpu(hero.ones({3}, {dtype = "i64"})), "mean")
  check(not ok and err:find("needs a floating tensor", 1, true), "mean on i64: %s", tostring(err))
  local b = gpu(hero.tensor({rank + 1, rank * 2}, {dtype = "f64"}))
  dist.broadcast(b, world - 1)
  agree(b, hero.tensor({world, 2 * (world - 1)}, {dtype = "f64"}), "broadcast")
  local cg, ccounts = dist.all_gather(hero.full({rank + 1, rank + 2}, rank + 1, {dtype = "i64"}))
  local bi = gpu(hero.tensor({rank, rank}, {dtype = "i64"}))
  dist.broadcast(bi, 0)
  check(not hero.cuda.host_mirrored(bi), "broadcast left a stale host copy")
  agree(bi, hero.tensor({0, 0}, {dtype = "i64"}), "broadcast i64")
  local gg, gcounts = dist.all_gather(gpu(hero.full({rank + 1, rank + 2}, rank + 1, {dtype = "i64"})))
  agree(gg, cg, "all_gather padded")
  check(#gcounts == #ccounts and gcounts[world] == ccounts[world], "all_gather counts")
  -- gradient averaging of CUDA parameters equals that of the same CPU parameters
  local cp, gp = hero.zeros(3), gpu(hero.zeros(3))
  cp.grad = hero.tensor({1, 2, 3}):mul(rank + 1)
  gp.grad = gpu(cp.grad)
  local cm = dist.average_gradients({{"p", cp}}, {rank + 1})
  local gm = dist.average_gradients({{"p", gp}}, {rank + 1})
  agree(gp.grad, cp.grad, "average_gradients")
  check(cm[1] == gm[1], "average_gradients extras %s vs %s", cm[1], gm[1])
  if world > 1 then
    ok, err = pcall(dist.all_reduce, gpu(hero.ones(rank + 2)))
    check(not ok and err:find("different element counts", 1, true), "mismatch: %s", tostring(err))
  end
  -- bandwidth: a 120M-parameter f32 gradient (480 MB), after one warm-up
  local big = gpu(hero.ones(120000000))
  dist.all_reduce(big)
  hero.cuda.synchronize()
  local t0 = hero.core._now()
  local reps = 5
  for _ = 1, reps do dist.all_reduce(big) end
  hero.cuda.synchronize()
  local s = (hero.core._now() - t0) / reps
  if rank == 0 then
    -- bus bandwidth as NCCL's tests define it for all-reduce: bytes * 2 (world - 1) / world / time
    print(string.format("nccl all_reduce of 120M f32 on %d rank(s): %.2f ms, %.1f GB/s algorithm, %.1f GB/s bus",
      world, s * 1e3, 480e6 / s / 1e9, world > 1 and 480e6 * 2 * (world - 1) / world / s / 1e9 or 0))
  end
end

-- ------------------------------------------------------------------ gradient averaging overlapped

-- GradReducer against average_gradients on the same gradients: a small network of f32 and f64
-- parameters, one listed twice (tied), one that only rank 0 gives a gradient and one that no rank
-- does, two micro-batches (the first backward outside the reducer), buckets small enough that
-- several start during the pass. The results must be the same numbers.
local function overlapped_averaging(rank)
  local function net()
    hero.manual_seed(5)
    local p = {
      {"w1", hero.randn(16, 8):requires_grad_()}, {"b1", hero.randn(16):requires_grad_()},
      {"w2", hero.randn(4, 16):requires_grad_()}, {"d", hero.randn({4}, {dtype = "f64"}):requires_grad_()},
      {"only0", hero.randn(4):requires_grad_()}, {"unused", hero.randn(3):requires_grad_()},
    }
    p[#p + 1] = {"tied", p[1][2]}
    return p
  end
  local function pass(p, mb)
    hero.manual_seed(100 + 10 * rank + mb)
    local x = hero.randn(5, 8)
    local h = hero.linear(x, p[1][2], p[2][2]):tanh()
    local y = hero.linear(h, p[3][2]):double() * p[4][2]
    if rank == 0 then y = y + p[5][2]:double() end
    return y:pow(2):sum()
  end
  local function run(overlap)
    local p = net()
    local r = overlap and dist.GradReducer(p, {bucket_mb = 200 / 2 ^ 20}) or nil
    local losses = {}
    for mb = 1, 2 do
      local loss = pass(p, mb)
      if r and mb == 2 then r:begin() end
      loss:backward()
      losses[mb] = loss:item()
    end
    local extra = {losses[1] + losses[2], rank}
    local means = r and r:finish(extra) or dist.average_gradients(p, extra)
    return p, means, r
  end
  local a, ma = run(false)
  local b, mb, r = run(true)
  for i, e in ipairs(a) do
    local ga, gb = e[2].grad, b[i][2].grad
    check((ga == nil) == (gb == nil), "%s: gradient presence differs", e[1])
    if ga then check(same(ga, gb), "%s: overlapped average differs: %s vs %s", e[1], tostring(gb), tostring(ga)) end
  end
  check(b[6][2].grad == nil, "a parameter no rank gave a gradient has none")
  check(b[5][2].grad ~= nil, "a parameter only rank 0 gave a gradient has one on every rank")
  -- (average_gradients carries the extras in its first buffer, f32 here; the reducer in double)
  check(math.abs(ma[1] - mb[1]) <= 1e-6 * math.abs(mb[1]) and mb[2] == 0.5, "extra means: %s %s (%s)", tostring(mb[1]),
    tostring(mb[2]), tostring(ma[1]))
  local buckets, early = r:counts()
  check(buckets >= 3 and early >= 1, "buckets %d, started during the pass %d", buckets, early)
  -- misuse is an error, not a hang
  local ok, err = pcall(r.finish, r)
  check(not ok and tostring(err):find("begin was not called", 1, true), "finish without begin: %s", tostring(err))
  r:free()
  ok, err = pcall(r.begin, r)
  check(not ok and tostring(err):find("freed", 1, true), "begin after free: %s", tostring(err))
end

-- ------------------------------------------------------------------ modes

dist.run(function()
  hero.set_num_threads(1)
  if mode == "main" then
    local rank, world = dist.init {timeout = 60}
    collectives(rank, world)
    overlapped_averaging(rank)
    local common = require "dist.common"
    vsm_update(common, rank)
    data_parallel(common, rank)
    distributed_validation(common, rank)
    svmr_lockstep(common, rank)
    failed_save(common, rank)
    mismatched_schedule(common, rank)
    write(string.format("%s/done_rank%d.txt", out, rank), "ok\n")
  elseif mode == "nccl" then
    local rank, world = dist.init {timeout = 120}
    nccl_collectives(rank, world)
    write(string.format("%s/done_rank%d.txt", out, rank), "ok\n")
  elseif mode == "fail" then
    local rank = dist.init {timeout = 60}
    local t = hero.ones(4)
    dist.all_reduce(t)
    if rank == 1 then error("injected failure on rank 1") end
    dist.all_reduce(t) -- rank 0 waits here for a rank that is gone
  elseif mode == "hang" then
    local rank = dist.init {timeout = 1.5}
    if rank == 1 then
      local t0 = os.clock()
      while os.clock() - t0 < 30 do end -- busy, never calling the collective (the job ends it first)
    end
    dist.all_reduce(hero.ones(2))
  else
    error("unknown mode " .. tostring(mode))
  end
  dist.finalize()
end)
