--- nn.Embedding(num, dim [, opts]): rows of weight [num, dim] picked by 0-based ids. The gradient of
-- the weight is added in place into the rows that were used.
-- opts: padding_idx (0-based row whose gradient stays 0), init ("torch" N(0,1) | "bert" N(0,0.02)),
-- dtype, generator.
local core = require "hero.core"
local Module = require "hero.nn.module"
local init = require "hero.nn.init_weights"
local check = require "hero.nn.check"

local Embedding = Module:extend("Embedding")

function Embedding:__init(num, dim, opts)
  opts = opts or {}
  check.sizes("Embedding", 3, "num_embeddings", num, "embedding_dim", dim)
  self.num, self.dim, self.padding_idx = num, dim, opts.padding_idx
  local scheme = init.check(opts.init or "torch", "Embedding")
  self:register_parameter("weight", init.normal({num, dim}, scheme == "bert" and 0.02 or 1.0, opts.dtype,
    opts.generator))
end

function Embedding:forward(ids)
  local ok, y = pcall(core.embedding, self.weight, ids, self.padding_idx)
  if not ok then self:error("%s", tostring(y)) end
  return y
end

function Embedding:extra_repr() return string.format("%d, %d", self.num, self.dim) end

return Embedding
