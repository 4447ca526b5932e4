local hero = require "hero"
local helper = require "spec_helper"

describe("parity runner", function()
  it("passes every case of the reference's smoke fixture", function()
    local results, ok = hero.parity.run(helper.fixture("hero-smoke"))
    local failed = {}
    local checked = 0
    for _, r in ipairs(results) do
      if not r.skipped then
        checked = checked + 1
        if not r.ok then failed[#failed + 1] = r.case .. " " .. r.tensor end
      end
    end
    assert.same({}, failed)
    assert.is_true(ok)
    -- every tensor of the fixture is compared (an intermediate the model stopped returning would
    -- otherwise drop out of the comparison unnoticed)
    assert.equal(930, checked)
  end)
end)
