"""Matrix-based Rényi entropy of representations (MBE): pure, fp32, jit-able.

For a matrix Z [n, d] of n row vectors, G = Z Zᵀ is the linear-kernel Gram matrix (no centering,
no row normalisation) and A = G / tr(G) has eigenvalues λ ≥ 0 summing to 1. The order-α
matrix-based Rényi entropy is S_α(A) = log(Σ λ^α) / (1 - α) (natural log; α = 1 is von Neumann,
-Σ λ log λ). The IBLM/GAPT code only needs α = 2, which needs no eigendecomposition:

    S_2 = -log Σ λ² = log tr(G)² - log ‖G‖_F²          (mbe2)

and tr(G), ‖G‖_F² are the same for Z Zᵀ [n×n] and Zᵀ Z [d×d] (same nonzero eigenvalues), so
``gram_stats`` forms whichever is smaller. Values lie in [0, log rank(Z)] ⊂ [0, log min(n, d)].

Choices and fixes relative to the reference (fangyuan-ksgk/mod_gpt ``src/mbe.py``; spec §1, §6):
- eps sits on the *squared* quantities, ``log(tr² + eps) - log(‖G‖_F² + eps)``, instead of
  ``max(2 log(|tr| + eps) - log(‖G‖_F² + eps), 0)``. Since ‖G‖_F² = Σλ² ≤ (Σλ)² = tr², this is
  ≥ 0 without a clamp, so the gradient is never cut (reference bug 5: the clamp / ratio clip
  zeroed gradients). eps only guards Z = 0 (value 0, gradient 0); default 1e-12, so the value is
  scale invariant up to eps / tr².
- Everything is cast to float32 first (the final reference version does the same).
- ``patch_mbe`` raises ``ConfigError`` when L % patch_size != 0 (the reference asserts).
- The anti-collapse variants (variance, range, log-barrier, softmin, floor) keep the reference's
  default hyperparameters; they are post-paper experiments (spec §1.3), offered for ablations.
- The streaming accumulator is a pure (G_DxD, n) pytree instead of a stateful class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.sharding import ConfigError

EPS = 1e-12


def _f32(x):
    return jnp.asarray(x).astype(jnp.float32)


def gram(Z_NxD: jax.Array) -> jax.Array:
    """The smaller of Z Zᵀ [.., n, n] and Zᵀ Z [.., d, d] (same nonzero spectrum)."""
    Z = _f32(Z_NxD)
    if Z.shape[-2] <= Z.shape[-1]:
        return jnp.einsum("...nd,...md->...nm", Z, Z)
    return jnp.einsum("...nd,...ne->...de", Z, Z)


def gram_stats(Z_NxD: jax.Array):
    """(tr G, ‖G‖_F²) over the last two axes, from the smaller Gram; batched over leading axes."""
    Z = _f32(Z_NxD)
    tr = jnp.sum(Z * Z, axis=(-2, -1))
    G = gram(Z)
    return tr, jnp.sum(G * G, axis=(-2, -1))


def mbe_from_stats(tr, fro2, eps: float = EPS):
    """α=2 entropy from tr(G) and ‖G‖_F²: log(tr² + eps) - log(‖G‖_F² + eps) ≥ 0."""
    return jnp.log(tr * tr + eps) - jnp.log(fro2 + eps)


def mbe2(Z_NxD: jax.Array, eps: float = EPS) -> jax.Array:
    """Collision (α=2) matrix-based entropy of the rows of Z [.., n, d]; shape Z.shape[:-2]."""
    return mbe_from_stats(*gram_stats(Z_NxD), eps)


def gram_eigs(Z_NxD: jax.Array) -> jax.Array:
    """Eigenvalues of the trace-normalised Gram A = G / tr(G) (ascending, clipped at 0)."""
    G = gram(Z_NxD)
    tr = jnp.trace(G, axis1=-2, axis2=-1)[..., None, None]
    return jnp.clip(jnp.linalg.eigvalsh(G / tr), 0.0, None)


def renyi_entropy(Z_NxD: jax.Array, alpha: float) -> jax.Array:
    """S_α of the trace-normalised Gram via ``eigvalsh`` (α > 0; α = 1 is von Neumann, nats).

    Reference/probing path (exact for any α); for α = 2 prefer ``mbe2`` (no eigensolve)."""
    alpha = float(alpha)
    if not alpha > 0:
        raise ConfigError(f"renyi_entropy: alpha={alpha} must be > 0")
    return renyi_from_eigs(gram_eigs(Z_NxD), alpha)


def renyi_from_eigs(lam: jax.Array, alpha: float) -> jax.Array:
    """S_α from eigenvalues ``lam`` [.., k] that sum to 1 (zeros are skipped)."""
    if float(alpha) == 1.0:
        return -jnp.sum(jax.scipy.special.xlogy(lam, lam), axis=-1)
    pos = lam > 0
    powed = jnp.where(pos, jnp.where(pos, lam, 1.0) ** alpha, 0.0)
    return jnp.log(jnp.sum(powed, axis=-1)) / (1.0 - alpha)


# ----------------------------------------------------------------------------- patches


def patches(h_BxLxD: jax.Array, patch_size: int) -> jax.Array:
    """[B, L, D] -> [B, L/p, p, D]: consecutive ``patch_size``-token windows of each sequence."""
    B, L, D = h_BxLxD.shape
    if patch_size < 1 or L % patch_size:
        raise ConfigError(f"patch MBE: sequence length {L} is not a multiple of "
                          f"patch_size={patch_size}; choose a divisor of {L}")
    return _f32(h_BxLxD).reshape(B, L // patch_size, patch_size, D)


def patch_mbe_detailed(h_BxLxD: jax.Array, patch_size: int = 8, eps: float = EPS) -> jax.Array:
    """Per-patch α=2 entropy, shape [B, L / patch_size]."""
    return mbe2(patches(h_BxLxD, patch_size), eps)


def patch_mbe(h_BxLxD: jax.Array, patch_size: int = 8, eps: float = EPS) -> jax.Array:
    """Mean α=2 entropy over all ``patch_size``-token windows of the batch (scalar)."""
    return jnp.mean(patch_mbe_detailed(h_BxLxD, patch_size, eps))


def patch_mbe_variance(h_BxLxD, patch_size: int = 8, weight: float = 1.0):
    """mean + weight · var of the per-patch entropies (penalises uneven compression)."""
    m_BxP = patch_mbe_detailed(h_BxLxD, patch_size)
    return jnp.mean(m_BxP) + weight * jnp.var(m_BxP)


def patch_mbe_range(h_BxLxD, patch_size: int = 8, mbe_min: float = 0.45, mbe_max: float = 0.75):
    """Hinge band: mean(relu(mbe_min - m) + relu(m - mbe_max))."""
    m_BxP = patch_mbe_detailed(h_BxLxD, patch_size)
    return jnp.mean(jax.nn.relu(mbe_min - m_BxP) + jax.nn.relu(m_BxP - mbe_max))


def patch_mbe_log_barrier(h_BxLxD, patch_size: int = 8, mbe_floor: float = 0.3,
                          eps: float = 1e-6):
    """mean(-log(max(m - floor, eps))): pushes entropy down but never below ``mbe_floor``."""
    m_BxP = patch_mbe_detailed(h_BxLxD, patch_size)
    return jnp.mean(-jnp.log(jnp.maximum(m_BxP - mbe_floor, eps)))


def patch_mbe_softmin(h_BxLxD, patch_size: int = 8, temperature: float = 0.1):
    """-(softmax(-m/T) · m): minimising it raises the softly smallest patch entropy."""
    m = patch_mbe_detailed(h_BxLxD, patch_size).reshape(-1)
    return -jnp.sum(jax.nn.softmax(-m / temperature) * m)


def patch_mbe_floor(h_BxLxD, patch_size: int = 8, mbe_floor: float = 0.3,
                    steepness: float = 10.0):
    """mean(m) + mean(exp(steepness · relu(floor - m))) - 1: mean with a soft floor."""
    m_BxP = patch_mbe_detailed(h_BxLxD, patch_size)
    return (jnp.mean(m_BxP) + jnp.mean(jnp.exp(steepness * jax.nn.relu(mbe_floor - m_BxP)))
            - 1.0)


PATCH_MBE = {"mean": patch_mbe, "variance": patch_mbe_variance, "range": patch_mbe_range,
             "log_barrier": patch_mbe_log_barrier, "softmin": patch_mbe_softmin,
             "floor": patch_mbe_floor}


# ----------------------------------------------------------------------------- streaming


def stream_init(d: int) -> dict:
    """Empty d×d accumulator for the entropy of many tokens at once (the dual Gram Zᵀ Z)."""
    return {"G_DxD": jnp.zeros((d, d), jnp.float32), "n": jnp.zeros((), jnp.int32)}


def stream_update(acc: dict, Z_NxD: jax.Array) -> dict:
    """Add rows Z [N, d] (any leading axes are flattened into N)."""
    Z = _f32(Z_NxD).reshape(-1, Z_NxD.shape[-1])
    return {"G_DxD": acc["G_DxD"] + Z.T @ Z, "n": acc["n"] + Z.shape[0]}


def stream_mbe(acc: dict, eps: float = EPS) -> jax.Array:
    """α=2 entropy of all rows streamed so far (equal to ``mbe2`` of their concatenation)."""
    G = acc["G_DxD"]
    return mbe_from_stats(jnp.trace(G), jnp.sum(G * G), eps)


def stream_renyi(acc: dict, alpha: float) -> jax.Array:
    """S_α of all rows streamed so far, from the eigenvalues of the d×d Gram."""
    G = acc["G_DxD"]
    return renyi_from_eigs(jnp.clip(jnp.linalg.eigvalsh(G / jnp.trace(G)), 0.0, None), alpha)


# ----------------------------------------------------------------------------- separation


def separation_ratio(h_pos_NxD: jax.Array, h_neg_NxD: jax.Array) -> jax.Array:
    """‖mean(h_pos) - mean(h_neg)‖ / sqrt((var_pos + var_neg) / 2), var = mean ‖h - mean‖²."""
    a, b = _f32(h_pos_NxD), _f32(h_neg_NxD)
    ma, mb = a.mean(0, keepdims=True), b.mean(0, keepdims=True)
    va = jnp.mean(jnp.sum((a - ma) ** 2, -1))
    vb = jnp.mean(jnp.sum((b - mb) ** 2, -1))
    return jnp.linalg.norm(ma - mb) / jnp.sqrt((va + vb) / 2.0)


def neuron_specialization(h_pos_NxD, h_neg_NxD, threshold: float = 0.5) -> jax.Array:
    """Fraction of units with |(m_pos - m_neg) / (m_pos + m_neg + 1e-6)| > threshold."""
    ma, mb = _f32(h_pos_NxD).mean(0), _f32(h_neg_NxD).mean(0)
    return jnp.mean(jnp.abs((ma - mb) / (ma + mb + 1e-6)) > threshold)
