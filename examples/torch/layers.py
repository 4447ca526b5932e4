#!/usr/bin/python3
"""PyTorch side of examples/bench_layers.lua: times the same layer computations in PyTorch on this
machine, same shapes, same threads. Prints one line: `seconds <median seconds per iteration>`."""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Layer(nn.Module):
    """A BERT post-LayerNorm layer (the reference's BertLayer) in plain PyTorch."""

    def __init__(self, hidden, heads, inter):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
        self.i = nn.Linear(hidden, inter)
        self.out = nn.Linear(inter, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x, mask):
        b, l, h = x.shape
        dh = h // self.heads

        def split(t):
            return t.view(b, l, self.heads, dh).permute(0, 2, 1, 3)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + ((1 - mask) * -10000.0)[:, None, None, :]
        probs = scores.softmax(-1)
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(b, l, h)
        a = self.ln1(self.o(ctx) + x)
        return self.ln2(self.out(F.gelu(self.i(a))) + a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["layer", "emb", "adamw"], required=True)
    ap.add_argument("--mode", choices=["fwd", "fwdbwd", "step"], default="fwd")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.case == "layer":
        layer = Layer(768, 12, 3072)
        x = torch.randn(20, 33, 768, requires_grad=args.mode == "fwdbwd")
        mask = torch.ones(20, 33)

        def run():
            y = layer(x, mask)
            if args.mode == "fwdbwd":
                y.mean().backward()
    elif args.case == "emb":
        vocab, hidden = 50272, 768
        emb = nn.Embedding(vocab, hidden)
        dense = nn.Linear(hidden, hidden)
        ln = nn.LayerNorm(hidden, eps=1e-5)
        bias = torch.zeros(vocab, requires_grad=True)
        ids = torch.randint(0, vocab, (20, 33))
        tgt = torch.randint(0, vocab, (660,))

        def run():
            h = emb(ids).view(660, hidden)
            logits = F.linear(ln(F.gelu(dense(h))), emb.weight, bias)
            loss = F.cross_entropy(logits, tgt)
            if args.mode == "fwdbwd":
                loss.backward()
    else:
        params = [torch.zeros(800_000, requires_grad=True) for _ in range(150)]  # 120M parameters
        for p in params:
            p.grad = torch.randn(800_000) * 1e-3
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

        def run():
            opt.step()
    run()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    print("seconds", times[len(times) // 2])


if __name__ == "__main__":
    with torch.no_grad() if False else torch.enable_grad():
        main()
