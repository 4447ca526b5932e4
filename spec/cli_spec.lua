--- hero.cli and the `--help` of the example scripts.
local cli = require "hero.cli"
local helper = require "spec_helper"

local lua_cmd = string.format("LUA_PATH='%s' LUA_CPATH='%s' lua5.4", package.path, package.cpath)

-- output and exit status of a lua5.4 command line run from the checkout
local function run(args)
  local p = assert(io.popen(lua_cmd .. " " .. args .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return out:gsub("rc=%d+%s*$", ""), rc
end

local write = helper.write_file

describe("decimal numbers of the command line", function()
  it("takes decimal integers and finite decimal numbers only", function()
    assert.equal(12, cli.decimal_integer("12"))
    assert.equal(-3, cli.decimal_integer(" -3 "))
    for _, w in ipairs {"0x1", "1.5", "1e3", "", "abc"} do assert.is_nil(cli.decimal_integer(w), w) end
    assert.equal(3e-5, cli.decimal_number("3e-5"))
    assert.equal(0.5, cli.decimal_number("0.5"))
    for _, w in ipairs {"0x10", "inf", "nan", "1e999", "-1e999", "", "x"} do assert.is_nil(cli.decimal_number(w), w) end
  end)
end)

describe("hero.cli", function()
  it("reads the comment block a script starts with, without its markers or a #! line", function()
    local path = os.tmpname()
    write(path, "#!/usr/bin/env lua5.4\n--- Does things.\n--\n--   lua5.4 x.lua --n 3\n-- Options: --n N\n"
      .. "local x = 1 -- not usage\n-- nor this\n")
    assert.equal("Does things.\n\n  lua5.4 x.lua --n 3\nOptions: --n N", cli.leading_comment(path))
    write(path, "local x = 1\n")
    assert.equal("", cli.leading_comment(path))
    os.remove(path)
    local none, err = cli.leading_comment(path)
    assert.is_nil(none)
    assert.truthy(err:find(path, 1, true))
  end)

  it("does nothing without --help or -h", function()
    assert.is_nil(cli.help_if_asked({"--steps", "3", "--help-me"}, "@/nonexistent.lua"))
  end)

  it("prints a script's usage on --help or -h and exits with 0, before reading other options", function()
    local path = os.tmpname() .. ".lua"
    write(path, "--- Usage of the probe.\n--   --x N\n"
      .. "require('hero.cli').help_if_asked(arg, debug.getinfo(1, 'S').source)\nerror('not reached')\n")
    for _, flag in ipairs {"--help", "-h", "--bogus 1 --help"} do
      local out, rc = run(path .. " " .. flag)
      assert.equal(0, rc, out)
      assert.equal("Usage of the probe.\n  --x N\n", out)
    end
    os.remove(path)
  end)

  it("reads the reference's options as argparse does: types, nargs '+', flags, --name=value, the last wins",
    function()
    local values, rest, given = cli.parse_reference({"--learning_rate", "1e-4", "--out", "run", "--betas", "0.9",
      "0.999", "--use_all_neg", "--nms_thd=-1", "--hard_negtiave_start_step", "-1", "--vfeat_interval", " 2 ",
      "--checkpoint", "c.pt", "--train_batch_size", "+8", "--seed", "1", "--seed", "2", "--full_eval_tasks", "VR",
      "SVMR", "--quiet"}, "train_vcmr", {checkpoint = true})
    assert.same({learning_rate = 1e-4, betas = {0.9, 0.999}, use_all_neg = true, nms_thd = -1.0,
      hard_negtiave_start_step = {-1}, vfeat_interval = 2.0, train_batch_size = 8, seed = 2,
      full_eval_tasks = {"VR", "SVMR"}}, values)
    -- argparse's float: 2 is 2.0 (the video db's directory is resnet_slowfast_2.0, not _2)
    assert.equal("float", math.type(values.vfeat_interval))
    assert.equal("integer", math.type(values.train_batch_size))
    -- what the script reads itself (kept) and what the reference's script does not have stay, in order
    assert.same({"--out", "run", "--checkpoint", "c.pt", "--quiet"}, rest)
    assert.same({"learning_rate", "betas", "use_all_neg", "nms_thd", "hard_negtiave_start_step", "vfeat_interval",
      "train_batch_size", "seed", "full_eval_tasks"}, given)
    -- each script has its own options: train_tvc.py's lsr, not train_vcmr.py's
    local v2, r2 = cli.parse_reference({"--lsr", "0.2", "--max_gen_step", "5"}, "train_tvc")
    assert.same({lsr = 0.2, max_gen_step = 5}, v2)
    assert.same({}, r2)
    local v3, r3 = cli.parse_reference({"--lsr", "0.2"}, "train_vcmr")
    assert.same({}, v3)
    assert.same({"--lsr", "0.2"}, r3)
    -- inf and nan as Python's float() reads them
    assert.equal(math.huge, cli.parse_reference({"--margin", "Infinity"}, "pretrain").margin)
  end)

  it("names the option of a bad value, a missing value, a bad choice or a flag given a value", function()
    local function fails(argv, script, ...)
      helper.assert_error_contains(function() cli.parse_reference(argv, script) end, ...)
    end
    fails({"--train_batch_size", "3.5"}, "train_vcmr", "--train_batch_size: invalid int value: '3.5'")
    fails({"--learning_rate", "0x10"}, "train_vcmr", "--learning_rate: invalid float value: '0x10'")
    fails({"--learning_rate"}, "train_vcmr", "--learning_rate needs a value")
    fails({"--betas", "--seed", "1"}, "train_vcmr", "--betas needs one or more values")
    fails({"--optim", "sgd"}, "train_vcmr", "--optim: invalid choice 'sgd' (train_vcmr.py takes adam, adamax, adamw)")
    fails({"--full_eval_tasks", "VR", "XR"}, "train_vr", "--full_eval_tasks: invalid choice 'XR'")
    fails({"--task", "tvqa"}, "train_vcmr", "invalid choice 'tvqa'", "tvr, didemo_video_sub, how2r, didemo_video_only")
    fails({"--fp16=1"}, "train_tvc", "--fp16 is a flag: it takes no value (got '1')")
    helper.assert_error_contains(function() cli.parse_reference({}, "train_qa") end,
      "unknown script 'train_qa' (eval_vcmr, eval_videoQA, eval_violin, eval_vr, inf_tvc, pretrain, train_tvc, "
        .. "train_vcmr, train_videoQA, train_violin, train_vr)")
    -- the evaluation scripts' own parsers: eval_violin.py has no --task; inf_tvc.py's --ckpt_step is an int
    local v, rest = cli.parse_reference({"--task", "violin", "--save_logits"}, "eval_violin")
    assert.same({save_logits = true}, v)
    assert.same({"--task", "violin"}, rest)
    fails({"--ckpt_step", "5.5"}, "inf_tvc", "--ckpt_step: invalid int value: '5.5'")
    fails({"--split", "train"}, "eval_vr", "--split: invalid choice 'train' (eval_vr.py takes val, test)")
  end)

  it("puts the command line's values over the config's keys, as parse_with_config, and drops config", function()
    local merged = cli.with_overrides({learning_rate = 1e-4, task = "tvr", extra = 1, config = "x.json"},
      {learning_rate = 5e-5, use_all_neg = true, config = "y.json"})
    assert.same({learning_rate = 5e-5, task = "tvr", extra = 1, use_all_neg = true}, merged)
  end)

  for _, script in ipairs {"pretrain", "finetune", "evaluate", "prepro", "demo", "parity"} do
    it("examples/" .. script .. ".lua --help prints its options", function()
      local out, rc = run("examples/" .. script .. ".lua --help")
      assert.equal(0, rc, out)
      assert.truthy(out:find("examples/" .. script .. ".lua", 1, true), out)
      assert.is_nil(out:find("^%-%-"), out) -- no comment markers
    end)
  end

  it("examples/parity.lua names a missing fixture directory, without a traceback", function()
    local out, rc = run("examples/parity.lua /nonexistent/fixtures")
    assert.equal(2, rc, out)
    assert.truthy(out:find("parity: ", 1, true), out)
    assert.truthy(out:find("/nonexistent/fixtures/config.json", 1, true), out)
    assert.is_nil(out:find("stack traceback", 1, true), out)
  end)

  it("examples/demo.lua and prepro.lua name an unusable directory in the command line's words", function()
    local out, rc = run("examples/demo.lua --out /proc/hero-demo-nope --tiny --quiet")
    assert.equal(2, rc, out)
    assert.truthy(out:find("demo: cannot use --out /proc/hero-demo-nope: ", 1, true), out)
    assert.is_nil(out:find("stack traceback", 1, true), out)
    local dir = os.tmpname()
    os.remove(dir)
    out, rc = run("examples/prepro.lua --resnet /nonexistent/r --slowfast /nonexistent/s --out " .. dir)
    os.execute("rm -rf '" .. dir .. "'")
    assert.equal(1, rc, out)
    assert.truthy(out:find("prepro: fs_listdir: cannot list the directory '/nonexistent/r'", 1, true), out)
    assert.is_nil(out:find("%.lua:%d+:"), out) -- no position inside the library
  end)
end)

-- ------------------------------------------------------------------ the example programs' command lines

local json = require("hero").json

-- a new empty directory under /tmp
local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "'"))
  return d
