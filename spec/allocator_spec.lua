-- The host allocator behind tensor storages: its counters, the reuse of released blocks' pages for
-- requests of other sizes, and a footprint that follows the largest live set.
local hero = require "hero"

local MiB = 1024 * 1024

-- A float tensor of about `mib` MiB, filled with `value`.
local function block(mib, value)
  return hero.full({math.floor(mib * MiB / 4)}, value)
end

-- Blocks of the given sizes, made and then released (collected) before this returns.
local function release(sizes)
  local held = {}
  for i, mib in ipairs(sizes) do held[i] = block(mib, i) end
  assert.equal(#sizes, #held)
  held = nil -- luacheck: no unused
  collectgarbage()
end

-- True, with the spec marked pending, in a build whose big blocks come from malloc.
local function without_mapped_blocks(what)
  if hero.memory_stats().mapped_blocks then return false end
  pending("big blocks come from malloc in this build (AddressSanitizer)" .. (what or ""))
  return true
end

describe("host allocator", function()
  before_each(function() collectgarbage() end)

  it("reports its counters", function()
    local s = hero.memory_stats()
    for _, k in ipairs {"live", "peak_live", "cached", "cached_blocks", "cache_hits", "cache_misses", "evicted",
                        "fresh", "cache_limit"} do
      assert.equal("integer", math.type(s[k]), k)
      assert.is_true(s[k] >= 0, k)
    end
    assert.equal("boolean", type(s.mapped_blocks))
    assert.equal(hero.live_bytes(), s.live)
    assert.equal(hero.cached_bytes(), s.cached)
    local t = block(3, 1)
    local after = hero.memory_stats()
    assert.is_true(after.live - s.live >= t:numel() * 4)
    assert.is_true(after.peak_live >= after.live)
    t:free()
    hero.reset_peak_memory_stats()
    assert.equal(hero.memory_stats().live, hero.memory_stats().peak_live)
  end)

  it("serves a request of another size from released pages, with the data intact", function()
    if without_mapped_blocks() then return end
    -- Three released 1.5 MiB blocks make a 4 MiB one: no fresh pages.
    release {1.5, 1.5, 1.5}
    local before = hero.memory_stats()
    local big = block(4, 7)
    local after = hero.memory_stats()
    assert.equal(before.fresh, after.fresh)
    assert.is_true(after.cache_hits > before.cache_hits)
    assert.equal(7 * big:numel(), big:sum():item())
    big:mul_(2)
    assert.equal(14, big[big:numel()]:item())
    -- and a larger released block gives its front to a smaller request, its rest staying cached
    big:free()
    collectgarbage() -- the views taken above share its storage
    before = hero.memory_stats()
    local small = block(2.5, 5)
    after = hero.memory_stats()
    assert.equal(before.fresh, after.fresh)
    assert.is_true(after.cached > 0)
    assert.equal(5 * small:numel(), small:sum():item())
  end)

  it("recycles released pages while request sizes change", function()
    if without_mapped_blocks(": only same-size reuse") then return end
    hero.empty_cache()
    -- A forward/backward-like cycle whose sizes move through many size classes: activations of one
    -- size die, then gradients of another appear.
    local most = 0
    local fresh_before = hero.memory_stats().fresh
    for step = 1, 30 do
      local a, g = 1.5 + 0.37 * (step % 7), 2.25 + 0.29 * (step % 5)
      most = math.max(most, 6 * a * MiB, 5 * g * MiB)
      release {a, a, a, a, a, a}
      release {g, g, g, g, g}
    end
    local s = hero.memory_stats()
    local fresh = s.fresh - fresh_before
    -- Fresh pages only when a phase needs more than the last one released (44 MiB here, where
    -- reuse by size class alone takes 828 MiB of fresh pages), and what stays cached is about one
    -- phase's worth (blocks are rounded up to size classes, at most 1/8).
    assert.is_true(fresh <= 4 * most, string.format("%d bytes of fresh pages for phases of at most %.0f", fresh, most))
    assert.is_true(s.cached <= 1.15 * most + MiB,
      string.format("%d bytes cached after phases of at most %.0f", s.cached, most))
  end)

  it("puts a large request together from many released blocks", function()
    if without_mapped_blocks() then return end
    -- 20 released 1.5 MiB activations make one 30 MiB block (an LM head's logits, say)
    hero.empty_cache()
    local sizes = {}
    for i = 1, 20 do sizes[i] = 1.5 end
    release(sizes)
    local before = hero.memory_stats()
    local big = block(29, 3)
    local after = hero.memory_stats()
    assert.equal(before.fresh, after.fresh)
    assert.equal(3 * big:numel(), big:sum():item())
  end)

  it("asks the system for no pages when a step's sizes come again", function()
    if without_mapped_blocks() then return end
    -- Tensors a little over a size class (so their blocks are rounded up by ~1/8), then the same
    -- tensors again with small ones (served outside the cache) alive as well: the second round
    -- must be served wholly from the cache. It used to count the rounding and the small tensors
    -- against the cache's bound, evict a block and fault in a fresh one.
    local mib = 1.5 + 1 / 1024
    hero.empty_cache() -- the cache's bound starts from the live set: no slack from earlier peaks
    release {mib, mib, mib}
    local before = hero.memory_stats()
    local small = {}
    for i = 1, 8 do small[i] = hero.full({1000}, i) end
    release {mib, mib, mib}
    local after = hero.memory_stats()
    assert.equal(8000, #small * small[1]:numel())
    assert.equal(before.fresh, after.fresh)
    assert.equal(before.evicted, after.evicted)
    assert.equal(before.cache_hits + 3, after.cache_hits)
  end)

  it("keeps released small blocks for the next request of the same size", function()
    if without_mapped_blocks() then return end
    hero.empty_cache()
    local s0 = hero.memory_stats()
    assert.equal(0, s0.small_cached)
    assert.equal(0, s0.small_cached_blocks)
    local a = hero.full({1000}, 1) -- 4000 bytes: a 4032-byte block
    a:free()
    local s1 = hero.memory_stats()
    assert.equal(4032, s1.small_cached)
    assert.equal(1, s1.small_cached_blocks)
    assert.equal(s1.cached, hero.cached_bytes())
    assert.is_true(s1.cached >= s1.small_cached)
    local b = hero.full({1000}, 2) -- takes the kept block
    assert.equal(0, hero.memory_stats().small_cached)
    assert.equal(2000, b:sum():item())
    local c = hero.full({999}, 3) -- rounds to the same size: served by malloc, nothing kept to take
    assert.equal(0, hero.memory_stats().small_cached)
    b:free()
    c:free()
    assert.equal(2 * 4032, hero.memory_stats().small_cached)
    assert.equal(2 * 4032, hero.empty_cache())
    assert.equal(0, hero.memory_stats().small_cached)
  end)

  it("never hands one small block to two live tensors", function()
    -- sizes that come back again and again, released in a scrambled order, each tensor then
    -- checked against the value it was made with
    local live, made = {}, 0
    for round = 1, 20 do
      for i = 1, 30 do
        made = made + 1
        live[#live + 1] = {t = hero.full({1 + (i * 37 + round) % 300}, made), v = made}
      end
      for i = #live, 1, -3 do
        live[i].t:free()
        table.remove(live, i)
      end
    end
    for _, e in ipairs(live) do
      assert.equal(e.v * e.t:numel(), e.t:sum():item())
    end
  end)

  it("gives a tensor made from released memory none of the old tensor's state", function()
    for _ = 1, 50 do
      local w = hero.randn(4, 3):requires_grad_()
      local y = (w * w):sum()
      y:backward()
      assert.is_not_nil(w.grad)
      w, y = nil, nil -- luacheck: no unused
      collectgarbage()
      local fresh = hero.zeros(4, 3)
      assert.is_false(fresh.requires_grad)
      assert.is_nil(fresh.grad)
      assert.is_nil(fresh.grad_fn)
      assert.equal(0, fresh:sum():item())
    end
  end)

  it("keeps released blocks up to its limit, a quarter of the memory and at least 1 GiB by default", function()
    local default = hero.memory_stats().cache_limit
    assert.is_true(default >= 1024 * MiB)
    -- a 32-video step's logits, their gradient and its padded copy are 523 MiB each: all three
    -- stay cached wherever the machine has 7 GiB or more
    local ok, prev = pcall(function()
      release {3, 3, 3}
      local before = hero.memory_stats()
      assert.is_true(before.cached - before.small_cached >= 9 * MiB)
      -- a lower limit returns the oldest blocks over it at once, and keeps the next ones under it
      assert.equal(default, hero.set_cache_limit(4 * MiB))
      local now = hero.memory_stats()
      assert.equal(4 * MiB, now.cache_limit)
      assert.is_true(now.cached - now.small_cached <= 4 * MiB)
      assert.is_true(now.evicted - before.evicted >= 5 * MiB)
      release {3, 3}
      now = hero.memory_stats()
      assert.is_true(now.cached - now.small_cached <= 4 * MiB)
      -- a block over the limit goes back to the system when released
      release {6}
      assert.is_true(hero.memory_stats().cached - hero.memory_stats().small_cached <= 4 * MiB)
      return hero.set_cache_limit(0) -- 0: the default again
    end)
    hero.set_cache_limit(0)
    assert(ok, prev)
    assert.equal(4 * MiB, prev)
    assert.equal(default, hero.memory_stats().cache_limit)
    assert.has_error(function() hero.set_cache_limit(-1) end,
      "set_cache_limit: expected a number of bytes >= 0, got -1")
  end)

  it("returns the cache to the system on request", function()
    release {3}
    local cached = hero.cached_bytes()
    assert.is_true(cached > 0)
    assert.equal(cached, hero.empty_cache())
    assert.equal(0, hero.cached_bytes())
  end)
end)

describe("collections of garbage tensors", function()
  it("collects once enough new tensor bytes are made, and counts what it did", function()
    local core = hero.core
    local s0 = core._gc_stats()
    for _, k in ipairs {"collections", "device_collections", "pending_collections", "idle_collections", "finalized"} do
      assert.equal("integer", math.type(s0[k]), k)
    end
    assert.is_number(s0.seconds)
    -- 40 tensors of 8 MiB, each garbage at once: 320 MiB is past the host threshold (at most 256 MiB)
    for i = 1, 40 do local _ = block(8, i) end
    local s1 = core._gc_stats()
    assert.is_true(s1.collections > s0.collections)
    assert.is_true(s1.seconds > s0.seconds)
    assert.is_true(s1.finalized >= s0.finalized + 20) -- the collections freed the blocks made before them
    assert.equal(s0.device_collections, s1.device_collections) -- no device bytes here
    -- backward collects first when 1 MiB of tensors was made since the last collection
    local x = hero.randn({512, 1024}):requires_grad_()
    local y = (x * 2):sum()
    local before = core._gc_stats().pending_collections
    y:backward()
    assert.equal(before + 1, core._gc_stats().pending_collections)
  end)

  it("takes device collection limits as fractions of the allocated device bytes", function()
    local core = hero.core
    core._set_device_collect_fractions(0.5, 1)
    core._set_device_collect_fractions(0.25, 0.5) -- the defaults again
    assert.has_error(function() core._set_device_collect_fractions(0.5, 0.25) end,
      "_set_device_collect_fractions: expected 0 < soft <= hard <= 64, got 0.5 and 0.25")
    assert.has_error(function() core._set_device_collect_fractions(0, 1) end)
  end)
end)
