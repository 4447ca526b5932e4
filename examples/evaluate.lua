--- Evaluating a fine-tuned HERO model (the reference's eval_vcmr.py, eval_vr.py, eval_videoQA.py,
-- eval_violin.py, inf_tvc.py) and writing the results JSON.
--
--   lua5.4 examples/evaluate.lua --task vcmr --checkpoint runs/tvr/ckpt/step_5000.safetensors \
--       --split val --txt-db txt_db/tvr_val.db --vfeat-db video_db/tv --out results.json
--   lua5.4 examples/evaluate.lua --task vcmr --output-dir runs/tvr --checkpoint 5000 --split val \
--       --txt-db txt_db/tvr_val.db      (writes runs/tvr/results_val/results_5000_all.json)
--
-- Options:
--   --task vcmr|vr|videoqa|violin|tvc   (required); or the reference's task name (tvr, how2r,
--                        didemo_video_only, msrvtt_video_sub, tvqa, ...), which replaces the run's
--   --checkpoint FILE|STEP  fine-tuned weights: RUN/ckpt/step_N.safetensors (or a .pt); the run's
--                        RUN/log/hps.json and RUN/log/model_config.json give the options (required).
--                        With --output-dir, a name that is not a file is a step, as the reference's
--                        eval_*.py --checkpoint: DIR/ckpt/step_STEP.safetensors, else (a run the
--                        reference trained) DIR/ckpt/model_step_STEP.pt
--   --output-dir DIR     the training run's directory (the reference's --output_dir) [the
--                        checkpoint's RUN, when it lies in RUN/ckpt/]
--   --config FILE        training config to use instead of RUN/log/hps.json
--   --model-config FILE  model config instead of RUN/log/model_config.json
--   --split NAME         val, test, ... (names the corpus split of vid2dur_idx.json and the logs) [val]
--   --txt-db DIR         the split's query / caption db [config's <split>_query_txt_db / val_db]
--   --vfeat-db DIR       video features [the run's]     --sub-db DIR  subtitle db [the run's]
--                        (video-only tasks, didemo_video_only / msrvtt_video_only, read no subtitles)
--   --vocab FILE --merges FILE   (TVC) RoBERTa vocab.json / merges.txt to write the captions as text
--   --target-clip FILE   (TVC) caption these clips instead of a db, as inf_tvc.py --target_clip: JSON
--                        lines {vid_name, clip_id, ts, descs (optional references: then scored)}
--   --meteor-jar FILE    (TVC) METEOR 1.5's jar (needs java): METEOR among the metrics
--   --ptb-jar FILE       (TVC) the Stanford PTBTokenizer's jar: the reference's tokenisation for scoring
--   --out FILE           the results JSON; for TVC a name ending in .jsonl gets the captions as JSON
--                        lines, as inf_tvc.py --output writes them. Without it (not for TVC, whose
--                        --output the reference requires), the run directory gets what the
--                        reference's eval_*.py write there: RUN/results_<split>/results_<STEP>_all.json,
--                        the --submission file below (results_<split>_w_logit/ with --save-logits)
--   --submission FILE    also the file the reference's eval scripts write (results_<ckpt>_all.json),
--                        what leaderboards take: VCMR / VR the submission {video2idx, VCMR, SVMR, VR},
--                        TVQA / VIOLIN {qid: answer}, TVC the captions as JSON lines
--   --full-eval-tasks VCMR,SVMR,VR  (VCMR) the rankings to compute, as eval_vcmr.py's --full_eval_tasks,
--                        which does not read the run's [VCMR,SVMR,VR]
--   --save-logits FILE   (TVQA / VIOLIN) each question's logits {qid: [...]}, as --save_logits
--   --threads N
--   --device D           where the model computes: cpu, cuda:N, or cuda (with --dist: the GPU of the
--                        rank's index on its node) [cpu]; the batches are moved there, the scores and
--                        rankings come back to the CPU
--   --amp bf16|f16|f32   every forward pass under hero.amp.autocast (f32: none), the scores read in
--                        f32 [f32, as eval_*.py without --fp16, whatever the run trained in]; the
--                        reference's --fp16 is --amp f16
--   --dist               in an MPI job (mpirun -np N ... --dist): every rank evaluates its share of
--                        the queries (VCMR / VR: against the whole corpus, which each rank encodes;
--                        TVC: its share of the videos); rank 0 writes the joined results
-- The reference's spellings of these options are read too, those of the evaluation script of --task
-- (eval_vcmr.py, eval_vr.py, eval_videoQA.py, eval_violin.py, inf_tvc.py): --output_dir, --model_dir,
-- --ckpt_step, --query_txt_db, --sub_txt_db, --vfeat_db, --full_eval_tasks VCMR SVMR VR, --output,
-- --target_clip, --save_logits (into RUN/results_<split>_w_logit/logits_<STEP>_all.json), inf_tvc.py's
-- --max_gen_step (over the run's); --batch_size, --*_eval_video_batch_size, --n_workers, --pin_mem,
-- --no_pin_mem and --no_fp16 are read for nothing (and said so)
-- The JSON holds the reference's structure: VCMR / VR: "submission" ({video2idx, VCMR, SVMR, VR}
-- lists of {desc_id, desc, predictions = [[video_idx, st, ed, score], ...]}), "metrics",
-- "submission_nms", "metrics_nms" and "val_log"; VideoQA / VIOLIN: "results" ({qid: answer}),
-- "metrics" ({accuracy, loss}) and "val_log"; TVC: "results" ([{vid_name, clip_id, ts,
-- descs = [{desc}]}]) and "metrics" (Bleu_1..4, ROUGE_L, CIDEr, x100).
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local hero = require "hero"
local json = hero.json
local FT = require "hero.train.finetune"

local function die(msg)
  io.stderr:write("evaluate: ", tostring(msg):gsub("^[^:]*:%d+: ", ""), "\n")
  os.exit(2)
end

-- the directory a results file goes into, made when missing (flag: the option that named the file)
local function make_parent(path, flag)
  local dir = path:match("^(.*)/[^/]*$")
  if not dir or dir == "" then return end
  local made, err = hero.cli.make_dir(dir, flag)
  if not made then die(err) end
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function parse_args(argv)
  local opts, err = hero.cli.parse_options(argv, {flags = hero.cli.set {"dist", "fp16"},
    values = hero.cli.set {"task", "checkpoint", "config", "model-config", "split", "txt-db", "vfeat-db", "sub-db",
                           "vocab", "merges", "out", "threads", "target-clip", "meteor-jar", "ptb-jar", "submission",
                           "save-logits", "output-dir", "full-eval-tasks", "device", "amp"}})
  if not opts then
    die(err .. (err:match("^unexpected") and " (lua5.4 examples/evaluate.lua --help for the options)" or ""))
  end
  return opts
end

-- The reference's evaluation script for the task: its options, spelled as it spells them, are read
-- as hero's (--output_dir DIR, --query_txt_db, --full_eval_tasks VCMR SVMR, inf_tvc.py's --model_dir
-- and --ckpt_step, ...); the options hero spells the same (--task, --checkpoint, --split, --fp16)
-- stay ours.
local EVAL_SCRIPT = {vcmr = "eval_vcmr", vr = "eval_vr", videoqa = "eval_videoQA", violin = "eval_violin",
                     tvc = "inf_tvc"}
