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
  -- "" would put every file at the root of the file system ("/hps.json")
  if out_dir == "" then error("the run directory is an empty path: give --out DIR", 2) end
  if resume then return end
  local step = train.Trainer.latest_step(out_dir)
  if step then
    error(string.format("'%s' already holds a run (checkpoints up to step %d): pass --resume to continue it, "
      .. "or give another --out", out_dir, step), 2)
  end
end

local function same_value(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not same_value(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

--- Refuses to resume a run with other settings than it was started with, as the reference's
-- TrainingRestorer asserts that its options equal the saved hps.json: a resumed run with another
-- learning rate, schedule, task mix or data would go on as a different experiment under the same
-- name. `path`: the run's saved settings (an error when absent: callers ask only for a run with a
-- checkpoint, whose settings were saved before it); `hps`: this run's, as it
-- would save them; `may_differ`: keys that do not change the numbers (loader threads, how often to
-- save). Raises an error naming each differing key with both values.
function train.check_resumed_settings(path, hps, may_differ)
  if not exists(path) then
    error(string.format("the run's settings (%s) are missing, so a resumed run cannot be checked against them: "
      .. "restore the file, or give another --out", path), 2)
  end
  local json = require "hero.json"
  local saved = read_json(path)
  local now = json.decode(json.encode(hps))
  local skip = {}
  for _, k in ipairs(may_differ or {}) do skip[k] = true end
  local keys, seen = {}, {}
  for _, t in ipairs {saved, now} do
    for k in pairs(t) do
      if not seen[k] and not skip[k] then
        seen[k] = true
        keys[#keys + 1] = k
      end
    end
  end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local function show(v)
    if v == nil then return "(absent)" end
    local text = json.encode(v)
    return #text > 60 and text:sub(1, 57) .. "..." or text
  end
  local diffs = {}
  for _, k in ipairs(keys) do
    if not same_value(saved[k], now[k]) then
      diffs[#diffs + 1] = string.format("%s: %s then, %s now", tostring(k), show(saved[k]), show(now[k]))
    end
  end
  if #diffs > 0 then
    error(string.format("the run was started with other settings (%s): %s; resume it with the same ones, or give "
      .. "another --out", path, table.concat(diffs, "; ")), 2)
  end
end

-- The task-level modules, loaded on first use (hero.train.finetune, .pretrain_config,
-- .pretrain_valid, .device_batch): requiring hero.train does not load the model code they pull in.
local SUBMODULES = {finetune = "hero.train.finetune", pretrain_config = "hero.train.pretrain_config",
                    pretrain_valid = "hero.train.pretrain_valid", device_batch = "hero.train.device_batch"}
setmetatable(train, {__index = function(t, k)
  local name = SUBMODULES[k]
  if not name then return nil end
  local m = require(name)
  rawset(t, k, m)
  return m
end})

return train
