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


# measured on SmolLM2-135M-Instruct, 3 texts x 21 positions, against its bf16 base: mean |dlogit|
# int8 0.47 (max 3.4, top-1 0.94), nf4 1.67 (max 13.7, top-1 0.67); bf16 vs fp32: mean 0.12
REAL_TOL = {"int8": (0.6, 0.9), "nf4": (2.0, 0.6)}  # (mean |dlogit| <=, top-1 agreement >=)


@pytest.mark.slow
def test_qlora_logits_on_the_real_model_within_the_stated_tolerance(smollm2_dir):
    from lm.config import Config, override
    from lm.losses import bind
    from lm.setup import build
    from tokenization.hf import HFTokenizer
    tok = HFTokenizer.load(smollm2_dir)
    texts = ["The quick brown fox jumps over the lazy dog. In the beginning God created the "
             "heaven and the earth.", "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
             "What is 12 + 7? Answer with the number only. The answer is 19."]
    ids = [tok.encode(t)[:32] for t in texts]
    x = np.array([i[: min(map(len, ids))] for i in ids], np.int32)
    base = ["model.param_dtype=bfloat16", "model.dtype=bfloat16", "model.max_len=64",
            "model.remat=full",  # the forward as a scan over the 30 blocks: one block compiles
            f"model.init_from={smollm2_dir}"]

    from tests.helpers import mesh

    def logits(*sets):  # one device: the suite's 8 fake ones would hold 8 replicas
        s = build(override(Config(), base + list(sets)), mesh=mesh((1, 1, 1)))
        return np.asarray(bind(s.graphdef, jax.device_get(s.state["params"]))(x))
    ref = logits()
    for kind, (mean_tol, top1) in REAL_TOL.items():
        q = logits("model.lora.rank=8", f"model.lora.base_dtype={kind}")
        assert np.abs(q - ref).mean() <= mean_tol, kind
        assert (q.argmax(-1) == ref.argmax(-1)).mean() >= top1, kind
