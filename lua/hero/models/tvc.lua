--- HeroForTvc: video captioning with HERO (hero-spec §5.5), the reference's HeroForTvc with its
-- parameter and buffer names:
--   v_encoder.*                      the hierarchical encoder (HierarchicalVlModel)
--   position_embeddings.weight       [d_config.max_position_embeddings, H], PyTorch default init N(0, 1)
--   emb_LayerNorm.{weight,bias}      eps 1e-5
--   decoder.layer.{l}.{self_attention.{query,key,value}, add_norm_1.{dense,LayerNorm},
--                      dec_enc_attention.{query,key,value}, add_norm_2.{dense,LayerNorm},
--                      intermidiate.dense, add_norm_3.{dense,LayerNorm}}   (sic: "intermidiate")
--   decoder.tri_mask                 [1024, 1024] buffer, (1 - tril(1)) * -10000
--   loss_func.one_hot                [1, V] buffer, lsr / (V - 1)  (V = f_config.vocab_size)
-- The decoder shares the word embeddings and the MLM head (lm_head) of the cross-modal transformer.
--
-- forward(batch) -> {loss, loss_per_token, logits, encoder_outputs, dec_emb, dec_out, c_out}
-- greedy_decode(batch, opts) -> the reference's TvcGenerator.greedy_decode
-- beam_search(batch, opts)   -> beam search (beam_size 1 gives the greedy captions)
local core = require "hero.core"
local nn = require "hero.nn"
local Hierarchical = require "hero.models.hierarchical"
local config = require "hero.config"
local batch_shapes = require "hero.models.batch_shapes"
local enc = require "hero.models.encoders"
local trf = require "hero.nn.transformer"

local M = nn.Module:extend("HeroForTvc")

-- The reference hard-codes the causal mask buffer at 1024 positions (BertDecoder).
local TRI_MASK_LEN = 1024

--- (1 - tril(ones(n, n))) * -10000: 0 on and below the diagonal, -10000 above.
local function tri_mask(n, dtype)
  local row = core.arange(n):unsqueeze(2)
  local col = core.arange(n):unsqueeze(1)
  return core.zeros({n, n}, {dtype = dtype or "f32"}):masked_fill(col:gt(row), -10000.0)
end

-- The reference's LabelSmoothingLoss: KL(q || p) per target token, with q = one_hot (lsr / (V - 1)
-- everywhere) except `confidence` = 1 - lsr at the target; targets equal to ignore_index are dropped.
local LabelSmoothingLoss = nn.Module:extend("LabelSmoothingLoss")
function LabelSmoothingLoss:__init(lsr, vocab_size, opts)
  opts = opts or {}
  if not (lsr > 0 and lsr <= 1) then
    error(string.format("LabelSmoothingLoss: label smoothing must be in (0, 1], got %s", tostring(lsr)), 3)
  end
  self.ignore_index = opts.ignore_index or -100
  self.confidence = 1.0 - lsr
  self.vocab_size = vocab_size
  self:register_buffer("one_hot", core.full({1, vocab_size}, lsr / (vocab_size - 1), {dtype = opts.dtype or "f32"}))
end

--- logits [N, V], target [N] (i64) -> per valid token loss [n] (reduction "none", as the reference).
function LabelSmoothingLoss:forward(logits, target)
  local V = logits:size(2)
  if V ~= self.one_hot:size(2) then
    self:error("logits have %d classes but the smoothing distribution has %d", V, self.one_hot:size(2))
  end
  local valid = target:ne(self.ignore_index)
  local idx = valid:nonzero():squeeze(2)
  local t = target:index_select(1, idx)
  local logp = logits:index_select(1, idx):log_softmax(2)
  local n = t:size(1)
  -- the smoothed target distribution, a constant: one_hot with the confidence scattered in
  local q = self.one_hot:detach():to(logp:dtype()):expand(n, V):contiguous()
  q = q:scatter(2, t:unsqueeze(2), core.full({n, 1}, self.confidence, {dtype = q:dtype(), device = q:device()}))
  -- kl_div(logp, q) = q * (log q - logp), 0 where q = 0
  local qlogq = core.where(q:gt(0), q * q:clamp(1e-45, nil):log(), 0)
  return (qlogq - q * logp):sum(2)
end

