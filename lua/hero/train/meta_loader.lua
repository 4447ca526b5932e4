--- hero.train.MetaLoader and hero.train.CyclingLoader: task mixing for multi-task pre-training.
--
-- MetaLoader is the reference's MetaLoader (data/loader.py): a pool holding each task name `ratio`
-- times, ONE task drawn from it per optimizer update (uniformly over the pool, so task t comes up
-- with probability ratio_t / sum of ratios), and every one of the `accum` micro-batches of that
-- update taken from that task's loader. The draw uses a hero.Generator (Philox), so a seed gives
-- the same task sequence everywhere, and the generator's state is part of the loader's state.
--
-- A task loader is any object with :next() -> batch, :state() -> plain table and
-- :set_state(state) (its resumable position).
local core = require "hero.core"

local M = {}

-- ------------------------------------------------------------------ CyclingLoader

local CyclingLoader = {}
CyclingLoader.__index = CyclingLoader
CyclingLoader.__name = "CyclingLoader"

--- CyclingLoader(batches): serves the batches of a Lua array in order, forever (batch 1 again
-- after the last one). Used on fixture batches and for validation sets that fit in memory.
function M.CyclingLoader(batches)
  if type(batches) ~= "table" or #batches == 0 then
    error("CyclingLoader: expected a non-empty array of batches, got " ..
      (type(batches) == "table" and "an empty table" or type(batches)), 2)
  end
  for i, b in ipairs(batches) do
    if type(b) ~= "table" then
      error(string.format("CyclingLoader: batch %d is a %s, expected a table", i, type(b)), 2)
    end
  end
  return setmetatable({batches = batches, pos = 1}, CyclingLoader)
end

function CyclingLoader:next()
  local b = self.batches[self.pos]
  self.pos = self.pos % #self.batches + 1
  return b
end

--- Iterates once over every batch (from the first), without moving the loader's position: what a
-- validation pass uses.
function CyclingLoader:iter()
  local i = 0
  return function()
    i = i + 1
    return self.batches[i]
  end
end

function CyclingLoader:__len() return #self.batches end

