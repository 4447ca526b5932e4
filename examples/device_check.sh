#!/bin/sh
# device_check.sh — everything that needs a GPU, in one run of a few minutes, on a bare machine with
# the CUDA toolkit: sets up hero's Debian packages from .debs/ when the system lacks them
# (examples/device_env.sh), uses the build in $HERO_DEVICE_BUILD (.devbuild) when it was made from
# these sources (`make device-build`: CUDA objects for sm_80/sm_90, CPU code for any x86-64-v3
# processor) and builds there otherwise, then runs
#   1. the GPU specs (#cuda, and cuda_device_spec's untagged checks), one spec file per process so
#      that one crash does not hide the rest,
#   2. layers: examples/bench_cuda.lua (a matmul, attention, one BERT layer) and the same shapes
#      in PyTorch (examples/torch/bench_layers_cuda.py),
#   3. the pre-training benchmark on the GPU (config hero, the reference's 32-video batch, MLM and
#      VSM forward and step, f32 and bf16), examples/profile_ops.lua (time per op), and the same
#      model in PyTorch eager on the same GPU in the same run (MLM), when a CUDA PyTorch and the
#      baseline model (.bench/hero_torch_bench.py) are there.
# Logs go to $OUT (or /tmp/hero-device-out).
#   4. (phase profile, not in the default) examples/profile_ops.lua with every op and backward node
#      waiting for the GPU, PyTorch's kernels of the same step (torch.profiler), and the GPU kernels
#      by total time under Nsight Systems when it is there.
#   5. (phase kernels, not in the default) every kernel of the MLM step timed under Nsight Compute
#      (ncu, one metric per launch), summed by kernel: examples/kernel_times.py.
#   6. (phase loader, not in the default) examples/bench_loader.lua on the plain TV-like database:
#      batches of 32 videos per task with 1, 2 and 4 prefetch workers on this machine's cores, the
#      training thread's host-to-device copy of each batch (Trainer.batch_to), and a loop that keeps
#      the device busy fed by batches moved by the training thread or uploaded by the workers
#      (PrefetchLoader{device =}).
#   7. (phase train, not in the default) examples/pretrain.lua on that database (kept in
#      /tmp/hero-tvdb), bf16, 32 videos, MLM and VSM: --workers 0 against --workers 4 (batches
#      uploaded by the workers), milliseconds per update and the losses of both (the same batches).
# HERO_CHECK_AMPS="none bf16" (the default) picks the precisions the benchmark and profiles run in.
#   8. (phase alternate, not in the default) hero's and PyTorch's bf16 MLM step in alternating
#      processes, HERO_CHECK_ROUNDS rounds (5): the median ratio with its min and max.
#   sh examples/device_check.sh [phases]      phases: any of env,specs,layers,bench,profile,kernels,loader,train,alternate
#                                              (default: env,specs,layers,bench)
set -u
cd "$(dirname "$0")/.." || exit 1
PHASES=${1:-env,specs,layers,bench}
# The precisions of the benchmark and profile runs: none (f32) and/or bf16.
AMPS=${HERO_CHECK_AMPS:-none bf16}
OUT=${OUT:-/tmp/hero-device-out}
mkdir -p "$OUT"
LUA=lua5.4
status=0
has_phase() { case ",$PHASES," in *",$1,"*) return 0 ;; esac; return 1; }
stamp() { echo "== [$(date +%H:%M:%S)] $*"; }

stamp "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(nvidia-smi unavailable)"
command -v nvcc >/dev/null 2>&1 || PATH="$PATH:/usr/local/cuda/bin"
nvcc --version 2>/dev/null | tail -1
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc)"
echo "system has: lua5.4=$(command -v lua5.4 || echo no) mpirun=$(command -v mpirun || echo no) gcc=$(gcc -dumpversion 2>/dev/null || echo no)"

. examples/device_env.sh
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;$PWD/spec/?.lua;${HERO_DEB_LUA_PATH:+$HERO_DEB_LUA_PATH;};"
# cuBLAS: the toolkit's, else the one PyTorch's wheels carry.
if ! ls /usr/local/cuda/lib64/libcublas.so.* >/dev/null 2>&1; then
  for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, q, "lib") for p in nvidia.__path__ for q in ("cublas", "cuda_runtime")))' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  done
  export LD_LIBRARY_PATH
