"""Spec §6 cases 13-20 for the DPO family and TDPO, the TDPO KL gradient, chunked == naive."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import preference as PF

M1 = jnp.ones((1, 1), jnp.float32)


def seq(v):
    """One pair whose single-token sequence log-prob is ``v``."""
    return jnp.full((1, 1), v, jnp.float32)


def test_case13_dpo_equal_policy_and_reference():
    rng = np.random.default_rng(0)
    lw, ll = (jnp.array(-rng.random((3, 4)), jnp.float32) for _ in range(2))
    mask = jnp.ones((3, 4))
    loss, aux = PF.dpo(lw, ll, lw, ll, mask, mask)
    np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)
    assert float(aux["rewards/accuracies"][0]) == 0 and float(aux["rewards/margins"][0]) == 0


def test_case14_dpo_value():
    loss, aux = PF.dpo(seq(2.0), seq(-1.0), seq(0.0), seq(0.0), M1, M1, beta=0.1)
    np.testing.assert_allclose(loss, 0.554355, rtol=1e-5)
    assert float(aux["rewards/accuracies"][0]) == 1.0
    np.testing.assert_allclose(aux["rewards/margins"][0], 0.3, rtol=1e-6)


def test_case15_cdpo():
    loss, _ = PF.dpo(seq(2.0), seq(-1.0), seq(0.0), seq(0.0), M1, M1, beta=0.1,
                     label_smoothing=0.1)
    np.testing.assert_allclose(loss, 0.9 * 0.554355 + 0.1 * 0.854355, rtol=1e-5)


def test_robust_and_hinge_values():
    z = 0.3
    loss, _ = PF.robust_dpo(seq(2.0), seq(-1.0), seq(0.0), seq(0.0), M1, M1, beta=0.1,
                            label_smoothing=0.1)
    ls = lambda x: -math.log1p(math.exp(-x))
    np.testing.assert_allclose(loss, (-0.9 * ls(z) + 0.1 * ls(-z)) / 0.8, rtol=1e-5)
    loss, _ = PF.hinge(seq(2.0), seq(-1.0), seq(0.0), seq(0.0), M1, M1, beta=0.1)
    np.testing.assert_allclose(loss, 0.7, rtol=1e-6)


def test_case16_ipo_length_normalised():
    mw = jnp.array([[1.0, 1.0, 0.0]])
    ml = jnp.array([[1.0, 1.0, 1.0]])
    lw, ll = jnp.array([[-1.0, -3.0, 9.0]]), jnp.array([[-2.0, -2.0, -2.0]])
    loss, _ = PF.ipo(lw, ll, lw * 0 - 2.0, ll * 0 - 2.0, mw, ml, beta=0.1)  # d_avg = 0
    np.testing.assert_allclose(loss, 25.0, rtol=1e-6)


def test_case17_simpo():
    # s_w - s_l = 0.5 with lengths 2 and 1
    mw, ml = jnp.array([[1.0, 1.0]]), jnp.array([[1.0, 0.0]])
    loss, _ = PF.simpo(jnp.array([[-1.0, -2.0]]), jnp.array([[-2.0, 5.0]]), mw, ml,
                       beta=2.0, gamma=1.0)
    np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)


def logits_pair(seed, B=2, T=5, V=7):
    rng = np.random.default_rng(seed)
    return (jnp.array(rng.normal(size=(B, T, V)), jnp.float32),
            jnp.array(rng.integers(0, V, (B, T)), jnp.int32))


@pytest.mark.parametrize("variant", ["tdpo1", "tdpo2"])
def test_case18_tdpo_equal_is_log2(variant):
    lg, lab = logits_pair(0)
    kl, lr, _ = PF.token_stats(lg, lg, lab)
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)
    m = jnp.ones(lab.shape)
    loss, aux = PF.tdpo(lr[:1], kl[:1], lr[1:], kl[1:], m[:1], m[1:], variant=variant)
    np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)


def test_case19_tdpo_kl_value():
    pol = jnp.log(jnp.array([[[0.9, 0.1]]]))
    ref = jnp.log(jnp.array([[[0.5, 0.5]]]))
    np.testing.assert_allclose(PF.full_kl(pol, ref), [[0.510826]], rtol=1e-5)


def test_case20_tdpo2_stops_gradient_of_chosen_kl():
    def z_grad(variant):
        return jax.grad(lambda kw: PF.tdpo_logits(0.3, -0.2, kw, 0.4, 0.5, variant))(0.1)
    assert float(z_grad("tdpo2")) == 0.0
    assert float(z_grad("tdpo1")) == 1.0
    # and through the full loss: d loss / d kl_chosen
    lr, m = jnp.zeros((1, 1)), M1

    def loss_wrt_klw(kw, variant):
        return PF.tdpo(lr, kw, lr, 0.4 * M1, m, m, variant=variant)[0]
    assert float(jax.grad(loss_wrt_klw)(0.1 * M1, "tdpo2")[0, 0]) == 0.0
    assert float(jax.grad(loss_wrt_klw)(0.1 * M1, "tdpo1")[0, 0]) != 0.0


def test_tdpo_kl_gradient_is_softmax_minus_pref():
    pol, _ = logits_pair(1)
    ref, _ = logits_pair(2)
    g = jax.grad(lambda x: PF.full_kl(x, ref).sum())(pol)
    np.testing.assert_allclose(g, jax.nn.softmax(pol) - jax.nn.softmax(ref), atol=1e-6)


def test_tdpo_value_against_numpy():
    lg_p, lab = logits_pair(3, B=2, T=4, V=5)
    lg_r, _ = logits_pair(4, B=2, T=4, V=5)
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0]], jnp.float32)
    kl, lr, _ = PF.token_stats(lg_p, lg_r, lab)
    p = np.asarray(lg_p, np.float64)
    r = np.asarray(lg_r, np.float64)
    lp = p - np.log(np.exp(p).sum(-1, keepdims=True))
    lq = r - np.log(np.exp(r).sum(-1, keepdims=True))
    kl_np = (np.exp(lq) * (lq - lp)).sum(-1)
    lr_np = np.take_along_axis(lp - lq, np.asarray(lab)[..., None], -1)[..., 0]
    m = np.asarray(mask)
    u = (lr_np[0] * m[0]).sum() - (lr_np[1] * m[1]).sum()
    kw, kr = (kl_np[0] * m[0]).sum(), (kl_np[1] * m[1]).sum()
    want = {"tdpo1": u - (kr - kw), "tdpo2": u - 0.5 * (kr - kw)}
    for v, z in want.items():
        loss, _ = PF.tdpo(lr[:1], kl[:1], lr[1:], kl[1:], mask[:1], mask[1:], variant=v)
        np.testing.assert_allclose(loss, np.log1p(np.exp(-0.1 * z)), rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_chunked_equals_naive_value_and_grad(chunk):
    rng = np.random.default_rng(5)
    B, T, D, V = 2, 7, 4, 11
    W = jnp.array(rng.normal(size=(D, V)), jnp.float32)
    Wr = jnp.array(rng.normal(size=(D, V)), jnp.float32)
    h = jnp.array(rng.normal(size=(B, T, D)), jnp.float32)
    hr = jnp.array(rng.normal(size=(B, T, D)), jnp.float32)
    lab = jnp.array(rng.integers(0, V, (B, T)), jnp.int32)

    def naive(W, h):
        kl, lr, lp = PF.token_stats(h @ W, hr @ Wr, lab)
        return (kl * 0.3 + lr + lp * 0.1).sum()

    def chunked(W, h):
        kl, lr, lp = PF.chunked_token_stats(lambda x: x @ W, lambda x: x @ Wr, h, hr, lab,
                                            chunk)
        return (kl * 0.3 + lr + lp * 0.1).sum()
    v1, g1 = jax.value_and_grad(naive, argnums=(0, 1))(W, h)
    v2, g2 = jax.value_and_grad(chunked, argnums=(0, 1))(W, h)
    np.testing.assert_allclose(v2, v1, rtol=1e-5)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_bad_preference_inputs():
    with pytest.raises(ValueError, match="label_smoothing"):
        PF.dpo(M1, M1, M1, M1, M1, M1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="variant"):
        PF.tdpo(M1, M1, M1, M1, M1, M1, variant="tdpo3")


@pytest.mark.parametrize("name", sorted(PF.PREFERENCE_LOSSES) + ["tdpo1", "tdpo2"])
def test_jit_equals_no_jit_pure(name):
    rng = np.random.default_rng(7)
    arr = [jnp.array(-rng.random((3, 4)), jnp.float32) for _ in range(4)]
    mw, ml = (jnp.array(rng.random((3, 4)) > 0.3, jnp.float32) for _ in range(2))
    if name == "simpo":
        f = lambda a: PF.simpo(a, arr[1], mw, ml)[0]  # noqa: E731
    elif name.startswith("tdpo"):
        f = lambda a: PF.tdpo(a, a ** 2, arr[1], arr[2] ** 2, mw, ml, variant=name)[0]  # noqa
    else:
        f = lambda a: PF.PREFERENCE_LOSSES[name](a, *arr[1:], mw, ml)[0]  # noqa: E731
    f = jax.value_and_grad(f)
    (v1, g1), (v2, g2) = f(arr[0]), jax.jit(f)(arr[0])
    np.testing.assert_allclose(v2, v1, rtol=1e-6)
    np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=1e-7)
