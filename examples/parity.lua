--- Parity with the reference implementation on a fixture directory:
--   lua5.4 examples/parity.lua spec/fixtures/hero-smoke [--device cuda:0]
-- prints one line per tensor (max abs / rel error and the bound) and exits non-zero when any case
-- exceeds the fixture's recommended tolerance.
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local hero = require "hero"

local dir, device
local i = 1
while arg[i] do
  if arg[i] == "--device" then
    device, i = arg[i + 1], i + 2
  elseif not dir then
    dir, i = arg[i], i + 1
  else
    dir = nil
    break
  end
end
if not dir then
  io.stderr:write("usage: lua5.4 examples/parity.lua <fixture-dir> [--device cuda:0]\n")
  os.exit(2)
end
local ran, results, ok = pcall(hero.parity.run, dir, {print = true, device = device})
if not ran then -- a missing or unreadable fixture directory: its reason, without a traceback
  io.stderr:write("parity: ", tostring(results), "\n")
  os.exit(2)
end
local passed, failed, skipped = 0, 0, 0
for _, r in ipairs(results) do
  if r.skipped then skipped = skipped + 1 elseif r.ok then passed = passed + 1 else failed = failed + 1 end
end
print(string.format("%d tensors within tolerance, %d beyond, %d cases skipped", passed, failed, skipped))
os.exit(ok and 0 or 1)
