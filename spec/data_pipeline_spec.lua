local hero = require "hero"
local helper = require "spec_helper"
local it_db = helper.it_needs(it, pending, "lmdb", "lz4") -- specs that read or write HERO databases
local json = hero.json
local data = hero.data
local tasks = data.tasks
local collate = data.collate

local smoke = helper.fixture("hero-smoke")
local tv_video = helper.fixture("data/video_db/tv/resnet_slowfast_1.5")
local tv_subs = helper.fixture("data/txt_db/tv_subtitles.db")
local SMOKE_IDS = {CLS = 0, SEP = 2, PAD = 1, MASK = 996, v_range = {4, 990}}

-- ------------------------------------------------------------------ helpers

local function load_batch(name)
  local b = hero.load(smoke .. "/" .. name .. ".safetensors")
  local side = json.read_file(smoke .. "/" .. name .. ".json")
  return b, side
end

--- Every key of `expected` is in `got` with the same dtype, shape and values (exact); non-tensor
-- values compare as JSON; `got` has no other key.
local function assert_same_batch(got, expected, name)
  for k in pairs(got) do
    assert(expected[k] ~= nil, string.format("%s: unexpected key '%s'", name, k))
  end
  for k, e in pairs(expected) do
    local a = got[k]
    assert(a ~= nil, string.format("%s: missing key '%s'", name, k))
    if hero.is_tensor(e) then
      assert(hero.is_tensor(a), string.format("%s.%s is not a tensor", name, k))
      assert.are.equal(e:dtype(), a:dtype(), name .. "." .. k .. " dtype")
      assert.are.same(e:size(), a:size(), name .. "." .. k .. " shape")
      if e:numel() > 0 then
        assert(a:eq(e):all():item(), string.format("%s.%s differs from the reference", name, k))
      end
    else
      assert.are.equal(json.encode(e), json.encode(a), name .. "." .. k)
    end
  end
end

local function side_fields(b, side)
  for k, v in pairs(side) do
    if not k:find("^_") then b[k] = v end
  end
  return b
end

