local hero = require "hero"
local helper = require "spec_helper"

local fx = helper.load_fixture("align.lua")
local data = hero.data

-- Exact structural equality, integer/float subtypes included (the reference keeps Python ints and
-- floats apart: a statistic that never changed is the integer 0). Returns nil or "path: reason".
local function diff(a, b, path)
  path = path or "result"
  if type(a) ~= type(b) then return string.format("%s: got %s, expected %s", path, type(a), type(b)) end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then
      return string.format("%s: got %s %s, expected %s %s", path, math.type(a), a, math.type(b), b)
    end
    if a ~= b then return string.format("%s: got %.17g, expected %.17g", path, a, b) end
    return nil
  end
  if type(a) ~= "table" then
    if a ~= b then return string.format("%s: got %s, expected %s", path, tostring(a), tostring(b)) end
    return nil
  end
  for k, v in pairs(b) do
    local d = diff(a[k], v, path .. "." .. tostring(k))
    if d then return d end
  end
  for k in pairs(a) do
    if b[k] == nil then return string.format("%s: unexpected key %s", path, tostring(k)) end
  end
  return nil
end

local function assert_same(actual, expected, what)
  local d = diff(actual, expected, what)
  assert(d == nil, d)
end

describe("hero.data.align_subtitles on the reference videos", function()
  for _, v in ipairs(fx.videos) do
    local cases = table.concat(v.designed_cases, ", ")
    it(v.vid .. " (" .. cases .. ")", function()
      local info, overlapped = data.align_subtitles(v.subtitles, v.nframes_input, {frame_length = fx.frame_interval})
      assert_same(info, v.prepro_info, "info")
      assert.are.equal(v.overlapped, overlapped)
      assert.are.equal(v.num_of_frames_used, info.num_of_frames)
      -- the default frame length is the reference's 1.5 s
      assert_same(data.align_subtitles(v.subtitles, v.nframes_input), v.prepro_info, "info (default opts)")

      local db = data.subtitle_db_alignment(info, v.token_lens)
      assert_same(db, v.db_value, "db_value")
      for _, c in ipairs(v.compute) do
        assert_same(data.compute_sub2frames(db, c.max_clip_len), c.result,
          "compute_sub2frames(" .. c.max_clip_len .. ")")
        -- the reader works on the stored value, not on our own tables
        assert_same(data.compute_sub2frames(v.db_value, c.max_clip_len), c.result, "from the stored value")
      end
    end)
  end

  it("covers every designed case it claims", function()
    local seen = {}
    for _, v in ipairs(fx.videos) do
      for _, c in ipairs(v.designed_cases) do seen[c:match("^[%w_]+")] = true end
    end
    for _, c in ipairs {"sub_without_unique_frames", "sub_beyond_end", "unmatched_frames", "overlap", "cap_cut",
        "dropped_after_cut", "pseudo_subs", "long_last_truncated", "nframe_from_last_end", "tie_earliest_wins",
        "zero_iou_defaults_to_sub0", "float32_boundary"} do
      assert.is_true(seen[c], c)
    end
  end)

  it("computes in float32: an end of 10.5000001 s covers 7 frames, not 8", function()
    local info = data.align_subtitles({{text = "x", start = 7.6, ["end"] = 10.5000001}}, 12)
    assert_same(info.sub2frames, {{0, {5, 6}}}, "sub2frames")
    -- in float64, 10.5000001 / 1.5 > 7 and the range would reach frame 7
    assert.is_true(math.ceil(10.5000001 / 1.5) == 8)
  end)

  it("gives a frame whose covering subtitles all have IoU 0 to subtitle 0", function()
    local info = data.align_subtitles({
      {text = "a", start = 0.0, ["end"] = 1.0},
      {text = "b", start = 6.3, ["end"] = 6.3},
    }, 6)
    assert_same(info.frame2unique_sub, {{0, 0}, {4, 0}}, "frame2unique_sub")
    assert_same(info.unique_sub2frames, {{0, {0, 4}}, {1, {}}}, "unique_sub2frames")
  end)
end)

