--- `make bench`: the pre-training step of HERO against PyTorch, on this machine, as one table.
--
--   lua5.4 examples/bench_table.lua --torch path/to/hero_torch_bench.py [--rounds 3] [--reps 3]
--                                   [--warmup 1] [--quick] [--markdown]
--
-- Every row is measured in fresh processes, hero and PyTorch alternately (hero, torch, hero, torch,
-- ... for --rounds rounds), each process timing --reps repetitions after --warmup; a row's ratio is
-- the median over rounds of hero's median time / PyTorch's (lower is better), with the min and max
-- over rounds. Peak resident memory is each process's VmHWM. hero's 2-thread speed-up is measured
-- in one more hero process per round that runs the step at 1 and 2 threads in turns (pairs in one
-- process: the neighbours' load and the process's memory layout are the same for both); the
-- speed-up between the separate 1- and 2-thread processes is shown below it. The PyTorch side is the baseline
-- script given with --torch (it needs python3-torch; run by /usr/bin/python3). --quick measures
-- the small config only. Without --torch only hero's own rows (times, 2-thread speed-up) are shown.
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local json = hero.json

local function parse_args(argv)
  local a = {rounds = 3, reps = 3, warmup = 1, torch = nil, quick = false, markdown = false}
  local i = 1
  while i <= #argv do
    local k = argv[i]:match("^%-%-([%w%-]+)$")
    if not k then error("bench_table: unexpected argument '" .. argv[i] .. "'", 0) end
    if k == "quick" or k == "markdown" then
      a[k] = true
      i = i + 1
    elseif k == "torch" or a[k] ~= nil then
      local v = argv[i + 1]
      if v == nil then error("bench_table: --" .. k .. " needs a value", 0) end
      if k ~= "torch" then
        v = math.tointeger(tonumber(v))
        if not v or v < (k == "warmup" and 0 or 1) then
          error("bench_table: --" .. k .. " must be an integer >= " .. (k == "warmup" and 0 or 1), 0)
        end
      end
      a[k] = v
      i = i + 2
    else
      error("bench_table: unknown option --" .. k, 0)
    end
  end
  return a
end

local a = parse_args(arg)
if a.torch then
  local f = io.open(a.torch, "rb")
  if not f then error("bench_table: cannot open the PyTorch baseline '" .. a.torch .. "'", 0) end
  f:close()
  local ok = os.execute("/usr/bin/python3 -c 'import torch' 2>/dev/null")
  if not ok then
    error("bench_table: /usr/bin/python3 cannot import torch (Debian: apt-get install python3-torch)", 0)
  end
end

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local script_dir = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "examples")
local lua = arg[-1] or "lua5.4"