--- One decoder layer (BertDecoderLayer): causal self-attention, attention over the video segment,
-- feed-forward, each followed by dense + dropout + residual + LayerNorm.
local DecoderLayer = nn.Module:extend("BertDecoderLayer")
function DecoderLayer:__init(o)
  self:add_module("self_attention", trf.SelfAttention(o))
  self:add_module("add_norm_1", trf.AddNorm(o))
  self:add_module("dec_enc_attention", trf.SelfAttention(o))
  self:add_module("add_norm_2", trf.AddNorm(o))
  self:add_module("intermidiate", trf.Intermediate(o))
  self:add_module("add_norm_3", trf.AddNorm(o, o.intermediate))
end
--- x [N, Lt, H]; enc [N, Lv, H]; enc_ext additive [N, Lt, Lv]; tri additive [N, Lt, Lt].
function DecoderLayer:forward(x, enc_out, enc_ext, tri)
  local a = self.add_norm_1:forward(self.self_attention:forward(x, tri), x)
  local c = self.add_norm_2:forward(self.dec_enc_attention:forward(a, enc_ext, enc_out), a)
  return self.add_norm_3:forward(self.intermidiate:forward(c), c)
end

local Decoder = nn.Module:extend("BertDecoder")
function Decoder:__init(o)
  local stack = nn.Sequential()
  for _ = 1, o.layers do stack:add(DecoderLayer(o)) end
  self:add_module("layer", stack)
  self:register_buffer("tri_mask", tri_mask(TRI_MASK_LEN, o.dtype))
end
--- x [N, Lt, H], enc_out [N, Lv, H], enc_mask [N, Lv] 0/1 -> [N, Lt, H].
function Decoder:forward(x, enc_out, enc_mask)
  local N, Lt, Lv = x:size(1), x:size(2), enc_out:size(2)
  if Lt > self.tri_mask:size(1) then
    self:error("captions of %d tokens exceed the causal mask of %d positions", Lt, self.tri_mask:size(1))
  end
  local tri = self.tri_mask:narrow(1, 1, Lt):narrow(2, 1, Lt):to(x:dtype()):unsqueeze(1):expand(N, Lt, Lt)
  local ext = nn.extended_mask(enc_mask, x:dtype()):unsqueeze(2):expand(N, Lt, Lv)
  for _, layer in ipairs(self.layer:children()) do x = layer:forward(x, enc_out, ext, tri) end
  return x
end

