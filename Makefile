# hero — top-level targets. `make test` and `make demo` are the whole set-up: they install the
# Debian packages hero needs (as root; otherwise they print the apt-get command and stop).

LUA ?= lua5.4
HERO_CUDA ?= auto
export HERO_CUDA

BUILD ?= csrc/build
LUA_ENV = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
          LUA_CPATH="$(abspath $(1))/?.so;;"

DEBIAN_PACKAGES := lua5.4 liblua5.4-dev lua-busted lua-check luarocks libopenblas-dev zlib1g-dev \
                   liblmdb-dev liblz4-dev libdeflate-dev python3-numpy pkg-config make gcc clang \
                   libclang-rt-14-dev libopenmpi-dev openmpi-bin

# Fuzzing (fuzz/): build directory, seconds per target and memory limit of `make fuzz-smoke`.
FUZZ_BUILD ?= $(BUILD)-fuzz
FUZZ_SECONDS ?= 5
FUZZ_RSS_MB ?= 2048
FUZZ_ENV = FUZZ_BUILD="$(abspath $(FUZZ_BUILD))" FUZZ_SECONDS="$(FUZZ_SECONDS)" FUZZ_RSS_MB="$(FUZZ_RSS_MB)" \
           MAKE="$(MAKE)"

all: build

deps:
	@./rocks/install-deps.sh $(DEBIAN_PACKAGES)

build: deps
	$(MAKE) -C csrc BUILD_DIR=$(abspath $(BUILD))

# The specs, then a short fuzzing run of every parser of outside bytes (fuzz-smoke). The spec summary
# "N passed, N failed, N skipped" is printed again at the end so that it stays the last line.
test: build
	@{ $(call LUA_ENV,$(BUILD)) $(LUA) spec/run.lua; echo $$? > "$(BUILD)/spec.status"; } | tee "$(BUILD)/spec.log"
	@$(FUZZ_ENV) fuzz/smoke.sh; fuzz=$$?; \
	 $(MAKE) -s portable-check; portable=$$?; \
	 echo; grep -E '^[0-9]+ passed, [0-9]+ failed' "$(BUILD)/spec.log" | tail -n 1; \
	 [ "$$(cat "$(BUILD)/spec.status")" = 0 ] && [ $$fuzz = 0 ] && [ $$portable = 0 ]

# The vector kernels have a path for the build machine's widest vectors (AVX-512 where it has
# them, via -march=native) and an AVX2 one, which a build on a machine without AVX-512 takes. This
# builds the CPU code for any x86-64-v3 processor (AVX2, no AVX-512) into PORTABLE_BUILD and runs
# the specs of those kernels against it (on an x86-64 host with AVX2; elsewhere it says so).
PORTABLE_BUILD ?= $(BUILD)-portable
PORTABLE_SPECS := spec/gelu_spec.lua spec/nn_functional_spec.lua spec/reduce_spec.lua spec/pointwise_spec.lua \
                  spec/linalg_spec.lua spec/nn_layers_spec.lua spec/autograd_views_spec.lua spec/allocator_spec.lua
portable-check: deps
	@if ! grep -qw avx2 /proc/cpuinfo 2>/dev/null; then echo "portable build: skipped (no AVX2 here)"; exit 0; fi; \
	 $(MAKE) -s -C csrc HERO_CUDA=0 HERO_MARCH=-march=x86-64-v3 BUILD_DIR=$(abspath $(PORTABLE_BUILD)) \
	   > "$(abspath $(BUILD))/portable-build.log" 2>&1 \
	   || { cat "$(abspath $(BUILD))/portable-build.log"; echo "portable build (x86-64-v3): build failed"; exit 1; }; \
	 $(call LUA_ENV,$(PORTABLE_BUILD)) $(LUA) spec/run.lua $(PORTABLE_SPECS) > "$(abspath $(BUILD))/portable.log" 2>&1; \
	 rc=$$?; echo "portable build (x86-64-v3, no AVX-512): $$(tail -n 1 "$(abspath $(BUILD))/portable.log")"; \
	 [ $$rc = 0 ] || { cat "$(abspath $(BUILD))/portable.log"; exit 1; }

# libFuzzer targets for the file parsers (clang, ASan + UBSan) into $(FUZZ_BUILD); see fuzz/targets.mk.
fuzz: deps
	$(MAKE) -f fuzz/Makefile BUILD_DIR="$(abspath $(FUZZ_BUILD))"

# Each fuzz target for FUZZ_SECONDS over its seed corpus; fails on any crash and names the input.
fuzz-smoke: deps
	@$(FUZZ_ENV) fuzz/smoke.sh

# Every fuzz target at once for FUZZ_LONG_SECONDS (an hour), then a table of executions.
FUZZ_LONG_SECONDS ?= 3600
fuzz-long: deps
	@$(FUZZ_ENV) FUZZ_SECONDS="$(FUZZ_LONG_SECONDS)" fuzz/long.sh

# AddressSanitizer + UBSan build of the module, run under the same specs with LeakSanitizer on
# (every process a spec starts inherits it). The sanitizer runtime must be loaded first because
# lua5.4 itself is not instrumented.
asan: deps
	$(MAKE) -C csrc SANITIZE=1
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	 LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	 $(call LUA_ENV,csrc/build-asan) $(LUA) spec/run.lua

