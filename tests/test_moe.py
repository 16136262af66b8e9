"""lm.moe: dropless dispatch equals the dense one-hot reference (values and gradients, fp32),
the aux loss equals transformers' ``load_balancing_loss_func``, MoE models under remat, the KV
cache, packing and xent; the default (0 experts) model is untouched."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.config import Config
from lm import moe
from lm.losses import bind, xent
from lm.model import GPT
from lm.sharding import ConfigError
from tests.helpers import TINY, random_batch, tiny_model

MOE = dataclasses.replace(TINY, mlp="swiglu", moe_experts=4, moe_top_k=2, moe_d_ff=16,
                          n_layers=3, moe_dense_layers=(1,), moe_router_z_coef=1e-3)


def _weights(T=37, D=16, F=24, E=8, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    return (jax.random.normal(ks[0], (T, D)), jax.random.normal(ks[1], (D, E)),
            0.3 * jax.random.normal(ks[2], (E, D, F)), 0.3 * jax.random.normal(ks[3], (E, D, F)),
            0.3 * jax.random.normal(ks[4], (E, F, D)))


def _value_and_grads(impl, args, K=2, ids=None):
    def loss(x, r, g, u, d):
        _, _, w, top = moe.route(x, r, K, True)
        top = top if ids is None else ids
        f = moe.dense_reference if impl == "dense" else (
            lambda *a: moe.experts_dropless(*a, impl=impl))
        y = f(x, w, top, g, u, d, "silu")
        return jnp.sum(y * jnp.cos(y)), y
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(*args)


@pytest.mark.parametrize("impl", ["tiled", "ragged_dot"])
@pytest.mark.parametrize("skewed", [False, True])
def test_dropless_equals_dense_reference_values_and_grads(impl, skewed):
    """Router-chosen experts, and a skewed routing (expert 0 takes every token's first slot,
    experts 5-7 none): nothing dropped, same outputs and gradients as the dense reference."""
    args = _weights()
    ids = None
    if skewed:
        t = np.arange(37)
        ids = jnp.asarray(np.stack([np.zeros_like(t), 1 + t % 4], 1), jnp.int32)
    (l0, y0), g0 = _value_and_grads("dense", args, ids=ids)
    (l1, y1), g1 = _value_and_grads(impl, args, ids=ids)
    np.testing.assert_allclose(y1, y0, atol=2e-6)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_tiled_layout_is_dropless_at_the_static_bound():
    """Every (token, slot) gets its own row, rows of one tile share an expert, and the
    worst case (all pairs on one expert, all experts a partial tile) fits the static buffer."""
    for ids in (np.zeros((64, 2), np.int32), np.arange(128).reshape(64, 2) % 8):
        dest, n_rows, _, tile_e = moe._layout(jnp.asarray(ids, jnp.int32), 8, "tiled")
        dest, tile_e = np.asarray(dest), np.asarray(tile_e)
        m = n_rows // tile_e.shape[0]
        assert len(set(dest.tolist())) == dest.size and dest.max() < n_rows
        np.testing.assert_array_equal(tile_e[dest // m], ids.reshape(-1))


def test_aux_loss_equals_transformers_load_balancing_loss():
    torch = pytest.importorskip("torch")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    rng = np.random.default_rng(0)
    B, L, E, K, layers = 3, 7, 8, 2, 3
    logits = [rng.normal(size=(B * L, E)).astype(np.float32) for _ in range(layers)]
    mask = (np.arange(L)[None] < np.array([7, 5, 2])[:, None]).astype(np.int64)
    for m in (None, mask):
        want = float(load_balancing_loss_func(tuple(torch.tensor(x) for x in logits), E, K,
                                              None if m is None else torch.tensor(m)))
        weight = np.ones(B * L) if m is None else m.reshape(-1)
        stats = []
        for x in logits:
            x = jnp.asarray(x)
            p = jax.nn.softmax(x, -1)
            stats.append(moe.router_stats(x, p, jax.lax.top_k(p, K)[1], jnp.asarray(weight)))
        np.testing.assert_allclose(float(moe.load_balancing_loss(stats)), want, rtol=1e-6)


def test_default_config_is_the_dense_model():
    """0 experts: the MoE fields are inert (same params, same draws, same logits) and no MoE
    metric appears; the dense tiny model's params are those of the plain GPT."""
    gd0, p0 = tiny_model(TINY)
    odd = dataclasses.replace(TINY, moe_top_k=7, moe_d_ff=3, moe_sparse_step=2,
                              moe_aux_coef=0.5, moe_router_z_coef=0.5, moe_impl="ragged_dot")
    gd1, p1 = tiny_model(odd)
    assert jax.tree.structure(p0) == jax.tree.structure(p1)
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
        np.testing.assert_array_equal(a, b)
    b = random_batch(2, 8, 64)
    aux = jax.eval_shape(lambda p: xent(p, b, model=gd0, rng=None, cfg=Config(model=TINY))[1],
                         p0)
    assert not [k for k in aux if k.startswith("moe")]
    assert not any("moe" in str(k) for k in jax.tree_util.tree_flatten_with_path(p0)[0])


