--- hero.cli: `--help` for command-line scripts, and the reference implementation's command-line
-- options. A script's usage is the comment block it starts with (what each of examples/*.lua
-- documents); `--help` or `-h` prints it and exits.
--
--   require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source)
--
-- The reference's training scripts (pretrain.py, train_vcmr.py, train_vr.py, train_videoQA.py,
-- train_violin.py, train_tvc.py) take their options from argparse and a --config JSON together
-- (config/config.py:parse_with_config): an option given on the command line wins, every other key
-- of the JSON is set as it is (keys argparse does not know included), and what neither gives takes
-- argparse's default. M.parse_reference reads those options, spelled as the reference spells them
-- (--learning_rate 1e-4, --betas 0.9 0.98, --use_all_neg, --nms_thd=-1), so that
-- examples/finetune.lua and examples/pretrain.lua take the reference's command lines.
local M = {}

--- The comment block at the top of the Lua file at `path` (a "#!" line skipped), without the
-- comment markers; nil and the reason when the file cannot be read.
function M.leading_comment(path)
  local f, err = io.open(path, "r")
  if not f then return nil, err end
  local lines, first = {}, true
  for line in f:lines() do
    if not (first and line:match("^#!")) then
      local text = line:match("^%-%-%-? ?(.*)$")
      if not text then break end
      lines[#lines + 1] = text
    end
    first = false
  end
  f:close()
  return table.concat(lines, "\n")
end

--- When argv (a script's `arg`) holds `--help` or `-h`: prints the usage of the script whose chunk
-- source is `source` (debug.getinfo(1, "S").source in the script) to stdout and exits with 0.
-- Otherwise returns nothing, having done nothing.
function M.help_if_asked(argv, source)
  if type(argv) ~= "table" then error("help_if_asked: argv must be the script's arg table, got " .. type(argv), 2) end
  local asked = false
  for _, a in ipairs(argv) do
    if a == "--help" or a == "-h" then asked = true end
  end
  if not asked then return end
  local path = type(source) == "string" and source:match("^@(.+)$")
  local text, err
  if path then text, err = M.leading_comment(path) else err = "the script's file is unknown" end
  io.stdout:write(text and text ~= "" and text .. "\n" or ("no usage found: " .. tostring(err) .. "\n"))
  io.stdout:flush()
  os.exit(0)
end

-- ------------------------------------------------------------------ hero's own command lines

--- Reads the options of one of hero's scripts: `--name VALUE` for the names in spec.values,
-- `--name` alone for those in spec.flags (both sets). Returns {name = value or true} (an option
-- given twice: the last one counts), or nil and a one-line message naming what is wrong: a word
-- that is no option, an unknown option, or a missing value. A value may not start with "--": that
-- word is the next option, and `--out --quiet` taking "--quiet" for the directory would fail much
-- later, far from the mistake. Values starting with a single "-" (-1, -x) are values.
function M.parse_options(argv, spec)
  if type(argv) ~= "table" then error("parse_options: argv must be an array of strings, got " .. type(argv), 2) end
  local values, flags = spec.values or {}, spec.flags or {}
  local opts, i = {}, 1
  while i <= #argv do
    local a = argv[i]
    local name = type(a) == "string" and a:match("^%-%-(%w[%w%-_]*)$")
    if not name then return nil, "unexpected argument '" .. tostring(a) .. "'" end
    if flags[name] then
      opts[name] = true
      i = i + 1
    elseif values[name] then
      local v = argv[i + 1]
      if v == nil or v:match("^%-%-") then return nil, "--" .. name .. " needs a value" end
      opts[name] = v
      i = i + 2
    else
      return nil, "unknown option --" .. name
    end
  end
  return opts
end

--- A set of the names in the array `list` (what M.parse_options takes).
function M.set(list)
  local s = {}
  for _, k in ipairs(list) do s[k] = true end
  return s
end

--- An error's message without the positions inside hero's library or its example scripts that
-- lead it (".../hero/data/video_db.lua:56: ", "examples/pretrain.lua:617: "): they say nothing to a
-- command line's user. Positions in other files (a user's Lua config that does not load) stay.
function M.error_text(err)
  local msg = tostring(err)
  local n, m
  repeat
    msg, n = msg:gsub("^[^%s:]-hero/[^%s:]-%.lua:%d+: ", "", 1)
    msg, m = msg:gsub("^[^%s:]-examples/[^%s:/]+%.lua:%d+: ", "", 1)
  until n + m == 0
  return msg
end

--- Makes the directory `path` and its missing parents (mkdir -p, without a shell: a name starting
-- with "-" or holding quotes is a name). Returns true, or nil and "cannot create FLAG PATH: reason"
-- (flag: the option that named it, e.g. "--out").
function M.make_dir(path, flag)
  local core = require "hero.core"
  local kind = core.fs_kind(path)
  if kind == "directory" then return true end
  local what = flag and (flag .. " " .. path) or path
  if kind then return nil, string.format("cannot create %s: it exists and is not a directory", what) end
  local acc = path:sub(1, 1) == "/" and "" or nil
  for part in path:gmatch("[^/]+") do
    acc = acc and (acc .. "/" .. part) or part
    local ok, err = pcall(core.fs_mkdir, acc, true)
    if not ok then
      -- for `path` itself the reason alone ("Permission denied"); for a parent, which one
      local reason = M.error_text(err):gsub("^fs_mkdir: ", "")
      if acc == path then reason = reason:gsub("^cannot create the directory '.-': ", "") end
      return nil, string.format("cannot create %s: %s", what, reason)
    end
  end
  return true
end

-- `path` made absolute (against the working directory) and written plainly: "." and empty parts
-- dropped, ".." taken back; symbolic links are not followed.
local function plain_path(path)
  if path:sub(1, 1) ~= "/" then
    local cwd = os.getenv("PWD")
    if not cwd or cwd:sub(1, 1) ~= "/" then
      local p = io.popen("pwd")
      cwd = p and p:read("l") or ""
      if p then p:close() end
    end
    path = cwd .. "/" .. path
  end
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then parts[#parts] = nil elseif part ~= "." then parts[#parts + 1] = part end
  end
  return "/" .. table.concat(parts, "/")
end

--- Whether two paths name the same file as written (results.json, ./results.json and its absolute
-- path do; two links to one file are not detected). Outputs named twice would leave only the last
-- one written, without a word.
function M.same_path(a, b)
  return plain_path(a) == plain_path(b)
end

--- The contents of the file `path` that option `flag` names ("--config"; nil: a file named
-- otherwise), or nil and a one-line message naming both: missing, unreadable, or a directory
-- (which io.open opens, and whose read gives nil, a message about nothing in particular).
function M.read_file(path, flag)
  local what = flag and (flag .. " " .. path) or path
  if require("hero.core").fs_kind(path) == "directory" then
    return nil, string.format("cannot read %s: it is a directory, not a file", what)
  end
  local f, err = io.open(path, "rb")
  if not f then return nil, string.format("cannot read %s: %s", what, tostring(err):gsub("^.-: ", "", 1)) end
  local s, rerr = f:read("a")
  f:close()
  if not s then return nil, string.format("cannot read %s: %s", what, tostring(rerr)) end
  return s
end

--- hero.set_num_threads with the count a command line gives (`word`, of option `flag`): true, or
-- nil and a message naming the option (not a decimal integer, below 1, above the thread limit).
function M.set_threads(word, flag)
  flag = flag or "--threads"
  local n = M.decimal_integer(word)
  if not n or n < 1 then return nil, string.format("%s must be a positive integer, got '%s'", flag, tostring(word)) end
  local ok, err = pcall(require("hero").set_num_threads, n)
  if not ok then return nil, flag .. ": " .. M.error_text(err):gsub("^set_num_threads: ", "") end
  return true
end

--- The RoBERTa tokenizer of the files --vocab and --merges name (hero.text.Tokenizer.from_files),
-- or nil and a one-line message naming both options and what is wrong with the file (missing, a
-- directory, malformed).
function M.tokenizer(vocab, merges)
  local ok, tok = pcall(require("hero.text").Tokenizer.from_files, vocab, merges)
  if ok then return tok end
  return nil, string.format("cannot load the tokenizer of --vocab %s --merges %s: %s", tostring(vocab),
    tostring(merges), (M.error_text(tok):gsub("^Tokenizer%.from_files: ", "")))
end

--- The most worker threads a pool may start (hero.core.worker_pool's opts.n; csrc/l_workers.c
-- MAX_WORKERS): a command line's worker count is checked against it before any work.
M.MAX_WORKERS = 256

-- ------------------------------------------------------------------ the reference's options

-- One option: {name, type ("int", "float", "str" or "flag": store_true), default (argparse's, nil
-- for None), nargs = "+" (one or more values), choices, pair = true (nargs "+" that must be two
-- values: argparse takes --betas 0.9, which fails only in the optimizer)}.
local function opt(name, type_, default, extra)
  local o = {name = name, type = type_, default = default}
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- config/config.py: SharedConfigs.__init__ (every training script but train_tvc.py)
local SHARED = {
  opt("model_config", "str"), opt("checkpoint", "str"),
  opt("train_batch_size", "int", 16), opt("val_batch_size", "int", 20),
  opt("gradient_accumulation_steps", "int", 16), opt("learning_rate", "float", 3e-5),
  opt("valid_steps", "int", 1000), opt("save_steps", "int", 500),
  opt("optim", "str", "adam", {choices = {"adam", "adamax", "adamw"}}),
  opt("betas", "float", {0.9, 0.98}, {nargs = "+", pair = true}), opt("dropout", "float", 0.1),
  opt("weight_decay", "float", 0.0), opt("grad_norm", "float", 0.25), opt("warmup_steps", "int", 4000),
  opt("lr_mul", "float", 1.0), opt("num_train_steps", "int", 100000), opt("output_dir", "str"),
  opt("sub_ctx_len", "int", 0), opt("max_clip_len", "int", 100), opt("max_txt_len", "int", 60),
  opt("vfeat_version", "str", "resnet_slowfast"), opt("vfeat_interval", "float", 1.5),
  opt("compressed_db", "flag", false), opt("seed", "int", 42), opt("n_workers", "int", 4),
  opt("pin_mem", "flag", false), opt("fp16", "flag", false), opt("config", "str"),
}

-- SharedConfigs.get_vsm_args (pre-training and the retrieval tasks)
local VSM = {
  opt("drop_svmr_prob", "float", 0), opt("lw_neg_q", "float", 0), opt("lw_neg_ctx", "float", 0),
  opt("lw_st_ed", "float", 1), opt("ranking_loss_type", "str", "hinge", {choices = {"hinge", "lse"}}),
  opt("margin", "float", 0.1), opt("hard_pool_size", "int", {20}, {nargs = "+"}),
  opt("hard_neg_weights", "float", {10}, {nargs = "+"}),
  opt("hard_negtiave_start_step", "int", {10000}, {nargs = "+"}), -- (sic)
  opt("train_span_start_step", "int", -1), opt("use_all_neg", "flag", false),
}

local function concat(...)
  local out = {}
  for _, list in ipairs {...} do for _, o in ipairs(list) do out[#out + 1] = o end end
  return out
end

-- get_vcmr_args, which train_vr.py's main also calls (it never calls get_vr_args)
local VCMR = concat(SHARED, {
  opt("task", "str", "tvr", {choices = {"tvr", "didemo_video_sub", "how2r", "didemo_video_only"}}),
  opt("vcmr_eval_video_batch_size", "int", 40), opt("vcmr_eval_q_batch_size", "int", 80),
}, VSM, {
  opt("eval_with_query_type", "flag", false), opt("max_before_nms", "int", 200), opt("max_after_nms", "int", 100),
  opt("distributed_eval", "flag", false), opt("nms_thd", "float", 0.5), opt("q2c_alpha", "float", 20),
  opt("max_vcmr_video", "int", 100),
  opt("full_eval_tasks", "str", {"VCMR", "SVMR", "VR"}, {nargs = "+", choices = {"VCMR", "SVMR", "VR"}}),
  opt("min_pred_l", "int", 2), opt("max_pred_l", "int", 16),
})

--- The options of each reference training script, by the script's name (without .py): lists of
-- {name, type, default, nargs, choices} in argparse's order.
M.REFERENCE_OPTIONS = {
  pretrain = concat(SHARED, {
    opt("txt_db", "str"), opt("img_db", "str"), opt("targets_ratio", "int", nil, {nargs = "+"}),
    opt("load_partial_pretrained", "flag", false), opt("skip_layer_loading", "flag", false),
    opt("mask_prob", "float", 0.15),
  }, VSM),
  train_vcmr = VCMR,
  train_vr = VCMR,
  train_videoQA = concat(SHARED, {
    opt("task", "str", "tvqa", {choices = {"tvqa", "how2qa"}}), opt("lw_st_ed", "float", 1),
  }),
  train_violin = concat(SHARED, {opt("task", "str", "violin", {choices = {"violin"}})}),
  -- train_tvc.py has a parser of its own, with other defaults (adamw, decay 0.01, clipping at 2)
  train_tvc = {
    opt("model_config", "str"), opt("checkpoint", "str"), opt("sub_txt_db", "str"), opt("vfeat_db", "str"),
    opt("train_db", "str"), opt("val_db", "str"), opt("val_ref", "str"), opt("test_db", "str"),
    opt("output_dir", "str"), opt("max_clip_len", "int", 100), opt("max_txt_len", "int", 60),
    opt("max_gen_step", "int", 30), opt("vfeat_version", "str", "resnet_slowfast"),
    opt("vfeat_interval", "float", 1.5), opt("compressed_db", "flag", false),
    opt("train_batch_size", "int", 16), opt("val_batch_size", "int", 20),
    opt("gradient_accumulation_steps", "int", 16), opt("learning_rate", "float", 3e-5),
    opt("lr_mul", "float", 1.0), opt("valid_steps", "int", 1000), opt("num_train_steps", "int", 100000),
    opt("optim", "str", "adamw", {choices = {"adam", "adamax", "adamw"}}),
    opt("betas", "float", {0.9, 0.98}, {nargs = "+", pair = true}), opt("dropout", "float", 0.1),
    opt("weight_decay", "float", 0.01), opt("grad_norm", "float", 2), opt("warmup_steps", "int", 4000),
    opt("max_cap_per_vid", "int", -1), opt("lsr", "float", 0.1), opt("sub_ctx_len", "int", 1),
    opt("seed", "int", 42), opt("fp16", "flag", false), opt("n_workers", "int", 4), opt("pin_mem", "flag", false),
    opt("config", "str"),
  },
}

-- Keys of the reference's training configs that no parser declares (each script reads them from
-- the JSON itself), and the run settings hero's own scripts read from a config or record in their
-- hps.json (a recorded hps.json given back as a config must not read as misspelt).
local CONFIG_ONLY = {
  "rank", "targets", "targets_ratio", "train_query_txt_db", "val_query_txt_db", "test_query_txt_db",
  "vcmr_eval_batch_size", "vr_eval_video_batch_size", "vr_eval_q_batch_size", "max_vr_video",
  "hard_negative_start_step", "sub_db", "train_txt_db", "train_ids", "valid_ids", "vfeat_dim", "max_frm_seq_len",
  "fixture", "init", "tasks", "ratios", "accum", "lr", "total", "warmup", "valid_every", "save_every",
  "train_config", "reference_config", "vsm_recipe", "workers", "batch_size", "amp", "device", "bucket",
  "on_error", "prefetch",
}

--- The names of the reference's options and config keys (a set): a table of the reference's
-- options handed over whole holds them beside those a function reads.
function M.reference_option_names()
  local known = {}
  for _, list in pairs(M.REFERENCE_OPTIONS) do
    for _, o in ipairs(list) do known[o.name] = true end
  end
  for _, k in ipairs(CONFIG_ONLY) do known[k] = true end
  return known
end

--- Whether `key` is misspelt in a training config: the known key (a reference option, a key of the
-- reference's configs, or one hero's scripts read) one or two edits away from it, when the config
-- does not hold that key itself; nil otherwise. The reference accepts any key and reads only its
-- own, so a misspelt one would leave the option at its default without a word.
function M.misspelt_config_key(key, config)
  local known = {}
  for _, list in pairs(M.REFERENCE_OPTIONS) do
    for _, o in ipairs(list) do known[o.name] = true end
  end
  for _, k in ipairs(CONFIG_ONLY) do known[k] = true end
  if known[key] then return nil end
  local meant = require("hero.spelling").near_miss(key, known)
  if meant and config[meant] == nil then return meant end
  return nil
end

-- The evaluation scripts (examples/evaluate.lua reads their options): eval_vcmr.py, eval_vr.py,
-- eval_videoQA.py, eval_violin.py and inf_tvc.py, each with a parser of its own.
local function eval_script(dbs, split, task, extra)
  local list = {
    opt("sub_txt_db", "str", dbs[1]), opt("vfeat_db", "str", dbs[2]), opt("query_txt_db", "str", dbs[3]),
    opt("split", "str", split[1], {choices = split[2]}),
  }
  if task then list[#list + 1] = opt("task", "str", task[1], {choices = task[2]}) end
  list[#list + 1] = opt("checkpoint", "str")
  for _, o in ipairs(extra) do list[#list + 1] = o end
  return concat(list, {opt("fp16", "flag", false), opt("n_workers", "int", 4), opt("pin_mem", "flag", false)})
end
M.REFERENCE_OPTIONS.eval_vcmr = eval_script({"/txt/tv_subtitles.db", "/video/tv", "/txt/tvr_val.db"},
  {"val", {"val", "test_public", "test"}}, {"tvr", {"tvr", "how2r", "didemo_video_sub", "didemo_video_only"}}, {
    opt("batch_size", "int", 80), opt("vcmr_eval_video_batch_size", "int", 50),
    opt("full_eval_tasks", "str", {"VCMR", "SVMR", "VR"}, {nargs = "+", choices = {"VCMR", "SVMR", "VR"}}),
    opt("output_dir", "str"),
  })
M.REFERENCE_OPTIONS.eval_vr = eval_script({"/txt/msrvtt_subtitles.db", "/video/msrvtt", "/txt/msrvtt_val.db"},
  {"val", {"val", "test"}}, {"msrvtt_video_sub", {"msrvtt_video_sub", "msrvtt_video_only"}}, {
    opt("batch_size", "int", 80), opt("vr_eval_video_batch_size", "int", 50), opt("output_dir", "str"),
  })
M.REFERENCE_OPTIONS.eval_videoQA = concat(eval_script({"/txt/tv_subtitles.db", "/video/tv", "/txt/tvqa_val.db/"},
  {"val", {"val", "test_public", "test"}}, {"tvqa", {"tvqa", "how2qa"}}, {
    opt("batch_size", "int", 10), opt("output_dir", "str"),
  }), {opt("save_logits", "flag", false)})
M.REFERENCE_OPTIONS.eval_violin = concat(eval_script({"/txt/violin_subtitles.db", "/video/violin",
  "/txt/violin_test.db"}, {"test", {"val", "test"}}, nil, {
    opt("batch_size", "int", 10), opt("output_dir", "str"),
  }), {opt("save_logits", "flag", false)})
M.REFERENCE_OPTIONS.inf_tvc = {
  opt("model_dir", "str"), opt("ckpt_step", "int"), opt("output", "str"), opt("batch_size", "int", 8),
  opt("max_gen_step", "int", 30), opt("n_workers", "int", 4), opt("no_pin_mem", "flag", false),
  opt("no_fp16", "flag", false), opt("target_clip", "str"),
}

-- argparse's test for a negative number, which it takes as a value, not as an option
local function is_negative_number(a)
  return a:match("^%-%d+$") ~= nil or a:match("^%-%d*%.%d+$") ~= nil
end

local function looks_like_option(a) return a:sub(1, 1) == "-" and not is_negative_number(a) end

-- Python's int() and float() of a command-line word (surrounding blanks allowed, no hexadecimal)
local function convert(o, word)
  local s = word:match("^%s*(.-)%s*$")
  if o.type == "int" then
    local n = s:match("^[+-]?%d+$") and math.tointeger(tonumber(s))
    if n then return n end
  elseif o.type == "float" then
    local low = s:lower()
    local sign, rest = low:match("^([+-]?)(.*)$")
    if rest == "inf" or rest == "infinity" then return sign == "-" and -math.huge or math.huge end
    if rest == "nan" then return 0 / 0 end
    local n = not low:find("x", 1, true) and tonumber(s)
    if n then return n + 0.0 end
  else
    return word
  end
  return nil
end

--- The integer a command-line word writes in decimal ("12", "-3"), or nil (hexadecimal "0x1",
-- "1.5", "1e3" and the like are not integers a user means to give).
function M.decimal_integer(word)
  if type(word) ~= "string" then return nil end
  local s = word:match("^%s*(.-)%s*$")
  return s:match("^[+-]?%d+$") and math.tointeger(tonumber(s)) or nil
end

--- The finite number a command-line word writes in decimal ("0.5", "3e-5"), or nil (hexadecimal,
-- "inf", "nan" and numbers beyond the largest float: no setting of a run takes them).
function M.decimal_number(word)
  if type(word) ~= "string" then return nil end
  local s = word:match("^%s*(.-)%s*$")
  if s:find("[xX]") then return nil end
  local n = tonumber(s)
  if not n or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

local function check_choice(o, v, script)
  if not o.choices then return end
  for _, c in ipairs(o.choices) do if c == v then return end end
  error(string.format("--%s: invalid choice '%s' (%s.py takes %s)", o.name, tostring(v), script,
    table.concat(o.choices, ", ")), 0)
end

--- Reads the reference script's options out of a command line. argv: the script's arguments;
-- script: a key of M.REFERENCE_OPTIONS; keep: a set of option names the calling script reads
-- itself (they stay in the rest, as do options the reference's script does not have). Returns the
-- values given ({name = value}: integers, floats, strings, true for a flag, arrays for nargs "+"),
-- the rest of argv in its order, and the names given, in their order. Raises an error naming the
-- option when a value is missing or is not of the option's type or choices.
function M.parse_reference(argv, script, keep)
  if type(argv) ~= "table" then error("parse_reference: argv must be an array of strings, got " .. type(argv), 2) end
  local list = M.REFERENCE_OPTIONS[script]
  if not list then
    local names = {}
    for k in pairs(M.REFERENCE_OPTIONS) do names[#names + 1] = k end
    table.sort(names)
    error(string.format("parse_reference: unknown script '%s' (%s)", tostring(script), table.concat(names, ", ")), 2)
  end
  keep = keep or {}
  local by_name = {}
  for _, o in ipairs(list) do by_name[o.name] = o end
  local values, rest, given = {}, {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^%-%-([^=]+)=(.*)$")
    name = name or a:match("^%-%-(.+)$")
    local o = name and not keep[name] and by_name[name]
    if not o then
      rest[#rest + 1] = a
      i = i + 1
    else
      i = i + 1
      local words = {}
      if inline then
        words[1] = inline
      elseif o.type ~= "flag" then
        while argv[i] ~= nil and not looks_like_option(argv[i]) do
          words[#words + 1] = argv[i]
          i = i + 1
          if o.nargs ~= "+" then break end
        end
      end
      local v
      if o.type == "flag" then
        if inline then error(string.format("--%s is a flag: it takes no value (got '%s')", name, inline), 0) end
        v = true
      else
        if #words == 0 then
          error(string.format("--%s needs %s", name, o.nargs == "+" and "one or more values" or "a value"), 0)
        end
        local conv = {}
        for k, w in ipairs(words) do
          conv[k] = convert(o, w)
          if conv[k] == nil then
            error(string.format("--%s: invalid %s value: '%s'", name, o.type, w), 0)
          end
          check_choice(o, conv[k], script)
        end
        if o.pair and #conv ~= 2 then
          error(string.format("--%s takes two values, got %d", name, #conv), 0)
        end
        v = o.nargs == "+" and conv or conv[1]
      end
      if values[name] == nil then given[#given + 1] = name end
      values[name] = v -- given twice, the last one counts (argparse's store)
    end
  end
  return values, rest, given
end

--- The reference's parse_with_config on an already decoded JSON config: a copy of `config` with
-- the command-line values (as M.parse_reference returns them) put over it.
function M.with_overrides(config, values)
  local out = {}
  for k, v in pairs(config or {}) do out[k] = v end
  for k, v in pairs(values or {}) do out[k] = v end
  out.config = nil -- parse_with_config deletes it: hps.json never holds it
  return out
end

return M
