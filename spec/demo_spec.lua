--- hero.data.synthetic (the embedded dataset), its collate, hero.plot and a smoke run of
-- examples/demo.lua (`make demo`) at tiny sizes.
local hero = require "hero"
local helper = require "spec_helper"
local it_db = helper.it_needs(it, pending, "lmdb", "lz4") -- specs that read or write HERO databases
local json = hero.json
local S = hero.data.synthetic

local tmp_root
local function tmpdir(name)
  if not tmp_root then
    tmp_root = os.tmpname()
    os.remove(tmp_root)
    hero.fs_mkdir(tmp_root)
  end
  local d = tmp_root .. "/" .. name
  hero.fs_rmtree(d)
  return d
end
teardown(function() if tmp_root then hero.fs_rmtree(tmp_root) end end)

local SMALL = {seed = 11, videos = 6, test_videos = 3, finetune_queries = 4}

local function bits(t)
  local parts = {}
  for _, row in ipairs(t:totable()) do
    for _, v in ipairs(row) do parts[#parts + 1] = string.pack("<d", v) end
  end
  return table.concat(parts)
end

describe("synthetic vocabulary", function()
  it("has RoBERTa's special ids, <mask> last, and a word-level tokenizer", function()
    local V = S.vocabulary()
    assert.are.same({"<s>", "<pad>", "</s>", "<unk>"}, {V.words[1], V.words[2], V.words[3], V.words[4]})
    assert.are.equal("<mask>", V.words[V.size])
    assert.are.equal(V.size - 1, V.MASK)
    assert.are.same({4, V.size - 1}, V.v_range)
    local ids = S.tokenize("Look at the RED cube, spinning!")
    assert.are.equal("look at the red cube , spinning !", S.detokenize(ids))
    assert.are.same({V.ids.look, V.ids.at, V.ids.the, V.ids.red, V.ids.cube, V.ids[","], V.ids.spinning,
                     V.ids["!"]}, ids)
    assert.are.same({V.UNK, V.ids.ball}, S.tokenize("zebra ball"))
  end)
end)

describe("synthetic world", function()
  it("is a deterministic function of the seed", function()
    local a, b, c = S.generate(SMALL), S.generate(SMALL), S.generate({seed = 12, videos = 6, test_videos = 3})
    assert.are.equal(9, #a.videos)
    for i, v in ipairs(a.videos) do
      assert.are.equal(bits(v.resnet), bits(b.videos[i].resnet))
      assert.are.equal(bits(v.slowfast), bits(b.videos[i].slowfast))
      assert.are.same(v.subs, b.videos[i].subs)
      assert.are.same(v.segments, b.videos[i].segments)
    end
    assert.are.same(a.queries, b.queries)
    assert.are_not.equal(bits(a.videos[1].resnet), bits(c.videos[1].resnet))
  end)

  it("has the structure it promises", function()
    local w = S.generate(SMALL)
    local V = S.vocabulary()
    for _, v in ipairs(w.videos) do
      assert.is_true(v.nframes >= 2 and v.nframes <= 16)
      assert.are.same({v.nframes, 16}, v.resnet:size())
      assert.is_true(#v.segments >= 1 and #v.segments <= 4)
      for _, seg in ipairs(v.segments) do
        -- the scene's subtitle names its object and lies inside the scene
        local found = false
        for _, s in ipairs(v.subs) do
          if s.start >= seg.first * 1.5 and s["end"] <= (seg.last + 1) * 1.5 then
            found = true
            local ids = S.tokenize(s.text)
            local has_obj = false
            for _, id in ipairs(ids) do
              assert.are_not.equal(V.UNK, id, s.text)
              if V.words[id + 1] == S.OBJECTS[seg.obj] then has_obj = true end
            end
            -- one template says "a <colour> one": the object is then implied
            assert.is_true(has_obj or s.text:find(" one ", 1, true) ~= nil, s.text)
          end
        end
        assert.is_true(found)
        -- frames of a scene carry its object's prototype: they are closer to each other than to noise
        if seg.last > seg.first then
          local x, y = v.resnet[seg.first + 1], v.resnet[seg.last + 1]
          assert.is_true((x - y):norm():item() < (x:norm():item() + y:norm():item()))
        end
      end
    end
    -- queries: one per test video, moments that are scenes of their video
    local tests = 0
    for _, q in ipairs(w.queries) do
      if q.split == "test" then tests = tests + 1 end
      assert.is_true(q.ts[2] > q.ts[1])
      for _, id in ipairs(S.tokenize(q.desc)) do assert.are_not.equal(V.UNK, id) end
    end
    assert.are.equal(3, tests)
  end)

  it_db("is written through the preprocessing into databases the readers load, identically every time", function()
    local d1, d2 = tmpdir("w1"), tmpdir("w2")
    S.write(d1, SMALL)
    S.write(d2, SMALL)
    for _, db in ipairs {"/video_db/syn/resnet_slowfast_1.5", "/txt_db/syn_subtitles.db", "/txt_db/syn_queries.db"} do
      local a, b = hero.data.open_lmdb(d1 .. db), hero.data.open_lmdb(d2 .. db)
      local ka = a:keys()
      assert.are.same(ka, (b:keys()))
      for _, k in ipairs(ka) do assert.are.equal(a:get(k), b:get(k)) end
    end
    local D = S.load(d1)
    assert.are.equal(32, D.feat_dim)
    local w = S.generate(SMALL)
    for _, v in ipairs(w.videos) do
      local got = D.videos[v.vid]
      assert.are.equal(v.nframes, got.nframes)
      -- f16 files, then float32: the features match the generated ones to f16 precision
      local want = hero.cat({v.resnet:half():float(), v.slowfast:half():float()}, 2)
      assert.are.same(want:totable(), got.feats:totable())
      for k, s in ipairs(v.subs) do assert.are.same(S.tokenize(s.text), got.tokens[k]) end
    end
    local sub = hero.data.open_txt_db(d1 .. "/txt_db/syn_subtitles.db")
    assert.are.equal(S.vocabulary().MASK, sub:meta().MASK)
    assert.are.equal(#D.splits.pretrain + #D.splits.test_videos, #sub:keys())
    sub:close()
    local q = D.queries[D.splits.test[1]]
    assert.are.equal(w.queries[tonumber(D.splits.test[1])].desc, q.desc)
  end)
end)

describe("synthetic collate", function()
  local D, model
  setup(function()
    if not hero.data.has_lmdb or not hero.data.has_lz4 then return end -- its specs are pending
    local d = tmpdir("c")
    S.write(d, SMALL)
    D = S.load(d)
    local V = D.vocab
    local function lc(layers, maxpos)
      return {hidden_size = 16, num_attention_heads = 2, intermediate_size = 32, num_hidden_layers = layers,
              max_position_embeddings = maxpos, type_vocab_size = 2, vocab_size = V.size}
    end
    hero.manual_seed(3)
    model = hero.models.HeroForPretraining({f_config = lc(1, 40), c_config = lc(1, 16), q_config = lc(0, 40)},
      {vfeat_dim = D.feat_dim, max_frm_seq_len = 8, fom_classes = 16, generator = hero.Generator(4)})
  end)

  local function videos(n)
    local out = {}
    for i = 1, n do out[i] = D.videos[D.splits.pretrain[i]] end
    return out
  end

  it_db("builds the representation rows as the reference's video_collate", function()
    local vs = videos(2)
    local b = S.collate_repr(vs, D.feat_dim)
    local rows = 0
    for i, v in ipairs(vs) do
      assert.are.equal(#v.subs, b.num_subs[i])
      rows = rows + #v.subs
    end
    assert.are.equal(rows, b.f_sub_input_ids:size(1))
    local ids, attn, gi = b.f_sub_input_ids:totable(), b.f_attn_masks:totable(), b.f_gather_index:totable()
    local max_vl = b.f_v_feats:size(2)
    local r = 0
    for _, v in ipairs(vs) do
      for _, pair in ipairs(v.subs) do
        r = r + 1
        local toks = v.tokens[pair[1] + 1]
        local nf, nt = math.max(#pair[2], 1), #toks + 1
        assert.are.equal(2, ids[r][1])  -- [SEP]
        for t = 1, #toks do assert.are.equal(toks[t], ids[r][t + 1]) end
        for j = 1, #attn[r] do
          local want_g = (j <= nf) and (j - 1) or (j <= nf + nt and max_vl + (j - 1 - nf) or (j - 1))
          assert.are.equal(want_g, gi[r][j])
          local want_a = (j <= nf) and (#pair[2] > 0 and 1 or 0) or (j <= nf + nt and 1 or 0)
          assert.are.equal(want_a, attn[r][j])
        end
        -- the row's frames are the video's frames
        for j, f in ipairs(pair[2]) do
          assert.are.same(v.feats[f + 1]:totable(), b.f_v_feats[r][j]:totable())
        end
      end
    end
    assert.are.same({2, b.c_v_feats:size(2)}, b.c_attn_masks:size())
  end)

  it_db("gives every task a batch the model trains on", function()
    local rs = S.stream(9)
    local vs = videos(3)
    local Trainer = hero.train.Trainer
    local batches = {mlm = S.collate_mlm(vs, D.feat_dim, rs), ["mfm-nce"] = S.collate_mfm(vs, D.feat_dim, rs),
                     mffr = S.collate_mfm(vs, D.feat_dim, rs), fom = S.collate_fom(vs, D.feat_dim, rs),
                     vsm = S.collate_vsm(vs, D.feat_dim, rs)}
    for task, b in pairs(batches) do
      for _, f in ipairs(Trainer.required_fields[task]) do assert.is_not_nil(b[f], task .. " lacks " .. f) end
      local out = model:forward(b, task)
      local l = out.loss:item()
      assert.is_true(l == l and l > 0 and l < 100, task .. " loss " .. l)
      out.loss:backward()
    end
    -- MLM: labels are exactly the masked positions; MFM: targets are the raw features of the masked frames
    local mlm = batches.mlm
    assert.are.equal(mlm.txt_labels:size(1), mlm.txt_mask_tgt:sum():item())
    local mfm = batches["mfm-nce"]
    assert.are.equal(mfm.feat_targets:size(1), mfm.c_v_masks:sum():item())
    assert.are.equal(0, (mfm.c_v_feats * mfm.c_v_masks:unsqueeze(3):float()):abs():sum():item())
    -- VSM: 5 queries per video, video-major
    assert.are.equal(15, batches.vsm.query_input_ids:size(1))
    assert.are.same({0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2}, batches.vsm.q_vidx:totable())
    -- FOM: orders are permutations, targets invert them where set
    local o, t = batches.fom.shuffled_orders:totable(), batches.fom.targets:totable()
    for b = 1, #o do
      for j = 1, #o[b] do if t[b][j] ~= -1 then assert.are.equal(j - 1, o[b][t[b][j] + 1]) end end
    end
  end)

  it_db("builds VCMR batches whose targets are the query's frames", function()
    local pairs_ = {}
    for i, qid in ipairs(D.splits.finetune) do
      if i <= 3 then
        local q = D.queries[qid]
        pairs_[i] = {video = D.videos[q.vid], query = q}
      end
    end
    local b = S.collate_vcmr(pairs_, D.feat_dim)
    for i, p in ipairs(pairs_) do
      local st, ed = S.moment_frames(p.query.ts, p.video.nframes)
      assert.are.same({st, ed}, b.targets[i]:totable())
      assert.are.equal(math.floor(p.query.ts[1] / 1.5 + 0.5), st)
    end
    assert.is_true(model:forward(b, "vsm").loss:item() > 0)
  end)

  it_db("resumes a task loader from its state: the same batches and masks follow, across a reshuffle", function()
    local vs = videos(5)
    local function loader()
      return S.TaskLoader{items = vs, batch_size = 2, feat_dim = D.feat_dim, seed = 11, collate = S.collate_mlm}
    end
    local function same_batch(x, y)
      for k, v in pairs(x) do
        if hero.is_tensor(v) then assert.are.same(v:totable(), y[k]:totable(), k) end
      end
    end
    local a = loader()
    a:next()
    local saved = a:state()
    local want = {}
    for k = 1, 4 do want[k] = a:next() end -- 5 videos in pairs: the third call reshuffles
    local b = loader()
    b:set_state(saved)
    for k = 1, 4 do same_batch(want[k], b:next()) end
  end)
end)

describe("hero.plot", function()
  it("draws line charts as SVG", function()
    local svg = hero.plot.svg_lines{title = "a < b", xlabel = "x", ylabel = "y", series = {
      {name = "one", points = {{1, 2}, {2, 0 / 0}, {3, 1}}}, {name = "two", points = {{1, 1}, {3, 3}}, dashed = true}}}
    assert.truthy(svg:match("^<svg"))
    assert.truthy(svg:find("a &lt; b", 1, true))
    local _, polylines = svg:gsub("<polyline", "")
    assert.are.equal(2, polylines)
    assert.truthy(svg:find("stroke%-dasharray"))
    assert.truthy(svg:match("</svg>\n$"))
    assert.are.same({{1, 1}, {2, 2}, {3, 3}}, hero.plot.smooth({{1, 1}, {2, 3}, {3, 3}}, 2))
  end)

  it("writes well-formed XML whatever the names hold", function()
    -- control characters have no XML form; a stray byte is not UTF-8
    local svg = hero.plot.svg_lines{title = "loss\1\27[0m", xlabel = "caf\xe9", ylabel = "y", series = {
      {name = "a\0b\tc", points = {{1, 1}, {2, 2}}}}}
    assert.is_nil(svg:find("[%z\1-\8\11\12\14-\31]"))
    assert.is_truthy(utf8.len(svg))
    assert.truthy(svg:find("loss??[0m", 1, true))
    assert.truthy(svg:find("caf\u{FFFD}", 1, true))
    assert.truthy(svg:find("a?b\tc", 1, true))
  end)

  it("draws flat and huge ranges, escapes colours and names bad input", function()
    -- a flat curve around 1e17 (a step below the spacing of the values) looped until memory ran out;
    -- two equal values of 1e16 and the range [-1e308, 1e308] drew "nan" coordinates
    for _, pts in ipairs {{{1, 1e17}, {2, 1e17 + 16}}, {{1, 3e20}, {2, 3e20 + 65536}}, {{1, 1e16}, {2, 1e16}},
                          {{1, -1e308}, {2, 1e308}}, {{1e16, 1}, {1e16, 2}}} do
      local svg = hero.plot.svg_lines{series = {{points = pts, color = '"/><script>x</script>'}}}
      assert.is_nil(svg:find("nan", 1, true))
      assert.is_nil(svg:find("inf", 1, true))
      assert.is_nil(svg:find("<script>", 1, true))
      assert.truthy(svg:find("&quot;/&gt;&lt;script&gt;", 1, true))
    end
    helper.assert_error_contains(function() hero.plot.svg_lines{width = "abc"} end,
      "plot.chart: width and height must be numbers")
    helper.assert_error_contains(function() hero.plot.svg_lines{series = {{points = {1, 2, 3}}}} end,
      "series 1 point 1 must be a pair {x, y}, got number")
  end)
end)

describe("make demo", function()
  local function run_demo(out, ...)
    local saved, threads = _G.arg, hero.get_num_threads()
    local script = debug.getinfo(1, "S").source:match("^@(.*)/spec/demo_spec%.lua$") or "."
    _G.arg = {[0] = "examples/demo.lua", "--tiny", "--quiet", "--out", out, ...}
    local ok, res = pcall(dofile, script .. "/examples/demo.lua")
    _G.arg = saved
    hero.set_num_threads(threads)
    assert.is_true(ok, tostring(res))
    return json.read_file(out .. "/results.json")
  end

  it_db("runs end to end at tiny sizes", function()
    local out = tmpdir("demo")
    local r = run_demo(out)
    -- pre-training batches come from the databases through 2 worker threads, and the wait is reported
    assert.are.equal(2, r.data.workers)
    for _, k in ipairs {"wait_per_update", "wait_steady", "wait_first_batches", "step_seconds"} do
      assert.is_true(type(r.data[k]) == "number" and r.data[k] >= 0, k)
    end
    for _, k in ipairs {"pretrained", "scratch", "random"} do
      for _, m in ipairs {"r1", "r5", "r10"} do
        local v = r[k].VR[m]
        assert.is_true(type(v) == "number" and v >= 0 and v <= 100, k .. " " .. m)
      end
      assert.is_number(r[k].VCMR["0.5-r1"])
    end
    assert.are.equal(8, r.config.pretrain_steps)
    local f = assert(io.open(out .. "/loss_curves.svg", "rb"))
    local svg = f:read("a")
    f:close()
    assert.truthy(svg:find("Pre-training loss", 1, true))
    assert.truthy(svg:find("from scratch", 1, true))
    local n = 0
    for line in io.lines(out .. "/log.jsonl") do
      local rec = json.decode(line)
      assert.is_true(rec.phase == "pretrain" or rec.phase == "finetune")
      n = n + 1
    end
    assert.are.equal(8 + 6 + 6, n)
  end)

  it_db("trains on the same batches whether worker threads or the training thread make them", function()
    local function losses(out)
      local l = {}
      for line in io.lines(out .. "/log.jsonl") do l[#l + 1] = json.decode(line).loss end
      return l
    end
    local a, b = tmpdir("demo-w2"), tmpdir("demo-w0")
    local ra = run_demo(a, "--workers", "2")
    local rb = run_demo(b, "--workers", "0", "--data", a .. "/data")
    assert.are.equal(0, rb.data.workers)
    assert.are.same(losses(a), losses(b))
    assert.are.same(ra.pretrained, rb.pretrained)
  end)
end)