def test_layer_pattern_and_config_errors():
    cfg = dataclasses.replace(MOE, n_layers=4, moe_sparse_step=2, moe_dense_layers=(3,))
    assert [cfg.is_moe(i) for i in range(4)] == [False, True, False, False]
    gpt = nnx.eval_shape(lambda: GPT(MOE, rngs=nnx.Rngs(0)))
    assert [hasattr(b, "moe") for b in gpt.blocks] == [True, False, True]
    for bad, word in ((dict(moe_top_k=5), "moe_top_k"), (dict(mlp="gelu"), "swiglu"),
                      (dict(moe_dense_layers=(9,)), "moe_dense_layers")):
        with pytest.raises((ConfigError, ValueError), match=word):
            dataclasses.replace(MOE, **bad)
    from lm.lora import LoRACfg
    with pytest.raises(ConfigError, match="attention projections"):
        dataclasses.replace(MOE, lora=LoRACfg(rank=4))
    dataclasses.replace(MOE, lora=LoRACfg(rank=4, targets=("q", "v")))  # attention: fine


def test_moe_model_xent_remat_and_dense_path_agree():
    """The MoE GPT through xent: the unrolled blocks and remat=full (a scan per run of alike
    layers: MoE, dense, MoE) give the same loss, aux metrics and gradients; the aux loss
    equals load_balancing_loss on the layers' router logits recomputed by hand."""
    b = random_batch(2, 8, 64, seed=1)
    outs = {}
    for name, cfg in {"tiled": MOE, "remat": dataclasses.replace(MOE, remat="full")}.items():
        gd, params = tiny_model(cfg)
        f = lambda p, gd=gd, cfg=cfg: xent(p, b, model=gd, rng=None,  # noqa: E731
                                            cfg=Config(model=cfg))
        outs[name] = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    (l0, a0), g0 = outs["tiled"]
    assert {"moe_aux", "moe_z", "moe_load_max", "moe_load/0", "moe_load/3"} <= set(a0)
    load = sum(float(a0[f"moe_load/{e}"][0] / a0[f"moe_load/{e}"][1]) for e in range(4))
    assert abs(load - 1.0) < 1e-6
    for name in ("remat",):
        (l1, a1), g1 = outs[name]
        np.testing.assert_allclose(l1, l0, rtol=1e-6)
        for k in a0:
            np.testing.assert_allclose(np.asarray(a1[k]), np.asarray(a0[k]), rtol=1e-5,
                                       atol=1e-7)
        for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
    # the aux term by hand: the router logits of each MoE layer from the hidden states
    gd, params = tiny_model(MOE)

    def by_hand(p):
        m = bind(gd, p)
        _, hs = m(jnp.asarray(b["inputs"]), return_hidden=True)
        stats = []
        for i, blk in enumerate(m.blocks):
            if hasattr(blk, "moe"):
                pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
                x = hs[i] + blk.attn(blk.norm1(hs[i]), pos)[0]
                lg, pr, _, ids = moe.route(blk.norm2(x).reshape(16, -1),
                                           blk.moe.router_DxE[...], 2, True)
                stats.append(moe.router_stats(lg, pr, ids, jnp.ones(16)))
        return moe.load_balancing_loss(stats)
    lb = float(jax.jit(by_hand)(params))
    np.testing.assert_allclose(float(a0["moe_aux"][0] / a0["moe_aux"][1]), lb, rtol=1e-5)
    n = float(b["mask"].sum())
    z = float(a0["moe_z"][0] / a0["moe_z"][1])
    np.testing.assert_allclose(float(a0["loss"][0]), float(a0["xent"][0]) + n * (
        1e-3 * lb + 1e-3 * z), rtol=1e-6)