fi

BUILD=${HERO_DEVICE_BUILD:-$PWD/.devbuild}
load_check() {
  LUA_CPATH="$BUILD/?.so;${HERO_DEB_LUA_CPATH:+$HERO_DEB_LUA_CPATH;};" $LUA -e '
    local h = require "hero"
    print("hero.cuda.available():", h.cuda.available(), "devices:", h.cuda.device_count(),
          h.cuda.device_count() > 0 and h.cuda.device_name(0) or "")
    print("nccl:", h.cuda.nccl_available and h.cuda.nccl_available(), "dist built:", h.dist and h.dist.available and h.dist.available())
    os.exit(h.cuda.device_count() > 0 and 0 or 3)'
}
# The carried build, when it was made from these sources and loads.
carried_build_ok() {
  if [ "$(cat "$BUILD/sources.sha256" 2>/dev/null)" != "$(sh examples/sources_hash.sh)" ]; then
    echo "$BUILD was not built from these sources (make device-build): building here"
    return 1
  fi
  load_check
}
stamp "load the build in $BUILD"
if ! carried_build_ok; then
  BUILD=/tmp/hero-build-device
  stamp "building in $BUILD (HERO_CUDA=1)"
  # Warnings stay on but do not stop the build: this machine's compiler may be newer.
  if ! eval "make -C csrc HERO_CUDA=1 WERROR= BUILD_DIR=$BUILD -j$(nproc) $HERO_MAKE_ARGS" >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    echo "== build failed"
    exit 1
  fi
  grep -c "warning:" "$OUT/build.log" | sed 's/^/compiler warnings: /'
  grep -m 20 "warning:" "$OUT/build.log"
  load_check || status=1
fi
export LUA_CPATH="$BUILD/?.so;${HERO_DEB_LUA_CPATH:+$HERO_DEB_LUA_CPATH;};"
has_phase env && ! has_phase specs && ! has_phase layers && ! has_phase bench && ! has_phase profile &&
  ! has_phase kernels && ! has_phase alternate && exit $status

if has_phase specs; then
  for spec in spec/cuda_spec.lua spec/cuda_device_spec.lua spec/dist_spec.lua; do
    name=$(basename "$spec" .lua)
    stamp "GPU specs: $spec"
    # cuda_device_spec's checks are untagged (they run everywhere); the others' GPU checks are #cuda
    tag="--run=cuda"
    [ "$name" = cuda_device_spec ] && tag=""
    timeout -k 5 240 stdbuf -oL -eL $LUA spec/run.lua $tag -o TAP "$spec" >"$OUT/$name.log" 2>&1
    rc=$?
    grep -E "^(not ok|# Failure|# spec|# Error)|nccl all_reduce" "$OUT/$name.log" | head -60
    echo "$(grep -c '^ok' "$OUT/$name.log") ok, $(grep -c '^not ok' "$OUT/$name.log") not ok (exit $rc)"
    [ $rc -eq 0 ] || status=1
  done
fi

