local hero = require "hero"
local helper = require "spec_helper"
local fx = helper.load_fixture("hero_smoke_batches.lua")
local ls = helper.load_fixture("tvc.lua")
local cfg = fx.config
local tvc_ref = cfg.downstream.tvc

local function load(name) return hero.load(helper.fixture("hero-smoke/" .. name .. ".safetensors")) end

local function batch()
  local b = load("tvc_batch")
  for k, v in pairs(fx.tvc_batch) do b[k] = v end
  return b
end

local function new_model(opts)
  opts = opts or {}
  return hero.models.HeroForTvc(cfg.model_config.tvc, {vfeat_dim = cfg.constants.vfeat_dim,
    max_frm_seq_len = cfg.constants.max_frm_seq_len, lsr = opts.lsr, generator = opts.generator})
end

--- The reference's fine-tuning model: encoder weights + the fixture's initial heads, dropout 0.
local function model()
  local m = new_model()
  local w = load("weights")
  for k, t in pairs(load("tvc_head_init")) do w[k] = t end
  local report = m:load_checkpoint(w)
  -- buffers are built by the constructor; the pre-training heads are foreign to the TVC model
  assert.same({"decoder.tri_mask", "loss_func.one_hot"}, report.missing)
  for _, name in ipairs(report.unexpected) do
    assert.is_truthy(name:find("^q_feat_attn%.") or name:find("^video_"), name)
  end
  for _, entry in ipairs(m:named_modules()) do
    if entry[2].__name == "Dropout" then entry[2].p = 0 end
    if entry[2].attention_dropout then entry[2].attention_dropout = 0 end
  end
  return m
end

describe("HeroForTvc structure", function()
  local m = new_model()

  it("has exactly the reference's state_dict: v_encoder, heads, the two buffers", function()
    local expected = {}
    for k, t in pairs(load("weights")) do
      if k:find("^v_encoder%.") then expected[k] = t:size() end
    end
    for k, t in pairs(load("tvc_head_init")) do expected[k] = t:size() end
    expected["decoder.tri_mask"] = {1024, 1024}
    expected["loss_func.one_hot"] = {1, 1000}
    local got = {}
    for k, t in pairs(m:state_dict()) do got[k] = t:size() end
    got["v_encoder.f_encoder.lm_head.decoder.weight"] = nil -- tied to the word embeddings
    expected["v_encoder.f_encoder.lm_head.decoder.weight"] = nil
    assert.same(expected, got)
    assert.is_not_nil(m:state_dict()["decoder.layer.0.intermidiate.dense.weight"])
  end)

  it("builds the causal mask and the smoothing distribution as the reference's buffers", function()
    local tri = m.decoder.tri_mask
    assert.same({{0, -10000, -10000}, {0, 0, -10000}, {0, 0, 0}}, tri:narrow(1, 1, 3):narrow(2, 1, 3):totable())
    assert.equal(0, tri[1024][1024]:item())
    assert.equal(-10000, tri[1][1024]:item())
    assert.equal(-10000 * (1024 * 1023 / 2), tri:double():sum():item())
    assert.tensor_near(m.loss_func.one_hot, hero.full({1, 1000}, 0.1 / 999))
  end)

  it("initialises the heads with PyTorch's defaults, like the reference's fixture values", function()
    local ref = load("tvc_head_init")
    local sd = m:state_dict()
    for name, t in pairs(ref) do
      local mine = sd[name]
      if name:find("LayerNorm%.weight$") then
        assert.same(t:totable(), mine:totable())
      elseif name:find("LayerNorm%.bias$") then
        assert.equal(0, mine:abs():max():item())
      elseif name == "position_embeddings.weight" then
        -- N(0, 1): both have a standard deviation near 1 (2048 draws)
        assert.is_true(math.abs(mine:std():item() - 1) < 0.1, name)
        assert.is_true(math.abs(t:std():item() - 1) < 0.1, name)
      else
        -- Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
        local fan_in = sd[name:gsub("bias$", "weight")]:size(2)
        local bound = 1 / math.sqrt(fan_in)
        assert.is_true(mine:abs():max():item() <= bound, name)
        assert.is_true(mine:abs():max():item() > 0.8 * bound or mine:numel() < 100, name)
        assert.is_true(t:abs():max():item() <= bound * (1 + 1e-6), name)
      end
    end
  end)

  it("rejects a config without a decoder and inconsistent inputs", function()
    helper.assert_error_contains(function()
      hero.models.HeroForTvc({f_config = cfg.model_config.tvc.f_config, c_config = cfg.model_config.tvc.c_config},
        {vfeat_dim = 24})
    end, "d_config")
    local enc = hero.zeros(2, 3, 64)
    helper.assert_error_contains(function()
      m:decode(enc, hero.ones({2, 4}, {dtype = "i64"}), hero.zeros({2, 2}, {dtype = "i64"}),
        hero.arange(2):unsqueeze(1))
    end, "segment mask has 4 frames")
    helper.assert_error_contains(function()
      m:decode(enc, hero.ones({3, 3}, {dtype = "i64"}), hero.zeros({2, 2}, {dtype = "i64"}),
        hero.arange(2):unsqueeze(1))
    end, "2 captions")
    helper.assert_error_contains(function() m:beam_search(batch(), {beam_size = 0}) end, "beam_size")
    helper.assert_error_contains(function() m:greedy_decode(batch(), {max_step = 0}) end, "max_step")
  end)
end)

