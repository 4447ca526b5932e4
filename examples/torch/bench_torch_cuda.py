"""The PyTorch side of hero's GPU pre-training benchmark: the baseline model of the bench
(hero_torch_bench.py, given by path) on a CUDA device, eager mode, with the same batch layout,
optimizer and step as on the CPU (forward, backward, clip_grad_norm_, AdamW), forward under
torch.autocast when --amp is bf16 or f16. Prints one line per measurement:
  torch-cuda <config> <task> <mode> amp=<amp> median <ms> ms (min, max) <TFLOP/s>
and, with --json, writes the results there.

  python3 examples/torch/bench_torch_cuda.py --baseline path/to/hero_torch_bench.py \
      --config hero --videos 32 --amp bf16 --tasks mlm --modes fwd,step
"""
import argparse
import importlib.util
import json
import statistics
import time

import torch


def load_baseline(path):
    spec = importlib.util.spec_from_file_location("hero_torch_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def to_device(batch, device):
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def time_device(fn, reps, warmup, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def print_profile(fn, top, on_gpu, sync):
    """The measurement's kernels and ops by total device time (self time, so that nested ops
    are not counted twice), over 3 runs."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            fn()
        sync()
    key = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True, help="path of hero_torch_bench.py")
    ap.add_argument("--config", default="hero")
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--subs", type=int, default=20)
    ap.add_argument("--frames-per-sub", type=int, default=3)
    ap.add_argument("--txt-len", type=int, default=30)
    ap.add_argument("--amp", default="none", choices=["none", "bf16", "f16"])
    ap.add_argument("--tasks", default="mlm")
    ap.add_argument("--modes", default="fwd,step")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default="")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only checks the script")
    ap.add_argument("--profile", type=int, default=0,
                    help="after timing, run each measurement 3 more times under torch.profiler and print its "
                         "N costliest kernels and ops by device time")
    a = ap.parse_args()

    base = load_baseline(a.baseline)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(a.device)
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    torch.manual_seed(0)
    model = base.Hero(a.config).to(device)
    opt = base.build_optimizer(model)
    batch, dims = base.make_batch(a.videos, a.subs, a.frames_per_sub, a.txt_len)
    batch = to_device(batch, device)
    amp_dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(a.amp)
    scaler = torch.cuda.amp.GradScaler() if a.amp == "f16" and on_gpu else None
    name = torch.cuda.get_device_properties(0).name if on_gpu else "cpu"
    print(f"# torch {torch.__version__} device={name} config={a.config} amp={a.amp} batch={json.dumps(dims)}")

    def forward(task):
        if amp_dtype is None:
            return getattr(model, task)(batch)
        with torch.autocast(device.type, dtype=amp_dtype):
            return getattr(model, task)(batch)

    results = []
    for task in a.tasks.split(","):
        flops = base.count_flops(a.config, dims, task)["total"]
        for mode in a.modes.split(","):
            if mode == "fwd":
                model.eval()

                def fn(task=task):
                    with torch.no_grad():
                        forward(task)
            else:
                model.train()

                def fn(task=task, mode=mode):
                    opt.zero_grad(set_to_none=True)
                    loss = forward(task).float()
                    if scaler is not None:
                        scaler.scale(loss).backward()
                    else:
                        loss.backward()
                    if mode == "step":
                        if scaler is not None:
                            scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                        if scaler is not None:
                            scaler.step(opt)
                            scaler.update()
                        else:
                            opt.step()
            med, lo, hi = time_device(fn, a.reps, a.warmup, sync)
            counted = flops * (1.0 if mode == "fwd" else 3.0)
            tflops = counted / med / 1e12
            results.append(dict(config=a.config, task=task, mode=mode, amp=a.amp, median_s=med, min_s=lo,
                                max_s=hi, counted_tflop=counted / 1e12, tflops=tflops))
            print(f"torch-{device.type} {a.config} {task} {mode} amp={a.amp} median {med * 1e3:8.2f} ms "
                  f"(min {lo * 1e3:8.2f}, max {hi * 1e3:8.2f})  {tflops:7.1f} TFLOP/s", flush=True)
            if a.profile > 0:
                print_profile(fn, a.profile, on_gpu, sync)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if on_gpu else 0.0
    print(f"# torch peak device memory {peak:.0f} MiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"dims": dims, "peak_mib": peak, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
