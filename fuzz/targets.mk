# fuzz/targets.mk — the fuzz targets, one line each:
#
#   <name>.srcs := the csrc/ sources (paths relative to csrc/, without .c) its parser needs
#
# besides the Lua-free tensor core, which every target links. The harness is targets/<name>.c; its
# seeds live in corpus/<name>/ and an optional libFuzzer dictionary in dict/<name>.dict. A target that
# needs a system library adds a second line, <name>.libs := -l...

safetensors.srcs := io_safetensors io_common
npy.srcs         := io_npy io_common
zip.srcs         := io_zip io_npy io_common
npz.srcs         := io_zip io_npy io_common
features.srcs    := io_zip io_npy io_common
