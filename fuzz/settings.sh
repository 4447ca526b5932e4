# shellcheck shell=sh disable=SC2034  # sourced: the variables are used by the scripts that source it
# fuzz/settings.sh — what fuzz/smoke.sh and fuzz/long.sh share, sourced by both (not run): the
# checkout (made the working directory), the build directory, the memory limit, the compiler, the
# targets and those whose library is missing. $0 is the script in fuzz/ that sources it.
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
build=${FUZZ_BUILD:-$root/csrc/build-fuzz}
case $build in /*) ;; *) build=$root/$build ;; esac
rss=${FUZZ_RSS_MB:-2048}
make=${MAKE:-make}
cc=${FUZZ_CC:-clang}
targets=${FUZZ_TARGETS:-$($make -s --no-print-directory -f fuzz/Makefile list)}
# Targets whose library is missing on this machine ("<name>: needs <library>"): said, not failed.
skipped=$($make -s --no-print-directory -f fuzz/Makefile skipped)

# For target $1: work (its scratch corpus in the build directory, where new inputs go; the
# checked-in seeds are only read), crashes (emptied) and dict (a -dict= option, or empty).
prepare_target() {
  work=$build/corpus/$1
  crashes=$build/crashes/$1
  mkdir -p "$work" "$crashes"
  rm -f "$crashes"/*
  dict=
  if [ -f "fuzz/dict/$1.dict" ]; then dict=-dict=fuzz/dict/$1.dict; fi
}
