--- Captioning metrics of TVC (the reference's eval/tvc.py:TVCEval with coco-caption's scorers):
-- BLEU-1..4 (corpus level, "closest" reference length), ROUGE-L (beta 1.2), CIDEr-D (idf from the
-- references, sigma 6, clipping, x10) and, when Java and a METEOR 1.5 jar are present, METEOR.
-- Texts are tokenised like the reference's PTB tokenizer (see ptb_tokenize) and scored as
-- space-joined token strings; every float operation follows the Python code's order so the
-- numbers match it to the last bit (NumPy's pairwise sums for the means).
local util = require "hero.eval.util"

local M = {}

-- Tokens the reference drops after tokenising.
M.PUNCTUATIONS = {}
for _, p in ipairs({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
  "--", "...", ";"}) do
  M.PUNCTUATIONS[p] = true
end

--- Every non-ASCII character (a UTF-8 sequence) becomes one space, as _remove_nonascii.
function M.remove_nonascii(text)
  return (text:gsub("[\192-\255][\128-\191]*", " "):gsub("[\128-\255]", " "))
end

-- ------------------------------------------------------------------ PTB tokenizer stand-in
-- The rules of Stanford CoreNLP 3.4.1's PTBLexer that caption-like English meets, as observed on
-- the jar (spec/fixtures/eval/ptb_tokens.lua holds its output for the sentences the spec checks).
-- Like the JFlex lexer, every rule is tried at a position and the longest match wins, the earlier
-- rule on a tie.

local BRACKETS = {["("] = "-LRB-", [")"] = "-RRB-", ["{"] = "-LCB-", ["}"] = "-RCB-",
  ["["] = "-LSB-", ["]"] = "-RSB-"}

local function word_set(list, lower)
  local set = {}
  for w in list:gmatch("%S+") do set[lower and w:lower() or w] = true end
  return set
end
-- Words that keep their period wherever they stand (ABBREV1 / ABBREV2; any case) ...
local ABBREV_ANY_CASE = word_set([[jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu
  thurs fri ala ariz colo conn ct dak fla ga ind kan kans ky md mich minn mo mont neb nev okla penn tenn va vt
  wis wisc wyo inc co cos corp pty ltd plc rt bancorp bhd assn univ intl sys tel est ext sq jr bros esq etc
  al seq bldg mr mrs ms dr drs prof profs sen sens rep reps atty attys lt col gen messrs gov govs adm rev maj
  sgt cpl pvt capt ste st ave pres lieut hon brig cmdr comdr pfc spc supt supts det mt ft adj adv asst assoc
  ens insp mlle mme msgr sfc sr vs alex wm jos cie cf treas ph invt elec natl mfg mtg dept blvd rd]], true)
-- ... those that do so only capitalised (they are common words otherwise: "he is ill.") ...
local ABBREV_CAPITALISED = word_set("Az Ark Del Ill La Mass Miss Ore Pa Tex Wash")
-- ... and those that keep it only before a number ("no. 5", but "no.").
local ABBREV_BEFORE_NUMBER = word_set("ca fig figs prop no nos art pp op", true)
-- Capitalised words after which a one-letter abbreviation ("plan B. Then") ends its sentence: the
-- period is split off. (Found on the jar; "B. Kennedy", "B. Ross", "B. And" keep "b.".)
local SENTENCE_STARTERS = word_set([[The He She It They We You This That There A An But So Her In At When
  While After As If What Then Mr]])
-- Contractions split in two (splitAssimilations): the first part's length.
local ASSIMILATIONS = {cannot = 3, gonna = 3, gotta = 3, wanna = 3, lemme = 3, gimme = 3, ["'tis"] = 2,
  ["'twas"] = 2}
local REDAUX = {["'s"] = true, ["'m"] = true, ["'d"] = true, ["'re"] = true, ["'ve"] = true, ["'ll"] = true}

local function is_alpha(c) return c ~= "" and c:find("^%a") ~= nil end

-- The end of the longest run at i of `first` followed by any number of `more` (anchored patterns),
-- or nil when `first` does not match.
local function match_run(s, i, first, more)
  local _, e = s:find(first, i)
  if not e then return nil end
  while true do
    local _, e2 = s:find(more, e + 1)
    if not e2 then return e end
    e = e2
  end
end

-- WORD: letters and digits, starting with a letter, pieces joined by . ! or ? ("mr.smith", "hi!there").
local function match_word(s, i) return match_run(s, i, "^%a%w*", "^[.!?]%a%w*") end

-- NUMBER: [-+]? digits with . , (or :) groups ("1,000.50", "10:30", ".5", "-5"); no_colon: only
-- . and , (the numbers inside a hyphenated THING: "1:30-2:30" is "1:30" "-2:30").
local function match_number(s, i, no_colon)
  local j = i
  if s:find("^[-+]", j) then j = j + 1 end
  local _, e = s:find("^%d+", j)
  if e then
    while true do
      local _, e2 = s:find(no_colon and "^[.,]%d+" or "^[.:,]%d+", e + 1)
      if not e2 then return e end
      e = e2
    end
  end
  _, e = s:find("^[.,]%d+", j)
  if not e then return nil end
  while true do
    local _, e2 = s:find("^[.,]%d+", e + 1)
    if not e2 then return e end
    e = e2
  end
end

-- THING: letters/digits or a number, then "-" and more of them ("x-ray", "25-years-old", "101-b").
local function match_thing(s, i)
  local _, e = s:find("^%w+", i)
  local n = match_number(s, i, true)
  if n and (not e or n > e) then e = n end
  if not e then return nil end
  while s:sub(e + 1, e + 1) == "-" do
    local _, e2 = s:find("^%w+", e + 2)
    local n2 = s:find("^%d", e + 2) and match_number(s, e + 2, true)
    if n2 and (not e2 or n2 > e2) then e2 = n2 end
    if not e2 then break end
    e = e2
  end
  return e
end

-- THING3: up to three slash-joined words ("and/or", "he/she", "1/2").
local function match_slashed(s, i)
  local function part(j)
    local _, e = s:find("^%w+", j)
    if not e then return nil end
    for _ = 1, 2 do
      local _, e2 = s:find("^%-%a+", e + 1)
      if not e2 then break end
      e = e2
    end
    return e
  end
  local e = part(i)
  if not e then return nil end
  local joined = 0
  while joined < 2 and s:sub(e + 1, e + 1) == "/" do
    local e2 = part(e + 2)
    if not e2 then break end
    e, joined = e2, joined + 1
  end
  return joined > 0 and e or nil
end

-- ACRONYM: single letters each followed by a period ("u.s.", "a.m.", "w.").
local function match_acronym(s, i) return match_run(s, i, "^%a%.", "^%a%.") end

-- Words with an apostrophe that stay whole ("o'brien", "ma'am", "'cause", "'n'", "'80s", "'em").
local function match_apostrophe_word(s, low, i)
  local best
  local function take(e) if e and (not best or e > best) then best = e end end
  if s:sub(i, i) == "'" then
    take(select(2, low:find("^'n'?", i)))
    take(select(2, low:find("^'em", i)))
    take(select(2, low:find("^'cause", i)))
    take(select(2, low:find("^'till?", i)))
    take(select(2, low:find("^'[2-9]0s", i)))
    if low:find("^'%d%d%f[%s%z]", i) then take(i + 2) end
  else
    -- one letter (not i or y) + ' + two letters or more; letters ending in a vowel + ' + letters
    if not low:find("^[iy]", i) then take(select(2, low:find("^%a'%a%a+", i))) end
    take(select(2, low:find("^%a+[aeiouy]'%a+", i)))
  end
  return best
end

-- The token at position i of s (no space there; low is s lower-cased): its end and the tokens it
-- gives.
local function next_token(s, low, i)
  local c = s:sub(i, i)
  -- the longest match wins; `len` counts a rule's trailing context (WORD/REDAUX: "joey" + "'s")
  local best_e, best_toks, best_len
  local function offer(e, toks, len)
    len = len or (e and e - i + 1)
    if e and (not best_len or len > best_len) then best_e, best_toks, best_len = e, toks, len end
  end
  -- assimilations first: they tie with WORD on the same letters
  for form, cut in pairs(ASSIMILATIONS) do
    if low:sub(i, i + #form - 1) == form and not s:sub(i + #form, i + #form):find("^%w") then
      offer(i + #form - 1, {low:sub(i, i + cut - 1), low:sub(i + cut, i + #form - 1)})
    end
  end
  local we = match_word(s, i)
  if we then
    local w = s:sub(i, we)
    local after = low:sub(we + 1, we + 3)
    if w:find("^%a+$") and w:sub(-1):lower() == "n" and #w > 1 and after:sub(1, 2) == "'t"
        and not is_alpha(s:sub(we + 3, we + 3)) then
      -- "doesn't" -> does n't: the word stops before the n (SWORD/SREDAUX, counted with its n't)
      offer(we + 2, {w:sub(1, -2), "n't"})
    else
      local context = 0
      for red in pairs(REDAUX) do
        if low:sub(we + 1, we + #red) == red then context = math.max(context, #red) end
      end
      offer(we, {w}, we - i + 1 + context)
    end
    -- abbreviations keep their period
    local lw = w:lower()
    if s:sub(we + 1, we + 1) == "." and w:find("^%a+$") then
      local keep = ABBREV_ANY_CASE[lw] or ABBREV_CAPITALISED[w]
        or (ABBREV_BEFORE_NUMBER[lw] and s:find("^%.%s*%d", we + 1))
      if keep then offer(we + 1, {w .. "."}) end
    end
  end
  local ae = match_acronym(s, i)
  if ae then
    local a = s:sub(i, ae)
    local next_word = s:match("^%s+(%a+%.?)", ae + 1)
    if #a == 2 and next_word and (SENTENCE_STARTERS[next_word] or SENTENCE_STARTERS[next_word:gsub("%.$", "")]) then
      offer(ae, {a:sub(1, 1), "."})
    else
      offer(ae, {a})
    end
  end
  offer(match_thing(s, i), nil)
  offer(match_slashed(s, i), nil)
  offer(match_number(s, i), nil)
  offer(match_apostrophe_word(s, low, i), nil)
  -- y'know, y'all: "y'" and the word
  if low:find("^y'%a", i) then offer(i + 1, nil) end
  if c == "'" then
    for red in pairs(REDAUX) do
      if low:sub(i, i + #red - 1) == red and not is_alpha(s:sub(i + #red, i + #red)) then offer(i + #red - 1, nil) end
    end
    if low:sub(i, i + 2) == "n't" then offer(i + 2, nil) end
  end
  if low:sub(i, i + 2) == "n't" and not is_alpha(s:sub(i + 3, i + 3)) then offer(i + 2, nil) end
  -- e-mail addresses, URLs, #hashtags, @names, AT&T, US$, a_b, ** and <b> stay whole
  offer(select(2, s:find("^[%w._%%+-]+@%w[%w.-]*%w", i)), nil)
  local url = s:match("^%a+://[^%s\"<>|(){}%[%]]+", i) or s:match("^www%.[^%s\"<>|(){},]+", i)
  if url then offer(i + #(url:gsub("[.!?,;:'%-]+$", "")) - 1, nil) end
  offer(select(2, s:find("^#%a[%w_]*", i)), nil)
  offer(select(2, s:find("^@[%a_][%w_]*", i)), nil)
  offer(select(2, s:find("^%u+&%u[%u&]*", i)), nil)
  offer(select(2, s:find("^%u*%$", i)), nil)
  offer(select(2, s:find("^%w+_[%w_]*", i)), nil)
  offer(select(2, s:find("^%*+", i)), nil)
  offer(select(2, s:find("^</?%a[%w:._-]*%s*>", i)), nil)
  -- SGML character entities
  local entity = s:match("^&#?%w+;", i)
  if entity then
    local named = {["&amp;"] = "&", ["&lt;"] = "<", ["&gt;"] = ">", ["&quot;"] = "''", ["&apos;"] = "'"}
    local as_token = named[low:sub(i, i + #entity - 1)] or (entity:find("^&#") and entity)
    if as_token then offer(i + #entity - 1, {as_token}) end
  end
  -- smileys: ":)" -> ":-RRB-"
  local sm = s:match("^[<>]?[:;=][-o*']?[()DPdpO\\{@|%[%]]", i)
  if sm then offer(i + #sm - 1, {(sm:gsub("[(){}%[%]]", BRACKETS))}) end
  if best_e then return best_e, best_toks or {s:sub(i, best_e)} end
  -- punctuation
  local run = s:match("^[?!]+", i)
  if run then return i + #run - 1, {run} end
  local dots = s:match("^%.%.%.+", i) or s:match("^%.[ ]%.[ ]%.", i)
  if dots then
    local e = i + #dots - 1
    while s:find("^[ ]%.", e + 1) do e = e + 2 end
    return e, {"..."}
  end
  local dashes = s:match("^%-%-+", i)
  if dashes then return i + #dashes - 1, {"--"} end
  if c == '"' then return i, {"''"} end
  local quotes = s:match("^[`']+", i)
  if quotes then
    quotes = quotes:sub(1, 2)
    return i + #quotes - 1, {quotes}
  end
  if BRACKETS[c] then return i, {BRACKETS[c]} end
  return i, {c}
end

--- The tokens of a text as Stanford's PTBTokenizer 3.4.1 gives them (-preserveLines -lowerCase),
-- before the reference removes its punctuation list: an array of strings.
function M.ptb_tokens(text)
  local toks = {}
  local low = text:lower()
  local i, n = 1, #text
  while i <= n do
    local _, ws = text:find("^%s+", i)
    if ws then
      i = ws + 1
    else
      local e, got = next_token(text, low, i)
      for _, t in ipairs(got) do toks[#toks + 1] = t:lower() end
      i = e + 1
    end
  end
  return toks
end

--- A Lua stand-in for Stanford's PTBTokenizer 3.4.1 as the reference runs it (-preserveLines
-- -lowerCase), followed by the reference's removal of its PUNCTUATIONS list. It follows the jar on
-- the forms captions use (spec/fixtures/eval/ptb_tokens.lua: names, quotes, contractions, numbers,
-- hyphens, slashes, ellipses, brackets, abbreviations):
-- - brackets become -lrb- -rrb- -lcb- -rcb- -lsb- -rsb-; being lower-case they are not in the
--   reference's upper-case list and stay, as they do in the reference's scores;
-- - runs of ? and ! ("?!", "!!") are one token and stay (only a lone ? or ! is removed);
-- - n't 's 're 'm 'll 've 'd are split off ("ca n't", "do n't"), cannot/gonna/gotta/wanna/lemme/
--   gimme/'tis/'twas are split in two ("'t is"), y'all gives "y'" "all"; "o'brien", "ma'am",
--   "'cause", "rock 'n' roll", "'80s" stay whole, a trailing apostrophe ("doin'") is split off;
-- - hyphenated words and numbers stay whole, "--" (or more hyphens) between words is removed;
--   a/b, and/or, 1/2 stay whole; 1,000.50, 10:30, .5, -5 stay whole, "$" "%" "#" are split off;
-- - abbreviations keep their period (mr. dr. st. ft. etc. u.s. a.m. i.e.; no. before a number);
-- - e-mail addresses, URLs, #tags, @names and &amp; &lt; &gt; &quot; are read as the jar reads them.
-- Not covered: phone numbers, non-ASCII text (tvc_eval turns it into spaces first, as the
-- reference does) and the jar's rules that look at the next sentence; pass opts.ptb_jar to
-- tvc_eval to use the Java tokenizer itself. Returns the space-joined tokens.
function M.ptb_tokenize(text)
  local kept = {}
  for _, t in ipairs(M.ptb_tokens(text)) do
    if not M.PUNCTUATIONS[t] then kept[#kept + 1] = t end
  end
  return table.concat(kept, " ")
end

-- A temporary file holding text, for a java tool to read; an error naming it when the text cannot be
-- written whole (a tool reading a torn file would score what it holds without a word).
local function temp_file(text, who)
  local tmp = os.tmpname()
  local f, err = io.open(tmp, "wb")
  local ok = f and f:write(text)
  local closed = f and f:close()
  if not (ok and closed) then
    os.remove(tmp)
    error(string.format("%s: cannot write the temporary file %s: %s", who, tmp, tostring(err or "write failed")), 3)
  end
  return tmp
end

--- Runs the Stanford PTBTokenizer jar (java on the PATH) exactly as the reference does and
-- removes the punctuation tokens. texts: array of strings; returns an array of token strings.
function M.ptb_tokenize_java(texts, jar)
  local lines = {}
  for i, t in ipairs(texts) do lines[i] = t:gsub("\n", " ") end
  local tmp = temp_file(table.concat(lines, "\n"), "ptb_tokenize_java")
  local cmd = string.format("java -cp '%s' edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase '%s'",
    jar:gsub("'", "'\\''"), tmp)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  os.remove(tmp)
  local res, i = {}, 0
  for line in (out .. "\n"):gmatch("([^\n]*)\n") do
    i = i + 1
    if i > #texts then break end
    local kept = {}
    for w in line:gsub("%s+$", ""):gmatch("[^ ]+") do
      if not M.PUNCTUATIONS[w] then kept[#kept + 1] = w end
    end
    res[i] = table.concat(kept, " ")
  end
  if #res ~= #texts then error(string.format("ptb_tokenize_java: %d lines back for %d texts (%s)", #res,
    #texts, cmd), 0) end
  return res
end

-- --------------------------------------------------------------------------------------------
-- n-grams
-- --------------------------------------------------------------------------------------------

local function split_ws(s)
  local w = {}
  for t in s:gmatch("%S+") do w[#w + 1] = t end
  return w
end

-- Counts of the 1..n-grams of a sentence, keyed by the n-gram's words joined with a space, and
-- the keys in first-seen order (the order Python's dict iterates in). The words come from
-- splitting at whitespace, so none contains a space: a key is never the key of another n-gram
-- (a byte a word can hold, such as "\1" that RoBERTa token 50109 decodes to, would let the bigram
-- {"a\1b", "c"} pass for the trigram {"a", "b", "c"}), and its spaces count its words.
local SEP = " "
local function precook(s, n)
  local words = split_ws(s)
  local counts, order = {}, {}
  for k = 1, n do
    for i = 1, #words - k + 1 do
      local g = table.concat(words, SEP, i, i + k - 1)
      if counts[g] == nil then
        counts[g] = 0
        order[#order + 1] = g
      end
      counts[g] = counts[g] + 1
    end
  end
  return #words, counts, order
end

local function ngram_len(g)
  local _, seps = g:gsub(SEP, SEP)
  return seps + 1
end

-- --------------------------------------------------------------------------------------------
-- BLEU (bleu_scorer.py, option "closest")
-- --------------------------------------------------------------------------------------------

--- BLEU-1..n over a corpus. gts: array of arrays of tokenised references; res: array of
-- tokenised hypotheses (same order). Returns the corpus scores {b1, ..., bn} and the per-sentence
-- scores per order {{...}, ...}.
function M.bleu(gts, res, n)
  n = n or 4
  util.check_corpus("bleu", gts, res)
  local small, tiny = 1e-9, 1e-15
  local tot_test, tot_ref = 0, 0
  local tot_guess, tot_correct = {}, {}
  for k = 1, n do tot_guess[k], tot_correct[k] = 0, 0 end
  local per = {}
  for k = 1, n do per[k] = {} end
  for idx = 1, #gts do
    local reflens, maxcounts = {}, {}
    for _, r in ipairs(gts[idx]) do
      local rl, counts = precook(r, n)
      reflens[#reflens + 1] = rl
      for g, c in pairs(counts) do
        if (maxcounts[g] or 0) < c then maxcounts[g] = c end
      end
    end
    local testlen, counts = precook(res[idx], n)
    -- "closest": the reference length nearest the hypothesis length, the shorter on ties
    local reflen, bestd
    for _, l in ipairs(reflens) do
      local d = math.abs(l - testlen)
      if bestd == nil or d < bestd or (d == bestd and l < reflen) then reflen, bestd = l, d end
    end
    local guess, correct = {}, {}
    for k = 1, n do
      guess[k] = math.max(0, testlen - k + 1)
      correct[k] = 0
    end
    for g, c in pairs(counts) do
      local k = ngram_len(g)
      correct[k] = correct[k] + math.min(maxcounts[g] or 0, c)
    end
    tot_test, tot_ref = tot_test + testlen, tot_ref + reflen
    local b = 1.0
    for k = 1, n do
      tot_guess[k] = tot_guess[k] + guess[k]
      tot_correct[k] = tot_correct[k] + correct[k]
      b = b * ((correct[k] + tiny) / (guess[k] + small))
      per[k][idx] = b ^ (1.0 / k)
    end
    local ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1 then
      for k = 1, n do per[k][idx] = per[k][idx] * math.exp(1 - 1 / ratio) end
    end
  end
  local scores = {}
  local b = 1.0
  for k = 1, n do
    b = b * ((tot_correct[k] + tiny) / (tot_guess[k] + small))
    scores[k] = b ^ (1.0 / k)
  end
  local ratio = (tot_test + tiny) / (tot_ref + small)
  if ratio < 1 then
    for k = 1, n do scores[k] = scores[k] * math.exp(1 - 1 / ratio) end
  end
  return scores, per
end

-- --------------------------------------------------------------------------------------------
-- ROUGE-L (rouge.py)
-- --------------------------------------------------------------------------------------------

-- Python's str.split(" "): every single space separates (so "" gives one empty token).
local function split_space(s)
  local t = {}
  for w in (s .. " "):gmatch("(.-) ") do t[#t + 1] = w end
  return t
end

local function lcs(a, b)
  if #a < #b then a, b = b, a end
  local prev = {}
  for j = 0, #b do prev[j] = 0 end
  for i = 1, #a do
    local cur = {[0] = 0}
    for j = 1, #b do
      if a[i] == b[j] then cur[j] = prev[j - 1] + 1
      else cur[j] = math.max(prev[j], cur[j - 1]) end
    end
    prev = cur
  end
  return prev[#b]
end

--- ROUGE-L F-measure (beta = 1.2) of one hypothesis against its references (max precision and
-- max recall over the references).
function M.rouge_l_sentence(hyp, refs, beta)
  beta = beta or 1.2
  local tc = split_space(hyp)
  local pmax, rmax = -math.huge, -math.huge
  for _, r in ipairs(refs) do
    local tr = split_space(r)
    local l = lcs(tr, tc)
    pmax = math.max(pmax, l / #tc)
    rmax = math.max(rmax, l / #tr)
  end
  if pmax ~= 0 and rmax ~= 0 then
    return ((1 + beta ^ 2) * pmax * rmax) / (rmax + beta ^ 2 * pmax)
  end
  return 0.0
end

--- Corpus ROUGE-L: the mean of the sentence scores; returns mean, per-sentence scores.
function M.rouge_l(gts, res)
  util.check_corpus("rouge_l", gts, res)
  local scores = {}
  for i = 1, #gts do scores[i] = M.rouge_l_sentence(res[i], gts[i]) end
  return util.np_mean(scores), scores
end

-- --------------------------------------------------------------------------------------------
-- CIDEr-D (cider_scorer.py)
-- --------------------------------------------------------------------------------------------

--- CIDEr-D: tf-idf n-gram vectors (idf from the references of the whole corpus), per order the
-- clipped cosine similarity times exp(-(len_hyp - len_ref)^2 / (2 sigma^2)), averaged over orders
-- and references, x10. (As in the reference, the lengths are the number of bigram occurrences.)
-- Returns the mean over sentences and the per-sentence scores.
function M.cider(gts, res, n, sigma)
  n, sigma = n or 4, sigma or 6.0
  util.check_corpus("cider", gts, res)
  local crefs, ctest = {}, {}
  for i = 1, #gts do
    local rs = {}
    for j, r in ipairs(gts[i]) do
      local _, c, o = precook(r, n)
      rs[j] = {c, o}
    end
    crefs[i] = rs
    local _, c, o = precook(res[i], n)
    ctest[i] = {c, o}
  end
  local df = {}
  local maxdf = 0
  for _, rs in ipairs(crefs) do
    local seen = {}
    for _, r in ipairs(rs) do
      for _, g in ipairs(r[2]) do
        if not seen[g] then
          seen[g] = true
          df[g] = (df[g] or 0.0) + 1
          if df[g] > maxdf then maxdf = df[g] end
        end
      end
    end
  end
  assert(#ctest >= maxdf, "cider: a document frequency exceeds the number of sentences")
  local ref_len = math.log(#crefs + 0.0)

  local function counts2vec(cnt)
    local counts, order = cnt[1], cnt[2]
    local vec, norm, length = {}, {}, 0
    for k = 1, n do vec[k], norm[k] = {}, 0.0 end
    for _, g in ipairs(order) do
      local tf = counts[g]
      local d = math.log(math.max(1.0, df[g] or 0.0))
      local k = ngram_len(g)
      local v = tf * (ref_len - d)
      vec[k][g] = v
      norm[k] = norm[k] + v ^ 2
      if k == 2 then length = length + tf end
    end
    for k = 1, n do norm[k] = math.sqrt(norm[k]) end
    return vec, norm, length, order
  end

  local function sim(vh, vr, nh, nr, lh, lr, order_h)
    local delta = 0.0 + (lh - lr)
    local val = {}
    for k = 1, n do val[k] = 0.0 end
    -- walk the hypothesis n-grams per order in insertion order (Python dict order)
    for _, g in ipairs(order_h) do
      local k = ngram_len(g)
      local h, r = vh[k][g], vr[k][g] or 0.0
      val[k] = val[k] + math.min(h, r) * r
    end
    for k = 1, n do
      if nh[k] ~= 0 and nr[k] ~= 0 then val[k] = val[k] / (nh[k] * nr[k]) end
      val[k] = val[k] * math.exp(1) ^ (-(delta ^ 2) / (2 * sigma ^ 2))
    end
    return val
  end

  local scores = {}
  for i = 1, #ctest do
    local vec, norm, length, order = counts2vec(ctest[i])
    local acc = {}
    for k = 1, n do acc[k] = 0.0 end
    for _, r in ipairs(crefs[i]) do
      local vr, nr, lr = counts2vec(r)
      local s = sim(vec, vr, norm, nr, length, lr, order)
      for k = 1, n do acc[k] = acc[k] + s[k] end
    end
    local avg = util.np_mean(acc)
    avg = avg / #crefs[i]
    avg = avg * 10.0
    scores[i] = avg
  end
  return util.np_mean(scores), scores
end

-- --------------------------------------------------------------------------------------------
-- METEOR (optional: Java + meteor-1.5.jar)
-- --------------------------------------------------------------------------------------------

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- Whether METEOR can run: java on the PATH and the jar file readable.
function M.meteor_available(jar)
  if type(jar) ~= "string" then return false end
  local f = io.open(jar, "rb")
  if not f then return false end
  f:close()
  local ok = os.execute("command -v java >/dev/null 2>&1")
  return ok == true or ok == 0
end

--- tvc_eval's Java options checked before a long run: meteor_jar (METEOR 1.5) and ptb_jar (the
-- Stanford PTBTokenizer, the reference's tokenisation) must be readable files with java on the
-- PATH. Returns {meteor_jar =, ptb_jar =} with the ones given; raises a clear error otherwise.
function M.java_options(meteor_jar, ptb_jar)
  local out = {}
  for _, o in ipairs {{"meteor_jar", meteor_jar, "METEOR"}, {"ptb_jar", ptb_jar, "the PTB tokenizer"}} do
    local key, jar, what = o[1], o[2], o[3]
    if jar ~= nil then
      if type(jar) ~= "string" then error(string.format("%s: the jar must be a path, got %s", key, type(jar)), 2) end
      local f = io.open(jar, "rb")
      if not f then error(string.format("%s: %s's jar '%s' cannot be read", key, what, jar), 2) end
      local head = f:read(2) -- a directory opens but does not read
      f:close()
      if head ~= "PK" then error(string.format("%s: '%s' is not a jar (zip) file", key, jar), 2) end
      if not M.meteor_available(jar) then error(string.format("%s: %s needs java on the PATH", key, what), 2) end
      out[key] = jar
    end
  end
  return out
end

--- The paraphrase table METEOR is given (-a): `paraphrase` when it is a string, else
-- paraphrase-en.gz beside the jar when it is there (the reference's wrapper keeps the two side by
-- side), else nil (the jar's built-in data).
function M.meteor_paraphrase(jar, paraphrase)
  if type(paraphrase) == "string" then return paraphrase end
  if type(jar) ~= "string" then return nil end
  local beside = (jar:match("^(.*)/[^/]*$") or ".") .. "/paraphrase-en.gz"
  local f = io.open(beside, "rb")
  if not f then return nil end
  f:close()
  return beside
end

--- The METEOR command line of the reference's wrapper (eval/pycocoevalcap/meteor/meteor.py):
-- LC_ALL=C, 2 GB of heap, stdio mode, English, normalised, with the paraphrase table.
function M.meteor_command(jar, paraphrase)
  local cmd = "LC_ALL=C java -jar -Xmx2G " .. shell_quote(jar) .. " - - -stdio -l en -norm"
  local table_path = M.meteor_paraphrase(jar, paraphrase)
  if table_path then cmd = cmd .. " -a " .. shell_quote(table_path) end
  return cmd
end

--- One SCORE line as the wrapper's _stat writes it: '|||' removed from the hypothesis, then every
-- run of whitespace in the whole line made one space.
function M.meteor_score_line(refs, hyp)
  local line = "SCORE ||| " .. table.concat(refs, " ||| ") .. " ||| " .. hyp:gsub("|||", "")
  return (line:gsub("%s+", " "))
end

--- METEOR 1.5 through its -stdio protocol as the reference's wrapper drives it
-- (M.meteor_command): one SCORE line per sentence, then one EVAL line with all statistics.
-- Returns the corpus score and per-sentence scores, or nil and a reason when Java or the jar is
-- missing. paraphrase: the table's path (default: M.meteor_paraphrase).
function M.meteor(gts, res, jar, paraphrase)
  if not M.meteor_available(jar) then return nil, "METEOR needs java and a meteor-1.5.jar (skipped)" end
  local base = M.meteor_command(jar, paraphrase)
  local function run(lines)
    local tmp = temp_file(table.concat(lines, "\n") .. "\n", "meteor")
    local p = assert(io.popen(base .. " < " .. shell_quote(tmp) .. " 2>/dev/null", "r"))
    local out = {}
    for line in p:lines() do out[#out + 1] = line end
    p:close()
    os.remove(tmp)
    return out
  end
  local score_lines = {}
  for i = 1, #gts do score_lines[i] = M.meteor_score_line(gts[i], res[i]) end
  local stats = run(score_lines)
  if #stats < #gts then return nil, "METEOR returned " .. #stats .. " statistics lines for " .. #gts .. " sentences" end
  local evals = {}
  for i = 1, #gts do evals[i] = score_lines[i] end
  evals[#evals + 1] = "EVAL ||| " .. table.concat(stats, " ||| ", 1, #gts)
  local out = run(evals)
  local per = {}
  for i = 1, #gts do per[i] = tonumber(out[#gts + i]) end
  local final = tonumber(out[2 * #gts + 1])
  if final == nil then return nil, "METEOR produced no final score" end
  return final, per
end

-- --------------------------------------------------------------------------------------------
-- TVC
-- --------------------------------------------------------------------------------------------

--- Every metric from tokenised text. gts: array of arrays of tokenised references, res: array of
-- tokenised hypotheses. opts.meteor_jar enables METEOR. Returns scores (fractions, not x100:
-- Bleu_1..Bleu_4, ROUGE_L, CIDEr, METEOR when run) and per-sentence scores with the same keys.
function M.score_tokenized(gts, res, opts)
  opts = opts or {}
  local scores, per = {}, {}
  local b, bper = M.bleu(gts, res, 4)
  for k = 1, 4 do
    scores["Bleu_" .. k], per["Bleu_" .. k] = b[k], bper[k]
  end
  if opts.meteor_jar then
    local m, mper = M.meteor(gts, res, opts.meteor_jar, opts.meteor_paraphrase)
    if m then scores.METEOR, per.METEOR = m, mper end
  end
  scores.ROUGE_L, per.ROUGE_L = M.rouge_l(gts, res)
  scores.CIDEr, per.CIDEr = M.cider(gts, res)
  return scores, per
end

--- TVCEval: references array of {clip_id =, descs = {"caption", ...}}, predictions array of
-- {clip_id =, desc = "caption"} (or {descs = {{desc = ...}}}). Clips are scored in reference
-- order; predictions must cover exactly the reference clips. opts: ptb_jar (tokenise with the
-- Java PTBTokenizer), meteor_jar, tokenize (a function text -> tokens string).
-- Returns scores x100 (as the reference reports them), per-clip unscaled scores, the tokenised
-- references and hypotheses, and the clip order.
function M.tvc_eval(references, predictions, opts)
  opts = opts or {}
  if type(references) ~= "table" or type(predictions) ~= "table" then
    error(string.format("tvc_eval: references and predictions must be arrays, got %s and %s", type(references),
      type(predictions)), 0)
  end
  -- no clip at all: CIDEr-D's document frequencies would divide by zero (the reference fails too)
  if #references == 0 then error("tvc_eval: no reference clips to score", 0) end
  local order, refs_by, hyp_by = {}, {}, {}
  for k, r in ipairs(references) do
    if type(r) ~= "table" or r.clip_id == nil or type(r.descs) ~= "table" then
      error(string.format("tvc_eval: reference %d must be {clip_id =, descs = {...}}", k), 0)
    end
    if refs_by[r.clip_id] == nil then order[#order + 1] = r.clip_id end
    local list = {}
    for i, d in ipairs(r.descs) do
      local text = type(d) == "table" and d.desc or d
      list[i] = M.remove_nonascii(util.strip(text))
    end
    refs_by[r.clip_id] = list
  end
  local npred = 0
  for _, p in ipairs(predictions) do
    local text = p.desc or (p.descs and (type(p.descs[1]) == "table" and p.descs[1].desc or p.descs[1]))
    if type(text) ~= "string" then
      error("tvc_eval: prediction for clip " .. tostring(p.clip_id) .. " has no desc", 0)
    end
    if hyp_by[p.clip_id] == nil then npred = npred + 1 end
    hyp_by[p.clip_id] = M.remove_nonascii(util.strip(text))
  end
  for _, id in ipairs(order) do
    if hyp_by[id] == nil then error("tvc_eval: no prediction for clip " .. tostring(id), 0) end
  end
  if npred ~= #order then
    error(string.format("tvc_eval: %d predicted clips for %d reference clips", npred, #order), 0)
  end
  local gts, res = {}, {}
  if opts.ptb_jar then
    local flat = {}
    for _, id in ipairs(order) do for _, r in ipairs(refs_by[id]) do flat[#flat + 1] = r end end
    for _, id in ipairs(order) do flat[#flat + 1] = hyp_by[id] end
    local tok = M.ptb_tokenize_java(flat, opts.ptb_jar)
    local j = 0
    for i, id in ipairs(order) do
      gts[i] = {}
      for r = 1, #refs_by[id] do j = j + 1; gts[i][r] = tok[j] end
    end
    for i = 1, #order do j = j + 1; res[i] = tok[j] end
  else
    local tokenize = opts.tokenize or M.ptb_tokenize
    for i, id in ipairs(order) do
      gts[i] = {}
      for r, text in ipairs(refs_by[id]) do gts[i][r] = tokenize(text) end
      res[i] = tokenize(hyp_by[id])
    end
  end
  local scores, per = M.score_tokenized(gts, res, opts)
  local x100 = {}
  for k, v in pairs(scores) do x100[k] = v * 100 end
  return {scores_x100 = x100, per_clip = per, refs_tokenized = gts, hyps_tokenized = res, clip_order = order}
end

return M
