"""lm.info: matrix-based entropy against numpy eigen references and hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import info
from lm.sharding import ConfigError

RNG = np.random.default_rng(0)


def np_renyi(Z, alpha):
    """Independent float64 reference: eigenvalues of Z Zᵀ / tr."""
    Z = np.asarray(Z, np.float64)
    G = Z @ Z.T
    lam = np.clip(np.linalg.eigvalsh(G / np.trace(G)), 0, None)
    if alpha == 1:
        lam = lam[lam > 0]
        return float(-(lam * np.log(lam)).sum())
    return float(np.log((lam[lam > 0] ** alpha).sum()) / (1 - alpha))


def test_orthonormal_patch_gives_log_n():
    Z = np.eye(16, dtype=np.float32)[:8]  # 8 orthonormal rows in R^16
    np.testing.assert_allclose(info.mbe2(Z), np.log(8), atol=1e-6)
    np.testing.assert_allclose(info.renyi_entropy(Z, 1.0), np.log(8), atol=1e-5)


def test_rank_one_gives_zero():
    v = RNG.normal(size=16).astype(np.float32)
    Z = np.outer(RNG.normal(size=8), v).astype(np.float32)
    assert abs(float(info.mbe2(Z))) < 1e-6


def test_zero_matrix_is_finite_zero_with_zero_grad():
    Z = jnp.zeros((8, 16))
    assert float(info.mbe2(Z)) == 0.0
    g = jax.grad(info.mbe2)(Z)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g) == 0.0)


def test_scale_and_row_permutation_invariance():
    Z = RNG.normal(size=(8, 32)).astype(np.float32)
    base = float(info.mbe2(Z))
    np.testing.assert_allclose(info.mbe2(7.5 * Z), base, rtol=1e-6)
    np.testing.assert_allclose(info.mbe2(0.01 * Z), base, rtol=1e-5)
    np.testing.assert_allclose(info.mbe2(Z[RNG.permutation(8)]), base, rtol=1e-6)


def test_gram_and_dual_agree():
    Z = RNG.normal(size=(40, 12)).astype(np.float32)  # n > d: gram_stats uses Zᵀ Z
    tr, f2 = info.gram_stats(Z)
    G = Z.astype(np.float64) @ Z.T.astype(np.float64)  # the n×n primal, in float64
    np.testing.assert_allclose(tr, np.trace(G), rtol=1e-5)
    np.testing.assert_allclose(f2, (G**2).sum(), rtol=1e-5)
    assert info.gram(Z).shape == (12, 12) and info.gram(Z.T).shape == (12, 12)
    np.testing.assert_allclose(info.mbe2(Z), info.mbe2(Z.T), rtol=1e-5)  # same spectrum


def test_mbe2_equals_minus_log_sum_lambda_squared():
    for shape in [(8, 16), (8, 5), (3, 64)]:
        Z = RNG.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(info.mbe2(Z), np_renyi(Z, 2), rtol=1e-5)


def test_two_orthogonal_rows_closed_form():
    a, b = 1.7, 0.4
    Z = np.zeros((2, 6), np.float32)
    Z[0, 0], Z[1, 3] = a, b
    want = -np.log((a**4 + b**4) / (a**2 + b**2) ** 2)
    np.testing.assert_allclose(info.mbe2(Z), want, rtol=1e-6)


def test_gradient_matches_analytic_and_finite_differences():
    Z = RNG.normal(size=(8, 16)).astype(np.float64)
    g = np.asarray(jax.grad(info.mbe2)(jnp.asarray(Z, jnp.float32)), np.float64)
    G = Z @ Z.T
    analytic = 4 * Z / np.trace(G) - 4 * G @ Z / (G**2).sum()
    np.testing.assert_allclose(g, analytic, rtol=1e-4, atol=1e-6)

    def f64(Z):  # float64 numpy version of the same formula for central differences
        G = Z @ Z.T
        return 2 * np.log(np.trace(G)) - np.log((G**2).sum())
    h = 1e-6
    for i, j in [(0, 0), (3, 7), (7, 15)]:
        E = np.zeros_like(Z)
        E[i, j] = h
        fd = (f64(Z + E) - f64(Z - E)) / (2 * h)
        np.testing.assert_allclose(g[i, j], fd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0, 0.5])
def test_renyi_matches_numpy(alpha):
    Z = RNG.normal(size=(8, 16)).astype(np.float32)
    np.testing.assert_allclose(info.renyi_entropy(Z, alpha), np_renyi(Z, alpha), rtol=1e-4)


def test_renyi_alpha2_equals_mbe2_and_bad_alpha_raises():
    Z = RNG.normal(size=(4, 8, 16)).astype(np.float32)
    np.testing.assert_allclose(info.renyi_entropy(Z, 2.0), info.mbe2(Z), rtol=1e-4)
    with pytest.raises(ConfigError, match="alpha"):
        info.renyi_entropy(Z, 0.0)


def test_patch_mbe_is_mean_of_per_window_entropy():
    h = RNG.normal(size=(2, 24, 16)).astype(np.float32)
    det = np.asarray(info.patch_mbe_detailed(h, patch_size=8))
    assert det.shape == (2, 3)
    want = [[np_renyi(h[b, 8 * p: 8 * p + 8], 2) for p in range(3)] for b in range(2)]
    np.testing.assert_allclose(det, want, rtol=1e-5)
    np.testing.assert_allclose(info.patch_mbe(h, 8), np.mean(want), rtol=1e-5)
    with pytest.raises(ConfigError, match="patch_size=5"):
        info.patch_mbe(h, 5)


def test_patch_variants_hand_values():
    h = RNG.normal(size=(2, 16, 8)).astype(np.float32)
    m = np.asarray(info.patch_mbe_detailed(h, 8), np.float64)
    np.testing.assert_allclose(info.patch_mbe_variance(h), m.mean() + m.var(), rtol=1e-5)
    np.testing.assert_allclose(info.patch_mbe_range(h, mbe_min=2.5, mbe_max=3.0),
                               np.mean(np.maximum(2.5 - m, 0) + np.maximum(m - 3.0, 0)),
                               rtol=1e-5)
    np.testing.assert_allclose(info.patch_mbe_log_barrier(h, mbe_floor=0.3),
                               np.mean(-np.log(m - 0.3)), rtol=1e-5)
    w = np.exp(-m.ravel() / 0.1)
    np.testing.assert_allclose(info.patch_mbe_softmin(h), -(w / w.sum()) @ m.ravel(), rtol=1e-5)
    np.testing.assert_allclose(info.patch_mbe_floor(h, mbe_floor=3.0),
                               m.mean() + np.mean(np.exp(10 * np.maximum(3.0 - m, 0))) - 1,
                               rtol=1e-5)


def test_stream_accumulator_equals_concatenation():
    Z = RNG.normal(size=(300, 24)).astype(np.float32)
    acc = info.stream_init(24)
    upd = jax.jit(info.stream_update)
    for chunk in np.array_split(Z, 7):
        acc = upd(acc, chunk)
    assert int(acc["n"]) == 300
    np.testing.assert_allclose(info.stream_mbe(acc), np_renyi(Z, 2), rtol=1e-4)
    np.testing.assert_allclose(info.stream_renyi(acc, 1.0), np_renyi(Z, 1), rtol=1e-4)


def test_jit_equals_nojit():
    h = RNG.normal(size=(2, 16, 32)).astype(np.float32)
    for fn in [info.patch_mbe, lambda x: info.renyi_entropy(x[0, :8], 1.0),
               lambda x: info.mbe2(x)]:
        np.testing.assert_allclose(jax.jit(fn)(h), fn(h), rtol=1e-6)


def test_bfloat16_input_computed_in_fp32():
    Z = RNG.normal(size=(8, 16)).astype(np.float32)
    out = info.mbe2(jnp.asarray(Z, jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, info.mbe2(jnp.asarray(jnp.asarray(Z, jnp.bfloat16),
                                                          jnp.float32)), rtol=1e-6)


def test_separation_ratio_and_specialization_hand_values():
    pos = np.array([[1.0, 0.0], [3.0, 0.0]], np.float32)  # mean (2,0), var 1
    neg = np.array([[0.0, 4.0], [0.0, 6.0]], np.float32)  # mean (0,5), var 1
    np.testing.assert_allclose(info.separation_ratio(pos, neg), np.sqrt(4 + 25) / 1.0,
                               rtol=1e-6)
    # unit 0: (2-0)/(2+0) = 1 > .5; unit 1: (0-5)/5 = -1 -> both specialised
    np.testing.assert_allclose(info.neuron_specialization(pos, neg), 1.0)
    same = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(info.neuron_specialization(same, same), 0.0)
