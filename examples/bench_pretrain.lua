--- HERO pre-training step benchmark, with the same options and JSON output as the PyTorch baseline
-- (hero_torch_bench.py, given with --paired, whose batch and configs it reproduces: 1 video of
-- 20 subtitle rows x (3 frames + 30 tokens), 15% of tokens/frames masked).
--
--   lua5.4 examples/bench_pretrain.lua --config small --threads 1 --tasks mlm --modes fwd,fwdbwd,step --json out.json
--   lua5.4 examples/bench_pretrain.lua --paired path/to/hero_torch_bench.py --config hero --threads 1 --rounds 3
--   lua5.4 examples/bench_pretrain.lua --config hero --device cuda:0 --amp bf16 --videos 32 --tasks mlm,vsm \
--     --modes step
--     (tasks: mlm, mffr, repr, and vsm, which the PyTorch baseline lacks: a hero-only row)
--     (on a GPU: the model and batch on the device, forward under hero.amp.autocast; each timed
--     repetition ends with a device synchronisation)
--   lua5.4 examples/bench_pretrain.lua --config hero --threads 1 --alternate-threads 2 --tasks mlm --modes step
--     (hero's own speed-up: the step at 1 and at 2 threads in turns in one process, --reps pairs;
--     the JSON result has mode "speedup" and the median, min and max of the pairs' time ratios)
--
-- With --paired, hero and the PyTorch script run alternately (hero, torch, hero, torch, ...) and the
-- table shows the median over rounds of hero time / PyTorch time (lower is better) with min and max,
-- plus both peak resident sizes.
local hero = require "hero"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local torch_generator = assert(loadfile(here .. "/torch/generator.lua"))()
local now = hero.core._bench_now

local CONFIGS = {
  hero = {hidden = 768, heads = 12, inter = 3072, f_layers = 6, c_layers = 3},
  small = {hidden = 256, heads = 4, inter = 1024, f_layers = 2, c_layers = 1},
  -- hero's layers and ops at a width where their arithmetic is negligible: the time of a step is
  -- then what the host spends around the kernels (op dispatch, autograd, allocation, Lua), the part
  -- that bounds a GPU step when the host cannot keep ahead of the device (no PyTorch row)
  tiny = {hidden = 24, heads = 2, inter = 48, f_layers = 6, c_layers = 3},
}
local VOCAB, VFEAT, MAX_POS, MAX_FRM = 50265, 4352, 514, 100

local function parse_args(argv)
  local a = {config = "hero", threads = 1, videos = 1, subs = 20, frames_per_sub = 3, txt_len = 30,
             tasks = "mlm,repr,mffr", modes = "fwd,fwdbwd,step", reps = 7, warmup = 2, json = "", paired = nil,
             rounds = 3, device = "cpu", amp = "", alternate_threads = 0}
  local i = 1
  while i <= #argv do
    local k = argv[i]:match("^%-%-(.+)$")
    if not k then error("unexpected argument " .. argv[i]) end
    k = k:gsub("%-", "_")
    if a[k] == nil and k ~= "paired" then error("unknown option --" .. k) end
    local v = argv[i + 1]
    a[k] = type(a[k]) == "number" and tonumber(v) or v
    i = i + 2
  end
  return a
end

local function model_config(c)
  local function sub(layers, vocab)
    return {hidden_size = c.hidden, num_attention_heads = c.heads, intermediate_size = c.inter,
            num_hidden_layers = layers, max_position_embeddings = MAX_POS, vocab_size = vocab, type_vocab_size = 2,
            hidden_dropout_prob = 0.1, attention_probs_dropout_prob = 0.1}
  end
  return {f_config = sub(c.f_layers, VOCAB), c_config = sub(c.c_layers), q_config = sub(0, VOCAB)}
end

--- The baseline's synthetic batch, in the reference's collate layouts: drawn from PyTorch's CPU random
-- stream with the baseline's seed (examples/torch/generator.lua), so the ids, the masked positions and
-- their counts are the baseline's own and the features agree with its features to ~1e-6 (libm rounding).
local function make_batch(nv, ns, nf, tl, mask_prob)
  local g = torch_generator.Generator(0)
  local R, S, nfr = nv * ns, nf + tl, ns * nf
  local ids = hero.tensor(g:randint(4, VOCAB, R * tl), {dtype = "i64"}):view(R, tl)
  ids:select(2, 1):fill_(0)
  local feats = hero.tensor(g:randn(nv * nfr * VFEAT), {dtype = "f32"}):view(nv, nfr, VFEAT):abs()
  local f_v = feats:view(nv, ns, nf, VFEAT):reshape(R, nf, VFEAT)
  local ones = hero.ones({R, S}, {dtype = "i64"})
  local gidx = hero.arange(S):unsqueeze(1):expand(R, S):contiguous()
  local m = hero.tensor(g:rand(R * tl), {dtype = "f32"}):view(R, tl):lt(mask_prob)
  m:select(2, 1):fill_(false)
  local any = m:any(2)
  local col = m:select(2, 2)
  col:copy_(hero.logical_or(col, any:logical_not()))
  local labels = ids:masked_select(m)
  local txt_mask_tgt = hero.cat({hero.zeros({R, nf}, {dtype = "bool"}), m}, 2)
  local cm = hero.tensor(g:rand(nv * nfr), {dtype = "f32"}):view(nv, nfr):lt(mask_prob)
  local c0 = cm:select(2, 1)
  c0:copy_(hero.logical_or(c0, cm:any(2):logical_not()))
  local subs = {}
  for v = 1, nv do
    local list = {}
    for s = 0, ns - 1 do
      local frames = {}
      for j = 0, nf - 1 do frames[#frames + 1] = s * nf + j end
      list[#list + 1] = {s, frames}
    end
    subs[v] = list
  end
  local num_subs = {}
  for v = 1, nv do num_subs[v] = ns end
  local pos = hero.arange(tl):unsqueeze(1)
  local b = {
    input_ids = ids, position_ids = pos, v_feat = f_v, attn_masks = ones, gather_index = gidx,
    txt_mask_tgt = txt_mask_tgt, txt_labels = labels,
    f_sub_input_ids = ids, f_sub_pos_ids = pos, f_v_feats = f_v, f_v_pos_ids = hero.arange(nf):unsqueeze(1),
    f_attn_masks = ones, f_gather_index = gidx,
    c_v_feats = feats, c_attn_masks = hero.ones({nv, nfr}, {dtype = "i64"}),
    c_v_masks = cm, f_v_masks = cm:view(R, nf), feat_targets = feats:masked_select(cm:unsqueeze(3)):view(-1, VFEAT),
    num_subs = num_subs, sub_idx2frame_idx = subs,
  }
  -- MFFR: masked frames are zeroed in both views (the mask embedding is added by the model)
  local mffr = {}
  for k, v in pairs(b) do mffr[k] = v end
  mffr.c_v_feats = feats:masked_fill(cm:unsqueeze(3), 0)
  mffr.f_v_feats = f_v:masked_fill(mffr.f_v_masks:unsqueeze(3), 0)
  return b, mffr, {ids = ids, feats = feats, subs = subs}
end

--- A VSM batch of the same videos (hero only: the baseline has no VSM head), built by hero.data
-- as for training: each video's first 5 subtitles become its queries (their text leaves the
-- context rows), the query targets are their frames; token 0 is [CLS], 2 is [SEP].
local function make_vsm_batch(raw, nv, ns, tl)
  local data = require "hero.data"
  local items = {}
  for v = 1, nv do
    local texts = {}
    for s = 1, ns do
      local row = raw.ids:select(1, (v - 1) * ns + s):narrow(1, 2, tl - 1):totable()
      texts[s] = row
    end
    local video = {vid = "bench" .. v, v_feat = raw.feats:select(1, v), sub2frames = raw.subs[v], input_ids = texts}
    items[v] = data.tasks.vsm_item(video, {special_ids = {cls = 0, sep = 2}, query_subs = {0, 1, 2, 3, 4},
                                           max_txt_len = tl})
  end
  return data.collate.vsm_collate(items)
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  return s[(#s + 1) // 2], s[1], s[#s]
end

local function peak_rss_mib()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return (tonumber(s:match("VmHWM:%s+(%d+)")) or 0) / 1024
end

--- Runs the hero side; returns the results array (same fields as the baseline's JSON).
local function run_hero(a)
  hero.set_num_threads(a.threads)
  hero.manual_seed(0)
  local c = CONFIGS[a.config]
  local model = hero.models.HeroForPretraining(model_config(c), {vfeat_dim = VFEAT, max_frm_seq_len = MAX_FRM,
    generator = hero.Generator(1)})
  local opt = hero.optim.AdamW(model:named_parameters(), {lr = 3e-5, betas = {0.9, 0.98}, eps = 1e-6,
    weight_decay = 0.01, no_decay = {"bias", "LayerNorm"}})
  local batch, mffr_batch, raw = make_batch(a.videos, a.subs, a.frames_per_sub, a.txt_len, 0.15)
  local vsm_batch = a.tasks:find("vsm", 1, true) and make_vsm_batch(raw, a.videos, a.subs, a.txt_len)
  local on_device = a.device ~= "cpu"
  if on_device then
    model:to(a.device)
    batch = hero.train.Trainer.batch_to(batch, a.device)
    mffr_batch = hero.train.Trainer.batch_to(mffr_batch, a.device)
    if vsm_batch then vsm_batch = hero.train.Trainer.batch_to(vsm_batch, a.device) end
    opt = hero.optim.AdamW(model:named_parameters(), {lr = 3e-5, betas = {0.9, 0.98}, eps = 1e-6,
      weight_decay = 0.01, no_decay = {"bias", "LayerNorm"}})
  end
  local amp_dtype = a.amp ~= "" and a.amp or nil
  local params = model:parameters()
  local results = {}
  for task in a.tasks:gmatch("[^,]+") do
    for mode in a.modes:gmatch("[^,]+") do
      if not (task == "repr" and mode ~= "fwd") then
        local function plain_loss()
          if task == "mlm" then return model:forward_mlm(batch).loss end
          if task == "mffr" then return model:forward_mfm(mffr_batch, "mffr").loss end
          if task == "vsm" then return model:forward_vsm(vsm_batch).loss end
          return (model.v_encoder:forward_repr(batch))
        end
        local function loss_of()
          if amp_dtype then return hero.amp.autocast(amp_dtype, plain_loss) end
          return plain_loss()
        end
        local fn
        if mode == "fwd" then
          model:evaluate()
          fn = function() hero.no_grad(loss_of) end
        else
          model:train()
          fn = function()
            for _, p in ipairs(params) do p.grad = nil end
            loss_of():backward()
            if mode == "step" then
              -- as hero.train.Trainer does it: the clipping factor applied inside AdamW's pass
              local _, factor = hero.optim.clip_grad_norm(params, 1.0, {apply = false})
              opt:step {grad_scale = factor}
            end
          end
        end
        local alt = mode == "step" and not on_device and a.alternate_threads > 0 and a.alternate_threads
        for _ = 1, a.warmup do fn() end
        if alt then -- the step at --threads and at --alternate-threads in turns: hero's own speed-up
          hero.set_num_threads(alt)
          for _ = 1, a.warmup do fn() end
          local speedups, t_base, t_alt = {}, {}, {}
          for r = 1, a.reps do
            for _, n in ipairs {a.threads, alt} do
              hero.set_num_threads(n)
              local t0 = now()
              fn()
              local t = now() - t0
              if n == alt then t_alt[r] = t else t_base[r] = t end
            end
            speedups[r] = t_base[r] / t_alt[r]
          end
          hero.set_num_threads(a.threads)
          local med, lo, hi = median(speedups)
          results[#results + 1] = {config = a.config, threads = a.threads, alternate_threads = alt, task = task,
                                   mode = "speedup", speedup = med, speedup_min = lo, speedup_max = hi,
                                   median_s = median(t_base), alternate_median_s = median(t_alt), reps = a.reps}
          io.stderr:write(string.format("hero  %-5s thr=%d/%d %-4s step in turns: median %.1f / %.1f ms, speed-up "
            .. "%.2fx (min %.2f, max %.2f)\n", a.config, a.threads, alt, task, median(t_base) * 1e3,
            median(t_alt) * 1e3, med, lo, hi))
          goto next_mode
        end
        local ts = {}
        local function sync() if on_device then hero.cuda.synchronize() end end
        sync()
        for r = 1, a.reps do
          local t0 = now()
          fn()
          sync()
          ts[r] = now() - t0
        end
        local med, lo, hi = median(ts)
        results[#results + 1] = {config = a.config, threads = a.threads, task = task, mode = mode, median_s = med,
                                 min_s = lo, max_s = hi, reps = a.reps}
        io.stderr:write(string.format("hero  %-5s thr=%d %-4s %-6s median %8.1f ms (min %7.1f, max %7.1f)\n",
          a.config, a.threads, task, mode, med * 1e3, lo * 1e3, hi * 1e3))
      end
      ::next_mode::
    end
  end
  if on_device then
    local stats = hero.cuda.memory_stats(a.device)
    io.stderr:write(string.format("hero peak device memory %.0f MiB (allocator: %.0f MiB reserved)\n",
      stats.peak / 2 ^ 20, stats.reserved / 2 ^ 20))
  end
  return results, peak_rss_mib()
end

local function write_json(path, results, rss)
  hero.json.write_file(path, {results = results, peak_rss_mib = rss}, {indent = 1})
end

local function run_torch(a, script)
  local tmp = os.tmpname()
  local cmd = string.format("OPENBLAS_NUM_THREADS=%d OMP_NUM_THREADS=%d OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 %s "
    .. "--config %s --threads %d --videos %d --subs %d --frames-per-sub %d --txt-len %d --tasks %s --modes %s "
    .. "--reps %d --warmup %d --json %s 2>&1", a.threads, a.threads, script, a.config, a.threads, a.videos, a.subs,
    a.frames_per_sub, a.txt_len, a.tasks, a.modes, a.reps, a.warmup, tmp)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local f = io.open(tmp)
  if not f then error("PyTorch baseline failed:\n" .. out) end
  local s = f:read("a")
  f:close()
  os.remove(tmp)
  local doc = hero.json.decode(s)
  local res = {}
  for _, r in ipairs(doc.results) do res[r.task .. ":" .. r.mode] = r.median_s end
  return res, doc.peak_rss_mib
end

-- loaded as a library (loadfile(path)("library"), as examples/bench_soak.lua does): the pieces
if ... == "library" then
  return {CONFIGS = CONFIGS, model_config = model_config, make_batch = make_batch, VFEAT = VFEAT, MAX_FRM = MAX_FRM}
end

require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local a = parse_args(arg)
if not a.paired then
  local results, rss = run_hero(a)
  if a.json ~= "" then write_json(a.json, results, rss) end
  io.stderr:write(string.format("# hero peak RSS %.0f MiB\n", rss))
  return
end

local ratios, rss_t, rss_h, times_h, times_t = {}, 0, 0, {}, {}
for _ = 1, a.rounds do
  local hr, hrss = run_hero(a)
  local tr, trss = run_torch(a, a.paired)
  rss_h, rss_t = math.max(rss_h, hrss), math.max(rss_t, trss or 0)
  for _, r in ipairs(hr) do
    local key = r.task .. ":" .. r.mode
    if tr[key] then
      ratios[key] = ratios[key] or {}
      table.insert(ratios[key], r.median_s / tr[key])
      times_h[key] = times_h[key] or {}
      times_t[key] = times_t[key] or {}
      table.insert(times_h[key], r.median_s)
      table.insert(times_t[key], tr[key])
    end
  end
  collectgarbage()
end
print(string.format("config %s, %d thread(s), %d rounds (hero / PyTorch, lower is better)", a.config, a.threads,
  a.rounds))
print(string.format("%-12s %10s %10s %8s %8s %8s", "task:mode", "hero ms", "torch ms", "ratio", "min", "max"))
local keys = {}
for k in pairs(ratios) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do
  local m, lo, hi = median(ratios[k])
  print(string.format("%-12s %10.1f %10.1f %8.3f %8.3f %8.3f", k, median(times_h[k]) * 1e3,
    median(times_t[k]) * 1e3, m, lo, hi))
end
print(string.format("peak RSS: hero %.0f MiB (process total), PyTorch %.0f MiB, ratio %.3f", rss_h, rss_t,
  rss_t > 0 and rss_h / rss_t or 0))
