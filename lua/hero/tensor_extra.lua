--- Small tensor conveniences that are pure composition of C ops.
local M = {}

-- The view, shape and copy methods that are functions too (hero.reshape(t, 2, 3) is t:reshape(2, 3)),
-- as torch.reshape is Tensor.reshape: the same C functions, which take the tensor first.
local ALSO_FUNCTIONS = {"narrow", "view", "reshape", "transpose", "permute", "select", "squeeze", "unsqueeze",
                        "expand", "contiguous", "clone", "detach", "t", "fill_", "copy_"}

function M.install(hero, methods, _metatable)
  for _, name in ipairs(ALSO_FUNCTIONS) do
    if hero[name] == nil and methods[name] ~= nil then hero[name] = methods[name] end
  end
  --- Tensor of the same shape, dtype and device filled with zeros/ones/a value; opts (dtype =,
  -- device =) replace t's, and the creation function refuses any other key.
  local function like(t, who, opts)
    if not hero.is_tensor(t) then error(string.format("%s: expected a hero.Tensor, got %s", who, type(t)), 3) end
    if opts ~= nil and type(opts) ~= "table" then
      error(string.format("%s: options must be a table (dtype, device), got %s", who, type(opts)), 3)
    end
    local o = {dtype = t:dtype(), device = t:device()}
    for k, v in pairs(opts or {}) do o[k] = v end
    return o
  end
  local function shape_of(t, shape, who)
    if shape == nil then return t:size() end
    if type(shape) ~= "table" then
      error(string.format("%s: the shape must be a table of sizes such as {2, 3}, got %s", who, type(shape)), 3)
    end
    return shape
  end
  function methods.new_zeros(t, shape)
    local o = like(t, "new_zeros")
    return hero.zeros(shape_of(t, shape, "new_zeros"), o)
  end
  function methods.new_ones(t, shape)
    local o = like(t, "new_ones")
    return hero.ones(shape_of(t, shape, "new_ones"), o)
  end
  function hero.zeros_like(t, opts) local o = like(t, "zeros_like", opts); return hero.zeros(t:size(), o) end
  function hero.ones_like(t, opts) local o = like(t, "ones_like", opts); return hero.ones(t:size(), o) end
  function hero.full_like(t, v, opts) local o = like(t, "full_like", opts); return hero.full(t:size(), v, o) end
  function hero.empty_like(t, opts) local o = like(t, "empty_like", opts); return hero.empty(t:size(), o) end
  M.install_math(hero, methods)
  require("hero.einsum").install(hero)
end

local function index_of_value(list, v)
  for i, x in ipairs(list) do if x == v then return i end end
  return nil
end

