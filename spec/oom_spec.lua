--- Host out of memory: a child process under an address-space limit (ulimit -v) asks for more than
-- it may have, REPL-style, in pcall: every failure is a Lua error saying "out of memory" and naming
-- the operation and the size, and afterwards the process goes on (allocates, computes, prints).
-- The limit is the child's own peak after `require "hero"` and a first matrix product (OpenBLAS's
-- threads and work space, the thread pool) plus a margin. Under AddressSanitizer (which reserves
-- terabytes of address space) the spec is skipped.
local helper = require "spec_helper" -- luacheck: ignore 211

local ASAN = (os.getenv("LD_PRELOAD") or ""):find("libasan") ~= nil or os.getenv("ASAN_OPTIONS") ~= nil
local MARGIN_KB = 384 * 1024

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Runs a Lua script in a child (same module paths), optionally under ulimit -v; returns its
-- combined output and whether it exited 0.
local function run_child(script, limit_kb)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(script)
  f:close()
  -- timeout: a process that hangs instead of failing (as OpenBLAS did) fails the spec
  local cmd = string.format("LUA_PATH=%s LUA_CPATH=%s exec timeout -k 5 120 lua5.4 %s", shell_quote(package.path),
    shell_quote(package.cpath), shell_quote(path))
  if limit_kb then cmd = string.format("ulimit -v %d && %s", limit_kb, cmd) end
  local p = assert(io.popen("sh -c " .. shell_quote(cmd) .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("a")
  p:close()
  os.remove(path)
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return out, rc == 0
end

local PEAK = [[
local hero = require "hero"
local x = hero.randn{64, 64}
local _ = x:matmul(x):sum():item()
for l in io.lines("/proc/self/status") do
  local kb = l:match("^VmPeak:%s*(%d+)")
  if kb then print("PEAK " .. kb) end
end
]]

-- Each case: a name, the operation's name expected in the message, and the function.
local CHILD = [[
local hero = require "hero"
-- OpenBLAS takes its work space at the first product (a process that reaches the limit before
-- that gets a clean out-of-memory error from its products instead, as near exhaustion below)
local _ = hero.randn{64, 64}:matmul(hero.randn{64, 64})
local n_fail, n_ok, bad = 0, 0, {}
local function expect_oom(name, op, fn)
  local ok, err = pcall(fn)
  if ok then
    n_ok = n_ok + 1
    print("OK " .. name)
    return
  end
  err = tostring(err)
  n_fail = n_fail + 1
  if not (err:find("out of memory", 1, true) and err:find(op, 1, true) and (err:find("bytes") or err:find("MiB"))) then
    bad[#bad + 1] = name .. ": " .. err
  end
  print("OOM " .. name .. ": " .. err:gsub("\n.*", ""))
end
local G = 1 << 30
-- REPL-style: the same requests again and again; the process must stay usable between them
for _ = 1, 3 do
  expect_oom("zeros 16 GiB", "zeros", function() return hero.zeros{4 * G} end)
  expect_oom("empty f64 8 GiB", "empty", function() return hero.empty({G}, {dtype = "f64"}) end)
  expect_oom("ones 1e12 elements", "ones", function() return hero.ones{1000000, 1000000} end)
  expect_oom("randn 2 GiB", "randn", function() return hero.randn{G // 2} end)
  local a, b = hero.randn{20000, 2}, hero.randn{2, 20000}
  expect_oom("matmul 20000x20000 (1.6 GB)", "matmul", function() return a:matmul(b) end)
  local big = hero.randn{12 * 1024 * 1024} -- 48 MiB
  expect_oom("cat of 24 x 48 MiB", "cat", function()
    local parts = {}
    for i = 1, 24 do parts[i] = big end
    return hero.cat(parts)
  end)
  expect_oom("broadcast add 40000x40000", "add", function() return hero.randn{40000, 1} + hero.randn{1, 40000} end)
  -- a model forward whose batch fits but whose intermediates do not
  local lin = hero.nn.Linear(64, 4096)
  expect_oom("Linear forward batch 100000", "linear", function() return lin:forward(hero.randn{100000, 64}) end)
  a, b, big, lin = nil, nil, nil, nil
  collectgarbage()
end
-- fill the address space with tensors, then small work in every state of near-exhaustion
local x, w = hero.randn{32, 32}, hero.randn{32, 32}
local hold = {}
for _, sz in ipairs {1 << 22, 1 << 18, 1 << 14, 1 << 10} do
  while pcall(function() hold[#hold + 1] = hero.empty{sz} end) do end
end
local ops = {
  function() return x:matmul(w) end,
  function() return hero.cat({x, w}, 1) end,
  function() return x:softmax(2) end,
  function() return tostring(x) end,
  function() local y = x:clone():requires_grad_(true); y:matmul(w):tanh():sum():backward(); return y.grad end,
}
local other = {}
for _ = 1, 60 do
  for _, op in ipairs(ops) do
    local ok, err = pcall(op)
    if not ok and not (tostring(err):find("out of memory") or tostring(err):find("not enough memory")) then
      other[#other + 1] = tostring(err)
    end
  end
  for _ = 1, 2 do table.remove(hold) end
end
hold = nil
collectgarbage()
for _, e in ipairs(other) do bad[#bad + 1] = "near exhaustion: " .. e end
-- afterwards: normal work
local y = hero.randn{256, 256}
local s = y:matmul(y:t()):sum():item()
print(tostring(hero.arange(4)))
print(string.format("SURVIVED fails=%d oks=%d sum=%s", n_fail, n_ok, tostring(s == s)))
for _, m in ipairs(bad) do print("BAD " .. m) end
]]

describe("host out of memory", function()
  local it_limited = ASAN and function(name) pending(name .. " (AddressSanitizer reserves huge address space)") end
    or it
  it_limited("allocations past ulimit -v fail as Lua errors and the process goes on", function()
    local out, ok = run_child(PEAK)
    assert.is_true(ok, out)
    local peak = tonumber(out:match("PEAK (%d+)"))
    assert.is_number(peak, out)
    local limit = peak + MARGIN_KB
    out, ok = run_child(CHILD, limit)
    assert.is_true(ok, "the child died under ulimit -v " .. limit .. ":\n" .. out)
    assert.matches("SURVIVED fails=%d+", out)
    assert.is_nil(out:match("BAD [^\n]*"), out)
    local fails = tonumber(out:match("SURVIVED fails=(%d+)"))
    -- the huge requests (zeros, empty, ones, randn, matmul, cat, add: 7 per round) always fail
    assert.is_true(fails >= 21, out)
    assert.matches("OOM zeros 16 GiB: [^\n]*zeros: out of memory allocating 17179869184 bytes", out)
    assert.matches("OOM matmul[^\n]*matmul", out)
    assert.matches("%[hero.Tensor i64 cpu of size 4%]", out)
    print(string.format("\n  oom spec: ulimit -v %d kB (peak %d kB + %d kB), %d failures, all \"out of memory\"",
      limit, peak, MARGIN_KB, fails))
  end)

  -- A large thread count under the limit: OpenBLAS started that many threads, each asking for a
  -- 128 MiB buffer and retrying forever when it failed, so the process hung at exit (and kept the
  -- cores busy in the kernel meanwhile); OpenBLAS now stays single-threaded under a limit.
  it_limited("a large thread count under ulimit -v neither hangs nor slows the process", function()
    local script = [[
local hero = require "hero"
local x = hero.randn(512, 512)
for _ = 1, 5 do hero.matmul(x, x):sum() end
hero.set_num_threads(64)
hero.set_num_threads(2)
for _ = 1, 5 do hero.matmul(x, x):sum() end
print("DONE")
]]
    local out, ok = run_child(script, 2000000)
    assert.is_true(ok, "the child hung or died under ulimit -v 2000000:\n" .. out)
    assert.matches("DONE", out)
  end)
end)
