--- hero.parity: runs every case of a reference fixture directory (laid out like the smoke fixture
-- of the HERO reference implementation: config.json with a `files` index, weights.safetensors,
-- batch_<task>.safetensors + .json, outputs_<task>, grads_<task>, optimizer updates and the
-- reference's .pt checkpoints) against hero, with the tolerances the fixture recommends.
--   local results, ok = hero.parity.run(dir [, {print = true, device = "cuda:0"}])
-- Each result is {case, tensor, max_abs, max_rel, bound, ok} (or {case, skipped = reason}, or
-- {case, error = message} when a case raised one). With `device`, the models and batches run
-- there (the reference values stay on the CPU; the comparison reads the results back).
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
  local a, e = actual:detach():cpu():double(), expected:double()
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
  return self:to_device(b)
end

--- The batch (a table of tensors and other values) on the runner's device.
function Runner:to_device(b)
  if not self.device then return b end
  return require("hero.train").Trainer.batch_to(b, self.device)
end

function Runner:on_device(m)
  if self.device then m:to(self.device) end
  return m
end

--- Runs one group of cases; an error is recorded as a failed case instead of ending the run.
function Runner:protected(case, fn, ...)
  local ok, err = pcall(fn, self, ...)
  if ok then return end
  self.results[#self.results + 1] = {case = case, error = tostring(err), ok = false}
  self.ok = false
  if self.print then print(string.format("FAIL %-28s raised: %s", case, tostring(err))) end
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
  -- every intermediate the fixture holds is compared, so every position is computed
  return self:on_device(m:keep_activations())
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
  self:on_device(m:keep_activations())
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

-- Downstream heads: VCMR (training forward + full-corpus evaluation), VideoQA, VIOLIN
-- ---------------------------------------------------------------------------------------------

--- A non-tensor check (rankings, metrics): ok or not, with a short detail.
function Runner:record_check(case, name, ok, detail)
  self.results[#self.results + 1] = {case = case, tensor = name, ok = ok, detail = detail}
  if not ok then self.ok = false end
  if self.print then print(string.format("%-4s %-28s %-60s %s", ok and "ok" or "FAIL", case, name, detail or "")) end
end

--- A fine-tuning model built as the reference's train_*.py: fine-tuning config, the smoke weights,
-- the head_init values for the freshly initialised heads, every dropout p = 0, training mode.
function Runner:downstream_model(head)
  local models = require "hero.models"
  local c = self.config
  local ds = c.downstream and c.downstream[head] or {}
  local opts = {vfeat_dim = c.constants.vfeat_dim, max_frm_seq_len = c.constants.max_frm_seq_len}
  local m
  if head == "vcmr" then
    local t = ds.train or {}
    opts.lw_st_ed, opts.lw_neg_ctx, opts.lw_neg_q = t.lw_st_ed, t.lw_neg_ctx, t.lw_neg_q
    opts.margin, opts.ranking_loss_type, opts.drop_svmr_prob = t.margin, t.ranking_loss_type, t.drop_svmr_prob or 0
    if t.use_hard_negative then opts.hard_negative = {pool_size = t.hard_pool_size, weight = t.hard_neg_weight} end
    m = models.HeroForVcmr(c.model_config.finetune, opts)
  elseif head == "videoqa" then
    opts.lw_st_ed = ds.lw_st_ed
    m = models.HeroForVideoQA(c.model_config.finetune, opts)
  else
    m = models.HeroForViolin(c.model_config.finetune, opts)
  end
  m:load_checkpoint(require("hero.io").load(self:path("weights.safetensors")))
  if exists(self:path(head .. "_head_init.safetensors")) then
    m:load_checkpoint(require("hero.io").load(self:path(head .. "_head_init.safetensors")))
  end
  return self:on_device(models.downstream.set_dropout(m, 0):keep_activations())
end

local HEAD_TASK = {vcmr = "tvr", videoqa = "tvqa", violin = "violin"}

--- <head>_outputs and <head>_grads of one head (one forward, one backward from zero gradients).
function Runner:downstream_head(head)
  local files = self.config.files
  local out_file, grad_file = head .. "_outputs.safetensors", head .. "_grads.safetensors"
  local m = self:downstream_model(head)
  local out = m:forward(self:batch(head .. "_batch"), HEAD_TASK[head])
  if files[out_file] then
    local expected = require("hero.io").load(self:path(out_file))
    local names = {}
    for k in pairs(expected) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do
      self:record(out_file, k, out[k] or core.full(expected[k]:size(), 0 / 0), expected[k], "activations")
    end
  end
  if files[grad_file] then
    out.loss:backward()
    local expected = require("hero.io").load(self:path(grad_file))
    local info = self.per_file[grad_file] or {}
    local near = {}
    for _, n in ipairs(info.near_zero_tensors or {}) do near[n] = true end
    local own = {}
    for _, p in ipairs(m:named_parameters()) do own[p[1]] = p[2] end
    local names = {}
    for k in pairs(expected) do names[#names + 1] = k end
    table.sort(names)
    for _, name in ipairs(names) do
      local g = own[name] and own[name].grad or core.full(expected[name]:size(), 0 / 0)
      self:record(grad_file, name, g, expected[name], "gradients", near[name] and info.file_scale_median_maxabs or nil)
    end
  end
end

-- Compares a submission's prediction lists: video, start and end exactly, scores within the
-- activation tolerance. One check per task.
function Runner:compare_submission(case, got, expected)
  local rtol = self.tol.activations_logits_losses.rtol
  for _, task in ipairs {"VCMR", "SVMR", "VR"} do
    if expected[task] then
      local ok, detail = got[task] ~= nil and #got[task] == #expected[task], ""
      for i, e in ipairs(ok and expected[task] or {}) do
        local g = got[task][i]
        if g.desc_id ~= e.desc_id or #g.predictions ~= #e.predictions then
          ok, detail = false, string.format("query %s: %d predictions, expected %d", tostring(e.desc_id),
            #g.predictions, #e.predictions)
          break
        end
        for j, p in ipairs(e.predictions) do
          local q = g.predictions[j]
          if q[1] ~= p[1] or q[2] ~= p[2] or q[3] ~= p[3] or math.abs(q[4] - p[4]) > rtol * math.abs(p[4]) then
            ok, detail = false, string.format("query %s rank %d: {%s}, expected {%s}", tostring(e.desc_id), j,
              table.concat(q, ", "), table.concat(p, ", "))
            break
          end
        end
        if not ok then break end
      end
      self:record_check(case, task .. " predictions", ok, ok and (#expected[task] .. " queries") or detail)
    end
  end
end

--- validate_full_vcmr on the smoke corpus: the inference tensors, the submissions before and after
-- NMS, and the VR metrics (the only ones the fixture's query list determines: each query's
-- ground-truth video is the video of its SVMR predictions; the moments are not in the fixture).
function Runner:vcmr_evaluation()
  local files = self.config.files
  if not (files["vcmr_eval.json"] and files["vcmr_eval_query_batches.safetensors"]) then return end
  local ev = json.read_file(self:path("vcmr_eval.json"))
  local m = self:downstream_model("vcmr")
  local videos = {}
  for i = 0, 1000 do
    local name = "vcmr_eval_video_batch" .. i
    if not files[name .. ".safetensors"] then break end
    videos[#videos + 1] = self:batch(name)
  end
  local qb = require("hero.io").load(self:path("vcmr_eval_query_batches.safetensors"))
  local queries = {}
  for i = 0, 1000 do
    local p = "query_batch" .. i .. "."
    if not qb[p .. "query_input_ids"] then break end
    queries[#queries + 1] = self:to_device({query_input_ids = qb[p .. "query_input_ids"],
      query_pos_ids = qb[p .. "query_pos_ids"], query_attn_masks = qb[p .. "query_attn_masks"]})
  end
  local sub = ev.submission_before_nms
  local name_of = {}
  for name, i in pairs(sub.video2idx) do name_of[i] = name end
  local qids, qvids = {}, {}
  for i, e in ipairs(sub.SVMR) do qids[i], qvids[i] = e.desc_id, name_of[e.predictions[1][1]] end
  local opts = {}
  for k, v in pairs(ev.model_opts) do opts[k] = v end
  opts.tasks = ev.opts and ev.opts.full_eval_tasks
  local res = m:evaluate_full({batches = videos, video_ids = ev.video_ids_sorted, video2idx = sub.video2idx},
    {batches = queries, query_ids = qids, query_vids = qvids}, nil, opts)
  local out_file = "vcmr_eval_outputs.safetensors"
  if files[out_file] then
    local expected = require("hero.io").load(self:path(out_file))
    local names = {}
    for k in pairs(expected) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do
      self:record(out_file, k, res.tensors[k] or core.full(expected[k]:size(), 0 / 0), expected[k], "activations")
    end
  end
  local R = require "hero.eval.retrieval"
  self:compare_submission("vcmr_eval.json before NMS", res.submission, sub)
  if ev.submission_after_nms then
    self:compare_submission("vcmr_eval.json after NMS", R.nms_submission(res.submission, opts),
      ev.submission_after_nms)
  end
  if ev.metrics_no_nms and ev.metrics_no_nms.VR and res.submission.VR then
    local gt = {}
    for i, id in ipairs(qids) do gt[i] = {desc_id = id, vid_name = qvids[i]} end
    local got = R.eval_by_task_type(res.submission.VR, sub.video2idx, gt, "VR", {use_desc_type = false})
    local ok, detail = true, ""
    for k, v in pairs(ev.metrics_no_nms.VR) do
      if got[k] ~= v then
        ok, detail = false, string.format("%s = %s, expected %s", k, tostring(got[k]), tostring(v))
      end
    end
    self:record_check("vcmr_eval.json metrics", "VR recall", ok, detail)
  end
end

function Runner:downstream()
  for _, head in ipairs {"vcmr", "videoqa", "violin"} do
    if self.config.files[head .. "_batch.safetensors"] then self:downstream_head(head) end
  end
  self:vcmr_evaluation()
end

--- Runs every case; returns the results and whether all passed.
function parity.run(dir, opts)
  if type(dir) ~= "string" then error("parity.run: expected a fixture directory, got " .. type(dir), 2) end
  opts = require("hero.models.options").check("parity.run", opts, {device = "string", print = "any"}, 2)
  local config = json.read_file(dir .. "/config.json")
  local tol = config.tolerances and config.tolerances.recommended
  if not tol then error("parity: " .. dir .. "/config.json has no tolerances.recommended", 2) end
  local per_file = {}
  for f, v in pairs(config.tolerances.fp32_vs_fp64 and config.tolerances.fp32_vs_fp64.per_file or {}) do
    per_file[f] = v
  end
  local r = setmetatable({dir = dir, config = config, tol = tol, per_file = per_file, results = {}, ok = true,
                          print = opts.print, device = opts.device ~= "cpu" and opts.device or nil}, Runner)
  local m = r:model()
  r:protected("outputs and gradients", r.outputs_and_grads, m)
  r:protected("optimizer", r.optimizer_updates, m)
  r:protected("checkpoints", r.checkpoints)
  r:protected("downstream", r.downstream)
  if config.files["tvc_batch.safetensors"] then r:protected("tvc", r.tvc) end
  return r.results, r.ok
end

return parity
