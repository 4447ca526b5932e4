--- `make demo`: HERO end to end on a small embedded dataset, on the CPU, in under a minute.
--
--   lua5.4 examples/demo.lua [--out DIR] [--data DIR] [--tiny] [--quiet] [--threads N (1)]
--                            [--workers N (2)] [--pretrain-steps N] [--finetune-steps N] [--seed N]
--
-- 1. Generates the synthetic video+subtitle world of hero.data.synthetic (objects, colours and
--    actions with fixed feature prototypes; subtitles and queries about what is on screen) and
--    writes it through hero's preprocessing into LMDB databases, which are read back with the
--    normal readers.
-- 2. Pre-trains a small HERO on the subtitled training videos with MLM, MFM-NCE, FOM and VSM
--    (hero.train: MetaLoader + Trainer), with a progress line. Its batches are read from the
--    databases and collated by --workers threads (hero.data.prefetch_loaders) while the model
--    computes; the summary line says how long the training step waited for them.
-- 3. Fine-tunes it for video corpus moment retrieval (VCMR) on a few labelled queries, and
--    fine-tunes the same architecture from the same initial weights WITHOUT pre-training for the
--    same number of updates.
-- 4. Evaluates both on held-out queries over held-out videos (rank the videos by the model's
--    query-video score, localise start/end), beside a random-score baseline, and prints the table.
-- Writes DIR/results.json, DIR/loss_curves.svg, DIR/tensorboard/ (event files) and DIR/log.jsonl
-- (default DIR: a new temporary directory, printed at the end). --tiny runs a seconds-long version
-- (used by spec/demo_spec.lua).
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local hero = require "hero"
local S = hero.data.synthetic
local train = hero.train
local json = hero.json
local prefetch = require "hero.data.prefetch"

local function usage(msg)
  io.stderr:write("demo: ", msg, "\n(lua5.4 examples/demo.lua --help for the options)\n")
  os.exit(2)
end

local opts
do
  local err
  opts, err = hero.cli.parse_options(arg, {flags = hero.cli.set {"tiny", "quiet"},
    values = hero.cli.set {"out", "data", "threads", "pretrain-steps", "finetune-steps", "seed", "workers"}})
  if not opts then usage(err) end
end
local function int_opt(name, default)
  if opts[name] == nil then return default end
  local n = hero.cli.decimal_integer(opts[name])
  if not n or n < 0 then usage("--" .. name .. " must be a non-negative integer") end
  return n
end

-- One thread by default: the tensors of this small model are too small to gain from more, and one
-- thread makes the printed numbers the same on every machine.
do
  local ok, err = hero.cli.set_threads(opts.threads or "1")
  if not ok then usage(err) end
end
local tiny = opts.tiny
local seed = int_opt("seed", 7)
local P = {
  world = tiny and {seed = seed, videos = 24, test_videos = 8, finetune_queries = 8}
    or {seed = seed, videos = 240, test_videos = 60, finetune_queries = 60},
  pretrain_steps = int_opt("pretrain-steps", tiny and 8 or 600),
  finetune_steps = int_opt("finetune-steps", tiny and 6 or 200),
  batch = tiny and 4 or 12, ft_batch = tiny and 4 or 12, workers = int_opt("workers", 2),
  lr = 1e-3, ft_lr = 5e-4, hidden = tiny and 32 or 64,
}
-- checked before the data is generated, not when the pool starts after it
if P.workers > hero.cli.MAX_WORKERS then
  usage(string.format("--workers must be at most %d, got %d", hero.cli.MAX_WORKERS, P.workers))
end

local function say(...) if not opts.quiet then io.stdout:write(string.format(...)) io.stdout:flush() end end
local now = hero.core._now

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local out = opts.out
if not out then
  local base = os.tmpname()
  os.remove(base)
  out = base .. "-hero-demo"
end
local made, mkdir_err = pcall(hero.data.prepro.mkdir_p, out)
if not made then
  usage(string.format("cannot use --out %s: %s", out, (tostring(mkdir_err):gsub("^[^\n]-%.lua:%d+: ", ""))))
end
local data_dir = opts.data or (out .. "/data")
if opts.data then -- a file where the data directory belongs failed inside the generator
  local data_ok, err = hero.cli.make_dir(data_dir, "--data")
  if not data_ok then usage(err) end
end
local t_start = now()

-- ------------------------------------------------------------------ 1. data
say("== 1. synthetic dataset -> %s\n", data_dir)
local exists = io.open(data_dir .. "/splits.json", "rb")
if exists then
  exists:close()
  say("   (already written; reusing it)\n")
