"""The PyTorch side of examples/bench_cuda.lua: the same shapes (a 4096 matmul in f32 and bf16,
multi-head attention and one BERT layer, batch 8 x 512 tokens, hidden 768) on a CUDA device,
eager mode, printing "torch <case> <milliseconds> ms" lines to compare with hero's.

  python3 examples/torch/bench_layers_cuda.py
"""
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
    return t.view(t.shape[0], t.shape[1], heads, dh).transpose(1, 2)

def attention(t, m=None):
    q, k, v = heads_of(F.linear(t, wq)), heads_of(F.linear(t, wk)), heads_of(F.linear(t, wv))
    s = q @ k.transpose(-1, -2) / dh ** 0.5 + (mask if m is None else m)
    p = F.dropout(s.softmax(-1), 0.1, True)
    return F.linear((p @ v).transpose(1, 2).reshape(t.shape[0], t.shape[1], H), wo)

def layer(t, m=None):
    h = F.layer_norm(t + attention(t, m), (H,), g1, b1, 1e-12)
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
# single ops on HERO's shapes (see examples/bench_cuda.lua)
T, R, Lr = 21120, 640, 33
xo = torch.randn(T, H, device=dev)
yo = torch.randn(T, H, device=dev)
xh = xo.bfloat16()
wide = torch.randn(T, Fd, device=dev)
wide_h = wide.bfloat16()
w, bias = torch.randn(Fd, H, device=dev) * 0.02, torch.zeros(Fd, device=dev)
wh, bh = w.bfloat16(), bias.bfloat16()
g, b = torch.ones(H, device=dev), torch.zeros(H, device=dev)
q = torch.randn(R, Lr, H, device=dev)
rmask = torch.zeros(R, 1, 1, Lr, device=dev)
scores = torch.randn(R, heads, Lr, Lr, device=dev)
logits = torch.randn(2720, 50272, device=dev)
target = torch.randint(0, 50272, (2720,), device=dev)

def attention_rows():
    qh = q.view(R, Lr, heads, dh).transpose(1, 2)
    p = ((qh @ qh.transpose(-1, -2)) / dh ** 0.5 + rmask).softmax(-1)
    return (p @ qh).transpose(1, 2).reshape(R, Lr, H)

ops = [
    ("cast_f32_bf16", lambda: xo.bfloat16()),
    ("cast_bf16_f32", lambda: xh.float()),
    ("clone_f32", lambda: xo.clone()),
    ("add_f32", lambda: xo + yo),
    ("permute_copy_f32", lambda: q.view(R, Lr, heads, dh).permute(0, 2, 1, 3).contiguous()),
    ("sum_rows_dim1_f32", lambda: xo.sum(0)),
    ("linear_bias_f32", lambda: F.linear(xo, w, bias)),
    ("linear_bias_bf16", lambda: F.linear(xh, wh, bh)),
    ("linear_nobias_bf16", lambda: F.linear(xh, wh)),
    ("gelu_f32", lambda: F.gelu(wide)),
    ("gelu_bf16", lambda: F.gelu(wide_h)),
    ("layer_norm_f32", lambda: F.layer_norm(xo, (H,), g, b, 1e-12)),
    ("layer_norm_bf16_in", lambda: F.layer_norm(xh.float(), (H,), g, b, 1e-12)),
    ("dropout_f32", lambda: F.dropout(xo, 0.1, True)),
    ("softmax_f32", lambda: scores.softmax(-1)),
    ("attention_f32", attention_rows),
    ("cross_entropy_f32", lambda: F.cross_entropy(logits, target)),
    ("sum_cols_bf16", lambda: wide_h.sum(0)),
]
with torch.no_grad():
    for name, fn in ops:
        report("op_" + name, time_ms(fn, 20))

# the MLM head's loss as the reference runs it: bf16 logits narrowed to the vocabulary, forward and
# backward under autocast
head = torch.randn(2720, 50272, device=dev).bfloat16().requires_grad_()
words = torch.randint(0, 50265, (2720,), device=dev)

def mlm_loss():
    head.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(head[:, :50265].float(), words)
    loss.backward()

report("cross_entropy_mlm_bf16_fwd_bwd", time_ms(mlm_loss, 20))

# the end of a BERT block under autocast: a bf16 projection dropped out, added to the f32 residual,
# layer-normed; forward and backward with a given upstream gradient
proj = torch.randn(T, H, device=dev).bfloat16().requires_grad_()
resid = torch.randn(T, H, device=dev, requires_grad=True)
ln_w, ln_b = torch.ones(H, device=dev, requires_grad=True), torch.zeros(H, device=dev, requires_grad=True)
upstream = torch.randn(T, H, device=dev)

def add_norm():
    for t in (proj, resid, ln_w, ln_b):
        t.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = F.layer_norm(F.dropout(proj, 0.1, True) + resid, (H,), ln_w, ln_b, 1e-12)
    y.backward(upstream)

report("add_norm_bf16_fwd_bwd", time_ms(add_norm, 20))
# clip_grad_norm's norm over a model's worth of tensors, read back to the host
grads = [torch.randn(50272, H, device=dev) * 1e-3]
for _ in range(9):
    for shape in [(3 * H, H), (3 * H,), (H, H), (H,), (Fd, H), (Fd,), (H, Fd), (H,), (H,), (H,), (H,), (H,)]:
        grads.append(torch.randn(*shape, device=dev) * 1e-3)
report("global_norm_model", time_ms(lambda: torch.linalg.vector_norm(
    torch.stack([torch.linalg.vector_norm(t) for t in grads])).item(), 20))


# with gradients, in bf16: the attention of the 640 rows (dropout 0.1) and one layer of them
qr = torch.randn(R, Lr, H, device=dev).bfloat16().requires_grad_()
rmask_h = rmask.bfloat16()

def attention_rows_bf16():
    qh = qr.view(R, Lr, heads, dh).transpose(1, 2)
    p = F.dropout(((qh @ qh.transpose(-1, -2)) / dh ** 0.5 + rmask_h).softmax(-1), 0.1, True)
    (p @ qh).transpose(1, 2).reshape(R, Lr, H).sum().backward()

report("rows_attention_bf16_fwd_bwd", time_ms(attention_rows_bf16, 10))
xr = torch.randn(R, Lr, H, device=dev, requires_grad=True)

def layer_rows_autocast():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(xr, rmask)
    y.float().sum().backward()

report("rows_layer_fwd_bwd_bf16", time_ms(layer_rows_autocast, 10))
print("torch memory: peak %.1f MiB" % (torch.cuda.max_memory_allocated() / 2 ** 20))
