local hero = require "hero"
local nn = hero.nn
local helper = require "spec_helper"

local Affine = nn.Module:extend("Affine")
function Affine:__init(n)
  self:register_parameter("weight", hero.ones(n))
  self:register_parameter("bias", hero.zeros(n))
end
function Affine:extra_repr() return tostring(self.weight:size(1)) end

local Block = nn.Module:extend("Block")
function Block:__init()
  self:add_module("LayerNorm", Affine(3))
  self:add_module("dense", Affine(3))
  self:register_buffer("position_ids", hero.arange(3))
end

describe("nn.Module", function()
  it("names parameters like PyTorch state_dict keys, in registration order", function()
    local b = Block()
    local names = {}
    for _, pair in ipairs(b:named_parameters()) do names[#names + 1] = pair[1] end
    assert.same({"LayerNorm.weight", "LayerNorm.bias", "dense.weight", "dense.bias"}, names)
    local sd = b:state_dict()
    assert.is_not_nil(sd.position_ids)
    assert.equal("dense", b.dense:path())
    assert.equal("Block\n  LayerNorm: Affine(3)\n  dense: Affine(3)", tostring(b))
  end)

  it("lists tied parameters once", function()
    local b = Block()
    b.dense:register_parameter("weight", b.LayerNorm.weight)
    assert.equal(3, #b:parameters())
  end)

  it("loads state dicts strictly with a report of missing and unexpected keys", function()
    local b = Block()
    local sd = {["LayerNorm.weight"] = hero.tensor {1, 2, 3}, ["LayerNorm.bias"] = hero.zeros(3),
                ["dense.weight"] = hero.ones(3), ["dense.bias"] = hero.ones(3),
                position_ids = hero.arange(3), extra = hero.zeros(1)}
    helper.assert_error_contains(function() b:load_state_dict(sd) end, "unexpected keys: extra")
    helper.assert_error_contains(function() b:load_state_dict(sd, {strcit = false}) end,
      "load_state_dict: unknown option 'strcit' (strict)")
    local report = b:load_state_dict(sd, {strict = false})
    assert.same({"extra"}, report.unexpected)
    assert.same({1, 2, 3}, b.LayerNorm.weight:totable())
    sd.extra = nil
    sd["dense.bias"] = nil
    helper.assert_error_contains(function() b:load_state_dict(sd) end, "missing keys: dense.bias")
    sd["dense.bias"] = hero.zeros(4)
    sd["LayerNorm.weight"] = hero.tensor {7, 8, 9}
    helper.assert_error_contains(function() b:load_state_dict(sd) end, "'dense.bias' has size 4", "3 in the model")
    assert.same({1, 2, 3}, b.LayerNorm.weight:totable()) -- nothing was loaded: not half a checkpoint
    helper.assert_error_contains(function() b:load_state_dict(nil) end, "Block", "load_state_dict: expected a table")
  end)

  it("switches training mode on the whole tree", function()
    local b = Block()
    b:evaluate()
    assert.is_false(b.dense.training)
    b:train()
    assert.is_true(b.LayerNorm.training)
  end)

  it("moves and casts parameters and buffers, keeping ties, leaves and the module's fields", function()
    local b = Block()
    b.dense:register_parameter("weight", b.LayerNorm.weight) -- tied
    b.dense.alias = b.dense.bias                            -- a plain field holding a parameter
    b.LayerNorm.weight.grad = hero.ones(3)
    local old_bias = b.dense.bias
    assert.equal(b, b:to("cpu"))
    assert.equal(old_bias, b.dense.bias) -- already there: the same tensors
    b:to("f64")
    for _, pair in ipairs(b:named_parameters()) do
      local t = pair[2]
      assert.equal("f64", t:dtype())
      assert.is_true(t.requires_grad, pair[1])
      assert.is_true(t.is_leaf, pair[1])
      assert.is_nil(t.grad)
    end
    assert.equal(3, #b:parameters())
    assert.equal(b.LayerNorm.weight, b.dense.weight)
    assert.equal(b.dense._params.bias, b.dense.bias)
    assert.equal(b.dense.bias, b.dense.alias)
    assert.are_not.equal(old_bias, b.dense.bias)
    assert.equal("i64", b.position_ids:dtype()) -- integer buffers keep their dtype
    assert.equal("f64", b:state_dict()["dense.weight"]:dtype())
    assert.equal("cpu", b:device())
    -- the moved parameters train: gradients reach them
    local y = (b.dense.weight * hero.tensor({1, 2, 3}, {dtype = "f64"})):sum()
    y:backward()
    assert.same({1, 2, 3}, b.LayerNorm.weight.grad:totable())
    helper.assert_error_contains(function() b:to("i64") end, "Block: to: modules are cast to a floating dtype")
    helper.assert_error_contains(function() b:to(3) end, "Block: to: expected a device")
    if hero.cuda.device_count() == 0 then
      helper.assert_error_contains(function() b:cuda() end, "cuda:0")
      assert.equal("f64", b.dense.bias:dtype()) -- a failed move leaves the module usable on the CPU
    end
  end)
end)

describe("module registration and settings", function()
  it("refuses names, values and options that would silently misbehave", function()
    local m = nn.Linear(2, 2)
    -- a "." collided with a child's state_dict entries; "forward" hid the method
    helper.assert_error_contains(function() m:register_parameter("a.weight", hero.ones(2)) end,
      "Linear: parameter name must be a non-empty string without '.', got 'a.weight'")
    helper.assert_error_contains(function() m:register_parameter("forward", hero.ones(2)) end,
      "parameter name 'forward' is taken: self.forward is already a method of the module")
    helper.assert_error_contains(function() m:register_buffer(1, hero.ones(2)) end, "got number")
    helper.assert_error_contains(function() m:register_buffer("b", 5) end, "buffer 'b' must be a tensor, got number")
    local x = hero.ones(2):requires_grad_()
    helper.assert_error_contains(function() m:register_parameter("c", x * 2) end,
      "parameter 'c' must be a leaf tensor")
    -- a module inside itself made every walk of the tree endless
    local s = nn.Sequential(nn.Linear(2, 2))
    helper.assert_error_contains(function() s:add_module("me", s) end, "child 'me' contains this module")
    local outer = nn.Sequential(s)
    helper.assert_error_contains(function() s:add_module("up", outer) end, "child 'up' contains this module (as 0)")
    assert.equal(2, #s:parameters())
    helper.assert_error_contains(function() s:train("no") end, "train: mode must be a boolean, got string")
    helper.assert_error_contains(function() m:load_state_dict(m:state_dict(), {strict = "no"}) end,
      "option strict must be a boolean, got string")
    helper.assert_error_contains(function() m:load_state_dict({weight = hero.ones(2, 2), bias = hero.tensor(5.0)}) end,
      "'bias' has size () (0-dim) in the checkpoint but 2 in the model")
    -- Module:to: dtypes by any name, devices named as such, options checked
    assert.equal("f64", nn.Linear(2, 2):to("float64").weight:dtype())
    assert.equal("f64", nn.Linear(2, 2):to({dtype = "double"}).weight:dtype())
    helper.assert_error_contains(function() m:to("gpu") end, "to: 'gpu' is neither a dtype")
    helper.assert_error_contains(function() m:to({dtpe = "f64"}) end, "to: unknown option 'dtpe' (dtype, device)")
    helper.assert_error_contains(function() nn.Linear(3, 2, {dtype = "i64"}) end,
      "Linear: opts.dtype must be a floating dtype (f32, f64, bf16, f16), got i64")
    helper.assert_error_contains(function() nn.Embedding(3, 2, {dtype = "bool"}) end, "Embedding: opts.dtype")
    assert.equal("f64", nn.LayerNorm(2, {dtype = "float64"}).weight:dtype())
    helper.assert_error_contains(function() nn.Dropout(0.5, {inplace = true}) end,
      "Dropout: unknown option 'inplace' (generator)")
    helper.assert_error_contains(function()
      nn.TransformerEncoder {layers = 1, hidden = 8, heads = 2, intermedate = 16}
    end, "unknown option 'intermedate'")
    helper.assert_error_contains(function() nn.TransformerLayer {hidden = 8, heads = 2, attention_dropout = 1.5} end,
      "opts.attention_dropout must be a probability in [0, 1), got 1.5")
    local enc = nn.TransformerEncoder {layers = 1, hidden = 8, heads = 2, intermediate = 16}
    helper.assert_error_contains(function() enc:forward(hero.randn(2, 3, 8), nil, {rws = 1}) end,
      "TransformerEncoder:forward: unknown option 'rws'")
  end)

  it("keeps assignments to registered names and the registries one thing, as torch's", function()
    local l = nn.Linear(3, 2)
    local w = hero.zeros(2, 3)
    l.weight = w -- a new parameter in its place
    assert.is_true(rawequal(w, l.weight))
    assert.is_true(rawequal(w, l:parameters()[1]))
    assert.is_true(w.requires_grad)
    assert.same(hero.zeros(2, 3):totable(), l:state_dict().weight:totable())
    local M = nn.Module:extend("BufferHolder")
    function M:__init() self:register_buffer("buf", hero.zeros(2)) end
    local m = M()
    m.buf = hero.ones(2) -- replaces the buffer
    assert.same({1, 1}, m:state_dict().buf:totable())
    helper.assert_error_contains(function() m.buf = 3 end, "buffer 'buf' must be a tensor")
    local holder = nn.Module:extend("Holder")()
    holder.lin = nn.Linear(2, 2) -- a module assigned to a new name is a child
    assert.equal(2, #holder:parameters())
    assert.equal("lin", holder.lin:path())
    helper.assert_error_contains(function() l.weight = nil end, "cannot be removed")
    holder.note = "plain" -- anything else is a plain field
    assert.equal("plain", rawget(holder, "note"))
  end)

  it("gives detached state_dict values, keeps frozen parameters frozen through :to, and more of torch's rules",
    function()
      local l = nn.Linear(3, 2)
      local sd = l:state_dict()
      assert.is_false(sd.weight.requires_grad)
      sd.weight:clone():fill_(1) -- recorded nothing: an edit of a copy works
      l.weight:requires_grad_(false)
      l:to("f64")
      assert.is_false(l.weight.requires_grad)
      assert.is_true(l.bias.requires_grad)
      -- a buffer registered with persistent = false moves with the module but is not saved
      local M = nn.Module:extend("Transient")
      function M:__init()
        self:register_buffer("kept", hero.zeros(1))
        self:register_buffer("scratch", hero.zeros(1), false)
      end
      local m = M():to("f64")
      assert.equal("f64", m.scratch:dtype())
      assert.is_nil(m:state_dict().scratch)
      assert.is_not_nil(m:state_dict().kept)
      -- a number key among the unexpected ones is listed, not compared with strings
      helper.assert_error_contains(function() l:load_state_dict {[1] = hero.zeros(1), extra = hero.zeros(1)} end,
        "unexpected keys: 1, extra")
      helper.assert_error_contains(function() return nn.GELU {approximate = "tanh"} end, "GELU: takes no arguments")
      helper.assert_error_contains(function() return nn.ReLU(true) end, "ReLU: takes no arguments")
      local holder = nn.Module:extend("Ints")()
      helper.assert_error_contains(function() holder:register_parameter("n", hero.tensor({1}, {dtype = "i64"})) end,
        "Ints: parameter 'n' must be a floating tensor")
    end)
end)
