--- hero's process-wide state used from several threads at once. The worker states of
-- hero.core.worker_pool (the data loaders) run kernels that read the thread count and bump the
-- product counters while the Lua thread changes the count and runs its own parallel loops. The
-- results must be exact and the counters complete; `make tsan` runs this under ThreadSanitizer,
-- which also checks that none of these accesses races.
local hero = require "hero"
local core = hero.core

-- Builds the operands of job `seed` in any state: small integers, so every product below is exact
-- in f32 whatever the order of its sums. `a` has an inner stride of 2, which BLAS cannot read: the
-- batched product copies it first (and counts the copy).
local OPERANDS = [[
local hero, seed, dtype = ...
local function values(n, mod)
  local v = {}
  for i = 1, n do v[i] = (i * 37 + seed * 11) % mod - mod // 2 end
  return hero.tensor(v, {dtype = dtype})
end
local a = values(4 * 24 * 32 * 2, 9):view(4, 24, 32, 2):select(4, 1)
local b = values(32 * 20, 7):view(32, 20)
local x = values(64 * 96, 5):view(64, 96)
local y = values(96 * 80, 3):view(96, 80)
return a, b, x, y
]]

local function operands(seed, dtype)
  return assert(load(OPERANDS, "=operands"))(hero, seed, dtype)
end

describe("threads", function()
  it("runs products on worker states while the main thread sets the thread count and multiplies", function()
    local pool <close> = core.worker_pool{n = 2, init = OPERANDS, script = [[
      local operands_code = ...
      local hero = require "hero"
      local operands = assert(load(operands_code, "=operands"))
      return function(seed)
        local a, b, x, y = operands(hero, seed, "f32")
        return {a:matmul(b), x:matmul(y)}
      end]]}
    local saved = hero.get_num_threads()
    -- the copies one batched product makes here (the packed kernels may take strided operands as
    -- they are), so that the counter's total can be checked
    local before = core._matmul_copies()
    do
      local a, b = operands(0, "f32")
      a:matmul(b)
    end
    local per_product = core._matmul_copies() - before
    local jobs, rounds, main_products = 4, 3, 0
    local ok, err = pcall(function()
      before = core._matmul_copies()
      for round = 1, rounds do
        for j = 1, jobs do pool:submit(round * 100 + j) end
        -- while the workers multiply: new thread counts and parallel products here
        for k = 1, 6 do
          hero.set_num_threads(k % 2 + 1)
          local a, b, x, y = operands(round * 1000 + k, "f32")
          local a64, b64, x64, y64 = operands(round * 1000 + k, "f64")
          assert.equal(0, (a:matmul(b):double() - a64:matmul(b64)):abs():max():item())
          assert.equal(0, (x:matmul(y):double() - x64:matmul(y64)):abs():max():item())
          main_products = main_products + 1
        end
        for j = 1, jobs do
          local got, n = pool:get()
          assert.equal(j + (round - 1) * jobs, n)
          local a, b, x, y = operands(round * 100 + j, "f64")
          assert.equal(0, (got[1]:double() - a:matmul(b)):abs():max():item(), "worker's batched product")
          assert.equal(0, (got[2]:double() - x:matmul(y)):abs():max():item(), "worker's product")
        end
      end
      -- every thread's copies counted, none lost (f64 products count theirs too)
      assert.equal(per_product * (2 * main_products + rounds * jobs * 2), core._matmul_copies() - before)
    end)
    hero.set_num_threads(saved)
    assert(ok, err)
  end)

  it("keeps the thread count the main state's: a worker state cannot change it", function()
    local pool <close> = core.worker_pool{n = 1, script = [[
      local hero = require "hero"
      return function(n)
        hero.set_num_threads(n)
      end]]}
    local before = hero.get_num_threads()
    pool:submit(before + 1)
    local err = select(2, pcall(pool.get, pool))
    assert.matches("cannot change it; set it from the main state", tostring(err), 1, true)
    assert.equal(before, hero.get_num_threads())
  end)
end)