end

-- a command's output and exit status as one value, for refused()
local function R(args)
  local out, rc = run(args)
  return {out = out, rc = rc}
end

-- the R() of a command that must end with a usage error: exit status 2, `...` (plain strings) in
-- its message, and neither a traceback nor a position inside the library
local function refused(res, ...)
  local out = res.out
  assert.equal(2, res.rc, out)
  for _, s in ipairs {...} do assert.truthy(out:find(s, 1, true), out) end
  assert.is_nil(out:find("stack traceback", 1, true), out)
  assert.is_nil(out:find("%.lua:%d+:"), out)
end

local function exists(path) return require("hero.core").fs_kind(path) ~= nil end

local FIX = "spec/fixtures/hero-smoke"
local VDB = "spec/fixtures/data/video_db/tv/resnet_slowfast_1.5"
local SDB = "spec/fixtures/data/txt_db/tv_subtitles.db"
local TOK = "spec/fixtures/tokenizer/"
local FEAT = "spec/fixtures/data/features/"

describe("hero.cli helpers of the example programs", function()
  it("parse_options: a missing value is named, not taken from the next option", function()
    local spec = {flags = cli.set {"quiet"}, values = cli.set {"out", "steps"}}
    assert.same({out = "-x", steps = "-1", quiet = true}, cli.parse_options({"--out", "-x", "--steps", "-1", "--quiet"},
      spec))
    local function says(argv, msg)
      local opts, err = cli.parse_options(argv, spec)
      assert.is_nil(opts)
      assert.equal(msg, err)
    end
    says({"--out", "--quiet"}, "--out needs a value")
    says({"--steps"}, "--steps needs a value")
    says({"--bogus", "1"}, "unknown option --bogus")
    says({"run"}, "unexpected argument 'run'")
  end)

  it("make_dir names the option and the reason; same_path sees one file written two ways", function()
    local ok, err = cli.make_dir("/proc/hero-nope/x", "--out")
    assert.is_nil(ok)
    assert.truthy(err:find("^cannot create %-%-out /proc/hero%-nope/x: "), err)
    local d = tmpdir()
    assert.is_true(cli.make_dir(d .. "/-a/b", "--out"))
    assert.equal("directory", require("hero.core").fs_kind(d .. "/-a/b"))
    os.execute("rm -rf '" .. d .. "'")
    assert.is_true(cli.same_path("r/same.json", "./r/x/../same.json"))
    assert.is_false(cli.same_path("r/same.json", "r/other.json"))
    assert.equal("lmdb_open: no such LMDB directory", cli.error_text(
      "/x/lua/hero/data/video_db.lua:56: lmdb_open: no such LMDB directory"))
    assert.equal("cfg.lua:3: syntax error", cli.error_text("cfg.lua:3: syntax error"))
  end)

  it("parse_reference takes --betas as a pair only", function()
    helper.assert_error_contains(function() cli.parse_reference({"--betas", "0.9"}, "pretrain") end,
      "--betas takes two values, got 1")
    assert.same({0.9, 0.98}, cli.parse_reference({"--betas", "0.9", "0.98"}, "train_vcmr").betas)
  end)

  it("a training config's betas must be a pair, and a string is shown as one", function()
    local PC = require "hero.train.pretrain_config"
    helper.assert_error_contains(function() PC.check_types({betas = {0.9}}, "c.json") end,
      "c.json: betas must be a pair [beta1, beta2], got 1 value")
    helper.assert_error_contains(function() PC.check_types({valid_steps = "10"}, "c.json") end,
      'valid_steps must be an integer >= 0, got a string ("10")')
    local c = helper.finetune_config("vcmr")
    c.num_train_steps = "10"
    helper.assert_error_contains(function() require("hero.train.finetune").hparams("vcmr", c, "t.json") end,
      'num_train_steps must be a positive integer, got a string ("10")')
  end)
end)

