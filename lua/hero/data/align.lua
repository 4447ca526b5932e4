--- Subtitle <-> frame alignment of HERO's subtitle preprocessing, reproduced result for result.
--
-- Three steps, each matching one piece of the reference pipeline:
--   * align_subtitles(subs, nframes, opts)  -- the per-video alignment dict of the subtitle preprocessor
--   * subtitle_db_alignment(info, token_lens) -- the alignment fields it stores in the subtitle DB value
--     (including the 5-frame pseudo-subtitles of videos without subtitles)
--   * compute_sub2frames(db_value, max_clip_len) -- what the subtitle DB reader derives at load time
--
-- Indices stored in the results (subtitle indices, frame indices) are 0-based, as in the reference.
-- Python dicts become arrays of pairs in the dict's order, e.g. unique_sub2frames =
-- {{0, {0, 1, 2}}, {1, {3, 4}}, {2, {}}}, frame2unique_sub = {{0, 0}, {1, 0}, {3, 1}}.
--
-- Arithmetic follows the reference's NumPy 1.x semantics: timestamps are float32, divided by the
-- float32 frame length in float32; a float32 minus a float32 rounds to float32, while mixing a float32
-- with a Python int or float computes in float64. Computing in double and rounding once to float32
-- gives the correctly rounded float32 result for + - * / (53 >= 2*24 + 2), so one rounding helper does.
local align = {}

local FLT_MAX = 3.4028234663852886e38
-- Bound on frame indices and counts: far above any real video, and it keeps a garbage time or
-- count from turning into an endless loop or a float index.
local MAX_FRAME = 2 ^ 31

local function f32(x)
  return (string.unpack("<f", string.pack("<f", x)))
end

-- Shortest round-tripping form of a number, like Python's repr (2.0, 0.1, 10.5000001).
local function fmt(x)
  if math.type(x) ~= "float" or x ~= x or x == math.huge or x == -math.huge then return tostring(x) end
  for digits = 15, 17 do
    local s = string.format("%." .. digits .. "g", x)
    if tonumber(s) == x then
      if not s:find("[%.eEn]") then s = s .. ".0" end
      return s
    end
  end
  return tostring(x)
end

-- Python's max(a, b): the first argument unless the second is strictly greater. The statistics keep
-- Lua's integer/float subtype the way Python keeps int/float (a maximum that never moved is integer 0).
local function pymax(a, b) if b > a then return b end return a end

-- Operands tagged with their float32-ness: each is either a float32 NumPy scalar (tag true) or a
-- Python int / float64 (tag false). Only float32 - float32 rounds to float32.
local function sub_tagged(a, a32, b, b32)
  if a32 and b32 then return f32(a - b) end
  return a - b
end

-- The reference's temporal IoU of the frame span [f, f+1] (Python ints) and a subtitle span [s, e]
-- (float32 timestamps in frame units), including its min/max argument order and operand types.
local function frame_iou(f, s, e)
  local f1 = f + 1
  local min_start, min_start32 = f, false
  if s < f then min_start, min_start32 = s, true end
  local max_start, max_start32 = f, false
  if s > f then max_start, max_start32 = s, true end
  local min_end, min_end32 = f1, false
  if e < f1 then min_end, min_end32 = e, true end
  local max_end, max_end32 = f1, false
  if e > f1 then max_end, max_end32 = e, true end
  if min_end <= max_start then return 0 end
  local num = sub_tagged(min_end, min_end32, max_start, max_start32)
  local den = sub_tagged(max_end, max_end32, min_start, min_start32)
  -- num is float32 only when the subtitle's end and start are both inside the frame, den only when
  -- both are outside it: never both, so the division always runs in float64.
  return num / den
end

local function is_int(v) return math.type(v) == "integer" or (math.type(v) == "float" and math.tointeger(v) ~= nil) end

-- nil, or what is wrong with a time field.
local function time_problem(name, v)
  if type(v) ~= "number" then return string.format("'%s' must be a number of seconds, got %s", name, type(v)) end
  if v ~= v then return string.format("'%s' is NaN", name) end
  if v < 0 then return string.format("'%s' is negative (%s s)", name, fmt(v)) end
  if v > FLT_MAX then return string.format("'%s' (%s s) does not fit in float32", name, fmt(v)) end
  return nil
