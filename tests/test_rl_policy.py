"""Spec §6 cases for policy losses, aggregation, KL estimators, advantages, GAE, rewards."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import advantages as A
from rl import policy as P
from rl import rewards as R

ONE = jnp.ones((1, 1), jnp.float32)


def tok(ratio, adv, fn=P.ppo_clip, **kw):
    """Loss, d loss / d logp and aux for one token with the given ratio and advantage."""
    old = jnp.full((1, 1), -1.0)

    def f(logp):
        return fn(logp, old, jnp.full((1, 1), adv), ONE, **kw)
    logp = old + math.log(ratio)
    (loss, aux), g = jax.value_and_grad(f, has_aux=True)(logp)
    frac = {k: float(v[0] / v[1]) for k, v in aux.items()}
    return float(loss), float(g[0, 0]), frac, float(logp[0, 0])


def test_case1_ppo_on_policy():
    logp = jnp.array([[-1.0, -2.0, -0.5], [-0.3, -0.1, 0.0]])
    mask = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
    loss, aux = P.ppo_clip(logp, logp, jnp.full_like(logp, 0.7), mask)
    np.testing.assert_allclose(loss, -0.7, rtol=1e-6)
    assert float(aux["pg_clipfrac"][0]) == 0 and float(aux["ppo_kl"][0]) == 0


def test_case2_clip_high_positive_adv():
    loss, g, aux, _ = tok(1.5, 1.0)
    np.testing.assert_allclose(loss, -1.2, rtol=1e-6)
    assert g == 0.0 and aux["pg_clipfrac"] == 1.0


def test_case3_low_ratio_positive_adv_unclipped():
    loss, g, aux, _ = tok(0.5, 1.0)
    np.testing.assert_allclose([loss, g], [-0.5, -0.5], rtol=1e-6)
    assert aux["pg_clipfrac"] == 0.0


def test_case4_low_ratio_negative_adv_clipped():
    loss, g, aux, _ = tok(0.5, -1.0)
    np.testing.assert_allclose(loss, 0.8, rtol=1e-6)
    assert g == 0.0 and aux["pg_clipfrac"] == 1.0


def test_case5_dual_clip():
    loss, g, aux, _ = tok(5.0, -1.0, clip_c=3.0)
    np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
    assert g == 0.0 and aux["pg_clipfrac_lower"] == 1.0
    loss_nodual, g2, _, _ = tok(5.0, -1.0, clip_c=None)
    np.testing.assert_allclose([loss_nodual, g2], [5.0, 5.0], rtol=1e-5)


def test_case6_clip_higher():
    loss, g, _, _ = tok(1.25, 1.0, fn=P.dapo)
    np.testing.assert_allclose([loss, g], [-1.25, -1.25], rtol=1e-6)
    loss_sym, g_sym, _, _ = tok(1.25, 1.0)
    np.testing.assert_allclose(loss_sym, -1.2, rtol=1e-6)
    assert g_sym == 0.0


def test_case7_cispo_keeps_gradient():
    loss, g, aux, logp = tok(2.0, 1.0, fn=P.cispo, eps_high=0.28)
    np.testing.assert_allclose([loss, g], [-1.28 * logp, -1.28], rtol=1e-6)
    assert aux["pg_clipfrac"] == 1.0
    _, g_ppo, _, _ = tok(2.0, 1.0)
    assert g_ppo == 0.0


def test_case8_gspo_sequence_ratio():
    old = jnp.array([[-1.0, -2.0]])
    logp = old + jnp.array([[0.1, 0.3]])
    _, aux = P.gspo(logp, old, jnp.ones((1, 2)), jnp.ones((1, 2)), eps_low=1.0, eps_high=1.0)
    np.testing.assert_allclose(aux["ratio/mean"][0] / 2, math.exp(0.2), rtol=1e-6)
    # gradient of -A * s_b per token: s_b * dlogp / n after seq-mean-token-mean
    g = jax.grad(lambda lp: P.gspo(lp, old, jnp.ones((1, 2)), jnp.ones((1, 2)),
                                   eps_low=1.0, eps_high=1.0)[0])(logp)
    np.testing.assert_allclose(g, -math.exp(0.2) / 2 * np.ones((1, 2)), rtol=1e-6)


def test_case9_value_clip():
    loss, aux = P.value_loss(2.0 * ONE, 0.0 * ONE, 1.0 * ONE, ONE, eps_v=0.5)
    np.testing.assert_allclose(loss, 0.5, rtol=1e-6)
    assert float(aux["vf_clipfrac"][0]) == 0.0


def test_case10_group_advantages():
    r = jnp.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(A.grpo(r, 4), 0.5 / (0.5773503 + 1e-6) * np.array(
        [1, -1, -1, 1]), rtol=1e-6)
    np.testing.assert_allclose(A.grpo(r, 4), [0.866025, -0.866025, -0.866025, 0.866025],
                               rtol=1e-5)
    np.testing.assert_allclose(A.dr_grpo(r, 4), [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_allclose(A.rloo(r, 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(A.rloo(r, 1), r)  # singleton: A = R
    np.testing.assert_allclose(A.grpo(r, 1), r / (1 + 1e-6))  # verl: mean 0, std 1


def test_case11_zero_std_group_zero_loss_and_grad():
    r = jnp.ones(4)
    for fn in (A.grpo, A.dr_grpo, A.rloo):
        np.testing.assert_array_equal(fn(r, 4), np.zeros(4))
    logp = jnp.array(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    adv = jnp.broadcast_to(A.grpo(r, 4)[:, None], (4, 3))
    loss, g = jax.value_and_grad(lambda lp: P.grpo(lp, lp - 0.1, adv, jnp.ones((4, 3)))[0])(logp)
    assert float(loss) == 0.0 and not np.any(np.asarray(g))


MASK12 = jnp.array([[1, 0, 0, 0], [1, 1, 1, 0]], jnp.float32)


@pytest.mark.parametrize("mode,kw,expected", [
    ("seq-mean-token-mean", {}, 1.0), ("token-mean", {}, 1.0),
    ("seq-mean-token-sum", {}, 2.0), ("seq-mean-token-sum-norm", {"scale": 4}, 1.0),
    ("seq-mean-token-sum-norm", {"scale": 2 * 4}, 0.5)])
def test_case12_aggregation_unequal_lengths(mode, kw, expected):
    num, den = P.aggregate(jnp.ones((2, 4)), MASK12, mode, **kw)
    np.testing.assert_allclose(num / den, expected)


def test_case12_dr_grpo_constant_normalizer():
    x = jnp.ones((2, 4))
    loss, _ = P.dr_grpo(x, x, -jnp.ones((2, 4)), MASK12, max_len=4)  # per-token loss = 1
    np.testing.assert_allclose(loss, 0.5)


def test_case12b_token_weights():
    x = jnp.array([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    got = {m: float(np.divide(*P.aggregate(x, MASK12, m, **kw))) for m, kw in
           [("seq-mean-token-mean", {}), ("token-mean", {}),
            ("seq-mean-token-sum-norm", {"scale": 8})]}
    assert got == pytest.approx({"seq-mean-token-mean": 0.5, "token-mean": 0.25,
                                 "seq-mean-token-sum-norm": 1 / 8})


def test_case21_kl_estimators():
    lp, ref = jnp.array([0.5]), jnp.array([0.0])
    np.testing.assert_allclose(P.kl_estimate(lp, ref, "k1"), 0.5)
    np.testing.assert_allclose(P.kl_estimate(lp, ref, "k2"), 0.125)
    np.testing.assert_allclose(P.kl_estimate(lp, ref, "k3"), math.exp(-0.5) + 0.5 - 1,
                               rtol=1e-6)
    np.testing.assert_allclose(P.kl_estimate(lp, ref, "k3+"), 0.106531, rtol=1e-5)
    g = jax.grad(lambda x: P.kl_estimate(x, ref, "k3+").sum())(lp)
    np.testing.assert_allclose(g, 0.5)  # straight-through: gradient of k2 = d


@pytest.mark.parametrize("name", sorted(P.POLICY_LOSSES))
def test_case22_masked_junk_pure(name):
    rng = np.random.default_rng(1)
    shape = (3, 5)
    mask = jnp.array(rng.random(shape) > 0.4, jnp.float32).at[:, 0].set(1.0)
    logp = jnp.array(-rng.random(shape) - 0.1, jnp.float32)
    old = logp + jnp.array(rng.normal(0, 0.3, shape), jnp.float32)
    adv = jnp.array(rng.normal(size=shape), jnp.float32)
    ref = logp - 0.2
    junk = jnp.where(mask > 0, 0.0, jnp.nan)
    fn = P.POLICY_LOSSES[name]

    def f(lp, o, a, r):
        return fn(lp, o, a, mask, ref_logp=r, kl_coef=0.1)[0]
    clean, g = jax.value_and_grad(f)(logp, old, adv, ref)
    dirty, gd = jax.value_and_grad(f)(logp + jnp.where(mask > 0, 0.0, 7.0), old + junk,
                                      adv + junk, ref + junk)
    assert float(clean) == float(dirty)
    assert np.all(np.asarray(gd)[np.asarray(mask) == 0] == 0.0)
    np.testing.assert_array_equal(g, gd)


@pytest.mark.parametrize("mode", ["token-mean", "dr_grpo"])
def test_case23_global_counts_sum_over_microbatches(mode):
    rng = np.random.default_rng(2)
    x = jnp.array(rng.normal(size=(4, 6)), jnp.float32)
    mask = jnp.array(rng.random((4, 6)) > 0.3, jnp.float32)
    if mode == "token-mean":
        full = np.divide(*P.aggregate(x, mask, "token-mean"))
        kw = {"num_tokens": float(mask.sum())}
        parts = [np.divide(*P.aggregate(x[s], mask[s], "token-mean", **kw))
                 for s in (slice(0, 2), slice(2, 4))]
    else:
        full = np.divide(*P.aggregate(x, mask, "seq-mean-token-sum-norm", scale=4 * 6))
        parts = [np.divide(*P.aggregate(x[s], mask[s], "seq-mean-token-sum-norm", scale=4 * 6))
                 for s in (slice(0, 2), slice(2, 4))]
    np.testing.assert_allclose(sum(parts), full, rtol=1e-6)


def test_local_denominators_add_up():
    """Without global counts every mode's den is additive over row splits (train-step path)."""
    rng = np.random.default_rng(3)
    x = jnp.array(rng.normal(size=(4, 6)), jnp.float32)
    mask = jnp.array(rng.random((4, 6)) > 0.3, jnp.float32).at[1].set(0.0)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        full = P.aggregate(x, mask, mode)
        a, b = P.aggregate(x[:2], mask[:2], mode), P.aggregate(x[2:], mask[2:], mode)
        np.testing.assert_allclose([a[0] + b[0], a[1] + b[1]], full, rtol=1e-6)


