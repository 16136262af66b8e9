"""MFU accounting: model FLOPs per token, device peaks, and the ``perf/*`` metrics of a step.

    fpt = flops_per_token(cfg, model_params(params, cfg), seq_len)      # PaLM appendix B
    peak, source = device_peak_flops()                                  # per device, FLOP/s
    m = perf_metrics(step_time, tokens_per_step, fpt, n_devices, peak)
    # {"perf/tokens_per_s": ..., "perf/tflops_per_device": ..., "perf/mfu": ... or "n/a"}

Model FLOPs (PaLM, Chowdhery et al. 2022, appendix B): a training token costs
``6 N + 12 L H Q T`` FLOPs — ``6 N`` for the forward (2) and backward (4) matmuls through the N
non-embedding parameters, ``12 L H Q T`` for the attention scores and the weighted sum (L layers,
H heads, head dim Q, context T; counted over the full T x T square as PaLM does, so a causal or
sliding-window mask does not lower it). Rematerialisation is not counted: this is *model* FLOPs
utilisation, not hardware FLOPs.

What counts in N: every parameter except the lookup tables. The token embedding is a gather (no
matmul) and so is the learned position table: both are excluded. An *untied* unembedding
``unembed_DxV`` is a matmul and counts. A *tied* embedding is also the unembedding matmul
(``h @ embed.T``, 2 D V FLOPs forward per token): it counts once, as PaLM (shared input/output
embedding) and nanoGPT's ``estimate_mfu`` (which keeps the tied ``wte`` in N) count it.

Peaks: a table of dense bf16 peaks per chip, matched on ``jax.devices()[0].device_kind``; MFU is
reported against that peak whatever the compute dtype (as MaxText does). On a CPU the peak is an
fp32 matmul measured once per process (:func:`cpu_matmul_peak`, ~0.3 s) and split evenly over the
process's CPU devices (fake host devices share the same cores). An unknown accelerator gives
``perf/mfu = "n/a"``.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# dense bf16 peak per chip, FLOP/s (vendor datasheets); the first matching substring of the
# lower-cased device_kind wins, so more specific names come first
DEVICE_PEAKS = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # H100 SXM
    ("h200", 989e12),  # H200 SXM
    ("a100", 312e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports "TPU v5"
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("tpu v4", 275e12),
)

EMBEDDING_TABLES = ("embed_VxD", "pos_LxD")  # gathers, not matmuls


def _leaf_name(path) -> str:
    """The parameter's attribute name (an ``nnx.State`` path ends in ``.value``)."""
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return names[-2] if len(names) > 1 and names[-1] == "value" else names[-1]


EXPERT_WEIGHTS = ("gate_ExDxF", "up_ExDxF", "down_ExFxD")  # lm.moe


def model_params(params, cfg) -> int:
    """N of the FLOP count: all parameters except the lookup tables; a tied ``embed_VxD`` counts
    once (it is the unembedding matmul); MoE expert weights count their active share
    (``moe_top_k / moe_experts``: a token runs top-k of them). ``params``: the model's params
    pytree (or its shapes)."""
    n = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = _leaf_name(path)
        if name in EMBEDDING_TABLES and not (name == "embed_VxD" and cfg.tie_embeddings):
            continue
        if name in EXPERT_WEIGHTS:
            n += int(leaf.size) * cfg.moe_top_k // cfg.moe_experts
            continue
        n += int(leaf.size)
    return n


def flops_per_token(cfg, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token, ``6 N + 12 L H Q T`` (PaLM appendix B); ``n_params`` from
    :func:`model_params`, ``seq_len`` the trained context T."""
    if n_params < 0 or seq_len < 1:
        raise ValueError(f"flops_per_token needs n_params >= 0 and seq_len >= 1, got "
                         f"{n_params}, {seq_len}")
    return 6.0 * n_params + 12.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim_ * seq_len


def peak_from_kind(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one chip from its ``device_kind``, or None if not in the table."""
    kind = device_kind.lower()
    for key, peak in DEVICE_PEAKS:
        if key in kind:
            return peak
    return None


@functools.cache
def cpu_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul FLOP/s of this process's CPU (best of ``repeats`` timed ``n x n`` products on
    the default CPU device, after one compile); measured once per process."""
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), cpu)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def device_peak_flops(device=None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device or None, where it came from) for ``device`` (default: the
    first device). On a CPU: the measured matmul peak shared by the process's CPU devices."""
    device = jax.devices()[0] if device is None else device
    if device.platform == "cpu":
        n_cpu = max(1, len(jax.local_devices(backend="cpu")))
        return cpu_matmul_peak() / n_cpu, f"measured fp32 matmul / {n_cpu} CPU device(s)"
    peak = peak_from_kind(device.device_kind)
    if peak is None:
        return None, f"no peak known for {device.device_kind!r}"
    return peak, f"table: {device.device_kind} dense bf16"


def perf_metrics(step_time: float, tokens_per_step: int, flops_per_tok: float, n_devices: int,
                 peak_per_device: float | None) -> dict:
    """The ``perf/*`` metrics of one step of ``tokens_per_step`` global tokens on ``n_devices``:
    tokens/s, achieved model TFLOP/s per device and MFU (``"n/a"`` without a peak)."""
    tok_s = tokens_per_step / max(step_time, 1e-9)
    flops_per_device = tok_s * flops_per_tok / n_devices
    mfu = "n/a" if not peak_per_device else flops_per_device / peak_per_device
    return {"perf/tokens_per_s": tok_s, "perf/tflops_per_device": flops_per_device / 1e12,
            "perf/mfu": mfu}
