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
