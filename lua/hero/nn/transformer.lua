--- The BERT post-LayerNorm transformer layer of the reference, with its exact parameter names:
--   attention.self.{query,key,value}.{weight,bias}
--   attention.output.dense.{weight,bias}, attention.output.LayerNorm.{weight,bias}
--   intermediate.dense.{weight,bias}, output.dense.{weight,bias}, output.LayerNorm.{weight,bias}
-- a = LN1(drop(dense_o(attn(x))) + x);  y = LN2(drop(dense_2(gelu(dense_1(a)))) + a)
-- Masks given to forward are 0/1 [B, L] key masks (1 = attend) unless opts.additive says they
-- are already additive ((1 - m) * -10000, as nn.extended_mask builds).
local core = require "hero.core"
local Module = require "hero.nn.module"
local Linear = require "hero.nn.linear"
local LayerNorm = require "hero.nn.layer_norm"
local act = require "hero.nn.activations"
local check = require "hero.nn.check"

local M = {}

--- (1 - mask) * -10000 in dtype: the reference's additive attention mask (hero-spec §2.1).
function M.extended_mask(mask, dtype)
  if not core.is_tensor(mask) then error("extended_mask: the mask must be a hero.Tensor, got " .. type(mask), 2) end
  return (1 - mask:to(dtype or "f32")) * -10000.0
end

local function config(opts, who)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(string.format("%s: expected a table of options such as {hidden = 768, heads = 12}, got %s", who,
      type(opts)), 4)
  end
  -- a misspelt size would build the default one without a word
  check.options(who, 4, opts, {"hidden", "heads", "intermediate", "eps", "dropout", "attention_dropout", "init",
                               "std", "dtype", "generator", "layers"})
  for _, k in ipairs {"eps", "dropout", "attention_dropout"} do
    if opts[k] ~= nil and type(opts[k]) ~= "number" then
      error(string.format("%s: opts.%s must be a number, got %s", who, k, type(opts[k])), 4)
    end
  end
  for _, k in ipairs {"dropout", "attention_dropout"} do
    if opts[k] ~= nil and not (opts[k] >= 0 and opts[k] < 1) then
      error(string.format("%s: opts.%s must be a probability in [0, 1), got %s", who, k, tostring(opts[k])), 4)
    end
  end
  if opts.eps ~= nil and (opts.eps ~= opts.eps or opts.eps <= 0) then
    error(string.format("%s: opts.eps must be positive, got %s", who, tostring(opts.eps)), 4)
  end
  local c = {
    hidden = opts.hidden or 768, heads = opts.heads or 12, intermediate = opts.intermediate or 3072,
    eps = opts.eps or 1e-12, dropout = opts.dropout or 0.1,
    attention_dropout = opts.attention_dropout or opts.dropout or 0.1,
    init = opts.init or "bert", std = opts.std, dtype = opts.dtype, generator = opts.generator,
  }
  check.sizes(who, 4, "hidden", c.hidden, "heads", c.heads, "intermediate", c.intermediate)
  if c.hidden % c.heads ~= 0 then
    error(string.format("%s: hidden size %d is not divisible by %d heads", who, c.hidden, c.heads), 4)
  end
  return c
end

local function linear(c, i, o)
  return Linear(i, o, {init = c.init, std = c.std, dtype = c.dtype, generator = c.generator})
end

--- A forward's input: a tensor [B, L, H], else an error naming the module.
local function check_input(module, x, what)
  if not core.is_tensor(x) then module:error("forward: %s must be a hero.Tensor [B, L, H], got %s", what, type(x)) end
end

--- The projections of multi-head attention (BertSelfAttention): query, key, value.
M.SelfAttention = Module:extend("SelfAttention")
function M.SelfAttention:__init(opts)
  local c = config(opts, "SelfAttention")
  self.heads, self.attention_dropout = c.heads, c.attention_dropout
  self.generator = c.generator
  self:add_module("query", linear(c, c.hidden, c.hidden))
  self:add_module("key", linear(c, c.hidden, c.hidden))
  self:add_module("value", linear(c, c.hidden, c.hidden))
end

--- x [B, Lq, H]; context [B, Lk, H] (default x, for cross-attention); ext_mask additive [B, Lk]
-- or [B, Lq, Lk] or nil.
function M.SelfAttention:forward(x, ext_mask, context)
  check_input(self, x, "x")
  if context ~= nil then check_input(self, context, "context") end
  if (context == nil or context == x) and self:packs_projections(x) then return self:forward_packed(x, ext_mask) end
  context = context or x
  local q = self.query:forward(x)
  local k = self.key:forward(context)
  local v = self.value:forward(context)
  return self:attend(q, k, v, ext_mask)
end