-- The fixture's synthetic videos, rebuilt from the representation batches: frames from c_v_feats
-- (MFM's masked frames restored from feat_targets), subtitle tokens from f_sub_input_ids.
-- Videos found in several batches must agree.
local function fixture_videos()
  local videos = {}
  for _, name in ipairs {"batch_mfm-nce", "batch_fom", "batch_mffr", "optim_batch_mfm-nce_mb1"} do
    local b, side = load_batch(name)
    local row, masked = 0, 0
    for i, vid in ipairs(side._videos) do
      local nf = b.c_attn_masks[i]:sum():item()
      local feats = b.c_v_feats[i]:narrow(1, 1, nf):clone()
      if b.c_v_masks then
        for f = 1, nf do
          if b.c_v_masks[i][f]:item() then
            masked = masked + 1
            feats[f]:copy_(b.feat_targets[masked])
          end
        end
      end
      local ids = {}
      for _, pair in ipairs(side.sub_idx2frame_idx[i]) do
        row = row + 1
        local n = b.f_sub_input_attn_masks[row]:sum():item()
        local r = b.f_sub_input_ids[row]:totable()
        local t = {}
        for j = 2, n do t[#t + 1] = r[j] end
        ids[pair[1] + 1] = t
      end
      local v = videos[vid]
      if v then
        assert(v.v_feat:eq(feats):all():item(), vid .. ": frames differ between fixture batches")
        assert.are.same(v.input_ids, ids)
      else
        videos[vid] = {v_feat = feats, sub2frames = side.sub_idx2frame_idx[i], input_ids = ids}
      end
    end
  end
  return videos
end

local function smoke_dataset()
  return data.MemoryDataset{videos = fixture_videos(), special_ids = SMOKE_IDS}
end

local function tv_dataset(opts)
  opts = opts or {}
  return data.VideoSubDataset{video_db = tv_video, sub_db = tv_subs, max_clip_len = opts.max_clip_len or 12,
    ids = opts.ids, sub_ctx_len = opts.sub_ctx_len}
end

local function count(t, pred)
  local n = 0
  for _, v in ipairs(t) do if pred(v) then n = n + 1 end end
  return n
end

-- ------------------------------------------------------------------ parity with the fixture

describe("collates rebuild the reference's batches", function()
  local ds
  setup(function() ds = smoke_dataset() end)

  it("mfm-nce and mffr from the recorded frame masks", function()
    for _, name in ipairs {"batch_mfm-nce", "batch_mffr", "optim_batch_mfm-nce_mb1"} do
      local b, side = load_batch(name)
      local items = {}
      for i, vid in ipairs(side._videos) do
        local nf = b.c_attn_masks[i]:sum():item()
        local m = {}
        for f = 1, nf do m[f] = b.c_v_masks[i][f]:item() end
        items[i] = tasks.mfm_item(ds:get(vid), {special_ids = SMOKE_IDS, c_mask = m})
      end
      assert_same_batch(collate.mfm_collate(items), side_fields(b, side), name)
    end
  end)

  it("fom from the recorded shuffles (incl. the unused pairwise tensors)", function()
    local b, side = load_batch("batch_fom")
    local items = {}
    for i, vid in ipairs(side._videos) do
      local nf = b.c_attn_masks[i]:sum():item()
      local P, Q = {}, {}
      for j = 1, nf do
        if b.targets[i][j]:item() ~= -1 then P[#P + 1] = j - 1 end
      end
      for k, p in ipairs(P) do Q[k] = b.shuffled_orders[i][p + 1]:item() end
      items[i] = tasks.fom_item(ds:get(vid), {special_ids = SMOKE_IDS, reorder = {P = P, Q = Q}})
    end
    assert_same_batch(collate.fom_collate(items), side_fields(b, side), "batch_fom")
  end)

  it("vsm from the recorded query subtitles (text removal, padding to 5, targets, q_vidx)", function()
    for _, name in ipairs {"batch_vsm", "optim_batch_vsm_mb1"} do
      local b, side = load_batch(name)
      local items = {}
      for i, vid in ipairs(side._videos) do
        local v = ds:get(vid)
        local subs, seen = {}, {}
        for q = (i - 1) * 5 + 1, i * 5 do
          local st = b.targets[q][1]:item()
          for _, pair in ipairs(v.sub2frames) do
            if pair[2][1] == st and not seen[pair[1]] then
              seen[pair[1]] = true
              subs[#subs + 1] = pair[1]
            end
          end
        end
        items[i] = tasks.vsm_item(v, {special_ids = SMOKE_IDS, query_subs = subs})
      end
      assert_same_batch(collate.vsm_collate(items), side_fields(b, side), name)
    end
  end)

  it("mlm from the recorded word decisions (CLS start, labels from the unmasked text)", function()
    for _, name in ipairs {"batch_mlm", "optim_batch_mlm_mb1"} do
      local b, side = load_batch(name)
      local items = {}
      local row, lab = 0, 0
      for i, vid in ipairs(side._videos) do
        local v = ds:get(vid)
        local dec = {}
        for s, pair in ipairs(v.sub2frames) do
          row = row + 1
          local nf = math.max(1, #pair[2])
          local ids = b.input_ids[row]:totable()
          local tgt = b.txt_mask_tgt[row]:totable()
          local d = {}
          for t = 1, #v.input_ids[pair[1] + 1] do
            if tgt[nf + t + 1] then
              lab = lab + 1
              local x = ids[t + 1]
              -- what the sampler chose: the mask id, the token kept, or a random replacement
              if x == SMOKE_IDS.MASK then d[t] = "mask"
              elseif x == b.txt_labels[lab]:item() then d[t] = "keep"
              else d[t] = x end
            else
              d[t] = false
            end
          end
          dec[s] = d
        end
        items[i] = tasks.mlm_item(v, {special_ids = SMOKE_IDS, decisions = dec})
      end
      assert_same_batch(collate.mlm_collate(items), b, name)
    end
  end)

  it("the representation batch of a video has the reference's layout", function()
    local v = ds:get("vid_a")
    local b = collate.video_collate({tasks.video_item(v, {special_ids = SMOKE_IDS})})
    -- segment 3 (sub 2) has no frame: one zero dummy frame with attention bit 0
    assert.are.same({0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0}, b.f_attn_masks[3]:totable())
    assert.are.equal(0, b.f_v_feats[3]:abs():sum():item())
    -- f_v_feats rows are the aligned frames of c_v_feats
    assert(b.f_v_feats[4]:eq(b.c_v_feats[1]:narrow(1, 7, 4)):all():item())
    assert.are.same({4}, b.num_subs)
    assert.are.same({{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}}, b.c_pos_ids:totable())
  end)
end)

-- ------------------------------------------------------------------ samplers

describe("samplers", function()
  local opts = function(seed, p) return {generator = hero.Generator(seed), mask_prob = p, v_range = {4, 990}} end

  it("word masking: 15 % selected, 80/10/10 among them, random ids in v_range", function()
    local n = 20000
    local d = tasks.word_decisions(n, opts(11))
    local sel = count(d, function(x) return x ~= false end)
    local mask = count(d, function(x) return x == "mask" end)
    local keep = count(d, function(x) return x == "keep" end)
    local rnd = count(d, function(x) return math.type(x) == "integer" end)
    assert.are.equal(sel, mask + keep + rnd)
    assert(math.abs(sel / n - 0.15) < 0.01, "selection rate " .. sel / n)
    assert(math.abs(mask / sel - 0.8) < 0.03, "mask share " .. mask / sel)
    assert(math.abs(keep / sel - 0.1) < 0.025, "keep share " .. keep / sel)
    assert(math.abs(rnd / sel - 0.1) < 0.025, "random share " .. rnd / sel)
    local lo, hi = math.huge, -math.huge
    for _, x in ipairs(d) do
      if math.type(x) == "integer" then lo, hi = math.min(lo, x), math.max(hi, x) end
    end
    assert(lo >= 4 and hi < 990, string.format("random ids in [%d, %d]", lo, hi))
    assert(lo < 100 and hi > 890, "random ids should spread over v_range")
  end)

  it("word masking applies the decisions and masks the first token when nothing was selected", function()
    local toks = {10, 11, 12, 13}
    local ids, labels = tasks.apply_word_decisions(toks, {false, "mask", "keep", 77}, 996)
    assert.are.same({10, 996, 12, 77}, ids)
    assert.are.same({-1, 11, 12, 13}, labels)
    assert.are.same({10, 11, 12, 13}, toks) -- the input is not modified
    for seed = 1, 20 do
      local i2, l2 = tasks.random_word(toks, {generator = hero.Generator(seed), mask_prob = 0, v_range = {4, 990},
                                              mask_id = 996})
      assert.are.same({996, 11, 12, 13}, i2)
      assert.are.same({10, -1, -1, -1}, l2)
    end
    local e1, e2 = tasks.apply_word_decisions({}, {}, 996)
    assert.are.same({}, e1)
    assert.are.same({}, e2)
  end)

  it("frame masks: 15 % of frames, at least one, the forced one uniform", function()
    local g = hero.Generator(3)
    local total, on = 0, 0
    for _ = 1, 400 do
      local m = tasks.frame_mask(50, {generator = g})
      total = total + 50
      on = on + count(m, function(x) return x end)
    end
    assert(math.abs(on / total - 0.15) < 0.01, "mask rate " .. on / total)
    local hits = {}
    for _ = 1, 300 do
      local m = tasks.frame_mask(6, {generator = g, mask_prob = 0})
      assert.are.equal(1, count(m, function(x) return x end))
      for f, x in ipairs(m) do if x then hits[f] = (hits[f] or 0) + 1 end end
    end
    for f = 1, 6 do assert((hits[f] or 0) > 20, "frame " .. f .. " forced " .. tostring(hits[f]) .. " times") end
  end)

  it("frame order shuffles: 15 % selected, orders a permutation, targets its inverse", function()
    local g = hero.Generator(4)
    local sel, total, moved = 0, 0, 0
    for _ = 1, 300 do
      local n = 40
      local order, target, P = tasks.random_reorder(n, {generator = g})
      sel, total = sel + #P, total + n
      local seen = {}
      for j = 1, n do
        local o = order[j]
        assert(o >= 0 and o < n and not seen[o])
        seen[o] = true
        if target[o + 1] ~= -1 then
          assert.are.equal(j - 1, target[o + 1])
          if o ~= j - 1 then moved = moved + 1 end
        else
          assert.are.equal(j - 1, o)
        end
      end
      assert.are.equal(#P, count(target, function(x) return x ~= -1 end))
    end
    assert(math.abs(sel / total - 0.15) < 0.015, "reorder rate " .. sel / total)
    assert(moved > 0.5 * sel, "selected frames should mostly move")
    -- a selected frame that stays in place keeps its target
    local order, target = tasks.reorder_from(4, {1, 3}, {1, 3})
    assert.are.same({0, 1, 2, 3}, order)
    assert.are.same({-1, 1, -1, 3}, target)
  end)

  it("query sampling: min(n, 5) distinct candidates, every candidate reachable", function()
    local g = hero.Generator(9)
    local cands = {0, 2, 3, 5, 6, 8, 9}
    local hit = {}
    for _ = 1, 200 do
      local set = tasks.sample_queries(cands, 5, {generator = g})
      local n = 0
      for k in pairs(set) do
        n = n + 1
        hit[k] = true
      end
      assert.are.equal(5, n)
    end
    for _, c in ipairs(cands) do assert(hit[c], "candidate " .. c .. " never chosen") end
    local small = tasks.sample_queries({1, 4}, 5, {})
    assert.are.same({[1] = true, [4] = true}, small)
  end)

  it("draws come from the generator only: same seed, same result; state resumes the stream", function()
    local a = tasks.word_decisions(500, opts(21))
    local b = tasks.word_decisions(500, opts(21))
    assert.are.same(a, b)
    math.randomseed(1)
    local g = hero.Generator(22)
    local first = tasks.frame_mask(30, {generator = g})
    local st = g:get_state()
    local second = tasks.frame_mask(30, {generator = g})
    math.randomseed(2)
    g:set_state(st)
    assert.are.same(second, tasks.frame_mask(30, {generator = g}))
    assert.are_not.same(first, second)
  end)

  it("refuses bad arguments", function()
    helper.assert_error_contains(function() tasks.word_decisions(3, {v_range = {4, 990}}) end, "hero.Generator")
    helper.assert_error_contains(function() tasks.word_decisions(3, {generator = hero.Generator(1)}) end, "v_range")
    helper.assert_error_contains(function() tasks.frame_mask(0, {generator = hero.Generator(1)}) end,
      "at least one frame")
    helper.assert_error_contains(function() tasks.reorder_from(4, {1, 2}, {1, 3}) end, "not a permutation")
    helper.assert_error_contains(function() tasks.reorder_from(4, {1, 5}, {5, 1}) end, "outside 0..3")
    helper.assert_error_contains(function() tasks.apply_word_decisions({5}, {"bogus"}, 996) end, "decision 1")
  end)
end)

-- ------------------------------------------------------------------ item builders

describe("task items", function()
  local long = {}
  for i = 1, 600 do long[i] = 4 + i % 900 end
  local function synthetic()
    local feats = hero.arange(0, 6 * 3, {dtype = "f32"}):reshape({6, 3})
    return data.MemoryDataset{special_ids = SMOKE_IDS, videos = {
      v = {v_feat = feats, sub2frames = {{0, {0, 1}}, {1, {}}, {2, {2, 3, 4}}},
           input_ids = {{10, 11, 12}, {20, 21}, long}},
      empty = {v_feat = feats, sub2frames = {{0, {}}, {1, {}}}, input_ids = {{1}, {2}}},
    }}
  end

  it("context windows (sub_ctx_len) use preceding subtitles only; representation text is not cut", function()
    local ds = synthetic()
    local it1 = tasks.video_item(ds:get("v"), {special_ids = SMOKE_IDS, sub_ctx_len = 1})
    assert.are.same({2, 10, 11, 12, 20, 21}, it1.segments[2].ids)
    assert.are.same({2, 10, 11, 12}, it1.segments[1].ids)
    assert.are.equal(1 + 2 + 600, #it1.segments[3].ids)
    local b = collate.video_collate({it1})
    assert.are.same({1, 603}, b.f_sub_pos_ids:size())
    assert.are.equal(511, b.f_sub_pos_ids[1][603]:item()) -- clamped as the reference does
    assert.are.equal(511, b.f_sub_pos_ids[1][512]:item())
    assert.are.equal(510, b.f_sub_pos_ids[1][511]:item())
    local cut = tasks.video_item(ds:get("v"), {special_ids = SMOKE_IDS, truncate = true, max_txt_len = 60})
    assert.are.equal(61, #cut.segments[3].ids)
  end)

  it("MLM cuts every subtitle to max_txt_len and starts with CLS", function()
    local ds = synthetic()
    local item = tasks.mlm_item(ds:get("v"), {special_ids = SMOKE_IDS, generator = hero.Generator(1),
                                              max_txt_len = 60})
    assert.are.equal(61, #item.segments[3].ids)
    for _, seg in ipairs(item.segments) do
      assert.are.equal(0, seg.ids[1])
      assert.are.equal(-1, seg.labels[1])
      assert(count(seg.labels, function(x) return x ~= -1 end) >= 1)
    end
    local b = collate.mlm_collate({item})
    assert.are.same({1, 61}, b.position_ids:size())
    assert.are.equal(b.txt_mask_tgt:sum():item(), b.txt_labels:size(1))
  end)

  it("VSM queries: removed from the context, padded to 5, end frame rule", function()
    local ds = synthetic()
    local item = tasks.vsm_item(ds:get("v"), {special_ids = SMOKE_IDS, generator = hero.Generator(2),
                                              sub_ctx_len = 1, max_txt_len = 60})
    -- both subtitles with frames (0 and 2) are queries: their text is gone from every context
    assert.are.same({2}, item.segments[1].ids)
    assert.are.same({2, 20, 21}, item.segments[2].ids)
    assert.are.same({2, 20, 21}, item.segments[3].ids)
    assert.are.equal(5, #item.queries)
    assert.are.same({0, 10, 11, 12}, item.queries[1].ids)
    assert.are.same({0, 1}, item.queries[1].target)
    assert.are.equal(61, #item.queries[2].ids)
    assert.are.same({2, 4}, item.queries[2].target)
    for q = 3, 5 do assert.are.same(item.queries[2], item.queries[q]) end
    -- a single-frame subtitle at the end: ed = min(max(st + 1, last), nframes - 1)
    local one = data.MemoryDataset{special_ids = SMOKE_IDS, videos = {x = {v_feat = hero.zeros(3, 2),
      sub2frames = {{0, {2}}}, input_ids = {{7}}}}}
    assert.are.same({2, 2}, tasks.vsm_item(one:get("x"), {special_ids = SMOKE_IDS}).queries[1].target)
    helper.assert_error_contains(function()
      tasks.vsm_item(ds:get("empty"), {special_ids = SMOKE_IDS, generator = hero.Generator(1)})
    end, "'empty' has no subtitle with aligned frames")
  end)

  it("a video occurring twice in a VSM batch: q_vidx points at its last occurrence", function()
    local ds = synthetic()
    local o = {special_ids = SMOKE_IDS, generator = hero.Generator(5)}
    local b = collate.vsm_collate({tasks.vsm_item(ds:get("v"), o), tasks.vsm_item(ds:get("v"), o)})
    assert.are.same({1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, b.q_vidx:totable())
    assert.are.same({"v", "v"}, b.vids)
  end)

  it("collates refuse inconsistent items", function()
    local ds = synthetic()
    local v = ds:get("v")
    helper.assert_error_contains(function() collate.mfm_collate({tasks.video_item(v, {special_ids = SMOKE_IDS})}) end,
      "item 1 has no c_mask")
    helper.assert_error_contains(function()
      tasks.mfm_item(v, {special_ids = SMOKE_IDS, c_mask = {true}})
    end, "1 entries for a video of 6 frames")
    local bad = tasks.video_item(v, {special_ids = SMOKE_IDS})
    bad.segments[1] = {ids = {2}, frames = {9}}
    helper.assert_error_contains(function() collate.video_collate({bad}) end, "aligned frame 9",
      "6 feature frames")
    local other = tasks.video_item({vid = "w", v_feat = hero.zeros(2, 5), sub2frames = {{0, {0}}}, input_ids = {{4}}},
      {special_ids = SMOKE_IDS})
    helper.assert_error_contains(function()
      collate.video_collate({tasks.video_item(v, {special_ids = SMOKE_IDS}), other})
    end, "item 2 has 5-dim frame features, item 1 has 3")
    helper.assert_error_contains(function() collate.for_task("nope") end, "unknown task 'nope'")
    helper.assert_error_contains(function() tasks.video_item(v, {}) end, "special token ids")
  end)
end)

-- ------------------------------------------------------------------ real databases

describe("VideoSubDataset on the TV fixture databases", function()
  it_db("joins features and subtitles with the reference's prefix cut", function()
    local ds <close> = tv_dataset()
    assert.are.equal(7, #ds:ids())
    local v = ds:get("castle_s03e10_seg02_clip_11")
    assert.are.same({12, 24}, v.v_feat:size())
    assert.are.equal(json.encode({{0, {0, 1, 2, 3, 4, 5}}, {1, {6, 7, 8, 9}}, {2, {10, 11}}}),
      json.encode(v.sub2frames))
    assert.are.equal(12, ds:length("castle_s03e10_seg02_clip_11"))
    assert.are.equal(50264, ds:special_ids().MASK)
    local none, why = ds:get("house_s01e07_seg01_clip_02")
    assert.is_nil(none)
    assert.matches("not in the subtitle db", why)
  end)

  it_db("drops aligned frames past the feature length (and counts them)", function()
    -- an alignment made for more frames than the feature db holds (hero-spec §9.22)
    local mem = data.MemoryDataset{special_ids = SMOKE_IDS, videos = {x = {v_feat = hero.ones(4, 3),
      sub2frames = {{0, {0, 1}}, {1, {3, 4, 5}}}, input_ids = {{5}, {6}}}}}
    local v = mem:get("x")
    assert.are.equal(json.encode({{0, {0, 1}}, {1, {3}}}), json.encode(v.sub2frames))
    assert.are.equal(2, mem.stats.frames_dropped)
    -- max_clip_len = -1: the reference's VideoFeatLmdb returns features[:-1] (18 frames listed, 17
    -- served), the alignment keeps every subtitle
    local ds <close> = tv_dataset({max_clip_len = -1})
    local g = ds:get("grey_s05e09_seg02_clip_17")
    assert.are.equal(17, g.v_feat:size(1))
    assert.are.same({4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, g.sub2frames[2][2])
    assert.are.equal(0, ds.stats.frames_dropped)
  end)
end)

describe("TaskLoader", function()
  local function batches_equal(a, b)
    for k, v in pairs(a) do
      if hero.is_tensor(v) then
        if not (v:dtype() == b[k]:dtype() and json.encode(v:size()) == json.encode(b[k]:size())
                and (v:numel() == 0 or v:eq(b[k]):all():item())) then
          return false
        end
      elseif json.encode(v) ~= json.encode(b[k]) then
        return false
      end
    end
    return true
  end

  it_db("each epoch serves every video once, in a seeded order", function()
    local ds = tv_dataset()
    local L = data.TaskLoader{dataset = ds, task = "fom", batch_size = 2, seed = 7}
    assert.are.equal(4, #L)
    local seen, epoch = {}, {}
    for _ = 1, 4 do
      L:next()
      epoch[#epoch + 1] = table.concat(L.last_ids, ",")
      for _, vid in ipairs(L.last_ids) do
        assert(not seen[vid], vid .. " twice in one epoch")
        seen[vid] = true
      end
    end
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.are.equal(7, n)
    local function epoch_of(seed)
      local l = data.TaskLoader{dataset = ds, task = "fom", batch_size = 2, seed = seed}
      local out = {}
      for i = 1, 4 do
        l:next()
        out[i] = table.concat(l.last_ids, ",")
      end
      return out
    end
    assert.are.same(epoch, epoch_of(7))
    assert.are_not.same(epoch, epoch_of(8))
    -- the next epoch is another permutation
    local next_epoch = {}
    for i = 1, 4 do
      L:next()
      next_epoch[i] = table.concat(L.last_ids, ",")
    end
    assert.are.equal(1, L.epoch)
    assert.are_not.same(epoch, next_epoch)
  end)

  it_db("length buckets group videos of similar length", function()
    local ds = tv_dataset({max_clip_len = -1})
    local L = data.TaskLoader{dataset = ds, task = "video", batch_size = 2, seed = 3, bucket = 4}
    -- one pool holds every video: the batches are consecutive runs of the length-sorted list
    local lens = {}
    for _, vid in ipairs(ds:ids()) do lens[#lens + 1] = ds:length(vid) end
    table.sort(lens, function(a, b) return a > b end)
    local want, got = {}, {}
    for i = 1, #lens, 2 do want[#want + 1] = lens[i] .. "," .. tostring(lens[i + 1]) end
    for _, b in ipairs(L.plan) do got[#got + 1] = ds:length(b[1]) .. "," .. tostring(b[2] and ds:length(b[2])) end
    table.sort(want)
    table.sort(got)
    assert.are.same(want, got)
    -- and the batch order is shuffled, not sorted
    local L2 = data.TaskLoader{dataset = ds, task = "video", batch_size = 2, seed = 4, bucket = 4}
    local orders = {}
    for _, l in ipairs {L, L2} do
      local t = {}
      for _, b in ipairs(l.plan) do t[#t + 1] = ds:length(b[1]) end
      orders[#orders + 1] = table.concat(t, ",")
    end
    assert.are_not.equal(orders[1], orders[2])
  end)

  it_db("state() / set_state() continue bit for bit, across an epoch boundary", function()
    local ds = tv_dataset()
    for _, task in ipairs {"mlm", "vsm"} do
      local A = data.TaskLoader{dataset = ds, task = task, batch_size = 3, seed = 11, bucket = 1}
      A:next()
      A:next()
      local st = hero.load((function()
        local path = os.tmpname()
        hero.save(path, {s = A:state()})
        return path
      end)()).s
      local want = {}
      for i = 1, 4 do want[i] = A:next() end
      local B = data.TaskLoader{dataset = ds, task = task, batch_size = 3, seed = 11, bucket = 1}
      B:set_state(st)
      for i = 1, 4 do assert(batches_equal(want[i], B:next()), task .. ": batch " .. i .. " after resume differs") end
      assert.are.equal(A.epoch, B.epoch)
    end
  end)

  it_db("reports missing videos by id and skips them, or stops with on_error = 'error'", function()
    local ids = {"house_s01e07_seg01_clip_02", "met_s02e03_seg01_clip_05", "bbt_s06e12_seg01_clip_08"}
    local ds = tv_dataset({ids = ids})
    local reported = {}
    local L = data.TaskLoader{dataset = ds, task = "mfm-nce", batch_size = 3, seed = 1,
      on_skip = function(vid, why) reported[#reported + 1] = {vid, why} end}
    local b = L:next()
    assert.are.same({2}, {b.c_v_feats:size(1)})
    assert.are.equal(1, L.stats.skipped)
    assert.are.equal("house_s01e07_seg01_clip_02", reported[1][1])
    assert.matches("not in the subtitle db", reported[1][2])
    assert.are.same(L.stats.skipped_ids[1], reported[1])
    local E = data.TaskLoader{dataset = ds, task = "mfm-nce", batch_size = 3, seed = 1, on_error = "error"}
    helper.assert_error_contains(function() E:next() end, "house_s01e07_seg01_clip_02", "not in the subtitle db")
    local all_bad = data.TaskLoader{dataset = tv_dataset({ids = {"nope1", "nope2"}}), task = "fom", batch_size = 1}
    helper.assert_error_contains(function() all_bad:next() end, "every video of a whole epoch")
    -- a corrupt value (an error while reading) is reported the same way
    local mem = data.MemoryDataset{special_ids = SMOKE_IDS, videos = {
      bad = {error = "truncated msgpack"},
      good = {v_feat = hero.ones(2, 3), sub2frames = {{0, {0, 1}}}, input_ids = {{5, 6}}}}}
    local M = data.TaskLoader{dataset = mem, task = "vsm", batch_size = 2, seed = 1}
    M:next()
    assert.are.equal("bad", M.stats.skipped_ids[1][1])
    assert.matches("truncated msgpack", M.stats.skipped_ids[1][2])
  end)

  it("stops on an interrupt or an out-of-memory error instead of skipping the video", function()
    -- lua5.4 raises "interrupted!" on Ctrl-C, with the position of the Lua code it stopped
    for _, msg in ipairs{"interrupted!", "video_db.lua:95: interrupted!", "not enough memory",
      "zeros: out of memory allocating 4096 bytes"} do
      local mem = data.MemoryDataset{special_ids = SMOKE_IDS, videos = {
        bad = {v_feat = hero.ones(2, 3), sub2frames = {{0, {0, 1}}}, input_ids = {{5, 6}}},
        good = {v_feat = hero.ones(2, 3), sub2frames = {{0, {0, 1}}}, input_ids = {{5, 6}}}}}
      local get = mem.get
      mem.get = function(self, vid)
        if vid == "bad" then error(msg, 0) end
        return get(self, vid)
      end
      local L = data.TaskLoader{dataset = mem, task = "vsm", batch_size = 2, seed = 1}
      local ok, err = pcall(L.next, L)
      assert.is_false(ok, msg)
      assert.are.equal(msg, err)
      assert.are.equal(0, L.stats.skipped)
    end
    assert.is_false(data.util.is_fatal_error("video 'x': interrupted! by a typo"))
    assert.is_false(data.util.is_fatal_error({"interrupted!"}))
  end)

  it_db("iter() is one fixed pass that does not move the position; rank/world_size shard the videos", function()
    local ds = tv_dataset()
    local L = data.TaskLoader{dataset = ds, task = "mlm", batch_size = 3, seed = 2}
    local first, second = {}, {}
    for b in L:iter() do first[#first + 1] = b end
    for b in L:iter() do second[#second + 1] = b end
    assert.are.equal(3, #first)
    for i = 1, 3 do assert(batches_equal(first[i], second[i])) end
    assert.are.equal(1, L.pos)
    local r0 = data.TaskLoader{dataset = ds, task = "mlm", rank = 0, world_size = 2}
    local r1 = data.TaskLoader{dataset = ds, task = "mlm", rank = 1, world_size = 2}
    assert.are.equal(4, #r0.ids)
    assert.are.equal(3, #r1.ids)
    assert.are.equal(ds:ids()[2], r1.ids[1])
    -- equal_shards: the seventh video is left out, so that both ranks run as many batches
    local e0 = data.TaskLoader{dataset = ds, task = "mlm", rank = 0, world_size = 2, equal_shards = true}
    local e1 = data.TaskLoader{dataset = ds, task = "mlm", rank = 1, world_size = 2, equal_shards = true}
    assert.are.same({ds:ids()[1], ds:ids()[3], ds:ids()[5]}, e0.ids)
    assert.are.same(r1.ids, e1.ids)
    helper.assert_error_contains(function()
      data.TaskLoader{dataset = ds, task = "mlm", equal_shards = 1}
    end, "opts.equal_shards must be a boolean")
  end)

  it_db("refuses bad options and foreign states", function()
    local ds = tv_dataset()
    helper.assert_error_contains(function() data.TaskLoader{dataset = ds, task = "mlm", batchsize = 2} end,
      "unknown option 'batchsize'")
    helper.assert_error_contains(function() data.TaskLoader{dataset = ds, task = "xyz"} end, "unknown task 'xyz'")
    helper.assert_error_contains(function() data.TaskLoader{dataset = ds, task = "mlm", on_error = "ignore"} end,
      "'skip' or 'error'")
    local L = data.TaskLoader{dataset = ds, task = "mlm"}
    local F = data.TaskLoader{dataset = ds, task = "fom"}
    helper.assert_error_contains(function() L:set_state(F:state()) end, "for task 'fom'")
    helper.assert_error_contains(function() L:set_state({}) end, "expected the table")
  end)
end)

describe("end to end on the TV databases", function()
  it_db("every task's batches run forward and backward through HeroForPretraining", function()
    local ds = tv_dataset()
    local cfg = json.read_file(smoke .. "/config.json")
    local mc = cfg.model_config.pretrain
    -- the fixture databases hold real RoBERTa ids and a 71-token subtitle
    mc.f_config.vocab_size = 50265
    mc.f_config.max_position_embeddings = 128
    mc.q_config.max_position_embeddings = 128
    local model = hero.models.HeroForPretraining(mc, {vfeat_dim = 24, max_frm_seq_len = 12, vocab_pad = 7,
      generator = hero.Generator(1)})
    local loaders = {}
    for _, task in ipairs {"mlm", "mfm-nce", "mffr", "fom", "vsm"} do
      loaders[task] = data.TaskLoader{dataset = ds, task = task, batch_size = 4, seed = 3, bucket = 2}
      local batch = loaders[task]:next()
      for _, field in ipairs(hero.train.Trainer.required_fields[task]) do
        assert(batch[field] ~= nil, task .. " batch lacks " .. field)
      end
      local out = model:forward(batch, task)
      local loss = out.loss:item()
      assert(loss == loss and loss > 0 and loss < math.huge, task .. " loss " .. tostring(loss))
      out.loss:backward()
    end
    local grad = model.v_encoder.f_encoder.embeddings.word_embeddings.weight.grad
    assert(grad ~= nil and grad:abs():sum():item() > 0)
    -- and through the MetaLoader the trainer uses
    local meta = hero.train.MetaLoader{tasks = loaders, accum = 2, seed = 4}
    for _ = 1, 4 do
      local task, batch = meta:next()
      assert(batch.f_v_feats or batch.v_feat, task)
    end
    local st = meta:state()
    assert.are.equal("number", type(st.loaders.vsm.pos))
  end)
end)

describe("pad_rows", function()
  it("pads integer lists into rows and marks their entries", function()
    local ids, mask = data.pad_rows({{5, 6, 7}, {}, json.array {8}}, 4, 1)
    assert.are.same({{5, 6, 7, 1}, {1, 1, 1, 1}, {8, 1, 1, 1}}, ids:totable())
    assert.are.same({{1, 1, 1, 0}, {0, 0, 0, 0}, {1, 0, 0, 0}}, mask:totable())
    assert.are.equal("i64", ids:dtype())
    assert.are.equal("i64", mask:dtype())
    assert.are.same({0, 3}, data.pad_rows({}, 3, -1):size())
    assert.are.same({{-1, -1}}, data.pad_rows({{}}, 2, -1):totable())
    helper.assert_error_contains(function() data.pad_rows({{1, 2, 3}}, 2, 1) end, "row 1 has 3 entries",
      "width 2")
    helper.assert_error_contains(function() data.pad_rows({{1, "x"}}, 2, 1) end, "entry 2 of row 1")
    helper.assert_error_contains(function() data.pad_rows({{1}, 5}, 2, 1) end, "row 2 is a number")
    helper.assert_error_contains(function() data.pad_rows({}, -1, 1) end, "width must be >= 0")
  end)
end)

-- ------------------------------------------------------------------ pinned batch contents

-- Every optimisation of reading, decoding, sampling and collating must leave the batches as they
-- are, bit for bit: these digests were taken from the straightforward implementation and fix the
-- seeded batches of every pre-training task, read from the plain and from the compressed copy of
-- the TV fixture database (the same features, so the same digests).
describe("seeded batches are pinned", function()
  local crc32c = require("hero.tensorboard").crc32c
  local digest = hero.testing.batch_digest

  local tv_compressed = helper.fixture("data/video_db/tv/resnet_slowfast_1.5_compressed")
  local CASES = {
    {name = "max_clip_len 12, buckets", ds = {max_clip_len = 12}, loader = {batch_size = 3, seed = 11, bucket = 1}},
    {name = "whole videos, context 1", ds = {max_clip_len = 100, sub_ctx_len = 1},
     loader = {batch_size = 4, seed = 5}},
  }
  local PINNED = {
    ["max_clip_len 12, buckets"] = {mlm = "3279b272", ["mfm-nce"] = "63f94457", mffr = "63f94457", fom = "f75d64be",
      vsm = "9cf26cd6"},
    ["whole videos, context 1"] = {mlm = "4212a8ff", ["mfm-nce"] = "f30b2d1d", mffr = "f30b2d1d", fom = "e481a420",
      vsm = "2058baf7"},
  }

  for _, case in ipairs(CASES) do
    it_db(case.name .. ": the digests of three batches of every task, from either video database", function()
      for _, vdb in ipairs {tv_video, tv_compressed} do
        local ds = data.VideoSubDataset{video_db = vdb, sub_db = tv_subs, max_clip_len = case.ds.max_clip_len,
          sub_ctx_len = case.ds.sub_ctx_len}
        for _, task in ipairs {"mlm", "mfm-nce", "mffr", "fom", "vsm"} do
          local opts = {dataset = ds, task = task, on_error = "error"}
          for k, v in pairs(case.loader) do opts[k] = v end
          local L = data.TaskLoader(opts)
          local parts = {}
          for b = 1, 3 do parts[b] = digest(L:next()) end
          local got = string.format("%08x", crc32c(table.concat(parts, "\n--\n")))
          local want = PINNED[case.name][task]
          assert(got == want, string.format("%s, %s, %s: digest %s, pinned %s; the batches:\n%s", case.name, task,
            vdb:match("[^/]*$"), got, want, table.concat(parts, "\n--\n")))
        end
        ds:close()
      end
    end)
  end
end)

describe("data options that were misread without a word", function()
  it_db("are refused: misspelt keys, values out of range, holes in lists, states of another loader", function()
    local errs = helper.assert_error_contains
    local ds = tv_dataset()
    local sp = ds:special_ids()
    local v = ds:get(ds:ids()[1])
    -- the item builders and TaskLoader's task_opts: mask_prb kept 0.15, mask_prob 2 masked every frame
    errs(function() data.TaskLoader{dataset = ds, task = "mfm-nce", batch_size = 2, task_opts = {mask_prb = 0.99}} end,
      "TaskLoader: task_opts: unknown option 'mask_prb'")
    errs(function() tasks.mfm_item(v, {generator = hero.Generator(1), special_ids = sp, mask_prob = 2}) end,
      "option mask_prob must be a probability in [0, 1], got 2")
    errs(function() tasks.frame_mask(4, {generator = hero.Generator(1), mask_prob = 0 / 0}) end,
      "the masking probability must be in [0, 1]")
    errs(function() tasks.video_item(v, {special_ids = sp, sub_ctx_len = -3}) end,
      "option sub_ctx_len must be an integer >= 0, got -3")
    errs(function() tasks.video_item(v, {special_ids = sp, truncat = true}) end, "unknown option 'truncat'")
    errs(function() tasks.mfm_item(v, {special_ids = sp, c_mask = {1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0}}) end,
      "opts.c_mask[1] must be a boolean, got 1")
    errs(function() tasks.vsm_item(v, {special_ids = sp, query_subs = {0, 999}}) end,
      "opts.query_subs[2] = 999 is not a subtitle")
    errs(function()
      tasks.random_word({5, 6, 7}, {generator = hero.Generator(1), v_range = {4, 990}, mask_prob = 1})
    end,
      "opts.mask_id (the MASK token id) must be an integer")
    errs(function() data.TaskLoader{dataset = ds, task = "mlm", shuffle = "no"} end, "opts.shuffle must be a boolean")
    -- datasets: 0 frames per video, a context that removed the text, holes in ids
    errs(function() tv_dataset {max_clip_len = 0} end, "opts.max_clip_len must be -1 (no limit) or at least 1, got 0")
    errs(function() data.open_video_db(tv_video, {max_clip_len = -5}) end,
      "open_video_db: max_clip_len must be -1 (the reference's default) or at least 1, got -5")
    errs(function() data.VideoSubDataset{video_db = tv_video, sub_db = tv_subs, sub_ctx_len = -5} end,
      "opts.sub_ctx_len must be at least 0, got -5")
    errs(function() data.VideoSubDataset{video_db = tv_video, sub_db = tv_subs, ids = {"a", nil, "x"}} end,
      "opts.ids must be an array of video ids (1..n, no holes)")
    -- a state of a loader with another batch size resumed other batches
    local a = data.TaskLoader{dataset = ds, task = "mlm", batch_size = 2, seed = 1}
    a:next()
    local st = a:state()
    local b = data.TaskLoader{dataset = ds, task = "mlm", batch_size = 3, seed = 1}
    errs(function() b:set_state(st) end, "set_state: the state is of a loader with batch_size = 2, this one has 3")
    st.batches = "lots"
    errs(function() a:set_state(st) end, "set_state: batches must be a count, got lots")
    -- MetaLoader and alignment: ratio = {...} and frame_len were ignored
    errs(function() hero.train.MetaLoader{tasks = {mlm = a}, ratio = {mlm = 100}} end,
      "MetaLoader: unknown option 'ratio'")
    errs(function() hero.train.MetaLoader{tasks = {mlm = a}, ratios = {mlm = 1000000000}} end,
      "the ratios add up to 1000000000 draws per pool")
    errs(function() data.align_subtitles({}, 0, {frame_len = 3}) end, "unknown option 'frame_len' (frame_length)")
    errs(function() data.open_txt_db(tv_subs, {max_value_bytes = "10"}) end,
      "open_txt_db: max_value_bytes must be an integer >= 1, got '10'")
    errs(function() data.PrefetchLoader {loader_spec = {}, on_skip = 5} end,
      "on_skip must be a function or a table {loader name = function}, got number")
    local closed = tv_dataset()
    local vid = closed:ids()[1]
    closed:close()
    errs(function() closed:get(vid) end, "VideoSubDataset:get: the dataset is closed")
  end)
end)
