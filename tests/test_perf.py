"""MFU accounting (lm/perf.py): the FLOP count against hand counts, the peak table, perf metrics."""

import math

import jax
import pytest
from flax import nnx

from lm import perf
from lm.model import GPT, ModelCfg


def shapes(cfg):
    _, params = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)[:2]
    return params


def test_flops_per_token_hand_count_2_layers():
    """2 layers, d=32, 2 heads (head dim 16), d_ff=64, vocab 64, tied, rope, gelu, T=16."""
    cfg = ModelCfg(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16)
    block = (32  # norm1 scale
             + 32 * 3 * 2 * 16  # qkv_Dx3xNxH = 3072
             + 2 * 16 * 32  # out_NxHxD = 1024
             + 32  # norm2 scale
             + 32 * 64  # up_DxCxF = 2048
             + 64 * 32)  # down_FxD = 2048
    assert block == 8256
    n_hand = 2 * block + 32 + 64 * 32  # blocks, norm_f, tied embedding (= the unembedding)
    assert n_hand == 18592
    attn_hand = 12 * 2 * 2 * 16 * 16  # 12 * L * n_heads * head_dim * T
    assert attn_hand == 12288
    fpt_hand = 6 * n_hand + attn_hand
    assert fpt_hand == 123840
    n = perf.model_params(shapes(cfg), cfg)
    assert n == n_hand
    assert perf.flops_per_token(cfg, n, 16) == fpt_hand


def test_untied_learned_positions_count_the_unembedding_not_the_tables():
    """Untied + learned positions: embed_VxD (64x32) and pos_LxD (16x32) are gathers and drop
    out; unembed_DxV (32x64) is a matmul and counts, so N is the tied model's N."""
    cfg = ModelCfg(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16,
                   tie_embeddings=False, pos="learned")
    params = shapes(cfg)
    total = sum(int(x.size) for x in jax.tree.leaves(params))
    assert total == 18592 + 64 * 32 + 16 * 32  # N + the two lookup tables
    assert perf.model_params(params, cfg) == 18592


def test_gqa_swiglu_hand_count():
    """GQA (4 query heads, 2 kv heads, head dim 8) and a gated MLP, 2 layers, d=32, d_ff=48."""
    cfg = ModelCfg(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                   mlp="swiglu", max_len=8)
    block = 32 + 32 * 4 * 8 + 32 * 2 * 2 * 8 + 4 * 8 * 32 + 32 + 32 * 2 * 48 + 48 * 32
    n_hand = 2 * block + 32 + 40 * 32
    n = perf.model_params(shapes(cfg), cfg)
    assert n == n_hand == 2 * 7744 + 32 + 1280  # = 16800
    assert perf.flops_per_token(cfg, n, 8) == 6 * n_hand + 12 * 2 * 4 * 8 * 8


def test_flops_per_token_rejects_bad_input():
    cfg = ModelCfg()
    with pytest.raises(ValueError, match="seq_len >= 1"):
        perf.flops_per_token(cfg, 10, 0)


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12), ("Tesla T4", None)])
def test_peak_table(kind, peak):
    assert perf.peak_from_kind(kind) == peak


def test_cpu_peak_measured_once_and_shared_by_fake_devices():
    peak, source = perf.device_peak_flops()
    assert jax.devices()[0].platform == "cpu" and "measured" in source
    assert perf.cpu_matmul_peak.cache_info().currsize == 1
    assert peak == pytest.approx(perf.cpu_matmul_peak() / len(jax.local_devices()))
    assert 1e8 < perf.cpu_matmul_peak() < 1e14


def test_perf_metrics_arithmetic_and_na():
    m = perf.perf_metrics(0.5, 1000, 3e9, 4, 1e12)
    assert m["perf/tokens_per_s"] == 2000
    assert m["perf/tflops_per_device"] == pytest.approx(2000 * 3e9 / 4 / 1e12)
    assert m["perf/mfu"] == pytest.approx(2000 * 3e9 / 4 / 1e12)
    assert perf.perf_metrics(0.5, 1000, 3e9, 4, None)["perf/mfu"] == "n/a"
    assert math.isfinite(perf.perf_metrics(0.0, 1, 1.0, 1, 1.0)["perf/tokens_per_s"])