function CyclingLoader:state() return {pos = self.pos, n = #self.batches} end

function CyclingLoader:set_state(s)
  if type(s) ~= "table" or math.type(s.pos) ~= "integer" then
    error("CyclingLoader:set_state: expected {pos = integer}, got " .. type(s), 2)
  end
  if s.n and s.n ~= #self.batches then
    error(string.format("CyclingLoader:set_state: the state is for %d batches, this loader has %d", s.n,
      #self.batches), 2)
  end
  if s.pos < 1 or s.pos > #self.batches then
    error(string.format("CyclingLoader:set_state: position %d is outside 1..%d", s.pos, #self.batches), 2)
  end
  self.pos = s.pos
end

-- ------------------------------------------------------------------ MetaLoader

local MetaLoader = {}
MetaLoader.__index = MetaLoader
MetaLoader.__name = "MetaLoader"

local function check_loader(name, l)
  if type(l) ~= "table" and type(l) ~= "userdata" then
    error(string.format("MetaLoader: the loader of task '%s' is a %s, expected an object with :next(), "
      .. ":state() and :set_state()", name, type(l)), 3)
  end
  for _, method in ipairs {"next", "state", "set_state"} do
    if type(l[method]) ~= "function" then
      error(string.format("MetaLoader: the loader of task '%s' has no :%s() method", name, method), 3)
    end
  end
end

--- MetaLoader{tasks = {name = loader, ...}, ratios = {name = r, ...}, accum = 1, generator = g,
--   seed = 0, order = {names...}}
-- ratios: positive integers (default 1 for every task); every name in ratios must be a task and
-- every task needs a ratio. order: the order of the names in the pool (default: sorted), which
-- together with the generator fixes the draws. generator: a hero.Generator (default: a new one
-- seeded with `seed`).
-- The pool holds each task ratio times: past this it would not fit in memory (the reference's
-- ratios are single digits).
local MAX_POOL = 1000000

function M.MetaLoader(opts)
  if type(opts) ~= "table" then error("MetaLoader: expected an options table", 2) end
  for k in pairs(opts) do -- a misspelt ratio = {...} or acum = 4 was ignored
    if k ~= "tasks" and k ~= "ratios" and k ~= "order" and k ~= "accum" and k ~= "generator" and k ~= "seed" then
      error(string.format("MetaLoader: unknown option '%s' (tasks, ratios, order, accum, generator, seed)",
        tostring(k)), 2)
    end
  end
  if opts.ratios ~= nil and type(opts.ratios) ~= "table" then
    error("MetaLoader: opts.ratios must be a table {task name = ratio}, got " .. type(opts.ratios), 2)
  end
  if opts.order ~= nil and type(opts.order) ~= "table" then
    error("MetaLoader: opts.order must be a list of task names, got " .. type(opts.order), 2)
  end
  local draws = 0
  for _, r in pairs(opts.ratios or {}) do if math.type(r) == "integer" then draws = draws + r end end
  if draws > MAX_POOL then
    error(string.format("MetaLoader: the ratios add up to %d draws per pool, more than %d", draws, MAX_POOL), 2)
  end
  local tasks = opts.tasks
  if type(tasks) ~= "table" or next(tasks) == nil then
    error("MetaLoader: opts.tasks must be a non-empty table {task name = loader}", 2)
  end
  for name, l in pairs(tasks) do
    if type(name) ~= "string" then error("MetaLoader: task names must be strings, got " .. type(name), 2) end
    check_loader(name, l)
  end
  local ratios = opts.ratios or {}
  for name, r in pairs(ratios) do
    if not tasks[name] then
      local known = {}
      for n in pairs(tasks) do known[#known + 1] = n end
      table.sort(known)
      error(string.format("MetaLoader: ratio given for unknown task '%s' (tasks: %s)", tostring(name),
        table.concat(known, ", ")), 2)
    end
    if math.type(r) ~= "integer" or r < 1 then
      error(string.format("MetaLoader: the ratio of task '%s' must be a positive integer, got %s", name,
        tostring(r)), 2)
    end
  end
  local order = opts.order
  if order then
    local seen = {}
    for _, name in ipairs(order) do
      if not tasks[name] then error(string.format("MetaLoader: order names unknown task '%s'", tostring(name)), 2) end
      if seen[name] then error(string.format("MetaLoader: order names task '%s' twice", name), 2) end
      seen[name] = true
    end
    for name in pairs(tasks) do
      if not seen[name] then error(string.format("MetaLoader: task '%s' is missing from order", name), 2) end
    end
  else
    order = {}
    for name in pairs(tasks) do order[#order + 1] = name end
    table.sort(order)
  end
  local pool = {}
  for _, name in ipairs(order) do
    local r = ratios[name]
    if r == nil then
      if opts.ratios then error(string.format("MetaLoader: task '%s' has no ratio", name), 2) end
      r = 1
    end
    for _ = 1, r do pool[#pool + 1] = name end
  end
  local accum = opts.accum or 1
  if math.type(accum) ~= "integer" or accum < 1 then
    error("MetaLoader: accum must be a positive integer, got " .. tostring(accum), 2)
  end
  local g = opts.generator
  if g == nil then
    g = core.Generator(opts.seed or 0)
  elseif type(g) ~= "userdata" or type(g.get_state) ~= "function" then
    error("MetaLoader: opts.generator must be a hero.Generator", 2)
  end
  return setmetatable({tasks = tasks, order = order, pool = pool, accum = accum, generator = g,
                       micro = 0, current = nil}, MetaLoader)
end

--- Draws the task of the next update (uniformly over the pool). When the field `share` is set (a
-- function, as the distributed Trainer sets it), the drawn pool index goes through it: it returns
-- the index every rank uses (rank 0's), so all ranks train the same task.
function MetaLoader:draw()
  local i = core.randint(0, #self.pool, {1}, {generator = self.generator}):item()
  if self.share then i = self.share(i) end
  return self.pool[i + 1]
end

--- The next micro-batch: returns task, batch, first (true for the first micro-batch of an update,
-- where the task was drawn).
function MetaLoader:next()
  local first = self.micro % self.accum == 0
  if first then self.current = self:draw() end
  self.micro = self.micro + 1
  local task = self.current
  local batch = self.tasks[task]:next()
  if batch == nil then error(string.format("MetaLoader: the loader of task '%s' returned no batch", task), 2) end
  return task, batch, first
end

--- The loader's resumable state: micro-step counter, current task, the generator and every task
-- loader's state (plain values, for hero.save).

--- A uniform number in [0, 1) from the task-draw stream: the reference draws its other per-step
-- choice (VSM's drop of the start/end loss, random.random()) from the one Python `random` stream
-- its task choice uses, seeded alike on every rank, so every rank keeps or drops it together.
function MetaLoader:uniform()
  return core.rand({1}, {dtype = "f64", generator = self.generator}):item()
end

function MetaLoader:state()
  local loaders = {}
  for _, name in ipairs(self.order) do loaders[name] = self.tasks[name]:state() end
  return {micro = self.micro, current = self.current, generator = self.generator:get_state(),
          pool = table.concat(self.pool, ","), accum = self.accum, loaders = loaders}
end

function MetaLoader:set_state(s)
  if type(s) ~= "table" or math.type(s.micro) ~= "integer" or type(s.loaders) ~= "table" then
    error("MetaLoader:set_state: expected the table that MetaLoader:state() returned", 2)
  end
  local pool = table.concat(self.pool, ",")
  if s.pool and s.pool ~= pool then
    error(string.format("MetaLoader:set_state: the state was saved with the task pool {%s}, this loader has {%s}",
      s.pool, pool), 2)
  end
  if s.accum and s.accum ~= self.accum then
    error(string.format("MetaLoader:set_state: the state was saved with accum %d, this loader has %d", s.accum,
      self.accum), 2)
  end
  for _, name in ipairs(self.order) do
    if s.loaders[name] == nil then error(string.format("MetaLoader:set_state: no state for task '%s'", name), 2) end
  end
  -- all or nothing: a task that refuses its state puts back the tasks (and the generator) already
  -- moved, so the loader stays where it was
  local before, done = {}, {}
  for _, name in ipairs(self.order) do before[name] = self.tasks[name]:state() end
  local gen_before = self.generator:get_state()
  local ok, err = pcall(function()
    for _, name in ipairs(self.order) do
      self.tasks[name]:set_state(s.loaders[name])
      done[#done + 1] = name
    end
    self.generator:set_state(s.generator)
  end)
  if not ok then
    for _, name in ipairs(done) do self.tasks[name]:set_state(before[name]) end
    self.generator:set_state(gen_before)
    error(err, 0)
  end
  self.micro = s.micro
  self.current = s.current
end

function MetaLoader:__tostring()
  return string.format("hero.train.MetaLoader(tasks %s, accum %d, %d micro-batches drawn)",
    table.concat(self.order, ","), self.accum, self.micro)
end

function CyclingLoader:__tostring()
  return string.format("hero.train.CyclingLoader(%d batches, next %d)", #self.batches, self.pos)
end

local colon = require "hero.colon"
colon.guard(MetaLoader, "MetaLoader", {"next", "state", "set_state"})
colon.guard(CyclingLoader, "CyclingLoader", {"next", "state", "set_state"})
M.MetaLoader_class = MetaLoader
M.CyclingLoader_class = CyclingLoader

return M
