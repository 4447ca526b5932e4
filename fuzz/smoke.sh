#!/bin/sh
# fuzz/smoke.sh — runs every fuzz target for a bounded time over its seed corpus (`make fuzz-smoke`).
# Fails on any crash, leak, sanitizer report, harness check or slow input, and prints the input that
# caused it. Where clang's libFuzzer is missing it says so and replays the seed corpora through an
# AddressSanitizer + UBSan build instead, so the parsers still run.
#
# Environment: FUZZ_BUILD (build directory, default csrc/build-fuzz), FUZZ_SECONDS (per target,
# default 5), FUZZ_RSS_MB (memory limit, default 2048), FUZZ_TARGETS (a subset, default all),
# FUZZ_CC (default clang), MAKE.
set -u
# shellcheck source=fuzz/settings.sh
. "$(dirname "$0")/settings.sh"
secs=${FUZZ_SECONDS:-5}

mkdir -p "$build" || exit 1
probe=$build/libfuzzer-probe
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
  > "$probe.c"
if "$cc" -fsanitize=fuzzer,address,undefined -o "$probe" "$probe.c" >"$probe.log" 2>&1; then
  mode=libfuzzer
else
  mode=replay
  echo "fuzz-smoke: $cc cannot build libFuzzer programs (-fsanitize=fuzzer; on Debian install clang and"
  echo "fuzz-smoke: libclang-rt-14-dev): NOT fuzzing; replaying the seed corpora through an"
  echo "fuzz-smoke: AddressSanitizer + UBSan build of each target instead"
fi
rm -f "$probe" "$probe.c"

mkdir -p "$build/logs"
if ! $make -s --no-print-directory -f fuzz/Makefile MODE=$mode BUILD_DIR="$build" FUZZ_CC="$cc" -j2 \
     >"$build/logs/build.log" 2>&1; then
  cat "$build/logs/build.log"
  echo "fuzz-smoke: building the fuzz targets failed"
  exit 1
fi

failed=0
ran=0
echo "$skipped" | while IFS= read -r line; do
  [ -n "$line" ] && echo "fuzz-smoke: ${line%%:*}: SKIPPED: it ${line#*: } to build"
done
for t in $targets; do
  if echo "$skipped" | grep -q "^$t:"; then
    continue
  fi
  seeds=fuzz/corpus/$t
  if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
    echo "fuzz-smoke: $t: no seed corpus in $seeds"
    failed=1
    continue
  fi
  log=$build/logs/$t.log
  if [ $mode = replay ]; then
    # One process per input, so a leak (reported at exit) is pinned on its input too.
    n=0
    bad=
    for f in "$seeds"/*; do
      n=$((n + 1))
      if ! "$build/replay/$t" "$f" >"$log" 2>&1; then
        bad=$f
        break
      fi
    done
    if [ -z "$bad" ]; then
      echo "fuzz-smoke: $t: replayed $n seed inputs, no crash"
    else
      grep -v '^fuzz replay: ' "$log" | tail -n 40
      echo "fuzz-smoke: $t: FAILED: crash input $bad"
      echo "fuzz-smoke: reproduce with: $build/replay/$t $bad"
      failed=1
    fi
    ran=$((ran + 1))
    continue
  fi
  prepare_target "$t"
  # shellcheck disable=SC2086
  "$build/$t" -max_total_time="$secs" -rss_limit_mb="$rss" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$crashes/" $dict "$work" "$seeds" >"$log" 2>&1
  rc=$?
  ran=$((ran + 1))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  if [ $rc -eq 0 ]; then
    echo "fuzz-smoke: $t: ${runs:-?} runs in ${secs} s (${rate:-?} exec/s), corpus $(ls "$seeds" | wc -l) seeds + $(ls "$work" | wc -l) found in this build dir, no crash"
  else
    tail -n 40 "$log"
    found=$(ls "$crashes" 2>/dev/null | head -n 1)
    if [ -n "$found" ]; then
      echo "fuzz-smoke: $t: FAILED: crash input $crashes/$found"
      echo "fuzz-smoke: reproduce with: $build/$t $crashes/$found"
    else
      echo "fuzz-smoke: $t: FAILED (exit status $rc, no input saved; full log: $log)"
    fi
    failed=1
  fi
done

if [ $ran -eq 0 ] && [ -z "$skipped" ]; then
  echo "fuzz-smoke: no fuzz target ran"
  exit 1
fi
if [ $failed -ne 0 ]; then
  echo "fuzz-smoke: FAILED"
  exit 1
fi
echo "fuzz-smoke: $ran targets ($mode) clean"