describe("examples/pretrain.lua refuses bad input before any work", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  local function pretrain(args) return R("examples/pretrain.lua --fixture " .. FIX .. " --quiet " .. args) end

  it("names a missing value, an uncreatable --out, and takes an --out starting with '-'", function()
    refused(pretrain("--steps 1 --out --quiet"), "pretrain: --out needs a value")
    refused(pretrain("--steps 1 --out /proc/hero-nope"), "pretrain: cannot create --out /proc/hero-nope: ")
    local out, rc = run("examples/pretrain.lua --fixture " .. FIX .. " --quiet --steps 1 --out " .. dir .. "/-run")
    assert.equal(0, rc, out)
    assert.is_true(exists(dir .. "/-run/hps.json"))
  end)

  it("--threads beyond the limit, hexadecimal --ratios, a --config directory", function()
    refused(pretrain("--steps 1 --out " .. dir .. "/r --threads 100000"), "--threads: at most 256 threads")
    refused(pretrain("--steps 1 --out " .. dir .. "/r --ratios 0x1,1,1,1"), "--ratios must be positive integers, "
      .. "got '0x1'")
    refused(pretrain("--steps 1 --out " .. dir .. "/r --config spec"), "cannot read --config spec: it is a directory")
    assert.is_false(exists(dir .. "/r"))
  end)

  it("--resume from a checkpoint that cannot be read back", function()
    local res = pretrain("--steps 1 --total 3 --out " .. dir .. "/a")
    assert.equal(0, res.rc, res.out)
    local function broken(name, fn)
      local d = dir .. "/" .. name
      assert(os.execute(string.format("cp -r '%s/a' '%s'", dir, d)))
      fn(d .. "/ckpt")
      return pretrain("--steps 2 --total 3 --resume --out " .. d)
    end
    refused(broken("latest", function(c) helper.write_file(c .. "/latest", "garbage\n") end),
      "pretrain: --resume: ", "ckpt/latest' does not hold a step number")
    for _, f in ipairs {"step_1.safetensors", "train_state_1.safetensors"} do
      refused(broken(f:gsub("%.", "_"), function(c)
        local full = c .. "/" .. f
        local h = assert(io.open(full, "rb"))
        local head = h:read(100)
        h:close()
        helper.write_file(full, head)
      end), "pretrain: --resume: ", f)
    end
  end)

  it("database errors without library positions; id files none of whose ids are in the databases", function()
    local d = dir
    json.write_file(d .. "/model.json", {f_config = helper.tiny_section(),
      c_config = helper.tiny_section {max_position_embeddings = 32},
      q_config = helper.tiny_section {num_hidden_layers = 0}})
    json.write_file(d .. "/ids.json", {"nope1", "nope2"})
    local base = "examples/pretrain.lua --quiet --steps 1 --batch-size 2 --config " .. d .. "/model.json "
    refused(R(base .. "--vfeat-db /nonexistent --sub-db " .. SDB .. " --out " .. d .. "/r"),
      "pretrain: lmdb_open: no such LMDB directory: '/nonexistent'")
    refused(R(base .. "--vfeat-db " .. VDB .. " --sub-db /nonexistent --out " .. d .. "/r"),
      "pretrain: lmdb_open: ", "'/nonexistent'")
    refused(R(base .. "--vfeat-db " .. VDB .. " --sub-db " .. SDB .. " --train-ids " .. d .. "/ids.json --out " .. d
      .. "/r"), "--train-ids " .. d .. "/ids.json: none of its 2 video ids is in both the video db and the subtitle db")
    refused(R(base .. "--vfeat-db " .. VDB .. " --sub-db " .. SDB .. " --workers 100000 --out " .. d .. "/r"),
      "--workers must be at most 256, got 100000")
    assert.is_false(exists(d .. "/r"))
  end)
end)

