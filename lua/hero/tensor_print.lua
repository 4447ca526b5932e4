--- Torch-style printing of tensors: tostring(t), print(t) and t:print().
--
-- Layout (as in Torch7):
--   * one shared format for every printed value: integers when all values are whole numbers,
--     fixed point "%.4f" when they span few magnitudes (with a shared scale line such as
--     "1e-03 *" when they are all very small or very large), scientific "%.4e" otherwise;
--   * vectors print one value per line, matrices one row per line, wrapped into
--     "Columns 1 to 9" blocks so that no line is longer than 80 characters;
--   * tensors of 3 or more dimensions print as matrices headed "(1,2,.,.) =";
--   * tensors with more than 1000 elements are summarised: every dimension longer than 6 keeps
--     its first 3 and last 3 entries with "..." between (the tensor is narrowed before any value
--     is read, so printing a huge tensor reads only what is shown);
--   * a footer "[hero.Tensor f32 cpu of size 2x3]" (0-dim: "[hero.Tensor f32 cpu scalar]").
local M = {}

--- Printing options: require("hero.tensor_print").options.threshold = 10000, etc.
M.options = {
  threshold = 1000, -- tensors with more elements than this are summarised
  edgeitems = 3,    -- entries kept at each end of a summarised dimension
  linewidth = 80,   -- matrices are wrapped into column blocks no wider than this
}

-- Marks an omitted run of entries in a summarised dimension.
local GAP = setmetatable({}, {__tostring = function() return "..." end})

local function footer(t, sizes)
  if #sizes == 0 then return string.format("[hero.Tensor %s %s scalar]", t:dtype(), t:device()) end
  return string.format("[hero.Tensor %s %s of size %s]", t:dtype(), t:device(), table.concat(sizes, "x"))
end