describe("HeroForTvc label-smoothed loss", function()
  local L = hero.models.HeroForTvc.LabelSmoothingLoss
  local logits = hero.tensor(ls.logits, {dtype = "f64"})
  local target = hero.tensor(ls.target, {dtype = "i64"})

  it("is KL(q || p) per kept target token, as computed with NumPy", function()
    local f = L(0.1, 7, {ignore_index = -1, dtype = "f64"})
    assert.tensor_near(f:forward(logits, target), ls.lsr_0_1)
    -- lsr 1: the target's own probability is 0 and contributes 0 (not NaN)
    local g = L(1.0, 7, {ignore_index = -1, dtype = "f64"})
    assert.tensor_near(g:forward(logits, target), ls.lsr_1)
  end)

  it("is differentiable, and lsr 0 falls back to plain cross entropy, 0 at the dropped positions", function()
    local x = logits:clone():requires_grad_()
    local f = L(0.1, 7, {ignore_index = -1, dtype = "f64"})
    f:forward(x, target):sum():backward()
    -- d/dlogits of KL = softmax - q on kept rows; 0 on dropped rows
    local p = logits:softmax(2)
    local expected = p:totable()
    for i, t in ipairs(ls.target) do
      for v = 1, 7 do
        if t == -1 then expected[i][v] = 0
        else expected[i][v] = expected[i][v] - (v - 1 == t and 0.9 or 0.1 / 6) end
      end
    end
    assert.tensor_near(x.grad, expected)
    local m = new_model({lsr = 0})
    assert.is_nil(m.loss_func)
    assert.is_nil(m:state_dict()["loss_func.one_hot"])
    local wide = hero.zeros(6, 1000, {dtype = "f64"})
    wide:narrow(2, 1, 7):copy_(logits)
    wide:narrow(2, 8, 993):fill_(-1e4) -- exp underflows to 0: the same distribution
    assert.tensor_near(m:caption_loss(wide, target), ls.plain)
  end)

  it("refuses logits of another vocabulary size", function()
    helper.assert_error_contains(function() L(0.1, 5, {ignore_index = -1}):forward(logits, target) end,
      "7 classes", "5")
  end)
end)

describe("HeroForTvc against the reference", function()
  local m = model()
  local b = batch()

  it("reproduces segments, decoder activations, logits and the loss", function()
    local out = m:forward(b)
    local expected = load("tvc_outputs")
    for _, name in ipairs {"c_out", "encoder_outputs", "dec_emb", "dec_out", "logits", "loss_per_token", "loss"} do
      assert.parity(out[name], expected[name], "activations")
    end
    assert.near(tvc_ref.value, out.loss:item(), 1e-5)
    -- the empty segment (caption starting after the last frame) is all zeros
    assert.equal(0, out.encoder_outputs[4]:abs():max():item())
  end)

  it("reproduces the gradients of the heads and of the encoder", function()
    for _, p in ipairs(m:named_parameters()) do p[2].grad = nil end
    local out = m:forward(b)
    out.loss:backward()
    local expected = load("tvc_grads")
    local info = cfg.parity.per_file["tvc_grads.safetensors"]
    local near = {}
    for _, n in ipairs(info.near_zero_tensors) do near[n] = true end
    local checked = 0
    for _, p in ipairs(m:named_parameters()) do
      local name, t = p[1], p[2]
      if expected[name] then
        assert.is_not_nil(t.grad, name .. " has no gradient")
        local ok, msg = helper.parity(t.grad, expected[name], "gradients", near[name] and info.file_scale or nil)
        assert(ok, name .. ": " .. msg)
        checked = checked + 1
      end
    end
    assert.equal(37, checked)
  end)

  it("decodes greedily exactly as TvcGenerator.greedy_decode, in evaluation mode", function()
    local g = tvc_ref.greedy_decode
    local expected = load("tvc_outputs")
    m:train()
    local caps, info = m:greedy_decode(b, {max_step = g.max_step, bos = g.bos, eos = g.eos})
    assert.same(g.outputs_cut_at_eos, caps)
    assert.same(expected.greedy_output_ids:totable(), info.output_ids:totable())
    assert.same(expected.greedy_step_argmax:totable(), info.step_argmax:totable())
    assert.parity(info.last_logits:topk(2, 3), expected.greedy_last_step_top2_logits, "activations")
    assert.is_true(m.training) -- the mode is restored
    assert.is_false(info.last_logits.requires_grad)
  end)

  it("cuts each caption at the first EOS", function()
    -- an EOS bias large enough that the third step picks EOS everywhere: the captions end there
    local bias = m.v_encoder.f_encoder.lm_head.bias
    local saved = bias:detach():clone()
    hero.no_grad(function() bias:narrow(1, 3, 1):fill_(1e4) end)
    local caps, info = m:greedy_decode(b, {max_step = 3})
    hero.no_grad(function() bias:copy_(saved) end)
    assert.same({{}, {}, {}, {}}, caps)
    assert.same({2, 2, 2}, info.output_ids[1]:totable())
  end)
end)

