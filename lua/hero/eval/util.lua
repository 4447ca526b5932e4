--- Number helpers shared by the evaluation modules: float32 rounding, Python-compatible rounding
-- and float printing, NumPy's pairwise summation and a stable sort. They exist so that the metrics
-- reproduce the reference evaluation (NumPy float32 arithmetic, Python round/str) bit for bit.
local M = {}

local spack, sunpack = string.pack, string.unpack

--- Rounds a Lua number to the nearest float32 (ties to even), as a C cast does. One float32
-- operation on float32 inputs equals the double result rounded once to float32 (53 >= 2*24 + 2
-- bits), so f32(a - b) etc. reproduce NumPy's float32 arithmetic exactly.
function M.f32(x)
  return (sunpack("<f", spack("<f", x)))
end

--- Python's round(x, ndigits) for floats: the exact binary value rounded half-to-even, which is
-- what C's printf does as well.
function M.pyround(x, ndigits)
  if x ~= x or x == math.huge or x == -math.huge then return x end
  return tonumber(string.format("%." .. (ndigits or 0) .. "f", x)) + 0.0
end

--- NumPy's round(x, ndigits) of a float64 (np.round / round(np.float64)): x * 10^n rounded half
-- to even, divided by 10^n. It differs from Python's round of the exact binary value in the
-- last digit now and then: round(0.025, 2) is 0.03 in Python, np.round(0.025, 2) is 0.02.
function M.npround(x, ndigits)
  if x ~= x or x == math.huge or x == -math.huge then return x end
  local scale = 10.0 ^ (ndigits or 0)
  local y = x * scale
  local f = math.floor(y)
  local d = y - f
  if d > 0.5 or (d == 0.5 and f % 2 ~= 0) then f = f + 1 end
  return f / scale
end

--- Python's repr()/str() of a float (shortest round-tripping digits; fixed notation for
-- 1e-4 <= |x| < 1e16, else d.ddde+XX), used for metric names ("0.5-r1") and ratio strings.
function M.pyrepr(x)
  if math.type(x) == "integer" then return tostring(x) end
  if x ~= x then return "nan" end
  if x == math.huge then return "inf" elseif x == -math.huge then return "-inf" end
  if x == 0 then return (1 / x < 0) and "-0.0" or "0.0" end
  local s
  for p = 1, 17 do
    s = string.format("%." .. (p - 1) .. "e", x)
    if tonumber(s) == x then break end
  end
  local sign, d1, rest, ex = s:match("^(-?)(%d)%.?(%d*)e([-+]%d+)$")
  local digits = (d1 .. rest):gsub("0+$", "")
  if digits == "" then digits = "0" end
  local e = tonumber(ex)
  if e >= -4 and e < 16 then
    local out
    if e >= 0 then
      if #digits <= e + 1 then
        out = digits .. string.rep("0", e + 1 - #digits) .. ".0"
      else
        out = digits:sub(1, e + 1) .. "." .. digits:sub(e + 2)
      end
    else
      out = "0." .. string.rep("0", -e - 1) .. digits
    end
    return sign .. out
  end
  local mant = digits:sub(1, 1)
  if #digits > 1 then mant = mant .. "." .. digits:sub(2) end
  return string.format("%s%se%s%02d", sign, mant, e < 0 and "-" or "+", math.abs(e))
end

-- NumPy's pairwise summation of a contiguous float64 array (blocks of 128, 8 accumulators).
local function pairwise(a, lo, n)
  if n < 8 then
    local res = 0.0
    for i = lo, lo + n - 1 do res = res + a[i] end
    return res
  elseif n <= 128 then
    local r = {}
    for j = 0, 7 do r[j] = a[lo + j] + 0.0 end
    local i = 8
    while i < n - (n % 8) do
      for j = 0, 7 do r[j] = r[j] + a[lo + i + j] end
      i = i + 8
    end
    local res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n do
      res = res + a[lo + i]
      i = i + 1
    end
    return res
  end
  local n2 = n // 2
  n2 = n2 - n2 % 8
  return pairwise(a, lo, n2) + pairwise(a, lo + n2, n - n2)
end

--- np.sum of a Lua array of numbers (float64), in NumPy's order of additions.
function M.np_sum(a)
  return pairwise(a, 1, #a)
end

--- np.mean of a Lua array (NaN for an empty array, as NumPy).
function M.np_mean(a)
  if #a == 0 then return 0 / 0 end
  return M.np_sum(a) / #a
end

--- Stable sort of an array in place by key(e), descending when desc (Python's sorted(...,
-- reverse=True) keeps equal elements in their original order too).
function M.stable_sort(arr, key, desc)
  local deco = {}
  for i = 1, #arr do deco[i] = {key(arr[i]), i, arr[i]} end
  table.sort(deco, function(a, b)
    if a[1] ~= b[1] then
      if desc then return a[1] > b[1] end
      return a[1] < b[1]
    end
    return a[2] < b[2]
  end)
  for i = 1, #deco do arr[i] = deco[i][3] end
  return arr
end

--- Python's str.strip() for ASCII whitespace.
--- Checks a corpus metric's arguments: gts (references per sentence) and res (hypotheses) are
-- arrays of the same length, at least one sentence (CIDEr-D's document frequencies divide by it).
function M.check_corpus(who, gts, res)
  if type(gts) ~= "table" or type(res) ~= "table" then
    error(string.format("%s: references and hypotheses must be arrays, got %s and %s", who, type(gts), type(res)), 3)
  end
  if #gts ~= #res then
    error(string.format("%s: references and hypotheses differ in number (%d and %d)", who, #gts, #res), 3)
  end
  if #gts == 0 then error(who .. ": no sentence to score", 3) end
  -- a sentence with no reference has no score (ROUGE-L gave NaN, BLEU a Lua error)
  for i, refs in ipairs(gts) do
    if type(refs) ~= "table" or #refs == 0 then
      error(string.format("%s: sentence %d has no reference (its references must be a non-empty array, got %s)", who,
        i, type(refs) == "table" and "an empty one" or type(refs)), 3)
    end
  end
end

function M.strip(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

--- Shallow copy of an array, optionally only its first n entries.
function M.head(arr, n)
  local out = {}
  n = math.min(n or #arr, #arr)
  for i = 1, n do out[i] = arr[i] end
  return out
end

return M
