local hero = require "hero"
local helper = require "spec_helper"
local it_db = helper.it_needs(it, pending, "lmdb", "lz4") -- specs that read or write HERO databases
local it_db_mpi = helper.it_needs(it, pending, "lmdb", "lz4", "mpi")
local json = hero.json
local data = hero.data
local D = data.downstream

local smoke = helper.fixture("hero-smoke")
local txt_dir = helper.fixture("data/txt_db")
local tv_video = helper.fixture("data/video_db/tv/resnet_slowfast_1.5")
local SMOKE_IDS = {CLS = 0, BOS = 0, SEP = 2, EOS = 2, PAD = 1, MASK = 996}

-- ------------------------------------------------------------------ helpers

local function load_batch(name)
  return hero.load(smoke .. "/" .. name .. ".safetensors"), json.read_file(smoke .. "/" .. name .. ".json")
end

--- Every key of `expected` is in `got` with the same dtype, shape and values (exact); non-tensor
-- values compare as JSON; `got` has no other key.
local function assert_same_batch(got, expected, name)
  for k in pairs(got) do assert(expected[k] ~= nil, string.format("%s: unexpected key '%s'", name, k)) end
  for k, e in pairs(expected) do
    local a = got[k]
    assert(a ~= nil, string.format("%s: missing key '%s'", name, k))
    if hero.is_tensor(e) then
      assert(hero.is_tensor(a), string.format("%s.%s is not a tensor", name, k))
      assert.are.equal(e:dtype(), a:dtype(), name .. "." .. k .. " dtype")
      assert.are.same(e:size(), a:size(), name .. "." .. k .. " shape")
      if e:numel() > 0 then assert(a:eq(e):all():item(), string.format("%s.%s differs from the reference", name, k)) end
    else
      assert.are.equal(json.encode(e), json.encode(a), name .. "." .. k)
    end
  end
end

local function side_fields(b, side)
  for k, v in pairs(side) do if not k:find("^_") then b[k] = v end end
  return b
end