--- cfg: {f_config, c_config, d_config} (the reference's hero_tvc.json); opts: vfeat_dim (required),
-- max_frm_seq_len (100), lsr (0.1; 0 uses plain cross entropy), dtype, generator.
function M:__init(cfg, opts)
  local options = require "hero.models.options"
  opts = options.check(self.__name, opts, options.with(options.ENCODER, {lsr = "probability < 1"}), 3)
  config.check_model(cfg, self.__name, {"f_config", "c_config", "d_config"})
  local f, d = cfg.f_config, cfg.d_config
  self.cfg = cfg
  self.vocab_size = f.vocab_size
  self:add_module("v_encoder", Hierarchical(cfg, opts))
  -- heads keep PyTorch's default initialisation (hero-spec §9)
  self:add_module("position_embeddings", nn.Embedding(d.max_position_embeddings, d.hidden_size,
    {init = "torch", dtype = opts.dtype, generator = opts.generator}))
  self:add_module("emb_LayerNorm", nn.LayerNorm(d.hidden_size, {eps = 1e-5, dtype = opts.dtype}))
  local o = enc.encoder_opts(d, opts)
  o.init = "torch"
  self:add_module("decoder", Decoder(o))
  self.lsr = opts.lsr == nil and 0.1 or opts.lsr
  if self.lsr > 0 then
    self:add_module("loss_func", LabelSmoothingLoss(self.lsr, f.vocab_size, {ignore_index = -1, dtype = opts.dtype}))
  end
end

--- Per caption, the temporal-transformer outputs of its segment Y[v, st:ed] (0-based, end
-- exclusive), zero padded to the longest segment: [Ncap, Lseg, H]. clip_ranges: per video a list
-- of {st, ed}.
local function segments(Y, clip_ranges)
  local B, L, H = Y:size(1), Y:size(2), Y:size(3)
  local rows, lens, max_l = {}, {}, 0
  for v, segs in ipairs(clip_ranges) do
    if type(segs) ~= "table" then
      error(string.format("HeroForTvc: clip_ranges[%d] must be a list of {st, ed}, got %s", v, type(segs)), 3)
    end
    for k, se in ipairs(segs) do
      -- a negative start would read the previous video's frames (the rows are flat)
      if type(se) ~= "table" or math.type(se[1]) ~= "integer" or math.type(se[2]) ~= "integer" or se[1] < 0 then
        error(string.format("HeroForTvc: clip_ranges[%d][%d] must be {st, ed}, integer frames with st >= 0, got %s",
          v, k, type(se) == "table" and string.format("{%s, %s}", tostring(se[1]), tostring(se[2])) or type(se)), 3)
      end
      local st, ed = se[1], math.min(se[2], L)
      local n = math.max(ed - st, 0)
      lens[#lens + 1] = {v - 1, st, n}
      if n > max_l then max_l = n end
    end
  end
  if #lens == 0 then error("HeroForTvc: the batch has no caption (clip_ranges is empty)", 3) end
  if #clip_ranges ~= B then
    error(string.format("HeroForTvc: clip_ranges has %d videos, the encoder output %d", #clip_ranges, B), 3)
  end
  -- padded positions read an appended zero row, so they get (and pass back) nothing
  local zero_row = B * L
  for _, e in ipairs(lens) do
    for j = 0, max_l - 1 do rows[#rows + 1] = j < e[3] and (e[1] * L + e[2] + j) or zero_row end
  end
  local flat = core.cat({Y:reshape(B * L, H), core.zeros({1, H}, {dtype = Y:dtype(), device = Y:device()})}, 1)
  if max_l == 0 then return core.zeros({#lens, 0, H}, {dtype = Y:dtype(), device = Y:device()}) end
  return flat:index_select(1, core.tensor(rows, {dtype = "i64", device = Y:device()})):view(#lens, max_l, H)
end

--- The reference's encode: v_encoder's representation of each whole video, then each caption's
-- segment. Returns encoder_outputs [Ncap, Lseg, H] and the temporal-transformer output Y.
function M:encode(batch)
  local Y = self.v_encoder:forward_repr(batch)
  return segments(Y, batch.clip_ranges), Y
end

--- Decoder input embedding: LN_1e-5(word[ids] + tvc_pos[pos]) (no dropout, as the reference).
function M:embed(ids, pos_ids)
  local word = self.v_encoder.f_encoder.embeddings.word_embeddings:forward(ids)
  return self.emb_LayerNorm:forward(word + self.position_embeddings:forward(pos_ids))
end

--- The reference's decode without the loss: logits [N, Lt, V] and the decoder's input and output.
function M:decode(enc_out, enc_mask, ids, pos_ids)
  if enc_mask:size(1) ~= ids:size(1) or enc_out:size(1) ~= ids:size(1) then
    self:error("%d captions but %d segments and %d segment masks", ids:size(1), enc_out:size(1), enc_mask:size(1))
  end
  if enc_mask:size(2) ~= enc_out:size(2) then
    self:error("segment mask has %d frames, the segments %d", enc_mask:size(2), enc_out:size(2))
  end
  local e = self:embed(ids, pos_ids)
  local h = self.decoder:forward(e, enc_out, enc_mask)
  return self.v_encoder.f_encoder.lm_head:forward(h), e, h
end

--- The caption loss per position over the padded vocabulary, as the reference's two loss functions
-- give it: label smoothing (lsr > 0) drops the positions whose target is -1 and returns one value per
-- kept token; with lsr = 0, nn.CrossEntropyLoss(ignore_index=-1, reduction='none') returns one value
-- per position, 0 where the target is -1, so the mean that train_tvc.py takes runs over every
-- position of the padded captions.
function M:caption_loss(logits, targets)
  local V = self.vocab_size
  local flat = logits:reshape(-1, V)
  local t = targets:reshape(-1)
  if self.loss_func then return self.loss_func:forward(flat, t) end
  return core.cross_entropy(flat, t, {reduction = "none", ignore_index = -1})
end

--- batch: the reference's TVC collate (cap_input_ids, cap_pos_ids, cap_tgt_ids, cap_attn_mask,
-- clip_ranges and the representation fields). Returns {loss = the mean of caption_loss's values, ...}.
function M:forward(batch)
  batch_shapes.check_batch(self, "forward: the batch", batch, batch_shapes.DOWNSTREAM.tvc, self.v_encoder)
  local enc_out, Y = self:encode(batch)
  local logits, e, h = self:decode(enc_out, batch.cap_attn_mask, batch.cap_input_ids, batch.cap_pos_ids)
  local per = self:caption_loss(logits, batch.cap_tgt_ids)
  return {loss = per:mean(), loss_per_token = per, logits = logits, encoder_outputs = enc_out, dec_emb = e,
          dec_out = h, c_out = Y}
end

-- The decoding options of greedy_decode (beam = false) and beam_search, checked: a misspelt
-- max_steps decoded 30 steps, a NaN length penalty ranked by insertion order, and a step past the
-- decoder's positions failed only there.
local DECODE = {max_step = "integer >= 1", max_gen_step = "integer >= 1", bos = "integer >= 0", eos = "integer >= 0"}
local BEAM = {beam_size = "integer >= 1", length_penalty = "number", n_best = "integer >= 1"}
local function gen_opts(self, opts, beam)
  local options = require "hero.models.options"
  opts = options.check(self.__name .. (beam and ":beam_search" or ":greedy_decode"), opts,
    beam and options.with(DECODE, BEAM) or DECODE, 3)
  local max_step = opts.max_step or opts.max_gen_step or 30
  local positions = self.position_embeddings.weight:size(1)
  if max_step > positions then
    self:error("%s: max_step %d exceeds the decoder's %d positions", beam and "beam_search" or "greedy_decode",
      max_step, positions)
  end
  if beam and (opts.beam_size or 4) > self.vocab_size then
    self:error("beam_search: beam_size %d exceeds the vocabulary's %d tokens", opts.beam_size or 4, self.vocab_size)
  end
  return max_step, opts.bos or 0, opts.eos or 2, opts
end

--- Runs fn in evaluation mode without gradients, restoring the training flag afterwards.
function M:_inference(fn)
  local was = self.training
  self:evaluate()
  local ok, a, b = pcall(core.no_grad, fn)
  self:train(was)
  if not ok then error(a, 0) end
  return a, b
end

local function cut_eos(row, eos)
  local out = {}
  for _, id in ipairs(row) do
    if id == eos then break end
    out[#out + 1] = id
  end
  return out
end

--- The reference's TvcGenerator.greedy_decode (evaluation mode, no gradients): max_step steps, the
-- whole prefix re-run at every step, no early stop; the result is the argmax of the LAST step at
-- every position, cut at the first EOS. opts: max_step (30), bos (0), eos (2).
-- Returns the captions (Lua arrays of ids) and {output_ids [N, max_step], step_argmax [N, max_step],
-- last_logits [N, max_step, V]}.
function M:greedy_decode(batch, opts)
  local max_step, bos, eos = gen_opts(self, opts, false)
  return self:_inference(function()
    local enc_out = self:encode(batch)
    local mask = batch.cap_attn_mask
    local N = mask:size(1)
    local on = {dtype = "i64", device = mask:device()}
    local ids = core.zeros({N, max_step}, on)
    local pos = core.arange(max_step, on):unsqueeze(1)
    local steps = core.zeros({N, max_step}, on)
    local last = core.full({N}, bos, on)
    local logits, out_ids
    for step = 1, max_step do
      ids:select(2, step):copy_(last)
      logits = self:decode(enc_out, mask, ids:narrow(2, 1, step), pos:narrow(2, 1, step))
      out_ids = logits:argmax(3)
      last = out_ids:select(2, step)
      steps:select(2, step):copy_(last)
    end
    local caps = {}
    for i, row in ipairs(out_ids:totable()) do caps[i] = cut_eos(row, eos) end
    return caps, {output_ids = out_ids, step_argmax = steps, last_logits = logits}
  end)
end

--- Beam search over the same decoder (evaluation mode, no gradients). Every caption keeps up to
-- beam_size live hypotheses, all decoded together with the whole prefix re-run each step. Of all
-- (live hypothesis, next token) extensions, scored by cumulative log-probability (log_softmax of
-- the logits, in f64), the beam_size best are kept (ties: earlier hypothesis, then lower token
-- id). An extension ending in EOS is finished (the EOS counts in its length but is not returned)
-- and leaves the beam, which continues with fewer hypotheses; after max_step steps the live
-- hypotheses are finished as they are. Finished hypotheses are ranked by
-- logprob / length ^ length_penalty (length = generated tokens; length_penalty 0 ranks by the summed
-- log-probability, larger values favour longer captions). With beam_size 1 this picks the argmax
-- token at every step, i.e. the greedy captions.
-- opts: beam_size (4), length_penalty (0), max_step (30), bos (0), eos (2), n_best (1).
-- Returns the best caption per segment (Lua arrays of ids) and, per segment, the n_best finished
-- hypotheses {ids =, logprob =, score =, length =}, best first.
function M:beam_search(batch, opts)
  local max_step, bos, eos
  max_step, bos, eos, opts = gen_opts(self, opts, true)
  local K = opts.beam_size or 4
  local alpha = opts.length_penalty or 0
  local n_best = opts.n_best or 1
  if math.type(K) ~= "integer" or K < 1 then self:error("beam_size must be a positive integer, got %s", tostring(K)) end
  if max_step < 1 then self:error("max_step must be at least 1, got %s", tostring(max_step)) end
  local function norm(logprob, len) return alpha == 0 and logprob or logprob / (len ^ alpha) end
  return self:_inference(function()
    local enc_out = self:encode(batch)
    local mask = batch.cap_attn_mask
    local N = mask:size(1)
    local live, finished = {}, {}
    for n = 1, N do
      live[n] = {{ids = {bos}, logprob = 0.0}}
      finished[n] = {}
    end
    local on = {dtype = "i64", device = mask:device()}
    local pos = core.arange(max_step, on):unsqueeze(1)
    for step = 1, max_step do
      -- every live hypothesis of every caption in one decoder call
      local rows, owner = {}, {}
      for n = 1, N do
        for _, h in ipairs(live[n]) do
          rows[#rows + 1] = h.ids
          owner[#owner + 1] = n - 1
        end
      end
      if #rows == 0 then break end
      local sel = core.tensor(owner, on)
      local logits = self:decode(enc_out:index_select(1, sel), mask:index_select(1, sel),
        core.tensor(rows, on), pos:narrow(2, 1, step))
      local lp = logits:select(2, step):double():log_softmax(2)
      local V = lp:size(2)
      local first = 1
      for n = 1, N do
        local count = #live[n]
        local old = live[n]
        live[n] = {}
        if count > 0 then
          -- cumulative log-probability of every (hypothesis, token) pair of this caption; the
          -- flattened order is hypothesis-major, so topk's ties go to the earlier hypothesis,
          -- then to the lower token id
          local parent = {}
          for j = 1, count do parent[j] = {old[j].logprob} end
          local cand = lp:narrow(1, first, count) + core.tensor(parent, {dtype = "f64", device = lp:device()})
          local vals, idx = cand:reshape(count * V):topk(math.min(K, count * V))
          vals, idx = vals:totable(), idx:totable()
          for j = 1, #vals do
            local h0 = old[idx[j] // V + 1]
            local token = idx[j] % V
            local ids = {table.unpack(h0.ids)}
            ids[#ids + 1] = token
            if token == eos then
              local f = finished[n]
              f[#f + 1] = {ids = {table.unpack(ids, 2, #ids - 1)}, logprob = vals[j], length = step,
                           score = norm(vals[j], step)}
            else
              live[n][#live[n] + 1] = {ids = ids, logprob = vals[j]}
            end
          end
          first = first + count
        end
      end
    end
    local best, all = {}, {}
    for n = 1, N do
      local f = finished[n]
      for _, h in ipairs(live[n]) do
        f[#f + 1] = {ids = {table.unpack(h.ids, 2)}, logprob = h.logprob, length = #h.ids - 1,
                     score = norm(h.logprob, #h.ids - 1)}
      end
      for i, h in ipairs(f) do h.order = i end
      table.sort(f, function(a, b)
        if a.score ~= b.score then return a.score > b.score end
        return a.order < b.order
      end)
      all[n] = {}
      for i = 1, math.min(n_best, #f) do
        f[i].order = nil
        all[n][i] = f[i]
      end
      best[n] = f[1].ids
    end
    return best, all
  end)
end

--- Loads a checkpoint with the reference's non-strict rules (see HeroForPretraining).
function M:load_checkpoint(path, opts)
  return require("hero.models.checkpoint").load_into(self, path, opts)
end

function M:save_checkpoint(path)
  require("hero.models.checkpoint").save(self, path)
end

M.LabelSmoothingLoss = LabelSmoothingLoss
M.segments = segments

return M
