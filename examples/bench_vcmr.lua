--- VCMR inference over a corpus: queries per second of the batched path (query encoding, the
-- queries x videos x frames start/end and video scores as tensors, top-k ranking of
-- (video, start, end) in C), on the small config and a synthetic corpus of 1,000 videos.
--   lua5.4 examples/bench_vcmr.lua [--videos 1000] [--queries 200] [--threads 1] [--batch 50]
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local now = hero.core._bench_now

local a = {videos = 1000, queries = 200, threads = 1, batch = 50, frames = 40}
for i = 1, #arg, 2 do a[arg[i]:gsub("^%-%-", "")] = tonumber(arg[i + 1]) end
hero.set_num_threads(a.threads)

local H = 256
local function sub(layers)
  return {hidden_size = H, num_attention_heads = 4, intermediate_size = 1024, num_hidden_layers = layers,
          max_position_embeddings = 514, vocab_size = 50265, type_vocab_size = 2}
end
local m = hero.models.HeroForVcmr({f_config = sub(2), c_config = sub(1), q_config = sub(0)},
  {vfeat_dim = 4352, max_frm_seq_len = 100})
m:evaluate()

-- the encoded corpus Y [Nv, L, H] with ragged lengths (what encode_corpus returns)
local g = {generator = hero.Generator(1)}
local Y = hero.randn({a.videos, a.frames, H}, g)
local lens = hero.randint(10, a.frames + 1, {a.videos}, g)
local mask = hero.arange(a.frames):unsqueeze(1):lt(lens:unsqueeze(2)):float()

local function query_batch(n)
  local L = 20
  return {query_input_ids = hero.randint(4, 50265, {n, L}, g), query_pos_ids = hero.arange(L):unsqueeze(1),
          query_attn_masks = hero.ones({n, L}, {dtype = "i64"})}
end

local video_ids, video2idx, query_ids = {}, {}, {}
for i = 1, a.videos do
  video_ids[i] = "v" .. i
  video2idx[video_ids[i]] = i - 1
end
local t0 = now()
local done = 0
local first
while done < a.queries do
  local n = math.min(a.batch, a.queries - done)
  local out = m:score_queries(Y, mask, query_batch(n))
  for i = 1, n do query_ids[i] = done + i end
  local sub_q = {}
  for i = 1, n do sub_q[i] = query_ids[i] end
  local preds = hero.eval.retrieval.predict({q2video_exp_scores = out.vr_scores_exp, st_probs = out.st_probs,
    ed_probs = out.ed_probs, video_ids = video_ids, video2idx = video2idx, query_ids = sub_q}, {tasks = {"VCMR", "VR"},
    max_vcmr_video = 100, max_before_nms = 200})
  first = first or preds
  done = done + n
end
local dt = now() - t0
print(string.format("VCMR over %d videos x %d frames, %d queries, %d thread(s): %.2f s, %.1f queries/s",
  a.videos, a.frames, a.queries, a.threads, dt, a.queries / dt))
