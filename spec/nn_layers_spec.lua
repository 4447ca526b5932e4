local hero = require "hero"
local nn = hero.nn
local helper = require "spec_helper"

local function sub_state(sd, prefix)
  local out = {}
  for k, v in pairs(sd) do
    if k:sub(1, #prefix) == prefix then out[k:sub(#prefix + 1)] = v end
  end
  return out
end

describe("nn layers", function()
  it("name their parameters as the reference's BERT layer", function()
    local layer = nn.TransformerLayer {hidden = 8, heads = 2, intermediate = 16}
    local names = {}
    for _, p in ipairs(layer:named_parameters()) do names[#names + 1] = p[1] end
    assert.same({
      "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
      "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
      "attention.output.dense.weight", "attention.output.dense.bias", "attention.output.LayerNorm.weight",
      "attention.output.LayerNorm.bias", "intermediate.dense.weight", "intermediate.dense.bias",
      "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias",
    }, names)
    local enc = nn.TransformerEncoder {layers = 2, hidden = 8, heads = 2, intermediate = 16}
    assert.is_not_nil(enc:state_dict()["layer.1.output.LayerNorm.bias"])
    assert.truthy(tostring(layer):find("TransformerLayer%(hidden=8, heads=2"))
  end)

  it("reproduce the reference's cross-modal encoder on the smoke fixture", function()
    local w = hero.load(helper.fixture("hero-smoke/weights.safetensors"))
    local out = hero.load(helper.fixture("hero-smoke/outputs_mlm.safetensors"))
    local batch = hero.load(helper.fixture("hero-smoke/batch_mlm.safetensors"))
    local enc = nn.TransformerEncoder {layers = 2, hidden = 64, heads = 4, intermediate = 128, eps = 1e-12,
                                        dropout = 0}
    enc:load_state_dict(sub_state(w, "v_encoder.f_encoder.encoder."))
    enc:evaluate()
    local f_out = enc:forward(out.f_emb, batch.attn_masks)
    assert.parity(f_out, out.f_out, "activations")
    -- text embeddings: LN_1e-5(word[id] + pos[pos] + type[1])
    local emb = sub_state(w, "v_encoder.f_encoder.embeddings.")
    local word = nn.Embedding(1000, 64, {padding_idx = 1})
    word:load_state_dict {weight = emb["word_embeddings.weight"]}
    local x = word:forward(batch.input_ids) + hero.embedding(emb["position_embeddings.weight"], batch.position_ids)
      + emb["token_type_embeddings.weight"][2]
    local ln = nn.LayerNorm(64, {eps = 1e-5})
    ln:load_state_dict {weight = emb["LayerNorm.weight"], bias = emb["LayerNorm.bias"]}
    assert.parity(ln:forward(x), out.txt_emb, "activations")
  end)

  it("train end to end: gradients reach every parameter and pass gradcheck in f64", function()
    local layer = nn.TransformerLayer {hidden = 8, heads = 2, intermediate = 12, dropout = 0, dtype = "f64",
                                       generator = hero.Generator(1)}
    local x = hero.randn({2, 3, 8}, {dtype = "f64", generator = hero.Generator(2)}):requires_grad_()
    local mask = hero.tensor({{1, 1, 0}, {1, 1, 1}}, {dtype = "f64"})
    local y = layer:forward(x, mask)
    ;(y * y):mean():backward()
    for _, p in ipairs(layer:named_parameters()) do
      assert.is_not_nil(p[2].grad, p[1])
    end
    local params = {x}
    for _, p in ipairs(layer:parameters()) do params[#params + 1] = p end
    local names = layer:named_parameters()
    local function f(xx, ...)
      local args = {...}
      -- swap the module's parameters for the gradcheck inputs
      for i, pair in ipairs(names) do
        local owner = layer
        for part in pair[1]:gmatch("([^.]+)%.") do owner = owner[part] end
        local leaf = pair[1]:match("([^.]+)$")
        owner[leaf] = args[i]
        owner._params[leaf] = args[i]
      end
      return layer:forward(xx, mask)
    end
    assert.is_true(hero.testing.gradcheck(f, params))
  end)

  it("make only the rows asked for, ragged rows packed: the full layer's values and gradients (f64)", function()
    local enc = nn.TransformerEncoder {layers = 2, hidden = 8, heads = 2, intermediate = 12, dropout = 0,
                                       dtype = "f64", generator = hero.Generator(3)}
    local x = hero.randn({3, 5, 8}, {dtype = "f64", generator = hero.Generator(4)}):requires_grad_()
    local mask = hero.tensor({{1, 1, 1, 0, 0}, {1, 1, 1, 1, 1}, {1, 0, 0, 0, 0}}, {dtype = "f64"})
    local function run(rows, pick)
      for _, p in ipairs(enc:parameters()) do p.grad = nil end
      x.grad = nil
      local y = rows and enc:forward(x, mask, {rows = rows})
        or enc:forward(x, mask):reshape(15, 8):index_select(1, pick)
      ;(y * y:detach():sin()):sum():backward()
      local grads = {x.grad}
      for _, p in ipairs(enc:parameters()) do grads[#grads + 1] = p.grad end
      return y, grads
    end
    -- Cases: few queries per entry, a repeated row, rows out of order, a padded position asked for
    -- (no packing); every position of an entry (no fewer queries than positions); valid rows
    -- only (the valid positions packed, with and without fewer queries); none.
    local packed_calls = 0
    local forward_packed = nn.TransformerLayer.forward_packed
    nn.TransformerLayer.forward_packed = function(...)
      packed_calls = packed_calls + 1
      return forward_packed(...)
    end
    local cases = {{{7, 0, 13, 7, 2}, 0}, {{5, 6, 7, 8, 9, 1}, 2}, {{0, 2, 5, 10, 2}, 2}, {{}, 0}}
    for _, case in ipairs(cases) do
      local list, layers_packed = case[1], case[2]
      local rows = hero.tensor(list, {dtype = "i64"})
      packed_calls = 0
      local y, g = run(rows)
      assert.equal(layers_packed, packed_calls)
      local y_full, g_full = run(nil, rows)
      assert.same({#list, 8}, y:size())
      assert.tensor_near(y, y_full)
      for i = 1, #g do assert.tensor_near(g[i], g_full[i]) end
    end
    nn.TransformerLayer.forward_packed = forward_packed
    local m3 = mask:unsqueeze(2):expand(3, 5, 5):contiguous()
    local rows = hero.tensor({1, 12}, {dtype = "i64"})
    local full = enc:forward(x, m3):reshape(15, 8):index_select(1, rows)
    assert.tensor_near(enc:forward(x, m3, {rows = rows}), full)
    helper.assert_error_contains(function() enc:forward(x, mask, {rows = hero.tensor({3, 15}, {dtype = "i64"})}) end,
      "TransformerEncoder", "row 15 is outside the 3 x 5 positions")
  end)

  it("project q, k and v as one product when asked (the GPU's default): the same values and gradients", function()
    local layer = nn.TransformerLayer {hidden = 16, heads = 4, intermediate = 24, dropout = 0.2,
                                       generator = hero.Generator(12)}
    local x = hero.randn({3, 7, 16}, {generator = hero.Generator(13)})
    local mask = hero.tensor({{1, 1, 1, 1, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1}, {1, 1, 0, 0, 0, 0, 0}})
    local function run(packed)
      layer.attention.self.pack_projections = packed
      layer.attention.self.generator:manual_seed(3)
      layer.output.dropout.generator:manual_seed(4)
      layer.attention.output.dropout.generator:manual_seed(5)
      for _, p in ipairs(layer:parameters()) do p.grad = nil end
      local xx = x:clone():requires_grad_()
      local y = layer:forward(xx, mask)
      y:backward(hero.randn(y:size(), {generator = hero.Generator(6)}))
      local grads = {xx.grad}
      for _, p in ipairs(layer:parameters()) do grads[#grads + 1] = p.grad end
      return y, grads
    end
    assert.is_false(layer.attention.self:packs_projections(x)) -- on the CPU: three products
    local y1, g1 = run(false)
    local y2, g2 = run(true)
    assert.tensor_near(y2, y1, helper.tolerance.f32)
    for i = 1, #g1 do assert.tensor_near(g2[i], g1[i], helper.tolerance.f32) end
    layer.attention.self.pack_projections = nil
  end)

  it("lay out the queries of asked-for rows per batch entry, padded with the entry's first (core.query_layout)",
    function()
    -- the layout written out plainly: each entry's rows in the order asked, padded to the longest
    -- list with the entry's first row (or the first row of all); keep: each row's slot
    local function expected(list, B, L)
      local slots, keep, lq = {}, {}, 1
      for b = 1, B do slots[b] = {} end
      for _, r in ipairs(list) do
        local s = slots[r // L + 1]
        s[#s + 1] = r
        lq = math.max(lq, #s)
      end
      if lq >= L or #list == 0 then return nil end
      local gather = {}
      for b = 1, B do
        for s = 1, lq do gather[#gather + 1] = slots[b][s] or slots[b][1] or list[1] end
      end
      local seen = {}
      for i, r in ipairs(list) do
        local b = r // L
        seen[b] = (seen[b] or 0) + 1
        keep[i] = b * lq + seen[b] - 1
      end
      return gather, keep, lq
    end
    local g = hero.Generator(11)
    local function draw(n) return math.floor(hero.rand({1}, {generator = g}):item() * n) end
    for _ = 1, 60 do
      local B, L = 1 + draw(5), 1 + draw(9)
      local list = {}
      for i = 1, draw(2 * B * L) do list[i] = draw(B * L) end
      local rows = hero.tensor(list, {dtype = "i64"})
      local gather, keep, lq = hero.core.query_layout(rows, B, L)
      local eg, ek, elq = expected(list, B, L)
      if eg == nil then
        assert.is_nil(gather)
      else
        assert.equal(elq, lq)
        assert.same(eg, gather:totable())
        assert.same(ek, keep:totable())
        assert.equal("i64", gather:dtype())
      end
    end
    -- a strided view reads the same rows
    local rows = hero.tensor({{4, 99}, {0, 99}, {9, 99}, {5, 99}}, {dtype = "i64"}):select(2, 1)
    local gather, keep, lq = hero.core.query_layout(rows, 3, 5)
    assert.same({{4, 0, 9, 5, 4, 4}, {0, 1, 2, 3}}, {gather:totable(), keep:totable()})
    assert.equal(2, lq)
    assert.has_error(function() hero.core.query_layout(hero.tensor({3, 15}, {dtype = "i64"}), 3, 5) end,
      "query_layout: row 15 is outside the 3 x 5 positions")
    assert.has_error(function() hero.core.query_layout(hero.tensor({-1}, {dtype = "i64"}), 3, 5) end,
      "query_layout: row -1 is outside the 3 x 5 positions")
    helper.assert_error_contains(function() hero.core.query_layout(hero.tensor({1.0}), 3, 5) end,
      "query_layout", "1-D i64 CPU tensor")
  end)

  it("make the full layer's rows for random ragged batches and random rows (f64)", function()
    local enc = nn.TransformerEncoder {layers = 2, hidden = 8, heads = 2, intermediate = 12, dropout = 0,
                                       dtype = "f64", generator = hero.Generator(5)}
    local g = hero.Generator(6)
    local function draw(n) return math.floor(hero.rand({1}, {generator = g}):item() * n) end
    for _ = 1, 40 do
      local B, L = 1 + draw(4), 1 + draw(8)
      local m, rows = {}, {}
      for b = 1, B do
        local len = 1 + draw(L) -- every entry has a valid position
        m[b] = {}
        for l = 1, L do m[b][l] = l <= len and 1 or 0 end
      end
      for r = 0, B * L - 1 do
        if draw(10) < 3 and (m[r // L + 1][r % L + 1] == 1 or draw(10) < 3) then rows[#rows + 1] = r end
      end
      if #rows > 0 and draw(5) == 0 then rows[#rows + 1] = rows[1] end
      local x = hero.randn({B, L, 8}, {dtype = "f64", generator = g}):requires_grad_()
      local mask, idx = hero.tensor(m, {dtype = "f64"}), hero.tensor(rows, {dtype = "i64"})
      local y = enc:forward(x, mask, {rows = idx})
      local full = enc:forward(x, mask):reshape(B * L, 8):index_select(1, idx)
      assert.tensor_near(y, full)
      if #rows > 0 then
        local gy = hero.randn({#rows, 8}, {dtype = "f64", generator = g})
        y:backward(gy)
        local gx = x.grad
        x.grad = nil
        full:backward(gy)
        assert.tensor_near(gx, x.grad)
      end
    end
  end)

  it("report errors with the module path", function()
    local layer = nn.TransformerLayer {hidden = 8, heads = 2, intermediate = 16}
    helper.assert_error_contains(function() layer:forward(hero.zeros(2, 3, 5)) end, "attention.self.query", "Linear")
  end)

  it("name the module and the argument of a bad size", function()
    helper.assert_error_contains(function() nn.Linear(-1, 3) end,
      "Linear: in_features must be a positive integer, got -1")
    helper.assert_error_contains(function() nn.Linear(3, 2.5) end, "Linear: out_features", "got 2.5")
    helper.assert_error_contains(function() nn.Embedding(-5, 3) end, "Embedding: num_embeddings", "got -5")
    helper.assert_error_contains(function() nn.Embedding(5) end, "Embedding: embedding_dim", "got nil")
    helper.assert_error_contains(function() nn.LayerNorm("x") end, "LayerNorm: normalized size", "got x")
    helper.assert_error_contains(function() nn.MultiHeadAttention {hidden = 8, heads = 0} end,
      "MultiHeadAttention: heads must be a positive integer, got 0")
    helper.assert_error_contains(function() nn.TransformerLayer {hidden = 8, heads = 2, intermediate = -1} end,
      "TransformerLayer: intermediate")
  end)

  it("takes torch's Dropout(1) and LayerNorm without affine parameters, refuses options it lacks", function()
    local x = hero.ones(2, 3)
    assert.same({{0, 0, 0}, {0, 0, 0}}, hero.nn.Dropout(1):forward(x):totable())
    local ln = hero.nn.LayerNorm(3, {elementwise_affine = false})
    assert.equal(0, #ln:parameters())
    local y = ln:forward(hero.tensor {{1, 2, 3}})
    assert.near(0, y:sum():item(), 1e-6)
    helper.assert_error_contains(function() hero.nn.Embedding(5, 3, {max_norm = 0.1}) end, "unknown option 'max_norm'")
    helper.assert_error_contains(function() hero.nn.Linear(2, 3, {biass = false}) end, "unknown option 'biass'")
  end)
end)
