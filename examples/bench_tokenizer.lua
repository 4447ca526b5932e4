--- Tokenizer throughput on subtitle-like text (MB of UTF-8 input per second, one thread).
-- usage: lua5.4 examples/bench_tokenizer.lua [MB] [vocab.json merges.txt]
-- The text is synthetic: lines "Speaker : words words, words." with words drawn Zipf-like from
-- the vocabulary's whole-word tokens (RoBERTa's ids are roughly by frequency), some capitals,
-- numbers, apostrophes, HTML entities and non-ASCII, like TV subtitles.
local hero = require "hero"
require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source) -- --help: the comment above

local mb = tonumber(arg[1]) or 2
local vocab = arg[2] or "spec/fixtures/tokenizer/roberta-base-vocab.json"
local merges = arg[3] or "spec/fixtures/tokenizer/vocab.bpe"

local tok = hero.text.Tokenizer.from_files(vocab, merges)

-- whole-word tokens in id order
local words = {}
for id = 0, 50264 do
  local t = tok:id_to_token(id)
  if t and t:match("^\196\160%l+$") then words[#words + 1] = t:sub(3) end
end

local seed = 12345
local function rand() -- small LCG: the same text on every run
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed / 2147483648
end
local function zipf_word()
  local r = rand()
  return words[math.floor((#words) ^ r)] or words[1] -- P(rank <= k) ~ log k / log N
end

local speakers = {"Sheldon", "Penny", "House", "Castle", "Beckett", "Rachel", "Ross", "Chandler"}
local extras = {"&amp;", "I'm", "don't", "you're", "42", "1,000", "café", "…", "‘yo’", "&quot;", "?!", "--"}
local lines, bytes = {}, 0
while bytes < mb * 1e6 do
  local parts = {}
  if rand() < 0.3 then parts[#parts + 1] = speakers[math.floor(rand() * #speakers) + 1] .. " :" end
  for _ = 1, 3 + math.floor(rand() * 9) do
    local w = rand() < 0.1 and extras[math.floor(rand() * #extras) + 1] or zipf_word()
    if rand() < 0.05 then w = w:upper() end
    parts[#parts + 1] = w
  end
  local line = table.concat(parts, " ") .. (rand() < 0.5 and "." or "?")
  lines[#lines + 1] = line
  bytes = bytes + #line
end

local function bench(name, fn)
  local t0 = os.clock() -- one thread: CPU time
  local ntok = 0
  for i = 1, #lines do ntok = ntok + #fn(lines[i]) end
  local dt = os.clock() - t0
  print(("%-36s %7.2f MB/s  (%d lines, %.2f MB, %d tokens, %.3f s)"):format(name, bytes / 1e6 / dt, #lines,
    bytes / 1e6, ntok, dt))
end

print(("hero.text.Tokenizer, %d whole-word tokens sampled, Unicode %s"):format(#words, hero.text.unicode_version))
tok:cache_clear()
bench("encode (cold word cache)", function(s) return tok:encode(s) end)
bench("encode (warm cache)", function(s) return tok:encode(s) end)
bench("prepare_subtitle + encode", function(s) return tok:encode(hero.text.prepare_subtitle(s)) end)
bench("encode_tensor", function(s) return tok:encode_tensor(s):totable() end)

-- all threads: wall-clock time (os.clock adds up the CPU time of every thread)
local now = hero.core._now
local t0 = now()
local out = tok:encode_batch(lines)
local dt = now() - t0
print(("%-36s %7.2f MB/s  (%d lines, %d threads, wall clock)"):format("encode_batch", bytes / 1e6 / dt, #out,
  hero.get_num_threads()))
