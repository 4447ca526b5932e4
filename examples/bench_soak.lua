--- Memory soak: many pre-training steps of a small HERO model, printing the resident size (VmRSS),
-- hero.live_bytes() (tensor bytes alive) and hero.cached_bytes() (freed blocks kept for reuse)
-- every --every steps, then a verdict comparing the last resident size with the one at the first
-- report (after warm-up). A leak shows as a resident size or live bytes that keep growing.
--
--   lua5.4 examples/bench_soak.lua                         -- 10000 steps, a report every 1000
--   lua5.4 examples/bench_soak.lua --steps 600 --every 100 --config small --threads 1
--
-- Options: --steps N [10000], --every N [1000], --config small|hero [small], --threads N [1],
-- --tolerance PCT growth of the resident size still called stable [5], plus the batch options of
-- examples/bench_pretrain.lua (--videos, --subs, --frames-per-sub, --txt-len) whose model
-- configs and synthetic batch it reuses. Each step: forward (MLM and MFFR alternately), backward,
-- gradient clipping, AdamW step. Exits 1 when the verdict is "growing".
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local bench = assert(loadfile(here .. "/bench_pretrain.lua"))("library")

local function parse_args(argv)
  local a = {steps = 10000, every = 1000, config = "small", threads = 1, tolerance = 5, videos = 1, subs = 20,
             frames_per_sub = 3, txt_len = 30}
  local i = 1
  while i <= #argv do
    local k = argv[i]:match("^%-%-(.+)$")
    if not k then error("unexpected argument " .. argv[i], 0) end
    k = k:gsub("%-", "_")
    if a[k] == nil then error("unknown option --" .. k, 0) end
    local v = argv[i + 1]
    if v == nil then error("--" .. k .. " needs a value", 0) end
    a[k] = type(a[k]) == "number" and tonumber(v) or v
    if a[k] == nil then error("--" .. k .. " must be a number", 0) end
    i = i + 2
  end
  if not bench.CONFIGS[a.config] then error("--config must be small or hero", 0) end
  if a.steps < 1 or a.every < 1 then error("--steps and --every must be positive", 0) end
  return a
end

local function rss_mib()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return (tonumber(s:match("VmRSS:%s+(%d+)")) or 0) / 1024
end

local a = parse_args(arg)
hero.set_num_threads(a.threads)
hero.manual_seed(0)
local model = hero.models.HeroForPretraining(bench.model_config(bench.CONFIGS[a.config]),
  {vfeat_dim = bench.VFEAT, max_frm_seq_len = bench.MAX_FRM, generator = hero.Generator(1)})
local opt = hero.optim.AdamW(model:named_parameters(), {lr = 3e-5, betas = {0.9, 0.98}, eps = 1e-6,
  weight_decay = 0.01, no_decay = {"bias", "LayerNorm"}})
local batch, mffr_batch = bench.make_batch(a.videos, a.subs, a.frames_per_sub, a.txt_len, 0.15)
local params = model:parameters()
model:train()

print(string.format("# soak: %d steps of the %s config, %d thread(s); a report every %d steps", a.steps, a.config,
  a.threads, a.every))
print(string.format("%8s %10s %12s %12s %10s %9s", "step", "RSS MiB", "live MiB", "cached MiB", "ms/step", "loss"))
local first_rss, first_live, last_rss, last_live
local t0 = hero.core._bench_now()
for step = 1, a.steps do
  local loss
  if step % 2 == 1 then
    loss = model:forward_mlm(batch).loss
  else
    loss = model:forward_mfm(mffr_batch, "mffr").loss
  end
  loss:backward()
  hero.optim.clip_grad_norm(params, 1.0)
  opt:step()
  opt:zero_grad()
  if step % a.every == 0 or step == a.steps then
    local last_loss = loss:item()
    local dt = (hero.core._bench_now() - t0) / (step % a.every == 0 and a.every or step % a.every)
    t0 = hero.core._bench_now()
    local rss, live = rss_mib(), hero.live_bytes() / 2 ^ 20
    print(string.format("%8d %10.1f %12.2f %12.2f %10.1f %9.4f", step, rss, live, hero.cached_bytes() / 2 ^ 20,
      dt * 1e3, last_loss))
    io.stdout:flush()
    if not first_rss then first_rss, first_live = rss, live end
    last_rss, last_live = rss, live
  end
end
local growth = last_rss - first_rss
local pct = first_rss > 0 and 100 * growth / first_rss or 0
local stable = pct <= a.tolerance
print(string.format("verdict: %s: resident %.1f MiB at the first report, %.1f MiB at the last (%+.1f MiB, %+.1f%%; "
  .. "tolerance %g%%); live tensor bytes %.2f -> %.2f MiB", stable and "stable" or "GROWING", first_rss, last_rss,
  growth, pct, a.tolerance, first_live, last_live))
if not stable then os.exit(1) end