else
  S.write(data_dir, P.world)
end
local D = S.load(data_dir)
local data_paths = S.paths(data_dir)
local vocab = D.vocab
local function videos_of(ids)
  local list = {}
  for i, vid in ipairs(ids) do list[i] = D.videos[vid] end
  return list
end
local pre_videos = videos_of(D.splits.pretrain)
local test_videos = videos_of(D.splits.test_videos)
local ft_pairs, test_queries = {}, {}
for _, qid in ipairs(D.splits.finetune) do
  local q = D.queries[qid]
  ft_pairs[#ft_pairs + 1] = {video = D.videos[q.vid], query = q}
end
for _, qid in ipairs(D.splits.test) do test_queries[#test_queries + 1] = D.queries[qid] end
local example = D.videos[D.splits.pretrain[1]]
say("   %d pre-training videos, %d fine-tuning queries, %d test queries over %d test videos\n", #pre_videos,
  #ft_pairs, #test_queries, #test_videos)
say("   vocabulary of %d words, %d-dim frame features (%d frames per video at most)\n", vocab.size, D.feat_dim,
  D.max_clip_len)
say("   e.g. %s: %d frames; subtitle \"%s\"; query \"%s\"\n", example.vid, example.nframes,
  S.detokenize(example.tokens[1]), ft_pairs[1].query.desc)

-- ------------------------------------------------------------------ model
local H = P.hidden
local function layer_cfg(layers, maxpos)
  return {hidden_size = H, num_attention_heads = 4, intermediate_size = 2 * H, num_hidden_layers = layers,
          max_position_embeddings = maxpos, type_vocab_size = 2, vocab_size = vocab.size, hidden_act = "gelu",
          hidden_dropout_prob = 0.1, attention_probs_dropout_prob = 0.1, initializer_range = 0.02}
end
local cfg = {f_config = layer_cfg(2, 40), c_config = layer_cfg(1, D.max_clip_len), q_config = layer_cfg(0, 40)}
local model_opts = {vfeat_dim = D.feat_dim, max_frm_seq_len = 8, fom_classes = D.max_clip_len, lw_st_ed = 0.1}

local function new_model(gen_seed)
  hero.manual_seed(seed)
  local o = {}
  for k, v in pairs(model_opts) do o[k] = v end
  o.generator = hero.Generator(gen_seed)
  return hero.models.HeroForPretraining(cfg, o)
end

local function optimizer(model, lr)
  return hero.optim.AdamW(model:named_parameters(), {lr = lr, betas = {0.9, 0.98}, eps = 1e-6, weight_decay = 0.01,
    no_decay = {"bias", "LayerNorm.bias", "LayerNorm.weight"}})
end

local function clone_state(model)
  local sd = {}
  for k, t in pairs(model:state_dict()) do sd[k] = t:clone() end
  return sd
end

local model = new_model(seed + 1)
local init_state = clone_state(model)
local nparams = 0
for _, p in ipairs(model:named_parameters()) do nparams = nparams + p[2]:numel() end
say("   HERO: hidden %d, 2 cross-modal + 1 temporal layers, %d parameters\n", H, nparams)

local log_lines = {}
local function log(rec) log_lines[#log_lines + 1] = json.encode(rec) end

-- ------------------------------------------------------------------ 2. pre-training
local curves = {pretrain = {}, finetune = {}}
local tasks = {"mlm", "mfm-nce", "fom", "vsm"}
local results = {config = {pretrain_steps = P.pretrain_steps, finetune_steps = P.finetune_steps, world = P.world,
                           hidden = H, batch = P.batch, params = nparams}}

if P.pretrain_steps > 0 then
  say("== 2. pre-training (%s) for %d updates of %d videos\n", table.concat(tasks, ", "), P.pretrain_steps, P.batch)
  -- The batches come from the databases on disk through the same pipeline as real data
  -- (hero.data.VideoSubDataset + the reference's task collates), read and collated by a pool of
  -- worker threads while the model computes.
  local spec = {type = "VideoSubDataset", video_db = data_paths.video_db, sub_db = data_paths.sub_db,
                max_clip_len = D.max_clip_len, ids = D.splits.pretrain}
  local specs = {}
  for i, t in ipairs(tasks) do
    specs[t] = {dataset = spec, task = t, batch_size = P.batch, seed = seed * 100 + i, on_error = "error"}
  end
  local loaders
  if P.workers > 0 then
    loaders = hero.data.prefetch_loaders{loaders = specs, workers = P.workers, depth = 2}
  else
    -- --workers 0: the same batches made on the training thread, timed the same way
    local ds = prefetch.dataset_from_spec(spec)
    loaders = {}
    for t, sp in pairs(specs) do
      loaders[t] = prefetch.timed(prefetch.loader_from_spec(sp, ds))
    end
  end
  local meta = train.MetaLoader{tasks = loaders, ratios = {mlm = 2, ["mfm-nce"] = 2, fom = 1, vsm = 2}, order = tasks,
                                accum = 1, generator = hero.Generator(seed + 2)}
  local trainer = train.Trainer{model = model, optimizer = optimizer(model, P.lr), loader = meta, lr = P.lr,
    warmup = math.max(1, P.pretrain_steps // 10), total = P.pretrain_steps, grad_norm = 1.0, progress = not opts.quiet}
  local t0 = now()
  local recs = trainer:train(P.pretrain_steps)
  results.pretrain_seconds = now() - t0
  for _, r in ipairs(recs) do
    local c = curves.pretrain[r.task] or {}
    curves.pretrain[r.task] = c
    c[#c + 1] = {r.step, r.loss}
    log({phase = "pretrain", step = r.step, task = r.task, loss = r.loss, lr = r.lr, grad_norm = r.grad_norm})
  end
  local last = {}
  for _, t in ipairs(tasks) do
    local c = curves.pretrain[t] or {}
    if #c == 0 then goto continue end
    local first_mean, last_mean = 0, 0
    local k = math.max(1, math.min(10, #c // 4))
    for i = 1, math.min(k, #c) do first_mean = first_mean + c[i][2] / k end
    for i = math.max(1, #c - k + 1), #c do last_mean = last_mean + c[i][2] / k end
    last[#last + 1] = string.format("%s %.3f -> %.3f", t, first_mean, last_mean)
    ::continue::
  end
  say("   %.1f s; loss (first -> last updates): %s\n", results.pretrain_seconds, table.concat(last, ", "))
  -- How long the training step took to get its batch, and how much of that it was blocked on
  -- workers that had not finished it. Each task's first batch also waits for the pipeline to fill,
  -- so the steady-state figure leaves those out.
  local waited, served, firsts, blocked = 0, 0, 0, 0
  for _, t in ipairs(tasks) do
    local w, n, f = loaders[t]:wait_seconds()
    waited, served, firsts = waited + w, served + n, firsts + f
    blocked = blocked + loaders[t]:blocked_seconds()
    if loaders[t].close then loaders[t]:close() end
  end
  local steady = served > #tasks and (waited - firsts) / (served - #tasks) or 0
  results.data = {workers = P.workers, wait_per_update = waited / math.max(1, served), wait_steady = steady,
                  blocked_per_update = blocked / math.max(1, served), wait_first_batches = firsts,
                  step_seconds = results.pretrain_seconds / P.pretrain_steps}
  say("   data: %s; per update the step spent %.2f ms getting its batch, %.2f ms of it blocked on unfinished "
    .. "batches (first batch of each task: %.0f ms in all); %.1f ms per update\n",
    P.workers > 0 and string.format("%d worker threads", P.workers) or "batches made on the training thread",
    1e3 * results.data.wait_per_update, 1e3 * results.data.blocked_per_update, 1e3 * firsts,
    1e3 * results.data.step_seconds)
end
local pretrained_state = clone_state(model)

-- ------------------------------------------------------------------ 3. fine-tuning + 4. evaluation
local function finetune(name, state, gen_seed)
  local m = new_model(gen_seed)
  m:load_state_dict(state)
  local loader = S.TaskLoader{items = ft_pairs, batch_size = math.min(P.ft_batch, #ft_pairs),
    collate = function(chosen, feat_dim) return S.collate_vcmr(chosen, feat_dim) end, feat_dim = D.feat_dim,
    seed = seed * 1000 + 1}
  local meta = train.MetaLoader{tasks = {vsm = loader}, accum = 1, generator = hero.Generator(seed + 3)}
  local trainer = train.Trainer{model = m, optimizer = optimizer(m, P.ft_lr), loader = meta, lr = P.ft_lr,
    warmup = math.max(1, P.finetune_steps // 10), total = math.max(P.finetune_steps, 2), grad_norm = 1.0,
    progress = not opts.quiet}
  local t0 = now()
  local recs = trainer:train(P.finetune_steps)
  local c = {}
  for _, r in ipairs(recs) do
    c[#c + 1] = {r.step, r.loss}
    log({phase = "finetune", run = name, step = r.step, loss = r.loss, lr = r.lr, grad_norm = r.grad_norm})
  end
  curves.finetune[name] = c
  local ev = S.evaluate_vcmr(m, test_videos, test_queries, D.feat_dim)
  return ev, now() - t0
end

local function summary(ev)
  local m = ev.metrics
  return {VR = {r1 = m.VR.r1, r5 = m.VR.r5, r10 = m.VR.r10},
          VCMR = {["0.5-r1"] = m.VCMR["0.5-r1"], ["0.5-r5"] = m.VCMR["0.5-r5"], ["0.7-r1"] = m.VCMR["0.7-r1"],
                  ["0.7-r5"] = m.VCMR["0.7-r5"]},
          SVMR = {["0.5-r1"] = m.SVMR["0.5-r1"], ["0.7-r1"] = m.SVMR["0.7-r1"]}}
end

say("== 3. VCMR fine-tuning on %d labelled queries, %d updates each\n", #ft_pairs, P.finetune_steps)
say("   with pre-training:\n")
local ev_pre, s_pre = finetune("pre-trained", pretrained_state, seed + 10)
say("   without pre-training (same initial weights, same updates):\n")
local ev_scratch, s_scratch = finetune("from scratch", init_state, seed + 10)
local ev_random = S.evaluate_vcmr(nil, test_videos, test_queries, D.feat_dim, {random = seed + 20})
results.pretrained = summary(ev_pre)
results.scratch = summary(ev_scratch)
results.random = summary(ev_random)
results.finetune_seconds = {pretrained = s_pre, scratch = s_scratch}

say("== 4. held-out evaluation: %d queries over %d videos (R@K in %%)\n", #test_queries, #test_videos)
local rows = {{"random scores", results.random}, {"HERO, no pre-training", results.scratch},
              {"HERO, pre-trained", results.pretrained}}
say("   %-24s %7s %7s %7s  %12s %12s  %12s\n", "", "VR R@1", "R@5", "R@10", "VCMR 0.5 R@1", "0.5 R@5", "SVMR 0.5 R@1")
for _, r in ipairs(rows) do
  local m = r[2]
  say("   %-24s %7.1f %7.1f %7.1f  %12.1f %12.1f  %12.1f\n", r[1], m.VR.r1, m.VR.r5, m.VR.r10, m.VCMR["0.5-r1"],
    m.VCMR["0.5-r5"], m.SVMR["0.5-r1"])
end
local gain = results.pretrained.VR.r1 - results.scratch.VR.r1
say("   pre-training changes video R@1 by %+.1f points and VCMR R@1 (IoU 0.5) by %+.1f points\n", gain,
  results.pretrained.VCMR["0.5-r1"] - results.scratch.VCMR["0.5-r1"])

-- ------------------------------------------------------------------ outputs
local charts = {}
local series = {}
for _, t in ipairs(tasks) do
  if curves.pretrain[t] then
    series[#series + 1] = {name = t, points = hero.plot.smooth(curves.pretrain[t], tiny and 1 or 15)}
  end
end
if #series > 0 then
  charts[#charts + 1] = {title = "Pre-training loss per task (moving average)", xlabel = "update", ylabel = "loss",
                         series = series}
end
charts[#charts + 1] = {title = "VCMR fine-tuning loss (moving average)", xlabel = "update", ylabel = "loss", series = {
  {name = "pre-trained", points = hero.plot.smooth(curves.finetune["pre-trained"], tiny and 1 or 10)},
  {name = "from scratch", points = hero.plot.smooth(curves.finetune["from scratch"], tiny and 1 or 10), dashed = true},
}}
hero.plot.write_svg(out .. "/loss_curves.svg", charts)
-- the same curves as TensorBoard event files: tensorboard --logdir DIR/tensorboard
do
  local tb = hero.tensorboard.Writer(out .. "/tensorboard")
  for t, c in pairs(curves.pretrain) do
    for _, p in ipairs(c) do tb:add_scalar("pretrain/loss_" .. t, p[2], math.tointeger(p[1])) end
  end
  for name, c in pairs(curves.finetune) do
    for _, p in ipairs(c) do tb:add_scalar("finetune/loss_" .. name:gsub("%W", "_"), p[2], math.tointeger(p[1])) end
  end
  tb:close()
end
results.seconds = now() - t_start
json.write_file(out .. "/results.json", results, {indent = 1})
hero.io.write_atomic(out .. "/log.jsonl", table.concat(log_lines, "\n") .. "\n") -- a rerun never leaves half a log
say("== done in %.0f s: %s/results.json, %s/loss_curves.svg, %s/tensorboard, %s/log.jsonl\n", results.seconds,
  out, out, out, out)
if not opts.data and not opts.out then say("   (remove with: rm -r %s)\n", shell_quote(out)) end
return results