--- Whether self-attention over x projects q, k and v as one product (forward_packed): on a GPU,
-- where one product of three times the width and one gradient for the three (instead of three,
-- each cast back from the half dtype and summed) take fewer kernels. On the CPU the three products
-- run at the same rate as one, and the weights' concatenation would be extra work.
-- self.pack_projections = true / false forces it either way.
function M.SelfAttention:packs_projections(x)
  if self.pack_projections ~= nil then return self.pack_projections end
  return x:device() ~= "cpu"
end

--- Self-attention with the query, key and value projections as one product of their weights side
-- by side, read in place by the attention (core.attention_packed): the same numbers.
function M.SelfAttention:forward_packed(x, ext_mask)
  local q, k, v = self.query, self.key, self.value
  local w = core.cat({q.weight, k.weight, v.weight}, 1)
  local b = q.bias and core.cat({q.bias, k.bias, v.bias}, 1) or nil
  local ok, y = pcall(core.attention_packed, core.linear(x, w, b), ext_mask, self.heads,
    {dropout = self.attention_dropout, training = self.training, generator = self.generator})
  if not ok then self:error("%s", tostring(y)) end
  return y
end

--- Multi-head attention of projected q [B, Lq, H] over k, v [B, Lk, H] (dropout on the weights).
function M.SelfAttention:attend(q, k, v, ext_mask)
  local ok, y = pcall(core.attention, q, k, v, ext_mask, self.heads,
    {dropout = self.attention_dropout, training = self.training, generator = self.generator})
  if not ok then self:error("%s", tostring(y)) end
  return y
end
function M.SelfAttention:extra_repr() return string.format("heads=%d", self.heads) end

--- dense + dropout + residual + LayerNorm (BertSelfOutput / BertOutput).
M.AddNorm = Module:extend("AddNorm")
function M.AddNorm:__init(opts, in_features)
  local c = config(opts, "AddNorm")
  self:add_module("dense", linear(c, in_features or c.hidden, c.hidden))
  self:add_module("LayerNorm", LayerNorm(c.hidden, {eps = c.eps, dtype = c.dtype}))
  self:add_module("dropout", act.Dropout(c.dropout, {generator = c.generator}))
end
--- The dropout, the sum and the LayerNorm are one node (core.dropout_add_layer_norm: the same
-- numbers and draws, without the dropout's output) while both submodules are the stock ones.
function M.AddNorm:forward(h, residual)
  local ln, drop = self.LayerNorm, self.dropout
  local x = self.dense:forward(h)
  if getmetatable(ln) ~= LayerNorm or getmetatable(drop) ~= act.Dropout or rawget(ln, "forward") ~= nil
    or rawget(drop, "forward") ~= nil then
    return ln:forward(drop:forward(x) + residual)
  end
  local ok, y = pcall(core.dropout_add_layer_norm, x, residual, ln.weight, ln.bias, ln.eps,
    {dropout = drop.p, training = drop.training, generator = drop.generator})
  if not ok then self:error("%s", tostring(y)) end
  return y
end

--- nn.MultiHeadAttention{hidden, heads, eps, dropout}: self (projections) + output (AddNorm).
M.MultiHeadAttention = Module:extend("MultiHeadAttention")
function M.MultiHeadAttention:__init(opts)
  local c = config(opts, "MultiHeadAttention")
  self:add_module("self", M.SelfAttention(opts))
  self:add_module("output", M.AddNorm(opts))
  self.hidden = c.hidden
end
function M.MultiHeadAttention:forward(x, ext_mask, context)
  check_input(self, x, "x")
  return self.output:forward(self.self:forward(x, ext_mask, context), x)
end

--- BertIntermediate: dense then GELU.
M.Intermediate = Module:extend("Intermediate")
function M.Intermediate:__init(opts)
  local c = config(opts, "Intermediate")
  self:add_module("dense", linear(c, c.hidden, c.intermediate))
end
function M.Intermediate:forward(x) return core.gelu(self.dense:forward(x)) end

--- nn.TransformerLayer{hidden = 768, heads = 12, intermediate = 3072, eps = 1e-12, dropout = 0.1}
M.TransformerLayer = Module:extend("TransformerLayer")
function M.TransformerLayer:__init(opts)
  local c = config(opts, "TransformerLayer")
  self.cfg = c
  self:add_module("attention", M.MultiHeadAttention(opts))
  self:add_module("intermediate", M.Intermediate(opts))
  self:add_module("output", M.AddNorm(opts, c.intermediate))
end

--- Rows `rows` (i64 [n], 0-based, of the B * L flattened positions) of t [B, L, H], as [n, H].
local function flat_rows(t, rows)
  return t:reshape(t:size(1) * t:size(2), t:size(3)):index_select(1, rows)
end

--- The queries the rows (i64 [n] of flat positions of [B, L], 0-based) need: each batch entry's
-- positions, padded to the longest list (lq) with the entry's first asked-for position (or the
-- first of all), as i64 [B * lq] flat positions (gather), and where each asked-for row's output
-- sits among them (keep, i64 [n]), both on `device`; nil when no fewer than L per entry.
-- The layout is worked out on the host (core.query_layout): from `host` when the caller has the
-- rows there already (a batch moved to a GPU carries them, hero.models.mask_rows), so that the
-- host does not wait for the device to read them back.
local function query_layout(rows, B, L, module, host, device)
  host = host or rows
  if host:device() ~= "cpu" or host:dtype() ~= "i64" then host = host:to {device = "cpu", dtype = "i64"} end
  local ok, gather, keep, lq = pcall(core.query_layout, host, B, L)
  if not ok then module:error("%s", (tostring(gather):gsub("^query_layout: ", ""))) end
  if gather == nil then return nil end
  if device ~= "cpu" then gather, keep = gather:to {device = device}, keep:to {device = device} end
  return gather, keep, lq