def test_moe_layer_dense_path_equals_dropless_in_the_model():
    gd, params = tiny_model(MOE)
    x = jax.random.normal(jax.random.key(3), (2, 5, MOE.d_model))
    run = jax.jit(lambda p, impl: bind(gd, p).block_0.moe(x, impl=impl), static_argnums=1)
    np.testing.assert_allclose(run(params, "dense"), run(params, None), atol=1e-6)


def test_kv_cache_decode_and_packing_with_moe():
    """Prefill 3 tokens then one at a time: the cached decode gives the full forward's logits.
    Two documents packed in one row give each document's own logits, and the padding (segment
    0) carries no weight in the router statistics."""
    gd, params = tiny_model(MOE)
    m = bind(gd, params)
    toks = jnp.asarray(random_batch(1, 12, 64, seed=2)["inputs"])
    fwd = jax.jit(lambda p, t: bind(gd, p)(t))
    full = np.asarray(fwd(params, toks))
    dec = jax.jit(lambda p, t, c, i: bind(gd, p).decode(t, c, i))
    lg, cache = dec(params, toks[:, :3], m.init_cache(1, 12), 0)
    steps = [lg]
    for t in range(3, 12):
        lg, cache = dec(params, toks[:, t:t + 1], cache, t)
        steps.append(lg)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5)
    a, b = toks[:, :5], toks[:, 5:9]
    row = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], 1)
    seg = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3])
    pos = jnp.asarray([list(range(5)) + list(range(4)) + list(range(3))])

    def packed_fwd(p):
        mm = bind(gd, p)
        return mm(row, segment_ids_BxL=seg, positions_BxL=pos), moe.pooled(moe.collect(mm))
    packed, packed_stats = jax.jit(packed_fwd)(params)
    np.testing.assert_allclose(packed[:, :5], np.asarray(fwd(params, a)), atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:9], np.asarray(fwd(params, b)), atol=1e-5)
    # 2 MoE layers x 9 real tokens
    assert float(packed_stats["n"]) == 2 * 9
    np.testing.assert_allclose(float(packed_stats["sel_E"].sum()), 2 * 9 * 2)


def test_dry_run_prints_expert_bytes_per_device():
    """``--dry-run`` of an MoE preset on 8 devices, experts over fsdp: the expert weights per
    device are 1/8 of their total, and the compiled step's figures are printed."""
    from experiments import lm_pretrain
    from experiments.config import override
    from experiments.dry_run import dry_run
    cfg = override(lm_pretrain.tiny_moe(), [
        "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.moe_d_ff=16",
        "train.batch_size=8", "train.seq_len=16", "mesh.data=1", "mesh.fsdp=8",
        "run.dry_run_devices=8"])
    out = dry_run(cfg)
    line = next(ln for ln in out.splitlines() if ln.startswith("experts per device"))
    assert "1 of 8 experts x 2 MoE layers per device, expert axis on ('fsdp',); top-2" in line
    per, total = (int(x) for x in line.split("(")[1].split(" bytes")[0].replace(",", "")
                  .split(" of "))
    assert per * 8 == total == 2 * 3 * 8 * 32 * 16 * 4  # layers x matrices x E x D x F x fp32
    assert "activations/temp per device" in out