--- Positions shown along a dimension of length n: all of them, or the first and last `edgeitems`
-- with GAP between.
local function kept_positions(n, summarise)
  local edge = M.options.edgeitems
  local out = {}
  if summarise and n - edge > edge then -- not n > 2 * edge: that overflows for a huge edgeitems
    for i = 1, edge do out[#out + 1] = i end
    out[#out + 1] = GAP
    for i = n - edge + 1, n do out[#out + 1] = i end
  else
    for i = 1, n do out[#out + 1] = i end
  end
  return out
end

--- Nested Lua tables of the values to print, with GAP where entries are left out. Every
-- combination of head/tail ranges over the summarised dimensions is one narrowed view read with
-- a single totable, so the cost depends on what is shown, not on the tensor's size.
local function gather_summary(t, sizes, read)
  local edge, ndim = M.options.edgeitems, #sizes
  local ranges = {}
  for d = 1, ndim do
    if sizes[d] - edge > edge then
      ranges[d] = {{1, edge}, {sizes[d] - edge + 1, edge}}
    else
      ranges[d] = {{1, sizes[d]}}
    end
  end
  local pieces = {}
  local function read_pieces(view, d, key)
    if d > ndim then
      pieces[key] = read(view)
      return
    end
    for k, r in ipairs(ranges[d]) do
      local sub = view:narrow(d, r[1], r[2])
      read_pieces(sub, d + 1, key .. k)
      sub:free()
    end
  end
  read_pieces(t, 1, "")
  -- stitch the pieces together: position j of range k along dimension d
  local local_index = {}
  local function build(d, key)
    if d > ndim then
      local v = pieces[key]
      for i = 1, ndim do v = v[local_index[i]] end
      return v
    end
    local out = {}
    for k, r in ipairs(ranges[d]) do
      if k > 1 then out[#out + 1] = GAP end
      for j = 1, r[2] do
        local_index[d] = j
        out[#out + 1] = build(d + 1, key .. k)
      end
    end
    return out
  end
  return build(1, "")
end

local function gather(t, sizes, summarise, read)
  if summarise then return gather_summary(t, sizes, read) end
  return read(t)
end

local function each_value(v, fn)
  if type(v) == "table" then
    if v ~= GAP then
      for i = 1, #v do each_value(v[i], fn) end
    end
  else
    fn(v)
  end
end

local function finite(v)
  return v == v and v ~= math.huge and v ~= -math.huge
end

local function format_special(v)
  if v ~= v then return "nan" elseif v == math.huge then return "inf" else return "-inf" end
end

--- Decimal exponent as Torch counts it: 1 for values in [1, 10), 0 for [0.1, 1), 3 for [100, 1000).
local function exponent(x)
  return math.floor(math.log(x, 10)) + 1
end

--- Picks one format for all values: returns a function value -> string and, for fixed point
-- with a shared scale, the scale.
local function choose_format(values, dtype, allow_scale)
  if dtype == "bool" then
    return tostring, nil
  end
  if dtype == "i64" or dtype == "i32" or dtype == "u8" then
    return function(v) return string.format("%d", v) end, nil
  end
  local all_int, max_abs, min_abs = true, 0, math.huge
  each_value(values, function(v)
    if finite(v) then
      local a = math.abs(v)
      if a > max_abs then max_abs = a end
      if a ~= 0 and a < min_abs then min_abs = a end
      if v ~= math.floor(v) then all_int = false end
    end
  end)
  local exp_max = max_abs == 0 and 1 or exponent(max_abs)
  local exp_min = min_abs == math.huge and 1 or exponent(min_abs)
  local fmt, scale
  if all_int then
    fmt = exp_max > 9 and "%.4e" or "%.0f"
  elseif exp_max - exp_min > 4 then
    fmt = "%.4e"
  elseif exp_max > 5 or exp_max < 0 then
    if allow_scale then
      fmt, scale = "%.4f", 10.0 ^ (exp_max - 1)
    else
      fmt = "%.4e"
    end
  else
    fmt = "%.4f"
  end
  local function format(v)
    if not finite(v) then return format_special(v) end
    if scale then v = v / scale end
    return string.format(fmt, v)
  end
  return format, scale
end

--- Converts the nested values to nested strings; returns them with the cell width (the longest
-- string, plus a column for the sign when no value is negative, so that columns read as in Torch).
local function to_strings(values, format)
  local longest, negative = 0, false
  local function convert(v)
    if v == GAP then return GAP end
    if type(v) == "table" then
      local out = {}
      for i = 1, #v do out[i] = convert(v[i]) end
      return out
    end
    local s = format(v)
    if #s > longest then longest = #s end
    if s:sub(1, 1) == "-" then negative = true end
    return s
  end
  local strings = convert(values)
  return strings, negative and longest or longest + 1
end

local function pad(s, width)
  return string.rep(" ", width - #s) .. s
end

--- Lines of a matrix of strings (rows may be GAP, cells may be GAP), wrapped into column blocks.
-- `columns` are the column positions shown (numbers or GAP).
local function matrix_text(rows, columns, width)
  local gap_width = math.max(width, 3)
  local function cell_width(j) return columns[j] == GAP and gap_width or width end
  local blocks = {}
  local first = 1
  while first <= #columns do
    local last, used = first, cell_width(first)
    while last < #columns and used + 1 + cell_width(last + 1) <= M.options.linewidth do
      last = last + 1
      used = used + 1 + cell_width(last)
    end
    blocks[#blocks + 1] = {first, last}
    first = last + 1
  end
  local parts = {}
  for _, block in ipairs(blocks) do
    local lines = {}
    if #blocks > 1 then
      local lo, hi
      for j = block[1], block[2] do
        if columns[j] ~= GAP then
          lo = lo or columns[j]
          hi = columns[j]
        end
      end
      if lo == nil then
        lines[1] = "Columns ..."
      elseif lo == hi then
        lines[1] = string.format("Column %d", lo)
      else
        lines[1] = string.format("Columns %d to %d", lo, hi)
      end
    end
    for _, row in ipairs(rows) do
      if row == GAP then
        lines[#lines + 1] = pad("...", cell_width(block[1]))
      else
        local cells = {}
        for j = block[1], block[2] do
          cells[#cells + 1] = row[j] == GAP and pad("...", gap_width) or pad(row[j], width)
        end
        lines[#lines + 1] = table.concat(cells, " ")
      end
    end
    parts[#parts + 1] = table.concat(lines, "\n")
  end
  return table.concat(parts, "\n\n")
end

--- The body (everything above the footer) for a tensor with at least one dimension.
local function body_text(strings, sizes, summarise, width)
  local ndim = #sizes
  if ndim == 1 then
    local lines = {}
    for i, s in ipairs(strings) do lines[i] = s == GAP and pad("...", math.max(width, 3)) or pad(s, width) end
    return table.concat(lines, "\n")
  end
  local columns = kept_positions(sizes[ndim], summarise)
  if ndim == 2 then return matrix_text(strings, columns, width) end
  local parts = {}
  local index = {}
  local function walk(node, depth)
    if depth == ndim - 1 then
      local head = {}
      for i = 1, #index do head[i] = tostring(index[i]) end
      parts[#parts + 1] = "(" .. table.concat(head, ",") .. ",.,.) =\n" .. matrix_text(node, columns, width)
      return
    end
    local positions = kept_positions(sizes[depth], summarise)
    for k, i in ipairs(positions) do
      if i == GAP then
        parts[#parts + 1] = "..."
      else
        index[depth] = i
        walk(node[k], depth + 1)
      end
    end
    index[depth] = nil
  end
  walk(strings, 1)
  return table.concat(parts, "\n\n")
end

--- Reads a (small, already narrowed) tensor's values, copying to the CPU when it lives elsewhere.
local function reader(t)
  if t:device() == "cpu" then
    return function(v) return v:totable() end
  end
  return function(v)
    local c = v:to("cpu")
    local values = c:totable()
    c:free()
    return values
  end
end

--- Calls fn(...). For a tensor on a device this build cannot read, a failure leaves only the
-- footer to print instead of raising inside tostring; on the CPU errors propagate as usual.
local function attempt(t, fn, ...)
  if t:device() == "cpu" then return true, fn(...) end
  return pcall(fn, ...)
end

-- The options as the printer reads them: a value set to nil, a negative count or a string failed
-- deep inside the printer.
local function check_options()
  local o = M.options
  if type(o) ~= "table" then
    error("tensor_print.options must be a table (threshold, edgeitems, linewidth), got " .. type(o), 3)
  end
  for key, least in pairs {threshold = 0, edgeitems = 1, linewidth = 1} do
    local v = o[key]
    if math.type(v) ~= "integer" or v < least then
      error(string.format("tensor_print.options.%s must be an integer >= %d, got %s", key, least, tostring(v)), 3)
    end
  end
end

--- The text tostring(t) gives.
function M.tostring(t)
  check_options()
  if t:is_freed() then return "[hero.Tensor (freed)]" end
  local sizes = t:size()
  local foot = footer(t, sizes)
  local numel = 1
  for _, n in ipairs(sizes) do numel = numel * n end
  if numel == 0 then return foot end
  local read = reader(t)
  if #sizes == 0 then
    local ok, value = attempt(t, read, t)
    if not ok then return foot end
    local format = choose_format(value, t:dtype(), false)
    local s = format(value)
    return pad(s, s:sub(1, 1) == "-" and #s or #s + 1) .. "\n" .. foot
  end
  local summarise = numel > M.options.threshold
  local ok, values = attempt(t, gather, t, sizes, summarise, read)
  if not ok then return foot end
  local format, scale = choose_format(values, t:dtype(), true)
  local strings, width = to_strings(values, format)
  local body = body_text(strings, sizes, summarise, width)
  if scale then body = string.format("%.0e *\n", scale) .. body end
  return body .. "\n" .. foot
end

function M.install(methods, metatable)
  metatable.__tostring = M.tostring
  --- Prints the tensor (same text as print(t)).
  methods.print = function(t) print(M.tostring(t)) end
end

return M
