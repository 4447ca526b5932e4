--- Shared by every spec: loads hero from the checkout and adds tensor assertions.
-- Tolerances live here and only here (per dtype); a spec never widens them.
local say = require "say"
local assert = require "luassert"

local helper = {}

--- Absolute/relative tolerance per dtype, for values computed independently (NumPy float64
-- reference rounded to the dtype): |a - b| <= atol + rtol * |b|.
helper.tolerance = {
  f64  = {atol = 1e-12, rtol = 1e-10},
  f32  = {atol = 1e-6,  rtol = 1e-5},
  bf16 = {atol = 1e-2,  rtol = 1e-2},
  f16  = {atol = 1e-3,  rtol = 1e-3},
  i64  = {atol = 0, rtol = 0},
  i32  = {atol = 0, rtol = 0},
  u8   = {atol = 0, rtol = 0},
  bool = {atol = 0, rtol = 0},
  -- f32 results of whole layers on a GPU against the CPU: several products in a row, each summed
  -- in another order by cuBLAS than by the CPU's kernels
  layer_f32_device = {atol = 1e-5, rtol = 1e-4},
  -- bf16/f16 sums a GPU adds in another order than the CPU (atomics, other reduction trees): the
  -- half result may differ in its last place (f16's is 1e-3 of the value, before rounding the sum)
  half_sum_device = {atol = 1e-2, rtol = 1e-2},
  -- f16 attention on the tensor cores: P' and dS are rounded to f16 as operands of the next
  -- products, several roundings in a row (bf16's bound, one rounding of bf16's size)
  attention_f16_device = {atol = 1e-2, rtol = 1e-2},
  -- a fine-tuning loss under autocast against the f32 run's, from the same parameters and batches:
  -- bf16 keeps 8 significant bits (one rounding: up to 2^-9, 0.2 %) and a loss passes through
  -- several rounded products (0.6 % seen after 4 VCMR updates of the tiny model); f16 keeps 11
  -- (2^-12, 0.025 %; 0.03 % seen)
  loss_bf16_autocast = {atol = 0, rtol = 2e-2},
  loss_f16_autocast = {atol = 0, rtol = 5e-3},
  -- a model's outputs (retrieval scores, answer logits) under autocast against the f32 model's:
  -- every layer rounds its activations to the half type, so an output carries many roundings, not
  -- the one of a single op (the bf16/f16 rows above). bf16: 8 significant bits (2^-9 a rounding);
  -- 0.011 seen on logits of 0.36 (0.015 in the AddressSanitizer build, whose -O1 rounds the f32
  -- parts differently). f16: 11 bits (2^-12); 0.0013 seen on 0.36.
  outputs_bf16_autocast = {atol = 3e-2, rtol = 3e-2},
  outputs_f16_autocast = {atol = 4e-3, rtol = 4e-3},
  -- an evaluation's metrics under autocast against f32's: a half-precision score may swap two
  -- nearly equal candidates (a query's videos, moments or a question's answers), which moves a
  -- metric by one query's share. `queries`: how many queries' rankings may change.
  ranking_autocast = {queries = 1},
}

local function flatten(v, out)
  if type(v) == "table" then
    for i = 1, #v do flatten(v[i], out) end
  else
    out[#out + 1] = v
  end
  return out
end

local function shape_of(v, out)
  out = out or {}
  if type(v) == "table" then
    out[#out + 1] = #v
    if #v > 0 then shape_of(v[1], out) end
  end
  return out
end

local function num(v)
  if v == true then return 1 elseif v == false then return 0 end
  return v
end

--- Compares a tensor with expected values (a tensor or nested table). Returns ok, message.
function helper.compare(actual, expected, tol)
  local hero = require "hero"
  if not hero.is_tensor(actual) then return false, "actual value is not a hero.Tensor" end
  local dtype = actual:dtype()
  tol = tol or helper.tolerance[dtype]
  local exp_shape, exp_vals
  if hero.is_tensor(expected) then
    exp_shape = expected:size()
    exp_vals = flatten(expected:totable(), {})
  elseif type(expected) == "table" then
    exp_shape = shape_of(expected)
    exp_vals = flatten(expected, {})
  else
    exp_shape = {}
    exp_vals = {expected}
  end
  local act_shape = actual:size()
  if table.concat(act_shape, "x") ~= table.concat(exp_shape, "x") and
     not (#exp_shape == 0 and actual:numel() == 1) then
    return false, string.format("shape %s, expected %s", table.concat(act_shape, "x"),
      table.concat(exp_shape, "x"))
  end
  local act_vals = flatten(actual:totable(), {})
  local worst, worst_i = -1, nil
  for i = 1, #exp_vals do
    local a, e = num(act_vals[i]), num(exp_vals[i])
    local bad
    if e ~= e then
      bad = a == a
    elseif e == math.huge or e == -math.huge then
      bad = a ~= e
    else
      local err = math.abs(a - e)
      bad = not (err <= tol.atol + tol.rtol * math.abs(e)) -- luacheck: ignore 581 (NaN must fail)
      if err > worst then worst, worst_i = err, i end
    end
    if bad then
      return false, string.format("element %d (flat, 1-based): got %.17g, expected %.17g (atol %g, rtol %g)",
        i, a, e, tol.atol, tol.rtol)
    end
  end
  return true, worst_i and string.format("max error %g", worst) or ""
end

--- Parity with the reference implementation's fixtures (spec/fixtures/hero-smoke/config.json,
-- tolerances.recommended: 10x the spread seen between the reference in fp32 and in fp64).
--   activations: max|mine - ref| <= rtol * max|ref|
--   gradients:   the same with their rtol, or atol_rel * the file's scale for tensors that are
--                exactly zero in exact arithmetic (rounding noise in the fixture)
--   params:      max|mine - ref| <= atol (after optimizer updates)
helper.parity_tolerance = {
  activations = {rtol = 2e-5, atol_rel = 1e-6},
  gradients = {rtol = 1e-4, atol_rel = 2e-4},
  params = {atol = 1e-5},
}

--- Returns ok, message for the parity of tensor `actual` with `expected` (tensors of one shape).
-- kind: "activations" | "gradients" | "params"; file_scale: for near-zero gradient tensors.
function helper.parity(actual, expected, kind, file_scale)
  local tol = helper.parity_tolerance[kind]
  if table.concat(actual:size(), "x") ~= table.concat(expected:size(), "x") then
    return false, string.format("shape %s, expected %s", table.concat(actual:size(), "x"),
      table.concat(expected:size(), "x"))
  end
  local a, e = actual:double(), expected:double()
  local diff = (a - e):abs():max():item()
  local scale = e:numel() > 0 and e:abs():max():item() or 0
  local bound
  if kind == "params" then
    bound = tol.atol
  elseif file_scale then
    bound = tol.atol_rel * file_scale
  else
    bound = tol.rtol * scale
  end
  if diff ~= diff or diff > bound then
    return false, string.format("max |diff| %.3g exceeds %.3g (max |ref| %.3g, %s)", diff, bound, scale, kind)
  end
  return true, string.format("max |diff| %.3g <= %.3g", diff, bound)
end

-- The failure message formats arguments[1]: it becomes the comparison's own report (which
-- elements differ and by how much) instead of the first tensor's printout.
local function tensor_near(_, arguments)
  local ok, msg = helper.compare(arguments[1], arguments[2], arguments[3])
  arguments[1], arguments.n = msg, 1
  return ok
end

local function parity(_, arguments)
  local ok, msg = helper.parity(arguments[1], arguments[2], arguments[3], arguments[4])
  arguments[1], arguments.n = msg, 1
  return ok
end
say:set("assertion.parity.positive", "Parity with the reference failed: %s")
say:set("assertion.parity.negative", "Unexpected parity: %s")
assert:register("assertion", "parity", parity, "assertion.parity.positive", "assertion.parity.negative")

say:set("assertion.tensor_near.positive", "Tensor mismatch: %s")
say:set("assertion.tensor_near.negative", "Tensors unexpectedly equal: %s")
assert:register("assertion", "tensor_near", tensor_near, "assertion.tensor_near.positive",
  "assertion.tensor_near.negative")

--- Path of a file under spec/fixtures.
function helper.fixture(name)
  local dir = debug.getinfo(1, "S").source:match("^@(.*)/spec_helper%.lua$") or "spec"
  return dir .. "/fixtures/" .. name
end

--- Loads a Lua-literal fixture (spec/fixtures/*.lua written by the NumPy generators).
function helper.load_fixture(name)
  local chunk = assert(loadfile(helper.fixture(name), "t", {math = math}))
  return chunk()
end

--- A hero-smoke fixture file (spec/fixtures/hero-smoke/<name>.safetensors) as hero.load reads it.
function helper.smoke(name)
  return require("hero").load(helper.fixture("hero-smoke/" .. name .. ".safetensors"))
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end

--- A collated hero-smoke batch: its tensors, and its Lua fields (num_subs, sub_idx2frame_idx, ...)
-- from hero_smoke_batches.lua, copied so that a spec may change them.
local smoke_sides
function helper.smoke_batch(name)
  smoke_sides = smoke_sides or helper.load_fixture("hero_smoke_batches.lua")
  local b = helper.smoke(name)
  for k, v in pairs(smoke_sides[name] or {}) do b[k] = deep_copy(v) end
  return b
end

--- `it` when hero was built with every optional library named ("lmdb", "lz4", "mpi"), else a
-- stand-in that reports the spec as pending with what is missing (the top-level Makefile installs
-- them all, so `make test` runs every spec). busted's `it` and `pending` exist only in spec files,
-- so they are passed: local it_db = helper.it_needs(it, pending, "lmdb", "lz4")
local HAS = {
  lmdb = {"LMDB", function() return require("hero").data.has_lmdb end},
  lz4 = {"LZ4", function() return require("hero").data.has_lz4 end},
  mpi = {"MPI", function() return require("hero").dist.available() end},
}
function helper.it_needs(it, pending, ...)
  local missing = {}
  for _, lib in ipairs {...} do
    local what = assert(HAS[lib], "it_needs: unknown library " .. tostring(lib))
    if not what[2]() then missing[#missing + 1] = what[1] end
  end
  if #missing == 0 then return it end
  local reason = " (hero was built without " .. table.concat(missing, " and ") .. " support)"
  return function(name) pending(name .. reason) end
end

--- Writes `bytes` to the file at `path` (replacing it).
function helper.write_file(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

--- Asserts that fn raises an error whose message contains every given plain substring.
function helper.assert_error_contains(fn, ...)
  local ok, err = pcall(fn)
  assert(not ok, "expected an error, but the call succeeded")
  err = tostring(err)
  for _, needle in ipairs {...} do
    assert(err:find(needle, 1, true), string.format("error %q does not mention %q", err, needle))
  end
  return err
end

package.loaded["spec_helper"] = helper
--- A tiny RoBERTa-shaped model config section (hidden 16, 2 heads, one layer, the 50272-row
-- padded vocabulary of the TV text databases), with `extra` keys replacing the defaults.
function helper.tiny_section(extra)
  local s = {hidden_size = 16, num_attention_heads = 2, intermediate_size = 32, num_hidden_layers = 1,
    max_position_embeddings = 514, type_vocab_size = 2, vocab_size = 50272, hidden_act = "gelu",
    hidden_dropout_prob = 0.1, attention_probs_dropout_prob = 0.1, initializer_range = 0.02}
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

local TVR_KEYS = {task = "tvr", max_txt_len = 60, lw_neg_q = 8.0, lw_neg_ctx = 8.0, lw_st_ed = 0.01,
  ranking_loss_type = "hinge", margin = 0.1, hard_pool_size = {2}, hard_neg_weights = {10},
  hard_negtiave_start_step = {3}, train_span_start_step = 2, drop_svmr_prob = 0.0, use_all_neg = true,
  eval_with_query_type = true, max_before_nms = 200, max_after_nms = 100, distributed_eval = false, nms_thd = 0.5,
  q2c_alpha = 20, max_vcmr_video = 100, full_eval_tasks = {"VCMR", "SVMR", "VR"}, min_pred_l = 2, max_pred_l = 16,
  sub_ctx_len = 0, vcmr_eval_video_batch_size = 3, vcmr_eval_q_batch_size = 4}

--- A released-style training config (config/train-*.json) of a fine-tuning task ("vcmr", "vr",
-- "videoqa", "violin", "tvc") for the TV fixture databases (spec/fixtures/data) and the tiny model
-- of helper.tiny_finetune_dir (model_config "model.json").
function helper.finetune_config(task)
  local c = {sub_txt_db = helper.fixture("data/txt_db") .. "/tv_subtitles.db",
    vfeat_db = helper.fixture("data/video_db/tv"),
    model_config = "model.json", max_clip_len = 12, vfeat_version = "resnet_slowfast", vfeat_interval = 1.5,
    compressed_db = false, train_batch_size = 4, val_batch_size = 4, gradient_accumulation_steps = 1,
    learning_rate = 1e-3, valid_steps = 100, save_steps = 100, num_train_steps = 50, optim = "adamw",
    betas = {0.9, 0.98}, dropout = 0.0, weight_decay = 0.01, grad_norm = 1.0, warmup_steps = 1, seed = 77}
  local extra
  if task == "vcmr" then
    extra = TVR_KEYS
  elseif task == "vr" then
    extra = {task = "msrvtt_video_sub", max_txt_len = 60, lw_neg_q = 10.0, lw_neg_ctx = 10.0,
      ranking_loss_type = "hinge", margin = 0.1, hard_pool_size = {2}, hard_neg_weights = {10},
      hard_negtiave_start_step = {0}, use_all_neg = true,
      max_vr_video = 100, sub_ctx_len = 1, vr_eval_video_batch_size = 4, vr_eval_q_batch_size = 5}
  elseif task == "videoqa" then
    extra = {task = "tvqa", max_txt_len = 120, lr_mul = 10.0, lw_st_ed = 0.4, train_batch_size = 3}
  elseif task == "violin" then
    extra = {task = "violin", max_txt_len = 120, lr_mul = 8.0, sub_ctx_len = 2, train_batch_size = 2}
  else
    extra = {max_txt_len = 16, lr_mul = 10.0, lsr = 0.1, max_gen_step = 4, max_cap_per_vid = -1, sub_ctx_len = 1,
             train_batch_size = 2}
  end
  for k, v in pairs(extra) do c[k] = v end
  return c
end

--- A new directory under /tmp holding model.json (the tiny f/c/q config of helper.tiny_section)
-- and init.safetensors (a HeroForPretraining of it with 24-value frames, initialised from `seed`):
-- what helper.finetune_config's runs start from.
function helper.tiny_finetune_dir(seed)
  local hero = require "hero"
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute('mkdir -p "' .. d .. '"'))
  local cfg = {f_config = helper.tiny_section(), c_config = helper.tiny_section {max_position_embeddings = 32},
    q_config = helper.tiny_section {num_hidden_layers = 0}}
  hero.json.write_file(d .. "/model.json", cfg)
  hero.manual_seed(seed)
  hero.models.HeroForPretraining(hero.config.model(cfg), {vfeat_dim = 24, max_frm_seq_len = 16})
    :save_checkpoint(d .. "/init.safetensors")
  return d
end

return helper