describe("examples/finetune.lua and evaluate.lua", function()
  local dir, ft
  before_each(function()
    dir = tmpdir()
    ft = helper.tiny_finetune_dir(4)
    local c = helper.finetune_config("vcmr")
    c.model_config = ft .. "/model.json"
    json.write_file(ft .. "/train-vcmr.json", c)
  end)
  after_each(function() os.execute("rm -rf '" .. dir .. "' '" .. ft .. "'") end)

  local function finetune(args)
    return R("examples/finetune.lua --task vcmr --config " .. ft .. "/train-vcmr.json --checkpoint " .. ft
      .. "/init.safetensors --txt-db spec/fixtures/data/txt_db/tvr_val.db --no-valid --quiet " .. args)
  end

  it("finetune: a missing value, --steps 0, --threads beyond the limit, an uncreatable --out", function()
    refused(finetune("--steps 1 --out --quiet"), "finetune: --out needs a value")
    refused(finetune("--steps 0 --out " .. dir .. "/r"), "finetune: --steps must be a positive integer, got '0'")
    refused(finetune("--steps 1 --threads 100000 --out " .. dir .. "/r"), "--threads: at most 256 threads")
    refused(finetune("--steps 1 --out /proc/hero-nope"), "finetune: cannot create --out /proc/hero-nope: ")
    assert.is_false(exists(dir .. "/r"))
  end)

  it("evaluate: --out and --submission naming one file are refused; a missing value is named", function()
    local res = finetune("--steps 1 --out " .. dir .. "/run")
    assert.equal(0, res.rc, res.out)
    local ev = "examples/evaluate.lua --task vcmr --checkpoint " .. dir .. "/run/ckpt/step_1.safetensors "
      .. "--txt-db spec/fixtures/data/txt_db/tvr_val.db "
    refused(R(ev .. "--out " .. dir .. "/same.json --submission " .. dir .. "/./same.json"),
      "evaluate: --out and --submission both name")
    assert.is_false(exists(dir .. "/same.json"))
    refused(R(ev .. "--out --submission " .. dir .. "/s.json"), "evaluate: --out needs a value")
    local out, rc = run(ev .. "--out " .. dir .. "/o.json --submission " .. dir .. "/s.json")
    assert.equal(0, rc, out)
    assert.truthy(json.read_file(dir .. "/o.json").metrics, out)
  end)
end)