def test_case24_gae():
    r = jnp.array([[0.0, 0.0, 1.0]])
    adv, ret = A.gae(r, jnp.zeros((1, 3)), jnp.ones((1, 3)), whiten=False)
    np.testing.assert_allclose(adv, [[1, 1, 1]])
    np.testing.assert_allclose(ret, [[1, 1, 1]])


def _gae_compacted(r, v, m, gamma, lam):
    """Independent reference: standard GAE on each row's active positions only (holes removed,
    V = 0 after the last one), A_k = sum_l (gamma lam)^(l-k) delta_l as an explicit sum, then
    scattered back to the padded positions (0 elsewhere)."""
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
        idx = np.flatnonzero(m[b])
        rc, vc = r[b, idx], v[b, idx]
        v_next = np.append(vc[1:], 0.0)
        delta = rc + gamma * v_next - vc
        n = len(idx)
        for k in range(n):
            adv[b, idx[k]] = sum((gamma * lam) ** (l - k) * delta[l] for l in range(k, n))
    return adv


def test_gae_matches_compacted_reference_with_holes():
    rng = np.random.default_rng(4)
    r, v = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    m = np.array([[0, 1, 0, 1, 1, 0, 1, 0],    # holes inside the response
                  [1, 1, 1, 1, 1, 1, 1, 1],
                  [0, 0, 1, 0, 0, 0, 0, 1],    # two tokens far apart
                  [0, 0, 0, 0, 0, 0, 0, 0]],   # empty row
                 np.float32)
    r_junk = np.where(m > 0, r, 1e3)  # masked rewards/values must not leak in
    v_junk = np.where(m > 0, v, -1e3)
    for gamma, lam in ((0.9, 0.8), (0.97, 0.5), (1.0, 1.0)):
        ref = _gae_compacted(r, v, m, gamma, lam)
        adv, ret = A.gae(jnp.array(r_junk), jnp.array(v_junk), jnp.array(m), gamma, lam,
                         whiten=False)
        np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret, (ref + v) * m, rtol=1e-5, atol=1e-5)
    w, _ = A.gae(jnp.array(r), jnp.array(v), jnp.array(m), 0.9, 0.8)
    act = np.asarray(w)[m > 0]
    np.testing.assert_allclose([act.mean(), act.std()], [0, 1], atol=1e-5)
    assert np.all(np.asarray(w)[m == 0] == 0)


