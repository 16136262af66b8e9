"""A resume whose latest Orbax checkpoint has random bytes over a few files (array data,
``_METADATA``, the iterator-state JSON): the pretraining runner and the RL loop log the step and
the cause, resume from the newest readable earlier checkpoint and continue as the uninterrupted
run did; with no readable checkpoint the CLI prints one ``error:`` line naming
``--set run.overwrite=true`` and exits 2. Never a traceback, never a silent fresh start."""

import dataclasses
import os
import shutil

import pytest

from experiments import lm_pretrain
from experiments.base import EXIT_CONFIG, main
from lm.checkpoint import UnreadableCheckpoint
from lm.metrics import read_jsonl
from rl.loop import train_rl
from tests.helpers import same_records
from tests.test_checkpoint import CORRUPTIONS, corrupt
from tests.test_rl_resume import _setup

SETS = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64",
        "train.batch_size=8", "train.seq_len=32", "data.source=synthetic", "run.progress=false",
        "run.sample_tokens=0", "train.eval_batches=1", "train.steps=4", "train.ckpt_every=2",
        "train.eval_every=1000", "opt.warmup=0"]


def pretrain(workdir) -> int:
    return main(lm_pretrain.PRESETS, lm_pretrain.run,
                argv=["--workdir", str(workdir), "--set", *SETS])


def train_losses(workdir) -> dict:
    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if r["split"] == "train"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pre") / "run"
    assert pretrain(wd) == 0
    assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4"]
    return wd, train_losses(wd)


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_pretrain_resume_skips_an_unreadable_latest_checkpoint(finished_run, tmp_path, kind,
                                                               capsys):
    src, losses = finished_run
    wd = copy_run(src, tmp_path / "run")
    corrupt(wd / "checkpoints" / "4", kind)
    capsys.readouterr()
    assert pretrain(wd) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert f"checkpoint step 4 in {wd / 'checkpoints'} is unreadable (" in err, err
    assert "resuming from step 2, the newest readable checkpoint" in err, err
    assert train_losses(wd) == losses  # steps 3-4 retrained from step 2, bit for bit
    assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4"]


def test_pretrain_no_readable_checkpoint_exits_2_naming_overwrite(finished_run, tmp_path,
                                                                  capsys):
    wd = copy_run(finished_run[0], tmp_path / "run")
    corrupt(wd / "checkpoints" / "4", "iterator state")
    corrupt(wd / "checkpoints" / "2", "_METADATA")
    capsys.readouterr()
    assert pretrain(wd) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    error = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(error) == 1 and "step 4: UnicodeDecodeError" in error[0], err
    assert "step 2: UnicodeDecodeError" in error[0] and "--set run.overwrite=true" in error[0]
    assert train_losses(wd) == finished_run[1]  # nothing was started afresh or overwritten


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    cfg, task, params = _setup("grpo")  # test_rl_resume's tiny RL run, cut to 2 steps
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, ckpt_every=1))
    wd = tmp_path_factory.mktemp("rl") / "run"
    recs = train_rl(cfg, str(wd), task=task, policy_params=params, ref_params=params,
                    log=lambda *_: None)
    assert sorted(os.listdir(wd / "checkpoints")) == ["1", "2"]
    return cfg, task, params, wd, recs


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_rl_resume_skips_an_unreadable_latest_checkpoint(rl_run, tmp_path, kind):
    cfg, task, params, src, recs = rl_run
    wd = copy_run(src, tmp_path / "run")
    corrupt(wd / "checkpoints" / "2", kind)
    said = []
    resumed = train_rl(cfg, str(wd), task=task, policy_params=params, ref_params=params,
                       log=said.append)
    assert any("checkpoint step 2" in s and "unreadable (" in s for s in said), said
    assert any("resumed" in s and "RL step 1" in s for s in said), said
    same_records(recs, resumed)


@pytest.mark.slow
def test_rl_no_readable_checkpoint_raises_the_config_error(rl_run, tmp_path):
    cfg, task, params, src, _ = rl_run
    wd = copy_run(src, tmp_path / "run")
    corrupt(wd / "checkpoints" / "2", "data files")
    corrupt(wd / "checkpoints" / "1", "iterator state")
    with pytest.raises(UnreadableCheckpoint, match=r"step 2: ValueError: DATA_LOSS.*step 1: "
                                                   r"UnicodeDecodeError.*run.overwrite=true"):
        train_rl(cfg, str(wd), task=task, policy_params=params, ref_params=params,
                 log=lambda *_: None)