describe("examples/prepro.lua checks every input before writing", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)
  local V, M = TOK .. "roberta-base-vocab.json", TOK .. "vocab.bpe"
  local Q = "spec/fixtures/data/txt_db/tvr_val.db/query_data.jsonl"
  local FEATS = "--resnet " .. FEAT .. "resnet_features --slowfast " .. FEAT .. "slowfast_features --subs "
    .. "spec/fixtures/data/txt_db/annotations/tv_subtitles.jsonl "

  it("names a tokenizer that cannot be loaded, without a traceback", function()
    helper.write_file(dir .. "/bad_vocab.json", '{"a": ')
    assert(os.execute("mkdir -p '" .. dir .. "/mdir'"))
    local q = "examples/prepro.lua --queries " .. Q .. " --query-db q --out " .. dir .. "/o "
    refused(R(q .. "--vocab /nonexistent --merges " .. M), "prepro: cannot load the tokenizer of --vocab /nonexistent",
      "no such file")
    refused(R(q .. "--vocab " .. V .. " --merges " .. dir .. "/mdir"), "is not a regular file")
    refused(R(q .. "--vocab " .. dir .. "/bad_vocab.json --merges " .. M), "bad_vocab.json")
    refused(R(q .. "--query-db --vocab " .. V .. " --merges " .. M), "--query-db needs a value")
    refused(R(q .. "--vocab " .. V .. " --merges " .. M .. " --clip-interval abc"),
      "--clip-interval must be a positive number of seconds, got 'abc'")
    assert.is_false(exists(dir .. "/o"))
  end)

  it("writes no video database when the subtitles' inputs are bad, so that a fixed rerun works", function()
    helper.write_file(dir .. "/v2n.json", "[1]")
    refused(R("examples/prepro.lua " .. FEATS .. "--vocab /nonexistent --merges " .. M .. " --out " .. dir .. "/o"),
      "cannot load the tokenizer")
    refused(R("examples/prepro.lua " .. FEATS .. "--vocab " .. V .. " --merges " .. M .. " --vid2nframe " .. dir
      .. "/v2n.json --out " .. dir .. "/o"), "--vid2nframe: ")
    assert.is_false(exists(dir .. "/o"))
    local out, rc = run("examples/prepro.lua " .. FEATS .. "--vocab " .. V .. " --merges " .. M .. " --quiet --out "
      .. dir .. "/o")
    assert.equal(0, rc, out)
    assert.is_true(exists(dir .. "/o/txt_db/tv_subtitles.db/data.mdb"))
    -- a second run names what exists before writing anything
    refused(R("examples/prepro.lua " .. FEATS .. "--vocab " .. V .. " --merges " .. M .. " --quiet --out "
      .. dir .. "/o"), "already exists (pass --overwrite")
  end)

  it("refuses feature directories that hold no features", function()
    assert(os.execute(string.format("mkdir -p '%s/r' '%s/s'", dir, dir)))
    refused(R(string.format("examples/prepro.lua --resnet %s/r --slowfast %s/s --out %s/o", dir, dir, dir)),
      "hold no features")
    assert.is_false(exists(dir .. "/o"))
  end)