def test_case25_overlong_penalty():
    np.testing.assert_allclose(R.overlong_penalty([18, 10, 16, 20, 25], 20, 4),
                               [-0.5, 0, 0, -1, -1])
    with pytest.raises(ValueError, match="cache_len"):
        R.overlong_penalty([1], 4, 8)


def test_sas_smooths_zero_variance_groups():
    st = A.sas_init(3)
    r1 = jnp.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # prompts 0, 2
    a1, st = A.sas(r1, 4, [0, 2], st)
    np.testing.assert_allclose(a1[:4], A.grpo(r1, 4, eps=0.0)[:4], rtol=1e-6)  # first visit
    np.testing.assert_array_equal(a1[4:], 0.0)  # zero std, no history
    r2 = jnp.ones(4)  # prompt 0 again, all correct: plain GRPO gives 0
    a2, st = A.sas(r2, 4, [0], st)
    std = math.sqrt((1 * (1 / 3) + 0 + 0.5 * 0.25) / 2)  # merged std after 2 visits
    cum = (1.0 - 0.75) / std
    np.testing.assert_allclose(a2, min(cum / 3, 2 * cum / 3) * np.ones(4), rtol=1e-5)
    assert int(st["times"][0]) == 2 and int(st["times"][1]) == 0


def test_dcpo_bounds_match_formula_and_ppo_at_q1():
    lo, hi = P.dcpo_bounds(jnp.log(jnp.array([1.0, 0.5, 0.1, 1e-4])))
    q = np.array([1.0, 0.5, 0.1, 1e-4])
    np.testing.assert_allclose(lo, 0.5 + 0.5 * np.sqrt(np.maximum(1 - 0.64 / q, 0)), rtol=1e-6)
    np.testing.assert_allclose(hi, np.minimum(0.5 + 0.5 * np.sqrt(1 + 0.8 / q), 10), rtol=1e-6)
    np.testing.assert_allclose(lo[0], 0.8, rtol=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mode"):
        P.aggregate(ONE, ONE, "sum")
    with pytest.raises(ValueError, match="clip_c"):
        P.ppo_clip(ONE, ONE, ONE, ONE, clip_c=0.5)
    with pytest.raises(ValueError, match="groups"):
        A.grpo(jnp.ones(5), 4)


def test_parse_and_rewards():
    assert [R.parse_answer(s) for s in ["19", " =19.", "-3", "+4", "1,024", "x"]] == [
        19, 19, -3, 4, 1024, None]
    np.testing.assert_array_equal(R.exact_match(["19", " 19 ", "x"], [19, 19, 19]), [1, 1, 0])
    np.testing.assert_array_equal(R.format_reward(["19", "19 a", "-2", "7"],
                                                  [True, True, True, False]), [1, 0, 1, 0])
    np.testing.assert_allclose(R.sorted_fraction(["1234", "4321", "1", "1213"]),
                               [1, 0, 0, 2 / 3], rtol=1e-6)
    p, a = R.arithmetic_problems(50, np.random.default_rng(0), digits=(1, 2))
    assert all(eval(s[:-1]) == x for s, x in zip(p, a))


@pytest.mark.parametrize("name", sorted(P.POLICY_LOSSES) + ["value"])
def test_jit_equals_no_jit_pure(name):
    rng = np.random.default_rng(6)
    mask = jnp.array(rng.random((3, 5)) > 0.3, jnp.float32)
    x, y, z = (jnp.array(rng.normal(size=(3, 5)) * 0.3 - 1, jnp.float32) for _ in range(3))
    fn = P.value_loss if name == "value" else P.POLICY_LOSSES[name]
    f = jax.value_and_grad(lambda a: fn(a, y, z, mask)[0])
    (v1, g1), (v2, g2) = f(x), jax.jit(f)(x)
    np.testing.assert_allclose(v2, v1, rtol=1e-6)
    np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=1e-7)


