--- Evaluating a fine-tuned HERO model (the reference's eval_vcmr.py, eval_vr.py, eval_videoQA.py,
-- eval_violin.py, inf_tvc.py) and writing the results JSON.
--
--   lua5.4 examples/evaluate.lua --task vcmr --checkpoint runs/tvr/ckpt/step_5000.safetensors \
--       --split val --txt-db txt_db/tvr_val.db --vfeat-db video_db/tv --out results.json
--
-- Options:
--   --task vcmr|vr|videoqa|violin|tvc   (required)
--   --checkpoint FILE    fine-tuned weights: RUN/ckpt/step_N.safetensors (or a .pt); the run's
--                        RUN/log/hps.json and RUN/log/model_config.json give the options (required)
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
--   --out FILE           the results JSON (required); for TVC a name ending in .jsonl gets the
--                        captions as JSON lines, as inf_tvc.py --output writes them
--   --submission FILE    also the file the reference's eval scripts write (results_<ckpt>_all.json),
--                        what leaderboards take: VCMR / VR the submission {video2idx, VCMR, SVMR, VR},
--                        TVQA / VIOLIN {qid: answer}, TVC the captions as JSON lines
--   --save-logits FILE   (TVQA / VIOLIN) each question's logits {qid: [...]}, as --save_logits
--   --threads N
--   --dist               in an MPI job (mpirun -np N ... --dist): every rank evaluates its share of
--                        the queries (VCMR / VR: against the whole corpus, which each rank encodes;
--                        TVC: its share of the videos); rank 0 writes the joined results
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

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function parse_args(argv)
  local known = {task = true, checkpoint = true, config = true, ["model-config"] = true, split = true,
                 ["txt-db"] = true, ["vfeat-db"] = true, ["sub-db"] = true, vocab = true, merges = true, out = true,
                 threads = true, dist = true, ["target-clip"] = true, ["meteor-jar"] = true, ["ptb-jar"] = true,
                 submission = true, ["save-logits"] = true}
  local flags = {dist = true}
  local opts, i = {}, 1
  while i <= #argv do
    local name = argv[i]:match("^%-%-([%w%-]+)$")
    if not name then
      die("unexpected argument '" .. argv[i] .. "' (lua5.4 examples/evaluate.lua --help for the options)")
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

local opts = parse_args(arg)
local rank = 0
if opts.dist then rank = hero.dist.init() end

local function main()
  if not opts.task then die("--task is required (vcmr, vr, videoqa, violin, tvc)") end
  local task = FT.check_task(opts.task)
  if not opts.checkpoint then die("--checkpoint FILE is required") end
  if not opts.out then die("--out FILE is required") end
  if opts.threads then hero.set_num_threads(math.tointeger(tonumber(opts.threads)) or die("--threads N")) end
  local split = opts.split or "val"
  local sd = FT.read_checkpoint(opts.checkpoint)
  -- the run directory: RUN/ckpt/step_N.safetensors -> RUN
  local run_dir = opts.checkpoint:match("^(.*)/ckpt/[^/]*$")
  local hps_path = opts.config or (run_dir and run_dir .. "/log/hps.json")
  if not hps_path or not exists(hps_path) then
    die(string.format("no training config: %s not found; give --config FILE", hps_path or "RUN/log/hps.json"))
  end
  local hps = FT.hparams(task, json.read_file(hps_path), hps_path)
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
  local t0 = hero.core._now()
  local res = FT.evaluate(task, model, hps, {video = video, txt_db = txt, split = split, tokenizer = tok,
    distributed = opts.dist, clips = clips, caption_eval = caption_eval, save_logits = opts["save-logits"] ~= nil})
  if rank ~= 0 then return end
  res.checkpoint = opts.checkpoint
  -- inf_tvc.py's save_jsonl: one {vid_name, clip_id, ts, descs} per line, written whole or not at all
  local function write_captions(path)
    local lines = {}
    for i, r in ipairs(res.results) do
      lines[i] = json.encode(hero.data.writer.ordered(r, {"vid_name", "clip_id", "ts", "descs"}))
    end
    hero.core.fs_write_atomic(path, table.concat(lines, "\n") .. (#lines > 0 and "\n" or ""))
  end
  if opts["save-logits"] then
    json.write_file(opts["save-logits"], res.logits)
    res.logits = nil
  end
  if task == "tvc" and opts.out:match("%.jsonl$") then
    write_captions(opts.out)
  else
    json.write_file(opts.out, res, {indent = 1})
  end
  if opts.submission then
    if task == "tvc" then write_captions(opts.submission)
    elseif task == "vcmr" or task == "vr" then json.write_file(opts.submission, res.submission)
    else json.write_file(opts.submission, res.results) end
  end
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
    #summary > 0 and table.concat(summary, ", ") or "predictions only", hero.core._now() - t0, opts.out))
end

-- with --dist a rank that fails ends the whole job (the others would wait forever)
local ok, err = hero.dist.main(main, opts.dist)
if not ok then die(err) end

