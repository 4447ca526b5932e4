--- Fine-tuning HERO on a downstream task with the reference's training config (hero-spec §5, §6).
--
--   lua5.4 examples/finetune.lua --task vcmr --config config/train-tvr-8gpu.json \
--       --checkpoint pretrained/hero-tv-ht100.pt --txt-db txt_db/tvr_train.db --vfeat-db video_db/tv \
--       --sub-db txt_db/tv_subtitles.db --out runs/tvr [--steps N] [--resume]
--
-- Options:
--   --task vcmr|vr|videoqa|violin|tvc   the downstream task (required)
--   --config FILE        the reference's training config (train-*.json), read as it is (required)
--   --checkpoint FILE    pre-trained weights: the reference's .pt or a .safetensors file (required)
--   --txt-db DIR         training text db: queries (tvr_train.db, tvqa_train.db, violin_train.db) or
--                        the TVC caption db [config's train_query_txt_db / train_db]
--   --vfeat-db DIR       video features: the LMDB or the directory holding id2nframe.json and
--                        <vfeat_version>_<vfeat_interval> [config's vfeat_db]
--   --sub-db DIR         subtitle db [config's sub_txt_db]; a config whose task is didemo_video_only or
--                        msrvtt_video_only reads none (its videos have one [CLS] segment of all frames)
--   --model-config FILE  model config [config's model_config, also looked up next to --config]
--   --out DIR            output: log.jsonl, log/hps.json, log/model_config.json, ckpt/ (required)
--   --steps N            train until update N [config's num_train_steps]
--   --valid-txt-db DIR   every valid_steps: validation losses on this db and its full evaluation
--                        (retrieval metrics, accuracy, captions) into OUT/results_val/step_N.json [none]
--   --test-txt-db DIR    with --valid-txt-db: the full evaluation of this split too at every validation
--                        (as test_query_txt_db), into OUT/results_test/step_N.json [none]
--   --no-full-eval       with --valid-txt-db, the losses only
--   --vocab FILE --merges FILE   (TVC) RoBERTa vocab.json / merges.txt: the validation captions as text,
--                        with their BLEU, ROUGE-L and CIDEr
--   --meteor-jar FILE    (TVC) METEOR 1.5's jar (needs java): METEOR among the validation metrics
--   --ptb-jar FILE       (TVC) the Stanford PTBTokenizer's jar: the reference's tokenisation for scoring
--   --save-every N       checkpoint every N updates [config's save_steps]
--   --resume             continue from OUT/ckpt/latest when it exists
--   --threads N          hero.set_num_threads(N)
--   --on-error skip|error  an unreadable query/video is skipped and reported, or stops the run [skip]
--   --quiet              no progress line
--   --dist               data-parallel over MPI (mpirun -np N ...): each rank trains on its share of the
--                        queries, the gradients are averaged, rank 0 logs and checkpoints
-- Each key of the config works as in the reference (misspellings included); keys it lacks take
-- the reference's argparse defaults, except those hero.train.finetune.REQUIRED lists.
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local hero = require "hero"
local json = hero.json
local FT = require "hero.train.finetune"

local function die(msg)
  io.stderr:write("finetune: ", tostring(msg):gsub("^[^:]*:%d+: ", ""), "\n")
  os.exit(2)
end

local function parse_args(argv)
  local flags = {resume = true, quiet = true, ["no-full-eval"] = true, dist = true}
  local known = {task = true, config = true, checkpoint = true, ["txt-db"] = true, ["vfeat-db"] = true,
                 ["sub-db"] = true, ["model-config"] = true, out = true, steps = true, ["valid-txt-db"] = true,
                 ["test-txt-db"] = true, ["no-full-eval"] = true, vocab = true, merges = true, ["save-every"] = true,
                 resume = true, threads = true, ["on-error"] = true, quiet = true, dist = true, ["meteor-jar"] = true,
                 ["ptb-jar"] = true}
  local opts, i = {}, 1
  while i <= #argv do
    local name = argv[i]:match("^%-%-([%w%-]+)$")
    if not name then
      die("unexpected argument '" .. argv[i] .. "' (lua5.4 examples/finetune.lua --help for the options)")
    end
    if not known[name] then die("unknown option --" .. name) end
    if flags[name] then
      opts[name] = true
      i = i + 1
    else
      if argv[i + 1] == nil then die("--" .. name .. " needs a value") end
      opts[name] = argv[i + 1]
      i = i + 2
    end
  end
  return opts
end

local function int_arg(opts, name)
  local v = opts[name]
  if v == nil then return nil end
  local n = math.tointeger(tonumber(v))
  if not n or n < 0 then die(string.format("--%s must be a non-negative integer, got '%s'", name, v)) end
  return n
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local opts = parse_args(arg)
local rank = 0
if opts.dist then rank = hero.dist.init() end

local function main()
  if not opts.task then die("--task is required (vcmr, vr, videoqa, violin, tvc)") end
  local task = FT.check_task(opts.task)
  if not opts.config then die("--config FILE (the reference's train-*.json) is required") end
  if not opts.checkpoint then die("--checkpoint FILE is required") end
  if not opts.out then die("--out DIR is required") end
  hero.train.check_run_dir(opts.out, opts.resume)
  if opts.threads then hero.set_num_threads(int_arg(opts, "threads")) end
  local raw = json.read_file(opts.config)
  local hps = FT.hparams(task, raw, opts.config)
  local cfg, cfg_path = FT.model_config(hps, opts["model-config"], opts.config)
  hps.model_config = cfg_path
  hps.checkpoint = opts.checkpoint
  hps.vfeat_db = opts["vfeat-db"] or hps.vfeat_db
  hps.sub_txt_db = opts["sub-db"] or hps.sub_txt_db
  hps.train_txt_db = opts["txt-db"] or hps.train_query_txt_db or hps.train_db
  if type(hps.vfeat_db) ~= "string" then die("no video features: give --vfeat-db DIR") end
  local steps = int_arg(opts, "steps") or hps.num_train_steps
  local tok
  if opts.vocab or opts.merges then
    if not (opts.vocab and opts.merges) then die("--vocab and --merges go together") end
    tok = hero.text.Tokenizer.from_files(opts.vocab, opts.merges)
  end
  if (opts["meteor-jar"] or opts["ptb-jar"]) and task ~= "tvc" then
    die("--meteor-jar and --ptb-jar are for --task tvc")
  end
  local jars_ok, caption_eval = pcall(hero.eval.caption.java_options, opts["meteor-jar"], opts["ptb-jar"])
  if not jars_ok then die(caption_eval) end
  if opts["test-txt-db"] and (not opts["valid-txt-db"] or opts["no-full-eval"]) then
    die("--test-txt-db is evaluated at each validation: it needs --valid-txt-db (and not --no-full-eval)")
  end
  local run = FT.setup{tokenizer = tok, caption_eval = caption_eval, task = task, hps = hps, model_config = cfg,
    checkpoint = opts.checkpoint,
    vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db, txt_db = hps.train_txt_db, out_dir = opts.out,
    valid_txt_db = opts["valid-txt-db"], test_txt_db = opts["test-txt-db"], full_eval = not opts["no-full-eval"],
    save_every = int_arg(opts, "save-every"),
    on_error = opts["on-error"], dist = opts.dist,
    progress = not opts.quiet}
  if #run.report.missing > 0 then
    io.stderr:write(string.format("%d parameters not in the checkpoint (new heads keep their initialisation)\n",
      #run.report.missing))
  end
  local start = 0
  if opts.resume then
    if hero.train.Trainer.latest_step(opts.out) then
      -- as the reference's TrainingRestorer: the same settings as the run was started with
      local ok, err = pcall(hero.train.check_resumed_settings, opts.out .. "/log/hps.json", hps,
        {"save_steps", "valid_steps", "n_workers", "pin_mem"})
      if not ok then die(err) end
    end
    start = run.trainer:resume(opts.out) or 0
    if start > 0 then io.stderr:write(string.format("resumed from %s/ckpt/step_%d\n", opts.out, start)) end
  end
  if start == 0 and rank == 0 then
    -- what evaluate.lua reads back (the reference's save_training_meta)
    os.execute("mkdir -p " .. shell_quote(opts.out .. "/log"))
    json.write_file(opts.out .. "/log/hps.json", hps, {indent = 1})
    json.write_file(opts.out .. "/log/model_config.json", cfg, {indent = 1})
  end
  local todo = math.max(0, steps - start)
  local t0 = hero.core._now()
  local records = run.trainer:train(todo)
  local dt = hero.core._now() - t0
  if rank ~= 0 then return end
  local last = records[#records]
  io.stderr:write(string.format("%d updates in %.2f s%s; checkpoint %s/ckpt/step_%d.safetensors\n", todo, dt,
    last and string.format(", last loss %.4f", last.loss) or "", opts.out, run.trainer.global_step))
  local st = run.loader.stats
  io.stderr:write(string.format("  %s: epoch %d, %d batches, %d items, %d skipped\n", hps.task, run.loader.epoch,
    st.batches, st.items, st.skipped))
end

-- with --dist a rank that fails ends the whole job (the others would wait forever)
local ok, err = hero.dist.main(main, opts.dist)
if not ok then die(err) end

