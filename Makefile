# hero — top-level targets. `make test` and `make demo` are the whole set-up: they install the
# Debian packages hero needs (as root; otherwise they print the apt-get command and stop).

LUA ?= lua5.4
HERO_CUDA ?= auto
export HERO_CUDA

BUILD ?= csrc/build
LUA_ENV = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
          LUA_CPATH="$(abspath $(1))/?.so;;"

DEBIAN_PACKAGES := lua5.4 liblua5.4-dev lua-busted lua-check luarocks libopenblas-dev zlib1g-dev \
                   liblmdb-dev liblz4-dev python3-numpy pkg-config make gcc

all: build

deps:
	@./rocks/install-deps.sh $(DEBIAN_PACKAGES)

build: deps
	$(MAKE) -C csrc BUILD_DIR=$(abspath $(BUILD))

test: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) spec/run.lua

# AddressSanitizer + UBSan build of the module, run under the same specs. The sanitizer runtime
# must be loaded first because lua5.4 itself is not instrumented.
asan: deps
	$(MAKE) -C csrc SANITIZE=1
	@ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	 LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	 $(call LUA_ENV,csrc/build-asan) $(LUA) spec/run.lua

# HERO end to end on the embedded synthetic dataset (a few minutes on 2 cores): preprocessing into
# LMDBs, pre-training, VCMR fine-tuning with and without pre-training, evaluation, loss curves.
demo: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) examples/demo.lua $(DEMO_ARGS)

bench: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) examples/bench_ops.lua

lint: deps
	luacheck lua spec examples

# Installs hero with LuaRocks into a tree under the build directory, offline from this checkout
# (LuaRocks runs csrc/Makefile, then its install target), and loads it from another directory
# with only the paths `luarocks path` gives, as a user would.
ROCK_TREE ?= $(abspath $(BUILD))/rocktree
ROCK_CHECK = local hero = require "hero"; print(hero.zeros(2, 2)); \
             print("hero.core loaded from " .. package.searchpath("hero.core", package.cpath))
install-rock: deps
	luarocks --lua-version=5.4 make hero-scm-1.rockspec --tree "$(ROCK_TREE)"
	@cd / && unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4 && \
	 eval "$$(luarocks --lua-version=5.4 --tree "$(ROCK_TREE)" path)" && \
	 $(LUA) -e '$(ROCK_CHECK)'

repl: build
	@$(call LUA_ENV,$(BUILD)) $(LUA) -i -l hero

clean:
	$(MAKE) -C csrc clean

.PHONY: all deps build test asan demo bench lint install-rock repl clean
