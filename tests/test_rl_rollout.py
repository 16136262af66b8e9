"""Rollouts (stored log-probs == a fresh forward, group layout, EOS masks), DAPO dynamic
sampling, and both post-training experiments' tiny presets end to end (slow)."""

import jax
import numpy as np
import pytest

from lm.sample import SampleCfg, sequence_logprobs
from rl import rollout as RO
from tests.helpers import tiny_model


@pytest.mark.parametrize("scoring", ["forward", "cached"])
def test_rollout_logprobs_equal_fresh_forward(scoring):
    """``forward`` scoring IS the training forward (1e-6); ``cached`` (sampler log-probs, the
    reference through the shared prefill) equals it within 1e-5 (fp32 round-off of another
    reduction order). Either way the other scoring gives the same rows and masks."""
    gd, params = tiny_model(seed=0)
    _, ref = tiny_model(seed=1)
    prompt = np.array([[5, 6, 7, 0], [9, 3, 0, 0]], np.int32)
    plen = np.array([3, 2], np.int32)
    kw = dict(group_size=3, sample_cfg=SampleCfg(max_new_tokens=6, eos_id=2),
              rng=jax.random.key(0))
    ro = RO.rollout(gd, params, ref, prompt, plen, scoring=scoring, **kw)
    other = RO.rollout(gd, params, ref, prompt, plen,
                       scoring={"forward": "cached", "cached": "forward"}[scoring], **kw)
    B, S = ro["tokens"].shape
    assert (B, S) == (6, 10)
    np.testing.assert_array_equal(np.asarray(ro["tokens"])[:3, :3], np.tile(prompt[0, :3],
                                                                            (3, 1)))
    for k in ("tokens", "mask", "lengths", "completion_BxT"):
        np.testing.assert_array_equal(ro[k], other[k])
    fresh = sequence_logprobs(gd, params, ro["tokens"], ro["mask"])
    fresh_ref = sequence_logprobs(gd, ref, ro["tokens"], ro["mask"])
    tol = 1e-6 if scoring == "forward" else 1e-5
    np.testing.assert_allclose(ro["old_logp"], fresh, rtol=tol, atol=tol)
    np.testing.assert_allclose(ro["ref_logp"], fresh_ref, rtol=tol, atol=tol)
    assert np.all(np.asarray(ro["old_logp"])[np.asarray(ro["mask"]) == 0] == 0)
    # the sampler's own log-probs, placed at the completion positions, agree too
    m = np.asarray(ro["mask"]) > 0
    samp = np.asarray(ro["sampler_logp_BxT"])
    for b in range(B):
        n = int(ro["lengths"][b])
        np.testing.assert_allclose(np.asarray(fresh)[b][m[b]], samp[b, :n], rtol=1e-4,
                                   atol=1e-5)
        assert m[b].sum() == n
    fin = np.asarray(ro["finished"])
    last = np.asarray(ro["completion_BxT"])[np.arange(B), np.maximum(
        np.asarray(ro["lengths"]) - 1, 0)]
    np.testing.assert_array_equal(fin, last == 2)


def test_dynamic_sampling_drops_zero_variance_groups_and_tops_up():
    G = 2

    def draw(i):
        r = np.array([[1, 1], [0, 1], [0, 0]][i % 3] * 2, np.float32)  # groups of 2
        batch = {"x": np.arange(4)[:, None] + 10 * i}
        return batch, r, [f"d{i}g0", f"d{i}g1"]
    batch, rewards, extras, info = RO.dynamic_sample(draw, want=2, group_size=G, max_draws=3)
    assert extras == ["d1g0", "d1g1"] and not info["short"]
    np.testing.assert_array_equal(rewards, [0, 1, 0, 1])
    batch, rewards, extras, info = RO.dynamic_sample(lambda i: draw(2), want=2, group_size=G,
                                                     max_draws=2)
    assert info["short"] and info["kept_groups"] == 0 and len(rewards) == 4


@pytest.mark.slow
def test_grpo_arithmetic_tiny_end_to_end(tmp_path):
    from experiments import grpo_arithmetic as E
    from experiments.base import main
    res = tmp_path / "res"
    rc = main(E.PRESETS, E.run, argv=[
        "--workdir", str(tmp_path / "w"), "--set", "exp.sft_steps=10", "train.steps=2",
        "exp.methods=grpo,dapo,ppo", "exp.eval_n=16", f"exp.results_dir={res}",
        "rl.prompts_per_step=4", "rl.group_size=2", "train.ckpt_every=1"])
    assert rc == 0
    for f in ("README.md", "config.json", "versions.json", "metrics.jsonl", "plot.png"):
        assert (res / f).exists()
    assert (tmp_path / "w" / "ppo" / "checkpoints").exists()
    rc = main(E.PRESETS, E.run, argv=["--set", "exp.methods=grpo,xent"])
    assert rc == 2  # a non-policy loss is one clear config error


@pytest.mark.slow
def test_tdpo_pairs_tiny_end_to_end(tmp_path):
    import json

    from experiments import tdpo_pairs as E
    from experiments.base import main
    res = tmp_path / "res"
    rc = main(E.PRESETS, E.run, argv=[
        "--workdir", str(tmp_path / "w"), "--set", "exp.sft_steps=5", "train.steps=2",
        "exp.methods=dpo,tdpo2", "exp.n_prompts=64", "exp.eval_every=2",
        f"exp.results_dir={res}", "train.batch_size=8"])
    assert rc == 0 and (res / "plot.png").exists()
    rows = [json.loads(x) for x in open(res / "metrics.jsonl")]
    assert {r["method"] for r in rows} == {"reference", "dpo", "tdpo2"}
    # real preference data as JSONL {prompt, chosen, rejected}
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Q{i}:", "chosen": "yes", "rejected": "no"})
                              for i in range(40)))
    rc = main(E.PRESETS, E.run, argv=[
        "--workdir", str(tmp_path / "w2"), "--set", "exp.sft_steps=3", "train.steps=2",
        "exp.methods=dpo", f"data.paths={data}", f"exp.results_dir={tmp_path / 'res2'}",
        "train.batch_size=8", "exp.eval_every=2"])
    assert rc == 0
