"""An RL run killed mid-way and rerun resumes from its last checkpoint and reproduces, step for
step, the records of an uninterrupted run (prompts and samples are keyed by the step number)."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments import grpo_arithmetic as E
from experiments.base import build
from rl.loop import RLTask, train_rl


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
    key = lambda r: (r["step"], r.get("split"))
    assert sorted(map(key, resumed)) == sorted(map(key, full))
    for a, b in zip(sorted(full, key=key), sorted(resumed, key=key)):
        for k, v in a.items():
            if isinstance(v, float) and k not in ("time", "wall_s", "step_time"):
                np.testing.assert_allclose(b[k], v, rtol=1e-5, atol=1e-7, err_msg=f"{key(a)} {k}")