describe("HeroForTvc beam search", function()
  local m = model()
  local b = batch()

  --- Sum of log-probabilities of ids (after BOS, EOS appended if finished) under teacher forcing.
  local function logprob(n, ids, finished)
    return hero.no_grad(function()
      m:evaluate()
      local enc = m:encode(b)
      local seq = {0}
      for _, id in ipairs(ids) do seq[#seq + 1] = id end
      if finished then seq[#seq + 1] = 2 end
      local L = #seq - 1
      local input = hero.tensor({{table.unpack(seq, 1, L)}}, {dtype = "i64"})
      local sel = hero.tensor({n - 1}, {dtype = "i64"})
      local logits = m:decode(enc:index_select(1, sel), b.cap_attn_mask:index_select(1, sel), input,
        hero.arange(L):unsqueeze(1))
      local lp = logits[1]:double():log_softmax(2)
      local s = 0
      for j = 1, L do s = s + lp[j][seq[j + 1] + 1]:item() end
      m:train()
      return s
    end)
  end

  it("with beam_size 1 gives the greedy captions", function()
    local best = m:beam_search(b, {beam_size = 1, max_step = tvc_ref.greedy_decode.max_step})
    assert.same(tvc_ref.greedy_decode.outputs_cut_at_eos, best)
    local greedy = m:greedy_decode(b, {max_step = 8})
    assert.same(greedy, (m:beam_search(b, {beam_size = 1, max_step = 8})))
  end)

  it("ranks n-best hypotheses by their teacher-forced log-probability and length penalty", function()
    local _, all = m:beam_search(b, {beam_size = 4, n_best = 3, max_step = 5, length_penalty = 0})
    for n = 1, 4 do
      assert.equal(3, #all[n])
      for i, h in ipairs(all[n]) do
        local finished = h.length == #h.ids + 1
        assert.near(logprob(n, h.ids, finished), h.logprob, 1e-4)
        assert.equal(h.logprob, h.score)
        if i > 1 then assert.is_true(all[n][i - 1].score >= h.score) end
      end
      -- the best of 4 beams is at least as likely as the greedy caption here (up to rounding)
      local greedy = tvc_ref.greedy_decode.outputs_cut_at_eos[n]
      assert.is_true(all[n][1].logprob >= logprob(n, greedy, false) - 1e-4)
    end
    local _, lp = m:beam_search(b, {beam_size = 4, n_best = 2, max_step = 5, length_penalty = 1.5})
    for n = 1, 4 do
      for _, h in ipairs(lp[n]) do assert.near(h.logprob / h.length ^ 1.5, h.score, 1e-12) end
    end
  end)

  it("with a beam as wide as the vocabulary is exact search (two steps, brute force)", function()
    local best, all = m:beam_search(b, {beam_size = 1000, max_step = 2})
    hero.no_grad(function()
      m:evaluate()
      local enc = m:encode(b)
      for n = 1, 4 do
        -- every prefix [BOS, t1] at once; position 1 gives the first step for all of them
        local sel = hero.zeros({1000}, {dtype = "i64"}):fill_(n - 1)
        local input = hero.stack({hero.zeros({1000}, {dtype = "i64"}), hero.arange(1000)}, 2)
        local lp = m:decode(enc:index_select(1, sel), b.cap_attn_mask:index_select(1, sel), input,
          hero.arange(2):unsqueeze(1)):double():log_softmax(3)
        local first = lp[1][1]
        local best_s, best_ids = first[3]:item(), {} -- EOS first: the empty caption
        local two = lp:select(2, 2) + first:unsqueeze(2)   -- [t1, t2]
        two:select(1, 3):fill_(-1 / 0)                      -- after EOS nothing follows
        local flat_v, flat_i = two:reshape(-1):max(1)
        if flat_v:item() > best_s then
          best_s = flat_v:item()
          local i = flat_i:item()
          local t1, t2 = i // 1000, i % 1000
          best_ids = t2 == 2 and {t1} or {t1, t2}
        end
        assert.same(best_ids, best[n])
        assert.near(best_s, all[n][1].logprob, 1e-6)
      end
      m:train()
    end)
  end)
end)