local SAME = { -- hero's option, the reference's
  {"txt-db", "query_txt_db"}, {"sub-db", "sub_txt_db"}, {"vfeat-db", "vfeat_db"}, {"output-dir", "output_dir"},
  {"output-dir", "model_dir"}, {"checkpoint", "ckpt_step"}, {"out", "output"}, {"target-clip", "target_clip"},
  {"full-eval-tasks", "full_eval_tasks"},
}
-- what the reference reads for its data loaders and batching alone: nothing to do in hero, where
-- the run's batch sizes batch the queries and videos (the results are the same)
local NO_EFFECT = {batch_size = true, vcmr_eval_video_batch_size = true, vr_eval_video_batch_size = true,
                   n_workers = true, pin_mem = true, no_pin_mem = true, no_fp16 = true}

local ref_values, ref_given, opts
do
  local name, seen
  for i, a in ipairs(arg) do
    if a == "--task" then seen, name = true, arg[i + 1] end
  end
  if not seen then die("--task is required (vcmr, vr, videoqa, violin, tvc)") end
  if name == nil or name:match("^%-%-") then die("--task needs a value") end
  local ok, family = pcall(FT.task_family, name)
  if not ok then die(family) end
  local ok2, values, rest, given = pcall(hero.cli.parse_reference, arg, EVAL_SCRIPT[family],
    {task = true, checkpoint = true, split = true, fp16 = true})
  if not ok2 then die(values) end
  ref_values, ref_given = values, given
  opts = parse_args(rest)
  for _, pair in ipairs(SAME) do
    local v = ref_values[pair[2]]
    if v ~= nil then
      if opts[pair[1]] ~= nil then die(string.format("--%s and --%s say the same: give one", pair[1], pair[2])) end
      opts[pair[1]] = type(v) == "table" and table.concat(v, ",") or tostring(v)
    end
  end
  if ref_values.save_logits and opts["save-logits"] then
    die("--save-logits FILE and --save_logits say the same: give one")
  end
