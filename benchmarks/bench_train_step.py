"""Train-step throughput: our jitted JAX step vs an equivalent PyTorch eager nanoGPT, side by side.

    .venv/bin/python benchmarks/bench_train_step.py [--repeats 7] [--steps 5] [--shapes tiny,small]

JAX side: built exactly as ``experiments.base.build`` builds it (``init_params`` on a 1-device mesh,
``make_optimizer``, ``init_state``/``state_shardings``/``make_train_step`` with ``xent``; fp32).
Torch side: same shapes and work (pre-norm, fused qkv, rotary, causal SDPA, tanh-GELU MLP, tied
embeddings, RMSNorm, masked token-mean cross-entropy, global-norm clipping, AdamW with the same
decay mask; fp32), eager, ``torch.set_num_threads`` = the cores XLA uses; a ``torch.compile`` row
(the same model under ``torch.compile``, inductor; ``--no-compile`` skips it, and a compile error is
printed in its row, not raised) is shown beside eager. Repeats interleave the sides; warmup (and
compile) is excluded; tokens/s are medians over repeats. The ratio is against torch eager (the
issue's baseline); the last line is the geometric mean over the shapes of the per-shape median
ratios, and each shape's ratio and the CPU model are printed above it. ``BENCH_SMOKE=1``: tiny
shapes, one repeat, no torch.compile (seconds; figures meaningless).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import SMOKE, cpu_model, jax_train_setup, print_machine  # noqa: E402
from lm.model import ModelCfg  # noqa: E402

SHAPES = {  # name: (n_layers, d_model, n_heads, seq_len, batch, vocab)
    "tiny": (4, 128, 4, 128, 32, 264),
    "small": (6, 384, 6, 256, 16, 264),
}
if SMOKE:
    SHAPES = {"tiny": (1, 32, 2, 16, 4, 64), "small": (2, 32, 2, 16, 4, 64)}


# ----------------------------------------------------------------------------- JAX side


def cpu_threads() -> int:
    """CPU cores this process may use (what XLA's CPU thread pool sizes itself to)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def jax_setup(shape, seed: int = 0):
    n_layers, d, n_heads, seq, batch, vocab = shape
    mcfg = ModelCfg(vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=n_heads, d_ff=4 * d,
                    max_len=seq)
    _, state, step, batch_d = jax_train_setup(mcfg, batch, seq, seed)
    return {"state": state, "step": step, "batch": batch_d}


def jax_run(ctx, n: int) -> float:
    """Seconds for ``n`` steps (metrics fetched each step, as the loop does one step late)."""
    state, step, batch = ctx["state"], ctx["step"], ctx["batch"]
    t0 = time.perf_counter()
    for _ in range(n):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    dt = time.perf_counter() - t0
    ctx["state"], ctx["loss"] = state, float(metrics["loss"][0] / metrics["loss"][1])
    return dt


# ----------------------------------------------------------------------------- torch side


class TNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.scale, self.eps = torch.nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.scale, self.eps)


def t_rotary(x_BxLxNxH, cos_Lx1xH2, sin_Lx1xH2):
    x1, x2 = x_BxLxNxH.chunk(2, dim=-1)
    return torch.cat([x1 * cos_Lx1xH2 - x2 * sin_Lx1xH2, x2 * cos_Lx1xH2 + x1 * sin_Lx1xH2], -1)