# ThreadSanitizer build of the module (csrc/build-tsan) under the specs whose code runs on several
# threads: the worker pool's parallel kernels (2 threads), the backward engine, the data-loader
# worker states and their readers, the allocator, training with loader threads. Any report fails
# the run (csrc/tsan.supp lists the false ones inside uninstrumented libraries). The runtime is
# preloaded because lua5.4 is not instrumented, with csrc/preload/tsan_start.c to start it in the
# shells and programs the specs run.
TSAN_SPECS := spec/threads_spec.lua spec/prefetch_spec.lua spec/data_pipeline_spec.lua spec/data_readers_spec.lua \
              spec/linalg_spec.lua spec/pointwise_spec.lua spec/reduce_spec.lua spec/index_spec.lua \
              spec/nn_functional_spec.lua spec/gelu_spec.lua spec/optim_spec.lua spec/random_spec.lua \
              spec/tokenizer_spec.lua spec/allocator_spec.lua spec/autograd_function_spec.lua \
              spec/autograd_index_spec.lua spec/autograd_pointwise_spec.lua spec/autograd_reduce_linalg_spec.lua \
              spec/autograd_views_spec.lua spec/nn_layers_spec.lua spec/hero_model_spec.lua spec/train_spec.lua \
              spec/pretrain_config_spec.lua spec/demo_spec.lua spec/dist_spec.lua
tsan: deps
	$(MAKE) -C csrc SANITIZE=thread
	@TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 suppressions=$(CURDIR)/csrc/tsan.supp" \
	 HERO_NUM_THREADS=2 \
	 LD_PRELOAD="$$(gcc -print-file-name=libtsan.so) $(CURDIR)/csrc/build-tsan/tsan_start.so" \
	 $(call LUA_ENV,csrc/build-tsan) $(LUA) spec/run.lua $(TSAN_SPECS)

# HERO end to end on the embedded synthetic dataset (under a minute on 2 cores): preprocessing into
# LMDBs, pre-training, VCMR fine-tuning with and without pre-training, evaluation, loss curves.
demo: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) examples/demo.lua $(DEMO_ARGS)

# The pre-training step against PyTorch (examples/bench_table.lua): TORCH_BENCH=path/to/the PyTorch
# baseline script (hero_torch_bench.py; needs python3-torch); without it only hero's own rows.
# BENCH_ARGS="--quick" (small config only), "--rounds N", "--markdown". bench-ops times single ops.
TORCH_BENCH ?=
bench: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) examples/bench_table.lua $(if $(TORCH_BENCH),--torch "$(TORCH_BENCH)") $(BENCH_ARGS)

bench-ops: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) examples/bench_ops.lua

# The data pipeline (examples/bench_loader.lua): batches of 32 TV-like videos per pre-training task,
# by stage on one thread and from PrefetchLoader workers. LOADER_ARGS="--workers 1,2,4 ...".
bench-loader: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) examples/bench_loader.lua $(LOADER_ARGS)

lint: deps
	luacheck lua spec examples

# For a bare GPU machine without network (examples/device_check.sh): device-debs downloads the
# Debian packages the run needs into .debs/ (unpacked there by examples/device_env.sh), device-build
# builds hero with the CUDA backend into .devbuild/ for any x86-64-v3 processor. Copy .debs/,
# .devbuild/hero/ and .devbuild/sources.sha256 (the objects in .devbuild/obj/ are not needed there)
# and .bench/hero_torch_bench.py, the PyTorch baseline, for the comparison, to the machine.
DEVICE_DEBS := lua5.4 liblua5.4-0 liblua5.4-dev lua-busted lua-cliargs lua-dkjson lua-filesystem lua-luassert \
               lua-mediator lua-penlight lua-say lua-system lua-term libopenblas0-pthread libopenblas-pthread-dev \
               libopenblas-dev libopenblas0 libgfortran5 libquadmath0 zlib1g zlib1g-dev liblmdb0 liblmdb-dev \
               liblz4-1 liblz4-dev libdeflate0 libdeflate-dev openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libhwloc15 \
               libevent-2.1-7 libevent-core-2.1-7 libevent-pthreads-2.1-7 libpmix2 libfabric1 libucx0 libibverbs1 \
               librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libmunge2 libnuma1 \
               libpciaccess0 libltdl7 libxnvctrl0 libx11-6 libxext6 libxcb1 libxau6 libxdmcp6 libbsd0 libmd0
device-debs:
	mkdir -p .debs && cd .debs && apt-get download $(DEVICE_DEBS)

device-build:
	$(MAKE) -C csrc HERO_CUDA=1 HERO_MARCH=-march=x86-64-v3 BUILD_DIR=$(CURDIR)/.devbuild
	sh examples/sources_hash.sh > .devbuild/sources.sha256

# Installs hero with LuaRocks into a tree under the build directory, offline from this checkout
# (LuaRocks runs csrc/Makefile, then its install target), and loads it from another directory
# with only the paths `luarocks path` gives, as a user would.
ROCK_TREE ?= $(abspath $(BUILD))/rocktree
ROCK_CHECK = local hero = require "hero"; print(hero.zeros(2, 2)); \
             print("hero.core loaded from " .. package.searchpath("hero.core", package.cpath)); \
             print("CUDA compiled: " .. tostring(hero.cuda.compiled()) .. ", GPUs: " .. hero.cuda.device_count()); \
             local ok, err = pcall(hero.cuda.memory_stats); \
             if not ok and tostring(err):find("could not be loaded", 1, true) then error(err, 0) end
install-rock: deps
	luarocks --lua-version=5.4 make hero-scm-1.rockspec --tree "$(ROCK_TREE)"
	@cd / && unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4 && \
	 eval "$$(luarocks --lua-version=5.4 --tree "$(ROCK_TREE)" path)" && \
	 $(LUA) -e '$(ROCK_CHECK)'

repl: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) -i -l hero

clean:
	$(MAKE) -C csrc clean
	rm -rf "$(abspath $(FUZZ_BUILD))"

.PHONY: all deps build test fuzz fuzz-smoke fuzz-long asan tsan demo bench bench-ops bench-loader lint device-debs device-build install-rock repl \
        clean
