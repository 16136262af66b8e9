"""lm.stats against scipy and numpy: sample std, t intervals (one-sample and paired), wording."""

import statistics

import numpy as np
import pytest
from scipy import stats as st

from experiments import seed_stats
from lm import stats as S


def test_sample_std_is_ddof1():
    x = [0.41, 0.43, 0.39]
    assert S.sample_std(x) == pytest.approx(statistics.stdev(x), rel=1e-12)
    assert S.sample_std(x) != pytest.approx(np.std(x), rel=1e-3)  # not the population std
    assert np.isnan(S.sample_std([1.0])) and S.sample_std([1.0, None, float("nan"), 3.0]) == \
        pytest.approx(statistics.stdev([1.0, 3.0]))


@pytest.mark.parametrize("n,level", [(2, 0.95), (3, 0.95), (6, 0.9), (20, 0.99)])
def test_t_interval_matches_scipy_ttest(n, level):
    x = np.random.default_rng(n).normal(0.3, 1.0, n)
    m, lo, hi = S.t_interval(x, level)
    ci = st.ttest_1samp(x, 0.0).confidence_interval(level)
    np.testing.assert_allclose([m, lo, hi], [x.mean(), ci.low, ci.high], rtol=1e-10)


def test_paired_t_matches_scipy_ttest_rel_and_differs_from_unpaired():
    rng = np.random.default_rng(0)
    base = rng.normal(0.8, 0.05, 3)
    a, b = base + rng.normal(0.02, 0.01, 3), base
    m, lo, hi = S.paired_t(a, b)
    ci = st.ttest_rel(a, b).confidence_interval()
    np.testing.assert_allclose([m, lo, hi], [(a - b).mean(), ci.low, ci.high], rtol=1e-10)
    w = st.ttest_ind(a, b).confidence_interval()  # unpaired: seed effect not removed
    assert hi - lo < w.high - w.low


def test_separation_wording_and_format():
    assert S.separation(0.1, 2.0) == "separated" and S.separation(-3.0, -0.2) == "separated"
    assert S.separation(-0.1, 2.0) == "not separated" and S.separation(0.0, 1.0) == "not separated"
    assert S.fmt_interval(0.0123, -0.01, 0.035, scale=100) == "+1.2 [-1.0, +3.5]"


def test_mean_sd_lists_seeds_up_to_five():
    assert S.mean_sd([1.0, 2.0, 3.0]) == "2.000 ± 1.000 (1.000, 2.000, 3.000)"
    assert "(" not in S.mean_sd(list(range(6))) and S.mean_sd([0.5]) == "0.500"
    assert S.mean_sd([]) == "-"


def test_bad_inputs():
    with pytest.raises(ValueError, match=">= 2 values"):
        S.t_interval([1.0])
    with pytest.raises(ValueError, match="equal-length"):
        S.paired_t([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="level"):
        S.t_interval([1.0, 2.0], level=1.5)


def test_seed_stats_on_recorded_forgetting_matches_scipy():
    """The README figures come from seed_stats; its paired comparison is scipy's ttest_rel."""
    recs = seed_stats._read("gapt_forgetting", "results.jsonl")
    g = {r["seed"]: r["ft_separation"] for r in recs if r["arm"] == "gapt"}
    b = {r["seed"]: r["ft_separation"] for r in recs if r["arm"] == "base"}
    c = seed_stats.compare(g, b, rel=False)
    s = sorted(g)
    ci = st.ttest_rel([g[k] for k in s], [b[k] for k in s]).confidence_interval()
    np.testing.assert_allclose([c["lo"], c["hi"]], [ci.low, ci.high], rtol=1e-10)
    assert seed_stats.main(["iga_rules"]) == 0 and seed_stats.main(["nope"]) == 2


def test_dlr_table_has_seed_level_interval_beside_bootstrap():
    from rl.dlr_plot import table
    rng = np.random.default_rng(3)
    recs = [{"task": "t", "method": m, "seed": s,
             "correct": {"off" if m == "sft" else "route": (rng.random(40) < p).tolist()}}
            for m, p in (("sft", 0.5), ("dlr", 0.6)) for s in range(3)]
    out = table(recs, S.bootstrap_ci)
    row = next(r for r in out["rows"] if r["method"] == "dlr")
    acc = {m: [np.mean(r["correct"]["off" if m == "sft" else "route"]) for r in recs
               if r["method"] == m] for m in ("sft", "dlr")}
    ci = st.ttest_rel(acc["dlr"], acc["sft"]).confidence_interval()
    np.testing.assert_allclose(row["delta_pp_seed_t"][1:], [100 * ci.low, 100 * ci.high])
    assert "seed-level t 95%" in out["markdown"]


def test_seed_stats_lists_a_single_paired_seed_without_an_interval():
    from experiments.seed_stats import compare, line
    c = compare({0: 0.5, 1: 0.6}, {0: 0.4}, rel=False, scale=100.0)
    assert c["seeds"] == [0] and c["mean"] is None
    assert line("x vs y", c, " pp") == "| x vs y | 1 | +10.0 | – | 1 paired seed(s): no interval |"