class TBlock(torch.nn.Module):
    def __init__(self, d, n_heads, n_layers):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = TNorm(d), TNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.out = torch.nn.Linear(d, d, bias=False)
        self.up = torch.nn.Linear(d, 4 * d, bias=False)
        self.down = torch.nn.Linear(4 * d, d, bias=False)
        out_std = 0.02 / (2 * n_layers) ** 0.5
        for lin, std in ((self.qkv, 0.02), (self.up, 0.02), (self.out, out_std),
                         (self.down, out_std)):
            torch.nn.init.normal_(lin.weight, std=std)

    def forward(self, x_BxLxD, cos, sin):
        B, L, D = x_BxLxD.shape
        N = self.n_heads
        qkv = self.qkv(self.norm1(x_BxLxD)).view(B, L, 3, N, D // N)
        q, k, v = t_rotary(qkv[:, :, 0], cos, sin), t_rotary(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        x_BxLxD = x_BxLxD + self.out(o.transpose(1, 2).reshape(B, L, D))
        h = F.gelu(self.up(self.norm2(x_BxLxD)), approximate="tanh")
        return x_BxLxD + self.down(h)


class TGPT(torch.nn.Module):
    def __init__(self, n_layers, d, n_heads, seq, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        torch.nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = torch.nn.ModuleList(TBlock(d, n_heads, n_layers) for _ in range(n_layers))
        self.norm_f = TNorm(d)
        h = d // n_heads
        inv = 1.0 / (10000.0 ** (torch.arange(0, h, 2, dtype=torch.float32) / h))
        ang = torch.arange(seq, dtype=torch.float32)[:, None] * inv[None]
        self.register_buffer("cos", ang.cos()[:, None, :])
        self.register_buffer("sin", ang.sin()[:, None, :])

    def forward(self, tokens_BxL):
        x = self.embed(tokens_BxL)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        return self.norm_f(x) @ self.embed.weight.T  # tied


def torch_setup(shape, seed: int = 0, compiled: bool = False):
    n_layers, d, n_heads, seq, batch, vocab = shape
    torch.manual_seed(seed)
    model = TGPT(n_layers, d, n_heads, seq, vocab)
    fwd = torch.compile(model) if compiled else model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    rng = np.random.default_rng(seed)
    toks = torch.from_numpy(rng.integers(0, vocab, (batch, seq + 1)).astype(np.int64))
    return {"model": model, "fwd": fwd, "opt": opt, "inputs": toks[:, :-1],
            "targets": toks[:, 1:], "mask": torch.ones(batch, seq)}


def torch_run(ctx, n: int) -> float:
    model, opt = ctx["model"], ctx["opt"]
    t0 = time.perf_counter()
    for _ in range(n):
        logits = ctx["fwd"](ctx["inputs"])
        nll = F.cross_entropy(logits.flatten(0, 1), ctx["targets"].flatten(), reduction="none")
        mask = ctx["mask"].flatten()
        loss = (nll * mask).sum() / mask.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
    ctx["loss"] = float(loss.detach())
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- driver


def bench_shape(name, shape, repeats: int, steps: int, warmup: int, compile_: bool) -> float:
    tokens = shape[3] * shape[4]
    t0 = time.perf_counter()
    jctx = jax_setup(shape)
    jax_run(jctx, 1)
    compile_s = time.perf_counter() - t0
    sides = {"jax (jit)": (jctx, jax_run), "torch (eager)": (torch_setup(shape), torch_run)}
    compile_err = None
    if compile_:
        try:  # inductor needs a C++ compiler; any failure is reported in the table, not raised
            cctx = torch_setup(shape, compiled=True)
            torch_run(cctx, 1)
            sides["torch.compile"] = (cctx, torch_run)
        except Exception as e:  # noqa: BLE001 - report whatever torch.compile raised
            compile_err = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    for ctx, run in sides.values():
        run(ctx, warmup)
    times = {k: [] for k in sides}
    for _ in range(repeats):  # interleaved; a pause lets the other side's idle threads park
        for k, (ctx, run) in sides.items():
            time.sleep(0.2)
            times[k].append(run(ctx, steps) / steps)
    jt, tt = times["jax (jit)"], times["torch (eager)"]
    ratios = [t / j for t, j in zip(tt, jt)]
    jm, tm = statistics.median(jt), statistics.median(tt)
    n_params = sum(int(x.size) for x in jax.tree.leaves(jctx["state"]["params"]))
    print(f"\n[{name}] layers={shape[0]} d={shape[1]} heads={shape[2]} seq={shape[3]} "
          f"batch={shape[4]} vocab={shape[5]} params={n_params / 1e6:.2f}M tokens/step={tokens}")
    print(f"{'impl':<14}{'ms/step':>10}{'tokens/s':>12}{'min ms':>10}{'max ms':>10}{'loss':>9}")
    for impl, (ctx, _) in sides.items():
        ts = times[impl]
        med = statistics.median(ts)
        print(f"{impl:<14}{med * 1e3:>10.1f}{tokens / med:>12.0f}{min(ts) * 1e3:>10.1f}"
              f"{max(ts) * 1e3:>10.1f}{ctx['loss']:>9.4f}")
    if compile_err is not None:
        print(f"{'torch.compile':<14}failed: {compile_err}")
    elif not compile_:
        why = "BENCH_SMOKE=1" if SMOKE else "--no-compile"
        print(f"{'torch.compile':<14}skipped ({why})")
    ratio = statistics.median(ratios)
    extra = ""
    if "torch.compile" in times:
        ct = times["torch.compile"]
        extra = (f"; jax/torch.compile {statistics.median(c / j for c, j in zip(ct, jt)):.2f}, "
                 f"torch.compile/eager {statistics.median(t / c for t, c in zip(tt, ct)):.2f}")
    print(f"jax/torch tokens/s: median of per-repeat ratios {ratio:.2f} (ratio of medians "
          f"{tm / jm:.2f}, of fastest repeats {min(tt) / min(jt):.2f}){extra}; "
          f"jax compile+first step {compile_s:.1f}s; load average {os.getloadavg()[0]:.1f}")
    return ratio


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1 if SMOKE else 7)
    ap.add_argument("--steps", type=int, default=1 if SMOKE else 5, help="steps per timed repeat")
    ap.add_argument("--warmup", type=int, default=1 if SMOKE else 3)
    ap.add_argument("--shapes", default="tiny,small")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    args = ap.parse_args(argv)
    threads = cpu_threads()
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    print_machine(baseline="PyTorch eager nanoGPT-equivalent step (same shapes, AdamW, fp32, "
                  "threads); torch.compile shown beside it")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device), "
          f"torch {torch.__version__} threads={torch.get_num_threads()}, XLA threads={threads}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    names = args.shapes.split(",")
    compile_ = not (args.no_compile or SMOKE)
    ratios = [bench_shape(n, SHAPES[n], args.repeats, args.steps, args.warmup, compile_)
              for n in names]
    gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print("\nper-shape jax/torch(eager) tokens/s ratios: "
          + ", ".join(f"{n} {r:.2f}" for n, r in zip(names, ratios)) + f"; cpu: {cpu_model()}")
    print(f"geometric mean over shapes {names} of the jax/torch tokens/s ratios")
    print(f"train_step jax/torch tokens_per_s ratio: {gm:.2f}")


if __name__ == "__main__":
    main()
