--- A short tour of hero tensors: creation, views, printing, casts and freeing.
-- Run with `make demo` from a checkout, or `lua5.4 examples/tensors.lua` once hero is installed.
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above

local function section(title)
  print()
  print("== " .. title)
end

section("creating tensors")
local a = hero.tensor {{1, 2, 3}, {4, 5, 6}}   -- from nested tables; f32 by default
print(a)
print("size", table.concat(a:size(), "x"), "dtype", a:dtype(), "device", a:device())
print(hero.zeros(2, 3, {dtype = "i64"}))
print(hero.full({2, 2}, 0.25))
print(hero.eye(3))
local r = hero.arange(0, 12)                     -- integer bounds give an i64 tensor
print(r)

section("views share storage")
local m = r:view(3, 4)                           -- dimensions and positions are 1-based ...
print(m)
local row = m[2]                                 -- t[i] is t:select(1, i)
print("m[2] =", table.concat(row:totable(), " "))
local cols = m:narrow(2, 2, 2)                   -- columns 2..3
print(cols)
print("shares storage with m:", cols:shares_storage(m))
cols:fill_(-1)                                   -- writing through a view changes m
print(m)
print("transposed, strides", table.concat(m:t():stride(), ","))
print(m:t():contiguous())
print(hero.tensor({{1}, {2}}):expand(2, 4))
print("m[3][4] =", m[3][4]:item())               -- ... while values are plain numbers

section("printing")
print(hero.tensor {0.001, 0.0025, -0.004})      -- a shared scale line
print(hero.tensor {1e-6, 1, 1e6})               -- wide range: scientific notation
print(hero.tensor {true, false})
print(hero.arange(24):view(2, 3, 4))             -- 3-D: one matrix per slice
print(hero.arange(0, 6, 0.25):view(2, 12))       -- wide: column blocks of 80 characters
print(hero.arange(5000):view(50, 100))           -- big: summarised
print(hero.tensor(3.5))                          -- 0-dim
print(hero.zeros(0, 3))                          -- empty

section("casts")
local x = hero.tensor {1.5, -2.25, 100000, 1e-8}
print(x:half())                                  -- f16 overflows above 65504
print(x:bfloat16())
print(x:long())
print(x:to("f64"))

section("freeing")
collectgarbage()                                 -- drop the tour's earlier temporaries
local before = hero.live_bytes()
do
  local big <close> = hero.zeros(1000, 1000)     -- freed when the block ends
  print("inside the block:", hero.live_bytes() - before, "bytes more for", big:numel(), "f32 values")
end
print("after the block:", hero.live_bytes() - before, "bytes more")
local t = hero.ones(10)
t:free()                                         -- or leave it to the garbage collector
print(t, t:is_freed())
