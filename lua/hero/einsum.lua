--- hero.einsum(equation, a, b, ...): torch.einsum, built from the differentiable tensor ops.
-- Subscripts are letters (a-z, A-Z); "..." stands for the dimensions no letter names, aligned from
-- the right and broadcast across operands. Without "->" the output holds the "..." dimensions, then
-- the letters used once, in alphabetical order (capitals first). A letter repeated in one operand
-- takes its diagonal; a dimension of size 1 broadcasts against the same letter's other sizes. The
-- operands are contracted left to right, each pair as one bmm (batch letters shared and still
-- needed, contracted letters shared and no longer needed), letters no longer needed anywhere being
-- summed out first; so gradients flow through permute, reshape, expand, masked_fill, sum and bmm.
local M = {}

local function fail(msg, ...) error("einsum: " .. string.format(msg, ...), 4) end

-- The labels of one operand's subscripts: letters as themselves, the "..." dimensions as "1".."k"
-- counted from the right ("1" is the last of them), so that they align across operands.
local function parse_operand(text, pos0, ndim, k)
  local letters, ell = {}, nil
  local i = 1
  while i <= #text do
    local c = text:sub(i, i)
    if c == "." then
      if text:sub(i, i + 2) ~= "..." then
        fail("found '.' at index %d of the equation that is not part of an ellipsis '...'", pos0 + i - 1)
      end
      if ell then fail("operand %d has more than one ellipsis '...'", k) end
      ell = #letters + 1
      i = i + 3
    elseif c:match("^[a-zA-Z]$") then
      letters[#letters + 1] = c
      i = i + 1
    else
      fail("invalid subscript '%s' at index %d of the equation; subscripts are letters a-z and A-Z", c, pos0 + i - 1)
    end
  end
  if ell then
    local n_ell = ndim - #letters
    if n_ell < 0 then
      fail("operand %d has %d dimensions, fewer than the %d subscripts given for it", k, ndim, #letters)
    end
    local labels = {}
    for j = 1, ell - 1 do labels[#labels + 1] = letters[j] end
    for j = n_ell, 1, -1 do labels[#labels + 1] = tostring(j) end
    for j = ell, #letters do labels[#labels + 1] = letters[j] end
    return labels, n_ell
  end
  if #letters ~= ndim then
    fail("operand %d has %d dimensions but the equation gives %d subscripts for it (and no ellipsis '...')",
      k, ndim, #letters)
  end
  return letters, nil
end

local function index_of(list, v)
  for i, x in ipairs(list) do if x == v then return i end end
  return nil
end

-- t with every label repeated inside it reduced to its diagonal (one dimension kept, the entries
-- off the diagonal masked to 0 and summed away, which also keeps their NaNs and infinities out).
local function take_diagonals(hero, t, labels, k)
  local i = 1
  while i <= #labels do
    local j = nil
    for m = i + 1, #labels do if labels[m] == labels[i] then j = m; break end end
    if j then
      local n = t:size(i)
      if t:size(j) ~= n then
        fail("subscript %s is repeated in operand %d with sizes %d and %d", labels[i], k, n, t:size(j))
      end
      local shape = {}
      for d = 1, #labels do shape[d] = 1 end
      shape[i], shape[j] = n, n
      local off = hero.eye(n, {dtype = "bool", device = t:device()}):logical_not():view(shape)
      t = t:masked_fill(off, 0):sum(j):to(t:dtype())
      table.remove(labels, j)
    else
      i = i + 1
    end
  end
  return t, labels
end

-- Sums t over the labels not in keep (a set), returning the new tensor and labels (in t's dtype:
-- integer sums come out as i64, and both operands of bmm must have one dtype).
local function sum_unneeded(t, labels, keep)
  local dims, kept = {}, {}
  for d, l in ipairs(labels) do
    if keep[l] then kept[#kept + 1] = l else dims[#dims + 1] = d end
  end
  if #dims == 0 then return t, labels end
  return t:sum(dims):to(t:dtype()), kept
end

-- t (with labels) permuted to the labels of order, each expanded to sizes[label], reshaped to the
-- groups' products: groups is a list of label lists, one output dimension each.
local function arrange(t, labels, groups, sizes)
  local perm, shape, flat = {}, {}, {}
  for _, g in ipairs(groups) do
    local prod = 1
    for _, l in ipairs(g) do
      perm[#perm + 1] = index_of(labels, l)
      shape[#shape + 1] = sizes[l]
      prod = prod * sizes[l]
    end
    flat[#flat + 1] = prod
  end
  if #perm > 0 then t = t:permute(table.unpack(perm)):expand(shape) end
  return t:reshape(flat)
end

function M.install(hero)
  function hero.einsum(equation, ...)
    if type(equation) ~= "string" then
      error("einsum: argument #1 must be the equation string, got " .. type(equation), 2)
    end
    local ops = {...}
    if #ops == 1 and type(ops[1]) == "table" and not hero.is_tensor(ops[1]) then ops = ops[1] end
    for i = 1, #ops do
      if not hero.is_tensor(ops[i]) then
        error(string.format("einsum: operand %d must be a hero.Tensor, got %s", i, type(ops[i])), 2)
      end
    end
    local eq = equation:gsub("%s", "")
    local lhs, rhs = eq, nil
    local arrow = eq:find("->", 1, true)
    if arrow then
      lhs, rhs = eq:sub(1, arrow - 1), eq:sub(arrow + 2)
      if rhs:find("->", 1, true) or rhs:find("-", 1, true) or rhs:find(">", 1, true) then
        error("einsum: the equation has more than one '->'", 2)
      end
    elseif eq:find("[-<>]") then
      error("einsum: a '-' or '>' of the equation is not part of '->'", 2)
    end
    local texts, starts = {}, {}
    local pos = 1
    for piece in (lhs .. ","):gmatch("([^,]*),") do
      texts[#texts + 1], starts[#starts + 1] = piece, pos
      pos = pos + #piece + 1
    end
    if #texts ~= #ops then
      error(string.format("einsum: the equation names %d operands but %d tensors were given", #texts, #ops), 2)
    end
    -- labels and sizes of every operand; a size 1 broadcasts against the label's other sizes
    local labels, tensors, sizes, count, max_ell = {}, {}, {}, {}, 0
    for k = 1, #ops do
      local l, n_ell = parse_operand(texts[k], starts[k], ops[k]:dim(), k)
      if n_ell and n_ell > max_ell then max_ell = n_ell end
      -- implicit output counts the subscripts as written ("ii" is a trace, not a diagonal)
      for _, lab in ipairs(l) do count[lab] = (count[lab] or 0) + 1 end
      local t
      t, l = take_diagonals(hero, ops[k], l, k)
      labels[k], tensors[k] = l, t
      for d, lab in ipairs(l) do
        local s = t:size(d)
        local prev = sizes[lab]
        if prev == nil or prev == 1 then sizes[lab] = s
        elseif s ~= 1 and s ~= prev then
          local name = lab:match("%d") and "the ellipsis dimension " .. lab .. " from the right" or "subscript " .. lab
          error(string.format("einsum: %s has size %d in operand %d, which does not broadcast with size %d", name, s,
            k, prev), 2)
        end
      end
    end
    local out = {}
    if rhs then
      local i, ell_seen = 1, false
      while i <= #rhs do
        local c = rhs:sub(i, i)
        if rhs:sub(i, i + 2) == "..." and not ell_seen then
          ell_seen = true
          for j = max_ell, 1, -1 do out[#out + 1] = tostring(j) end
          i = i + 3
        elseif c:match("^[a-zA-Z]$") then
          out[#out + 1] = c
          i = i + 1
        else
          error(string.format("einsum: invalid output subscript '%s' at index %d of the equation%s", c,
            #lhs + 2 + i, c == "." and " (one ellipsis '...' at most)" or ""), 2)
        end
      end
      local seen = {}
      for _, l in ipairs(out) do
        if seen[l] then error("einsum: output subscript " .. l .. " appears more than once in the output", 2) end
        seen[l] = true
        if not sizes[l] and not l:match("%d") then
          error("einsum: output subscript " .. l .. " does not appear in the equation for any input operand", 2)
        end
      end
    else
      for j = max_ell, 1, -1 do out[#out + 1] = tostring(j) end
      local once = {}
      for l, c in pairs(count) do if c == 1 and not l:match("%d") then once[#once + 1] = l end end
      table.sort(once)
      for _, l in ipairs(once) do out[#out + 1] = l end
    end
    -- ellipsis dimensions no operand has (fewer than max_ell in this one) are absent: size 1
    for _, l in ipairs(out) do if not sizes[l] then sizes[l] = 1 end end
    local in_out = {}
    for _, l in ipairs(out) do in_out[l] = true end
    -- labels needed after operand k: in the output or in a later operand
    local function needed_after(k)
      local keep = {}
      for l in pairs(in_out) do keep[l] = true end
      for j = k + 1, #tensors do for _, l in ipairs(labels[j]) do keep[l] = true end end
      return keep
    end
    local acc, acc_labels = sum_unneeded(tensors[1], labels[1], needed_after(1))
    for k = 2, #tensors do
      local keep = needed_after(k)
      local keep_b = {}
      for l in pairs(keep) do keep_b[l] = true end
      for _, l in ipairs(acc_labels) do keep_b[l] = true end
      local b, b_labels = sum_unneeded(tensors[k], labels[k], keep_b)
      -- letters only in one operand and not needed later were just summed out of it
      local keep_a = {}
      for l in pairs(keep) do keep_a[l] = true end
      for _, l in ipairs(b_labels) do keep_a[l] = true end
      acc, acc_labels = sum_unneeded(acc, acc_labels, keep_a)
      local in_b = {}
      for _, l in ipairs(b_labels) do in_b[l] = true end
      local batch, free_a, free_b, contract = {}, {}, {}, {}
      for _, l in ipairs(acc_labels) do
        if in_b[l] then
          if keep[l] then batch[#batch + 1] = l else contract[#contract + 1] = l end
        else
          free_a[#free_a + 1] = l
        end
      end
      local in_a = {}
      for _, l in ipairs(acc_labels) do in_a[l] = true end
      for _, l in ipairs(b_labels) do if not in_a[l] then free_b[#free_b + 1] = l end end
      local x = arrange(acc, acc_labels, {batch, free_a, contract}, sizes)
      local y = arrange(b, b_labels, {batch, contract, free_b}, sizes)
      local prod = hero.bmm(x, y)
      local shape, new_labels = {}, {}
      for _, group in ipairs {batch, free_a, free_b} do
        for _, l in ipairs(group) do
          shape[#shape + 1] = sizes[l]
          new_labels[#new_labels + 1] = l
        end
      end
      acc, acc_labels = prod:reshape(shape), new_labels
    end
    acc, acc_labels = sum_unneeded(acc, acc_labels, in_out)
    -- output labels no operand holds are ellipsis dimensions of size 1; the rest is a permutation
    local shape, perm = {}, {}
    for _, l in ipairs(out) do
      shape[#shape + 1] = sizes[l]
      local d = index_of(acc_labels, l)
      if d then perm[#perm + 1] = d end
    end
    if #perm > 0 then acc = acc:permute(table.unpack(perm)) end
    if #out == 0 then return acc:reshape({}) end
    return acc:reshape(shape)
  end
end

return M