-- One measuring process: side "hero" or "torch"; returns {["mlm:step"] = median seconds, ...} and
-- its peak resident memory in MiB.
local function measure(side, config, threads, modes, alternate)
  local tmp = os.tmpname()
  local common = string.format("--config %s --threads %d --tasks mlm --modes %s --reps %d --warmup %d --json %s",
    config, threads, modes, alternate and math.max(a.reps, 5) or a.reps, a.warmup, shell_quote(tmp))
  if alternate then common = common .. " --alternate-threads " .. alternate end
  local cmd
  if side == "hero" then
    cmd = string.format("%s %s %s 2>&1", shell_quote(lua), shell_quote(script_dir .. "/bench_pretrain.lua"), common)
  else
    cmd = string.format("OPENBLAS_NUM_THREADS=%d OMP_NUM_THREADS=%d OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 %s %s"
      .. " 2>&1", threads, threads, shell_quote(a.torch), common)
  end
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local f = io.open(tmp, "rb")
  if not f then error(string.format("bench_table: the %s run failed:\n%s", side, out), 0) end
  local doc = json.decode(f:read("a"))
  f:close()
  os.remove(tmp)
  local res = {}
  for _, r in ipairs(doc.results) do res[r.task .. ":" .. r.mode] = r.mode == "speedup" and r.speedup or r.median_s end
  return res, doc.peak_rss_mib
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  return s[(#s + 1) // 2], s[1], s[#s]
end

-- The measurements: {config, threads, modes}; every one is run by both sides in each round.
-- The last run is hero's alone: its step at 1 and 2 threads in turns in one process (the speed-up).
local runs = a.quick and {{"small", 1, "fwd,fwdbwd,step"}, {"small", 2, "step"}, {"small", 1, "step", alternate = 2}}
  or {{"hero", 1, "fwd,fwdbwd,step"}, {"hero", 2, "step"}, {"small", 1, "step"}, {"hero", 1, "step", alternate = 2}}
local samples = {} -- samples[side][config/threads][key] = {seconds per round}; rss likewise
local function slot(side, run)
  samples[side] = samples[side] or {}
  local k = run[1] .. "/" .. run[2]
  samples[side][k] = samples[side][k] or {rss = {}}
  return samples[side][k]
end
local sides = a.torch and {"hero", "torch"} or {"hero"}
local t_start = hero.core._now()
for round = 1, a.rounds do
  for _, run in ipairs(runs) do
    for _, side in ipairs(run.alternate and {"hero"} or sides) do
      io.stderr:write(string.format("\rround %d/%d: %-5s %-5s %s thread(s) ...           ", round, a.rounds, side,
        run[1], run.alternate and run[2] .. "/" .. run.alternate or run[2]))
      local res, rss = measure(side, run[1], run[2], run[3], run.alternate)
      local s = slot(side, run.alternate and {run[1], "alternate"} or run)
      for key, v in pairs(res) do
        s[key] = s[key] or {}
        table.insert(s[key], v)
      end
      table.insert(s.rss, rss)
    end
  end
end
io.stderr:write(string.format("\r%d rounds in %.0f s%40s\n", a.rounds, hero.core._now() - t_start, ""))

local rows = {}
local function ratio_row(label, goal, config, threads, key)
  local h, t = slot("hero", {config, threads}), a.torch and slot("torch", {config, threads})
  if not h[key] then return end
  local rs = {}
  if t and t[key] then
    for i = 1, math.min(#h[key], #t[key]) do rs[i] = h[key][i] / t[key][i] end
  end
  local hm = median(h[key])
  local tm = t and t[key] and median(t[key])
  local m, lo, hi = median(rs)
  rows[#rows + 1] = {label, goal, hm and string.format("%.1f ms", hm * 1e3) or "",
                     tm and string.format("%.1f ms", tm * 1e3) or "not run", m, lo, hi}
end
local config = a.quick and "small" or "hero"
-- the goals are those of the hero config; with --quick only the small config's 1-thread step has one
local function goal(g) return a.quick and "-" or g end
ratio_row(config .. ", MLM forward, 1 thread", goal("<=0.85"), config, 1, "mlm:fwd")
ratio_row(config .. ", MLM forward+backward, 1 thread", goal("<=0.75"), config, 1, "mlm:fwdbwd")
ratio_row(config .. ", full step, 1 thread", a.quick and "<=0.60" or "<=0.70", config, 1, "mlm:step")
ratio_row(config .. ", full step, 2 threads", goal("<=0.70"), config, 2, "mlm:step")
if not a.quick then ratio_row("small, full step, 1 thread", "<=0.60", "small", 1, "mlm:step") end
do -- peak memory of the processes that ran the step at 1 thread
  local h = slot("hero", {config, 1}).rss
  local t = a.torch and slot("torch", {config, 1}).rss
  local rs = {}
  if t then for i = 1, math.min(#h, #t) do rs[i] = h[i] / t[i] end end
  local m, lo, hi = median(rs)
  rows[#rows + 1] = {"peak resident memory (" .. config .. ", 1 thread)", goal("<=0.70"),
                     string.format("%.0f MiB", (median(h))), t and string.format("%.0f MiB", (median(t))) or "not run",
                     m, lo, hi}
end
do -- hero's own speed-up from 1 to 2 threads: in turns in one process (the median of each round's
  -- median over pairs), and from the separate 1- and 2-thread processes of each round
  local pairs_sp = slot("hero", {config, "alternate"})["mlm:speedup"]
  if pairs_sp then
    local m, lo, hi = median(pairs_sp)
    rows[#rows + 1] = {"2-thread speed-up of hero's step (" .. config .. ")", goal(">=1.8x"),
                       string.format("%.2fx", m), "", m, lo, hi, speedup = true}
  end
  local h1, h2 = slot("hero", {config, 1})["mlm:step"], slot("hero", {config, 2})["mlm:step"]
  local sp = {}
  for i = 1, math.min(#h1, #h2) do sp[i] = h1[i] / h2[i] end
  local m, lo, hi = median(sp)
  rows[#rows + 1] = {"  the same, from separate processes", "-", string.format("%.2fx", m), "", m, lo, hi,
                     speedup = true}
end
rows[#rows + 1] = {"GPU, bf16 step", "<=0.80", "not run (no GPU here)", "", nil}

local function fmt(v) return v and string.format("%.3f", v) or "-" end
if a.markdown then
  print("| measure | goal | hero | PyTorch | ratio (median) | min | max |")
  print("|---|---|---|---|---|---|---|")
  for _, r in ipairs(rows) do
    print(string.format("| %s | %s | %s | %s | %s | %s | %s |", r[1], r[2], r[3], r[4], fmt(r[5]), fmt(r[6]),
      fmt(r[7])))
  end
else
  print(string.format("%-44s %7s %14s %14s %7s %7s %7s", "measure (hero / PyTorch, lower is better)", "goal", "hero",
    "PyTorch", "ratio", "min", "max"))
  for _, r in ipairs(rows) do
    print(string.format("%-44s %7s %14s %14s %7s %7s %7s", r[1], r[2], r[3], r[4], fmt(r[5]), fmt(r[6]), fmt(r[7])))
  end
end
local cpu = "?"
local f = io.open("/proc/cpuinfo", "rb")
if f then
  cpu = f:read("a"):match("model name%s*:%s*([^\n]+)") or "?"
  f:close()
end
print(string.format("(%s; %d rounds of %d repetitions after %d warm-up; batch of hero_torch_bench.py)", cpu, a.rounds,
  a.reps, a.warmup))
