--- Parity with the reference implementation on a fixture directory:
--   lua5.4 examples/parity.lua spec/fixtures/hero-smoke [--device cuda:0]
-- prints one line per tensor (max abs / rel error and the bound) and exits non-zero when any case
-- exceeds the fixture's recommended tolerance.
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above
local hero = require "hero"

local function usage(msg)
  io.stderr:write("parity: ", msg, "\nusage: lua5.4 examples/parity.lua <fixture-dir> [--device cuda:0]\n")
  os.exit(2)
end

-- the fixture directory and --device: an option is never taken for the directory, nor the next
-- option for the device
local dir, device
local i = 1
while arg[i] do
  local a = arg[i]
  if a == "--device" then
    device = arg[i + 1]
    if device == nil or device:match("^%-%-") then usage("--device needs a value") end
    i = i + 2
  elseif a:match("^%-%-?.") then
    usage("unknown option " .. a)
  elseif dir then
    usage("unexpected argument '" .. a .. "' (one fixture directory)")
  else
    dir, i = a, i + 1
  end
end
if not dir then usage("the fixture directory is required") end
if device then -- cpu, cuda or cuda:N, and a GPU that exists, named before any work
  local ok, d = pcall(require("hero.train.finetune").device, device)
  if not ok then usage("--" .. hero.cli.error_text(d)) end
  device = d
end
local ran, results, ok = pcall(hero.parity.run, dir, {print = true, device = device})
if not ran then -- a missing or unreadable fixture directory: its reason, without a traceback
  io.stderr:write("parity: ", hero.cli.error_text(results), "\n")
  os.exit(2)
end
local passed, failed, skipped = 0, 0, 0
for _, r in ipairs(results) do
  if r.skipped then skipped = skipped + 1 elseif r.ok then passed = passed + 1 else failed = failed + 1 end
end
print(string.format("%d tensors within tolerance, %d beyond, %d cases skipped", passed, failed, skipped))
os.exit(ok and 0 or 1)