end
local rank = 0
if opts.dist then rank = hero.dist.init() end

-- The weights of --checkpoint: a file, or with the run directory a step (eval_*.py's
-- f'{output_dir}/ckpt/model_step_{checkpoint}.pt', hero's RUN/ckpt/step_N.safetensors); and the
-- name the results file takes from it (results_<name>_all.json).
local function checkpoint_file(ck, run_dir)
  if exists(ck) then
    local base = ck:match("[^/]*$")
    return ck, base:match("^step_(.+)%.safetensors$") or base:match("^model_step_(.+)%.pt$")
      or base:gsub("%.[^.]*$", "")
  end
  if run_dir and not ck:find("/", 1, true) then
    local ckpt = run_dir .. "/ckpt/"
    for _, p in ipairs {ckpt .. "step_" .. ck .. ".safetensors", ckpt .. "model_step_" .. ck .. ".pt"} do
      if exists(p) then return p, ck end
    end
    die(string.format("no checkpoint %s in %s/ckpt (step_%s.safetensors or model_step_%s.pt)", ck, run_dir, ck, ck))
  end
  if not run_dir and ck:match("^%d+[%w_]*$") then
    die(string.format("checkpoint '%s' does not exist (a step is looked up in --output-dir DIR's ckpt/)", ck))
  end
  return ck, nil -- FT.read_checkpoint names the missing file
end

local function main()
  if not opts.task then die("--task is required (vcmr, vr, videoqa, violin, tvc)") end
  local task, ref_task = FT.task_family(opts.task)
  if not opts.checkpoint then die("--checkpoint FILE is required") end
  if opts.threads then
    local ok, err = hero.cli.set_threads(opts.threads)
    if not ok then die(err) end
  end
  local ok_dev, device = pcall(FT.device, opts.device)
  if not ok_dev then die("--" .. device) end
  -- eval_*.py's --fp16 (apex O2) is hero's f16 autocast
  if opts.fp16 and opts.amp and opts.amp ~= "f16" then die("--fp16 is --amp f16: give one of them") end
  local amp = opts.amp or (opts.fp16 and "f16") or nil
  if amp ~= nil and amp ~= "bf16" and amp ~= "f16" and amp ~= "f32" then
    die("--amp must be bf16, f16 or f32, got '" .. amp .. "'")
  end
  if amp == "f32" then amp = nil end
  local split = opts.split or "val"
  -- the run directory: --output-dir, else RUN of RUN/ckpt/step_N.safetensors
  local run_dir = opts["output-dir"] or opts.checkpoint:match("^(.*)/ckpt/[^/]*$")
  local ck_path, ck_name = checkpoint_file(opts.checkpoint, opts["output-dir"])
  local sd = FT.read_checkpoint(ck_path)
  local hps_path = opts.config or (run_dir and run_dir .. "/log/hps.json")
  if not hps_path or not exists(hps_path) then
    die(string.format("no training config: %s not found; give --config FILE", hps_path or "RUN/log/hps.json"))
  end
  local raw = json.read_file(hps_path)
  if ref_task then raw.task = ref_task end -- eval_*.py's --task, not the run's, picks the datasets
  local hps = FT.hparams(task, raw, hps_path)
  if opts["full-eval-tasks"] then
    if task ~= "vcmr" then die("--full-eval-tasks is for --task vcmr") end
    local list = {}
    for t in opts["full-eval-tasks"]:gmatch("[^,]+") do
      if t ~= "VCMR" and t ~= "SVMR" and t ~= "VR" then
        die("--full-eval-tasks: '" .. t .. "' is not one of VCMR, SVMR, VR")
      end
      list[#list + 1] = t
    end
    if #list == 0 then die("--full-eval-tasks names no task") end
    hps.full_eval_tasks = list
  elseif task == "vcmr" then
    hps.full_eval_tasks = {"VCMR", "SVMR", "VR"} -- eval_vcmr.py's own default, whatever the run's
  end
  -- without --out, the reference's place in the run directory (eval_*.py's result_dir)
  local default_out
  local logits_in_run = ref_values.save_logits -- eval_*.py's --save_logits: beside the results
  if logits_in_run then
    if task ~= "videoqa" and task ~= "violin" then die("--save_logits is for --task videoqa or violin") end
    if not (run_dir and ck_name) then
      die("--save_logits writes into the run directory: give --output_dir DIR --checkpoint STEP "
        .. "(or --save-logits FILE)")
    end
    -- the reference pickles logits_<STEP>_all.pkl there; hero writes the same dictionary as JSON
    opts["save-logits"] = string.format("%s/results_%s_w_logit/logits_%s_all.json", run_dir, split, ck_name)
  end
  if not opts.out then
    if task == "tvc" then die("--out FILE is required (inf_tvc.py's --output)") end
    if not (run_dir and ck_name) then
      die("--out FILE is required (or a checkpoint of a run directory: --output-dir DIR --checkpoint STEP)")
    end
    default_out = string.format("%s/results_%s%s/results_%s_all.json", run_dir, split,
      opts["save-logits"] and "_w_logit" or "", ck_name)
  end
  do -- each output a file of its own: one named twice held only what was written last
    local outputs = {{default_out and "the results file" or "--out", default_out or opts.out},
                     {"--submission", opts.submission}, {"--save-logits", opts["save-logits"]}}
    for i = 1, #outputs do
      for j = i + 1, #outputs do
        local a, b = outputs[i], outputs[j]
        if a[2] and b[2] and hero.cli.same_path(a[2], b[2]) then
          die(string.format("%s and %s both name %s: give each output a file of its own", a[1], b[1], b[2]))
        end
      end
    end
  end
  if ref_values.max_gen_step then hps.max_gen_step = ref_values.max_gen_step end -- inf_tvc.py's, over the run's
  local unused = {}
  for _, name in ipairs(ref_given) do if NO_EFFECT[name] then unused[#unused + 1] = "--" .. name end end
  if #unused > 0 and rank == 0 then
    io.stderr:write("read for nothing (the run's batch sizes batch the queries; the data is read on this thread): ",
      table.concat(unused, ", "), "\n")
  end
  local mc = opts["model-config"] or (run_dir and exists(run_dir .. "/log/model_config.json")
    and run_dir .. "/log/model_config.json") or nil
  local cfg = FT.model_config(hps, mc, hps_path)
  local clips = opts["target-clip"]
  if clips and task ~= "tvc" then die("--target-clip is for --task tvc") end
  if clips and not exists(clips) then die("--target-clip: '" .. clips .. "' does not exist") end
  if (opts["meteor-jar"] or opts["ptb-jar"]) and task ~= "tvc" then
    die("--meteor-jar and --ptb-jar are for --task tvc")
  end
  local jars_ok, caption_eval = pcall(hero.eval.caption.java_options, opts["meteor-jar"], opts["ptb-jar"])
  if not jars_ok then die(caption_eval) end
  if opts["save-logits"] and task ~= "videoqa" and task ~= "violin" then
    die("--save-logits is for --task videoqa or violin")
  end
  local txt = opts["txt-db"] or hps[split .. "_query_txt_db"] or hps[split .. "_db"]
  if type(txt) ~= "string" and not clips then die("no text db for split '" .. split .. "': give --txt-db DIR") end
  local vfeat = opts["vfeat-db"] or hps.vfeat_db
  if type(vfeat) ~= "string" then die("no video features: give --vfeat-db DIR") end
  local video = FT.video_dataset(hps, vfeat, opts["sub-db"] or hps.sub_txt_db, txt)
  local model, report = FT.build_model(task, cfg, hps, sd)
  if #report.missing > 0 then
    die(string.format("the checkpoint lacks %d parameters of the %s model (first: %s); is it a fine-tuned %s "
      .. "checkpoint?", #report.missing, task, report.missing[1], task))
  end
  local tok
  if opts.vocab or opts.merges then
    if not (opts.vocab and opts.merges) then die("--vocab and --merges go together") end
    tok = hero.text.Tokenizer.from_files(opts.vocab, opts.merges)
  end
  if device ~= "cpu" then model:to(device) end
  local t0 = hero.core._now()
  local res = FT.evaluate(task, model, hps, {video = video, txt_db = txt, split = split, tokenizer = tok,
    distributed = opts.dist, clips = clips, caption_eval = caption_eval, save_logits = opts["save-logits"] ~= nil,
    amp = amp})
  if rank ~= 0 then return end
  res.checkpoint = ck_path
  -- Results files as the reference's json.dump writes them: a metric without a sample (by-type
  -- recall of a query type the split lacks, 0 / 0) is NaN, which Python's json reads back
  local as_python = {allow_nan = true}
  -- inf_tvc.py's save_jsonl: one {vid_name, clip_id, ts, descs} per line, written whole or not at all
  local function write_captions(path)
    local lines = {}
    for i, r in ipairs(res.results) do
      lines[i] = json.encode(hero.data.writer.ordered(r, {"vid_name", "clip_id", "ts", "descs"}), as_python)
    end
    hero.core.fs_write_atomic(path, table.concat(lines, "\n") .. (#lines > 0 and "\n" or ""))
  end
  if opts["save-logits"] then
    if logits_in_run then make_parent(opts["save-logits"], "--save_logits") end
    json.write_file(opts["save-logits"], res.logits, as_python)
    res.logits = nil
  end
  local function write_submission(path)
    if task == "tvc" then write_captions(path)
    elseif task == "vcmr" or task == "vr" then json.write_file(path, res.submission, as_python)
    else json.write_file(path, res.results, as_python) end
  end
  if default_out then
    make_parent(default_out, "--output-dir")
    write_submission(default_out)
  elseif task == "tvc" and opts.out:match("%.jsonl$") then
    write_captions(opts.out)
  else
    json.write_file(opts.out, res, {indent = 1, allow_nan = true})
  end
  if opts.submission then write_submission(opts.submission) end
  local summary = {}
  local m = res.metrics
  if type(m) == "table" then
    if m.VCMR then summary[#summary + 1] = string.format("VCMR R@1 IoU0.7 %.2f", m.VCMR["0.7-r1"]) end
    if m.VR then summary[#summary + 1] = string.format("VR R@1 %.2f", m.VR.r1) end
    if m.accuracy then summary[#summary + 1] = string.format("accuracy %.4f", m.accuracy) end
    if m.CIDEr then summary[#summary + 1] = string.format("CIDEr %.2f BLEU-4 %.2f", m.CIDEr, m.Bleu_4) end
    if m.METEOR then summary[#summary + 1] = string.format("METEOR %.2f", m.METEOR) end
  end
  io.stderr:write(string.format("%s %s: %s in %.2f s -> %s\n", res.task, split,
    #summary > 0 and table.concat(summary, ", ") or "predictions only", hero.core._now() - t0,
    default_out or opts.out))
end

-- with --dist a rank that fails ends the whole job (the others would wait forever)
local ok, err = hero.dist.main(main, opts.dist)
if not ok then die(err) end

