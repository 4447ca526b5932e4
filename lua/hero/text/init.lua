--- hero.text: the text side of HERO's preprocessing.
--
-- `Tokenizer` is the byte-level BPE of GPT-2 / RoBERTa (the C core in csrc/text_bpe.c). Its
-- default style reproduces transformers 2.0.0's `RobertaTokenizer.tokenize` +
-- `convert_tokens_to_ids` (what HERO's scripts use, no <s>/</s> added, no prefix space):
--   * the special-token strings <s> <pad> </s> <unk> <mask> are split out and map to their ids;
--   * every other piece is stripped of whitespace at both ends (Python's str.strip), so a
--     leading space never becomes "Ġ", and "" or a whitespace-only text gives {} (the reference
--     returns an unstable special id for whitespace-only text; {} is the documented choice);
--   * tokens missing from the vocabulary become the "<unk>" id (an error if there is none).
-- style = "gpt2" is OpenAI's encoder: the exact text, nothing stripped, no special tokens.
-- Text must be valid UTF-8 (an error names the byte offset otherwise: the reference works on
-- Python str, which cannot hold such bytes). Ids are the vocabulary's, 0-based.
--
-- `prepare_subtitle` / `prepare_query` are the normalisations of HERO's prepro_sub.py /
-- prepro_query.py (Python's html.unescape, str.isupper, str.lower, reproduced in C).
local core = require "hero.core"

local ctext = core.text

local text = {}

text.unicode_version = ctext.unicode_version
--- transformers 2.0.0's RobertaTokenizer special tokens, split out of the text before BPE.
text.ROBERTA_SPECIAL_TOKENS = {"<s>", "<pad>", "</s>", "<unk>", "<mask>"}

--- Python's html.unescape (numeric references and the full HTML5 entity table).
text.html_unescape = ctext.html_unescape
--- Python's str.isupper (true when there is a cased character and no lowercase/titlecase one).
text.isupper = ctext.isupper
--- Python's str.lower (full Unicode lowercase mapping, final sigma).
text.lower = ctext.lower
--- Python's str.strip() (Unicode whitespace at both ends).
text.strip = ctext.strip

--- The pieces of GPT-2's pre-tokenizer regex (before byte mapping and BPE), as regex.findall.
text.pretokenize = ctext.pretokenize

--- HERO's subtitle normalisation (scripts/prepro_sub.py): html.unescape, then lowercase when
-- the whole text is in capitals.
function text.prepare_subtitle(s)
  if type(s) ~= "string" then error("prepare_subtitle: expected a string, got " .. type(s), 2) end
  s = ctext.html_unescape(s)
  if ctext.isupper(s) then s = ctext.lower(s) end
  return s
end

--- HERO's query normalisation (scripts/prepro_query.py, TVR/TVQA/VIOLIN): lowercase when all caps.
function text.prepare_query(s)
  if type(s) ~= "string" then error("prepare_query: expected a string, got " .. type(s), 2) end
  if ctext.isupper(s) then return ctext.lower(s) end
  return s
end

local Tokenizer = {}
Tokenizer.__index = Tokenizer
text.Tokenizer = Tokenizer

local STYLES = {
  roberta = {strip = true, special_tokens = text.ROBERTA_SPECIAL_TOKENS},
  gpt2 = {strip = false, special_tokens = {}},
}

--- Loads vocab (JSON token -> id: vocab.json / encoder.json) and merges (merges.txt / vocab.bpe).
-- opts.style = "roberta" (default) | "gpt2"; opts.strip and opts.special_tokens override the
-- style's choices.
function Tokenizer.from_files(vocab_path, merges_path, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("Tokenizer.from_files: argument #3: expected an options table", 2) end
  for k in pairs(opts) do -- a misspelt {styel = "gpt2"} would build the other tokenizer
    if k ~= "style" and k ~= "strip" and k ~= "special_tokens" then
      error(string.format("Tokenizer.from_files: unknown option '%s' (style, strip, special_tokens)", tostring(k)), 2)
    end
  end
  local style = opts.style or "roberta"
  local base = STYLES[style]
  if not base then
    error(("Tokenizer.from_files: unknown style '%s' (expected 'roberta' or 'gpt2')"):format(tostring(style)), 2)
  end
  if type(vocab_path) ~= "string" or type(merges_path) ~= "string" then
    error("Tokenizer.from_files: expected the vocabulary and merges file paths (strings)", 2)
  end
  local strip = base.strip
  if opts.strip ~= nil then strip = not not opts.strip end
  local specials = opts.special_tokens or base.special_tokens
  local bpe = ctext.bpe_load(vocab_path, merges_path)
  bpe:set_specials(specials)
  local flags = (strip and ctext.STRIP or 0) | (#specials > 0 and ctext.SPECIALS or 0)
  local copy = {}
  for i = 1, #specials do copy[i] = specials[i] end
  return setmetatable({
    _bpe = bpe, _flags = flags, style = style, strip = strip, special_tokens = copy,
    vocab_path = vocab_path, merges_path = merges_path,
  }, Tokenizer)
end

-- The style and stripping are the tokenizer's (Tokenizer.from_files' options): an argument after
-- the text, such as encode(s, {style = "gpt2"}), would otherwise be ignored without a word.
local function text_only(method, n)
  if n > 0 then
    error(("Tokenizer:%s takes only the text; choose the style with Tokenizer.from_files(vocab, merges, "
      .. "{style = ...})"):format(method), 3)
  end
end

--- Lua array of the (0-based) ids of s.
function Tokenizer:encode(s, ...)
  text_only("encode", select("#", ...))
  return self._bpe:encode(s, self._flags)
end
--- The ids of s as a 1-D i64 tensor.
function Tokenizer:encode_tensor(s, ...)
  text_only("encode_tensor", select("#", ...))
  return self._bpe:encode_tensor(s, self._flags)
end
--- Encodes an array of texts on the thread pool; returns an array of id arrays.
function Tokenizer:encode_batch(texts, ...)
  text_only("encode_batch", select("#", ...))
  return self._bpe:encode_batch(texts, self._flags)
end
--- The token strings of s, in the vocabulary's byte-mapped form ("Ġworld").
function Tokenizer:tokenize(s, ...)
  text_only("tokenize", select("#", ...))
  return self._bpe:tokenize(s, self._flags)
end
--- Text of ids (a Lua array or a 1-D integer tensor). Bytes that are not valid UTF-8 become
-- U+FFFD, as GPT-2's decoder does; opts.strict = true raises an error instead.
function Tokenizer:decode(ids, opts)
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("Tokenizer:decode: options must be a table ({strict = true}), got " .. type(opts), 2)
    end
    for k, v in pairs(opts) do
      if k ~= "strict" then error(string.format("Tokenizer:decode: unknown option '%s' (strict)", tostring(k)), 2) end
      if type(v) ~= "boolean" then error("Tokenizer:decode: option strict must be a boolean, got " .. type(v), 2) end
    end
  end
  return self._bpe:decode(ids, opts and opts.strict or false)
end
--- id of a vocabulary string (nil when absent), and the reverse.
function Tokenizer:token_to_id(tok) return self._bpe:token_to_id(tok) end
function Tokenizer:id_to_token(id) return self._bpe:id_to_token(id) end
--- Number of vocabulary entries.
function Tokenizer:vocab_size() return self._bpe:info().vocab_size end
--- {vocab_size, merges, unk_id (nil when absent), cached_words}.
function Tokenizer:info() return self._bpe:info() end
--- Empties the word cache (bounded anyway).
function Tokenizer:cache_clear() self._bpe:cache_clear() end
--- Releases the tables now (also done by the garbage collector).
function Tokenizer:free() self._bpe:free() end

function Tokenizer:__tostring()
  -- print must work on a freed tokenizer too (info() is an error then)
  local ok, info = pcall(self._bpe.info, self._bpe)
  if not ok then return ("hero.text.Tokenizer(%s, freed)"):format(self.style) end
  return ("hero.text.Tokenizer(%s, %d tokens, %d merges)"):format(self.style, info.vocab_size, info.merges)
end

require("hero.colon").guard(Tokenizer, "Tokenizer", {"encode", "encode_tensor", "encode_batch", "tokenize", "decode",
  "token_to_id", "id_to_token", "vocab_size", "info", "cache_clear", "free"})

return text
