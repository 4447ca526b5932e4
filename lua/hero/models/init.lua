--- hero.models: the HERO model and its parts.
local models = {}

models.HeroForPretraining = require "hero.models.pretrain"
models.HierarchicalVlModel = require "hero.models.hierarchical"
models.encoders = require "hero.models.encoders"
models.embeddings = require "hero.models.embeddings"
models.layers = require "hero.models.layers"
models.vsm = require "hero.models.vsm"
models.checkpoint = require "hero.models.checkpoint"
models.HeroForTvc = require "hero.models.tvc"

return models
