--- What spec/dist_spec.lua and the MPI worker spec/dist/worker.lua share: the smoke model, its
-- optimizer, the fixture batches and the settings of the runs they compare.
local hero = require "hero"

local common = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/dist/common%.lua$") or "spec"
common.dir = here .. "/fixtures/hero-smoke"

local function read_json(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return hero.json.decode(text)
end

common.cfg = read_json(common.dir .. "/config.json")
common.batches = hero.train.fixture_batches(common.dir, {"mlm", "mfm-nce", "fom", "vsm"})

common.SEED = 77
common.UPDATES = 4
common.TASKS = {"mlm", "mfm-nce", "fom"}

--- The smoke model from the reference's initial weights, dropout 0 (so the ranks and the one-process
-- run see identical computations), the st/ed loss on every VSM micro-batch.
function common.model()
  local cfg = common.cfg
  local m = hero.models.HeroForPretraining(cfg.model_config.pretrain, {
    vfeat_dim = cfg.constants.vfeat_dim, max_frm_seq_len = cfg.constants.max_frm_seq_len,
    vocab_pad = cfg.constants.vocab_pad_pretraining, lw_st_ed = 0.01, drop_svmr_prob = 0,
  })
  m:load_state_dict(hero.load(common.dir .. "/weights.safetensors"), {strict = false})
  hero.train.set_dropout(m, 0)
  return m
end

function common.adamw(m)
  local oc = common.cfg.optimizer
  return hero.optim.AdamW(m:named_parameters(), {lr = oc.learning_rate, betas = oc.betas, eps = oc.eps,
    weight_decay = oc.weight_decay, no_decay = {"bias", "LayerNorm.bias", "LayerNorm.weight"}})
end

--- The micro-batch rank `rank` (0-based) trains for a task: the task's first fixture batch on rank 0,
-- its second on rank 1 (the first again when the task has one batch).
function common.rank_batch(task, rank)
  local list = common.batches[task]
  return list[math.min(rank + 1, #list)]
end

--- The MetaLoader of the data-parallel run on rank `rank`: one micro-batch per update from this
-- rank's batches, task draws from this rank's own seed.
function common.meta_loader(rank, loader_of)
  local tasks = {}
  for _, t in ipairs(common.TASKS) do tasks[t] = loader_of(t) end
  return hero.train.MetaLoader{tasks = tasks, generator = hero.Generator(hero.dist.rank_seed(common.SEED, rank))}
end

common.schedule = {lr = 1e-3, warmup = 2, total = 10}

return common