end)

describe("examples/demo.lua and parity.lua", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("demo: thread and worker counts and --data checked before any data is generated", function()
    local demo = "examples/demo.lua --tiny --quiet --out " .. dir .. "/o "
    refused(R(demo .. "--threads 0"), "demo: --threads must be a positive integer, got '0'")
    refused(R(demo .. "--threads 100000"), "demo: --threads: at most 256 threads")
    refused(R(demo .. "--workers 100000"), "demo: --workers must be at most 256, got 100000")
    assert.is_false(exists(dir .. "/o"))
    helper.write_file(dir .. "/file.txt", "x")
    refused(R(demo .. "--data " .. dir .. "/file.txt"), "demo: cannot create --data " .. dir .. "/file.txt")
    refused(R("examples/demo.lua --tiny --quiet --out --data " .. dir .. "/d"), "demo: --out needs a value")
  end)

  it("parity: a missing --device value, an unknown option, a bad device", function()
    refused(R("examples/parity.lua " .. FIX .. " --device"), "parity: --device needs a value")
    refused(R("examples/parity.lua --bogus"), "parity: unknown option --bogus")
    refused(R("examples/parity.lua " .. FIX .. " --device bogus"), "parity: --device must be cpu, cuda or cuda:N, "
      .. "got 'bogus'")
  end)
end)
