#!/bin/sh
# sources_hash.sh — one sha256 over hero's C and CUDA sources and csrc/Makefile, printed on stdout.
# `make device-build` stores it beside the build (.devbuild/sources.sha256); examples/device_check.sh
# uses that build only when the sources it was made from are the ones in the checkout.
cd "$(dirname "$0")/.." || exit 1
find csrc -name 'build*' -prune -o -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \
  -o -name Makefile \) -print | LC_ALL=C sort | xargs cat | sha256sum | cut -d' ' -f1
