import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.losses import bind
from lm.model import GPT, ModelCfg, count_params
from tests.helpers import TINY, tiny_model

VARIANTS = [
    TINY,
    dataclasses.replace(TINY, pos="learned", mlp="swiglu", norm="layer", tie_embeddings=False),
]


@pytest.mark.parametrize("cfg", VARIANTS)
def test_shapes_and_hiddens(cfg):
    gd, params = tiny_model(cfg)
    m = bind(gd, params)
    toks = jnp.zeros((3, 7), jnp.int32)
    logits, hiddens = m(toks, return_hidden=True)
    assert logits.shape == (3, 7, cfg.vocab_size) and logits.dtype == jnp.float32
    assert len(hiddens) == cfg.n_layers + 1
    assert all(h.shape == (3, 7, cfg.d_model) for h in hiddens)
    np.testing.assert_array_equal(m(toks), logits)  # one code path


def test_param_count_matches_formula():
    cfg = TINY
    _, params = tiny_model(cfg)
    D, F, V, Lyr = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    per_block = 3 * D * D + D * D + D * F + F * D + 2 * D
    assert count_params(params) == V * D + Lyr * per_block + D


@pytest.mark.parametrize("cfg", VARIANTS)
def test_causality_by_gradient(cfg):
    """d logits[t] / d embedding(input[s]) == 0 for s > t."""
    gd, params = tiny_model(cfg)
    toks = jnp.arange(10, dtype=jnp.int32)[None] % cfg.vocab_size
    t = 4

    def out_t(x_emb):
        m = bind(gd, params)
        h = x_emb
        pos = jnp.arange(10)[None]
        if cfg.pos == "learned":
            h = h + m.pos_LxD[...][pos]
        for blk in m.blocks:
            h, _ = blk(h, pos)
        return m.logits(h)[0, t].sum()

    emb = bind(gd, params).embed_VxD[...][toks]
    g = jax.grad(out_t)(emb)[0]  # [L, D]
    norms = jnp.abs(g).sum(-1)
    assert float(norms[t + 1:].max()) == 0.0
    assert float(norms[: t + 1].min()) > 0.0


class TestJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equals_nojit(self):
        gd, params = tiny_model()
        toks = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)
        f = self.variant(lambda p, x: bind(gd, p)(x))
        ref = bind(gd, params)(toks)
        np.testing.assert_allclose(f(params, toks), ref, rtol=1e-5, atol=1e-5)


def test_dropout_needs_rng_and_is_deterministic_without():
    cfg = dataclasses.replace(TINY, dropout=0.5)
    gd, params = tiny_model(cfg)
    m, toks = bind(gd, params), jnp.ones((2, 8), jnp.int32)
    np.testing.assert_array_equal(m(toks), m(toks))
    a, b = m(toks, rng=jax.random.key(0)), m(toks, rng=jax.random.key(1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, m(toks, rng=jax.random.key(0)))


def test_bf16_compute_close_to_fp32():
    gd32, p = tiny_model()
    cfg16 = dataclasses.replace(TINY, dtype="bfloat16")
    gd16 = nnx.graphdef(GPT(cfg16, rngs=nnx.Rngs(0)))
    toks = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 9)), jnp.int32)
    l32, l16 = bind(gd32, p)(toks), bind(gd16, p)(toks)
    assert l16.dtype == jnp.float32
    np.testing.assert_allclose(l16, l32, atol=0.05)


def test_kv_decode_matches_forward():
    gd, params = tiny_model()
    m = bind(gd, params)
    toks = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 12)), jnp.int32)
    full = m(toks)
    cache = m.init_cache(2, 32)
    lg, cache = m.decode(toks[:, :5], cache, 0)
    outs = [lg]
    for i in range(5, 12):
        lg, cache = m.decode(toks[:, i:i + 1], cache, i)
        outs.append(lg)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [dict(pos="alibi"), dict(d_model=30), dict(dtype="fp8")])
def test_bad_model_cfg(bad):
    with pytest.raises(ValueError, match="model|rotary|divisible"):
        ModelCfg(**{**dataclasses.asdict(TINY), **bad})