torch_ok() { env -u LD_LIBRARY_PATH python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

if has_phase layers; then
  stamp "layers: hero"
  timeout -k 5 120 $LUA examples/bench_cuda.lua 2>&1 | tee -a "$OUT/layers.log" || status=1
  if torch_ok; then
    stamp "layers: PyTorch"
    env -u LD_LIBRARY_PATH timeout -k 5 120 python3 examples/torch/bench_layers_cuda.py 2>&1 | tee -a "$OUT/layers.log" || status=1
  fi
fi

if has_phase bench; then
  stamp "benchmark: HERO pre-training, config hero, 32 videos, MLM and VSM (hero; amps: $AMPS)"
  for amp in $AMPS; do
    [ "$amp" = none ] && amp=""
    timeout -k 5 150 $LUA examples/bench_pretrain.lua --config hero --device cuda:0 ${amp:+--amp $amp} --videos 32 \
      --tasks mlm,vsm --modes fwd,step --reps 10 --warmup 3 2>&1 | tee -a "$OUT/bench.log" | grep -v "^#" || status=1
  done
  if [ -f .bench/hero_torch_bench.py ] && torch_ok; then
    stamp "benchmark: the same model in PyTorch eager"
    for amp in $AMPS; do
      env -u LD_LIBRARY_PATH timeout -k 5 150 python3 examples/torch/bench_torch_cuda.py --baseline .bench/hero_torch_bench.py \
        --config hero --videos 32 --amp $amp --tasks mlm --modes fwd,step --reps 10 --warmup 3 2>&1 | tee -a "$OUT/bench.log" || status=1
    done
  else
    echo "== no CUDA PyTorch or no .bench/hero_torch_bench.py: no comparison"
  fi
  stamp "profile: time per op of the hero step on the GPU"
  for amp in $AMPS; do
    [ "$amp" = none ] && amp=""
    timeout -k 5 120 $LUA examples/profile_ops.lua --device cuda:0 --videos 32 --reps 3 --top 25 --mode step ${amp:+--amp $amp} 2>&1 |
      tee -a "$OUT/profile.log" || status=1
  done
fi

if has_phase profile; then
  stamp "profile: the hero step op by op and its backward node by node, each waiting for the GPU"
  for amp in $AMPS; do
    [ "$amp" = none ] && amp=""
    timeout -k 5 150 $LUA examples/profile_ops.lua --device cuda:0 --videos 32 --reps 3 --top 30 --mode step --sync 1 \
      ${amp:+--amp $amp} 2>&1 | tee -a "$OUT/profile.log" || status=1
  done
  if [ -f .bench/hero_torch_bench.py ] && torch_ok; then
    stamp "profile: PyTorch's kernels and ops of the same step (torch.profiler)"
    for amp in $AMPS; do
      env -u LD_LIBRARY_PATH timeout -k 5 150 python3 examples/torch/bench_torch_cuda.py --baseline .bench/hero_torch_bench.py \
        --config hero --videos 32 --amp $amp --tasks mlm --modes step --reps 3 --warmup 2 --profile 40 2>&1 |
        tee -a "$OUT/profile.log" | cut -c1-200 || status=1
    done
  fi
  NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$NSYS" ]; then
    stamp "profile: GPU kernels of the bf16 step ($NSYS)"
    timeout -k 5 200 "$NSYS" profile -t cuda -o /tmp/hero-step-bf16 --force-overwrite true $LUA examples/profile_ops.lua \
      --device cuda:0 --videos 32 --reps 3 --mode step --amp bf16 >"$OUT/nsys.log" 2>&1 || tail -5 "$OUT/nsys.log"
    for report in cuda_gpu_kern_sum gpukernsum; do
      timeout -k 5 100 "$NSYS" stats -q --report $report --format csv /tmp/hero-step-bf16.nsys-rep >"$OUT/kernels.csv" 2>>"$OUT/nsys.log" && break
    done
    head -45 "$OUT/kernels.csv" | cut -c1-230
  else
    echo "== no nsys on this machine"
  fi
fi

if has_phase kernels; then
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -n "$NCU" ]; then
    for amp in $AMPS; do
      [ "$amp" = none ] && amp=""
      stamp "kernels of one warm-up and one timed MLM step under Nsight Compute (${amp:-f32})"
      csv="$OUT/kernels${amp:+-$amp}.csv"
      timeout -k 5 200 "$NCU" --metrics gpu__time_duration.sum --csv --print-units base $LUA examples/bench_pretrain.lua \
        --config hero --device cuda:0 ${amp:+--amp $amp} --videos 32 --tasks mlm --modes step --reps 1 --warmup 1 \
        >"$csv" 2>"$OUT/ncu.log" || { tail -5 "$OUT/ncu.log"; status=1; }
      python3 examples/kernel_times.py "$csv" --per 2 --top 45 || status=1
    done
  else
    echo "== no ncu on this machine"
  fi
fi

