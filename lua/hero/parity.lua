--- hero.parity: runs every case of a reference fixture directory (laid out like the smoke fixture
-- of the HERO reference implementation: config.json with a `files` index, weights.safetensors,
-- batch_<task>.safetensors + .json, outputs_<task>, grads_<task>, optimizer updates and the
-- reference's .pt checkpoints) against hero, with the tolerances the fixture recommends.
--   local results, ok = hero.parity.run(dir [, {print = true}])
-- Each result is {case, tensor, max_abs, max_rel, bound, ok} (or {case, skipped = reason}).
local core = require "hero.core"
local json = require "hero.json"

local parity = {}

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- max |a - b|, max |a - b| / max |b|
local function errors(actual, expected)
  local a, e = actual:detach():double(), expected:double()
  if table.concat(a:size(), "x") ~= table.concat(e:size(), "x") then return math.huge, math.huge end
  local diff = a:numel() > 0 and (a - e):abs():max():item() or 0
  local scale = e:numel() > 0 and e:abs():max():item() or 0
  return diff, scale > 0 and diff / scale or diff
end

local Runner = {}
Runner.__index = Runner

function Runner:record(case, name, actual, expected, kind, file_scale)
  local tol = self.tol
  local abs, rel = errors(actual, expected)
  local bound
  if kind == "params" then
    bound = tol.params_after_optimizer_steps.atol
  else
    local t = kind == "gradients" and tol.gradients or tol.activations_logits_losses
    local scale = expected:numel() > 0 and expected:double():abs():max():item() or 0
    local rtol = t.rtol
    local per = tol.per_tensor_rtol and tol.per_tensor_rtol[case] and tol.per_tensor_rtol[case][name]
    if per then rtol = per end
    bound = file_scale and t.atol_rel * file_scale or rtol * scale
  end
  local ok = abs == abs and abs <= bound
  local r = {case = case, tensor = name, max_abs = abs, max_rel = rel, bound = bound, ok = ok}
  self.results[#self.results + 1] = r
  if not ok then self.ok = false end
  if self.print then
    print(string.format("%-4s %-28s %-60s abs %.3e rel %.3e (bound %.3e)", ok and "ok" or "FAIL", case, name, abs, rel,
      bound))
  end
end

function Runner:skip(case, reason)
  self.results[#self.results + 1] = {case = case, skipped = reason}
  if self.print then print(string.format("skip %-28s %s", case, reason)) end
end

function Runner:path(name) return self.dir .. "/" .. name end

function Runner:batch(name)
  local b = require("hero.io").load(self:path(name .. ".safetensors"))
  if exists(self:path(name .. ".json")) then
    for k, v in pairs(json.read_file(self:path(name .. ".json"))) do b[k] = v end
  end
  return b
end

function Runner:model()
  local models = require "hero.models"
  local c = self.config
  local opts = c.pretrain and c.pretrain.options or {}
  local m = models.HeroForPretraining(c.model_config.pretrain, {
    vfeat_dim = c.constants.vfeat_dim, max_frm_seq_len = c.constants.max_frm_seq_len,
    vocab_pad = c.constants.vocab_pad_pretraining, lw_st_ed = opts.lw_st_ed, lw_neg_ctx = opts.lw_neg_ctx,
    lw_neg_q = opts.lw_neg_q, margin = opts.margin, ranking_loss_type = opts.ranking_loss_type, drop_svmr_prob = 0,
  })
  m:load_checkpoint(require("hero.io").load(self:path("weights.safetensors")))
  -- the fixtures are made with every dropout probability 0, in training mode
  for _, entry in ipairs(m:named_modules()) do
    local mod = entry[2]
    if mod.__name == "Dropout" then mod.p = 0 end
    if mod.attention_dropout then mod.attention_dropout = 0 end
  end
  return m
end

local TASKS = {"mlm", "mfm-nce", "mffr", "fom", "vsm"}

function Runner:outputs_and_grads(m)
  local files = self.config.files
  local params = m:named_parameters()
  for _, task in ipairs(TASKS) do
    local out_file, grad_file = "outputs_" .. task .. ".safetensors", "grads_" .. task .. ".safetensors"
    if files["batch_" .. task .. ".safetensors"] and (files[out_file] or files[grad_file]) then
      for _, p in ipairs(params) do p[2].grad = nil end
      local out = m:forward(self:batch("batch_" .. task), task)
      if files[out_file] then
        local expected = require("hero.io").load(self:path(out_file))
        local names = {}
        for k in pairs(expected) do if out[k] then names[#names + 1] = k end end
        table.sort(names)
        for _, k in ipairs(names) do self:record(out_file, k, out[k], expected[k], "activations") end
      end
      if files[grad_file] then
        out.loss:backward()
        local expected = require("hero.io").load(self:path(grad_file))
        local info = self.per_file[grad_file] or {}
        local near = {}
        for _, n in ipairs(info.near_zero_tensors or {}) do near[n] = true end
        for _, p in ipairs(params) do
          local name, t = p[1], p[2]
          if expected[name] then
            if t.grad then
              self:record(grad_file, name, t.grad, expected[name], "gradients",
                near[name] and info.file_scale_median_maxabs or nil)
            else
              self:record(grad_file, name, core.full(expected[name]:size(), 0 / 0), expected[name], "gradients")
            end
          end
        end
      end
    end
  end
end

function Runner:optimizer_updates(m)
  local oc = self.config.optimizer
  if not (oc and exists(self:path("params_after_step3.safetensors"))) then
    return self:skip("optimizer", "no optimizer fixture")
  end
  local optim = require "hero.optim"
  local params = m:named_parameters()
  for _, p in ipairs(params) do p[2].grad = nil end
  local opt = optim.AdamW(params, {lr = oc.learning_rate, betas = oc.betas, eps = oc.eps,
    weight_decay = oc.weight_decay, no_decay = {"bias", "LayerNorm.bias", "LayerNorm.weight"}})
  local trace_path = self:path("optim_trace.safetensors")
  local trace = exists(trace_path) and require("hero.io").load(trace_path)
  for step, task in ipairs(oc.tasks_per_update) do
    local losses = {}
    for mb = 1, oc.gradient_accumulation_steps do
      local name = mb == 1 and "batch_" .. task or string.format("optim_batch_%s_mb%d", task, mb - 1)
      local out = m:forward(self:batch(name), task)
      out.loss:backward()
      losses[mb] = out.loss
    end
    opt:set_lr(optim.warmup_linear(oc.learning_rate, step, oc.warmup_steps, oc.num_train_steps))
    local norm = optim.clip_grad_norm(params, oc.grad_norm)
    opt:step()
    opt:zero_grad()
    if trace then
      local prefix = "step" .. step .. "."
      self:record("optim_trace.safetensors", prefix .. "grad_norm_before_clip", core.tensor(norm),
        trace[prefix .. "grad_norm_before_clip"], "activations")
      for mb = 1, #losses do
        local key = prefix .. "micro_loss" .. (mb - 1)
        if trace[key] then self:record("optim_trace.safetensors", key, losses[mb], trace[key], "activations") end
      end
    end
  end
  local expected = require("hero.io").load(self:path("params_after_step3.safetensors"))
  for _, p in ipairs(params) do
    if expected[p[1]] then self:record("params_after_step3.safetensors", p[1], p[2], expected[p[1]], "params") end
  end
end

function Runner:checkpoints()
  local weights = require("hero.io").load(self:path("weights.safetensors"))
  for _, name in ipairs {"model_fp16.pt", "model_fp16_legacy.pt"} do
    if self.config.files[name] then
      local ok, loaded = pcall(require("hero.io").load, self:path(name))
      if not ok then
        self:skip(name, tostring(loaded))
      else
        for k, t in pairs(weights) do
          if loaded[k] then
            -- the release format stores fp16: compare against the fp32 weights rounded to fp16
            self:record(name, k, loaded[k]:float(), t:half():float(), "params")
          else
            self:record(name, k, core.full(t:size(), 0 / 0), t, "params")
          end
        end
      end
    end
  end
end

-- ---------------------------------------------------------------------------------------------
-- TVC captioning (HeroForTvc): forward, gradients and greedy decoding.
-- The model is the encoder weights plus the fixture's freshly initialised heads. Greedy ids are
-- integer tensors compared with the parameter bound (atol 1e-5 < 1, i.e. exactly).
function Runner:tvc()
  local io_ = require "hero.io"
  local c = self.config
  local files = c.files
  local cfg = c.model_config.tvc
  if not cfg then return self:skip("tvc", "config.json has no model_config.tvc") end
  local m = require("hero.models").HeroForTvc(cfg, {vfeat_dim = c.constants.vfeat_dim,
    max_frm_seq_len = c.constants.max_frm_seq_len})
  local w = io_.load(self:path("weights.safetensors"))
  if files["tvc_head_init.safetensors"] then
    -- PyTorch's random stream is not reproduced: the heads take the reference's initial values
    for k, t in pairs(io_.load(self:path("tvc_head_init.safetensors"))) do w[k] = t end
  end
  m:load_checkpoint(w)
  for _, entry in ipairs(m:named_modules()) do
    if entry[2].__name == "Dropout" then entry[2].p = 0 end
    if entry[2].attention_dropout then entry[2].attention_dropout = 0 end
  end
  local batch = self:batch("tvc_batch")
  local out = m:forward(batch)
  local expected = files["tvc_outputs.safetensors"] and io_.load(self:path("tvc_outputs.safetensors")) or {}
  local names = {}
  for k in pairs(expected) do if out[k] then names[#names + 1] = k end end
  table.sort(names)
  for _, k in ipairs(names) do self:record("tvc_outputs.safetensors", k, out[k], expected[k], "activations") end
  if files["tvc_grads.safetensors"] then
    out.loss:backward()
    local g = io_.load(self:path("tvc_grads.safetensors"))
    local info = self.per_file["tvc_grads.safetensors"] or {}
    local near = {}
    for _, n in ipairs(info.near_zero_tensors or {}) do near[n] = true end
    for _, p in ipairs(m:named_parameters()) do
      local name, t = p[1], p[2]
      if g[name] then
        self:record("tvc_grads.safetensors", name, t.grad or core.full(g[name]:size(), 0 / 0), g[name], "gradients",
          near[name] and info.file_scale_median_maxabs or nil)
      end
    end
  end
  local gd = c.downstream and c.downstream.tvc and c.downstream.tvc.greedy_decode
  if gd and expected.greedy_output_ids then
    local caps, info = m:greedy_decode(batch, {max_step = gd.max_step, bos = gd.bos, eos = gd.eos})
    self:record("tvc_outputs.safetensors", "greedy_output_ids", info.output_ids, expected.greedy_output_ids, "params")
    if expected.greedy_step_argmax then
      self:record("tvc_outputs.safetensors", "greedy_step_argmax", info.step_argmax, expected.greedy_step_argmax,
        "params")
    end
    -- the captions after the EOS cut, as a table of ids padded with -1 so the runner can compare tensors
    local ref = gd.outputs_cut_at_eos
    local width = 0
    for i = 1, math.max(#caps, #ref) do width = math.max(width, #(caps[i] or {}), #(ref[i] or {})) end
    local function padded(rows, n)
      local t = {}
      for i = 1, n do
        t[i] = {}
        for j = 1, width do t[i][j] = rows[i] and rows[i][j] or -1 end
      end
      return core.tensor(t, {dtype = "i64"})
    end
    local n = math.max(#caps, #ref)
    if width > 0 then
      self:record("tvc_greedy_decode", "outputs_cut_at_eos", padded(caps, n), padded(ref, n), "params")
    end
  end
end
-- ---------------------------------------------------------------------------------------------

--- Runs every case; returns the results and whether all passed.
function parity.run(dir, opts)
  opts = opts or {}
  local config = json.read_file(dir .. "/config.json")
  local tol = config.tolerances and config.tolerances.recommended
  if not tol then error("parity: " .. dir .. "/config.json has no tolerances.recommended", 2) end
  local per_file = {}
  for f, v in pairs(config.tolerances.fp32_vs_fp64 and config.tolerances.fp32_vs_fp64.per_file or {}) do
    per_file[f] = v
  end
  local r = setmetatable({dir = dir, config = config, tol = tol, per_file = per_file, results = {}, ok = true,
                          print = opts.print}, Runner)
  local m = r:model()
  r:outputs_and_grads(m)
  r:optimizer_updates(m)
  r:checkpoints()
  for _, head in ipairs {"vcmr", "videoqa", "violin"} do
    if config.files[head .. "_batch.safetensors"] then
      r:skip(head, "downstream heads are not part of this runner yet")
    end
  end
  if config.files["tvc_batch.safetensors"] then r:tvc() end
  return r.results, r.ok
end

return parity
