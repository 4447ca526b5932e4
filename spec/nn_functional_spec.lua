local hero = require "hero"
local helper = require "spec_helper"
local fx = helper.load_fixture("nn.lua")

describe("fused nn nodes", function()
  describe("layer_norm", function()
    local c = fx.layer_norm
    it("matches NumPy in f32 and f64, with and without affine parameters", function()
      for _, dt in ipairs {"f32", "f64"} do
        local x = hero.tensor(c.x, {dtype = dt})
        local y = hero.layer_norm(x, hero.tensor(c.w, {dtype = dt}), hero.tensor(c.b, {dtype = dt}), c.eps)
        assert.tensor_near(y, c.y)
        assert.tensor_near(hero.layer_norm(x, nil, nil, 1e-5), c.y_eps5_noaffine)
        assert.tensor_near(hero.layer_norm(x:transpose(1, 2):contiguous():transpose(1, 2), nil, nil, 1e-5),
          c.y_eps5_noaffine)
      end
    end)

    it("passes gradcheck for input, weight and bias", function()
      local x = hero.tensor(c.x, {dtype = "f64"}):requires_grad_()
      local w = hero.tensor(c.w, {dtype = "f64"}):requires_grad_()
      local b = hero.tensor(c.b, {dtype = "f64"}):requires_grad_()
      assert.is_true(hero.testing.gradcheck(function(xx, ww, bb) return hero.layer_norm(xx, ww, bb, 1e-5) end,
        {x, w, b}))
      assert.is_true(hero.testing.gradcheck(function(xx) return hero.layer_norm(xx, nil, nil, 1e-5) end, {x}))
    end)

    it("names the mismatch", function()
      local x = hero.zeros(2, 5)
      helper.assert_error_contains(function() hero.layer_norm(x, hero.ones(4), nil, 1e-5) end,
        "layer_norm", "weight", "4", "vector of 5")
      helper.assert_error_contains(function() hero.layer_norm(x:long(), nil, nil, 1e-5) end, "i64")
    end)
  end)
end)