def _np_dcpo_token_loss(logp, old, adv, eps_low=0.16, eps_high=0.2, clip_c=3.0):
    """lime-RL/DCPO per-token loss in numpy: get_clip_low_high bounds, verl dual-clip PPO."""
    q = np.exp(old)
    lo = 0.5 + 0.5 * np.sqrt(np.maximum(1 - 4 * eps_low / q, 0.0))
    hi = np.minimum(0.5 + 0.5 * np.sqrt(1 + 4 * eps_high / q), max(clip_c, 10.0))
    r = np.exp(logp - old)
    pg1, pg2 = -adv * r, -adv * np.clip(r, lo, hi)
    clip1 = np.maximum(pg1, pg2)
    return np.where(adv < 0, np.minimum(-adv * clip_c, clip1), clip1)


def _ragged(rng, lengths, T):
    B = len(lengths)
    mask = (np.arange(T)[None] < np.array(lengths)[:, None]).astype(np.float32)
    old = -rng.random((B, T)) * 2 - 0.05
    logp = old + rng.normal(0, 0.4, (B, T))
    adv = np.repeat(rng.normal(size=(B, 1)), T, 1)
    return logp, old, adv, mask


def test_dcpo_otm_aggregation_ragged_lengths():
    """DCPO default = their code's only-token-mean (sum of all token losses / all tokens); the
    paper's (1/G) sum_i sum_t via agg=seq-mean-token-sum; both differ from the 1/|o_i| form."""
    logp, old, adv, mask = _ragged(np.random.default_rng(7), [1, 6, 3, 2], 6)
    L = _np_dcpo_token_loss(logp, old, adv)
    code_otm = (L * mask).sum() / mask.sum()          # agg_loss "only-token-mean"
    paper_otm = (L * mask).sum(-1).sum() / len(mask)  # (1/G) sum_i sum_t, G responses
    seq_mean_tok_mean = ((L * mask).sum(-1) / mask.sum(-1)).mean()
    args = [jnp.array(a, jnp.float32) for a in (logp, old, adv, mask)]
    got = float(P.dcpo(*args)[0])
    np.testing.assert_allclose(got, code_otm, rtol=1e-5)
    np.testing.assert_allclose(float(P.dcpo(*args, agg="seq-mean-token-sum")[0]), paper_otm,
                               rtol=1e-5)
    assert abs(got - seq_mean_tok_mean) > 1e-2 * abs(code_otm)  # ragged: the forms differ
    # every active token has the same gradient weight 1/N under OTM (unclipped tokens)
    g = jax.grad(lambda lp: P.dcpo(lp, *args[1:])[0])(args[0])
    r = np.exp(logp - old)
    lo_hi = np.isclose(_np_dcpo_token_loss(logp, old, adv), -adv * r)
    free = (mask > 0) & lo_hi
    np.testing.assert_allclose(np.asarray(g)[free], (-adv * r / mask.sum())[free], rtol=1e-4)


