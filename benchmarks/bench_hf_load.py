"""``lm.hf.load`` onto 8 fake CPU devices (fsdp=4 x tensor=2) vs reading the same safetensors.

    .venv/bin/python benchmarks/bench_hf_load.py [--repeats 3]

A random Llama-shaped checkpoint (GQA, untied head, fp32; about 1 GB in two shards with an
index; ``BENCH_SMOKE=1``: a few MB) is written once to a temporary directory (not timed).
Then, alternately in one process (median of repeats, files in the page cache for both):

- hf load:  ``hf.load(dir, mesh=mesh)``: config and headers parsed, every tensor checked, each
            param built with ``jax.make_array_from_callback`` from each device's memory-mapped
            slice, until every array is ready on its 8 devices.
- raw read: the baseline, ``safetensors.numpy.load_file`` of each shard: every tensor read into
            host numpy arrays (no placement, no layout change).

The last line is ``hf load/raw read time ratio: X.XX`` (target <= 1.5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from benchmarks.common import SMOKE, print_machine  # noqa: E402
from lm import hf  # noqa: E402
from lm import sharding as sh  # noqa: E402
from lm.model import ModelCfg  # noqa: E402

# ~245M params fp32 (~0.98 GB): d 1024, 16 layers, 16 heads / 4 kv heads, F 2816, V 32000
FULL = ModelCfg(vocab_size=32000, d_model=1024, n_layers=16, n_heads=16, n_kv_heads=4,
                d_ff=2816, max_len=4096, mlp="swiglu", tie_embeddings=False, rope_base=500000.0)
SMALL = ModelCfg(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                 max_len=128, mlp="swiglu", tie_embeddings=False)


def write_checkpoint(cfg: ModelCfg, out_dir: str) -> int:
    """Random params of ``cfg`` saved by ``hf.save`` in two shards; returns the byte count."""
    _, shapes, _ = hf.checkpoint.abstract(cfg)
    rng = np.random.default_rng(0)
    params = {}
    for path, s in shapes.items():
        d = params
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = (0.02 * rng.standard_normal(s.shape, dtype=np.float32))
    total = sum(int(np.prod(s.shape)) * 4 for s in shapes.values())
    hf.save(cfg, params, out_dir, max_shard_bytes=int(total * 0.55))
    return total


def time_hf(path, mesh) -> float:
    t = time.perf_counter()
    _, params = hf.load(path, mesh=mesh)
    jax.block_until_ready(params)
    dt = time.perf_counter() - t
    del params
    return dt


def time_raw(path) -> float:
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    t = time.perf_counter()
    out = [load_file(os.path.join(path, f)) for f in files]
    dt = time.perf_counter() - t
    del out
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1 if SMOKE else 3)
    args = ap.parse_args()
    print_machine(baseline="safetensors.numpy.load_file of every shard (host numpy, no placement)")
    cfg = SMALL if SMOKE else FULL
    mesh = sh.make_mesh(sh.MeshCfg(data=1, fsdp=4, tensor=2))
    tmp = tempfile.mkdtemp(prefix="bench_hf_load-")
    try:
        path = os.path.join(tmp, "ckpt")
        nbytes = write_checkpoint(cfg, path)
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        print(f"checkpoint: {nbytes / 1e9:.3f} GB fp32 in {len(files)} shards; mesh "
              f"{dict(mesh.shape)} on {len(jax.devices())} {jax.devices()[0].platform} devices")
        time_raw(path)
        time_hf(path, mesh)  # warm-up: page cache, tracing of eval_shape
        hf_t, raw_t = [], []
        for r in range(args.repeats):
            if r % 2:
                hf_t.append(time_hf(path, mesh))
                raw_t.append(time_raw(path))
            else:
                raw_t.append(time_raw(path))
                hf_t.append(time_hf(path, mesh))
        print("hf load  (s): " + " ".join(f"{t:.3f}" for t in hf_t))
        print("raw read (s): " + " ".join(f"{t:.3f}" for t in raw_t))
        ratio = statistics.median(hf_t) / statistics.median(raw_t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"hf load/raw read time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