describe("hero.data alignment against an independent NumPy model", function()
  it("reproduces every random video (" .. #fx.random .. ")", function()
    for _, v in ipairs(fx.random) do
      local info, overlapped = data.align_subtitles(v.subtitles, v.nframes, {frame_length = v.frame_length})
      assert_same(info, v.info, v.name .. ".info")
      assert.are.equal(v.overlapped, overlapped, v.name)
      local db = data.subtitle_db_alignment(info, v.token_lens)
      assert_same(db, v.db_value, v.name .. ".db_value")
      for _, c in ipairs(v.compute) do
        assert_same(data.compute_sub2frames(db, c.max_clip_len), c.result,
          v.name .. ".compute_sub2frames(" .. c.max_clip_len .. ")")
      end
    end
  end)
end)

describe("hero.data alignment edge behaviour", function()
  it("accepts subtitles past the video end and skips them (empty sub2frames entry in the DB)", function()
    local info = data.align_subtitles({
      {text = "a", start = 0.0, ["end"] = 3.0},
      {text = "b", start = 4.5, ["end"] = 9.0},
    }, 3)
    assert_same(info.sub2frames, {{0, {0, 1}}}, "sub2frames")
    assert_same(info.unique_sub2frames, {{0, {0, 1}}, {1, {}}}, "unique_sub2frames")
    assert_same(info.unmatched_frames, {2}, "unmatched")
    local db = data.subtitle_db_alignment(info, {1, 2})
    assert_same(db.sub2frames, {{0, {0, 1}}, {1, {}}}, "db sub2frames")
    assert.are.equal(3, db.max_mtached_sub_len)
  end)

  it("keeps frames past the video end in the raw sub2frames", function()
    local info = data.align_subtitles({{text = "a", start = 0.0, ["end"] = 6.0}}, 2)
    assert_same(info.sub2frames, {{0, {0, 1, 2, 3}}}, "sub2frames")
    assert_same(info.unique_sub2frames, {{0, {0, 1}}}, "unique_sub2frames")
  end)

  it("cuts a last subtitle longer than 16 s to its first 11 frames, not an earlier one", function()
    local long = {text = "a", start = 0.0, ["end"] = 30.0}
    local info = data.align_subtitles({long}, 30)
    assert.are.equal(11, #info.sub2frames[1][2])
    assert.are.equal(1, info.extra_long_subs)
    info = data.align_subtitles({long, {text = "b", start = 30.0, ["end"] = 31.0}}, 30)
    assert.are.equal(20, #info.sub2frames[1][2])
    assert.are.equal(0, info.extra_long_subs)
  end)

  it("derives nframes from the last end when given 0: int(int(end) / frame_length)", function()
    local subs = {{text = "a", start = 0.0, ["end"] = 13.99}}
    assert.are.equal(8, data.align_subtitles(subs, 0).num_of_frames)        -- int(13 / 1.5)
    assert.are.equal(6, data.align_subtitles(subs, 0, {frame_length = 2}).num_of_frames)
    -- an end under one frame derives 0 frames: no alignment at all
    local info = data.align_subtitles({{text = "a", start = 0.0, ["end"] = 1.4}}, 0)
    assert.are.equal(0, info.num_of_frames)
    assert.is_nil(info.unique_sub2frames)
    assert_same(data.subtitle_db_alignment(info, {3}), {unique_sub2frames = {}, sub2frames = {},
      unmatched_frames = {}, duration = 0, max_mtached_sub_len = 0}, "db")
  end)

  it("makes 5-frame pseudo-subtitles for a video without subtitles", function()
    local info = data.align_subtitles({}, 11)
    assert.are.equal(1.5, info.max_unmatched_group_len)
    local db = data.subtitle_db_alignment(info)
    assert_same(db.unique_sub2frames, {{0, {0, 1, 2, 3, 4}}, {1, {5, 6, 7, 8, 9}}, {2, {10}}}, "pseudo")
    assert_same(db.sub2frames, db.unique_sub2frames, "pseudo sub2frames")
    assert.are_not.equal(db.sub2frames[1][2], db.unique_sub2frames[1][2])   -- no shared lists
    assert.are.equal(5, db.max_mtached_sub_len)
  end)

  it("accepts token id arrays as token counts", function()
    local info = data.align_subtitles({{text = "a b", start = 0.0, ["end"] = 3.0}}, 4)
    assert.are.equal(5, data.subtitle_db_alignment(info, {{7, 8, 9}}).max_mtached_sub_len)
    assert.are.equal(2, data.subtitle_db_alignment(info).max_mtached_sub_len)
  end)

  it("compute_sub2frames: a subtitle that lost every frame is dropped and ends the walk", function()
    local db = {unique_sub2frames = {{0, {0, 1}}, {1, {}}, {2, {5, 6}}, {3, {7}}}, unmatched_frames = {2, 3, 4},
      duration = 8}
    assert_same(data.compute_sub2frames(db, 5), {sub2frames = {{0, {0, 1}}, {1, {}}}, vonly_frames = {2, 3, 4},
      id2len = 5}, "cut at 5")
    assert_same(data.compute_sub2frames(db, 6), {sub2frames = {{0, {0, 1}}, {1, {}}, {2, {5}}},
      vonly_frames = {2, 3, 4}, id2len = 6}, "cut at 6")
    -- at 0 the first subtitle loses all its frames: dropped, and the walk stops there
    assert_same(data.compute_sub2frames(db, 0), {sub2frames = {}, vonly_frames = {}, id2len = 0}, "cut at 0")
    -- -1 keeps everything, no video-only frames, id2len -1 (the reference's behaviour)
    assert_same(data.compute_sub2frames(db, -1), {sub2frames = db.unique_sub2frames, vonly_frames = {},
      id2len = -1}, "-1")
    -- a missing unmatched_frames list is an empty one; nframes overrides the stored duration
    assert_same(data.compute_sub2frames({unique_sub2frames = {{0, {3, 1}}}}, 100, 4),
      {sub2frames = {{0, {1, 3}}}, vonly_frames = {}, id2len = 4}, "sorted, no unmatched")
  end)
end)

describe("hero.data alignment errors", function()
  local function sub(st, en, text) return {text = text or "t", start = st, ["end"] = en} end
  local ok_sub = sub(0.0, 1.0)

  it("names the subtitle for bad times", function()
    helper.assert_error_contains(function() data.align_subtitles({ok_sub, sub(3.0, 2.0)}, 5) end,
      "hero.data.align_subtitles", "subs[2] (sub_idx 1)", "'end' (2.0 s) is before 'start' (3.0 s)")
    helper.assert_error_contains(function() data.align_subtitles({sub(1.5, 1.4999999999999998)}, 5) end,
      "'end' (1.4999999999999998 s) is before 'start' (1.5 s)")
    helper.assert_error_contains(function() data.align_subtitles({sub(-0.5, 1.0)}, 5) end,
      "subs[1] (sub_idx 0)", "'start' is negative")
    helper.assert_error_contains(function() data.align_subtitles({ok_sub, ok_sub, sub(0.0, -1.0)}, 5) end,
      "subs[3] (sub_idx 2)", "'end' is negative")
    helper.assert_error_contains(function() data.align_subtitles({sub(0 / 0, 1.0)}, 5) end,
      "subs[1] (sub_idx 0)", "'start' is NaN")
    helper.assert_error_contains(function() data.align_subtitles({ok_sub, sub(1.0, 0 / 0)}, 5) end,
      "subs[2] (sub_idx 1)", "'end' is NaN")
    helper.assert_error_contains(function() data.align_subtitles({sub(0.0, 1 / 0)}, 5) end,
      "subs[1] (sub_idx 0)", "'end'", "does not fit in float32")
    helper.assert_error_contains(function() data.align_subtitles({sub(0.0, 1e20)}, 5) end,
      "subs[1] (sub_idx 0)", "beyond frame 2^31")
  end)

  it("names the subtitle for non-numeric or missing fields", function()
    helper.assert_error_contains(function() data.align_subtitles({sub("0", 1.0)}, 5) end,
      "subs[1] (sub_idx 0)", "'start' must be a number of seconds, got string")
    helper.assert_error_contains(function() data.align_subtitles({ok_sub, {text = "x", start = 1.0}}, 5) end,
      "subs[2] (sub_idx 1)", "'end' must be a number of seconds, got nil")
    helper.assert_error_contains(function() data.align_subtitles({ok_sub, sub(1.0, 2.0, 42)}, 5) end,
      "subs[2] (sub_idx 1)", "'text' must be a string, got number")
    helper.assert_error_contains(function() data.align_subtitles({ok_sub, true}, 5) end,
      "subs[2] (sub_idx 1)", "expected a table, got boolean")
  end)

  it("refuses subtitles not sorted by start time", function()
    helper.assert_error_contains(function() data.align_subtitles({sub(2.0, 3.0), sub(1.0, 4.0)}, 5) end,
      "subs[2] (sub_idx 1)", "before subs[1]", "sorted by start time")
    -- equal start times are fine
    assert.has_no.errors(function() data.align_subtitles({sub(2.0, 3.0), sub(2.0, 2.5)}, 5) end)
  end)

  it("checks nframes, frame_length and the argument types", function()
    helper.assert_error_contains(function() data.align_subtitles({ok_sub}, -1) end,
      "nframes must be >= 0 and < 2^31, got -1")
    helper.assert_error_contains(function() data.align_subtitles({ok_sub}, 1 << 40) end, "got 1099511627776")
    helper.assert_error_contains(function() data.align_subtitles({ok_sub}, 2.5) end, "nframes must be an integer")
    helper.assert_error_contains(function() data.align_subtitles({ok_sub}, "3") end,
      "nframes must be an integer, got string")
    helper.assert_error_contains(function() data.align_subtitles({}, 0) end, "nframes is 0", "no subtitles")
    helper.assert_error_contains(function() data.align_subtitles("subs", 3) end,
      "argument #1: expected an array of subtitles, got string")
    helper.assert_error_contains(function() data.align_subtitles({}, 3, 1.5) end,
      "argument #3: expected an options table")
    for _, bad in ipairs {0, -1.5, 0 / 0, 1 / 0, 1e-50} do
      helper.assert_error_contains(function() data.align_subtitles({ok_sub}, 3, {frame_length = bad}) end,
        "frame_length must be a positive number")
    end
    -- an integral float nframes is an integer
    assert.are.equal(math.type(data.align_subtitles({ok_sub}, 3.0).num_of_frames), "integer")
  end)

  it("checks the inputs of subtitle_db_alignment and compute_sub2frames", function()
    local info = data.align_subtitles({ok_sub, sub(1.0, 2.0)}, 3)
    helper.assert_error_contains(function() data.subtitle_db_alignment({}) end,
      "hero.data.subtitle_db_alignment", "expected the info table")
    helper.assert_error_contains(function() data.subtitle_db_alignment(info, {1}) end, "1 token counts for 2 subtitles")
    helper.assert_error_contains(function() data.subtitle_db_alignment(info, {1, "x"}) end,
      "entry 2 is not a token count")
    helper.assert_error_contains(function() data.compute_sub2frames({}, 12) end,
      "hero.data.compute_sub2frames", "expected a subtitle DB value")
    local db = data.subtitle_db_alignment(info)
    helper.assert_error_contains(function() data.compute_sub2frames(db, 1.5) end, "max_clip_len must be an integer")
    helper.assert_error_contains(function() data.compute_sub2frames(db, nil) end, "max_clip_len must be an integer")
    helper.assert_error_contains(function()
      data.compute_sub2frames({unique_sub2frames = {{0, {1}}, {1, {"2"}}}, duration = 3}, 12)
    end, "unique_sub2frames[2]", "entry 1 is not an integer frame index")
    helper.assert_error_contains(function()
      data.compute_sub2frames({unique_sub2frames = {{0, {1}}, "x"}, duration = 3}, 12)
    end, "unique_sub2frames[2]", "expected a {sub_idx, {frames}} pair")
    helper.assert_error_contains(function()
      data.compute_sub2frames({unique_sub2frames = {}, unmatched_frames = {1.5}, duration = 3}, 12)
    end, "unmatched_frames", "entry 1 is not an integer")
    helper.assert_error_contains(function() data.compute_sub2frames({unique_sub2frames = {}}, 12) end,
      "video length (duration) must be an integer, got nil")
  end)
end)
