rockspec_format = "3.0"
package = "hero"
version = "scm-1"
source = {
   url = "git+https://github.com/hero-lua/hero.git",
}
description = {
   summary = "HERO video+language models for Lua 5.4, with tensors and kernels in C (OpenBLAS, CUDA)",
   detailed = [[
hero implements HERO (Hierarchical Encoder for Video+Language Omni-representation pre-training)
as a Lua 5.4 extension: tensors, layers and training steps are C objects, experiments and task
heads are Lua scripts. Arithmetic runs on the CPU through OpenBLAS and on NVIDIA GPUs through CUDA.
Needs OpenBLAS and zlib (Debian: libopenblas-dev zlib1g-dev); LMDB and lz4 (liblmdb-dev liblz4-dev,
for the HERO databases), libdeflate (libdeflate-dev, faster inflate of compressed video databases)
and CUDA are used when found.
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "make",
   makefile = "csrc/Makefile",
   build_variables = {
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
   },
   install_variables = {
      INST_LIBDIR = "$(LIBDIR)",
      INST_LUADIR = "$(LUADIR)",
   },
}
test = {
   type = "command",
   script = "spec/run.lua",
}
