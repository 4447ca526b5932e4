-- The CUDA backend is a second module (hero/cuda_backend.so) that core loads on the first call
-- needing a GPU, so `require "hero"` maps no CUDA library. Runs in a fresh process so that no other
-- spec has loaded the backend already; needs /proc (Linux).
local hero = require "hero"

local PROBE = [[
local function mapped(pattern)
  local f = assert(io.open("/proc/self/maps"))
  local maps = f:read("a")
  f:close()
  return maps:find(pattern) ~= nil
end
local hero = require "hero"
local at_require = mapped("cublas") or mapped("cudart") or mapped("cuda_backend%.so")
hero.cuda.available()
local ok, err = pcall(hero.cuda.memory_stats)
io.write(string.format("at_require=%s after_probe=%s cudart=%s err=%s\n", tostring(at_require),
  tostring(mapped("cuda_backend%.so")), tostring(mapped("cudart")), ok and "" or tostring(err)))
]]

local function run_probe()
  local cmd = string.format("LUA_PATH='%s' LUA_CPATH='%s' lua5.4 -", package.path, package.cpath)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(PROBE)
  f:close()
  local p = assert(io.popen(cmd .. " < '" .. path .. "' 2>&1"))
  local out = p:read("a")
  p:close()
  os.remove(path)
  return out
end

local has_proc = io.open("/proc/self/maps") ~= nil

describe("CUDA backend loading", function()
  it("maps no CUDA library at require and loads the backend on the first GPU query", function()
    if not (hero.cuda.compiled() and has_proc) then
      pending("needs a CUDA build and /proc")
      return
    end
    local out = run_probe()
    assert.truthy(out:find("at_require=false", 1, true), out)
    -- Either the backend (and with it the CUDA runtime) is mapped now, or the reason it could not
    -- be loaded is the error of every device call.
    local loaded = out:find("after_probe=true cudart=true", 1, true) ~= nil
    local reason = out:match("err=the CUDA backend could not be loaded: ([^\n]+)")
    assert.is_true(loaded or reason ~= nil, out)
  end)
end)

-- The GPU specs (spec/cuda_spec.lua, tagged cuda) run on machines with a GPU only; with
-- HERO_SPEC_DEVICE=cpu the CPU stands in for the GPU, which checks the specs themselves (their
-- expected values and error messages) on every machine.
describe("the GPU specs with the CPU standing in", function()
  it("pass (HERO_SPEC_DEVICE=cpu lua5.4 spec/run.lua --run=cuda spec/cuda_spec.lua)", function()
    local root = debug.getinfo(1, "S").source:match("^@(.*)/spec/cuda_backend_spec%.lua$") or "."
    local cmd = string.format("cd '%s' && HERO_SPEC_DEVICE=cpu LUA_PATH='%s' LUA_CPATH='%s' lua5.4 spec/run.lua "
      .. "--run=cuda -o TAP spec/cuda_spec.lua 2>&1", root, package.path, package.cpath)
    local p = assert(io.popen(cmd))
    local out = p:read("a")
    local ok = p:close()
    assert(ok, out)
    local passed = select(2, out:gsub("\nok %d+", ""))
    assert.is_true(passed >= 25, out)
    assert.falsy(out:find("\nnot ok", 1, true), out)
  end)
end)
