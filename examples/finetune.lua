--- Fine-tuning HERO on a downstream task with the reference's training config (hero-spec §5, §6).
--
--   lua5.4 examples/finetune.lua --task vcmr --config config/train-tvr-8gpu.json \
--       --checkpoint pretrained/hero-tv-ht100.pt --txt-db txt_db/tvr_train.db --vfeat-db video_db/tv \
--       --sub-db txt_db/tv_subtitles.db --out runs/tvr [--steps N] [--resume]
--
-- Options:
--   --task vcmr|vr|videoqa|violin|tvc   the downstream task (required); or the reference's task name
--                        (tvr, how2r, didemo_video_sub, didemo_video_only, msrvtt_video_sub,
--                        msrvtt_video_only, tvqa, how2qa), which then replaces the config's task
--   --config FILE        the reference's training config (train-*.json), read as it is (required)
--   --checkpoint FILE    pre-trained weights: the reference's .pt or a .safetensors file [config's checkpoint]
--   --txt-db DIR         training text db: queries (tvr_train.db, tvqa_train.db, violin_train.db) or
--                        the TVC caption db [config's train_query_txt_db / train_db]
--   --vfeat-db DIR       video features: the LMDB or the directory holding id2nframe.json and
--                        <vfeat_version>_<vfeat_interval> [config's vfeat_db]
--   --sub-db DIR         subtitle db [config's sub_txt_db]; a config whose task is didemo_video_only or
--                        msrvtt_video_only reads none (its videos have one [CLS] segment of all frames)
--   --model-config FILE  model config [config's model_config, also looked up next to --config]
--   --out DIR            output: log.jsonl, log/hps.json, log/model_config.json, ckpt/ [config's output_dir]
--   --steps N            train until update N [config's num_train_steps]
--   --valid-txt-db DIR   every valid_steps: validation losses on this db and its full evaluation
--                        (retrieval metrics, accuracy, captions) into OUT/results_val/step_N.json
--                        [config's val_query_txt_db, for TVC val_db]
--   --test-txt-db DIR    the full evaluation of this split too at every validation, into
--                        OUT/results_test/step_N.json [config's test_query_txt_db; TVC: none]
--   --no-valid           no validation at all, whatever the config names
--   --no-full-eval       the validation losses only
--   --vocab FILE --merges FILE   (TVC) RoBERTa vocab.json / merges.txt: the validation captions as text,
--                        with their BLEU, ROUGE-L and CIDEr
--   --meteor-jar FILE    (TVC) METEOR 1.5's jar (needs java): METEOR among the validation metrics
--   --ptb-jar FILE       (TVC) the Stanford PTBTokenizer's jar: the reference's tokenisation for scoring
--   --save-every N       checkpoint every N updates [config's save_steps]
--   --resume             continue from OUT/ckpt/latest when it exists
--   --threads N          hero.set_num_threads(N)
--   --device D           where the model computes: cpu, cuda:N, or cuda (with --dist: the GPU of the
--                        rank's index on its node) [cpu]; batches are made on the CPU and moved there
--   --amp bf16|f16|f32   mixed precision: every forward (validation and full evaluation too) under
--                        hero.amp.autocast, f32 master weights; f16 scales the loss with a GradScaler
--                        that the checkpoints keep [f32; on a GPU, f16 when the config's fp16 is true]
--   --on-error skip|error  an unreadable query/video is skipped and reported, or stops the run [skip]
--   --quiet              no progress line
--   --dist               data-parallel over MPI (mpirun -np N ...): each rank trains on its share of the
--                        queries, the gradients are averaged, rank 0 logs and checkpoints
--   --<option> VALUE...  any option of the reference's training script, spelled as there
--                        (--learning_rate 1e-4, --betas 0.9 0.98, --use_all_neg, --output_dir DIR,
--                        --nms_thd=-1): it wins over the config's value, as parse_with_config
-- Each key of the config works as in the reference (misspellings included); keys it lacks take
-- the reference's argparse defaults, except those hero.train.finetune.REQUIRED lists. TVC scores
-- its validation captions against the config's val_ref (JSON lines) when it names one.
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local hero = require "hero"
local json = hero.json
local FT = require "hero.train.finetune"

local function die(msg)
  io.stderr:write("finetune: ", tostring(msg):gsub("^[^:]*:%d+: ", ""), "\n")
  os.exit(2)
end

local function parse_args(argv)
  local opts, err = hero.cli.parse_options(argv, {
    flags = hero.cli.set {"resume", "quiet", "no-full-eval", "dist", "no-valid"},
    values = hero.cli.set {"task", "config", "checkpoint", "txt-db", "vfeat-db", "sub-db", "model-config", "out",
                           "steps", "valid-txt-db", "test-txt-db", "vocab", "merges", "save-every", "threads",
                           "on-error", "meteor-jar", "ptb-jar", "device", "amp"}})
  if not opts then
    die(err .. (err:match("^unexpected") and " (lua5.4 examples/finetune.lua --help for the options)" or ""))
  end
  return opts
end

local function int_arg(opts, name, min)
  local v = opts[name]
  if v == nil then return nil end
  local n = hero.cli.decimal_integer(v)
  min = min or 0
  if not n or n < min then
    die(string.format("--%s must be %s integer, got '%s'", name, min == 0 and "a non-negative" or "a positive", v))
  end
  return n
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- a path the config gives (JSON null, as test_query_txt_db: null, is none)
local function path_of(v) return type(v) == "string" and v or nil end

-- The task decides which reference script's options the command line may hold (train_vcmr.py's,
-- train_tvc.py's, ...); the options hero spells itself (--task, --config, --checkpoint) stay ours.
local family, ref_task
do
  local name, given
  for i, a in ipairs(arg) do if a == "--task" then name, given = arg[i + 1], true end end
  if given and name == nil then die("--task needs a value (vcmr, vr, videoqa, violin, tvc)") end
  if name == nil then die("--task is required (vcmr, vr, videoqa, violin, tvc)") end
  local ok, f, r = pcall(FT.task_family, name)
  if not ok then die(f) end
  family, ref_task = f, r
end
local ref_values, rest, ref_given
do
  local ok, v, r, g = pcall(hero.cli.parse_reference, arg, FT.REFERENCE_SCRIPT[family],
    {task = true, config = true, checkpoint = true})
  if not ok then die(v) end
  ref_values, rest, ref_given = v, r, g
end
local opts = parse_args(rest)
local rank = 0
if opts.dist then rank = hero.dist.init() end

local function main()
  local task = family
  if not opts.config then die("--config FILE (the reference's train-*.json) is required") end
  for _, pair in ipairs {{"out", "output_dir"}, {"model-config", "model_config"}, {"save-every", "save_steps"},
                         {"vfeat-db", "vfeat_db"}, {"sub-db", "sub_txt_db"}, {"txt-db", "train_db"},
                         {"valid-txt-db", "val_db"}} do
    if opts[pair[1]] and ref_values[pair[2]] ~= nil then
      die(string.format("--%s and --%s say the same: give one", pair[1], pair[2]))
    end
  end
  if opts.threads then
    local ok, err = hero.cli.set_threads(opts.threads)
    if not ok then die(err) end
  end
  -- parse_with_config: the options given on the command line over the config's keys
  local raw = hero.cli.with_overrides(json.read_file(opts.config), ref_values)
  if ref_task then raw.task = ref_task end -- the reference's --task wins over the config's too
  local hps = FT.hparams(task, raw, opts.config)
  if #ref_given > 0 and rank == 0 then
    io.stderr:write("from the command line: ", table.concat(ref_given, ", "), "\n")
  end
  local out = opts.out or path_of(hps.output_dir)
  if not out then die("--out DIR is required (the config has no output_dir)") end
  hps.output_dir = out
  hero.train.check_run_dir(out, opts.resume)
  local checkpoint = opts.checkpoint or path_of(hps.checkpoint)
  if not checkpoint then die("--checkpoint FILE is required (the config has no checkpoint)") end
  local cfg, cfg_path = FT.model_config(hps, opts["model-config"], opts.config)
  hps.model_config = cfg_path
  hps.checkpoint = checkpoint
  hps.vfeat_db = opts["vfeat-db"] or hps.vfeat_db
  hps.sub_txt_db = opts["sub-db"] or hps.sub_txt_db
  hps.train_txt_db = opts["txt-db"] or hps.train_query_txt_db or hps.train_db
  if type(hps.vfeat_db) ~= "string" then die("no video features: give --vfeat-db DIR") end
  -- the splits train_*.py evaluate at every valid_steps: the config's, unless the command line
  -- names others or none (train_tvc.py reads no test_db)
  local val_key = task == "tvc" and "val_db" or "val_query_txt_db"
  local valid_db, test_db = opts["valid-txt-db"], opts["test-txt-db"]
  local from_config = {}
  if opts["no-valid"] then
    if valid_db or test_db then die("--no-valid goes with neither --valid-txt-db nor --test-txt-db") end
  else
    if not valid_db and path_of(hps[val_key]) then valid_db, from_config[val_key] = hps[val_key], true end
    if not test_db and task ~= "tvc" and not opts["no-full-eval"] and path_of(hps.test_query_txt_db) then
      test_db, from_config.test_query_txt_db = hps.test_query_txt_db, true
    end
  end
  for key, db in pairs {[val_key] = valid_db, test_query_txt_db = test_db} do
    if from_config[key] and not (exists(db .. "/data.mdb") or exists(db .. "/cap.db/data.mdb")) then
      die(string.format("the config's %s '%s' is not a text db: give --%s-txt-db DIR, or --no-valid", key, db,
        key == "test_query_txt_db" and "test" or "valid"))
    end
  end
  if valid_db then hps[val_key] = valid_db end
  if test_db then hps.test_query_txt_db = test_db end
  local val_ref = task == "tvc" and valid_db and path_of(hps.val_ref) or nil
  if val_ref and not exists(val_ref) then
    die(string.format("the config's val_ref '%s' (the validation captions' references) does not exist", val_ref))
  end
  -- where and in what precision: --device, --amp, else the config's fp16 (FT.FP16)
  local ok_dev, device = pcall(FT.device, opts.device)
  if not ok_dev then die("--" .. device) end
  local amp = opts.amp
  if amp ~= nil and amp ~= "bf16" and amp ~= "f16" and amp ~= "f32" then
    die("--amp must be bf16, f16 or f32, got '" .. amp .. "'")
  end
  if amp == nil and hps.fp16 == true then
    amp = device ~= "cpu" and "f16" or nil
    if rank == 0 then io.stderr:write("note: ", FT.FP16[device ~= "cpu" and "device" or "cpu"], "\n") end
  end
  if amp == "f32" then amp = nil end
  -- recorded in log/hps.json: --resume refuses another amp (the device may change)
  hps.device, hps.amp = device, amp
  -- at least one update, as pretrain.lua: --steps 0 wrote no checkpoint but said it had
  local steps = int_arg(opts, "steps", 1) or hps.num_train_steps
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
  if test_db and (not valid_db or opts["no-full-eval"]) then
    die("--test-txt-db is evaluated at each validation: it needs a validation db (and not --no-full-eval)")
  end
  local run = FT.setup{tokenizer = tok, caption_eval = caption_eval, task = task, hps = hps, model_config = cfg,
    checkpoint = checkpoint, val_ref = val_ref,
    vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db, txt_db = hps.train_txt_db, out_dir = out,
    valid_txt_db = valid_db, test_txt_db = test_db, full_eval = not opts["no-full-eval"],
    save_every = int_arg(opts, "save-every"),
    on_error = opts["on-error"], dist = opts.dist, device = device, amp = amp,
    progress = not opts.quiet}
  if #run.report.missing > 0 then
    io.stderr:write(string.format("%d parameters not in the checkpoint (new heads keep their initialisation)\n",
      #run.report.missing))
  end
  local start = 0
  if opts.resume then
    if hero.train.Trainer.latest_step(out) then
      -- as the reference's TrainingRestorer: the same settings as the run was started with
      local ok, err = pcall(hero.train.check_resumed_settings, out .. "/log/hps.json", hps,
        {"save_steps", "valid_steps", "n_workers", "pin_mem", "output_dir", "device"})
      if not ok then die(err) end
    end
    start = run.trainer:resume(out) or 0
    if start > 0 then io.stderr:write(string.format("resumed from %s/ckpt/step_%d\n", out, start)) end
  end
  if start == 0 and rank == 0 then
    -- what evaluate.lua reads back (the reference's save_training_meta)
    for _, dir in ipairs {out, out .. "/log"} do
      local made, err = hero.cli.make_dir(dir, "--out")
      if not made then die(err) end
    end
    json.write_file(out .. "/log/hps.json", hps, {indent = 1})
    json.write_file(out .. "/log/model_config.json", cfg, {indent = 1})
  end
  local todo = math.max(0, steps - start)
  local t0 = hero.core._now()
  local records = run.trainer:train(todo)
  local dt = hero.core._now() - t0
  if rank ~= 0 then return end
  local last = records[#records]
  io.stderr:write(string.format("%d updates in %.2f s%s; checkpoint %s/ckpt/step_%d.safetensors\n", todo, dt,
    last and string.format(", last loss %.4f", last.loss) or "", out, run.trainer.global_step))
  local st = run.loader.stats
  io.stderr:write(string.format("  %s: epoch %d, %d batches, %d items, %d skipped\n", hps.task, run.loader.epoch,
    st.batches, st.items, st.skipped))
end

-- with --dist a rank that fails ends the whole job (the others would wait forever)
local ok, err = hero.dist.main(main, opts.dist)
if not ok then die(err) end

