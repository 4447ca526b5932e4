# fuzz/targets.mk — the fuzz targets, one line each:
#
#   <name>.srcs := the csrc/ sources (paths relative to csrc/, without .c) its parser needs
#
# besides the Lua-free tensor core, which every target links. The harness is targets/<name>.c; its
# seeds live in corpus/<name>/ and an optional libFuzzer dictionary in dict/<name>.dict. A target that
# needs a system library adds <name>.libs := its link flags, <name>.needs := the library's name in
# fuzz/Makefile (lz4, lua: the target is skipped, with a message, where the library is missing) and,
# for its harness alone, <name>.cflags := extra compiler flags.

safetensors.srcs := io_safetensors io_common
npy.srcs         := io_npy io_common
zip.srcs         := io_zip io_npy io_common
npz.srcs         := io_zip io_npy io_common
features.srcs    := io_zip io_npy io_common
torch_pt.srcs    := io_torch io_pickle io_zip io_npy io_common
pickle.srcs      := io_torch io_pickle io_zip io_npy io_common
msgpack.srcs     := io_msgpack io_common
lz4.srcs         := io_lz4 io_common
lz4.libs         := $(LZ4_LIBS)
lz4.needs        := lz4
# lz4 -> msgpack -> numpy, msgpack -> numpy, npz: without liblz4 its lz4 chain only meets the
# "built without LZ4" refusal, and the other two still run.
lmdb_value.srcs  := io_lz4 io_msgpack io_zip io_npy io_common
lmdb_value.libs  := $(if $(HAVE_lz4),$(LZ4_LIBS))
bpe.srcs         := text_bpe text_norm text_tables io_common
json.srcs        := io_common
json.libs        := $(LUA_LIBS)
json.needs       := lua
json.cflags      := $(LUA_CFLAGS) -DHERO_LUA_DIR='"$(abspath $(SRC)/../lua)"'
