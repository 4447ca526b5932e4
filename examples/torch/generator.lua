--- The random stream of PyTorch's CPU generator (`torch.Generator().manual_seed(seed)`), in plain Lua,
-- so that a benchmark can build exactly the batch the PyTorch baseline builds: the same token ids, the
-- same masked positions (hence the same number of LM-head rows), and the same features up to the last
-- bits of sin/cos/log.
--
-- PyTorch's CPU generator is the 32-bit Mersenne Twister (MT19937) seeded with the standard
-- initialisation. What each sampling call draws from it (torch 1.13 on the CPU):
--   randint(low, high): one 32-bit draw per element, low + draw % (high - low) (range below 2^32);
--   rand (f32):         one draw per element, (draw & 0xffffff) * 2^-24;
--   randn (f32, >= 16 contiguous elements): first a uniform as rand gives for every element, then
--                       Box-Muller over blocks of 16 (u1 = 1 - data[j], u2 = data[j + 8] for j < 8);
--                       when the count is not a multiple of 16, the last 16 elements are drawn again.
-- Usage:  local gen = dofile("examples/torch/generator.lua").Generator(0); gen:randint(4, 50265, 600)
local Generator = {}
Generator.__index = Generator

local MASK32 = 0xffffffff
local STATE_WORDS, SHIFT_WORDS = 624, 397

local function new(seed)
  local mt = {[1] = seed & MASK32}
  for i = 2, STATE_WORDS do
    local prev = mt[i - 1]
    mt[i] = (1812433253 * (prev ~ (prev >> 30)) + (i - 1)) & MASK32
  end
  return setmetatable({mt = mt, next_index = STATE_WORDS + 1}, Generator)
end

--- Regenerates all 624 words of state (the twist).
local function twist(mt)
  for i = 1, STATE_WORDS do
    local y = (mt[i] & 0x80000000) | (mt[i % STATE_WORDS + 1] & 0x7fffffff)
    local v = mt[(i + SHIFT_WORDS - 1) % STATE_WORDS + 1] ~ (y >> 1)
    if y & 1 == 1 then v = v ~ 0x9908b0df end
    mt[i] = v
  end
end

--- One 32-bit draw, as torch's CPUGeneratorImpl::random().
function Generator:random()
  if self.next_index > STATE_WORDS then
    twist(self.mt)
    self.next_index = 1
  end
  local y = self.mt[self.next_index]
  self.next_index = self.next_index + 1
  y = y ~ (y >> 11)
  y = y ~ ((y << 7) & 0x9d2c5680)
  y = y ~ ((y << 15) & 0xefc60000)
  y = y ~ (y >> 18)
  return y & MASK32
end

--- n integers in [low, high), as torch.randint.
function Generator:randint(low, high, n)
  local out, range = {}, high - low
  for i = 1, n do out[i] = low + self:random() % range end
  return out
end

--- n uniform floats in [0, 1), as torch.rand in f32 (exact: 24-bit values are exact in f32 and f64).
function Generator:rand(n)
  local out = {}
  for i = 1, n do out[i] = (self:random() & 0xffffff) * 2.0 ^ -24 end
  return out
end

--- Box-Muller over the 16 uniforms data[base+1 .. base+16], in place.
local function box_muller16(data, base)
  for j = 1, 8 do
    local u1, u2 = 1 - data[base + j], data[base + j + 8]
    local radius, theta = math.sqrt(-2 * math.log(u1)), 2 * math.pi * u2
    data[base + j] = radius * math.cos(theta)
    data[base + j + 8] = radius * math.sin(theta)
  end
end

--- n standard normal values, as torch.randn in f32 for n >= 16 (the only case the benchmark needs).
function Generator:randn(n)
  assert(n >= 16, "Generator:randn follows torch's path for 16 or more elements only")
  local data = self:rand(n)
  for base = 0, n - 16, 16 do box_muller16(data, base) end
  if n % 16 ~= 0 then
    local tail = self:rand(16)
    for j = 1, 16 do data[n - 16 + j] = tail[j] end
    box_muller16(data, n - 16)
  end
  return data
end

return {Generator = new}
