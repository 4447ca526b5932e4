--- hero.blas_env: OpenBLAS's environment, set before hero.core loads OpenBLAS.
local hero = require "hero"

--- Runs `require "hero"` in a fresh lua5.4 with the given environment prefix; returns its output.
local function probe(env_prefix)
  local cmd = string.format("%s LUA_PATH='%s' LUA_CPATH='%s' lua5.4 -e %s 2>&1", env_prefix, package.path,
    package.cpath, "'local e = require(\"hero\").blas_env; io.write(e.thread_timeout, \" \", "
      .. "e.thread_timeout_source, \" \", os.getenv(\"OPENBLAS_THREAD_TIMEOUT\"))'")
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

describe("hero.blas_env", function()
  it("reports the thread timeout OpenBLAS was loaded with", function()
    -- (busted loads hero afresh for each spec file while OpenBLAS stays loaded: after the first
    -- file the module finds the library loaded and the variable set by its first run)
    local env = hero.blas_env
    assert.equal(os.getenv("OPENBLAS_THREAD_TIMEOUT"), env.thread_timeout)
    if env.thread_timeout_source == "hero" then
      assert.is_false(env.openblas_loaded_before)
      assert.equal("4", env.thread_timeout)
    end
  end)

  it("sets a short spin timeout when the environment has none", function()
    assert.equal("4 hero 4", probe("env -u OPENBLAS_THREAD_TIMEOUT"))
  end)

  it("leaves a timeout given in the environment as it is", function()
    assert.equal("9 environment 9", probe("OPENBLAS_THREAD_TIMEOUT=9"))
  end)
end)
