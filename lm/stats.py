"""Statistics for results tables: sample std, per-seed listing, seed-level paired t intervals, the
example bootstrap, and the "separated" / "not separated" wording. One place for every study.

    lo_hi = paired_t(dlr_S, sft_S)            # (mean diff, lo, hi): t over seeds, 95%
    word = separation(*lo_hi[1:])            # "separated" only when the interval excludes 0

Conventions (``CONVENTIONS.md`` "Honesty"): standard deviations are sample std (``ddof=1``); with
<= ``LIST_SEEDS`` seeds a table lists every seed beside the mean; an "A beats B" claim needs a
seed-level interval (t with ``n - 1`` degrees of freedom over the per-seed paired differences)
that excludes 0. The example bootstrap (``bootstrap_ci``) resamples test examples for fixed seeds:
it measures test-set noise only, never seed variance, so it is shown beside the t interval and
never instead of it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

LIST_SEEDS = 5  # with this many seeds or fewer, report each seed


def _clean(xs) -> np.ndarray:
    return np.asarray([x for x in xs if x is not None and x == x], np.float64)


def sample_std(xs) -> float:
    """Sample standard deviation (``ddof=1``); nan for fewer than 2 values."""
    x = _clean(xs)
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def mean_sd(xs, fmt: str = "{:.3f}", seeds: bool = True) -> str:
    """``"m ± s"`` (sample std); with <= ``LIST_SEEDS`` values also ``" (a, b, c)"``."""
    x = _clean(xs)
    if len(x) == 0:
        return "-"
    if len(x) == 1:
        return fmt.format(x[0])
    out = f"{fmt.format(x.mean())} ± {fmt.format(x.std(ddof=1))}"
    if seeds and len(x) <= LIST_SEEDS:
        out += " (" + ", ".join(fmt.format(v) for v in x) + ")"
    return out


def t_interval(xs, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: Student-t interval of the mean of ``xs`` (n - 1 degrees of freedom)."""
    x = _clean(xs)
    if len(x) < 2:
        raise ValueError(f"a t interval needs >= 2 values, got {len(x)}")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    m, se = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(len(x))
    half = float(_st.t.ppf(0.5 + level / 2, len(x) - 1)) * se
    return m, m - half, m + half


def paired_t(a_S, b_S, level: float = 0.95) -> tuple[float, float, float]:
    """Seed-level paired interval of ``a - b``: ``a_S[i]`` and ``b_S[i]`` share seed ``i``."""
    a, b = np.asarray(a_S, np.float64), np.asarray(b_S, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_t needs two equal-length 1-d arrays, got {a.shape}, {b.shape}")
    return t_interval(a - b, level)


def separation(lo: float, hi: float) -> str:
    """``"separated"`` when ``[lo, hi]`` excludes 0, else ``"not separated"``."""
    return "separated" if lo > 0 or hi < 0 else "not separated"


def fmt_interval(m: float, lo: float, hi: float, scale: float = 1.0, fmt: str = "{:+.1f}") -> str:
    """``"+1.2 [-0.3, +2.7]"`` with every value multiplied by ``scale``."""
    return f"{fmt.format(scale * m)} [{fmt.format(scale * lo)}, {fmt.format(scale * hi)}]"


def bootstrap_ci(correct_SxN: np.ndarray, n_boot: int = 1000, seed: int = 0):
    """Mean over seeds of a per-example score and its 95% bootstrap CI over test examples (the
    same resampled examples for every seed: test-set noise only). ``correct_SxN``: [seeds, N]."""
    rng = np.random.default_rng(seed)
    n = correct_SxN.shape[1]
    idx = rng.integers(0, n, (n_boot, n))
    boots = correct_SxN[:, idx].mean(axis=(0, 2))
    return float(correct_SxN.mean()), float(np.percentile(boots, 2.5)), float(
        np.percentile(boots, 97.5))