end

--- The alignment of one video's subtitles with its frames (reference: process_single_vid_sub).
-- subs: array of {text = string, start = seconds, ["end"] = seconds}, sorted by start time.
-- nframes: number of frames; 0 means "derive from the last subtitle end" = int(int(end) / frame_length).
-- opts.frame_length: seconds per frame (default 1.5).
-- Returns info, overlapped_count (the reference's two results). With subtitles and frames, info has
-- num_of_frames, unique_sub2frames, sub2frames, frame2subs, frame2unique_sub, unmatched_frames and the
-- statistics; without subtitles (or with 0 frames) only num_of_frames and the statistics, as in the
-- reference (max_unmatched_group_len is then the frame length, also as in the reference).
-- Accepted as the reference accepts them: subtitles starting at/after the video end (skipped: absent
-- from sub2frames, an empty entry in unique_sub2frames), ends past the video end (the raw sub2frames
-- keeps frames >= nframes; only frames < nframes are assigned), zero-length and identical spans,
-- overlaps, equal start times, empty texts. Refused with an error naming subs[i] (sub_idx i-1):
-- non-table entries, a non-string text, start/end that are not numbers, NaN, negative, beyond
-- float32 or beyond frame 2^31, end < start, and start times that decrease (the reference asserts
-- sorted float32 starts); also nframes not an integer in [0, 2^31), nframes 0 without subtitles (the
-- reference fails there too) and a frame length that is not a positive float32-representable number.
function align.align_subtitles(subs, nframes, opts)
  local fname = "hero.data.align_subtitles"
  if type(subs) ~= "table" then
    error(string.format("%s: argument #1: expected an array of subtitles, got %s", fname, type(subs)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(string.format("%s: argument #3: expected an options table, got %s", fname, type(opts)), 2)
  end
  for k in pairs(opts or {}) do -- a misspelt {frame_len = 3} aligned at 1.5 s
    if k ~= "frame_length" then
      error(string.format("%s: unknown option '%s' (frame_length)", fname, tostring(k)), 2)
    end
  end
  local frame_length = 1.5
  if opts and opts.frame_length ~= nil then frame_length = opts.frame_length end
  if type(frame_length) ~= "number" or frame_length ~= frame_length or frame_length <= 0 or
     frame_length > FLT_MAX or f32(frame_length) <= 0 then
    error(string.format("%s: frame_length must be a positive number representable in float32, got %s", fname,
      type(frame_length) == "number" and fmt(frame_length) or type(frame_length)), 2)
  end
  if type(nframes) ~= "number" or not is_int(nframes) then
    error(string.format("%s: argument #2: nframes must be an integer, got %s", fname,
      type(nframes) == "number" and fmt(nframes) or type(nframes)), 2)
  end
  nframes = math.tointeger(nframes)
  if nframes < 0 or nframes >= MAX_FRAME then
    error(string.format("%s: argument #2: nframes must be >= 0 and < 2^31, got %d", fname, nframes), 2)
  end

  -- Validate every subtitle first, so a bad one is reported whatever the other inputs are.
  local n = #subs
  local t_start, t_end = {}, {}   -- float32 seconds
  local fl32 = f32(frame_length)
  for i = 1, n do
    local sub = subs[i]
    local where = string.format("%s: subs[%d] (sub_idx %d)", fname, i, i - 1)
    if type(sub) ~= "table" then error(string.format("%s: expected a table, got %s", where, type(sub)), 2) end
    if type(sub.text) ~= "string" then
      error(string.format("%s: 'text' must be a string, got %s", where, type(sub.text)), 2)
    end
    local problem = time_problem("start", sub.start) or time_problem("end", sub["end"])
    if problem then error(where .. ": " .. problem, 2) end
    if sub["end"] < sub.start then
      error(string.format("%s: 'end' (%s s) is before 'start' (%s s)", where, fmt(sub["end"]), fmt(sub.start)), 2)
    end
    t_start[i], t_end[i] = f32(sub.start), f32(sub["end"])
    -- The reference asserts that the float32 start times are sorted.
    if i > 1 and t_start[i] < t_start[i - 1] then
      error(string.format("%s: starts at %s s, before subs[%d] (%s s); subtitles must be sorted by start time",
        where, fmt(sub.start), i - 1, fmt(subs[i - 1].start)), 2)
    end
    if f32(t_end[i] / fl32) >= MAX_FRAME then
      error(string.format("%s: 'end' (%s s) lies beyond frame 2^31", where, fmt(sub["end"])), 2)
    end
  end

  if nframes == 0 then
    if n == 0 then
      -- The reference fails here too (it reads the last subtitle of an empty list).
      error(string.format("%s: nframes is 0 (derive it from the last subtitle end) but there are no subtitles",
        fname), 2)
    end
    -- int(int(end) / frame_length) on the raw (float64) end time and the raw frame length.
    nframes = math.floor(math.floor(subs[n]["end"]) / frame_length)
    nframes = math.tointeger(nframes)
  end

  if n == 0 or nframes == 0 then
    return {
      num_of_frames = nframes,
      max_sub_length = 0,
      max_sub_duration = 0,
      max_gap_time = 0,
      max_overlap_time = 0,
      max_matched_frame_len = 0,
      max_unmatched_group_len = frame_length,
      extra_long_subs = 0,
    }, 0
  end

  -- Longest text in space-separated pieces (Python's text.split(" ") counts empty pieces too).
  local max_sub_length = 0
  for i = 1, n do
    local _, spaces = subs[i].text:gsub(" ", "")
    max_sub_length = math.max(max_sub_length, spaces + 1)
  end

  -- Timestamps in frame units, float32; frame range [floor(start), ceil(end)).
  local ts, te, fst, fed = {}, {}, {}, {}
  for i = 1, n do
    ts[i], te[i] = f32(t_start[i] / fl32), f32(t_end[i] / fl32)
    fst[i], fed[i] = math.tointeger(math.floor(ts[i])), math.tointeger(math.ceil(te[i]))
  end

  local video_end = frame_length * nframes   -- Python float * int
  local overlapped, max_gap, max_overlap, max_duration, extra_long = 0, 0, 0, 0, 0
  local sub2frames = {}          -- array of {sub_idx, frames} for the subtitles not skipped
  local prev = -1                -- 0-based index of the previous kept subtitle
  for i = 1, n do
    local k = i - 1
    -- The reference only looks back when the previous kept subtitle is not subtitle 0 (`> 0`).
    if prev > 0 then
      if t_end[prev + 1] > t_start[i] then overlapped = overlapped + 1 end
      local gap = f32(t_start[i] - t_end[prev + 1])
      max_gap = pymax(max_gap, gap)
      max_overlap = pymax(max_overlap, -gap)
    end
    if t_start[i] < video_end then   -- else: starts at/after the video end, skipped
      -- end clipped to the video: min(float32 end, float64 video end) keeps the float32 end unless
      -- the video end is strictly smaller; the difference is float32 only between two float32s.
      local duration
      if video_end < t_end[i] then
        duration = video_end - t_start[i]
      else
        duration = f32(t_end[i] - t_start[i])
      end
      local last = fed[i]
      if i == n and duration > 16 then
        extra_long = extra_long + 1
        last = math.min(last, fst[i] + 11)
      else
        max_duration = pymax(max_duration, duration + 0.0)
      end
      local frames = {}
      for f = fst[i], last - 1 do frames[#frames + 1] = f end
      sub2frames[#sub2frames + 1] = {k, frames}
      prev = k
    end
  end

  -- Subtitles covering each frame, in subtitle order.
  local covering = {}
  for _, pair in ipairs(sub2frames) do
    for _, f in ipairs(pair[2]) do
      if f < nframes then
        local c = covering[f]
        if not c then c = {}; covering[f] = c end
        c[#c + 1] = pair[1]
      end
    end
  end

  local frame2subs, frame2unique, unmatched = {}, {}, {}
  local unique_lists = {}
  for i = 1, n do unique_lists[i] = {} end
  local max_group, group = 0, 0
  for f = 0, nframes - 1 do
    local c = covering[f]
    if c then
      frame2subs[#frame2subs + 1] = {f, c}
      -- Highest IoU wins; strictly greater, so ties keep the earliest subtitle; all-zero IoUs keep
      -- the initial choice, subtitle 0 (even when subtitle 0 does not cover the frame).
      local best, best_iou = 0, 0
      for _, k in ipairs(c) do
        local iou = frame_iou(f, ts[k + 1], te[k + 1])
        if iou > best_iou then best, best_iou = k, iou end
      end
      frame2unique[#frame2unique + 1] = {f, best}
      local list = unique_lists[best + 1]
      list[#list + 1] = f
      group = 0
    else
      unmatched[#unmatched + 1] = f
      group = group + 1
      if group > max_group then max_group = group end
    end
  end

  local unique = {}
  local max_matched = 0
  for i = 1, n do
    unique[i] = {i - 1, unique_lists[i]}
    max_matched = math.max(max_matched, #unique_lists[i])
  end

  return {
    num_of_frames = nframes,
    unique_sub2frames = unique,
    sub2frames = sub2frames,
    frame2subs = frame2subs,
    frame2unique_sub = frame2unique,
    unmatched_frames = unmatched,
    max_sub_length = max_sub_length,
    max_sub_duration = max_duration,
    max_gap_time = max_gap,
    max_overlap_time = max_overlap,
    max_matched_frame_len = max_matched,
    max_unmatched_group_len = max_group,
    extra_long_subs = extra_long,
  }, overlapped
end

local function copy_list(t)
  local out = {}
  for i = 1, #t do out[i] = t[i] end
  return out
end

--- The alignment fields of a subtitle DB value (reference: process_tv_subtitles), from the info of
-- align_subtitles and the token count of every subtitle.
-- token_lens: optional array, one entry per subtitle: a token count or the token id array itself
-- (missing = no tokens). Ignored for pseudo-subtitles, whose text is empty.
-- Returns {unique_sub2frames, sub2frames, unmatched_frames, duration, max_mtached_sub_len} (the
-- reference's key spelling). With subtitles, both lists have one pair per subtitle (sub2frames the
-- raw frame ranges, {} for a skipped subtitle); without subtitles, pseudo-subtitles of 5 frames
-- (the last one shorter), whose text is empty (the DB stores one empty token list per pseudo-subtitle).
function align.subtitle_db_alignment(info, token_lens)
  local fname = "hero.data.subtitle_db_alignment"
  if type(info) ~= "table" or not is_int(info.num_of_frames) or info.num_of_frames < 0 then
    error(fname .. ": argument #1: expected the info table of hero.data.align_subtitles", 2)
  end
  if token_lens ~= nil and type(token_lens) ~= "table" then
    error(string.format("%s: argument #2: expected an array of token counts, got %s", fname, type(token_lens)), 2)
  end
  local n_frames = math.tointeger(info.num_of_frames)
  local uniq, s2f = {}, {}
  local max_len = 0
  local unmatched
  if info.unique_sub2frames and n_frames > 0 then
    local nsubs = #info.unique_sub2frames
    if token_lens and #token_lens ~= nsubs then
      error(string.format("%s: argument #2: %d token counts for %d subtitles", fname, #token_lens, nsubs), 2)
    end
    local raw = {}
    for _, pair in ipairs(info.sub2frames) do raw[pair[1]] = pair[2] end
    for i = 1, nsubs do
      local k = i - 1
      local frames = raw[k] or {}
      local ntok = token_lens and token_lens[i] or 0
      if type(ntok) == "table" then ntok = #ntok end
      if math.type(ntok) ~= "integer" or ntok < 0 then
        error(string.format("%s: argument #2: entry %d is not a token count or a token array", fname, i), 2)
      end
      max_len = math.max(max_len, ntok + #frames)
      uniq[i] = {k, copy_list(info.unique_sub2frames[i][2])}
      s2f[i] = {k, copy_list(frames)}
    end
    unmatched = copy_list(info.unmatched_frames)
  else
    for st = 0, n_frames - 1, 5 do
      local frames = {}
      for f = st, math.min(st + 5, n_frames) - 1 do frames[#frames + 1] = f end
      max_len = math.max(max_len, #frames)
      uniq[#uniq + 1] = {#uniq, frames}
      s2f[#s2f + 1] = {#s2f, copy_list(frames)}
    end
    unmatched = {}
  end
  return {
    unique_sub2frames = uniq,
    sub2frames = s2f,
    unmatched_frames = unmatched,
    duration = n_frames,
    max_mtached_sub_len = max_len,
  }
end

-- nil, or why t is not an array of integer frame indices.
local function frame_list_problem(t)
  if type(t) ~= "table" then return "expected an array of frame indices, got " .. type(t) end
  for j = 1, #t do
    if math.type(t[j]) ~= "integer" then return string.format("entry %d is not an integer frame index", j) end
  end
  return nil
end

--- What the subtitle DB reader derives from one DB value at load time (reference:
-- SubTokLmdb.compute_sub2frames). max_clip_len > -1: frames >= max_clip_len are dropped; a subtitle is
-- kept if frames remain or it never had any; the walk stops after the first subtitle that lost a frame
-- (so the result is a prefix of the subtitles). max_clip_len <= -1 keeps every subtitle and frame.
-- nframes (default db_value.duration) is the video length the DB lists.
-- Returns {sub2frames = {{sub_idx, frames}, ...}, vonly_frames = unmatched frames < max_clip_len,
-- id2len = min(nframes, max_clip_len)}. As in the reference, max_clip_len = -1 gives no video-only
-- frames and id2len = -1.
function align.compute_sub2frames(db_value, max_clip_len, nframes)
  local fname = "hero.data.compute_sub2frames"
  if type(db_value) ~= "table" or type(db_value.unique_sub2frames) ~= "table" then
    error(fname .. ": argument #1: expected a subtitle DB value with 'unique_sub2frames'", 2)
  end
  if type(max_clip_len) ~= "number" or not is_int(max_clip_len) then
    error(string.format("%s: argument #2: max_clip_len must be an integer, got %s", fname,
      type(max_clip_len) == "number" and fmt(max_clip_len) or type(max_clip_len)), 2)
  end
  max_clip_len = math.tointeger(max_clip_len)
  if nframes == nil then nframes = db_value.duration end
  if type(nframes) ~= "number" or not is_int(nframes) then
    error(string.format("%s: the video length (duration) must be an integer, got %s", fname,
      type(nframes) == "number" and fmt(nframes) or type(nframes)), 2)
  end
  nframes = math.tointeger(nframes)

  local pairs_in = db_value.unique_sub2frames
  for i = 1, #pairs_in do
    local p = pairs_in[i]
    local problem
    if type(p) ~= "table" or math.type(p[1]) ~= "integer" then
      problem = "expected a {sub_idx, {frames}} pair"
    else
      problem = frame_list_problem(p[2])
    end
    if problem then error(string.format("%s: unique_sub2frames[%d]: %s", fname, i, problem), 2) end
  end
  local unmatched = db_value.unmatched_frames or {}
  local problem = frame_list_problem(unmatched)
  if problem then error(fname .. ": unmatched_frames: " .. problem, 2) end

  local out = {}
  for i = 1, #pairs_in do
    local k, frames = pairs_in[i][1], pairs_in[i][2]
    if max_clip_len > -1 then
      local sorted = copy_list(frames)
      table.sort(sorted)
      local in_range, cutoff = {}, false
      for _, f in ipairs(sorted) do
        if f < max_clip_len then in_range[#in_range + 1] = f else cutoff = true end
      end
      if #in_range > 0 or #frames == 0 then out[#out + 1] = {k, in_range} end
      if cutoff then break end
    else
      out[#out + 1] = {k, copy_list(frames)}
    end
  end
  local vonly = {}
  for _, f in ipairs(unmatched) do
    if f < max_clip_len then vonly[#vonly + 1] = f end
  end
  return {sub2frames = out, vonly_frames = vonly, id2len = math.min(nframes, max_clip_len)}
end

return align
