"""QLoRA (``model.lora.base_dtype``, ``lm/quant.py``): the frozen base as int8 / NF4 codes with
blockwise scales, dequantized per matmul; only adapters train; the dry run prints the saving."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm import lora, quant
from lm.model import GPT, ModelCfg
from tests.test_lora import cfg_with, flat, lm_batch

CFG = ModelCfg(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
               mlp="swiglu", max_len=32)


@pytest.mark.parametrize("kind,bound", [("int8", 0.007), ("nf4", 0.095)])
def test_quantize_round_trip_error_and_storage(kind, bound):
    w = np.random.default_rng(0).normal(size=(576, 1536)).astype(np.float32)
    codes, scale = quant.quantize(w, kind)
    back = np.asarray(quant.dequantize(codes, scale, kind))
    rel = np.sqrt(((back - w) ** 2).mean() / (w**2).mean())
    assert rel < bound  # measured 0.0059 (int8) and 0.0919 (nf4, as QLoRA's NF4 at block 64)
    assert scale.shape == (576, 1536 // quant.BLOCK)
    if kind == "nf4":
        assert codes.dtype == jnp.uint8 and codes.shape == (576, 768)  # two codes per byte
        levels = np.asarray(quant.NF4)
        unit = back / np.repeat(np.asarray(scale), 64, -1)  # every value is an NF4 level
        assert np.abs(unit[..., None] - levels[None, None]).min(-1).max() < 1e-6
    else:
        assert codes.dtype == jnp.int8 and codes.shape == w.shape
    assert np.array_equal(np.abs(back).reshape(576, -1, 64).max(-1), np.asarray(scale))


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_qlora_model_is_the_model_with_dequantized_weights(kind):
    q = GPT(dataclasses.replace(CFG, lora=lora.LoRACfg(rank=4, base_dtype=kind)),
            rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(q, nnx.Param))
    deq = lora.partition(quant.dequantize_params(params, kind), lambda p: not lora.is_adapter(p))
    plain_gd = nnx.graphdef(GPT(CFG, rngs=nnx.Rngs(0)))
    x = lm_batch(0, V=64)["inputs"]
    from lm.losses import bind
    np.testing.assert_allclose(q(x), bind(plain_gd, deq[0])(x), atol=2e-6, rtol=0)
    stored = flat(params)
    assert stored[("block_0", "mlp", "up_DxCxF")].dtype == (jnp.int8 if kind == "int8"
                                                            else jnp.uint8)
    assert stored[("block_0", "attn", "lora_q", "a")].dtype == jnp.float32


def test_qlora_step_trains_adapters_only():
    from lm.setup import build
    setup = build(cfg_with("train.loss=xent", "model.lora.base_dtype=nf4",
                           "model.d_model=64", "model.d_ff=128"))
    p0 = flat(setup.state["params"])
    state = setup.state
    for i in range(2):
        state, met = setup.train_step(state, lm_batch(i))
    p1 = flat(state["params"])
    changed = {k for k in p0 if not np.array_equal(p0[k], p1[k])}
    assert changed and all(lora.is_adapter(k) for k in changed)
    assert np.isfinite(float(met["loss"][0]))


@pytest.mark.slow
def test_dry_run_prints_the_qlora_saving(capsys):
    from experiments import lm_pretrain
    from experiments.base import main
    rc = main(lm_pretrain.PRESETS, lm_pretrain.run, argv=[
        "--dry-run", "--set", "model.lora.rank=8", "model.lora.base_dtype=nf4",
        "model.d_model=128", "model.d_ff=512", "model.mlp=swiglu", "train.batch_size=8",
        "mesh.data=-1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(x for x in out.splitlines() if x.startswith("QLoRA: base in nf4"))
    q, f = (float(v) for v in re.findall(r"([0-9.]+) GiB", line)[:2])
    assert 0 < q < 0.5 * f  # blocks' 4.5 bits vs fp32 (embeddings and norms stay float)
    for key in ("params per device", "adapters per device", "optimizer per device",
                "activations/temp per device"):
        assert key in out
    assert jax.device_count() == 8