-- Largest finite value of each float dtype (nan_to_num's defaults for the infinities).
local FLOAT_MAX = {f32 = 3.4028234663852886e38, f64 = 1.7976931348623157e308, f16 = 65504.0,
                   bf16 = 3.3895313892515355e38}

--- PyTorch functions that compose from the C ops (each is a function hero.f(t, ...) and a method
-- t:f(...); dims count from 1, negative from the end, as everywhere in hero). Gradients flow
-- through them where PyTorch has one.
function M.install_math(hero, methods)
  local function check(t, who)
    if not hero.is_tensor(t) then error(string.format("%s: expected a hero.Tensor, got %s", who, type(t)), 3) end
  end
  local function is_float(t) local d = t:dtype(); return FLOAT_MAX[d] ~= nil end
  -- An error from an op inside a composed function is raised again naming the function the user
  -- called, at the user's line (not "sum: ..." at a line of this file).
  local function both(name, fn)
    local prefix = name .. ":"
    local function composed(...)
      local r = table.pack(pcall(fn, ...))
      if r[1] then return table.unpack(r, 2, r.n) end
      local err = r[2]
      if type(err) ~= "string" then error(err, 0) end
      err = err:gsub("^[^\n]-%.lua:%d+: ", "")
      if err:sub(1, #prefix) ~= prefix then err = prefix .. " " .. err end
      error(err, 2)
    end
    hero[name] = composed
    methods[name] = composed
  end

  both("isnan", function(t)
    check(t, "isnan")
    return t:ne(t)
  end)
  both("isinf", function(t)
    check(t, "isinf")
    if not is_float(t) then return hero.zeros(t:size(), {dtype = "bool", device = t:device()}) end
    return t:detach():abs():eq(math.huge)
  end)
  both("isfinite", function(t)
    check(t, "isfinite")
    if not is_float(t) then return hero.ones(t:size(), {dtype = "bool", device = t:device()}) end
    local d = t:detach()
    return d:eq(d):logical_and(d:abs():ne(math.huge))
  end)
  --- nan_to_num(t[, nan = 0][, posinf = the dtype's largest][, neginf = its lowest])
  both("nan_to_num", function(t, nan, posinf, neginf)
    check(t, "nan_to_num")
    if not is_float(t) then return t:clone() end
    local big = FLOAT_MAX[t:dtype()]
    local d = t:detach()
    local out = hero.where(d:ne(d), nan or 0.0, t)
    out = hero.where(d:eq(math.huge), posinf or big, out)
    return hero.where(d:eq(-math.huge), neginf or -big, out)
  end)
  --- logsumexp(t, dim[, keepdim]): log(sum(exp(t))) along dim, shifted by the maximum so that it
  -- neither overflows nor underflows (rows of -inf give -inf, as PyTorch's)
  both("logsumexp", function(t, dim, keepdim)
    check(t, "logsumexp")
    if dim == nil then error("logsumexp: a dimension is required", 2) end
    local m
    if t:dim() > 0 and t:size(dim) == 0 then
      -- nothing to shift by (max has no identity); the empty sum gives log(0) = -inf, as torch
      local shape = t:size()
      shape[dim < 0 and dim + #shape + 1 or dim] = 1
      m = hero.zeros(shape, {dtype = t:dtype(), device = t:device()})
    else
      m = t:detach():max(dim, true)
      m = hero.where(m:abs():eq(math.huge), 0.0, m)
    end
    local r = (t - m):exp():sum(dim, true):log() + m
    if not keepdim then r = r:squeeze(dim) end
    return r
  end)
  --- argsort(t[, dim = -1][, descending = false]): the indices (0-based) that sort t along dim
  both("argsort", function(t, dim, descending)
    check(t, "argsort")
    local _, idx = t:sort(dim or -1, descending or false)
    return idx
  end)
  --- flatten(t[, start_dim = 1][, end_dim = -1]): those dimensions merged into one
  both("flatten", function(t, start_dim, end_dim)
    check(t, "flatten")
    local size = t:size()
    local n = #size
    if n == 0 then
      -- a 0-dim tensor has the one dimension 1 (or -1) to name, as torch's [-1, 0]
      for _, d in ipairs {{start_dim, "start_dim"}, {end_dim, "end_dim"}} do
        if d[1] ~= nil and d[1] ~= 1 and d[1] ~= -1 then
          error(string.format("flatten: %s %s out of range for a 0-D tensor (1 or -1)", d[2], tostring(d[1])), 2)
        end
      end
      return t:reshape({1})
    end
    local function pos(d, default, what)
      d = d or default
      if math.type(d) ~= "integer" or d == 0 or d > n or d < -n then
        error(string.format("flatten: %s %s out of range for a %d-D tensor", what, tostring(d), n), 3)
      end
      return d > 0 and d or d + n + 1
    end
    local s, e = pos(start_dim, 1, "start_dim"), pos(end_dim, -1, "end_dim")
    if s > e then error(string.format("flatten: start_dim %d is after end_dim %d", s, e), 2) end
    local shape, merged = {}, 1
    for i = 1, n do
      if i < s or i > e then shape[#shape + 1] = size[i]
      else
        merged = merged * size[i]
        if i == e then shape[#shape + 1] = merged end
      end
    end
    return t:reshape(shape)
  end)
  -- tril / triu(t[, k = 0]): the lower / upper triangle of the last two dimensions, zeros elsewhere
  local function triangle(name, keep)
    both(name, function(t, k)
      check(t, name)
      k = k or 0
      if math.type(k) ~= "integer" then error(name .. ": the diagonal offset must be an integer", 2) end
      if t:dim() < 2 then error(string.format("%s: expected at least 2 dimensions, got %d", name, t:dim()), 2) end
      local size = t:size()
      local r, c = size[#size - 1], size[#size]
      local dev = t:device()
      local cols = hero.arange(c, {device = dev}):view(1, c)
      local rows = hero.arange(r, {device = dev}):view(r, 1)
      local offset = cols - rows -- j - i
      return t:masked_fill(keep(offset, k):logical_not(), 0)
    end)
  end
  triangle("tril", function(offset, k) return offset:le(k) end)
  triangle("triu", function(offset, k) return offset:ge(k) end)
  --- one_hot(indices (integers)[, num_classes = max + 1]): i64, one more dimension of num_classes
  -- (num_classes = -1, torch's default, also means max + 1)
  both("one_hot", function(idx, num_classes)
    check(idx, "one_hot")
    if is_float(idx) or idx:dtype() == "bool" then
      error("one_hot: expected an integer tensor of class indices, got " .. idx:dtype(), 2)
    end
    if idx:numel() > 0 and idx:min():item() < 0 then error("one_hot: class indices must not be negative", 2) end
    if num_classes == -1 then num_classes = nil end
    local n = num_classes or (idx:numel() > 0 and idx:max():item() + 1 or 0)
    if math.type(n) ~= "integer" or n < 1 then error("one_hot: num_classes must be a positive integer", 2) end
    if idx:numel() > 0 and idx:max():item() >= n then
      error(string.format("one_hot: class index %d is not below num_classes %d", idx:max():item(), n), 2)
    end
    return idx:long():unsqueeze(-1):eq(hero.arange(n, {device = idx:device()})):long()
  end)
  --- allclose(a, b[, rtol = 1e-5][, atol = 1e-8][, equal_nan = false]): |a - b| <= atol + rtol |b| everywhere
  both("allclose", function(a, b, rtol, atol, equal_nan)
    check(a, "allclose")
    check(b, "allclose")
    a, b = a:detach():double(), b:detach():double()
    -- torch's isclose: an infinite difference is never close (inf against -inf, or 1 against inf,
    -- whose allowed error rtol |b| is infinite too); equal infinities are, through a == b
    local err = (a - b):abs()
    local ok = err:le((b:abs() * (rtol or 1e-5)) + (atol or 1e-8)):logical_and(err:ne(math.huge))
    ok = ok:logical_or(a:eq(b))
    if equal_nan then ok = ok:logical_or(a:ne(a):logical_and(b:ne(b))) end
    return ok:all():item()
  end)
  --- outer(a, b): a[i] * b[j] of two vectors
  both("outer", function(a, b)
    check(a, "outer")
    check(b, "outer")
    if a:dim() ~= 1 or b:dim() ~= 1 then error("outer: expected two 1-D tensors", 2) end
    return a:unsqueeze(2) * b:unsqueeze(1)
  end)
  both("log2", function(t) check(t, "log2"); return t:log() / math.log(2) end)
  both("log10", function(t) check(t, "log10"); return t:log() / math.log(10) end)
  --- trunc(t): rounded towards zero (zero gradient, as floor's)
  both("trunc", function(t)
    check(t, "trunc")
    return hero.where(t:detach():ge(0), t:floor(), t:ceil())
  end)
  both("silu", function(t) check(t, "silu"); return t * t:sigmoid() end)
  --- softplus(t[, beta = 1][, threshold = 20]): log(1 + exp(beta t)) / beta, t itself past threshold
  both("softplus", function(t, beta, threshold)
    check(t, "softplus")
    beta, threshold = beta or 1, threshold or 20
    local bt = t * beta
    local linear = bt:detach():gt(threshold)
    -- the unused branch gets a finite input: exp(bt) of a large bt is inf, and its gradient 0 * inf
    -- would be NaN through where's zero for that branch
    local safe = hero.where(linear, 0.0, bt)
    return hero.where(linear, t, (safe:exp():log1p()) / beta)
  end)
  both("leaky_relu", function(t, slope)
    check(t, "leaky_relu")
    return hero.where(t:detach():gt(0), t, t * (slope or 0.01))
  end)
  --- lerp(a, b, w): a + w (b - a)
  both("lerp", function(a, b, w)
    check(a, "lerp")
    return a + (b - a) * w
  end)
  --- addcmul(t, a, b[, value = 1]): t + value * a * b
  both("addcmul", function(t, a, b, value)
    check(t, "addcmul")
    return t + (a * b) * (value or 1)
  end)
  both("logical_xor", function(a, b)
    check(a, "logical_xor")
    local function truth(x) return hero.is_tensor(x) and x:ne(0) or x end
    return truth(a):ne(truth(b))
  end)
  --- roll(t, shifts, dim): elements moved by shifts along dim, those past the end coming back first
  both("roll", function(t, shifts, dim)
    check(t, "roll")
    if math.type(shifts) ~= "integer" then error("roll: shifts must be an integer", 2) end
    if dim == nil then return hero.roll(t:reshape({t:numel()}), shifts, 1):view(t:size()) end
    local n = t:size(dim)
    if n == 0 then return t:clone() end
    local s = shifts % n
    if s == 0 then return t:clone() end
    return hero.cat({t:narrow(dim, n - s + 1, s), t:narrow(dim, 1, n - s)}, dim)
  end)
  --- linspace(start, stop, steps[, opts]): steps values from start to stop, both included
  function hero.linspace(start, stop, steps, opts)
    if type(start) ~= "number" or type(stop) ~= "number" then error("linspace: start and stop must be numbers", 2) end
    if math.type(steps) ~= "integer" or steps < 0 then error("linspace: steps must be a non-negative integer", 2) end
    if opts ~= nil and type(opts) ~= "table" then
      error("linspace: argument #4 must be an options table such as {dtype = \"f64\"}, got " .. type(opts), 2)
    end
    local function named(ok, v)
      if not ok then error("linspace: " .. (tostring(v):gsub("^.-%w+: ", "", 1)), 3) end
      return v
    end
    local empty = named(pcall(hero.zeros, {0}, opts)) -- checks the options
    if steps == 0 then return empty end
    if steps == 1 then return hero.full({1}, start, opts) end
    local step = (stop - start) / (steps - 1)
    -- as PyTorch: the first half counted from start, the second from stop, so both ends are exact;
    -- in f64 as Lua numbers, element by element the same arithmetic, then cast once
    local i = named(pcall(hero.arange, steps, {dtype = "f64"}))
    local from_start = i * step + start
    local from_stop = (i - (steps - 1)) * step + stop
    local vals = hero.where(i:lt(steps // 2), from_start, from_stop)
    return vals:to {dtype = empty:dtype(), device = empty:device()}
  end
  --- count_nonzero(t[, dim or {dims}]): how many elements are not zero (NaN counts), as i64
  both("count_nonzero", function(t, dims)
    check(t, "count_nonzero")
    if dims == nil then return t:ne(0):sum() end
    return t:ne(0):sum(dims)
  end)
  --- diff(t[, n = 1][, dim = -1][, prepend][, append]): t[i + 1] - t[i] along dim, n times (bool
  -- tensors: t[i + 1] ~= t[i], as torch's); prepend / append are tensors joined to t along dim first
  both("diff", function(t, n, dim, prepend, append)
    check(t, "diff")
    n, dim = n or 1, dim or -1
    if math.type(n) ~= "integer" or n < 0 then error("diff: n must be a non-negative integer", 2) end
    if math.type(dim) ~= "integer" then error("diff: dim must be an integer", 2) end
    if t:dim() == 0 then error("diff: expected a tensor with at least one dimension, got a 0-dim tensor", 2) end
    if prepend ~= nil or append ~= nil then
      local parts = {}
      for _, p in ipairs {prepend or false, t, append or false} do
        if p then
          if not hero.is_tensor(p) then error("diff: prepend and append must be tensors, got " .. type(p), 2) end
          parts[#parts + 1] = p
        end
      end
      t = hero.cat(parts, dim)
    end
    for _ = 1, n do
      local len = t:size(dim)
      if len == 0 then break end
      local hi, lo = t:narrow(dim, 2, len - 1), t:narrow(dim, 1, len - 1)
      t = t:dtype() == "bool" and hi:ne(lo) or hi - lo
    end
    return t
  end)
  --- meshgrid(a, b, ... [, {indexing = "ij"}]) or meshgrid({a, b, ...} [, opts]): for 1-D (or 0-dim)
  -- tensors of sizes n1, n2, ..., as many tensors of shape n1 x n2 x ... (expanded views), the k-th
  -- repeating the k-th input along its own dimension; "xy" swaps the first two dimensions
  function hero.meshgrid(...)
    local args = table.pack(...)
    local last = args[args.n]
    local opts = nil
    -- a trailing plain table that is not a list of tensors holds the options
    if type(last) == "table" and not hero.is_tensor(last) and not hero.is_tensor(rawget(last, 1)) then
      opts = last
      args.n = args.n - 1
      for k in next, opts do
        if k ~= "indexing" then error("meshgrid: unknown option '" .. tostring(k) .. "' (indexing)", 2) end
      end
    end
    if args.n == 1 and type(args[1]) == "table" and not hero.is_tensor(args[1]) then
      args = args[1]
    else
      args = {table.unpack(args, 1, args.n)}
    end
    local indexing = opts and rawget(opts, "indexing") or "ij"
    if indexing ~= "ij" and indexing ~= "xy" then
      error("meshgrid: indexing must be \"ij\" or \"xy\", got " .. tostring(indexing), 2)
    end
    if #args == 0 then error("meshgrid: expected at least one tensor", 2) end
    local sizes = {}
    for i, t in ipairs(args) do
      if not hero.is_tensor(t) then error(string.format("meshgrid: argument %d must be a hero.Tensor", i), 2) end
      if t:dim() > 1 then error(string.format("meshgrid: tensor %d must be 0-dim or 1-D, got %d dimensions", i,
        t:dim()), 2) end
      sizes[i] = t:numel()
    end
    local swap = indexing == "xy" and #args >= 2
    local order = {}
    for i = 1, #args do order[i] = i end
    if swap then order[1], order[2] = 2, 1 end
    local shape = {}
    for d, i in ipairs(order) do shape[d] = sizes[i] end
    local out = {}
    for i, t in ipairs(args) do
      local view = {}
      for d = 1, #args do view[d] = 1 end
      view[index_of_value(order, i)] = sizes[i]
      out[i] = t:reshape(view):expand(shape)
    end
    return table.unpack(out)
  end
  --- cross(a, b[, dim]): the cross product of 3-vectors along dim (by default a's first dimension of
  -- size 3, as torch.cross); a and b have as many dimensions, the others broadcasting
  both("cross", function(a, b, dim)
    check(a, "cross")
    check(b, "cross")
    if a:dim() ~= b:dim() then
      error(string.format("cross: the inputs must have the same number of dimensions, got %d and %d", a:dim(),
        b:dim()), 2)
    end
    local shape = {}
    for d = 1, a:dim() do
      local x, y = a:size(d), b:size(d)
      if x ~= y and x ~= 1 and y ~= 1 then
        error(string.format("cross: sizes %d and %d of dimension %d do not broadcast", x, y, d), 2)
      end
      shape[d] = x == 1 and y or x
    end
    if dim == nil then
      for d = 1, #shape do if a:size(d) == 3 then dim = d; break end end -- a's, as torch's default
      if dim == nil then error("cross: no dimension of size 3 in the inputs", 2) end
    end
    if math.type(dim) ~= "integer" or dim == 0 or dim > #shape or dim < -#shape then
      error(string.format("cross: dim %s out of range for %d dimensions", tostring(dim), #shape), 2)
    end
    local d = dim > 0 and dim or dim + #shape + 1
    -- the vectors themselves do not broadcast (torch refuses that too)
    if a:size(d) ~= 3 or b:size(d) ~= 3 then
      error(string.format("cross: dimension %d must have size 3 in both inputs, got %d and %d", dim, a:size(d),
        b:size(d)), 2)
    end
    a, b = a:expand(shape), b:expand(shape)
    local function part(t, i) return t:narrow(dim, i, 1) end
    return hero.cat({part(a, 2) * part(b, 3) - part(a, 3) * part(b, 2),
                     part(a, 3) * part(b, 1) - part(a, 1) * part(b, 3),
                     part(a, 1) * part(b, 2) - part(a, 2) * part(b, 1)}, dim)
  end)
  --- diag(t[, k = 0]): a vector's diagonal matrix, or a matrix's diagonal as a vector
  both("diag", function(t, k)
    check(t, "diag")
    k = k or 0
    if math.type(k) ~= "integer" then error("diag: the diagonal offset must be an integer, got " .. tostring(k), 2) end
    if t:dim() == 1 then
      -- the band j - i == k times the vector padded to n, laid along the rows (k >= 0: row i holds
      -- t[i]) or the columns (k < 0: column j holds t[j]); differentiable through cat and mul
      local len, dev = t:size(1), t:device()
      local n = len + math.abs(k)
      local band = (hero.arange(n, {device = dev}):view(1, n) - hero.arange(n, {device = dev}):view(n, 1)):eq(k)
      local padded = k == 0 and t or hero.cat({t, hero.zeros({math.abs(k)}, {dtype = t:dtype(), device = dev})})
      local along = k >= 0 and padded:view(n, 1) or padded:view(1, n)
      return along:masked_fill(band:logical_not(), 0)
    elseif t:dim() == 2 then
      local r, c = t:size(1), t:size(2)
      local i0, j0 = k < 0 and -k or 0, k > 0 and k or 0
      local len = math.max(0, math.min(r - i0, c - j0))
      -- past the edge: empty, but still of t's graph (its gradient is zeros), as torch's
      if len == 0 then return t:reshape({r * c}):narrow(1, 1, 0) end
      local idx = (hero.arange(len, {device = t:device()}) + i0) * c + (hero.arange(len, {device = t:device()}) + j0)
      return t:reshape({r * c}):index_select(1, idx)
    end
    error(string.format("diag: expected a 1-D or 2-D tensor, got %d dimensions", t:dim()), 2)
  end)
end

return M
