--- hero: HERO video+language models in Lua, with tensors and kernels in C.
-- `require "hero"` returns this table (no globals are set). Tensor functions live at the top
-- (hero.zeros, hero.tensor, ...), tensor methods on every hero.Tensor (t:sum(), t:narrow(...)).
-- before hero.core loads OpenBLAS: OpenBLAS reads its settings from the environment as it loads
local blas_env = require "hero.blas_env"
local core = require "hero.core"

local hero = {}

for name, fn in pairs(core) do
  if type(fn) == "function" then hero[name] = fn end
end

hero.core = core
hero.Tensor = core.Tensor
hero.version = "scm-1"
--- What hero set in OpenBLAS's environment: {thread_timeout, thread_timeout_source
-- ("hero", "environment" or "already loaded"), openblas_loaded_before}.
hero.blas_env = blas_env

-- Lua-side tensor methods (printing and conveniences written in Lua).
require("hero.tensor_print").install(core.Tensor, core.metatable)
require("hero.tensor_extra").install(hero, core.Tensor, core.metatable)

hero.nn = require "hero.nn"
-- the loss of every shape PyTorch's takes (the C one: [N, C] logits and class indices)
hero.cross_entropy = hero.nn.functional.cross_entropy
hero.binary_cross_entropy_with_logits = hero.nn.functional.binary_cross_entropy_with_logits
hero.mse_loss = hero.nn.functional.mse_loss
hero.optim = require "hero.optim"
hero.autograd = require "hero.autograd"
hero.models = require "hero.models"
hero.train = require "hero.train"
hero.dist = require "hero.dist"
hero.eval = require "hero.eval"
hero.tensorboard = require "hero.tensorboard"
hero.parity = require "hero.parity"
hero.testing = require "hero.testing"
hero.io = require "hero.io"
hero.json = require "hero.json"
hero.config = require "hero.config"
hero.spelling = require "hero.spelling"
hero.data = require "hero.data"
hero.plot = require "hero.plot"
hero.cli = require "hero.cli"
hero.save = hero.io.save
hero.load = hero.io.load
hero.text = require "hero.text"
hero.cuda = require "hero.cuda"
hero.amp = require "hero.amp"

return hero
