"""GPU check: training tokens/s and MFU at two real shapes, KV-cache decode tokens/s (one script).

    .venv/bin/python benchmarks/gpu_check.py                 # on an H100/H200: ~3-6 minutes
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke     # tiny sizes, seconds (the suite)

1. GPT-2-124M shape (12 layers, d=768, 12 heads, seq 1024, vocab 50304, learned positions,
   LayerNorm and biases, GELU-tanh, tied embeddings), bf16 compute / fp32 params,
   ``model.attention=auto`` (cuDNN flash attention on a GPU): training tokens/s and MFU (target
   >= 45%, modded-nanoGPT class).
2. A 1B Llama-shaped random model (the Llama 3.2 1B shape: 16 layers, d=2048, 32 heads of 64
   with 8 kv heads, SwiGLU 8192, RMSNorm, RoPE, tied vocab 128256, seq 2048) with
   ``model.remat=full``: that it fits, its MFU and XLA's temp bytes.
3. KV-cache decode tokens/s at batch 64 with the 124M model (``lm.sample.generate``, greedy).

The train step is the codebase's own (``lm.train.make_train_step`` with ``xent``, AdamW). MFU is
``lm.perf``'s: model FLOPs per token ``6N + 12 L n_heads head_dim T`` (PaLM appendix B, lookup
tables excluded from N) x tokens/s / the device's dense bf16 peak (on a CPU: a measured fp32
matmul peak; an unknown accelerator gives ``"n/a"``).
Results go to ``results/gpu/<date>_<device>.json`` plus a line in ``results/gpu/README.md``
(both written atomically; ``--out`` elsewhere). ``BENCH_SMOKE=1`` is the same as ``--cpu-smoke``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import jax_train_setup  # noqa: E402
from lm import sharding as sh  # noqa: E402
from lm.metrics import write_atomic, write_json  # noqa: E402
from lm.model import GPT, ModelCfg  # noqa: E402
from lm.perf import cpu_matmul_peak, device_peak_flops, flops_per_token, model_params, perf_metrics  # noqa: E402, E501
from lm.sample import SampleCfg, generate  # noqa: E402

GPT2 = dict(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_len=1024,
            pos="learned", norm="layer", norm_bias=True, mlp="gelu", act="gelu_tanh",
            qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True)
LLAMA_1B = dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                d_ff=8192, max_len=2048, pos="rope", norm="rms", mlp="swiglu", rope_base=500000.0,
                tie_embeddings=True)  # the Llama 3.2 1B shape (1.24B params)
SMOKE = dict(vocab_size=256, d_model=64, n_layers=1, n_heads=4, d_ff=128, max_len=64)
# (batch, seq, timed steps) per part; decode: (batch, prompt, new tokens)
FULL_RUN = {"gpt2": (32, 1024, 20), "llama_1b": (8, 2048, 8), "decode": (64, 128, 256)}
SMOKE_RUN = {"gpt2": (4, 64, 2), "llama_1b": (2, 64, 2), "decode": (4, 8, 8)}


def part_peak(dev) -> tuple[float | None, str]:
    """The peak FLOP/s available to a part, which runs on one device. On a CPU that is the whole
    measured matmul peak, not ``device_peak_flops``' share per simulated device: XLA's CPU devices
    share one thread pool, so one device running alone uses every core (against the per-device
    share a smoke step on 8 simulated devices reads MFU > 1)."""
    if dev.platform == "cpu":
        return cpu_matmul_peak(), "measured fp32 matmul, whole CPU (a part runs on one device)"
    return device_peak_flops(dev)


def build_step(mcfg: ModelCfg, batch: int, seq: int, seed: int = 0):
    return jax_train_setup(mcfg, batch, seq, seed)


def train_part(name: str, mcfg: ModelCfg, batch: int, seq: int, steps: int) -> dict:
    t0 = time.perf_counter()
    graphdef, state, step, b = build_step(mcfg, batch, seq)
    n_params = sum(int(x.size) for x in jax.tree.leaves(state["params"]))
    compiled = step.lower(state, b).compile()
    mem = compiled.memory_analysis()
    state, m = compiled(state, b)  # warm-up step
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, b)
    jax.block_until_ready((state, m))
    step_s = (time.perf_counter() - t0) / steps
    dev = jax.devices()[0]
    fpt = flops_per_token(mcfg, model_params(state["params"], mcfg), seq)
    perf = perf_metrics(step_s, batch * seq, fpt, 1, part_peak(dev)[0])
    mfu = perf["perf/mfu"]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    out = {"name": name, "params_M": round(n_params / 1e6, 1), "batch": batch, "seq": seq,
           "remat": getattr(mcfg, "remat", "none"), "attention": getattr(mcfg, "attention", ""),
           "dtype": mcfg.dtype, "step_ms": round(step_s * 1e3, 2),
           "tokens_per_s": round(perf["perf/tokens_per_s"], 1),
           "tflops_per_device": round(perf["perf/tflops_per_device"], 3),
           "mfu": mfu if isinstance(mfu, str) else round(mfu, 4),
           "compile_and_first_step_s": round(compile_s, 1),
           "loss": float(m["loss"][0] / m["loss"][1]),
           "temp_GiB": None if mem is None else round(mem.temp_size_in_bytes / 2**30, 3),
           "peak_GiB": (round(stats["peak_bytes_in_use"] / 2**30, 3)
                        if stats and "peak_bytes_in_use" in stats else None)}
    del state, compiled
    return out


def decode_part(mcfg: ModelCfg, batch: int, prompt: int, new: int) -> dict:
    mesh = sh.make_mesh(sh.MeshCfg(data=-1), devices=jax.devices()[:1])
    graphdef, params, _ = sh.init_params(lambda: GPT(mcfg, rngs=nnx.Rngs(0)), mesh)
    toks = np.random.default_rng(1).integers(0, mcfg.vocab_size, (batch, prompt)).astype(np.int32)
    lens = np.full((batch,), prompt, np.int32)
    scfg = SampleCfg(max_new_tokens=new, temperature=0.0)
    t0 = time.perf_counter()
    jax.block_until_ready(generate(graphdef, params, toks, lens, scfg))  # compile + run
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(generate(graphdef, params, toks, lens, scfg))
    dt = time.perf_counter() - t0
    n = int(np.asarray(out["lengths_B"]).sum())
    return {"name": "decode_kvcache", "batch": batch, "prompt": prompt, "new_tokens": new,
            "tokens_per_s": round(n / dt, 1), "ms_per_token_step": round(dt / new * 1e3, 3),
            "compile_and_first_call_s": round(compile_s, 1)}


def write_results(out_dir: str, record: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    dev = re.sub(r"[^A-Za-z0-9]+", "_", record["device"]).strip("_") or "device"
    path = os.path.join(out_dir, f"{record['date']}_{dev}.json")
    write_json(path, record)
    readme = os.path.join(out_dir, "README.md")
    head = ("# GPU checks (`benchmarks/gpu_check.py`)\n\n| date | device | GPT-2-124M tokens/s |"
            " MFU | 1B remat=full MFU | decode tokens/s (batch 64) | file |\n"
            "|---|---|---|---|---|---|---|\n")
    text = open(readme, encoding="utf-8").read() if os.path.exists(readme) else head
    parts = {p["name"]: p for p in record["parts"]}
    g, l1, d = parts.get("gpt2", {}), parts.get("llama_1b", {}), parts.get("decode_kvcache", {})
    text += (f"| {record['date']} | {record['device']} | {g.get('tokens_per_s')} | "
             f"{g.get('mfu')} | {l1.get('mfu')} | {d.get('tokens_per_s')} | "
             f"[{os.path.basename(path)}]({os.path.basename(path)}) |\n")
    write_atomic(readme, text)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes (seconds, any device)")
    ap.add_argument("--out", default=None, help="results folder (default results/gpu; a smoke "
                    "run writes nothing unless --out is given)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip parts past this")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke or os.environ.get("BENCH_SMOKE", "") == "1"
    dev = jax.devices()[0]
    peak, source = part_peak(dev)
    print(f"device: {dev.device_kind} ({dev.platform}, {jax.device_count()} device(s)); jax "
          f"{jax.__version__}; peak {None if peak is None else round(peak / 1e12, 1)} TFLOP/s "
          f"({source})"
          + ("  [smoke sizes: figures meaningless]" if smoke else ""))
    run = SMOKE_RUN if smoke else FULL_RUN
    shape = (lambda full: {**full, **SMOKE}) if smoke else (lambda full: full)
    gpt2 = ModelCfg(**shape(GPT2), dtype="bfloat16", attention="auto")
    llama = ModelCfg(**{**shape(LLAMA_1B), **({"n_kv_heads": 2} if smoke else {})},
                     dtype="bfloat16", attention="auto", remat="full")
    t_start, parts = time.perf_counter(), []
    jobs = (("gpt2", lambda: train_part("gpt2", gpt2, *run["gpt2"])),
            ("llama_1b", lambda: train_part("llama_1b", llama, *run["llama_1b"])),
            ("decode_kvcache", lambda: decode_part(gpt2, *run["decode"])))
    for name, job in jobs:
        if time.perf_counter() - t_start > args.budget_s:
            parts.append({"name": name, "skipped": f"past the {args.budget_s:.0f}s budget"})
            continue
        try:
            parts.append(job())
        except Exception as e:  # noqa: BLE001  (one part failing must not lose the others)
            parts.append({"name": name, "error": f"{type(e).__name__}: {str(e)[:500]}"})
        print(json.dumps(parts[-1]), flush=True)
    record = {"date": datetime.date.today().isoformat(), "device": dev.device_kind,
              "peak_flops": peak, "peak_source": source,
              "platform": dev.platform, "jax": jax.__version__, "smoke": smoke,
              "wall_s": round(time.perf_counter() - t_start, 1), "parts": parts}
    out = args.out or (None if smoke else os.path.join("results", "gpu"))
    if out:
        print(f"wrote {write_results(out, record)}")
    g = next((p for p in parts if p["name"] == "gpt2" and "mfu" in p), None)
    print(f"gpu_check gpt2_124m mfu: {g['mfu'] if g else 'n/a'}")
    return 0 if all("error" not in p for p in parts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
