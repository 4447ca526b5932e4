#!/bin/sh
# device_check.sh — everything that needs a GPU, in one run: builds hero with the CUDA backend
# (HERO_CUDA=1), runs the GPU specs (#cuda) and the default suite on that build, then a short
# benchmark (matmul, attention, one transformer layer) and, when python3 with a CUDA-enabled
# PyTorch is installed, the same shapes in PyTorch for comparison.
#   sh examples/device_check.sh [build-dir]     (default: /tmp/hero-build-device)
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${1:-/tmp/hero-build-device}
LUA=${LUA:-lua5.4}
status=0

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(nvidia-smi unavailable)"
command -v nvcc >/dev/null 2>&1 || PATH="$PATH:/usr/local/cuda/bin"
nvcc --version 2>/dev/null | tail -1

echo "== build (HERO_CUDA=1)"
make -C csrc HERO_CUDA=1 BUILD_DIR="$BUILD" -j"$(nproc 2>/dev/null || echo 4)" || exit 1

export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;$PWD/spec/?.lua;;"
export LUA_CPATH="$BUILD/?.so;;"
$LUA -e 'local h = require "hero"; print("hero.cuda.available():", h.cuda.available(), "devices:", h.cuda.device_count())'

echo "== GPU specs (#cuda)"
timeout 900 $LUA spec/run.lua --run=cuda || status=1

echo "== default specs on the CUDA build"
timeout 900 $LUA spec/run.lua || status=1

echo "== benchmark: hero"
timeout 600 $LUA examples/bench_cuda.lua || status=1
echo "== benchmark: HERO pre-training step, config hero, 32 videos (the reference's per-GPU batch)"
for amp in "" bf16; do
  timeout 300 $LUA examples/bench_pretrain.lua --config hero --device cuda:0 ${amp:+--amp $amp} --videos 32 \
    --tasks mlm --modes fwd,step --reps 5 --warmup 2 || status=1
done

if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "== benchmark: PyTorch $(python3 -c 'import torch; print(torch.__version__)')"
  timeout 600 python3 - <<'PY' || status=1
import time, torch
import torch.nn.functional as F
torch.backends.cuda.matmul.allow_tf32 = False
dev = "cuda"

def time_ms(fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3

def report(name, ms, flops=None):
    extra = "  %8.1f TFLOP/s" % (flops / (ms * 1e-3) / 1e12) if flops else ""
    print("torch %-28s %9.3f ms%s" % (name, ms, extra))

torch.manual_seed(0)
N = 4096
for dt, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
    a = torch.randn(N, N, device=dev, dtype=dt)
    b = torch.randn(N, N, device=dev, dtype=dt)
    report("matmul_%d_%s" % (N, name), time_ms(lambda: a @ b, 10), 2 * N ** 3)

B, L, H, heads, Fd = 8, 512, 768, 12, 3072
dh = H // heads
def param(*s):
    return (torch.randn(*s, device=dev) * 0.02).requires_grad_()
x = torch.randn(B, L, H, device=dev, requires_grad=True)
mask = torch.zeros(B, 1, 1, L, device=dev)
wq, wk, wv, wo = param(H, H), param(H, H), param(H, H), param(H, H)
w1, w2 = param(Fd, H), param(H, Fd)
g1, b1 = torch.ones(H, device=dev, requires_grad=True), torch.zeros(H, device=dev, requires_grad=True)
g2, b2 = torch.ones(H, device=dev, requires_grad=True), torch.zeros(H, device=dev, requires_grad=True)

def heads_of(t):
    return t.view(B, L, heads, dh).transpose(1, 2)

def attention(t):
    q, k, v = heads_of(F.linear(t, wq)), heads_of(F.linear(t, wk)), heads_of(F.linear(t, wv))
    s = q @ k.transpose(-1, -2) / dh ** 0.5 + mask
    p = F.dropout(s.softmax(-1), 0.1, True)
    return F.linear((p @ v).transpose(1, 2).reshape(B, L, H), wo)

def layer(t):
    h = F.layer_norm(t + attention(t), (H,), g1, b1, 1e-12)
    return F.layer_norm(h + F.linear(F.gelu(F.linear(h, w1)), w2), (H,), g2, b2, 1e-12)

def no_grad(fn):
    with torch.no_grad():
        return fn(x)

report("attention_fwd", time_ms(lambda: no_grad(attention), 5))
report("attention_fwd_bwd", time_ms(lambda: attention(x).sum().backward(), 5))
report("transformer_layer_fwd", time_ms(lambda: no_grad(layer), 5))
report("transformer_layer_fwd_bwd", time_ms(lambda: layer(x).sum().backward(), 5))

def layer_autocast():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()

report("transformer_layer_fwd_bwd_bf16", time_ms(layer_autocast, 5))
print("torch memory: peak %.1f MiB" % (torch.cuda.max_memory_allocated() / 2 ** 20))
PY
else
  echo "== PyTorch with CUDA not found: skipping the comparison"
fi

echo "== done (status $status)"
exit $status
