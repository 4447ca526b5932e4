--- Data pipeline benchmark: how fast hero builds pre-training batches from HERO databases, and
-- where the time goes. It writes TV-like databases into a temporary directory (a video feature
-- LMDB of --videos videos of 60-90 frames of 4352 f32 features, the ResNet + SlowFast width, once
-- plain (msgpack_numpy) and once compressed (.npz); a subtitle database with a subtitle every
-- 1.5-4.5 s, of 20-60 tokens each, aligned to the frames by hero's preprocessing), then, for each
-- database and task:
--   stages    one thread builds --batches batches of --batch videos as TaskLoader:make_batch does
--             (what one prefetch worker does per batch), timed by stage: the video features
--             (read + decode, with inflate for the compressed database), the subtitles (read +
--             lz4 + MessagePack), the alignment, the task's sampling (items) and the collate; then
--             the same videos through the lower-level readers alone, which splits reading (the
--             LMDB value copied out), lz4, inflate and decoding; and the bytes of a batch;
--   workers   hero.data.PrefetchLoader with each --workers count serving batches to a loop that
--             does nothing else: milliseconds per batch, the pool's throughput (worker start-up
--             and a first epoch per worker not counted);
--   device    with --device cuda:N, the time of hero.train.Trainer.batch_to (the training thread's
--             host-to-device copy of a batch, with the device idle), and then the same batches from
--             a loop that keeps the device busy for about --step-ms per batch (f32 matrix
--             products) and reads each batch's features with a kernel, fed by 4 PrefetchLoader
--             workers two ways: host batches moved by the training thread (Trainer.batch_to), and
--             PrefetchLoader{device = ...}, whose workers upload them on the device's upload stream
--             while it computes. Per way, the training thread's milliseconds in next() (+ batch_to)
--             and the loop's time per batch over the same loop without batches ("loop / busy";
--             1.00: the batches cost the device nothing).
-- Medians over the batches; "workers for N ms" is how many workers keep up with a GPU step of
-- --step-ms ms at the one-thread rate (more cores than workers assumed).
--
--   lua5.4 examples/bench_loader.lua                          -- 96 videos, batches of 32
--   lua5.4 examples/bench_loader.lua --tasks mlm --db plain --workers 1 --batches 4
--   lua5.4 examples/bench_loader.lua --dir /tmp/tvdb --keep   -- reuse (or build and keep) the databases
--   lua5.4 examples/bench_loader.lua --digest 1 --workers ''  -- print each task's batch digests only
--
-- Options: --videos N [96], --batch N [32], --batches N [8] timed batches per measurement (after one
-- untimed), --tasks LIST [mlm,mfm-nce,fom,vsm], --db LIST [plain,compressed], --workers LIST [1,2],
-- --dir DIR (an existing DIR built by this script is reused, so that two builds of hero time the
-- same data; default a fresh temporary directory, removed at the end unless --keep 1),
-- --frames LO,HI [60,90], --tokens LO,HI [20,60], --dim N [4352], --seed N [1], --step-ms X [36],
-- --digest 1 (print a CRC of each task's batches, to compare two builds bit for bit),
-- --device cuda:N.
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local core = hero.core
local data = hero.data
local json = hero.json
local now = core._bench_now

local function parse_args(argv)
  local a = {videos = 96, batch = 32, batches = 8, tasks = "mlm,mfm-nce,fom,vsm", db = "plain,compressed",
             workers = "1,2", dir = "", keep = 0, frames = "60,90", tokens = "20,60", dim = 4352, seed = 1,
             step_ms = 36, digest = 0, device = "cpu"}
  local i = 1
  while i <= #argv do
    local k = argv[i]:match("^%-%-(.+)$")
    if not k then error("unexpected argument " .. argv[i], 0) end
    k = k:gsub("%-", "_")
    if a[k] == nil then error("unknown option --" .. k .. " (see --help)", 0) end
    local v = argv[i + 1]
    if v == nil then error("--" .. k .. " needs a value", 0) end
    a[k] = type(a[k]) == "number" and tonumber(v) or v
    if a[k] == nil then error("--" .. k .. " must be a number", 0) end
    i = i + 2
  end
  local function list(s)
    local t = {}
    for x in s:gmatch("[^,%s]+") do t[#t + 1] = x end
    return t
  end
  local function range(s, what)
    local lo, hi = s:match("^(%d+),(%d+)$")
    lo, hi = tonumber(lo), tonumber(hi)
    if not lo or lo > hi or lo < 1 then error("--" .. what .. " must be LO,HI with 1 <= LO <= HI", 0) end
    return {lo, hi}
  end
  a.tasks, a.db = list(a.tasks), list(a.db)
  a.frames, a.tokens = range(a.frames, "frames"), range(a.tokens, "tokens")
  local w = {}
  for _, x in ipairs(list(a.workers)) do
    local n = math.tointeger(tonumber(x))
    if not n or n < 1 then error("--workers must list positive integers", 0) end
    w[#w + 1] = n
  end
  a.workers = w
  for _, d in ipairs(a.db) do
    if d ~= "plain" and d ~= "compressed" then error("--db lists plain and/or compressed", 0) end
  end
  if a.batches < 1 or a.batch < 1 or a.videos < a.batch then
    error("--batches and --batch must be positive, --videos at least --batch", 0)
  end
  return a
end

local a = parse_args(arg)
if a.device ~= "cpu" and not (hero.cuda.available() and a.device:match("^cuda:%d+$")) then
  error("--device " .. a.device .. ": this build of hero has no CUDA device (see hero.cuda.available())", 0)
end
hero.set_num_threads(1) -- the stages run as one prefetch worker runs them: on one thread

-- ------------------------------------------------------------------ the databases

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function paths(dir)
  return {plain = dir .. "/video_db/tv/resnet_slowfast_1.5",
          compressed = dir .. "/video_db/tv_c/resnet_slowfast_1.5_compressed",
          subs = dir .. "/txt_db/tv_subtitles.db", done = dir .. "/bench_loader.json"}
end

-- TV-like data: frame features are ReLU(N(1, 1)) (non-negative, about 16% zeros, so deflate
-- compresses them about as little as real features), subtitles follow each other with gaps of up
-- to 0.5 s, token ids are spread over RoBERTa's vocabulary.
local function build(dir)
  local p = paths(dir)
  for _, d in ipairs {"/video_db/tv", "/video_db/tv_c", "/txt_db"} do data.prepro.mkdir_p(dir .. d) end
  local g = hero.Generator(a.seed)
  local rs = data.synthetic.stream(a.seed)
  local map = (a.videos * a.frames[2] * a.dim * 4) * 2 + (1 << 26)
  local plain = data.writer.VideoDbWriter(p.plain, {map_size = map})
  local comp = data.writer.VideoDbWriter(p.compressed, {map_size = map, compress = true})
  local subs, v2n, tokens = {}, {}, {}
  for i = 1, a.videos do
    local vid = string.format("show%d_s%02de%02d_seg02_clip_%02d", i % 7, i % 9 + 1, i % 23 + 1, i)
    local n = rs:int(a.frames[1], a.frames[2])
    local f = hero.randn({n, a.dim}, {generator = g}):add(1):relu()
    plain:add(vid, f)
    comp:add(vid, f)
    v2n[vid] = n
    local s, t = {}, 0
    while t < n * 1.5 do
      local dur = 1.5 + 3 * rs:uniform()
      local text = "s" .. #tokens
      local ids = {}
      for k = 1, rs:int(a.tokens[1], a.tokens[2]) do ids[k] = rs:int(4, 50260) end
      tokens[text] = ids
      s[#s + 1] = {text = text, start = t, ["end"] = t + dur}
      t = t + dur + 0.5 * rs:uniform()
    end
    subs[#subs + 1] = {vid_name = vid, sub = s}
  end
  plain:commit()
  comp:commit()
  data.prepro.subtitle_db{subs = subs, out = p.subs, vid2nframe = v2n, raw_text = true,
    tokenize = function(text) return tokens[text] end}
  json.write_file(p.done, {videos = a.videos, frames = a.frames, tokens = a.tokens, dim = a.dim, seed = a.seed})
end

local function du(path)
  local f = io.open(path .. "/data.mdb", "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

local dir, made = a.dir, false
if dir == "" then
  dir = os.tmpname()
  os.remove(dir)
  made = true
end
local P = paths(dir)
if exists(P.done) then
  local meta = json.read_file(P.done)
  print(string.format("# reusing the databases in %s (%d videos of %d-%d frames, %d-%d tokens a subtitle)", dir,
    meta.videos, meta.frames[1], meta.frames[2], meta.tokens[1], meta.tokens[2]))
else
  local t0 = now()
  build(dir)
  print(string.format("# built %d videos in %s in %.1f s", a.videos, dir, now() - t0))
end
print(string.format("# video db %.0f MB plain, %.0f MB compressed; subtitle db %.1f MB", du(P.plain) / 1e6,
  du(P.compressed) / 1e6, du(P.subs) / 1e6))

-- ------------------------------------------------------------------ measurements

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return 0 / 0 end
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

local function batch_bytes(b)
  local n = 0
  for _, v in pairs(b) do
    if hero.is_tensor(v) then n = n + v:numel() * v:element_size() end
  end
  return n
end

local function digest(b) return require("hero.tensorboard").crc32c(hero.testing.batch_digest(b)) end

local function dataset_spec(kind)
  return {type = "VideoSubDataset", video_db = P[kind], sub_db = P.subs, max_clip_len = 100}
end

local function loader_spec(kind, task)
  return {dataset = dataset_spec(kind), task = task, batch_size = a.batch, seed = a.seed}
end

-- One thread, TaskLoader:make_batch with the dataset's readers and the collate timed on the
-- instance (the item builders are the rest).
local function stages(kind, task)
  local ds = require("hero.data.prefetch").dataset_from_spec(dataset_spec(kind))
  local L = data.TaskLoader{dataset = ds, task = task, batch_size = a.batch, seed = a.seed}
  local acc = {}
  local function timed(obj, name, key)
    local f = obj[name]
    obj[name] = function(...)
      local t0 = now()
      local r1, r2 = f(...)
      acc[key] = acc[key] + now() - t0
      return r1, r2
    end
  end
  timed(ds.video_db, "get", "video")
  timed(ds.sub_db, "get", "subs")
  timed(ds, "get", "dataset")
  timed(L, "collate", "collate")
  local rows = {video = {}, subs = {}, align = {}, items = {}, collate = {}, total = {}}
  local bytes, digests, plans = 0, {}, {}
  for b = 0, a.batches do
    acc = {video = 0, subs = 0, dataset = 0, collate = 0}
    local plan = L:plan_next()
    collectgarbage()
    local t0 = now()
    local batch = L:make_batch(plan)
    local total = now() - t0
    if b > 0 then
      rows.video[b], rows.subs[b] = acc.video, acc.subs
      rows.align[b] = acc.dataset - acc.video - acc.subs
      rows.items[b] = total - acc.dataset - acc.collate
      rows.collate[b], rows.total[b] = acc.collate, total
      plans[b] = plan.ids
      if a.digest ~= 0 then digests[b] = digest(batch) end
    end
    bytes = math.max(bytes, batch_bytes(batch))
  end
  -- The same videos through the lower-level readers, which separates reading from decoding.
  local vlm, slm = core.lmdb_open(P[kind]), core.lmdb_open(P.subs)
  for _, ids in ipairs(plans) do -- a new handle maps the file afresh: fault its pages in first
    for _, vid in ipairs(ids) do vlm:get(vid) slm:get(vid) end
  end
  collectgarbage()
  local parts = {read = {}, lz4 = {}, sub_decode = {}, feat_decode = {}}
  for b, ids in ipairs(plans) do
    local raw_v, raw_s = {}, {}
    local t0 = now()
    for i, vid in ipairs(ids) do raw_v[i], raw_s[i] = vlm:get(vid), slm:get(vid) end
    local t1 = now()
    local dec = {}
    for i = 1, #ids do dec[i] = data.lz4_frame_decompress(raw_s[i]) end
    local t2 = now()
    for i = 1, #ids do data.decode_msgpack(dec[i]) end
    local t3 = now()
    for i = 1, #ids do
      if kind == "compressed" then data.decode_npz(raw_v[i]) else data.decode_msgpack(raw_v[i]) end
    end
    local t4 = now()
    parts.read[b], parts.lz4[b], parts.sub_decode[b], parts.feat_decode[b] = t1 - t0, t2 - t1, t3 - t2, t4 - t3
    collectgarbage()
  end
  vlm:close()
  slm:close()
  ds:close()
  local out = {bytes = bytes, digests = digests}
  for k, v in pairs(rows) do out[k] = median(v) * 1e3 end
  for k, v in pairs(parts) do out[k] = median(v) * 1e3 end
  return out
end

-- PrefetchLoader throughput with n workers and a consumer that does nothing else, after each
-- worker has read every video once (the first read of a value through a new LMDB mapping faults
-- its pages in, which cost 0.1-0.6 ms more per video of the plain database on this machine).
local function prefetch(kind, task, n)
  local L = data.PrefetchLoader{loader_spec = loader_spec(kind, task), workers = n, depth = 2 * n}
  for _ = 1, n * math.ceil(a.videos / a.batch) do L:next() end -- start-up and a first epoch per worker
  local times = {}
  local t0 = now()
  for b = 1, a.batches do
    L:next()
    local t = now()
    times[b] = t - t0
    t0 = t
    collectgarbage("step")
  end
  L:close()
  local total = 0
  for _, t in ipairs(times) do total = total + t end
  return total / a.batches * 1e3, median(times) * 1e3
end

-- The training thread's host-to-device copy of a batch (hero.train.Trainer.batch_to).
local function upload(kind, task)
  local L = data.TaskLoader{dataset = require("hero.data.prefetch").dataset_from_spec(dataset_spec(kind)),
    task = task, batch_size = a.batch, seed = a.seed}
  local batch_to = hero.train.Trainer.batch_to
  local times = {}
  for b = 0, math.min(a.batches, 4) do
    local batch = L:next()
    hero.cuda.synchronize()
    local t0 = now()
    batch_to(batch, a.device)
    hero.cuda.synchronize()
    if b > 0 then times[b] = now() - t0 end
    collectgarbage()
  end
  L.dataset:close()
  return median(times) * 1e3
end

-- Device work of about ms milliseconds, queued without waiting (f32 products of 4096 x 4096).
local busy_a, busy_b, busy_products_ms
local function busy_products(ms)
  if not busy_a then -- timed once, before any loop is
    busy_a = hero.randn({4096, 4096}):to(a.device)
    busy_b = hero.randn({4096, 4096}):to(a.device)
    local _ = busy_a:matmul(busy_b)
    hero.cuda.synchronize()
    local t0 = now()
    for _ = 1, 8 do local _ = busy_a:matmul(busy_b) end
    hero.cuda.synchronize()
    busy_products_ms = (now() - t0) / 8 * 1e3
  end
  for _ = 1, math.max(1, math.floor(ms / busy_products_ms + 0.5)) do local _ = busy_a:matmul(busy_b) end
end

-- The training thread's side of a loop that keeps the device busy for --step-ms per batch (see the
-- top): batches from next_batch() (nil: none), each read by a kernel. Milliseconds per batch of
-- the loop and of next_batch() alone.
local function device_loop(next_batch)
  busy_products(0)
  local next_s = 0
  hero.cuda.synchronize()
  local t0 = now()
  for _ = 1, a.batches do
    busy_products(a.step_ms)
    if next_batch then
      local tn = now()
      local batch = next_batch()
      next_s = next_s + (now() - tn)
      local _ = batch.f_v_feats and batch.f_v_feats:sum() -- a kernel that reads the uploaded features
    end
  end
  hero.cuda.synchronize()
  return (now() - t0) / a.batches * 1e3, next_s / a.batches * 1e3
end

-- The same batches moved by the training thread (PrefetchLoader, then Trainer.batch_to) and by
-- PrefetchLoader{device =}'s workers, 4 workers each: per way, next()'s milliseconds on the
-- training thread and the loop's time over the busy-only loop's.
local function prefetch_device(kind, task)
  local busy = device_loop(nil)
  local out = {}
  for i, device in ipairs {false, a.device} do
    local L = data.PrefetchLoader{loader_spec = loader_spec(kind, task), workers = 4, depth = 8, device = device or nil}
    for _ = 1, 4 * math.ceil(a.videos / a.batch) do L:next() end -- start-up and a first epoch per worker
    local batch_to = hero.train.Trainer.batch_to
    local loop_ms, next_ms = device_loop(function() return batch_to(L:next(), a.device) end)
    L:close()
    out[2 * i - 1], out[2 * i] = next_ms, loop_ms / busy
  end
  return table.unpack(out)
end

print(string.format("# %d videos a batch, medians of %d batches; 1 thread for the stages; %s", a.batch, a.batches,
  os.date("%Y-%m-%d %H:%M")))
for _, kind in ipairs(a.db) do
  print()
  print(string.format("## %s video database", kind))
  print()
  local head = "| task | batch ms | video | subtitles | align | items | collate | read | lz4 | subs decode | "
    .. (kind == "compressed" and "inflate+decode" or "feat decode") .. " | MB a batch |"
  local sep = "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for _, n in ipairs(a.workers) do
    head = head .. string.format(" %d worker%s ms/batch |", n, n > 1 and "s" or "")
    sep = sep .. "---|"
  end
  head = head .. string.format(" workers for %g ms |", a.step_ms)
  sep = sep .. "---|"
  if a.device ~= "cpu" then
    head = head .. " batch_to ms | host batches: next()+batch_to ms | loop / busy"
      .. " | device batches: next() ms | loop / busy |"
    sep = sep .. "---|---|---|---|---|"
  end
  print(head)
  print(sep)
  local digests = {}
  for _, task in ipairs(a.tasks) do
    local s = stages(kind, task)
    local row = string.format("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |",
      task, s.total, s.video, s.subs, s.align, s.items, s.collate, s.read, s.lz4, s.sub_decode, s.feat_decode,
      s.bytes / 1e6)
    for _, n in ipairs(a.workers) do
      local mean = prefetch(kind, task, n)
      row = row .. string.format(" %.1f |", mean)
    end
    row = row .. string.format(" %d |", math.ceil(s.total / a.step_ms))
    if a.device ~= "cpu" then
      row = row .. string.format(" %.1f | %.2f | %.2f | %.2f | %.2f |", upload(kind, task), prefetch_device(kind, task))
    end
    print(row)
    io.stdout:flush()
    if a.digest ~= 0 then
      local hex = {}
      for i, d in ipairs(s.digests) do hex[i] = string.format("%08x", d) end
      digests[#digests + 1] = string.format("# digest %s %s: %s", kind, task, table.concat(hex, " "))
    end
  end
  for _, line in ipairs(digests) do print(line) end
end

if made and a.keep == 0 then
  os.execute("rm -rf '" .. dir .. "'")
elseif made then
  print("# databases kept in " .. dir)
end
