--- hero.models: the HERO model and its parts.
local models = {}

models.HeroForPretraining = require "hero.models.pretrain"
models.HeroForVcmr = require("hero.models.vcmr").HeroForVcmr
models.HeroForVr = require("hero.models.vcmr").HeroForVr
models.HeroForVideoQA = require "hero.models.videoqa"
models.HeroForViolin = require "hero.models.violin"
models.HeroModel = require("hero.models.downstream").HeroModel
models.downstream = require "hero.models.downstream"
models.HierarchicalVlModel = require "hero.models.hierarchical"
models.encoders = require "hero.models.encoders"
models.embeddings = require "hero.models.embeddings"
models.layers = require "hero.models.layers"
models.vsm = require "hero.models.vsm"
models.checkpoint = require "hero.models.checkpoint"
models.HeroForTvc = require "hero.models.tvc"
-- the batch layouts each task's forward reads, and the option checks the constructors share
models.batch_shapes = require "hero.models.batch_shapes"
models.options = require "hero.models.options"

return models
