--- hero.nn: modules (layers) built from hero's C ops.
local nn = {}

nn.Module = require "hero.nn.module"

return nn
