"""ModelCfg family fields (lm/hf): GQA/MQA, head_dim, biases, q/k norm, Gemma scale/offset,
rope scaling, sliding window, logit softcap. Numerics against numpy references; the decode path
against the full forward; validation errors. Parity with transformers is in tests/test_hf*.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm import sharding as sh
from lm.layers import rope_inv_freq
from lm.losses import bind
from lm.model import GPT, ModelCfg
from tests.helpers import TINY, mesh, tiny_model

FAMILY = dataclasses.replace(TINY, n_kv_heads=2, head_dim=12, qkv_bias=True, out_bias=True,
                             mlp_bias=True, qk_norm=True, mlp="swiglu", act="gelu_tanh",
                             embed_scale=True, norm_offset=1.0, sliding_window=5,
                             rope_scaling="llama3:4,1,4,16", final_logit_softcap=30.0)
# per-layer data (Gemma 3 / Qwen / SmolLM3 shapes): layer 0 slides with a local rotary base,
# layer 2 has no rotary, layer 1 is full; sandwich norms, score scale and cap
PER_LAYER = dataclasses.replace(TINY, n_layers=3, n_kv_heads=2, head_dim=12, qk_norm=True,
                                mlp="swiglu", embed_scale=True, norm_offset=1.0,
                                sliding_window=4, window_layers=(0, 2), local_rope_base=100.0,
                                nope_layers=(2,), block_norm="sandwich", attn_scale=0.2,
                                attn_softcap=3.0, final_logit_softcap=5.0,
                                rope_scaling="linear:4")
VARIANTS = {
    "family": FAMILY,
    "per_layer": PER_LAYER,
    "olmo2ish": dataclasses.replace(TINY, n_kv_heads=2, mlp="swiglu", block_norm="post",
                                    qk_norm=True, qk_norm_full=True),
    "mqa": dataclasses.replace(TINY, n_kv_heads=1),
    "gpt2ish": dataclasses.replace(TINY, pos="learned", norm="layer", norm_bias=True,
                                   qkv_bias=True, out_bias=True, mlp_bias=True, act="gelu"),
}


def _perturbed(cfg, seed=1):
    """Params with every leaf random (biases and norms are zeros/ones at init)."""
    gd, params = tiny_model(cfg)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return gd, jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_decode_matches_forward(name):
    """Prefill + one-token decode steps through the KV cache give the full-forward logits
    (sliding window included: L=12 > window 5)."""
    cfg = VARIANTS[name]
    gd, params = _perturbed(cfg)
    toks = jax.random.randint(jax.random.key(2), (2, 12), 0, cfg.vocab_size)
    full = jax.jit(lambda p, t: bind(gd, p)(t))(params, toks)
    decode = jax.jit(lambda p, t, c, i: bind(gd, p).decode(t, c, i))
    cache = bind(gd, params).init_cache(2, 12)
    assert cache[0][0].shape == (2, cfg.kv_heads, 12, cfg.head_dim_)
    pre, cache = decode(params, toks[:, :7], cache, 0)
    steps = [pre]
    for t in range(7, 12):
        lg, cache = decode(params, toks[:, t:t + 1], cache, t)
        steps.append(lg)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5)


def test_per_layer_data_in_the_remat_scan_and_packing():
    """Per-layer windows/rotary tables read by index in the lax.scan (model.remat) give the
    unrolled loop's logits and gradients, on a packed row whose documents see only themselves
    (each document alone gives the same logits)."""
    cfg = PER_LAYER
    gd, params = _perturbed(cfg)
    gd_r = tiny_model(dataclasses.replace(cfg, remat="full"))[0]
    doc_a = jax.random.randint(jax.random.key(4), (7,), 0, cfg.vocab_size)
    doc_b = jax.random.randint(jax.random.key(5), (9,), 0, cfg.vocab_size)
    toks = jnp.concatenate([doc_a, doc_b])[None]
    seg = jnp.array([[1] * 7 + [2] * 9])
    pos = jnp.array([list(range(7)) + list(range(9))])

    def run(g, p):
        return bind(g, p)(toks, segment_ids_BxL=seg, positions_BxL=pos)
    packed = jax.jit(run, static_argnums=0)(gd, params)
    np.testing.assert_allclose(jax.jit(run, static_argnums=0)(gd_r, params), packed, atol=1e-5)
    fwd = jax.jit(lambda p, t: bind(gd, p)(t))
    for doc, sl in ((doc_a, slice(0, 7)), (doc_b, slice(7, 16))):
        alone = fwd(params, doc[None])
        np.testing.assert_allclose(packed[:, sl], alone, atol=1e-5)

    def loss(g, p):
        return run(g, p).astype(jnp.float32).std()
    grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    g0, g1 = grad(gd, params), grad(gd_r, params)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the per-layer data matters: without the windows the logits move
    flat = tiny_model(dataclasses.replace(cfg, sliding_window=0, window_layers=()))[0]
    assert np.abs(np.asarray(bind(flat, params)(toks)) - bind(gd, params)(toks)).max() > 1e-3


def _np_attention(q, k, v, window):
    """numpy reference: q [L, N, H], k/v [L, K, H], causal (+ window)."""
    L, N, H = q.shape
    K = k.shape[1]
    k, v = np.repeat(k, N // K, 1), np.repeat(v, N // K, 1)
    s = np.einsum("qnh,knh->nqk", q, k) / np.sqrt(H)
    i = np.arange(L)
    ok = (i[None] <= i[:, None]) & ((i[None] > i[:, None] - window) if window else True)
    s = np.where(ok[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("nqk,knh->qnh", p, v)


def test_gqa_sliding_attention_matches_numpy():
    cfg = dataclasses.replace(TINY, n_kv_heads=2, head_dim=6, sliding_window=3, pos="learned",
                              qkv_bias=True, out_bias=True)
    gd, params = _perturbed(cfg)
    attn = bind(gd, params).blocks[0].attn
    p = params["block_0"]["attn"]
    x = np.asarray(jax.random.normal(jax.random.key(3), (1, 9, cfg.d_model)))
    y, _ = attn(jnp.asarray(x), jnp.arange(9)[None])
    q = x[0] @ np.asarray(p["q_DxNxH"]).reshape(32, -1) + np.asarray(p["q_bias_NxH"]).ravel()
    kv = np.asarray(p["kv_Dx2xKxH"])
    kvb = np.asarray(p["kv_bias_2xKxH"])
    k = x[0] @ kv[:, 0].reshape(32, -1) + kvb[0].ravel()
    v = x[0] @ kv[:, 1].reshape(32, -1) + kvb[1].ravel()
    o = _np_attention(q.reshape(9, 4, 6), k.reshape(9, 2, 6), v.reshape(9, 2, 6), 3)
    ref = o.reshape(9, 24) @ np.asarray(p["out_NxHxD"]).reshape(24, 32) + np.asarray(
        p["out_bias_D"])
    np.testing.assert_allclose(y[0], ref, atol=1e-5)


def test_llama3_rope_scaling_matches_numpy():
    """HF modeling_rope_utils._compute_llama3_parameters, written out in numpy."""
    h, base, (factor, low, high, orig) = 16, 500000.0, (8.0, 1.0, 4.0, 64.0)
    inv = 1.0 / base ** (np.arange(0, h, 2) / h)
    wl = 2 * np.pi / inv
    out = np.where(wl > orig / low, inv / factor, inv)
    smooth = (orig / wl - low) / (high - low)
    mid = (wl >= orig / high) & (wl <= orig / low)
    out = np.where(mid, (1 - smooth) * out / factor + smooth * out, out)
    got = rope_inv_freq(h, base, "llama3:8,1,4,64")
    np.testing.assert_allclose(got, out, rtol=1e-5)
    np.testing.assert_allclose(rope_inv_freq(h, base, "linear:2"), inv / 2, rtol=1e-5)


def test_gemma_norm_scale_and_softcap():
    cfg = dataclasses.replace(TINY, embed_scale=True, norm_offset=1.0, final_logit_softcap=2.0)
    gd, params = tiny_model(cfg)
    assert np.all(np.asarray(params["norm_f"]["scale"]) == 0.0)  # 1 + w starts at identity
    m = bind(gd, params)
    toks = jnp.array([[1, 2, 3]])
    x, _ = m.embed(toks, jnp.arange(3)[None])
    np.testing.assert_allclose(x, np.asarray(params["embed_VxD"])[[1, 2, 3]][None] * 32**0.5,
                               rtol=1e-6)
    h = np.asarray(m(toks, return_hidden=True)[1][-1], np.float64)[0]
    hn = h / np.sqrt((h * h).mean(-1, keepdims=True) + cfg.norm_eps)
    ref = 2.0 * np.tanh(hn @ np.asarray(params["embed_VxD"]).T / 2.0)
    np.testing.assert_allclose(m(toks)[0], ref, atol=1e-5)


def test_gqa_params_sharded_by_rules():
    """kv heads on tensor when divisible (2 over 2), replicated when not (MQA's 1)."""
    m = mesh((1, 2, 2))
    for k, want in [(2, "tensor"), (1, None)]:
        cfg = dataclasses.replace(TINY, n_kv_heads=k)
        abs_state = nnx.state(nnx.eval_shape(lambda c=cfg: GPT(c, rngs=nnx.Rngs(0))), nnx.Param)
        specs = sh.param_specs(abs_state)["block_0"]["attn"]
        shapes = nnx.to_pure_dict(abs_state)["block_0"]["attn"]
        kv = sh.fit_spec(specs["kv_Dx2xKxH"], shapes["kv_Dx2xKxH"].shape, m)
        assert tuple(kv)[:3] == ("fsdp", None, want)
        q = sh.fit_spec(specs["q_DxNxH"], shapes["q_DxNxH"].shape, m)
        assert tuple(q)[:2] == ("fsdp", "tensor")


@pytest.mark.parametrize("kw,msg", [
    ({"n_kv_heads": 3}, "must divide model.n_heads"),
    ({"head_dim": 0}, "head_dim"),
    ({"norm_bias": True}, "norm='layer'"),
    ({"rope_scaling": "yarn:2"}, "rope_scaling"),
    ({"rope_scaling": "llama3:8,4,1,64"}, "low_freq_factor"),
    ({"sliding_window": -1}, "sliding_window"),
    ({"window_layers": (0,)}, "needs model.sliding_window"),
    ({"sliding_window": 4, "window_layers": (2,)}, "window_layers"),
    ({"nope_layers": (0, 0)}, "nope_layers"),
    ({"block_norm": "mid"}, "model.block_norm"),
    ({"qk_norm_full": True}, "qk_norm_full"),
    ({"attn_softcap": -1.0}, "attn_softcap"),
    ({"act": "tanh"}, "model.act"),
])
def test_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(TINY, **kw)


def test_head_dim_may_differ_from_d_over_n():
    cfg = dataclasses.replace(TINY, d_model=30, n_heads=4, head_dim=8)
    _, params = tiny_model(cfg)
    assert params["block_0"]["attn"]["qkv_Dx3xNxH"].shape == (30, 3, 4, 8)
    assert ModelCfg().kv_heads == 4 and ModelCfg().head_dim_ == 32


def test_per_layer_model_on_the_2x2x2_mesh_equals_one_device():
    """The per-layer variant under model.remat=full (the scan) on the (2,2,2) mesh: the loss
    and gradients of the unrolled model on one device."""
    import types

    from lm.losses import xent
    from lm.train import mesh_context
    from tests.helpers import random_batch
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(z_loss=0.0))
    batch = random_batch(8, 12, PER_LAYER.vocab_size, seed=3, mask_frac=0.2)
    out = []
    for m, remat in ((sh.make_mesh(sh.MeshCfg(data=-1), jax.devices()[:1]), "none"),
                     (mesh(), "full")):
        model = dataclasses.replace(PER_LAYER, remat=remat)
        gd, params, _ = sh.init_params(lambda c=model: GPT(c, rngs=nnx.Rngs(0)), m)
        b = sh.shard_batch(batch, m)

        def f(params, b, gd=gd, m=m):
            with mesh_context(m):
                return jax.value_and_grad(lambda q: xent(q, b, model=gd, rng=None,
                                                         cfg=cfg)[0])(params)
        out.append(jax.tree.map(np.asarray, jax.jit(f)(params, b)))
    (loss1, g1), (loss8, g8) = out
    assert abs(float(loss1) - float(loss8)) <= 1e-5
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
