local hero = require "hero"
local helper = require "spec_helper"
local gradcheck = hero.testing.gradcheck

local function f64(v) return hero.tensor(v, {dtype = "f64"}):requires_grad_() end
local function i64(v) return hero.tensor(v, {dtype = "i64"}) end

describe("autograd through indexing and joining", function()
  local x = f64 {{1, -2, 3}, {4, 5, -6}, {0.5, 7, 8}}

  it("index_select, gather and scatter_add pass gradcheck (repeated indices included)", function()
    assert.is_true(gradcheck(function(t) return t:index_select(1, i64 {2, 0, 2}) end, {x}))
    assert.is_true(gradcheck(function(t) return t:index_select(2, i64 {1, 1}) end, {x}))
    assert.is_true(gradcheck(function(t) return t:gather(2, i64 {{0, 0}, {2, 1}, {1, 1}}) end, {x}))
    local src = f64 {{1, 2}, {3, 4}}
    assert.is_true(gradcheck(function(t, s) return t:scatter_add(1, i64 {{0, 2}, {0, 1}}, s) end, {x, src}))
    -- a src bigger than the index: its entries past the index get a zero gradient, of src's shape
    local wide = f64 {{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}}:requires_grad_()
    local y = x:scatter_add(1, i64 {{0, 2}, {0, 1}}, wide)
    local loss = (y * f64 {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}):sum()
    loss:backward()
    assert.same({{1, 8, 0, 0}, {1, 5, 0, 0}, {0, 0, 0, 0}}, wide.grad:totable())
    assert.is_true(gradcheck(function(t, s) return t:scatter_add(1, i64 {{0, 2}, {0, 1}}, s) end,
      {x, f64 {{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}}}))
  end)

  it("scatters gradients back with the index the forward checked, refusing one changed since", function()
    -- the backward does not check the index values again (a GPU would wait for them): the tape
    -- must refuse an index that was changed, here to values out of range
    for _, case in ipairs {
      {"gather", function(t, ix) return t:gather(1, ix) end, i64 {{0, 1, 2}, {2, 0, 1}}},
      {"index_select", function(t, ix) return t:index_select(1, ix) end, i64 {0, 2}},
    } do
      local t = hero.randn(3, 3):requires_grad_()
      local ix = case[3]
      local y = case[2](t, ix)
      ix:fill_(100)
      helper.assert_error_contains(function() y:sum():backward() end,
        "a tensor saved by '" .. case[1] .. "' was modified in place after it was saved")
      assert.is_nil(t.grad)
    end
    -- and the same gradients as when it was checked
    local t = hero.randn(3, 3):requires_grad_()
    t:gather(1, i64 {{2, 2, 0}}):sum():backward()
    assert.same({{0, 0, 1}, {0, 0, 0}, {1, 1, 0}}, t.grad:totable())
  end)

  it("masked_fill and masked_select pass gradcheck with broadcast masks", function()
    local mask = hero.tensor {{true, false, true}}
    assert.is_true(gradcheck(function(t) return t:masked_fill(mask, -1e4) end, {x}))
    assert.is_true(gradcheck(function(t) return t:masked_select(mask) end, {x}))
    local col = f64 {{1}, {2}}
    assert.is_true(gradcheck(function(t) return t:masked_select(hero.tensor {{true, false}, {true, true}}) end, {col}))
  end)

  it("cat, stack, split, chunk and unbind route gradients to every piece", function()
    local a, b = f64 {{1, 2}}, f64 {{3, 4}, {5, 6}}
    assert.is_true(gradcheck(function(p, q) return hero.cat({p, q}, 1) end, {a, b}))
    assert.is_true(gradcheck(function(p, q) return hero.stack({p, q:narrow(1, 1, 1)}, 2) end, {a, b}))
    assert.is_true(gradcheck(function(t) return t:split(2, 1)[2] end, {x}))
    assert.is_true(gradcheck(function(t) return t:chunk(2, 2)[1] end, {x}))
    assert.is_true(gradcheck(function(t) return t:unbind(2)[3] end, {x}))
  end)

  it("flip, repeat and tile give torch's gradients", function()
    for _, c in ipairs(helper.load_fixture("copy_grads.lua")) do
      if c.op == "flip" or c.op == "repeat" or c.op == "tile" then
        local leaf = c.transpose and f64(c.x):t():contiguous():t() or f64(c.x)
        leaf = c.transpose and leaf:detach():requires_grad_() or leaf
        assert.equal(not c.transpose, leaf:is_contiguous(), c.name)
        local args = {}
        for i, a in ipairs(c.args[1]) do args[i] = c.op == "flip" and a + 1 or a end -- 1-based dims
        local y = c.op == "repeat" and leaf["repeat"](leaf, table.unpack(args)) or leaf[c.op](leaf, table.unpack(args))
        assert.equal(c.op, y.grad_fn, c.name)
        assert.same(c.shape, y:size(), c.name)
        if y:numel() > 0 then assert.same(c.y, y:detach():totable(), c.name) end
        y:backward(hero.tensor(c.g, {dtype = "f64"}):view(y:size()))
        assert.same(c.grad, leaf.grad:totable(), c.name)
      end
    end
    assert.is_true(gradcheck(function(t) return t:flip(1, 2) end, {x}))
    assert.is_true(gradcheck(function(t) return t:t():tile(2, 3) end, {x}))
    assert.is_true(gradcheck(function(t) return t["repeat"](t, 2, 1, 2) end, {x}))
  end)

  it("refuses to cut the graph silently", function()
    helper.assert_error_contains(function() x:masked_fill_(hero.tensor {{true}}, 0) end, "leaf tensor")
    local y = hero.no_grad(function() return x:flip(1) end)
    assert.is_false(y.requires_grad)
  end)
end)
