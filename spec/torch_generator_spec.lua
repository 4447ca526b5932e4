--- examples/torch/generator.lua: PyTorch's CPU random stream, which the benchmarks use to build the
-- baseline's batch. Expected values were printed by torch 1.13 (`torch.Generator().manual_seed(s)`).
local hero = require "hero"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local torch_generator = assert(loadfile(here .. "/../examples/torch/generator.lua"))()

require "spec_helper"

-- f32 values against PyTorch's, within the f32 tolerance of spec_helper (torch's Box-Muller uses
-- its own vectorised sin/cos/log, libm differs in the last bits)
local function near_list(got, want)
  assert.tensor_near(hero.tensor(got, {dtype = "f32"}), want)
end

describe("the PyTorch CPU generator in Lua", function()
  it("is MT19937 (the reference test value for seed 5489)", function()
    assert.equal(3499211612, torch_generator.Generator(5489):random())
  end)

  it("draws randint, rand and randn as torch does, in sequence", function()
    local g = torch_generator.Generator(7)
    assert.same({15, 92, 21, 86, 83}, g:randint(0, 100, 5))
    -- rand is exact: 24-bit values
    assert.same({0.4250614047050476, 0.20708602666854858, 0.6297363638877869}, g:rand(3))
    -- 21 values: one block of 16, then the last 16 drawn again (torch's tail rule)
    near_list(g:randn(21), {-0.17643792927265167, 1.7501723766326904, 1.9300168752670288, 0.9861118197441101,
      0.609473466873169, 0.08747837692499161, -1.3849613666534424, 0.5035638809204102, -0.08352822810411453,
      -0.023477932438254356, 0.17437535524368286, 2.298342704772949, 0.9571021795272827, 0.48235416412353516,
      1.3989183902740479, 1.4058529138565063, -1.4012508392333984, 1.2973358631134033, 1.6409332752227783,
      -1.056684136390686, -0.2615867257118225})
    assert.same({19072, 13188}, g:randint(4, 50265, 2))
  end)

  it("gives the bench batch of the PyTorch baseline (its ids, masks and features)", function()
    local bench = assert(loadfile(here .. "/../examples/bench_pretrain.lua"))("library")
    local batch, mffr = bench.make_batch(1, 20, 3, 30, 0.15)
    -- hero_torch_bench.make_batch(1, 20, 3, 30): mlm_masked 83, mffr_masked 18
    assert.equal(83, batch.txt_labels:numel())
    assert.equal(18, batch.c_v_masks:sum():item())
    assert.same({0, 25983, 13922, 13919, 5379, 13429}, batch.input_ids:narrow(2, 1, 6)[1]:totable())
    assert.same({10905, 23756, 38498}, batch.input_ids[20]:narrow(1, 28, 3):totable())
    near_list(batch.c_v_feats[1][1]:narrow(1, 1, 4):totable(),
      {0.009480039589107037, 0.8313117027282715, 0.5562903881072998, 2.0705671310424805})
    assert.equal(0, mffr.c_v_feats:masked_select(batch.c_v_masks:unsqueeze(3)):abs():max():item())
    assert.is_true(hero.is_tensor(batch.feat_targets))
  end)
end)
