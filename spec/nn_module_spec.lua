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
    local report = b:load_state_dict(sd, {strict = false})
    assert.same({"extra"}, report.unexpected)
    assert.same({1, 2, 3}, b.LayerNorm.weight:totable())
    sd.extra = nil
    sd["dense.bias"] = nil
    helper.assert_error_contains(function() b:load_state_dict(sd) end, "missing keys: dense.bias")
    sd["dense.bias"] = hero.zeros(4)
    helper.assert_error_contains(function() b:load_state_dict(sd) end, "'dense.bias' has size 4", "3 in the model")
  end)

  it("switches training mode on the whole tree", function()
    local b = Block()
    b:evaluate()
    assert.is_false(b.dense.training)
    b:train()
    assert.is_true(b.LayerNorm.training)
  end)
end)
