--- hero.train: the pre-training loop (task mixing, accumulation, schedule, clipping, validation,
-- logging, atomic checkpoints and bit-identical resume).
local loaders = require "hero.train.meta_loader"

local train = {}

train.MetaLoader = loaders.MetaLoader
train.CyclingLoader = loaders.CyclingLoader
train.Trainer = require "hero.train.trainer"
train.DistributedTrainer = train.Trainer.distributed

--- Sets every dropout probability of a model (nn.Dropout layers and attention dropout) to p, as the
-- reference's set_dropout does after construction.
function train.set_dropout(model, p)
  if type(p) ~= "number" or p < 0 or p >= 1 then error("set_dropout: p must be in [0, 1), got " .. tostring(p), 2) end
  for _, entry in ipairs(model:named_modules()) do
    local m = entry[2]
    if m.__name == "Dropout" then m.p = p end
    if rawget(m, "attention_dropout") ~= nil then m.attention_dropout = p end
  end
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function read_json(path)
  local json = require "hero.json"
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return json.decode(text, {source = path})
end

--- Collated batches of a fixture directory laid out like the reference's dumps: for each task,
-- batch_<task>.safetensors, then optim_batch_<task>_mb1.safetensors, optim_batch_<task>_mb2...
-- when present, each with the non-tensor part of the batch in the .json file of the same name
-- (keys starting with '_' are bookkeeping and left out). Returns {task = {batch, ...}} for the
-- tasks given (default mlm, mfm-nce, mffr, fom, vsm) that have at least one batch.
function train.fixture_batches(dir, tasks)
  local io_ = require "hero.io"
  tasks = tasks or {"mlm", "mfm-nce", "mffr", "fom", "vsm"}
  local out = {}
  for _, task in ipairs(tasks) do
    local names = {"batch_" .. task}
    local k = 1
    while exists(string.format("%s/optim_batch_%s_mb%d.safetensors", dir, task, k)) do
      names[#names + 1] = string.format("optim_batch_%s_mb%d", task, k)
      k = k + 1
    end
    local list = {}
    for _, name in ipairs(names) do
      local path = dir .. "/" .. name .. ".safetensors"
      if exists(path) then
        local b = io_.load(path)
        local side = dir .. "/" .. name .. ".json"
        if exists(side) then
          for key, v in pairs(read_json(side)) do
            if not key:find("^_") then b[key] = v end
          end
        end
        list[#list + 1] = b
      end
    end
    if #list > 0 then out[task] = list end
  end
  return out
end

--- Refuses to start a new run in a directory that holds a checkpointed one unless it is resumed:
-- a second run there would repoint ckpt/latest and mix its checkpoints with the first one's. (A
-- log without checkpoints, from a run stopped before its first one, is appended to.)
function train.check_run_dir(out_dir, resume)
  if type(out_dir) ~= "string" then error("check_run_dir: expected the run directory, got " .. type(out_dir), 2) end
  if resume then return end
  local step = train.Trainer.latest_step(out_dir)
  if step then
    error(string.format("'%s' already holds a run (checkpoints up to step %d): pass --resume to continue it, "
      .. "or give another --out", out_dir, step), 2)
  end
end

-- The task-level modules, loaded on first use (hero.train.finetune, .pretrain_config,
-- .pretrain_valid): requiring hero.train does not load the model code they pull in.
local SUBMODULES = {finetune = "hero.train.finetune", pretrain_config = "hero.train.pretrain_config",
                    pretrain_valid = "hero.train.pretrain_valid"}
setmetatable(train, {__index = function(t, k)
  local name = SUBMODULES[k]
  if not name then return nil end
  local m = require(name)
  rawset(t, k, m)
  return m
end})

return train
