--- Parity with the reference implementation on a fixture directory:
--   lua5.4 examples/parity.lua spec/fixtures/hero-smoke
-- prints one line per tensor (max abs / rel error and the bound) and exits non-zero when any case
-- exceeds the fixture's recommended tolerance.
local hero = require "hero"

local dir = arg[1]
if not dir then
  io.stderr:write("usage: lua5.4 examples/parity.lua <fixture-dir>\n")
  os.exit(2)
end
local results, ok = hero.parity.run(dir, {print = true})
local passed, failed, skipped = 0, 0, 0
for _, r in ipairs(results) do
  if r.skipped then skipped = skipped + 1 elseif r.ok then passed = passed + 1 else failed = failed + 1 end
end
print(string.format("%d tensors within tolerance, %d beyond, %d cases skipped", passed, failed, skipped))
os.exit(ok and 0 or 1)