# Phase alternate: hero's bf16 MLM step and PyTorch's in turns (A B A B ...), one process each per
# round, so that both sides of a round see the same machine; the median of the per-round ratios,
# with their min and max (HERO_CHECK_ROUNDS rounds, default 5).
if has_phase alternate; then
  if [ -f .bench/hero_torch_bench.py ] && torch_ok; then
    stamp "alternating rounds: hero and PyTorch, bf16 MLM step, 32 videos"
    : >"$OUT/alternate.log"
    round=1
    while [ "$round" -le "${HERO_CHECK_ROUNDS:-5}" ]; do
      h=$(timeout -k 5 120 $LUA examples/bench_pretrain.lua --config hero --device cuda:0 --amp bf16 --videos 32 \
        --tasks mlm --modes step --reps 10 --warmup 3 2>&1 | awk '/ step +median/ { print $7 }')
      t=$(env -u LD_LIBRARY_PATH timeout -k 5 120 python3 examples/torch/bench_torch_cuda.py --baseline .bench/hero_torch_bench.py \
        --config hero --videos 32 --amp bf16 --tasks mlm --modes step --reps 10 --warmup 3 2>&1 | awk '/ step amp=/ { print $7 }')
      echo "round $round: hero ${h:-?} ms, PyTorch ${t:-?} ms" | tee -a "$OUT/alternate.log"
      [ -n "$h" ] && [ -n "$t" ] || status=1
      round=$((round + 1))
    done
    awk '/^round/ && $4 + 0 > 0 && $7 + 0 > 0 { r[++n] = $4 / $7; h[n] = $4; t[n] = $7 }
      function median(a, n,   i, j, x) { for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
      END { if (n == 0) exit 1; mr = median(r, n); lo = r[1]; hi = r[n]
        printf "hero / PyTorch, bf16 MLM step: median %.3f (min %.3f, max %.3f) over %d rounds; median times %.1f ms and %.1f ms\n",
          mr, lo, hi, n, median(h, n), median(t, n) }' "$OUT/alternate.log" | tee -a "$OUT/alternate.log" || status=1
  else
    echo "== no CUDA PyTorch or no .bench/hero_torch_bench.py: no alternating rounds"
  fi
fi

TVDB=/tmp/hero-tvdb
if has_phase loader; then
  stamp "data pipeline: batches of 32 TV-like videos, 1/2/4 workers, host-to-device copies"
  timeout -k 5 300 $LUA examples/bench_loader.lua --db plain --workers 1,2,4 --batches 6 --device cuda:0 \
    --dir "$TVDB" --keep 1 2>&1 | tee -a "$OUT/loader.log" || status=1
fi

if has_phase train; then
  stamp "pre-training on the TV-like database: --workers 0 against --workers 4 (uploads by the workers)"
  [ -f "$TVDB/bench_loader.json" ] || timeout -k 5 200 $LUA examples/bench_loader.lua --db plain --tasks mlm \
    --workers 1 --batches 1 --dir "$TVDB" --keep 1 >/dev/null 2>&1
  for w in 0 4; do
    rm -rf "/tmp/hero-train-w$w"
    timeout -k 5 150 $LUA examples/pretrain.lua --config spec/fixtures/reference_config/hero_pretrain.json \
      --vfeat-db "$TVDB/video_db/tv/resnet_slowfast_1.5" --sub-db "$TVDB/txt_db/tv_subtitles.db" --device cuda:0 \
      --amp bf16 --workers $w --steps 16 --tasks mlm,vsm --accum 1 --out "/tmp/hero-train-w$w" >"$OUT/train-w$w.log" 2>&1 ||
      { tail -5 "$OUT/train-w$w.log"; status=1; }
  done
  $LUA -e '
    local json = require "hero.json"
    local runs = {}
    for _, w in ipairs {0, 4} do
      local f = io.open("/tmp/hero-train-w" .. w .. "/log.jsonl")
      if f then
        local recs, secs = {}, {}
        for line in f:lines() do
          local ok, r = pcall(json.decode, line)
          if ok and type(r) == "table" and r.step and r.seconds then recs[#recs + 1] = r end
        end
        f:close()
        for i = 4, #recs do secs[#secs + 1] = recs[i].seconds end
        table.sort(secs)
        local losses = {}
        for i = 1, math.min(4, #recs) do losses[i] = string.format("%.5f", recs[i].loss) end
        print(string.format("--workers %d: %d updates, median %.1f ms an update after the first 3, losses %s", w,
          #recs, (secs[(#secs + 1) // 2] or 0) * 1e3, table.concat(losses, " ")))
        runs[w] = recs
      end
    end
    if runs[0] and runs[4] then
      local d = {}
      for i = 1, math.min(8, #runs[0], #runs[4]) do
        d[i] = string.format("%.1e", math.abs(runs[0][i].loss - runs[4][i].loss) / math.max(math.abs(runs[0][i].loss), 1e-9))
      end
      print("relative loss differences (the same batches): " .. table.concat(d, " "))
    end' || status=1
fi

stamp "done (status $status)"
exit $status
