--- hero.io: tensor files (safetensors, .npy, .npz).
local core = require "hero.core"

local io_ = {}

for _, name in ipairs {"load_npy", "load_npz", "save_npy", "save_npz", "load_safetensors",
                       "save_safetensors", "load_features"} do
  io_[name] = core[name]
end

return io_
