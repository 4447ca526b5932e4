--- Update time of the smoke model: one process (its threads) against data-parallel ranks.
--   lua5.4 examples/bench_dist.lua [threads]                 one process, both micro-batches (accum 2)
--   mpirun -np 2 lua5.4 examples/bench_dist.lua [threads] [overlap 1|0]
--                                                   each rank one micro-batch (accum 1); overlap 0
--                                                   averages the gradients after the backward pass
-- Both train the same global batch per update (the spec fixtures' two micro-batches of each task);
-- prints the median seconds per update and task on rank 0.
local here = debug.getinfo(1, "S").source:match("^@(.*)/examples/bench_dist%.lua$") or "."
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. here .. "/spec/?.lua;" .. package.path

local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local dist = hero.dist
local train = hero.train

local multi = os.getenv("OMPI_COMM_WORLD_SIZE") ~= nil or os.getenv("PMI_SIZE") ~= nil
local rank, world = 0, 1
if multi then rank, world = dist.init() end
hero.set_num_threads(tonumber(arg[1]) or (multi and 1 or 2))
local overlap = arg[2] ~= "0"
local common = require "dist.common"
local now = hero._now or hero._bench_now or os.clock

local REPS = 5
local results = {}
dist.run(function()
  for _, task in ipairs {"mlm", "mfm-nce", "fom", "vsm"} do
    local m = common.model()
    local list = {common.rank_batch(task, rank)}
    if world == 1 then list[2] = common.rank_batch(task, 1) end
    local loader = train.MetaLoader{tasks = {[task] = train.CyclingLoader(list)}, accum = #list}
    local tr = train.Trainer{model = m, optimizer = common.adamw(m), loader = loader, lr = 1e-4, warmup = 1,
      total = 100, progress = false, dist = multi, overlap = overlap}
    tr:train(1) -- warm-up (allocator caches, first broadcast)
    local times = {}
    for i = 1, REPS do
      if multi then dist.barrier() end
      local t0 = now()
      tr:train(1)
      times[i] = now() - t0
    end
    table.sort(times)
    results[#results + 1] = string.format("%-8s %7.1f ms", task, times[(REPS + 1) // 2] * 1000)
  end
end)
if rank == 0 then
  print(string.format("%d rank(s) x %d thread(s), median of %d updates:", world, hero.get_num_threads(), REPS))
  for _, line in ipairs(results) do print("  " .. line) end
end
if multi then dist.finalize() end
