local hero = require "hero"
local helper = require "spec_helper"
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
      if not videos[vid] then videos[vid] = {v_feat = feats, sub2frames = side.sub_idx2frame_idx[i], input_ids = ids} end
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

  it("st/ed of every TVR and TVQA query as the reference (12-frame cap, 1.5 s frames)", function()
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
  end)
end)
