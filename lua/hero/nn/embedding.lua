--- nn.Embedding(num, dim [, opts]): rows of weight [num, dim] picked by 0-based ids. The gradient of
-- the weight is added in place into the rows that were used.
-- opts: padding_idx (0-based row whose gradient stays 0; negative counts from the end, as torch's;
-- with init "torch" the row starts at zero, as torch's, while the reference's "bert" init draws it
-- like the others), init ("torch" N(0,1) | "bert" N(0, std)), std (0.02: a config's
-- initializer_range), dtype, generator.
local core = require "hero.core"
local Module = require "hero.nn.module"
local init = require "hero.nn.init_weights"
local check = require "hero.nn.check"

local Embedding = Module:extend("Embedding")

function Embedding:__init(num, dim, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("Embedding: opts must be a table, got " .. type(opts), 3) end
  -- torch's max_norm, scale_grad_by_freq and sparse are not implemented: refused, not ignored
  check.options("Embedding", 3, opts, {"padding_idx", "init", "std", "dtype", "generator"})
  check.float_dtype("Embedding", 3, opts.dtype)
  check.sizes("Embedding", 3, "num_embeddings", num, "embedding_dim", dim)
  local pad = opts.padding_idx
  if pad ~= nil then
    if math.type(pad) ~= "integer" or pad < -num or pad >= num then
      error(string.format("Embedding: padding_idx must be an integer in [%d, %d) (0-based), got %s", -num, num,
        tostring(pad)), 3)
    end
    if pad < 0 then pad = pad + num end
  end
  self.num, self.dim, self.padding_idx = num, dim, pad
  local scheme = init.check(opts.init or "torch", "Embedding")
  local w = init.normal({num, dim}, scheme == "bert" and init.bert_std(opts.std, "Embedding") or 1.0, opts.dtype,
    opts.generator)
  if pad and scheme == "torch" then w:narrow(1, pad + 1, 1):zero_() end
  self:register_parameter("weight", w)
end

function Embedding:forward(ids)
  local ok, y = pcall(core.embedding, self.weight, ids, self.padding_idx)
  if not ok then self:error("%s", tostring(y)) end
  return y
end

function Embedding:extra_repr() return string.format("%d, %d", self.num, self.dim) end

return Embedding