def test_grpo_gspo_fully_masked_rows_divide_by_nonempty_rows_not_all_rows():
    """Ours (verl) = mean over non-empty rows; TRL loss_type="grpo" = mean over all rows."""
    logp, old, adv, mask = _ragged(np.random.default_rng(8), [3, 0, 5, 0, 2], 5)
    nb = mask.sum(-1)
    r = np.exp(logp - old)
    grpo_tok = np.maximum(-adv * r, -adv * np.clip(r, 0.8, 1.2))
    s_B = np.exp(((logp - old) * mask).sum(-1) / np.maximum(nb, 1))[:, None]  # TRL sequence IS
    gspo_tok = np.maximum(-adv * s_B, -adv * np.clip(s_B, 1 - 3e-4, 1 + 4e-4))
    args = [jnp.array(a, jnp.float32) for a in (logp, old, adv, mask)]
    for fn, tok_loss in ((P.grpo, grpo_tok), (P.gspo, gspo_tok)):
        row_means = (tok_loss * mask).sum(-1) / np.maximum(nb, 1)
        trl = row_means.mean()                 # TRL: .mean() over all B rows
        verl = row_means[nb > 0].mean()        # verl agg_loss: seq_mask = nb > 0
        got = float(fn(*args)[0])
        np.testing.assert_allclose(got, verl, rtol=1e-5)
        assert abs(got - trl) > 0.1 * abs(verl)
        np.testing.assert_allclose(got * 3 / 5, trl, rtol=1e-5)  # 3 of 5 rows non-empty
