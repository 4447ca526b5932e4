--- hero.spelling: the known name a misspelt one was most likely meant to be.
--
-- Configs are read as the reference reads them, where any key is accepted and one it does not use
-- is ignored. A misspelt key ("num_hiden_layers") would then leave the default in place without a
-- word; a key one or two edits away from a known one is taken for such a slip.
local M = {}

--- The edit distance (insertions, deletions, substitutions, adjacent transpositions) between a and
-- b, or limit + 1 once it exceeds limit.
function M.distance(a, b, limit)
  limit = limit or math.huge
  local n, m = #a, #b
  if math.abs(n - m) > limit then return limit + 1 end
  local prev2, prev = {}, {}
  for j = 0, m do prev[j] = j end
  for i = 1, n do
    local cur = {[0] = i}
    local best = i
    for j = 1, m do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local d = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        d = math.min(d, prev2[j - 2] + 1)
      end
      cur[j] = d
      if d < best then best = d end
    end
    if best > limit then return limit + 1 end
    prev2, prev = prev, cur
  end
  return prev[m]
end

--- The name of `known` (a list, or a table whose keys are the names) closest to `name` within
-- `limit` edits (2; 1 for names of 4 characters or fewer), or nil when `name` is known itself or
-- nothing is that close. Ties go to the name first in sorted order.
function M.near_miss(name, known, limit)
  if type(name) ~= "string" then return nil end
  local names = {}
  if #known > 0 then
    for _, k in ipairs(known) do names[#names + 1] = k end
  else
    for k in pairs(known) do names[#names + 1] = k end
  end
  table.sort(names)
  limit = limit or (#name <= 4 and 1 or 2)
  local best, best_d
  for _, k in ipairs(names) do
    if k == name then return nil end
    local d = M.distance(name, k, limit)
    if d <= limit and (best_d == nil or d < best_d) then best, best_d = k, d end
  end
  return best
end

return M
