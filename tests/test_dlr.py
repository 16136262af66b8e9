"""DLR: the model hook (lm/routing.py), the loss and search (rl/dlr.py), generation with codes."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.config import Config, override
from lm import sharding as sh
from lm.losses import bind, get_loss
from lm.model import GPT
from lm.optim import OptCfg, make_optimizer
from lm.routing import DLRCfg, LatentRouter
from lm.sharding import ConfigError
from lm.train import init_state, make_train_step, state_shardings
from rl import dlr
from rl.dlr_generate import generate_reference, generate_routed
from tests.helpers import TINY, mesh, random_batch, tiny_model

DCFG = DLRCfg(layer=1, codes=4, chunk=2, alpha=1.0, n_search=3)
MCFG = dataclasses.replace(TINY, n_layers=3, dlr=DCFG)


def cfg_with(**kw) -> Config:
    return Config(model=dataclasses.replace(MCFG, dlr=dataclasses.replace(DCFG, **kw)))


def random_codebook(params, seed=1, scale=1.0):
    p = jax.tree.map(lambda x: x, params)
    shape = p["dlr"]["codebook_CxD"].shape
    p["dlr"]["codebook_CxD"] = scale * jax.random.normal(jax.random.key(seed), shape)
    return p


def codes_of(seed, B, M, C):
    return jnp.asarray(np.random.default_rng(seed).integers(0, C, (B, M)), jnp.int32)


def test_zero_codebook_is_exactly_the_base_model():
    gd, p = tiny_model(MCFG)
    base_gd, base_p = tiny_model(dataclasses.replace(MCFG, dlr=DLRCfg()))
    toks = jnp.asarray(random_batch(3, 9, 64)["inputs"])
    m = bind(gd, p)
    unsteered = m(toks)
    steered = m(toks, codes_BxM=codes_of(0, 3, 5, 4))
    np.testing.assert_array_equal(steered, unsteered)
    np.testing.assert_array_equal(unsteered, bind(base_gd, base_p)(toks))  # same base params too
    assert set(p) - set(base_p) == {"dlr"} and float(jnp.abs(p["dlr"]["codebook_CxD"]).max()) == 0


def test_steer_broadcasts_each_chunk_code_over_its_tokens():
    r = LatentRouter(dataclasses.replace(MCFG, dlr=dataclasses.replace(DCFG, chunk=3, alpha=0.5)),
                     nnx.Rngs(0))
    r.codebook_CxD[...] = jnp.arange(4.0 * 32).reshape(4, 32)
    h = jnp.zeros((1, 7, 32))
    pos = jnp.arange(7)[None]
    out = r.steer(h, pos, jnp.array([[2, 0, 3]], jnp.int32))
    want = 0.5 * np.stack([np.arange(128.0).reshape(4, 32)[c] for c in [2, 2, 2, 0, 0, 0, 3]])
    np.testing.assert_array_equal(out[0], want)


def test_changing_one_chunk_code_only_changes_later_positions():
    gd, p = tiny_model(MCFG)
    m = bind(gd, random_codebook(p))
    toks = jnp.asarray(random_batch(2, 10, 64)["inputs"])
    a = codes_of(0, 2, 5, 4)
    b = a.at[:, 2].set((a[:, 2] + 1) % 4)  # chunk 2 = positions 4, 5
    la, lb = m(toks, codes_BxM=a), m(toks, codes_BxM=b)
    np.testing.assert_array_equal(la[:, :4], lb[:, :4])
    assert float(jnp.abs(la[:, 4:] - lb[:, 4:]).min()) > 0


def test_router_reads_the_unsteered_stream_and_split_equals_full_forward():
    gd, p = tiny_model(MCFG)
    m = bind(gd, random_codebook(p))
    toks = jnp.asarray(random_batch(2, 9, 64)["inputs"])
    _, hid_a = m(toks, codes_BxM=codes_of(0, 2, 5, 4), return_hidden=True)
    _, hid_b = m(toks, codes_BxM=codes_of(1, 2, 5, 4), return_hidden=True)
    za, zb = m.dlr.route(hid_a[DCFG.layer]), m.dlr.route(hid_b[DCFG.layer])
    np.testing.assert_array_equal(za, zb)
    assert za.shape == (2, 5, 4)
    h, pos, rngs = dlr.lower(m, toks)
    codes = codes_of(2, 2, 5, 4)
    np.testing.assert_allclose(dlr.upper(m, h, pos, rngs, codes), m(toks, codes_BxM=codes),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(m.dlr.route(h), za)


def test_bizipf_prior_hand_case_and_bigram_kl_vs_numpy():
    np.testing.assert_allclose(dlr.bizipf_prior(2, 1.0, 0.1),
                               np.array([[0.1, 0.5], [0.5, 0.025]]) / 1.125, rtol=1e-6)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(2, 4)).astype(np.float32)
    cm = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    prior = dlr.bizipf_prior(3, 1.2, 0.3)
    pairs = [(b, m) for b in range(2) for m in range(3) if cm[b, m] and cm[b, m + 1]]
    emp = sum(np.outer(probs[b, m], probs[b, m + 1]) for b, m in pairs) / len(pairs)
    want = float((emp * (np.log(emp) - np.log(prior))).sum())
    kl, got_emp = dlr.bigram_kl(jnp.asarray(probs), jnp.asarray(cm), jnp.asarray(prior))
    np.testing.assert_allclose(got_emp, emp, rtol=1e-6)
    np.testing.assert_allclose(float(kl), want, rtol=1e-5)
    kl1, _ = dlr.bigram_kl(jnp.ones((2, 3, 1)), jnp.ones((2, 3)), jnp.ones((1, 1)))
    assert float(kl1) == 0.0  # C = 1: one cell, nothing to regularise


def test_chunk_mask_hand_case():
    mask = jnp.array([[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1.0]])
    np.testing.assert_array_equal(dlr.chunk_mask(mask, 3), [[1, 1, 0], [0, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize("C,M", [(4, 2), (3, 1), (2, 2)])
def test_search_picks_brute_force_best_over_all_code_sequences(C, M):
    cfg = dataclasses.replace(MCFG, dlr=dataclasses.replace(DCFG, codes=C, chunk=4))
    gd, p = tiny_model(cfg)
    m = bind(gd, random_codebook(p, scale=2.0))
    b = random_batch(3, 4 * M, 64, seed=C + M, mask_frac=0.3)
    toks, tgt, mask = (jnp.asarray(b[k]) for k in ("inputs", "targets", "mask"))
    all_codes = np.array(list(itertools.product(range(C), repeat=M)), np.int32)  # [C^M, M]
    cands = jnp.asarray(np.broadcast_to(all_codes[:, None], (len(all_codes), 3, M)))
    h, pos, _ = dlr.lower(m, toks)
    a, scores, best = dlr.search(m, h, pos, tgt, mask, cands)
    n = len(all_codes)  # independent oracle: one full forward of every (row, code sequence)
    lg = np.asarray(m(jnp.repeat(toks, n, 0), codes_BxM=jnp.tile(jnp.asarray(all_codes), (3, 1))),
                    np.float64).reshape(3, n, 4 * M, -1)
    lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    for row in range(3):
        ll = [float((lp[row, i][np.arange(4 * M), b["targets"][row]] * b["mask"][row]).sum())
              for i in range(n)]
        np.testing.assert_allclose(scores[:, row], ll, rtol=2e-5, atol=2e-5)
        assert int(best[row]) == int(np.argmax(ll))
        np.testing.assert_array_equal(a[row], all_codes[np.argmax(ll)])


def test_loss_selects_argmax_among_its_sampled_candidates_greedy_first():
    gd, p = tiny_model(MCFG)
    p = random_codebook(p, scale=2.0)
    b = {k: jnp.asarray(v) for k, v in random_batch(4, 10, 64, seed=3).items()}
    t = jax.jit(lambda q: dlr.dlr_terms(q, b, model=gd, rng=jax.random.key(5),
                                        cfg=cfg_with(n_search=6)))(p)
    assert t["scores_NxB"].shape == (7, 4)  # greedy + 6 draws
    np.testing.assert_array_equal(t["best_B"], np.argmax(np.asarray(t["scores_NxB"]), 0))
    m = bind(gd, p)
    np.testing.assert_array_equal(dlr.candidates(t["z_BxMxC"], jax.random.key(0), DCFG)[0],
                                  np.argmax(np.asarray(m.dlr.route(dlr.lower(m, b["inputs"])[0])),
                                            -1))
    lpa = dlr.seq_logprob(m(b["inputs"], codes_BxM=t["a_BxM"]), b["targets"], b["mask"])
    np.testing.assert_allclose(t["lpa_B"], lpa, rtol=1e-5)
    np.testing.assert_allclose(t["lpa_B"], t["scores_NxB"].max(0), rtol=1e-5)


def grads(cfg, params, batch):
    gd = tiny_model(cfg.model)[0]
    return jax.jit(jax.grad(lambda q: dlr.dlr_loss(q, batch, model=gd, rng=jax.random.key(0),
                                                   cfg=cfg)[0]))(params)


def test_router_gradient_only_from_policy_and_prior_terms():
    _, p = tiny_model(MCFG)
    p = random_codebook(p)
    b = {k: jnp.asarray(v) for k, v in random_batch(4, 10, 64, seed=1).items()}
    g0 = grads(cfg_with(alpha_policy=0.0, alpha_reg=0.0), p, b)
    assert float(jnp.abs(g0["dlr"]["router_DxC"]).max()) == 0.0
    assert float(jnp.abs(g0["dlr"]["codebook_CxD"]).max()) > 0  # info gain trains the codes
    g1 = grads(cfg_with(alpha_policy=0.5, alpha_reg=0.1), p, b)
    assert float(jnp.abs(g1["dlr"]["router_DxC"]).max()) > 0
    # stop-gradient on the router input: the policy/prior terms add nothing to the trunk
    for k in ("block_0", "embed_VxD"):
        for a, c in zip(jax.tree.leaves(g0[k]), jax.tree.leaves(g1[k])):
            np.testing.assert_array_equal(a, c)


def test_loss_value_hand_assembled_and_jit_equals_nojit():
    gd, p = tiny_model(MCFG)
    p = random_codebook(p)
    b = {k: jnp.asarray(v) for k, v in random_batch(4, 10, 64, seed=2, mask_frac=0.4).items()}
    cfg = cfg_with(alpha_policy=0.3, alpha_reg=0.2)
    fn = lambda q: dlr.dlr_loss(q, b, model=gd, rng=jax.random.key(1), cfg=cfg)
    loss, aux = fn(p)
    loss_j, aux_j = jax.jit(fn)(p)
    np.testing.assert_allclose(loss_j, loss, rtol=1e-6)
    t = dlr.dlr_terms(p, b, model=gd, rng=jax.random.key(1), cfg=cfg)
    n = float(b["mask"].sum())
    lp0, lpa = float(t["lp0_B"].sum()), float(t["lpa_B"].sum())
    pol = -float((t["lpr_BxM"] * t["cmask_BxM"]).sum() / t["cmask_BxM"].sum())
    want = -lp0 / n - (lpa - lp0) / n + 0.3 * pol + 0.2 * float(t["kl"])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(aux["loss"][0] / aux["loss"][1]), want, rtol=1e-5)
    assert get_loss("dlr") is dlr.dlr_loss


def test_dlr_step_on_2x2x2_mesh_equals_one_device():
    cfg = dataclasses.replace(cfg_with(n_search=2), opt=OptCfg(lr=1e-2, warmup=0, eps=1e-4))
    out = []
    for shape in [(1, 1, 1), (2, 2, 2)]:
        mh = mesh(shape)
        gd, params, p_shard = sh.init_params(lambda: GPT(cfg.model, rngs=nnx.Rngs(0)), mh)
        tx, _ = make_optimizer(cfg.opt, params, 10)
        shapes = jax.eval_shape(lambda q, tx=tx: init_state(q, tx, 0), params)
        s_shard = state_shardings(shapes, p_shard, mh)
        state = jax.jit(lambda q, tx=tx: init_state(q, tx, 0), out_shardings=s_shard)(params)
        step = make_train_step(dlr.dlr_loss, tx, model=gd, cfg=cfg, mesh=mh, state_sharding=s_shard)
        losses = []
        for i in range(3):
            state, met = step(state, sh.shard_batch(random_batch(8, 12, 64, seed=i), mh))
            losses.append(float(met["loss"][0] / met["loss"][1]))
        out.append((losses, jax.device_get(state["params"])))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-5)
    for a, c in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(c, a, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("mode", ["route", "off", "random"])
def test_kv_cache_generation_equals_full_recompute(mode):
    gd, p = tiny_model(dataclasses.replace(MCFG, dlr=dataclasses.replace(DCFG, chunk=3)))
    p = random_codebook(p, scale=3.0)
    prompt = jnp.asarray(random_batch(3, 5, 64, seed=4)["inputs"])
    t_kv, c_kv = generate_routed(gd, p, prompt, 7, mode=mode, rng=jax.random.key(2))
    t_ref, c_ref = generate_reference(gd, p, prompt, 7, mode=mode, rng=jax.random.key(2))
    np.testing.assert_array_equal(t_kv, t_ref)
    np.testing.assert_array_equal(c_kv[:, : c_ref.shape[1]], c_ref)
    if mode == "off":  # scale -> 0 is the base model's greedy continuation
        t_base, _ = generate_reference(gd, tiny_model(MCFG)[1], prompt, 7, mode="off")
        np.testing.assert_array_equal(t_kv, t_base)


@pytest.mark.parametrize("kv,msg", [("dlr.layer=3", "dlr.layer=3 must be in 0..2"),
                                    ("dlr.codes=0", "dlr.codes=0 must be >= 1"),
                                    ("dlr.temps=0.5,0", "dlr.temps"),
                                    ("dlr.zipf_rho=0", "zipf_rho")])
def test_bad_dlr_config_is_one_clear_error(kv, msg):
    with pytest.raises(ConfigError, match=msg):
        override(Config(model=dataclasses.replace(MCFG, dlr=DLRCfg())), ["dlr.layer=1", kv])


def test_layer_zero_routes_on_embeddings():
    """l* = 0 steers the embedding output: with a non-zero codebook the logits equal a manual
    ``embed + alpha * e[code of pos // K]`` run through every block, and differ from steering
    the same codes at layer 1 (so a wrong routing layer changes the logits)."""
    cfg = cfg_with(layer=0)
    gd, p = tiny_model(cfg.model)
    gd1, _ = tiny_model(cfg_with(layer=1).model)  # same parameters, routing at layer 1
    p = random_codebook(p, scale=0.5)
    toks = jnp.asarray(random_batch(2, 9, 64)["inputs"])
    codes = codes_of(3, 2, 5, 4)
    pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
    cb = np.asarray(p["dlr"]["codebook_CxD"])
    steer = DCFG.alpha * cb[np.take_along_axis(np.asarray(codes), np.arange(9)[None] // 2, 1)]

    @jax.jit
    def forwards(q):
        m = bind(gd, q)
        x, rngs = m.embed(toks, pos)
        hs, _ = m.run_blocks(x + steer, pos, rngs)  # every block, unsteered inside
        got, hid = m(toks, codes_BxM=codes, return_hidden=True)
        return (m.logits(hs[-1]), got, x, hid[0], dlr.lower(m, toks)[0],
                bind(gd1, q)(toks, codes_BxM=codes), m(toks))
    want, got, x, h0, low, at1, plain = forwards(p)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(h0, x)  # the router reads the unsteered embeddings
    np.testing.assert_array_equal(low, x)
    assert float(jnp.abs(at1 - got).max()) > 1e-3
    assert float(jnp.abs(got - plain).max()) > 1e-3  # the steering is not a no-op
    b = {k: jnp.asarray(v) for k, v in random_batch(2, 8, 64).items()}
    loss, aux = jax.jit(lambda q: dlr.dlr_loss(q, b, model=gd, rng=jax.random.key(0),
                                               cfg=cfg))(p)
    assert float(aux["xent"][0]) != float(aux["xent_steered"][0]) and np.isfinite(float(loss))
