#!/bin/sh
# fuzz/long.sh — runs every fuzz target at once for FUZZ_SECONDS (default 3600) and prints a table
# of executions, executions per second and CPU seconds per target (`make fuzz-long`). The slower
# targets run at a higher priority than the fast ones (nice 6 / 13 / 19) so that each gets
# executions in proportion to its cost; everything runs niced, so the machine stays usable.
# Fails on any crash, leak, sanitizer report, harness check or slow input, and names the input.
#
# Environment: FUZZ_BUILD (default csrc/build-fuzz), FUZZ_SECONDS (default 3600), FUZZ_RSS_MB (default 2048),
# FUZZ_TARGETS (default all), FUZZ_CC (default clang), MAKE.
set -u
# shellcheck source=fuzz/settings.sh
. "$(dirname "$0")/settings.sh"
secs=${FUZZ_SECONDS:-3600}

mkdir -p "$build/logs" || exit 1
if ! $make -s --no-print-directory -f fuzz/Makefile MODE=libfuzzer BUILD_DIR="$build" FUZZ_CC="$cc" -j2 \
     >"$build/logs/build.log" 2>&1; then
  cat "$build/logs/build.log"
  echo "fuzz-long: building the fuzz targets failed (needs clang with libFuzzer)"
  exit 1
fi

# Relative cost of one execution, from the smoke runs: the slowest get the most CPU.
priority() {
  case $1 in
    json | lz4) echo 6 ;;
    torch_pt | pickle | msgpack | lmdb_value | bpe) echo 13 ;;
    *) echo 19 ;;
  esac
}

ran=
for t in $targets; do
  if echo "$skipped" | grep -q "^$t:"; then
    line=$(echo "$skipped" | grep "^$t:")
    echo "fuzz-long: $t: SKIPPED: it ${line#*: } to build"
    continue
  fi
  prepare_target "$t"
  # shellcheck disable=SC2086
  ( /usr/bin/env time -f "cpu %U %S" nice -n "$(priority "$t")" "$build/$t" -max_total_time="$secs" \
      -rss_limit_mb="$rss" -timeout=10 -print_final_stats=1 -artifact_prefix="$crashes/" $dict "$work" \
      "fuzz/corpus/$t" >"$build/logs/$t.long.log" 2>&1
    echo "exit $?" >>"$build/logs/$t.long.log" ) &
  ran="$ran $t"
done
wait

failed=0
echo "| target | seconds | executions | exec/s | CPU seconds | result |"
echo "|---|---|---|---|---|---|"
for t in $ran; do
  log=$build/logs/$t.long.log
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cpu=$(awk '/^cpu /{printf "%.0f", $2 + $3}' "$log")
  rc=$(sed -n 's/^exit //p' "$log")
  if [ "$rc" = 0 ]; then
    result="no crash"
  else
    found=$(find "$build/crashes/$t" -type f 2>/dev/null | head -n 1)
    result="FAILED (exit $rc${found:+, input $found})"
    failed=1
  fi
  echo "| $t | $secs | ${runs:-?} | ${rate:-?} | ${cpu:-?} | $result |"
done
[ $failed -eq 0 ] || { echo "fuzz-long: FAILED (logs in $build/logs/<target>.long.log)"; exit 1; }
echo "fuzz-long: every target clean"