end

--- x [B, L, H]; mask [B, L] (0/1, or additive with opts.additive) or nil. With opts.rows (i64 [n]
-- of flat positions b * L + l, 0-based) only those outputs are made, as [n, H]: every position still
-- serves as a key and value, but the queries are projected and attend only for the positions
-- asked for (each entry's, padded to the entry with most), and the output projection, the
-- feed-forward block and both LayerNorms run on the n rows alone. The rows are those of the full
-- output. opts.rows_host: the same rows on the CPU, when the caller has them there (rows on a GPU
-- are otherwise read back). opts.query: the rows' query layout ({query_layout(...)}), when the
-- caller has it.
function M.TransformerLayer:forward(x, mask, opts)
  check_input(self, x, "x")
  if opts ~= nil then check.options(self.__name .. ":forward", 1, opts, {"additive", "rows", "rows_host", "query"}) end
  local ext = mask
  if mask and not (opts and opts.additive) then ext = M.extended_mask(mask, x:dtype()) end
  local a
  local rows = opts and opts.rows
  if rows then
    local mha = self.attention
    local B, L, H = x:size(1), x:size(2), x:size(3)
    local gather, keep, lq
    if ext == nil or ext:dim() == 2 then
      local q = opts.query or {query_layout(rows, B, L, self, opts.rows_host, x:device())}
      gather, keep, lq = q[1], q[2], q[3]
    end
    local ctx
    if gather then -- cross-attention of the asked-for positions over the whole sequence
      local xq = x:reshape(B * L, H):index_select(1, gather):view(B, lq, H)
      ctx = mha.self:forward(xq, ext, x):reshape(B * lq, H):index_select(1, keep)
    else
      ctx = flat_rows(mha.self:forward(x, ext), rows)
    end
    a = mha.output:forward(ctx, flat_rows(x, rows))
  else
    a = self.attention:forward(x, ext)
  end
  return self.output:forward(self.intermediate:forward(a), a)
end
--- The layer on packed rows h [nv, H] (the valid positions of a padded [B, L] batch, in order;
-- see TransformerEncoder:forward): keys, values and queries are projected for the nv rows only
-- and laid out padded for attention, whose padded keys the mask hides. With `last`, only the
-- rows the layout asks for come out (their queries alone attend), else all nv rows.
function M.TransformerLayer:forward_packed(h, ext, pk, last)
  local sa = self.attention.self
  local function padded(t)
    local zero = core.zeros({1, pk.H}, {dtype = t:dtype(), device = t:device()})
    return core.cat({t, zero}, 1):index_select(1, pk.unpack):view(pk.B, pk.L, pk.H)
  end
  local k, v = padded(sa.key:forward(h)), padded(sa.value:forward(h))
  local ctx, residual
  if last and pk.q_gather then
    local q = sa.query:forward(h:index_select(1, pk.q_gather)):view(pk.B, pk.lq, pk.H)
    ctx = sa:attend(q, k, v, ext):reshape(pk.B * pk.lq, pk.H):index_select(1, pk.q_keep)
    residual = h:index_select(1, pk.rows)
  else
    ctx = sa:attend(padded(sa.query:forward(h)), k, v, ext):reshape(pk.B * pk.L, pk.H)
    if last then
      ctx, residual = ctx:index_select(1, pk.rows_flat), h:index_select(1, pk.rows)
    else
      ctx, residual = ctx:index_select(1, pk.valid), h
    end
  end
  local a = self.attention.output:forward(ctx, residual)
  return self.output:forward(self.intermediate:forward(a), a)
end

function M.TransformerLayer:extra_repr()
  local c = self.cfg
  return string.format("hidden=%d, heads=%d, intermediate=%d, eps=%g", c.hidden, c.heads, c.intermediate, c.eps)
end

--- nn.TransformerEncoder{layers = n, ...}: child "layer" holding "0".."n-1" (encoder.layer.{l}.* keys).
M.TransformerEncoder = Module:extend("TransformerEncoder")
function M.TransformerEncoder:__init(opts)
  local n = opts and opts.layers or 1
  if math.type(n) ~= "integer" or n < 0 then
    error("nn.TransformerEncoder: layers must be a non-negative integer, got " .. tostring(n), 2)
  end
  local Sequential = require "hero.nn.sequential"
  local stack = Sequential()
  for _ = 1, n do stack:add(M.TransformerLayer(opts)) end
  self:add_module("layer", stack)
end
--- x [B, L, H]; mask as TransformerLayer's. opts.rows (i64 [n] of flat positions, 0-based) asks
-- for those rows of the output only, [n, H]: the last layer then computes nothing else (a task
-- whose loss reads a few positions, as MLM's masked tokens, skips most of that layer), and with a
-- 0/1 mask that pads ragged rows, every layer works on the valid positions only (packed; opts.pack
-- = false keeps the padded layout). opts.rows_host: as TransformerLayer:forward's.
--- How the valid positions of mask [B, L] (0/1) pack, for rows `rows` of the output: nil when
-- there is too little padding to gain (under 1/16 of the positions), when a row asked for is a
-- padded position, or when no row is asked for. A mask on a GPU whose values the host still holds
-- (a batch's mask moved there, hero.cuda.host_mirrored) is laid out on the host and the index lists
-- moved to the device, without waiting for it; another device mask with tensor ops where it is
-- (the host then reads two counts).
local function packed_layout(x, mask, rows, query, rows_host)
  local B, L, H = x:size(1), x:size(2), x:size(3)
  if rows:numel() == 0 then return nil end
  local device = x:device()
  local on_host = device ~= "cpu" and core.cuda.host_mirrored(mask)
  local function here(t) return on_host and t:cpu() or t end
  local function there(t) return on_host and t:to {device = device} or t end
  local gather, keep, lq = query[1], query[2], query[3]
  local asked = on_host and (rows_host or rows:cpu()) or rows
  local valid_flag = here(mask):reshape(B * L):ne(0)
  local counts = core.stack({valid_flag:sum(), valid_flag:index_select(1, asked):logical_not():sum()}):totable()
  local nv, padded_asked = counts[1], counts[2]
  if nv == 0 or nv > B * L - (B * L) // 16 or padded_asked > 0 then return nil end
  -- the packed index of every position; padded positions read row nv, a zero row
  local unpack = (valid_flag:long():cumsum(1) - 1):masked_fill(valid_flag:logical_not(), nv)
  local pk = {B = B, L = L, H = H, valid = there(valid_flag:nonzero():squeeze(2)), unpack = there(unpack),
              rows = there(unpack:index_select(1, asked)), rows_flat = rows}
  if gather then
    pk.q_gather, pk.q_keep, pk.lq = there(unpack:index_select(1, here(gather))), keep, lq
  end
  return pk
end

function M.TransformerEncoder:forward(x, mask, opts)
  check_input(self, x, "x")
  if opts ~= nil then check.options(self.__name .. ":forward", 1, opts, {"additive", "rows", "rows_host", "pack"}) end
  local ext = mask
  if mask and not (opts and opts.additive) then ext = M.extended_mask(mask, x:dtype()) end
  local rows = opts and opts.rows
  local stack = self.layer:children()
  -- the queries the rows need, worked out once on the host (this also checks the rows' range)
  local query = rows and #stack > 0
    and {query_layout(rows, x:size(1), x:size(2), self, opts.rows_host, x:device())} or nil
  -- Ragged rows (subtitles of different lengths, videos of different frame counts) are padded to
  -- the longest: when only some rows are asked for, every layer runs its projections, MLP and
  -- LayerNorms on the valid positions alone, packed; attention sees them laid out padded.
  local pk = rows and opts.pack ~= false and #stack > 0 and mask and ext ~= mask and mask:dim() == 2
    and packed_layout(x, mask, rows, query, opts.rows_host)
  if pk then
    local h = x:reshape(pk.B * pk.L, pk.H):index_select(1, pk.valid)
    for i, layer in ipairs(stack) do h = layer:forward_packed(h, ext, pk, i == #stack) end
    return h
  end
  for i, layer in ipairs(stack) do
    local last = i == #stack
    x = layer:forward(x, ext, {additive = true, rows = last and rows or nil, query = last and query or nil})
  end
  if rows and #stack == 0 then x = flat_rows(x, rows) end
  return x
end

return M