-- The fixture's synthetic videos, rebuilt from the pre-training representation batches: frames
-- from c_v_feats (MFM's masked frames restored from feat_targets), subtitle tokens from
-- f_sub_input_ids (sub_ctx_len 0 there).
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
        ids[pair[1] + 1] = {table.unpack(r, 2, n)}
      end
      if not videos[vid] then
        videos[vid] = {v_feat = feats, sub2frames = side.sub_idx2frame_idx[i], input_ids = ids}
      end
    end
  end
  return data.MemoryDataset{videos = videos, special_ids = SMOKE_IDS}
end

-- The video of a batch row, found by its frames.
local function video_of_row(ds, b, row)
  local nf = b.c_attn_masks[row]:sum():item()
  local feats = b.c_v_feats[row]:narrow(1, 1, nf)
  for _, vid in ipairs(ds:ids()) do
    local v = ds:get(vid)
    if v.v_feat:size(1) == nf and v.v_feat:eq(feats):all():item() then return v end
  end
  error("no fixture video has the frames of row " .. row)
end

-- The unpadded ids of row r of a [N, L] id tensor with its mask.
local function row_ids(ids, mask, r)
  local n = mask[r]:sum():item()
  return {table.unpack(ids[r]:totable(), 1, n)}
end

local function strip_first(t) return {table.unpack(t, 2)} end

-- ------------------------------------------------------------------ targets

describe("downstream targets", function()
  local expected = json.read_file(txt_dir .. "/expected_txt_db.json")

  it_db("st/ed of every TVR and TVQA query as the reference (12-frame cap, 1.5 s frames)", function()
    local id2nframe = json.read_file(helper.fixture("data/video_db/tv/id2nframe.json"))
    local n = 0
    for _, name in ipairs {"tvr_val.db", "tvqa_val.db"} do
      local db <close> = data.open_txt_db(txt_dir .. "/" .. name)
      for qid, want in pairs(expected.st_ed_targets.result[name]) do
        local ex = db:get(qid)
        local nf = math.min(id2nframe[ex.vid_name], 12)
        local st, ed
        if name == "tvr_val.db" then
          st, ed = D.st_ed_label(ex.target, 1.5, nf - 1)
        else
          st, ed = D.qa_st_ed_label(ex.ts, 1.5, nf - 1)
        end
        assert.are.same(want, {st, ed}, name .. " " .. qid)
        n = n + 1
      end
    end
    assert.are.equal(13, n)
  end)

  it("ts strings that do not parse give -1, -1", function()
    for _, s in ipairs {"NaN-NaN", "inf-3", "", "5", "a-b", "0x10-3", json.null, nil} do
      assert.are.same({-1, -1}, {D.qa_st_ed_label(s, 1.5, 9)}, tostring(s))
    end
    assert.are.same({1, 3}, {D.qa_st_ed_label(" 1.78 -5.12", 1.5, 9)})
    -- ed is at least st + 1 and both are capped at max_idx
    assert.are.same({9, 9}, {D.st_ed_label({30, 31}, 1.5, 9)})
    assert.are.same({2, 3}, {D.st_ed_label({3.0, 3.2}, 1.5, 9)})
  end)

  it("TVC segments round the end half to even and stop at nframes", function()
    assert.are.same({0, 2}, {D.tvc_st_ed({0, 3.75}, 1.5, 10)})  -- 2.5 -> 2
    assert.are.same({1, 4}, {D.tvc_st_ed({1.5, 5.25}, 1.5, 10)}) -- 3.5 -> 4
    assert.are.same({10, 10}, {D.tvc_st_ed({20, 30}, 1.5, 10)})  -- an empty segment past the video
    -- a time whose frame index does not fit an integer is capped like any other (Python's ints)
    assert.are.same({4, 4}, {D.tvc_st_ed({1e20, 1e20 + 1e5}, 1.5, 4)})
    assert.are.same({0, 4}, {D.tvc_st_ed({0, 1e300}, 1.5, 4)})
    assert.are.same({4, 4}, {D.st_ed_label({1e20, 1e20 + 1e5}, 1.5, 4)})
    assert.are.same({4, 4}, {D.qa_st_ed_label("1e20-1e21", 1.5, 4)})
    helper.assert_error_contains(function() D.tvc_st_ed({-1e20, 3}, 1.5, 4) end, "tvc_st_ed", "out of range")
    assert.are.equal(2, D.round_half_even(2.5))
    assert.are.equal(-2, D.round_half_even(-2.5))
    assert.are.equal("vl6660-1", D.paired_statement_id("vl6660-0"))
    assert.are.equal("a-b-0", D.paired_statement_id("a-b-1"))
    helper.assert_error_contains(function() D.paired_statement_id("x") end, "does not end in -0 or -1")
  end)
end)

-- ------------------------------------------------------------------ fixture batches

describe("downstream collates rebuild the reference's batches", function()
  local ds
  setup(function() ds = fixture_videos() end)

  it("vcmr_collate: one item per query, a video used twice, q_vidx of its last occurrence", function()
    local b, side = load_batch("vcmr_batch")
    local items = {}
    for i, vid in ipairs(side.vids) do
      local ex = {input_ids = strip_first(row_ids(b.query_input_ids, b.query_attn_masks, i)),
                  st_ed = b.targets[i]:totable()}
      items[i] = D.vcmr_item(ds:get(vid), {ex}, {special_ids = SMOKE_IDS, sub_ctx_len = 0})
    end
    assert_same_batch(D.vcmr_collate(items), side_fields(b, side), "vcmr_batch")
    assert.are.same({2, 1, 2, 3}, b.q_vidx:totable())
  end)

  it("video_qa_collate: 5 copies per question, [SEP] q [SEP] a on every segment", function()
    local b, side = load_batch("videoqa_batch")
    local items = {}
    local N = b.targets:size(1)
    for q = 1, N do
      local v = video_of_row(ds, b, (q - 1) * 5 + 1)
      local lists = {}
      for a = 1, 5 do
        local qa = row_ids(b.qa_input_ids, b.qa_attn_masks, (q - 1) * 5 + a)
        assert.are.equal(SMOKE_IDS.SEP, qa[1])
        local second
        for j = 2, #qa do if qa[j] == SMOKE_IDS.SEP then second = j break end end
        lists[1] = {table.unpack(qa, 2, second - 1)}
        lists[a + 1] = {table.unpack(qa, second + 1)}
      end
      items[q] = D.videoqa_item(v, {{input_ids = lists, target = b.targets[q][1]:item(),
        ts_target = b.ts_targets[q]:totable()}}, {special_ids = SMOKE_IDS, sub_ctx_len = 0})
    end
    assert_same_batch(D.videoqa_collate(items), side_fields(b, side), "videoqa_batch")
    assert.are.same({{-1, -1}}, {b.ts_targets[2]:totable()}) -- the unparsable ts
  end)

  it("violin_collate: statement pairs, sub_ctx_len 2", function()
    local b, side = load_batch("violin_batch")
    local items = {}
    for p, pair in ipairs(side._qids) do
      local v = video_of_row(ds, b, 2 * p - 1)
      local exs = {}
      for k = 1, 2 do
        local r = 2 * (p - 1) + k
        exs[k] = {input_ids = strip_first(row_ids(b.q_input_ids, b.q_attn_masks, r)), target = b.targets[r][1]:item(),
                  qid = pair[k]}
      end
      assert.are.equal(pair[2], D.paired_statement_id(pair[1]))
      items[p] = D.violin_item(v, exs, {special_ids = SMOKE_IDS, sub_ctx_len = 2})
    end
    assert_same_batch(D.violin_collate(items), side_fields(b, side), "violin_batch")
  end)

  it("TVC collate: [BOS] caption / caption [EOS], segment masks incl. an empty one", function()
    local b, side = load_batch("tvc_batch")
    local items, row = {}, 0
    for i, vid in ipairs(side._vids) do
      local exs = {}
      for k, range in ipairs(side.clip_ranges[i]) do
        row = row + 1
        local tgt = row_ids(b.cap_tgt_ids, b.cap_tgt_ids:ne(-1), row)
        assert.are.equal(SMOKE_IDS.EOS, tgt[#tgt])
        exs[k] = {input_ids = {table.unpack(tgt, 1, #tgt - 1)}, range = range}
      end
      items[i] = D.tvc_item(ds:get(vid), exs, {special_ids = SMOKE_IDS, sub_ctx_len = 1, max_txt_len = 60})
    end
    assert_same_batch(D.tvc_collate(items), side_fields(b, side), "tvc_batch")
    assert.are.equal(0, b.cap_attn_mask[4]:sum():item()) -- clip [7, 7) of a 7-frame video
  end)

  it("bad items give clear errors", function()
    helper.assert_error_contains(function() D.vcmr_collate({{}}) end, "has no queries")
    helper.assert_error_contains(function() D.videoqa_collate({{}}) end, "not a question/statement item")
    helper.assert_error_contains(function() D.tvc_collate({{}}) end, "has no captions")
    helper.assert_error_contains(function() D.vcmr_item(ds:get("vid_a"), {{input_ids = {1}}}, {}) end,
      "special_ids")
    helper.assert_error_contains(function()
      D.videoqa_item(ds:get("vid_a"), {{input_ids = {{5}}}}, {special_ids = SMOKE_IDS})
    end, "input_ids must be {question, answer1, ...}")
    -- 5 answers beside 3: the model's [questions, answers] view would regroup them as 4 + 4
    local five = D.videoqa_item(ds:get("vid_a"), {{input_ids = {{5}, {6}, {7}, {8}, {9}, {10}}, target = 0,
      qid = "q5"}}, {special_ids = SMOKE_IDS})
    local three = D.videoqa_item(ds:get("vid_a"), {{input_ids = {{5}, {6}, {7}, {8}}, target = 0, qid = "q3"}},
      {special_ids = SMOKE_IDS})
    helper.assert_error_contains(function() D.videoqa_collate({five, three}) end, "videoqa_collate",
      "question 'q3' has 3 answers but question 'q5' has 5")
    local unnamed = D.videoqa_item(ds:get("vid_a"), {{input_ids = {{5}, {6}, {7}, {8}}, target = 0},
      {input_ids = {{5}, {6}, {7}}, target = 0}}, {special_ids = SMOKE_IDS})
    helper.assert_error_contains(function() D.videoqa_collate({unnamed}) end,
      "question 2 of item 1 has 2 answers but question 1 of item 1 has 3")
    assert.are.equal(6, D.videoqa_collate({three, three}).qa_input_ids:size(1)) -- equal counts batch as before
  end)
end)

-- ------------------------------------------------------------------ the TV fixture databases

local FT = require "hero.train.finetune"
local expected_txt = json.read_file(txt_dir .. "/expected_txt_db.json")

-- The TVR validation queries of one type ("v", "t" or "vt") as a query database in dir: a split
-- lacking the other types, whose by-type metrics have no sample.
local function single_type_query_db(dir, desc_type)
  local prepro = require "hero.data.prepro"
  local tok = hero.text.Tokenizer.from_files(helper.fixture("tokenizer/roberta-base-vocab.json"),
    helper.fixture("tokenizer/vocab.bpe"))
  local kept = {}
  for _, q in ipairs(json.read_lines(txt_dir .. "/tvr_val.db/query_data.jsonl", {ordered = true})) do
    if q.type == desc_type then kept[#kept + 1] = q end
  end
  local out = dir .. "/tvr_" .. desc_type .. "_only.db"
  prepro.query_db{queries = kept, out = out, tokenize = function(text) return tok:encode(text) end,
    meta = json.read_file(txt_dir .. "/tvr_val.db/meta.json")}
  return out, #kept
end

local function tv_videos(sub_ctx_len)
  return data.VideoSubDataset{video_db = tv_video, sub_db = txt_dir .. "/tv_subtitles.db", max_clip_len = 12,
    sub_ctx_len = sub_ctx_len or 0}
end

describe("downstream datasets on the TV databases", function()
  it_db("VCMR: the max_txt_len filter of training, every query for evaluation, st/ed targets", function()
    local video = tv_videos()
    local train = D.QueryDataset{task = "vcmr", video = video, query_db = txt_dir .. "/tvr_val.db", max_txt_len = 60}
    assert.are.same(expected_txt.length_filter.result["tvr_val.db"]["60"], train:ids())
    local all = D.QueryDataset{task = "vcmr", video = video, query_db = txt_dir .. "/tvr_val.db", train = false}
    assert.are.same(expected_txt.length_filter.result["tvr_val.db"]["-1"], all:ids())
    local want = expected_txt.st_ed_targets.result["tvr_val.db"]
    local items = {}
    for i, qid in ipairs(all:ids()) do
      items[i] = assert(all:item(qid))
      assert.are.same(want[qid], items[i].queries[1].target, qid)
    end
    local b = D.vcmr_collate({items[1], items[8], items[2]}, {qids = true})
    -- 90889 and 90896 share friends_s01e01_seg02_clip_00: q_vidx points at its last occurrence
    assert.are.same({"90889", "90896", "90890"}, b.qids)
    assert.are.same({1, 1, 2}, b.q_vidx:totable())
    assert.are.same({3, 64}, b.query_input_ids:size()) -- 90890: [CLS] + 63 tokens (no cut)
    assert.are.same({want["90889"], want["90896"], want["90890"]}, b.targets:totable())
    assert.are.equal(0, b.query_input_ids[1][1]:item()) -- [CLS]
    assert.are.equal(3, b.c_v_feats:size(1))
  end)

  it_db("video-only (DiDeMo, MSR-VTT): one [CLS] segment of every frame, targets on the capped frames", function()
    local id2nframe = json.read_file(helper.fixture("data/video_db/tv/id2nframe.json"))
    local sorted = json.keys(id2nframe)
    table.sort(sorted)
    local video = data.VideoOnlyDataset{video_db = tv_video, query_db = txt_dir .. "/tvr_val.db", max_clip_len = 12}
    assert.are.same(sorted, video:ids()) -- VideoFeatDataset: the id2nframe keys, sorted
    for i, vid in ipairs(sorted) do
      assert.are.equal(i - 1, video.vid2idx[vid])
      local v = assert(video:get(vid))
      local n = math.min(id2nframe[vid], 12)
      assert.are.equal(n, v.v_feat:size(1))
      assert.are.equal(n, video:length(vid))
      local frames = {}
      for f = 1, n do frames[f] = f - 1 end
      assert.are.same({{0, frames}}, v.sub2frames)
      local item = D.vcmr_item(v, {}, {special_ids = video:special_ids()})
      assert.are.same({{ids = {0}, frames = frames}}, item.segments) -- [CLS] (tvr_val.db's meta: 0)
    end
    assert.is_nil((video:get("no_such_video")))
    -- the st/ed targets depend on the frame count only: the same as with subtitles
    local q = D.QueryDataset{task = "vcmr", video = video, query_db = txt_dir .. "/tvr_val.db", train = false}
    local want = expected_txt.st_ed_targets.result["tvr_val.db"]
    local items = {}
    for i, qid in ipairs(q:ids()) do
      items[i] = assert(q:item(qid))
      assert.are.same(want[qid], items[i].queries[1].target, qid)
    end
    local b = D.vcmr_collate({items[1], items[3]})
    assert.are.same({{0}, {0}}, b.f_sub_input_ids:totable())
    assert.are.same({2, 13}, b.f_attn_masks:size()) -- 12 frames + [CLS]
    assert.are.equal(26, b.f_attn_masks:sum():item())
    assert.are.same({1, 1}, b.num_subs)
    -- bad uses
    helper.assert_error_contains(function()
      D.QueryDataset{task = "videoqa", video = video, query_db = txt_dir .. "/tvqa_val.db"}
    end, "video-only dataset serves the retrieval tasks")
    helper.assert_error_contains(function() D.CaptionDataset{video = video, cap_db = txt_dir .. "/tvr_val.db"} end,
      "video-only dataset cannot serve it")
    helper.assert_error_contains(function() data.VideoOnlyDataset{video_db = tv_video} end, "special_ids")
    helper.assert_error_contains(function()
      data.VideoOnlyDataset{video_db = tv_video, query_db = "/nonexistent/q.db"}
    end, "meta.json")
    video:close()
  end)

  it_db("TVC: caption and clip databases as prepro_tvc.py writes them, read back by CaptionDataset", function()
    local prepro = require "hero.data.prepro"
    -- overlapping subtitles: starting or ending strictly inside the moment, or spanning it
    assert.are.same({1, 2, 4}, prepro.overlapping_subs({2, 5}, {{start = 0, ["end"] = 2}, {start = 1, ["end"] = 3},
      {start = 4, ["end"] = 6}, {start = 5, ["end"] = 7}, {start = 1, ["end"] = 9}}))
    -- clips of the TV videos, captioned with TVR queries of the same video
    local sdb = data.open_txt_db(txt_dir .. "/tv_subtitles.db")
    local subs, sub_of = {}, {}
    for i, k in ipairs(sdb:keys()) do
      subs[i] = {vid_name = k, sub = sdb:get(k).sub}
      sub_of[k] = subs[i].sub
    end
    sdb:close()
    local clips, by_vid = {}, {}
    for _, q in ipairs(json.read_lines(txt_dir .. "/tvr_val.db/query_data.jsonl")) do
      local c = by_vid[q.vid_name]
      if not c then
        c = {clip_id = 7000 + #clips, vid_name = q.vid_name, ts = q.ts, duration = q.duration, descs = {}}
        by_vid[q.vid_name] = c
        clips[#clips + 1] = c
      end
      c.descs[#c.descs + 1] = {desc_id = q.desc_id, desc = q.desc, type = q.type}
    end
    local tok = hero.text.Tokenizer.from_files(helper.fixture("tokenizer/roberta-base-vocab.json"),
      helper.fixture("tokenizer/vocab.bpe"))
    local out = os.tmpname()
    os.remove(out)
    local r = prepro.caption_db{captions = clips, subs = subs, out = out,
      tokenize = function(s) return tok:encode(s) end}
    assert.are.same({clips = #clips, captions = 9}, r)
    local cap, clip = data.open_txt_db(out .. "/cap.db"), data.open_txt_db(out .. "/clip.db")
    local first = clips[1]
    local c1 = cap:get(tostring(first.descs[1].desc_id))
    assert.are.same(tok:encode(first.descs[1].desc), c1.input_ids)
    assert.are.same({first.vid_name, tostring(first.clip_id), first.ts, first.duration},
      {c1.vid_name, c1.clip_id, c1.ts, c1.duration})
    assert.are.same(prepro.overlapping_subs(first.ts, sub_of[first.vid_name]), c1.sub_indices)
    local k1 = clip:get(tostring(first.clip_id))
    assert.are.equal(#first.descs, #k1.captions)
    assert.are.same({id = first.descs[1].desc_id, input_ids = c1.input_ids, text = first.descs[1].desc},
      k1.captions[1])
    assert.are.same({}, cap:json("id2len")) -- prepro_tvc.py never fills it
    assert.are.equal(first.vid_name, clip:json("clip2vid")[tostring(first.clip_id)])
    local vids = {}
    for i, c in ipairs(clips) do vids[i] = c.vid_name end
    assert.are.same(vids, json.keys(cap:json("vid2caps"))) -- the videos in the annotation's order
    cap:close()
    clip:close()
    assert.are.equal(0, json.read_file(out .. "/meta.json").BOS)
    local ds = D.CaptionDataset{video = tv_videos(), cap_db = out}
    local item = assert(ds:item(first.vid_name))
    assert.is_table(item)
    local ev = assert(ds:eval_item(first.vid_name))
    assert.is_table(ev)
    helper.assert_error_contains(function()
      prepro.caption_db{captions = {{clip_id = 1, vid_name = "nope", ts = {0, 1}, duration = 5, descs = {}}},
        subs = subs, out = out .. "/bad", tokenize = function() return {} end}
    end, "video 'nope' has no subtitles")
    assert.is_nil(io.open(out .. "/bad/cap.db/data.mdb")) -- nothing half-written
    os.execute('rm -rf "' .. out .. '"')
  end)

  it_db("TVC: a video of no frame is skipped at evaluation as in training, not failing its batch", function()
    local prepro = require "hero.data.prepro"
    local out = os.tmpname()
    os.remove(out)
    prepro.caption_db{captions = {
        {clip_id = 1, vid_name = "empty", ts = {0, 3}, duration = 5, descs = {{desc_id = 7, desc = "a b"}}},
        {clip_id = 2, vid_name = "full", ts = {0, 3}, duration = 5, descs = {{desc_id = 8, desc = "c d"}}}},
      subs = {{vid_name = "empty", sub = {}}, {vid_name = "full", sub = {}}}, out = out,
      tokenize = function(text)
        local ids = {}
        for w in text:gmatch("%S+") do ids[#ids + 1] = #w + 10 end
        return ids
      end}
    local function frames(n)
      local idx = {}
      for f = 1, n do idx[f] = f - 1 end
      return {v_feat = hero.zeros({n, 4}), sub2frames = n > 0 and {{0, idx}} or {}, input_ids = {{11, 12}}}
    end
    local video = data.MemoryDataset{videos = {empty = frames(0), full = frames(3)},
      special_ids = {CLS = 0, BOS = 0, SEP = 2, EOS = 2, PAD = 1, MASK = 50264}}
    local ds = D.CaptionDataset{video = video, cap_db = out}
    local item, why = ds:item("empty")
    assert.is_nil(item)
    assert.are.equal("video 'empty' has no frame", why)
    item, why = ds:eval_item("empty")
    assert.is_nil(item)
    assert.are.equal("video 'empty' has no frame", why)
    assert.is_table(ds:eval_item("full"))
    -- the evaluation loader drops the empty video and still batches the other one
    local skipped = {}
    local loader = D.Loader{dataset = ds, batch_size = 4, shuffle = false, eval = true,
      on_skip = function(id, reason) skipped[#skipped + 1] = id .. ": " .. reason end}
    local clips = {}
    for b in loader:iter() do
      for _, c in ipairs(b.clip_ids) do clips[#clips + 1] = c end
    end
    assert.are.same({"empty: video 'empty' has no frame"}, skipped)
    assert.are.same({"2"}, clips)
    ds:close()
    os.execute('rm -rf "' .. out .. '"')
  end)

  it_db("TVQA: five answer copies per question, the 120-token filter, ts targets", function()
    local qa = D.QueryDataset{task = "videoqa", video = tv_videos(), query_db = txt_dir .. "/tvqa_val.db",
      max_txt_len = 120}
    assert.are.same(expected_txt.length_filter.result["tvqa_val.db"]["120"], qa:ids())
    local want = expected_txt.st_ed_targets.result["tvqa_val.db"]
    local items = {}
    for i, qid in ipairs(qa:ids()) do
      items[i] = assert(qa:item(qid))
      assert.are.same(want[qid], items[i].ts_targets[1], qid)
      assert.are.equal(5, #items[i].copies)
    end
    local b = D.videoqa_collate(items, {qids = true})
    assert.are.same({15, 12, 24}, b.c_v_feats:size())
    assert.are.same({3, 1}, b.targets:size())
    assert.are.same({1, 0, 0}, b.targets:reshape(3):totable())
    local ex = qa:example("130002")
    -- every segment of a copy ends with [SEP] q [SEP] a
    local qa_ids = row_ids(b.qa_input_ids, b.qa_attn_masks, 2)
    local want_qa = {2}
    for _, t in ipairs(ex.input_ids[1]) do want_qa[#want_qa + 1] = t end
    want_qa[#want_qa + 1] = 2
    for _, t in ipairs(ex.input_ids[3]) do want_qa[#want_qa + 1] = t end
    assert.are.same(want_qa, qa_ids)
    local seg = row_ids(b.f_sub_input_ids, b.f_sub_input_attn_masks, b.num_subs[1] + 1) -- copy 2, segment 1
    assert.are.same(want_qa, {table.unpack(seg, #seg - #want_qa + 1)})
  end)

  it_db("VIOLIN: a statement and its pair for training, single statements for evaluation", function()
    local video = tv_videos(2)
    local tr = D.QueryDataset{task = "violin", video = video, query_db = txt_dir .. "/violin_test.db",
      max_txt_len = 120}
    local it = assert(tr:item("vl6660-1"))
    assert.are.same({"vl6660-1", "vl6660-0"}, it.qids)
    assert.are.same({1, 0}, it.targets)
    local ev = D.QueryDataset{task = "violin", video = video, query_db = txt_dir .. "/violin_test.db", train = false}
    local b = D.violin_collate({assert(ev:item("vl9611-0"))})
    assert.are.same({{0}}, b.targets:totable())
    assert.are.equal(2, b.q_input_ids[1][1]:item()) -- [SEP]
  end)

  it_db("the loader of a data-parallel rank serves ids[rank::world]", function()
    local ds = D.QueryDataset{task = "vcmr", video = tv_videos(), query_db = txt_dir .. "/tvr_val.db",
      max_txt_len = -1, ids = {"90889", "90890", "90891", "90892", "90893"}}
    local seen = {}
    for rank = 0, 1 do
      local L = D.Loader{dataset = ds, batch_size = 8, seed = 1, shuffle = false, rank = rank, world_size = 2,
        qids = true}
      seen[rank + 1] = L:next().qids
    end
    assert.are.same({{"90889", "90891", "90893"}, {"90890", "90892"}}, seen)
    helper.assert_error_contains(function() D.Loader{dataset = ds, rank = 2, world_size = 2} end, "0 <= rank")
    -- equal shares (validation): the fifth query is left out
    for rank = 0, 1 do
      local L = D.Loader{dataset = ds, batch_size = 8, seed = 1, shuffle = false, rank = rank, world_size = 2,
        qids = true, equal_shards = true}
      seen[rank + 1] = L:next().qids
    end
    assert.are.same({{"90889", "90891"}, {"90890", "90892"}}, seen)
  end)

  it_db("the loader: seeded epochs, skipped queries reported, resume bit for bit", function()
    local video = tv_videos()
    local ds = D.QueryDataset{task = "vcmr", video = video, query_db = txt_dir .. "/tvr_val.db", max_txt_len = -1,
      ids = {"90889", "90890", "nope", "90891", "90892"}}
    local skipped = {}
    local L = D.Loader{dataset = ds, batch_size = 2, seed = 5,
      on_skip = function(id, why) skipped[#skipped + 1] = id .. why end}
    L:next()
    local st = L:state()
    local a = {L:next(), L:next(), L:next()}
    L:set_state(st)
    for i = 1, 3 do
      local b = L:next()
      assert(b.query_input_ids:eq(a[i].query_input_ids):all():item())
    end
    assert.is_true(#skipped >= 1)
    assert.matches("nope.*not in the query db", skipped[1])
    local strict = D.Loader{dataset = ds, batch_size = 5, on_error = "error", shuffle = false}
    helper.assert_error_contains(function() strict:next() end, "'nope'", "not in the query db")
    -- a state of a loader with other settings would resume other batches
    for k, v in pairs{batch_size = 3, seed = 6, shuffle = false, drop_last = true} do
      local opts = {dataset = ds, batch_size = 2, seed = 5}
      opts[k] = v
      helper.assert_error_contains(function() D.Loader(opts):set_state(st) end, "with " .. k .. " = ")
    end
    local bad_pos = {}
    for k, v in pairs(st) do bad_pos[k] = v end
    bad_pos.pos = 99
    local M = D.Loader{dataset = ds, batch_size = 2, seed = 5}
    local first = M:next()
    M = D.Loader{dataset = ds, batch_size = 2, seed = 5}
    helper.assert_error_contains(function() M:set_state(bad_pos) end, "position 99 is outside 1..4")
    -- the refused state left the loader as it was
    assert(M:next().query_input_ids:eq(first.query_input_ids):all():item())
    bad_pos.pos, bad_pos.items = 1, -1
    helper.assert_error_contains(function() M:set_state(bad_pos) end, "items must be a count")
  end)
end)

-- ------------------------------------------------------------------ fine-tuning and evaluation

local tmpdir
local lua_cmd = string.format("LUA_PATH='%s' LUA_CPATH='%s' lua5.4", package.path, package.cpath)

-- Runs an example program; returns its exit status and its output (stdout and stderr).
local function run_example(script, args)
  local q = {}
  for i, a in ipairs(args) do q[i] = "'" .. a:gsub("'", "'\\''") .. "'" end
  local p = io.popen(lua_cmd .. " examples/" .. script .. " " .. table.concat(q, " ") .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc, out
end

--- Runs examples/SCRIPT under `mpirun -np 2` with the arguments in `args` (a shell-quoted
-- string); returns whether it succeeded and its output, or nil when mpirun is not installed.
local function mpirun2(script, args)
  if not os.execute("command -v mpirun >/dev/null 2>&1") then return nil end
  local asan = os.getenv("ASAN_OPTIONS")
  local env = asan and ("ASAN_OPTIONS='" .. asan .. ":detect_leaks=0' ") or "" -- OpenMPI's own allocations
  local p = io.popen(string.format("%s%s timeout -k 5 300 mpirun -np 2 --oversubscribe --allow-run-as-root "
    .. "--bind-to none --mca btl_vader_single_copy_mechanism none lua5.4 examples/%s --dist --threads 1 %s 2>&1",
    env, lua_cmd:gsub(" lua5.4$", ""), script, args))
  local text = p:read("a")
  return p:close() and true or false, text
end

local function has_mpirun() return os.execute("command -v mpirun >/dev/null 2>&1") end

local tiny_section = helper.tiny_section

-- A released-style training config for the TV fixture databases and the tiny model.
local train_config = helper.finetune_config

local TXT = {vcmr = "tvr_val.db", vr = "tvr_val.db", videoqa = "tvqa_val.db", violin = "violin_test.db",
             tvc = "tvr_val.db"}

local function setup_run(task, hps_over)
  local raw = train_config(task)
  for k, v in pairs(hps_over or {}) do raw[k] = v end
  local hps = FT.hparams(task, raw, "train-" .. task .. ".json")
  local cfg = FT.model_config(hps, tmpdir .. "/model.json")
  return FT.setup{task = task, hps = hps, model_config = cfg, checkpoint = tmpdir .. "/init.safetensors",
    vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db, txt_db = txt_dir .. "/" .. TXT[task], progress = false}, hps
end

describe("fine-tuning and evaluation", function()
  setup(function()
    tmpdir = os.tmpname()
    os.remove(tmpdir)
    assert(os.execute('mkdir -p "' .. tmpdir .. '"'))
    local cfg = {f_config = tiny_section(), c_config = tiny_section {max_position_embeddings = 32},
      q_config = tiny_section {num_hidden_layers = 0}, d_config = tiny_section {max_position_embeddings = 64}}
    json.write_file(tmpdir .. "/model.json", cfg)
    hero.manual_seed(3)
    local m = hero.models.HeroForPretraining(hero.config.model(cfg), {vfeat_dim = 24, max_frm_seq_len = 16})
    m:save_checkpoint(tmpdir .. "/init.safetensors")
    for _, t in ipairs {"vcmr", "videoqa", "violin", "tvc"} do
      json.write_file(tmpdir .. "/train-" .. t .. ".json", train_config(t))
    end
  end)
  teardown(function()
    if tmpdir and tmpdir:match("^/tmp/") then os.execute('rm -rf "' .. tmpdir .. '"') end
  end)

  it_db("VCMR: a validation split lacking a query type writes its NaN by-type metrics as the reference", function()
    local out = tmpdir .. "/vcmr_t_only"
    local t_only, n = single_type_query_db(tmpdir, "t")
    assert.are.equal(3, n)
    local raw = train_config("vcmr")
    local hps = FT.hparams("vcmr", raw, "cfg")
    local run = FT.setup{task = "vcmr", hps = hps, model_config = FT.model_config(hps, tmpdir .. "/model.json"),
      checkpoint = tmpdir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
      txt_db = txt_dir .. "/tvr_val.db", valid_txt_db = t_only, valid_every = 1, out_dir = out, save_every = 100,
      progress = false}
    local recs = run.trainer:train(1)
    -- results_val/step_1.json: NaN where train_vcmr.py's json.dump writes NaN (0 / 0 queries of type v)
    local path = out .. "/results_val/step_1.json"
    local text = assert(io.open(path)):read("a")
    assert.truthy(text:find('"v%-0%.5%-r1": ?NaN'), "no NaN written for the missing type")
    local res = json.read_file(path, {allow_nan = true})
    local v = res.metrics.VCMR_by_type["v-0.5-r1"]
    assert.is_true(v ~= v)
    assert.is_number(res.metrics.VCMR_by_type["t-0.5-r1"])
    assert.are.equal(res.metrics.VCMR["0.5-r1"], res.metrics.VCMR_by_type["t-0.5-r1"])
    -- the run goes on: the record holds the NaN, log.jsonl strict JSON with null, TensorBoard skips it
    local full = recs[1].valid.full_eval
    local key = "valid_val_VCMR_by_type/VCMR_by_type_v-0.5-r1"
    assert.is_true(full[key] ~= full[key])
    local last
    for l in io.lines(out .. "/log.jsonl") do last = l end
    local logged = json.decode(last).valid.full_eval
    assert.are.equal(json.null, logged[key])
    assert.is_number(logged["valid_val_VR/VR_r1"])
    local tags = {}
    for _, sc in ipairs(require("hero.tensorboard").read_run(out .. "/tensorboard")) do
      assert.is_true(sc.value == sc.value, sc.tag)
      tags[sc.tag] = true
    end
    assert.is_nil(tags["valid/full_eval/" .. key])
    assert.is_true(tags["valid/full_eval/valid_val_VR/VR_r1"])
  end)

  it("absent keys take the argparse defaults of the task's own script (train_tvc.py's sub_ctx_len 1)", function()
    for task, want in pairs {tvc = 1, violin = 0, videoqa = 0, vcmr = 0, vr = 0} do
      local c = train_config(task)
      c.sub_ctx_len = nil
      assert.are.equal(want, FT.hparams(task, c, "cfg").sub_ctx_len, task)
    end
    -- a config's own value still wins
    local c = train_config("tvc")
    c.sub_ctx_len = 0
    assert.are.equal(0, FT.hparams("tvc", c, "cfg").sub_ctx_len)
    c = train_config("tvc")
    c.max_gen_step, c.max_cap_per_vid = nil, nil
    local hps = FT.hparams("tvc", c, "cfg")
    assert.are.same({30, -1}, {hps.max_gen_step, hps.max_cap_per_vid})
  end)

  it_db("optimizer groups: lr_mul on the heads for VideoQA / VIOLIN / TVC, never for VCMR", function()
    local function mul_of(opt, name)
      for _, e in ipairs(opt.entries) do
        if e.name == name then return opt.lr_mul[e.group] or 1, e.decay end
      end
      error("no parameter " .. name)
    end
    local qa = setup_run("videoqa")
    assert.are.same({10.0, true}, {mul_of(qa.optimizer, "qa_pool.weight")})
    assert.are.same({10.0, false}, {mul_of(qa.optimizer, "qa_pred_head.linear_1.bias")})
    assert.are.same({1, true}, {mul_of(qa.optimizer, "v_encoder.f_encoder.img_embeddings.img_linear.weight")})
    assert.are.same({1, false}, {mul_of(qa.optimizer, "v_encoder.c_encoder.embeddings.LayerNorm.weight")})
    local vc = setup_run("vcmr", {lr_mul = 5.0})
    assert.are.same({1, true}, {mul_of(vc.optimizer, "video_query_linear.weight")})
    assert.are.same({"AdamW", 1e-6}, {vc.optimizer.kind, vc.optimizer.eps})
    -- the config's optim picks the class; eps stays the class's default (build_optimizer passes none)
    local ax = setup_run("videoqa", {optim = "adamax"})
    assert.are.same({"Adamax", 1e-8}, {ax.optimizer.kind, ax.optimizer.eps})
    assert.are.same({10.0, true}, {mul_of(ax.optimizer, "qa_pool.weight")})
  end)

  it_db("VCMR schedules: the local loss from train_span_start_step, hard negatives from their start", function()
    local run, hps = setup_run("vcmr")
    local fo = FT.forward_opts("vcmr", run.model, hps)
    local o = run.model.opts
    assert.are.equal(0, o.lw_st_ed) -- the reference builds the model with lw_st_ed = 0
    fo("tvr", 2) -- update 2: one update done
    assert.are.same({0, nil}, {o.lw_st_ed, o.hard_negative})
    fo("tvr", 3)
    assert.are.same({0.01, nil}, {o.lw_st_ed, o.hard_negative})
    fo("tvr", 4)
    assert.are.same({0.01, {pool_size = 2, weight = 10}}, {o.lw_st_ed, o.hard_negative})
    fo("tvr", 1) -- decided from the step alone, so a resumed run decides the same way
    assert.are.same({0, nil}, {o.lw_st_ed, o.hard_negative})
    local never, nh = setup_run("vcmr", {hard_negtiave_start_step = {-1}, train_span_start_step = -1})
    FT.forward_opts("vcmr", never.model, nh)("tvr", 100)
    assert.are.same({0, nil}, {never.model.opts.lw_st_ed, never.model.opts.hard_negative})
  end)

  it_db("validation losses every valid_steps on a validation db (single VIOLIN statements)", function()
    local raw = train_config("violin")
    local hps = FT.hparams("violin", raw, "cfg")
    local run = FT.setup{task = "violin", hps = hps, model_config = FT.model_config(hps, tmpdir .. "/model.json"),
      checkpoint = tmpdir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
      txt_db = txt_dir .. "/violin_test.db", valid_txt_db = txt_dir .. "/violin_test.db", valid_every = 2,
      progress = false}
    local recs = run.trainer:train(2)
    assert.is_nil(recs[1].valid)
    assert.is_number(recs[2].valid.violin)
    assert.is_true(recs[2].valid.violin > 0)
    assert.is_table(recs[2].valid.full_eval) -- the test split has no labels: no accuracy
    local loss_only = FT.setup{task = "violin", hps = hps, model_config = FT.model_config(hps, tmpdir .. "/model.json"),
      checkpoint = tmpdir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
      txt_db = txt_dir .. "/violin_test.db", valid_txt_db = txt_dir .. "/violin_test.db", valid_every = 2,
      progress = false, full_eval = false}
    assert.is_nil(loss_only.trainer:train(2)[2].valid.full_eval)
  end)

  it_db("VCMR: the full retrieval evaluation of the validation split every valid_steps, as train_vcmr.py", function()
    local out = tmpdir .. "/vcmr_valid"
    local raw = train_config("vcmr")
    local hps = FT.hparams("vcmr", raw, "cfg")
    local run = FT.setup{task = "vcmr", hps = hps, model_config = FT.model_config(hps, tmpdir .. "/model.json"),
      checkpoint = tmpdir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
      txt_db = txt_dir .. "/tvr_val.db", valid_txt_db = txt_dir .. "/tvr_val.db", valid_every = 2, out_dir = out,
      test_txt_db = txt_dir .. "/tvr_val.db", save_every = 100, progress = false}
    local recs = run.trainer:train(2)
    local full = recs[2].valid.full_eval
    -- test_query_txt_db: its full evaluation beside the validation split's (the same db here)
    local test = recs[2].valid.full_eval_test
    assert.is_number(test["valid_test_VR/VR_r1"])
    assert.equal(full["valid_val_VR/VR_r1"], test["valid_test_VR/VR_r1"])
    assert.are.equal(9, #json.read_file(out .. "/results_test/step_2.json").submission.VCMR)
    helper.assert_error_contains(function()
      FT.setup{task = "vcmr", hps = hps, model_config = FT.model_config(hps, tmpdir .. "/model.json"),
        checkpoint = tmpdir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
        txt_db = txt_dir .. "/tvr_val.db", test_txt_db = txt_dir .. "/tvr_val.db", progress = false}
    end, "test_txt_db", "needs valid_txt_db")
    assert.is_number(full["valid_val_VR/VR_r1"])
    assert.is_number(full["valid_val_VCMR/VCMR_0.7-r1"])
    local res = json.read_file(out .. "/results_val/step_2.json")
    assert.are.equal(9, #res.submission.VCMR)
    assert.are.equal(full["valid_val_VR/VR_r1"], res.val_log["valid_val_VR/VR_r1"])
    local line
    for l in io.lines(out .. "/log.jsonl") do line = l end
    assert.is_number(json.decode(line).valid.full_eval["valid_val_VR/VR_r1"])
    assert.is_true(run.model.training) -- back to training after the evaluation
    -- validate_vcmr's losses: summed over the examples, each part divided by its weight
    local v = recs[2].valid[hps.task]
    for _, k in ipairs {"loss_overall", "loss_st_ed", "loss_neg_ctx", "loss_neg_q"} do assert.is_number(v[k], k) end
    assert.near(hps.lw_st_ed * v.loss_st_ed + hps.lw_neg_ctx * v.loss_neg_ctx + hps.lw_neg_q * v.loss_neg_q,
      v.loss_overall, 1e-9 * math.abs(v.loss_overall))
    -- the same sums by hand, with the local loss on (train_span_start_step 0): the evaluation-mode
    -- losses of every batch, over the examples (not a mean over batches), divided by the weights
    local h = {}
    for k, x in pairs(hps) do h[k] = x end
    h.train_span_start_step = 0
    local r = FT.setup{task = "vcmr", hps = h, model_config = FT.model_config(hps, tmpdir .. "/model.json"),
      checkpoint = tmpdir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
      txt_db = txt_dir .. "/tvr_val.db", valid_txt_db = txt_dir .. "/tvr_val.db", valid_every = 2,
      full_eval = false, progress = false}
    r.model:load_state_dict(run.model:state_dict())
    r.trainer.global_step = 2 -- the schedules of the updates done
    local got = r.trainer:validate()[hps.task]
    local st_ed, ctx, q, n, n_pos, batches = 0, 0, 0, 0, 0, 0
    r.model:evaluate()
    for batch in r.trainer.valid[hps.task]:iter() do
      local o = hero.no_grad(function() return r.model:forward(batch, hps.task) end)
      st_ed = st_ed + o.loss_st_ed:double():sum():item()
      ctx, q = ctx + o.loss_neg_ctx:double():sum():item(), q + o.loss_neg_q:double():sum():item()
      n, n_pos, batches = n + batch.q_vidx:numel(), n_pos + o.loss_neg_ctx:numel(), batches + 1
    end
    r.model:train()
    assert.is_true(batches > 1 and st_ed > 0)
    assert.near(st_ed / n / hps.lw_st_ed, got.loss_st_ed, 1e-9 * got.loss_st_ed)
    assert.near(ctx / n_pos / hps.lw_neg_ctx, got.loss_neg_ctx, 1e-9 * got.loss_neg_ctx)
    assert.near(q / n_pos / hps.lw_neg_q, got.loss_neg_q, 1e-9 * got.loss_neg_q)
  end)

  it("the reference's .pt checkpoints load (fp16 weights into an f32 model, frame sizes from the file)", function()
    local sd = FT.read_checkpoint(smoke .. "/model_fp16.pt")
    local cfg = hero.config.model(json.read_file(smoke .. "/config.json").model_config.finetune)
    local hps = FT.hparams("videoqa", train_config("videoqa"), "cfg")
    local m, report = FT.build_model("videoqa", cfg, hps, sd)
    assert.is_true(#report.missing > 0 and #report.missing < 20) -- only the QA heads
    local w = m.v_encoder.f_encoder.img_embeddings.img_linear.weight
    assert.are.equal("f32", w:dtype())
    assert.are.same({64, 24}, w:size()) -- vfeat_dim 24 from the checkpoint
    assert(w:eq(sd["v_encoder.f_encoder.img_embeddings.img_linear.weight"]:float()):all():item())
    assert.are.equal(8, m.v_encoder.f_encoder.img_embeddings.position_embeddings.weight:size(1))
    -- train_violin.py zero-pads a shorter frame-position table to 100 rows
    local v = FT.build_model("violin", cfg, FT.hparams("violin", train_config("violin"), "cfg"), sd)
    local pos = v.v_encoder.f_encoder.img_embeddings.position_embeddings.weight
    local key = "v_encoder.f_encoder.img_embeddings.position_embeddings.weight"
    assert.are.same({100, sd[key]:size(2)}, pos:size())
    assert(pos:narrow(1, 1, 8):eq(sd[key]:float()):all():item())
    assert.are.equal(0, pos:narrow(1, 9, 92):abs():sum():item())
    assert.are.equal(8, sd[key]:size(1)) -- the caller's state is left as it was
  end)

  for _, task in ipairs {"vcmr", "vr", "videoqa", "violin", "tvc"} do
    it_db(task .. ": a few updates on a repeated batch lower the loss, then evaluation", function()
      -- VCMR with its whole loss from the first update (the schedules are checked below)
      local run, hps = setup_run(task, task == "vcmr" and {hard_negtiave_start_step = {0}, train_span_start_step = 0}
        or nil)
      local batch = run.loader:next()
      local train = hero.train
      local meta = train.MetaLoader{tasks = {[hps.task] = train.CyclingLoader({batch})}, ratios = {[hps.task] = 1},
        accum = 1, generator = hero.Generator(1)}
      local tr = train.Trainer{model = run.model, optimizer = run.optimizer, loader = meta, lr = hps.learning_rate,
        warmup = 1, total = 50, grad_norm = 1.0, progress = false, forward_opts = FT.forward_opts(task, run.model, hps)}
      local recs = tr:train(task == "tvc" and 4 or 5)
      assert.is_true(recs[#recs].loss < recs[1].loss, string.format("%s: loss %g -> %g", task, recs[1].loss,
        recs[#recs].loss))
      local tok
      if task == "tvc" then
        tok = hero.text.Tokenizer.from_files(helper.fixture("tokenizer/roberta-base-vocab.json"),
          helper.fixture("tokenizer/vocab.bpe"))
      end
      local res = FT.evaluate(task, run.model, hps, {video = run.video, txt_db = txt_dir .. "/" .. TXT[task],
        split = "val", tokenizer = tok})
      if task == "vcmr" then
        for _, k in ipairs {"VCMR", "SVMR", "VR"} do assert.are.equal(9, #res.submission[k]) end
        assert.are.equal(7, #json.keys(res.submission.video2idx))
        assert.are.equal(2, res.submission.video2idx["grey_s05e09_seg02_clip_17"]) -- vid2dur_idx.json's index
        local p = res.submission.VCMR[1].predictions[1]
        assert.are.equal(4, #p)
        assert.are.equal(90889, res.submission.VCMR[1].desc_id)
        assert.is_not_nil(res.metrics.VCMR["0.7-r1"])
        assert.is_not_nil(res.metrics_nms.VCMR["0.5-r100"])
        assert.is_not_nil(res.val_log["valid_val_VR/VR_r1"])
      elseif task == "vr" then
        local keys = json.keys(res.submission)
        table.sort(keys)
        assert.are.same({"VR", "video2idx"}, keys)
        -- VrFullEvalDataset's index: the position among id2nframe.json's sorted videos, whatever
        -- vid2dur_idx.json the subtitle db holds (its VrSubTokLmdb never reads it)
        local sorted = json.keys(json.read_file(helper.fixture("data/video_db/tv/id2nframe.json")))
        table.sort(sorted)
        for vid, idx in pairs(res.submission.video2idx) do assert.are.equal(sorted[idx + 1], vid) end
        assert.are_not.equal(2, res.submission.video2idx["grey_s05e09_seg02_clip_17"])
        assert.are.equal(9, #res.submission.VR)
        assert.are.equal(7, #res.submission.VR[1].predictions) -- every corpus video, ranked
        assert.is_not_nil(res.metrics.VR.r1)
      elseif task == "videoqa" or task == "violin" then
        assert.are.equal(4, #json.keys(res.results))
        assert.is_true(res.metrics.accuracy >= 0 and res.metrics.accuracy <= 1)
      else
        assert.are.equal(9, #res.results)
        local r = res.results[1]
        assert.are.equal("friends_s01e01_seg02_clip_00", r.vid_name)
        assert.are.equal("string", type(r.descs[1].desc))
        for _, k in ipairs {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"} do assert.is_number(res.metrics[k]) end
      end
    end)
  end

  -- ---------------------------------------------------------------- mixed precision

  -- FT.setup of `task` on its TXT db under `amp` (nil, "bf16", "f16"), with `extra` spec keys.
  local function amp_run(task, amp, extra)
    local hps = FT.hparams(task, train_config(task), "train-" .. task .. ".json")
    local spec = {task = task, hps = hps, model_config = FT.model_config(hps, tmpdir .. "/model.json"),
      checkpoint = tmpdir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
      txt_db = txt_dir .. "/" .. TXT[task], progress = false, amp = amp}
    for k, v in pairs(extra or {}) do spec[k] = v end
    return FT.setup(spec), hps
  end

  local function finite(x) return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge end

  -- |got - want| within a loss tolerance of spec_helper (relative to want)
  local function near_loss(got, want, tol, what)
    assert(finite(got), what .. ": " .. tostring(got))
    assert(math.abs(got - want) <= tol.atol + tol.rtol * math.abs(want),
      string.format("%s: %.9g under autocast, %.9g in f32 (rtol %g)", what, got, want, tol.rtol))
  end

  -- Every number of two metric tables (nested as the results hold them) within the share of
  -- helper.tolerance.ranking_autocast's queries among `n_queries` (the query-type breakdowns, whose
  -- names hold "by_type": among `n_by_type`); `scale` is all queries' worth (100 for percentages).
  local function near_metrics(got, want, n_queries, scale, what, n_by_type)
    local n = 0
    local function walk(g, w, path)
      if type(w) == "number" then
        local count = path:find("by_type", 1, true) and n_by_type or n_queries
        local slack = helper.tolerance.ranking_autocast.queries * scale / count + 0.005 -- 2-decimal rounding
        assert(math.abs(g - w) <= slack, string.format("%s %s: %s under autocast, %s in f32", what, path, g, w))
        n = n + 1
      elseif type(w) == "table" then
        for k, v in pairs(w) do walk(g[k], v, path .. "." .. k) end
      end
    end
    walk(got, want, "")
    assert.is_true(n > 0, what .. ": no metric compared")
  end

  it_db("fine-tunes VCMR and TVQA under bf16 and f16 autocast: losses near f32's, validation under it too",
    function()
    for _, task in ipairs {"vcmr", "videoqa"} do
      local valid = {valid_txt_db = txt_dir .. "/" .. TXT[task], valid_every = 4, full_eval = task == "vcmr"}
      local f32_run, hps = amp_run(task, nil, valid)
      local rec32 = f32_run.trainer:train(4)
      local bf_out = tmpdir .. "/bf16_" .. task
      local bf_valid = {out_dir = bf_out}
      for k, v in pairs(valid) do bf_valid[k] = v end
      local bf_run = amp_run(task, "bf16", bf_valid)
      assert.are.equal("bf16", bf_run.trainer.amp)
      local recbf = bf_run.trainer:train(4)
      local differs = false
      for i = 1, 4 do
        near_loss(recbf[i].loss, rec32[i].loss, helper.tolerance.loss_bf16_autocast, task .. " update " .. i)
        differs = differs or recbf[i].loss ~= rec32[i].loss
        assert.is_nil(recbf[i].loss_scale) -- bf16 needs no loss scaling
      end
      assert.is_true(differs, task .. ": the bf16 losses are f32's: autocast did not run")
      -- the validation losses run under the same autocast (the reference validates its fp16 model):
      -- those logged are the bf16 model's under bf16, not in f32
      local v32, vbf = rec32[4].valid[hps.task], recbf[4].valid[hps.task]
      local function overall(v) return task == "vcmr" and v.loss_overall or v end
      near_loss(overall(vbf), overall(v32), helper.tolerance.loss_bf16_autocast, task .. " validation")
      assert.are.same(vbf, bf_run.trainer:validate()[hps.task])
      bf_run.trainer.amp = nil
      assert.are_not.same(vbf, bf_run.trainer:validate()[hps.task])
      bf_run.trainer.amp = "bf16"
      if task == "vcmr" then
        -- and so does the full evaluation of the validation split: what it wrote is FT.evaluate's
        -- under bf16 (every score), not f32's
        assert.is_number(recbf[4].valid.full_eval["valid_val_VR/VR_r1"])
        local written = json.read_file(bf_out .. "/results_val/step_4.json").submission
        local espec = {video = bf_run.video, txt_db = txt_dir .. "/tvr_val.db", split = "val"}
        local in_f32 = json.decode(json.encode(FT.evaluate(task, bf_run.model, hps, espec).submission))
        espec.amp = "bf16"
        local in_bf16 = json.decode(json.encode(FT.evaluate(task, bf_run.model, hps, espec).submission))
        assert.are.same(in_bf16, written)
        assert.are_not.same(in_f32, written)
      end
      -- f16: the first update starts from the same parameters (the later ones differ by the
      -- updates the loss scaler skips)
      local rec16 = amp_run(task, "f16").trainer:train(4)
      near_loss(rec16[1].loss, rec32[1].loss, helper.tolerance.loss_f16_autocast, task .. " f16 update 1")
      assert.are_not.equal(rec32[1].loss, rec16[1].loss)
      assert.are.equal(65536, rec16[1].loss_scale)
      for i = 2, 4 do assert(finite(rec16[i].loss), task .. " f16 update " .. i) end
    end
    helper.assert_error_contains(function() amp_run("vcmr", "f32") end, "amp must be 'bf16', 'f16' or nil")
  end)

  it_db("f16 fine-tuning checkpoints its loss scaler: a resumed run skips and steps as the whole run", function()
    -- VCMR's first 7 updates overflow at the scales 2^16 .. 2^10 and are skipped; TVQA skips its
    -- first and its seventh
    for task, n in pairs {vcmr = 10, videoqa = 8} do
      local whole_out, half_out = tmpdir .. "/f16_whole_" .. task, tmpdir .. "/f16_half_" .. task
      local whole, hps = amp_run(task, "f16", {out_dir = whole_out, save_every = 100})
      local recs = whole.trainer:train(n)
      local skipped, stepped = 0, 0
      for _, r in ipairs(recs) do
        if r.skipped then skipped = skipped + 1 else stepped = stepped + 1 end
      end
      assert.is_true(skipped > 0 and stepped > 0, task .. ": the run should both skip and step")
      local first = amp_run(task, "f16", {out_dir = half_out, save_every = 100})
      first.trainer:train(n // 2)
      local st = hero.load(string.format("%s/ckpt/train_state_%d.safetensors", half_out, n // 2))
      assert.are.equal(first.trainer.scalers[hps.task]:get_scale(), st.scalers[hps.task].scale)
      assert.are.equal(recs[n // 2 + 1].loss_scale, st.scalers[hps.task].scale)
      local second = amp_run(task, "f16", {out_dir = half_out, save_every = 100})
      assert.are.equal(n // 2, second.trainer:resume(half_out))
      local rest = second.trainer:train(n - n // 2)
      for i, r in ipairs(rest) do
        local w = recs[n // 2 + i]
        assert.are.same({w.loss, w.loss_scale, w.skipped}, {r.loss, r.loss_scale, r.skipped}, task .. " update "
          .. (n // 2 + i))
      end
      local a = hero.load(string.format("%s/ckpt/step_%d.safetensors", whole_out, n))
      local b = hero.load(string.format("%s/ckpt/step_%d.safetensors", half_out, n))
      for k, t in pairs(a) do assert(t:eq(b[k]):all():item(), task .. ": " .. k .. " differs after resuming") end
    end
  end)

  it_db("evaluates under bf16 and f16 autocast: scores near f32's, the same rankings within one query", function()
    -- VCMR: the score tensors evaluate_full ranks (f32, on the host), and the metrics
    local run, hps = amp_run("vcmr")
    run.trainer:train(3)
    local tensors = {}
    local evaluate_full = run.model.evaluate_full
    run.model.evaluate_full = function(self, corpus, queries, gt, opts)
      local res = evaluate_full(self, corpus, queries, gt, opts)
      tensors[opts.amp or "f32"] = res.tensors
      return res
    end
    local spec = {video = run.video, txt_db = txt_dir .. "/tvr_val.db", split = "val"}
    local res = {f32 = FT.evaluate("vcmr", run.model, hps, spec)}
    for _, dt in ipairs {"bf16", "f16"} do
      spec.amp = dt
      res[dt] = FT.evaluate("vcmr", run.model, hps, spec)
      for _, k in ipairs {"q2video_scores", "st_probs", "ed_probs"} do
        local got, want = tensors[dt][k], tensors.f32[k]
        assert.are.same({"f32", "cpu"}, {got:dtype(), got:device()}, k)
        assert.tensor_near(got, want, helper.tolerance["outputs_" .. dt .. "_autocast"])
        assert.is_false(got:eq(want):all():item(), dt .. " " .. k .. ": autocast did not run")
      end
      for _, m in ipairs {"metrics", "metrics_nms"} do
        near_metrics(res[dt][m], res.f32[m], 9, 100, dt .. " " .. m, 3) -- 3 queries of each type
      end
      assert.are.equal(9, #res[dt].submission.VCMR)
    end
    helper.assert_error_contains(function() FT.evaluate("vcmr", run.model, hps, {video = run.video,
      txt_db = txt_dir .. "/tvr_val.db", amp = "fp16"}) end, "amp must be 'bf16', 'f16' or nil", "fp16")
    -- TVQA: every question's logits (read back in f32), the accuracy within one question of 4
    local qa, qhps = amp_run("videoqa")
    qa.trainer:train(3)
    local qspec = {video = qa.video, txt_db = txt_dir .. "/tvqa_val.db", save_logits = true}
    local q32 = FT.evaluate("videoqa", qa.model, qhps, qspec)
    for _, dt in ipairs {"bf16", "f16"} do
      qspec.amp = dt
      local q = FT.evaluate("videoqa", qa.model, qhps, qspec)
      assert.are.equal(4, #json.keys(q.logits))
      for qid, l in pairs(q32.logits) do
        assert.tensor_near(hero.tensor(q.logits[qid]), l, helper.tolerance["outputs_" .. dt .. "_autocast"])
      end
      near_metrics({accuracy = q.metrics.accuracy}, {accuracy = q32.metrics.accuracy}, 4, 1, dt .. " TVQA")
      near_loss(q.metrics.loss, q32.metrics.loss, helper.tolerance["loss_" .. dt .. "_autocast"], dt .. " TVQA loss")
    end
    -- TVC: greedy decoding under autocast
    local tvc, thps = amp_run("tvc")
    local tok = hero.text.Tokenizer.from_files(helper.fixture("tokenizer/roberta-base-vocab.json"),
      helper.fixture("tokenizer/vocab.bpe"))
    for _, dt in ipairs {"bf16", "f16"} do
      local caps = FT.evaluate("tvc", tvc.model, thps, {video = tvc.video, txt_db = txt_dir .. "/tvr_val.db",
        tokenizer = tok, amp = dt})
      assert.are.equal(9, #caps.results)
      for _, r in ipairs(caps.results) do assert.are.equal("string", type(r.descs[1].desc)) end
      assert.is_number(caps.metrics.CIDEr)
    end
  end)

  -- A copy of tvr_val.db's queries as another split: `shape(entry)` gives each query_data.jsonl
  -- entry of the new db (nil: the entry as prepro reads it); queries keep their token ids.
  local function query_db_like_tvr(name, prepare, gt_entry)
    local src <close> = data.open_txt_db(txt_dir .. "/tvr_val.db")
    local ids_of, queries = {}, {}
    for _, e in ipairs(src:json("query_data.jsonl")) do
      ids_of[e.desc] = src:get(tostring(e.desc_id)).input_ids
      queries[#queries + 1] = prepare(e)
    end
    local out = tmpdir .. "/" .. name
    hero.data.prepro.query_db{queries = queries, out = out, raw_text = true, overwrite = true,
      tokenize = function(text) return ids_of[text] end}
    if gt_entry then
      local lines = {}
      for i, q in ipairs(queries) do lines[i] = json.encode(gt_entry(q)) end
      local f <close> = assert(io.open(out .. "/query_data.jsonl", "w"))
      f:write(table.concat(lines, "\n"), "\n")
    end
    return out
  end

  it_db("VCMR without vid2dur_idx.json indexes the corpus as VcmrFullEvalDataset (id2nframe.json's order)",
    function()
    local subs = tmpdir .. "/subs_without_vid2dur.db"
    assert(os.execute(string.format('rm -rf "%s" && cp -r "%s" "%s" && rm "%s/vid2dur_idx.json"', subs,
      txt_dir .. "/tv_subtitles.db", subs, subs)))
    local run, hps = setup_run("vcmr", {sub_txt_db = subs})
    -- a corpus of two of the video db's seven videos (get_video_ids' list): their global indices
    -- are 4 and 6, not 0 and 1
    local out = query_db_like_tvr("tvr_two_videos.db", function(e)
      return {desc_id = e.desc_id, desc = e.desc, duration = e.duration, type = e.type}
    end)
    json.write_file(out .. "/video_ids.json", {"met_s02e03_seg01_clip_05", "grey_s05e09_seg02_clip_17"})
    local res = FT.evaluate("vcmr", run.model, hps, {video = run.video, txt_db = out, split = "test"})
    assert.are.same({grey_s05e09_seg02_clip_17 = 4, met_s02e03_seg01_clip_05 = 6}, res.submission.video2idx)
    assert.are.equal(9, #res.submission.VCMR)
  end)

  it_db("a test split's queries without videos or moments are ranked: VCMR and VR lists, no SVMR, no metrics",
    function()
    local run, hps = setup_run("vcmr")
    local corpus = {}
    local out = query_db_like_tvr("tvr_test.db", function(e)
      corpus[#corpus + 1] = e.vid_name
      return {desc_id = e.desc_id, desc = e.desc, duration = e.duration, type = e.type}
    end)
    json.write_file(out .. "/video_ids.json", corpus) -- get_video_ids' list when there is no query2video.json
    local ds = D.QueryDataset{task = "vcmr", video = run.video, query_db = out, train = false}
    local q = ds:query("90889")
    assert.are.same({-1, -1}, q.target)
    assert.is_nil(q.vid)
    assert.are.equal(0, q.ids[1]) -- [CLS] + the query's ids
    assert.are.same({-1}, D.query_collate({q}).vids)
    -- with videos and moments, the evaluation query is the training item's query
    local val = D.QueryDataset{task = "vcmr", video = run.video, query_db = txt_dir .. "/tvr_val.db", train = false}
    for _, qid in ipairs(val:ids()) do
      local a, b = val:query(qid), val:item(qid).queries[1]
      assert.are.same({b.ids, b.target, b.vid}, {a.ids, a.target, a.vid}, qid)
    end
    -- DiDeMo's several moments per query: the first one's frames (the metrics read all of them)
    local didemo = query_db_like_tvr("didemo_val.db", function(e)
      return {desc_id = e.desc_id, desc = e.desc, vid_name = e.vid_name, ts = {e.ts, {0, 3}, {0, 3}, {0, 3}}}
    end)
    local dds = D.QueryDataset{task = "vcmr", video = run.video, query_db = didemo, train = false}
    for _, qid in ipairs(val:ids()) do assert.are.same(val:query(qid).target, dds:query(qid).target, qid) end
    local res = FT.evaluate("vcmr", run.model, hps, {video = run.video, txt_db = out, split = "test"})
    assert.are.equal(9, #res.submission.VCMR)
    assert.are.equal(9, #res.submission.VR)
    assert.is_nil(res.submission.SVMR) -- ranks inside the query's own video: unknown here
    assert.are.equal(json.null, res.metrics)
    assert.are.equal(90889, res.submission.VCMR[1].desc_id)
    assert.are.equal(7, res.num_videos) -- video_ids.json
    -- the same queries with their videos and moments rank the same way, and are scored
    local scored = FT.evaluate("vcmr", run.model, hps, {video = run.video, txt_db = txt_dir .. "/tvr_val.db",
      split = "test"})
    assert.are.same(scored.submission.VR, res.submission.VR)
    assert.is_not_nil(scored.metrics.VCMR)
  end)

  it_db("TVC: captions for a list of clips (inf_tvc.py --target_clip), scored when they carry references", function()
    local run, hps = setup_run("tvc")
    local tok = hero.text.Tokenizer.from_files(helper.fixture("tokenizer/roberta-base-vocab.json"),
      helper.fixture("tokenizer/vocab.bpe"))
    -- tvr_val.db's moments as the clips to caption
    local clips, bare = {}, {}
    do
      local src <close> = data.open_txt_db(txt_dir .. "/tvr_val.db")
      for i, e in ipairs(src:json("query_data.jsonl")) do
        clips[i] = {vid_name = e.vid_name, clip_id = e.desc_id, ts = e.ts, descs = {{desc = e.desc}}}
        bare[i] = {vid_name = e.vid_name, clip_id = e.desc_id, ts = e.ts}
      end
    end
    local from_db = FT.evaluate("tvc", run.model, hps, {video = run.video, txt_db = txt_dir .. "/tvr_val.db",
      tokenizer = tok})
    local from_list = FT.evaluate("tvc", run.model, hps, {video = run.video, clips = clips, tokenizer = tok})
    assert.are.equal(9, #from_list.results)
    local by_clip = {}
    for _, r in ipairs(from_db.results) do by_clip[r.clip_id] = r end
    for _, r in ipairs(from_list.results) do
      local d = by_clip[r.clip_id]
      assert.are.same({d.vid_name, d.ts, d.descs}, {r.vid_name, r.ts, r.descs}, tostring(r.clip_id))
    end
    assert.are.same(from_db.metrics, from_list.metrics)
    local plain = FT.evaluate("tvc", run.model, hps, {video = run.video, clips = bare, tokenizer = tok})
    assert.are.equal(9, #plain.results)
    assert.are.equal(json.null, plain.metrics) -- nothing to score against
    -- a clip listed twice is captioned twice, as TvcEvalDataset appends every line's clip
    local twice = {bare[1], bare[2], bare[1]}
    local again = FT.evaluate("tvc", run.model, hps, {video = run.video, clips = twice, tokenizer = tok})
    local n1 = 0
    for _, r in ipairs(again.results) do if r.clip_id == bare[1].clip_id then n1 = n1 + 1 end end
    assert.are.equal(2, n1)
    for _, ts in ipairs {{"a", 2}, {5, 1}, {-1, 2}, {0, 1 / 0}} do
      helper.assert_error_contains(function()
        D.ClipListDataset{video = run.video, clips = {{vid_name = "v", clip_id = 3, ts = ts}}}
      end, "clip 1 (clip_id 3): ts must be {start, end} in seconds with 0 <= start <= end")
    end
    helper.assert_error_contains(function()
      D.ClipListDataset{video = run.video, clips = {{vid_name = "v", clip_id = 3, ts = {1, 2}, descs = {{desc = 5}}}}}
    end, "descs must be a list of {desc = text}")
    helper.assert_error_contains(function()
      FT.evaluate("vcmr", run.model, hps, {video = run.video, clips = clips})
    end, "for the tvc task")
    -- the command line: a checkpoint of one update, captions written as inf_tvc.py's JSON lines
    local list = tmpdir .. "/clips.jsonl"
    local f <close> = assert(io.open(list, "w"))
    for _, c in ipairs(bare) do f:write(json.encode(c), "\n") end
    f:flush()
    local rc, out = run_example("finetune.lua", {"--task", "tvc", "--config", tmpdir .. "/train-tvc.json",
      "--checkpoint", tmpdir .. "/init.safetensors", "--txt-db", txt_dir .. "/tvr_val.db", "--vfeat-db",
      helper.fixture("data/video_db/tv"), "--out", tmpdir .. "/tvc", "--steps", "1", "--quiet"})
    assert.are.equal(0, rc, out)
    local common = {"--task", "tvc", "--checkpoint", tmpdir .. "/tvc/ckpt/step_1.safetensors", "--target-clip", list,
      "--vocab", helper.fixture("tokenizer/roberta-base-vocab.json"), "--merges", helper.fixture("tokenizer/vocab.bpe")}
    local args = {table.unpack(common)}
    for _, a in ipairs {"--out", tmpdir .. "/captions.jsonl"} do args[#args + 1] = a end
    rc, out = run_example("evaluate.lua", args)
    assert.are.equal(0, rc, out)
    local lines = json.read_lines(tmpdir .. "/captions.jsonl", {ordered = true})
    assert.are.equal(9, #lines)
    for _, l in ipairs(lines) do
      assert.are.same({"vid_name", "clip_id", "ts", "descs"}, json.key_order(l))
      assert.are.equal("string", type(l.descs[1].desc))
    end
    -- inf_tvc.py's options as it spells them: the same captions with the run's max_gen_step (4),
    -- greedy captions' beginnings with a shorter one
    local function inf_tvc(steps, file)
      return run_example("evaluate.lua", {"--task", "tvc", "--model_dir", tmpdir .. "/tvc", "--ckpt_step", "1",
        "--target_clip", list, "--output", file, "--max_gen_step", steps, "--no_fp16", "--vocab",
        helper.fixture("tokenizer/roberta-base-vocab.json"), "--merges", helper.fixture("tokenizer/vocab.bpe")})
    end
    rc, out = inf_tvc("4", tmpdir .. "/captions_ref.jsonl")
    assert.are.equal(0, rc, out)
    assert.matches("read for nothing.*%-%-no_fp16", out)
    assert.are.same(lines, json.read_lines(tmpdir .. "/captions_ref.jsonl", {ordered = true}))
    rc, out = inf_tvc("2", tmpdir .. "/captions_short.jsonl")
    assert.are.equal(0, rc, out)
    local short, shorter = json.read_lines(tmpdir .. "/captions_short.jsonl"), 0
    for i, l in ipairs(short) do
      local full = lines[i].descs[1].desc
      assert.are.equal(full:sub(1, #l.descs[1].desc), l.descs[1].desc)
      if #l.descs[1].desc < #full then shorter = shorter + 1 end
    end
    assert.is_true(shorter > 0)
    args = {table.unpack(common)}
    for _, a in ipairs {"--out", tmpdir .. "/c.json", "--meteor-jar", tmpdir .. "/nope.jar"} do args[#args + 1] = a end
    rc, out = run_example("evaluate.lua", args)
    assert.are.equal(2, rc)
    assert.matches("meteor_jar: METEOR's jar '.*nope.jar' cannot be read", out)
    -- over two MPI ranks: each captions its share of the videos, the same captions joined
    if has_mpirun() then
      local q = {}
      for i, a in ipairs(common) do q[i] = "'" .. a .. "'" end
      local ok, text = mpirun2("evaluate.lua", table.concat(q, " ") .. " --out '" .. tmpdir .. "/captions2.jsonl'")
      assert.is_true(ok, text)
      local two = json.read_lines(tmpdir .. "/captions2.jsonl")
      assert.are.equal(#lines, #two)
      local by = {}
      for _, l in ipairs(lines) do by[l.clip_id] = l end
      for _, l in ipairs(two) do assert.are.same(by[l.clip_id].descs, l.descs, tostring(l.clip_id)) end
    end
  end)

  it("a key the config lacks takes the default of the task script's argparse", function()
    local cli = hero.cli
    -- keys a VR run never reads: train_vr.py parses train_vcmr.py's options, VCMR's evaluation too
    local vr_unread = {task = true, vcmr_eval_video_batch_size = true, vcmr_eval_q_batch_size = true,
      eval_with_query_type = true, max_before_nms = true, max_after_nms = true, nms_thd = true, q2c_alpha = true,
      max_vcmr_video = true, full_eval_tasks = true, min_pred_l = true, max_pred_l = true, lw_st_ed = true}
    for task, script in pairs(FT.REFERENCE_SCRIPT) do
      local required = {}
      for _, list in ipairs {FT.REQUIRED.common, FT.REQUIRED[task]} do
        for _, k in ipairs(list) do required[k] = true end
      end
      local c = {}
      for k in pairs(required) do c[k] = train_config(task)[k] end
      local hps = FT.hparams(task, c, "cfg")
      local n = 0
      for _, o in ipairs(cli.REFERENCE_OPTIONS[script]) do
        -- fp16 is examples/finetune.lua's to read (FT.FP16): absent, it is false, as argparse's
        if o.default ~= nil and not required[o.name] and not FT.UNUSED_KEYS[o.name] and o.name ~= "fp16"
            and not (task == "vr" and vr_unread[o.name]) then
          assert.are.same(o.default, hps[o.name], script .. ".py --" .. o.name)
          n = n + 1
        end
      end
      assert.is_true(n >= 10, script)
    end
  end)

  it("TVC saves the model at each validation: train_tvc.py has no save_steps", function()
    local c = train_config("tvc")
    c.save_steps, c.valid_steps = nil, 300
    assert.are.equal(300, FT.hparams("tvc", c, "cfg").save_steps)
    c.save_steps = 40 -- a config that names one (hero's own setting) keeps it
    assert.are.equal(40, FT.hparams("tvc", c, "cfg").save_steps)
    c = train_config("videoqa") -- the others take config.py's default
    c.save_steps, c.valid_steps = nil, 300
    assert.are.equal(500, FT.hparams("videoqa", c, "cfg").save_steps)
  end)

  it_db("TVC: the validation captions are scored against the config's val_ref, as train_tvc.py's TVCEval", function()
    local hps = FT.hparams("tvc", train_config("tvc"), "cfg")
    local tok = hero.text.Tokenizer.from_files(helper.fixture("tokenizer/roberta-base-vocab.json"),
      helper.fixture("tokenizer/vocab.bpe"))
    -- val_ref: every clip of the validation db, each with a reference of its own, not the db's
    local ref = tmpdir .. "/val_ref.jsonl"
    do
      local src <close> = data.open_txt_db(txt_dir .. "/tvr_val.db")
      local f <close> = assert(io.open(ref, "w"))
      for _, e in ipairs(src:json("query_data.jsonl")) do
        f:write(json.encode({clip_id = e.desc_id, descs = {{desc = "someone walks into the room and sits down"}}}),
          "\n")
      end
    end
    local run = FT.setup{task = "tvc", hps = hps, model_config = FT.model_config(hps, tmpdir .. "/model.json"),
      checkpoint = tmpdir .. "/init.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
      txt_db = txt_dir .. "/tvr_val.db", valid_txt_db = txt_dir .. "/tvr_val.db", valid_every = 1, tokenizer = tok,
      val_ref = ref, progress = false}
    local logged = run.trainer:train(1)[1].valid.full_eval
    local spec = {video = run.video, txt_db = txt_dir .. "/tvr_val.db", tokenizer = tok}
    local with_db = FT.evaluate("tvc", run.model, hps, spec).metrics
    spec.references = ref
    local with_ref = FT.evaluate("tvc", run.model, hps, spec).metrics
    assert.is_number(with_ref.CIDEr)
    assert.is_number(with_ref.Bleu_1)
    assert.are.same(with_ref, logged)
    assert.are_not.same(with_db, with_ref)
    -- the file's clips must be the captioned ones, as TVCEval asserts
    local f <close> = assert(io.open(tmpdir .. "/val_ref_one.jsonl", "w"))
    f:write('{"clip_id": 90889, "descs": [{"desc": "a man"}]}\n')
    f:flush()
    spec.references = tmpdir .. "/val_ref_one.jsonl"
    helper.assert_error_contains(function() FT.evaluate("tvc", run.model, hps, spec) end,
      "9 predicted clips for 1 reference clips")
    -- examples/finetune.lua hands the config's val_ref on, and names one that is not there
    local c = train_config("tvc")
    c.val_db, c.val_ref = txt_dir .. "/tvr_val.db", tmpdir .. "/no_ref.jsonl"
    json.write_file(tmpdir .. "/train-tvc-ref.json", c)
    local rc, out = run_example("finetune.lua", {"--task", "tvc", "--config", tmpdir .. "/train-tvc-ref.json",
      "--checkpoint", tmpdir .. "/init.safetensors", "--txt-db", txt_dir .. "/tvr_val.db",
      "--out", tmpdir .. "/tvc_ref",
      "--steps", "1", "--quiet"})
    assert.are.equal(2, rc)
    assert.matches("the config's val_ref '.*no_ref.jsonl' %(the validation captions' references%) does not exist", out)
  end)

  it_db("MSR-VTT: queries without moments are scored from query_data.jsonl (sen_id, clip_name) as eval_vr.py",
    function()
    local run, hps = setup_run("vr")
    local out = query_db_like_tvr("msrvtt_test.db", function(e)
      return {desc_id = e.desc_id, desc = e.desc, vid_name = e.vid_name}
    end, function(q) return {sen_id = q.desc_id, clip_name = q.vid_name, caption = q.desc} end)
    local res = FT.evaluate("vr", run.model, hps, {video = run.video, txt_db = out, split = "val"})
    assert.are.equal(9, #res.submission.VR)
    assert.are.equal("90889", res.submission.VR[1].desc_id) -- eval_vr.py keeps the query id
    local with_ts = FT.evaluate("vr", run.model, hps, {video = run.video, txt_db = txt_dir .. "/tvr_val.db",
      split = "val"})
    assert.are.same(with_ts.metrics, res.metrics) -- the same ranking against the same videos
    for _, k in ipairs {"r1", "r5", "r10", "r100"} do assert.is_number(res.metrics.VR[k]) end
    -- retrieval_key instead of sen_id, as MsrvttQueryTokLmdb's fallback
    local out2 = query_db_like_tvr("msrvtt_test2.db", function(e)
      return {desc_id = e.desc_id, desc = e.desc, vid_name = e.vid_name}
    end, function(q) return {retrieval_key = q.desc_id, clip_name = q.vid_name} end)
    local res2 = FT.evaluate("vr", run.model, hps, {video = run.video, txt_db = out2, split = "val"})
    assert.are.same(res.metrics, res2.metrics)
    -- entries that also carry a desc_id are still keyed by sen_id, as MsrvttQueryTokLmdb keys them
    local out3 = query_db_like_tvr("msrvtt_test3.db", function(e)
      return {desc_id = e.desc_id, desc = e.desc, vid_name = e.vid_name}
    end, function(q) return {sen_id = q.desc_id, desc_id = "x" .. q.desc_id, clip_name = q.vid_name} end)
    local res3 = FT.evaluate("vr", run.model, hps, {video = run.video, txt_db = out3, split = "val"})
    assert.are.same(res.metrics, res3.metrics)
  end)
end)

--- A new temporary directory with the tiny model's config (model.json) and initial weights
-- (init.safetensors, drawn after manual_seed(seed)).
local tiny_model_dir = helper.tiny_finetune_dir

describe("video-only fine-tuning and evaluation (didemo_video_only, msrvtt_video_only)", function()
  setup(function() tmpdir = tiny_model_dir(5) end)
  teardown(function()
    if tmpdir and tmpdir:match("^/tmp/") then os.execute('rm -rf "' .. tmpdir .. '"') end
  end)

  for _, case in ipairs {{"vcmr", "didemo_video_only"}, {"vr", "msrvtt_video_only"}} do
    local task, name = case[1], case[2]
    it_db(name .. ": no subtitle db read, a few updates lower the loss, the corpus indexed by id2nframe", function()
      local over = {task = name, sub_txt_db = "/nonexistent/sub.db", min_pred_l = 3, max_pred_l = 6, nms_thd = -1}
      if task == "vcmr" then over.hard_negtiave_start_step, over.train_span_start_step = {0}, 0 end
      local run, hps = setup_run(task, over)
      assert.is_true(run.video.video_only)
      local batch = run.loader:next()
      assert.are.same({batch.c_v_feats:size(1), 1}, batch.f_sub_input_ids:size()) -- [CLS] per video
      local train = hero.train
      local meta = train.MetaLoader{tasks = {[name] = train.CyclingLoader({batch})}, ratios = {[name] = 1},
        accum = 1, generator = hero.Generator(1)}
      local tr = train.Trainer{model = run.model, optimizer = run.optimizer, loader = meta, lr = hps.learning_rate,
        warmup = 1, total = 50, grad_norm = 1.0, progress = false, forward_opts = FT.forward_opts(task, run.model, hps)}
      local recs = tr:train(5)
      assert.is_true(recs[#recs].loss < recs[1].loss, string.format("%s: loss %g -> %g", name, recs[1].loss,
        recs[#recs].loss))
      local res = FT.evaluate(task, run.model, hps, {video = run.video, txt_db = txt_dir .. "/tvr_val.db",
        split = "val"})
      local id2nframe = json.read_file(helper.fixture("data/video_db/tv/id2nframe.json"))
      local sorted = json.keys(id2nframe)
      table.sort(sorted)
      local n = 0
      for vid, idx in pairs(res.submission.video2idx) do
        assert.are.equal(sorted[idx + 1], vid) -- VideoFeatDataset's global index
        n = n + 1
      end
      assert.are.equal(7, n) -- the queries' videos (query2video.json)
      assert.are.equal(9, #res.submission.VR)
      assert.is_number(res.metrics.VR.r1)
      if task == "vcmr" then
        for _, p in ipairs(res.submission.VCMR[1].predictions) do
          -- (video, i * 1.5, (j + 1) * 1.5, score) with 3 <= j - i < 6
          local frames = math.floor((p[3] - p[2]) / 1.5 + 0.5)
          assert.is_true(frames >= 4 and frames <= 6, "min/max_pred_l 3/6: " .. frames)
        end
      end
    end)
  end
end)

describe("examples/finetune.lua and examples/evaluate.lua", function()
  local dir
  setup(function()
    dir = tiny_model_dir(4)
    -- dropout and drop_svmr_prob on: the resumed run must restore every generator
    local c = train_config("vcmr")
    c.dropout, c.drop_svmr_prob, c.save_steps = 0.1, 0.5, 2
    json.write_file(dir .. "/train-tvr.json", c)
    local d = train_config("vcmr")
    -- as the released train-didemo_video_only-4gpu.json: "sub_txt_db": null
    d.task, d.sub_txt_db, d.min_pred_l, d.max_pred_l, d.nms_thd = "didemo_video_only", json.null, 3, 6, -1
    json.write_file(dir .. "/train-didemo.json", d)
  end)
  teardown(function()
    if dir and dir:match("^/tmp/") then os.execute('rm -rf "' .. dir .. '"') end
  end)

  local function finetune(out, steps, extra)
    local args = {"--task", "vcmr", "--config", dir .. "/train-tvr.json", "--checkpoint", dir .. "/init.safetensors",
      "--txt-db", txt_dir .. "/tvr_val.db", "--vfeat-db", helper.fixture("data/video_db/tv"), "--out", out,
      "--steps", tostring(steps), "--quiet"}
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return run_example("finetune.lua", args)
  end

  it_db("trains, checkpoints, resumes bit for bit and evaluates into the reference's JSON structure", function()
    local rc, out = finetune(dir .. "/a", 3)
    assert.are.equal(0, rc, out)
    rc, out = finetune(dir .. "/b", 2)
    assert.are.equal(0, rc, out)
    rc, out = finetune(dir .. "/b", 3, {"--resume"})
    assert.are.equal(0, rc, out)
    assert.matches("resumed from", out)
    local a = hero.load(dir .. "/a/ckpt/step_3.safetensors")
    local b = hero.load(dir .. "/b/ckpt/step_3.safetensors")
    local n = 0
    for k, t in pairs(a) do
      assert(t:eq(b[k]):all():item(), k .. " differs after resuming")
      n = n + 1
    end
    assert.is_true(n > 50)
    local hps = json.read_file(dir .. "/a/log/hps.json")
    assert.are.equal("tvr", hps.task)
    assert.are.same({3}, hps.hard_negtiave_start_step) -- the reference's spelling kept

    rc, out = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", dir .. "/a/ckpt/step_3.safetensors",
      "--split", "val", "--txt-db", txt_dir .. "/tvr_val.db", "--out", dir .. "/results.json", "--submission",
      dir .. "/results_3_all.json"})
    assert.are.equal(0, rc, out)
    local res = json.read_file(dir .. "/results.json")
    assert.are.same(res.submission, json.read_file(dir .. "/results_3_all.json")) -- eval_vcmr.py's file
    local ref = json.read_file(smoke .. "/vcmr_eval.json")
    -- the submission's layout is eval_vcmr.py's: the same keys at every level
    local function key_set(t)
      local ks = json.keys(t)
      table.sort(ks)
      return ks
    end
    assert.are.same(key_set(ref.submission_before_nms), key_set(res.submission))
    assert.are.same(key_set(ref.submission_before_nms.VCMR[1]), key_set(res.submission.VCMR[1]))
    assert.are.same(key_set(ref.submission_after_nms), key_set(res.submission_nms))
    assert.are.same(key_set(ref.metrics_no_nms), key_set(res.metrics))
    assert.are.same(key_set(ref.metrics_no_nms.VCMR), key_set(res.metrics.VCMR))
    assert.are.same(key_set(ref.metrics_nms), key_set(res.metrics_nms))
    assert.are.same(key_set(ref.val_log), key_set(res.val_log))
    assert.are.equal(9, #res.submission.VR)
    -- a split without "v" or "vt" queries: its by-type metrics are NaN, written as eval_vcmr.py's
    -- json.dump writes them (readable by Python's json), not an error that leaves no file
    local t_only = single_type_query_db(dir, "t")
    rc, out = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", dir .. "/a/ckpt/step_3.safetensors",
      "--split", "val", "--txt-db", t_only, "--out", dir .. "/t_only.json", "--submission", dir .. "/t_only_all.json"})
    assert.are.equal(0, rc, out)
    local t_res = json.read_file(dir .. "/t_only.json", {allow_nan = true})
    local nan = t_res.metrics.SVMR_by_type["vt-0.5-r1"]
    assert.is_true(nan ~= nan)
    assert.are.equal(3, #json.read_file(dir .. "/t_only_all.json").VR)

    -- eval_vcmr.py's command line as the reference spells it: the same submission, in the run
    -- directory's results_val/ (the batch sizes read for nothing, and said so)
    rc, out = run_example("evaluate.lua", {"--task", "tvr", "--output_dir", dir .. "/a", "--checkpoint", "3",
      "--split", "val", "--query_txt_db", txt_dir .. "/tvr_val.db", "--full_eval_tasks", "VCMR", "SVMR", "VR",
      "--batch_size", "80", "--vcmr_eval_video_batch_size", "50", "--n_workers", "4", "--pin_mem"})
    assert.are.equal(0, rc, out)
    assert.matches("read for nothing.*%-%-batch_size, %-%-vcmr_eval_video_batch_size, %-%-n_workers, %-%-pin_mem", out)
    assert.are.same(res.submission, json.read_file(dir .. "/a/results_val/results_3_all.json"))
    rc, out = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", dir .. "/a/ckpt/step_3.safetensors",
      "--txt-db", txt_dir .. "/tvr_val.db", "--query_txt_db", txt_dir .. "/tvr_val.db", "--out", dir .. "/x.json"})
    assert.are.equal(2, rc, out)
    assert.matches("%-%-txt%-db and %-%-query_txt_db say the same: give one", out)
    rc, out = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", dir .. "/a/ckpt/step_3.safetensors",
      "--full_eval_tasks", "VCMR", "XR", "--out", dir .. "/x.json"})
    assert.are.equal(2, rc, out)
    assert.matches("%-%-full_eval_tasks: invalid choice 'XR' %(eval_vcmr.py takes VCMR, SVMR, VR%)", out)
    rc, out = run_example("evaluate.lua", {"--output_dir", dir .. "/a", "--checkpoint", "3"})
    assert.are.equal(2, rc, out)
    assert.matches("evaluate: %-%-task is required", out)
    rc, out = run_example("evaluate.lua", {"--output_dir", dir .. "/a", "--task"})
    assert.are.equal(2, rc, out)
    assert.matches("evaluate: %-%-task needs a value", out)
    rc, out = run_example("finetune.lua", {"--config", "x.json", "--task"})
    assert.are.equal(2, rc, out)
    assert.matches("finetune: %-%-task needs a value", out)
  end)

  it_db_mpi("evaluates VideoQA and VIOLIN (answers, logits) and over MPI ranks (--dist), joined as one process",
    function()
    for _, task in ipairs {"videoqa", "violin"} do
      local c = train_config(task)
      c.model_config = dir .. "/model.json"
      json.write_file(dir .. "/train-" .. task .. ".json", c)
      local rc, out = run_example("finetune.lua", {"--task", task, "--config", dir .. "/train-" .. task .. ".json",
        "--checkpoint", dir .. "/init.safetensors", "--txt-db", txt_dir .. "/" .. TXT[task], "--vfeat-db",
        helper.fixture("data/video_db/tv"), "--out", dir .. "/" .. task, "--steps", "1", "--quiet"})
      assert.are.equal(0, rc, out)
      local ck = dir .. "/" .. task .. "/ckpt/step_1.safetensors"
      local db = txt_dir .. "/" .. TXT[task]
      rc, out = run_example("evaluate.lua", {"--task", task, "--checkpoint", ck, "--txt-db", db,
        "--out", dir .. "/" .. task .. "_one.json", "--submission", dir .. "/" .. task .. "_all.json",
        "--save-logits", dir .. "/" .. task .. "_logits.json"})
      assert.are.equal(0, rc, out)
      local one = json.read_file(dir .. "/" .. task .. "_one.json")
      assert.are.same(one.results, json.read_file(dir .. "/" .. task .. "_all.json")) -- {qid: answer}
      local logits = json.read_file(dir .. "/" .. task .. "_logits.json")
      for qid, answer in pairs(one.results) do
        local l = logits[qid]
        assert.are.equal(task == "videoqa" and 5 or 1, #l, qid)
        if task == "videoqa" then
          local best = 1
          for i = 2, #l do if l[i] > l[best] then best = i end end
          assert.are.equal(best - 1, answer, qid) -- the answer is the argmax of its logits
        else
          assert.are.equal(l[1] > 0 and 1 or 0, answer, qid)
        end
      end
      assert.is_nil(one.logits) -- in their own file
      -- eval_videoQA.py / eval_violin.py as the reference spells them: --save_logits puts the
      -- answers and the logits (JSON where the reference pickles) in results_val_w_logit/
      rc, out = run_example("evaluate.lua", {"--task", task, "--output_dir", dir .. "/" .. task, "--checkpoint", "1",
        "--query_txt_db", db, "--save_logits"})
      assert.are.equal(0, rc, out)
      local w_logit = dir .. "/" .. task .. "/results_val_w_logit/"
      assert.are.same(one.results, json.read_file(w_logit .. "results_1_all.json"))
      assert.are.same(logits, json.read_file(w_logit .. "logits_1_all.json"))
      if not has_mpirun() then
        pending("mpirun is not installed (Debian: openmpi-bin): the distributed evaluation is not run")
        return
      end
      local ok, text = mpirun2("evaluate.lua", string.format("--task %s --checkpoint '%s' --txt-db '%s' --out '%s'",
        task, ck, db, dir .. "/" .. task .. "_two.json"))
      assert.is_true(ok, text)
      local two = json.read_file(dir .. "/" .. task .. "_two.json")
      assert.are.same(one.results, two.results, task) -- every question's answer
      assert.are.equal(one.num_queries, two.num_queries)
      assert.are.equal(one.metrics.accuracy, two.metrics.accuracy, task)
      assert.near(one.metrics.loss, two.metrics.loss, 1e-5 * math.abs(one.metrics.loss), task)
    end
  end)

  it_db_mpi("evaluates over MPI ranks (--dist): each ranks its share of the queries, joined as one process", function()
    if not os.execute("command -v mpirun >/dev/null 2>&1") then
      pending("mpirun is not installed (Debian: openmpi-bin): the distributed evaluation is not run")
      return
    end
    local rc, out = finetune(dir .. "/d", 2)
    assert.are.equal(0, rc, out)
    local ck = dir .. "/d/ckpt/step_2.safetensors"
    rc, out = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", ck, "--split", "val", "--txt-db",
      txt_dir .. "/tvr_val.db", "--out", dir .. "/one.json"})
    assert.are.equal(0, rc, out)
    local ok, text = mpirun2("evaluate.lua", string.format("--task vcmr --checkpoint '%s' --split val --txt-db '%s' "
      .. "--out '%s'", ck, txt_dir .. "/tvr_val.db", dir .. "/two.json"))
    assert.is_true(ok, text)
    local one, two = json.read_file(dir .. "/one.json"), json.read_file(dir .. "/two.json")
    assert.are.equal(9, two.num_queries)
    -- the same entries (rank 0's queries, then rank 1's), the same predictions; the scores to float
    -- rounding (the queries are batched, so padded, differently)
    for _, task in ipairs {"VCMR", "SVMR", "VR"} do
      local by = {}
      for _, e in ipairs(one.submission[task]) do by[e.desc_id] = e end
      assert.are.equal(#one.submission[task], #two.submission[task], task)
      for _, e in ipairs(two.submission[task]) do
        local want = by[e.desc_id]
        assert.are.equal(#want.predictions, #e.predictions, task)
        for i, pr in ipairs(e.predictions) do
          local w = want.predictions[i]
          assert.are.same({w[1], w[2], w[3]}, {pr[1], pr[2], pr[3]}, task)
          assert.near(w[4], pr[4], 1e-4 * math.max(1, math.abs(w[4])), task)
        end
      end
    end
    assert.are.equal(one.submission.VCMR[2].desc_id, two.submission.VCMR[6].desc_id) -- queries[1::2] on rank 1
    assert.are.same(one.submission.video2idx, two.submission.video2idx)
    -- the metrics: per-rank percentages (rounded to 2 decimals) averaged by query counts
    for _, task in ipairs {"VCMR", "SVMR", "VR"} do
      for k, v in pairs(one.metrics[task]) do assert.near(v, two.metrics[task][k], 0.011, task .. " " .. k) end
    end
    assert.is_number(two.val_log["valid_val_VR/VR_r1"])
    assert.is_table(two.submission_nms)
  end)

  it_db_mpi("fine-tunes over MPI ranks (--dist): shares of the queries, averaged gradients, rank 0 writes", function()
    if not os.execute("command -v mpirun >/dev/null 2>&1") then
      pending("mpirun is not installed (Debian: openmpi-bin): the distributed fine-tuning is not run")
      return
    end
    local out = dir .. "/mpi"
    local c = json.read_file(dir .. "/train-tvr.json")
    c.valid_steps = 2
    json.write_file(dir .. "/train-tvr-valid2.json", c)
    local ok, text = mpirun2("finetune.lua", string.format("--task vcmr --config '%s' --checkpoint '%s' --txt-db '%s' "
      .. "--vfeat-db '%s' --out '%s' --steps 3 --quiet --valid-txt-db '%s'", dir .. "/train-tvr-valid2.json",
      dir .. "/init.safetensors", txt_dir .. "/tvr_val.db", helper.fixture("data/video_db/tv"), out,
      txt_dir .. "/tvr_val.db"))
    assert.is_true(ok, text)
    local recs = {}
    for line in io.lines(out .. "/log.jsonl") do recs[#recs + 1] = json.decode(line) end
    assert.are.equal(3, #recs) -- rank 0's log only
    -- valid_steps 2: validation losses and the distributed full evaluation at update 2
    assert.is_number(recs[2].valid.full_eval["valid_val_VR/VR_r1"])
    assert.are.equal(9, #json.read_file(out .. "/results_val/step_2.json").submission.VR)
    local sd = hero.load(out .. "/ckpt/step_3.safetensors")
    assert.is_not_nil(sd["video_query_linear.weight"])
  end)

  it_db("--device and --amp: recorded in log/hps.json, the amp checked on --resume, a GPU not there named",
    function()
    local out = dir .. "/amp"
    local rc, text = finetune(out, 2, {"--amp", "bf16"})
    assert.are.equal(0, rc, text)
    local hps = json.read_file(out .. "/log/hps.json")
    assert.are.same({"cpu", "bf16"}, {hps.device, hps.amp})
    -- resumed in another precision: refused, as any other setting; the device may change
    rc, text = finetune(out, 3, {"--resume"})
    assert.are.equal(2, rc)
    assert.matches('amp: "bf16" then, %(absent%) now', text)
    assert.are.equal(2, hero.train.Trainer.latest_step(out)) -- nothing trained
    rc, text = finetune(out, 3, {"--resume", "--amp", "bf16"})
    assert.are.equal(0, rc, text)
    -- bad values, and a CUDA device this machine does not have (cuda:<number of GPUs>)
    local n = hero.cuda.device_count()
    local missing = "cuda:" .. n
    for _, case in ipairs {
      {{"--device", missing}, n == 0 and "--device 'cuda:0': no CUDA device is available"
        or string.format("--device '%s': this machine has %d GPU", missing, n)},
      {{"--device", "gpu"}, "--device must be cpu, cuda or cuda:N, got 'gpu'"},
      {{"--amp", "fp16"}, "--amp must be bf16, f16 or f32, got 'fp16'"},
    } do
      rc, text = finetune(dir .. "/amp_bad", 1, case[1])
      assert.are.equal(2, rc, text)
      assert.truthy(text:find(case[2], 1, true), text)
      rc, text = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", out .. "/ckpt/step_3.safetensors",
        "--txt-db", txt_dir .. "/tvr_val.db", "--out", dir .. "/amp_bad.json", table.unpack(case[1])})
      assert.are.equal(2, rc, text)
      assert.truthy(text:find(case[2], 1, true), text)
    end
    -- the config's fp16 (the reference's apex O2): f16 on a GPU, f32 with a note on the CPU;
    -- --amp decides when given
    local c = json.read_file(dir .. "/train-tvr.json")
    c.fp16 = true
    json.write_file(dir .. "/train-tvr-fp16.json", c)
    rc, text = finetune(dir .. "/fp16_cpu", 1, {"--config", dir .. "/train-tvr-fp16.json"})
    assert.are.equal(0, rc, text)
    assert.truthy(text:find("note: " .. FT.FP16.cpu, 1, true), text)
    assert.is_nil(json.read_file(dir .. "/fp16_cpu/log/hps.json").amp)
    rc, text = finetune(dir .. "/fp16_f16", 1, {"--config", dir .. "/train-tvr-fp16.json", "--amp", "f16"})
    assert.are.equal(0, rc, text)
    assert.is_nil(text:find("note: the config's fp16", 1, true), text)
    assert.are.equal("f16", json.read_file(dir .. "/fp16_f16/log/hps.json").amp)
    local rec = json.decode(io.lines(dir .. "/fp16_f16/log.jsonl")())
    assert.are.equal(65536, rec.loss_scale) -- the loss scaler ran
    -- evaluation: --amp, or the reference's --fp16; the metrics within one query of f32's
    local function evaluate(name, extra)
      local args = {"--task", "vcmr", "--checkpoint", out .. "/ckpt/step_3.safetensors", "--txt-db",
        txt_dir .. "/tvr_val.db", "--out", dir .. "/" .. name .. ".json"}
      for _, a in ipairs(extra) do args[#args + 1] = a end
      local erc, etext = run_example("evaluate.lua", args)
      assert.are.equal(0, erc, etext)
      return json.read_file(dir .. "/" .. name .. ".json")
    end
    local e32, ebf, e16 = evaluate("e32", {}), evaluate("ebf", {"--amp", "bf16"}), evaluate("e16", {"--fp16"})
    local slack = helper.tolerance.ranking_autocast.queries * 100 / 9 + 0.005 -- 9 queries
    for _, e in ipairs {ebf, e16} do
      for _, k in ipairs {"0.5-r1", "0.7-r5", "0.5-r100"} do
        assert.is_true(math.abs(e.metrics.VCMR[k] - e32.metrics.VCMR[k]) <= slack, k)
      end
      assert.is_true(math.abs(e.metrics.VR.r1 - e32.metrics.VR.r1) <= slack)
      assert.are_not.same(e32.submission.VR, e.submission.VR) -- scored in half precision
    end
    assert.are.same(e16.submission, evaluate("e16b", {"--amp", "f16"}).submission) -- --fp16 is --amp f16
    rc, text = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", out .. "/ckpt/step_3.safetensors",
      "--txt-db", txt_dir .. "/tvr_val.db", "--out", dir .. "/x.json", "--fp16", "--amp", "bf16"})
    assert.are.equal(2, rc)
    assert.matches("%-%-fp16 is %-%-amp f16: give one of them", text)
  end)

  it_db("a video-only task needs no subtitle db, in training and in evaluation", function()
    local rc, out = finetune(dir .. "/v", 2, {"--config", dir .. "/train-didemo.json"})
    assert.are.equal(0, rc, out)
    assert.are.equal(json.null, json.read_file(dir .. "/v/log/hps.json").sub_txt_db) -- null stays null
    rc, out = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", dir .. "/v/ckpt/step_2.safetensors",
      "--split", "val", "--txt-db", txt_dir .. "/tvr_val.db", "--out", dir .. "/results_v.json"})
    assert.are.equal(0, rc, out)
    local res = json.read_file(dir .. "/results_v.json")
    assert.are.equal("didemo_video_only", res.task)
    assert.are.equal(9, #res.submission.VCMR)
    -- without the flag the same config with subtitles would need --sub-db
    local c = json.read_file(dir .. "/train-didemo.json")
    c.task = "tvr"
    json.write_file(dir .. "/train-tvr-nosub.json", c)
    rc, out = finetune(dir .. "/w", 1, {"--config", dir .. "/train-tvr-nosub.json"})
    assert.are.equal(2, rc)
    assert.matches("no subtitle db", out)
  end)

  it_db("takes the reference's command line: its options over the config's, --task by the reference's name",
    function()
    local out = dir .. "/refcli"
    local rc, text = run_example("finetune.lua", {"--task", "how2r", "--config", dir .. "/train-tvr.json",
      "--checkpoint", dir .. "/init.safetensors", "--txt-db", txt_dir .. "/tvr_val.db", "--vfeat-db",
      helper.fixture("data/video_db/tv"), "--output_dir", out, "--learning_rate", "0.5", "--num_train_steps", "7",
      "--betas", "0.8", "0.9", "--hard_negtiave_start_step", "-1", "--steps", "2", "--quiet"})
    assert.are.equal(0, rc, text)
    local hps = json.read_file(out .. "/log/hps.json")
    assert.are.same({"how2r", 0.5, 7, {0.8, 0.9}, {-1}, out},
      {hps.task, hps.learning_rate, hps.num_train_steps, hps.betas, hps.hard_negtiave_start_step, hps.output_dir})
    assert.is_nil(hps.config) -- parse_with_config deletes it
    -- the schedule is the command line's: warmup-linear from 0.5 over 7 updates (the config: 1e-3, 50)
    local recs = json.read_lines(out .. "/log.jsonl")
    assert.are.equal(hero.optim.warmup_linear(0.5, 2, 1, 7), recs[2].lr)
    assert.are_not.equal(hero.optim.warmup_linear(0.5, 2, 1, 50), recs[2].lr)
    -- an option of another reference script is not one of train_vcmr.py's
    rc, text = finetune(dir .. "/refcli2", 1, {"--lsr", "0.2"})
    assert.are.equal(2, rc)
    assert.matches("unknown option %-%-lsr", text)
    rc, text = finetune(dir .. "/refcli3", 1, {"--train_batch_size", "x"})
    assert.are.equal(2, rc)
    assert.matches("%-%-train_batch_size: invalid int value: 'x'", text)
    rc, text = finetune(dir .. "/refcli4", 1, {"--output_dir", dir .. "/refcli5"}) -- beside finetune's --out
    assert.are.equal(2, rc)
    assert.matches("%-%-out and %-%-output_dir say the same: give one", text)
  end)

  it_db("reads the config's checkpoint, output_dir and validation and test dbs, as train_*.py do", function()
    local c = json.read_file(dir .. "/train-tvr.json")
    c.checkpoint, c.valid_steps = dir .. "/init.safetensors", 1
    c.train_query_txt_db, c.val_query_txt_db, c.test_query_txt_db = txt_dir .. "/tvr_val.db",
      txt_dir .. "/tvr_val.db", json.null
    local function run(out, over, extra)
      c.output_dir = dir .. "/" .. out
      for k, v in pairs(over or {}) do c[k] = v end
      json.write_file(dir .. "/train-paths.json", c)
      local args = {"--task", "vcmr", "--config", dir .. "/train-paths.json", "--steps", "1", "--quiet"}
      for _, a in ipairs(extra or {}) do args[#args + 1] = a end
      return run_example("finetune.lua", args)
    end
    local function exists(path)
      local f = io.open(path, "rb")
      if f then f:close() end
      return f ~= nil
    end
    local rc, text = run("cfg1")
    assert.are.equal(0, rc, text)
    assert.is_true(exists(dir .. "/cfg1/ckpt/step_1.safetensors"))
    assert.are.equal(9, #json.read_file(dir .. "/cfg1/results_val/step_1.json").submission.VR)
    assert.is_table(json.read_lines(dir .. "/cfg1/log.jsonl")[1].valid.full_eval)
    assert.is_false(exists(dir .. "/cfg1/results_test/step_1.json")) -- test_query_txt_db: null
    rc, text = run("cfg2", {test_query_txt_db = txt_dir .. "/tvr_val.db"})
    assert.are.equal(0, rc, text)
    assert.are.equal(9, #json.read_file(dir .. "/cfg2/results_test/step_1.json").submission.VR)
    rc, text = run("cfg3", nil, {"--no-valid"})
    assert.are.equal(0, rc, text)
    assert.is_nil(json.read_lines(dir .. "/cfg3/log.jsonl")[1].valid)
    assert.is_false(exists(dir .. "/cfg3/results_val/step_1.json"))
    rc, text = run("cfg4", {val_query_txt_db = "/nonexistent/tvr_val.db"})
    assert.are.equal(2, rc)
    assert.matches("the config's val_query_txt_db '/nonexistent/tvr_val.db' is not a text db: give "
      .. "%-%-valid%-txt%-db DIR, or %-%-no%-valid", text)
    rc, text = run("cfg5", {val_query_txt_db = json.null, checkpoint = json.null})
    assert.are.equal(2, rc)
    assert.matches("%-%-checkpoint FILE is required %(the config has no checkpoint%)", text)
  end)

  it_db("evaluates a run directory as eval_*.py do: --output-dir and a step, results_<split>/results_<step>_all.json",
    function()
    local rc, text = finetune(dir .. "/e", 2)
    assert.are.equal(0, rc, text)
    rc, text = run_example("evaluate.lua", {"--task", "tvr", "--output-dir", dir .. "/e", "--checkpoint", "2",
      "--txt-db", txt_dir .. "/tvr_val.db"})
    assert.are.equal(0, rc, text)
    local sub = json.read_file(dir .. "/e/results_val/results_2_all.json")
    assert.are.same({"SVMR", "VCMR", "VR", "video2idx"}, (function()
      local ks = json.keys(sub)
      table.sort(ks)
      return ks
    end)())
    rc, text = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", dir .. "/e/ckpt/step_2.safetensors",
      "--txt-db", txt_dir .. "/tvr_val.db", "--out", dir .. "/e_full.json"})
    assert.are.equal(0, rc, text)
    assert.are.same(json.read_file(dir .. "/e_full.json").submission, sub)
    -- a run the reference trained names its weights model_step_<step>.pt (the name is what is
    -- looked up here; hero.load tells the file's format by its content); eval_vcmr.py computes
    -- its own --full_eval_tasks, not the run's
    os.execute(string.format("cp '%s/e/ckpt/step_2.safetensors' '%s/e/ckpt/model_step_2_final.pt'", dir, dir))
    rc, text = run_example("evaluate.lua", {"--task", "vcmr", "--output-dir", dir .. "/e", "--checkpoint", "2_final",
      "--txt-db", txt_dir .. "/tvr_val.db", "--full-eval-tasks", "VR"})
    assert.are.equal(0, rc, text)
    local only_vr = json.read_file(dir .. "/e/results_val/results_2_final_all.json")
    assert.are.same(sub.VR, only_vr.VR)
    assert.is_nil(only_vr.VCMR)
    rc, text = run_example("evaluate.lua", {"--task", "vcmr", "--output-dir", dir .. "/e", "--checkpoint", "9",
      "--txt-db", txt_dir .. "/tvr_val.db"})
    assert.are.equal(2, rc)
    assert.matches("no checkpoint 9 in .*/e/ckpt %(step_9.safetensors or model_step_9.pt%)", text)
    rc, text = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", "2", "--txt-db",
      txt_dir .. "/tvr_val.db"})
    assert.are.equal(2, rc)
    assert.matches("checkpoint '2' does not exist %(a step is looked up in %-%-output%-dir DIR's ckpt/%)", text)
    -- eval_violin.py --save_logits: the answers in results_<split>_w_logit/
    local c = train_config("violin")
    c.model_config = dir .. "/model.json"
    json.write_file(dir .. "/train-violin-e.json", c)
    rc, text = run_example("finetune.lua", {"--task", "violin", "--config", dir .. "/train-violin-e.json",
      "--checkpoint", dir .. "/init.safetensors", "--txt-db", txt_dir .. "/violin_test.db", "--out", dir .. "/ev",
      "--steps", "1", "--quiet"})
    assert.are.equal(0, rc, text)
    rc, text = run_example("evaluate.lua", {"--task", "violin", "--output-dir", dir .. "/ev", "--checkpoint", "1",
      "--txt-db", txt_dir .. "/violin_test.db", "--split", "test", "--save-logits", dir .. "/ev_logits.json"})
    assert.are.equal(0, rc, text)
    local answers = json.read_file(dir .. "/ev/results_test_w_logit/results_1_all.json")
    local logits = json.read_file(dir .. "/ev_logits.json")
    local n = 0
    for qid, a in pairs(answers) do
      assert.are.equal(logits[qid][1] > 0 and 1 or 0, a, qid) -- {qid: answer}
      n = n + 1
    end
    assert.is_true(n > 0)
  end)

  it_db("bad input gives clear errors", function()
    local rc, out = finetune(dir .. "/x", 1, {"--checkpoint", dir .. "/missing.pt"})
    assert.are.equal(2, rc)
    assert.matches("checkpoint '[^']*missing.pt' does not exist", out)
    rc, out = run_example("finetune.lua", {"--task", "vqa", "--config", dir .. "/train-tvr.json"})
    assert.are.equal(2, rc)
    assert.matches("unknown task 'vqa' %(vcmr, vr, videoqa, violin, tvc; or the reference's tvr, how2r", out)
    rc, out = run_example("evaluate.lua", {"--task", "vcmr", "--checkpoint", dir .. "/nope/ckpt/step_1.safetensors",
      "--out", dir .. "/r.json"})
    assert.are.equal(2, rc)
    assert.matches("does not exist", out)

    local c = train_config("vcmr")
    c.learning_rate = nil
    helper.assert_error_contains(function() FT.hparams("vcmr", c, "train-tvr.json") end,
      "train-tvr.json lacks 'learning_rate' (needed for task vcmr)")
    c = train_config("videoqa")
    c.lr_mul = nil
    helper.assert_error_contains(function() FT.hparams("videoqa", c, "cfg") end, "lacks 'lr_mul'")
    helper.assert_error_contains(function() FT.hparams("vcmr", train_config("videoqa"), "cfg") end,
      "cfg is for task 'tvqa', which --task vcmr does not run")
    c = train_config("vcmr")
    c.optim = "sgd"
    helper.assert_error_contains(function() FT.hparams("vcmr", c, "cfg") end,
      "optim 'sgd' is not one of the reference's adamw, adam, adamax")
    c.optim = "adamax"
    assert.equal("adamax", FT.hparams("vcmr", c, "cfg").optim)
    c = train_config("vcmr")
    c.hard_neg_weights = {1, 2}
    helper.assert_error_contains(function() FT.hparams("vcmr", c, "cfg") end, "lists of matching length")
    c = train_config("vcmr")
    c.misspelled_key = true -- unknown keys are kept, as the reference's argparse namespace does
    assert.is_true(FT.hparams("vcmr", c, "cfg").misspelled_key)
    -- a model whose vocabulary is smaller than the databases' ids
    local smoke_cfg = json.read_file(smoke .. "/config.json").model_config.finetune
    json.write_file(dir .. "/smoke_model.json", smoke_cfg)
    local hps = FT.hparams("vcmr", train_config("vcmr"), "cfg")
    helper.assert_error_contains(function()
      FT.setup{task = "vcmr", hps = hps, model_config = hero.config.model(smoke_cfg),
        checkpoint = smoke .. "/weights.safetensors", vfeat_db = hps.vfeat_db, sub_db = hps.sub_txt_db,
        txt_db = txt_dir .. "/tvr_val.db", progress = false}
    end, "token ids go up to 50264 but the model's vocabulary has 1000 rows")
    helper.assert_error_contains(function() FT.model_config(hps, dir .. "/none.json") end, "model config not found")
    helper.assert_error_contains(function() FT.dataset("vcmr", hps, nil, dir .. "/no.db", true) end,
      "text db '" .. dir .. "/no.db' not found")
  end)
end)
