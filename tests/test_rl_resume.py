"""An RL run killed mid-way and rerun resumes from its last checkpoint and reproduces, step for
step, the records of an uninterrupted run (prompts and samples are keyed by the step number)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import grpo_arithmetic as E
from experiments.base import build
from rl.loop import RLTask, train_rl
from tests.helpers import same_records


class Killed(RuntimeError):
    pass


def _setup(method):
    cfg = E.tiny()
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, loss=method, steps=4, ckpt_every=2,
                                       batch_size=8),
        rl=dataclasses.replace(cfg.rl, group_size=2, prompts_per_step=4, mu=2, eval_every=2),
        exp=dataclasses.replace(cfg.exp, train_pool=64, eval_n=8))
    train, held, long_ = E.make_sets(cfg.exp, cfg.train.seed)
    task = E.make_task(cfg, train, held, long_, method)
    params = jax.device_get(build(dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, loss="xent"))).state["params"])
    return cfg, task, params


def _kill_at(task: RLTask, step: int) -> RLTask:
    def prompts(i):
        if i // 1000 >= step:  # the loop asks for step * 1000 + draw
            raise Killed(f"killed before RL step {step + 1}")
        return task.prompts(i)
    return dataclasses.replace(task, prompts=prompts)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ppo", "dcpo"])  # critic state; SAS advantage state
def test_killed_run_resumes_and_matches_uninterrupted(tmp_path, method):
    cfg, task, params = _setup(method)
    quiet = lambda *_: None
    full = train_rl(cfg, str(tmp_path / "full"), task=task, policy_params=params,
                    ref_params=params, log=quiet)
    with pytest.raises(Killed):
        train_rl(cfg, str(tmp_path / "cut"), task=_kill_at(task, 3), policy_params=params,
                 ref_params=params, log=quiet)
    said = []
    resumed = train_rl(cfg, str(tmp_path / "cut"), task=task, policy_params=params,
                       ref_params=params, log=said.append)
    assert any("resumed" in s and "RL step 2" in s for s in said)
    same_records(full, resumed)


@pytest.mark.slow
def test_tdpo_pairs_killed_method_resumes_with_the_same_records(tmp_path, monkeypatch, capsys):
    from experiments import tdpo_pairs as P
    from experiments.base import main
    argv = lambda wd: ["--workdir", str(wd), "--set", "exp.sft_steps=5", "train.steps=4",
                       "train.ckpt_every=2", "exp.methods=dpo", "exp.n_prompts=64",
                       "exp.eval_every=2", f"exp.results_dir={wd}/res", "train.batch_size=8"]
    assert main(P.PRESETS, P.run, argv=argv(tmp_path / "full")) == 0
    step, calls = P.build, {"n": 0}

    def killing_build(cfg, **kw):  # the method's train step dies on its 4th call
        setup = step(cfg, **kw)
        if cfg.train.loss != "dpo":
            return setup

        def train_step(state, batch):
            calls["n"] += 1
            if calls["n"] == 4:
                raise Killed("killed at step 4")
            return setup.train_step(state, batch)
        return dataclasses.replace(setup, train_step=train_step)
    monkeypatch.setattr(P, "build", killing_build)
    with pytest.raises(Killed):
        main(P.PRESETS, P.run, argv=argv(tmp_path / "cut"))
    monkeypatch.setattr(P, "build", step)
    capsys.readouterr()
    assert main(P.PRESETS, P.run, argv=argv(tmp_path / "cut")) == 0
    out = capsys.readouterr().out
    assert "[dpo] resumed at step 2" in out and "SFT done" not in out  # cached reference
    read = lambda wd: [json.loads(x) for x in open(wd / "res" / "metrics.jsonl")]
    full, cut = read(tmp_path / "full"), read(tmp_path / "cut")
    assert len(full) == len(cut)
    for a, b in zip(full, cut):
        assert a.keys() == b.keys()
        for k, v in a.items():
            if isinstance(v, float):
                np.testing.assert_allclose(b[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
            else:
                assert b[k] == v
