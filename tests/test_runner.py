"""The experiment runner: end to end, resume after SIGKILL, NaN stop, run-dir guard, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import lm_pretrain
from experiments.base import EXIT_CONFIG, EXIT_NONFINITE, main, prepare_run_dir, train
from experiments.config import override
from lm.losses import xent
from lm.metrics import read_jsonl
from lm.sharding import ConfigError
from lm.train import NonFiniteLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64",
         "train.batch_size=8", "train.seq_len=32", "data.source=synthetic", "run.progress=false",
         "run.sample_tokens=0", "train.eval_batches=1"]


def cli(args, workdir, env_extra=None):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    return [sys.executable, "-m", "experiments.lm_pretrain", "--preset", "tiny",
            "--workdir", str(workdir), "--set", *args], env


def train_losses(workdir):
    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if r["split"] == "train"}


@pytest.mark.slow
def test_lm_pretrain_tiny_end_to_end(tmp_path):
    """The default experiment on the embedded corpus, a few steps, every artefact written."""
    wd = tmp_path / "run"
    args, env = cli(["train.steps=6", "train.eval_every=3", "train.ckpt_every=3",
                     "run.sample_tokens=16", "run.progress=false", "opt.warmup=2"], wd)
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final eval loss" in out.stdout and "sample:" in out.stdout
    for f in ("config.json", "provenance.json", "metrics.jsonl", "plot.png"):
        assert (wd / f).exists(), f
    assert sorted(os.listdir(wd / "checkpoints")) == ["3", "6"]
    assert any(p.name.startswith("events") for p in (wd / "tb").iterdir())
    recs = read_jsonl(str(wd / "metrics.jsonl"))
    assert [r["step"] for r in recs if r["split"] == "eval"] == [3, 6]
    assert {"loss", "grad_norm", "param_norm", "update_norm", "tokens_per_s", "lr"} <= set(recs[0])
    loss = train_losses(wd)  # it learns: 5.53 -> 4.00 nats/byte in 6 steps when recorded
    assert loss[6] < 0.85 * loss[1], loss
    ev = [r["loss"] for r in recs if r["split"] == "eval"]
    assert ev[1] < 0.95 * ev[0], ev
    perf_keys = {"perf/tokens_per_s", "perf/tflops_per_device", "perf/mfu"}
    for r in (r for r in recs if r["split"] == "train"):  # MFU on a CPU: vs the measured peak
        assert perf_keys <= set(r) and r["perf/tokens_per_s"] == r["tokens_per_s"]
        assert r["perf/tflops_per_device"] > 0 and 0 < r["perf/mfu"] < 10
    prov = json.loads((wd / "provenance.json").read_text())
    assert prov["versions"]["jax"] == "0.10.2" and prov["git_commit"]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_for_bit(tmp_path):
    steps = ["train.steps=150", "train.ckpt_every=10", "train.eval_every=1000"]
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    args, env = cli(SMALL + steps, ref_dir)
    assert subprocess.run(args, cwd=ROOT, env=env, capture_output=True, timeout=600).returncode == 0
    args, env = cli(SMALL + steps, kill_dir)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ck = kill_dir / "checkpoints"
    t0 = time.time()
    while not (ck.exists() and any(p.name.isdigit() for p in ck.iterdir())):
        assert proc.poll() is None and time.time() - t0 < 300, "run ended before a checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    assert killed_at < 150
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ref, resumed = train_losses(ref_dir), train_losses(kill_dir)
    assert sorted(resumed) == list(range(1, 151))
    assert resumed == ref  # exact equality: the curve continues bit for bit


def nan_after_growth(params, batch, *, model, rng, cfg):
    loss, aux = xent(params, batch, model=model, rng=rng, cfg=cfg)
    bad = jnp.abs(params["embed_VxD"]).max() > 0.3
    loss = jnp.where(bad, jnp.nan, loss)
    return loss, {**aux, "loss": (jnp.where(bad, jnp.nan, aux["loss"][0]), aux["loss"][1])}


def test_nan_stops_with_step_and_last_good_checkpoint(tmp_path):
    cfg = override(lm_pretrain.tiny(), SMALL + ["train.steps=40", "train.ckpt_every=2",
                                                "train.eval_every=1000", "opt.lr=0.05",
                                                "opt.warmup=0"])
    with pytest.raises(NonFiniteLoss) as e:
        train(cfg, str(tmp_path / "run"), loss_fn=nan_after_growth)
    msg = str(e.value)
    bad_step = int(msg.split("at step ")[1].split(";")[0])
    ckpts = sorted(int(p) for p in os.listdir(tmp_path / "run" / "checkpoints"))
    assert ckpts and max(ckpts) < bad_step
    assert f"last good checkpoint: step {max(ckpts)}" in msg
    losses = train_losses(tmp_path / "run")
    assert max(losses) < bad_step and all(np.isfinite(list(losses.values())))
    rc = main(lm_pretrain.PRESETS,
              lambda c, w, a: train(c, w, loss_fn=nan_after_growth),
              argv=["--workdir", str(tmp_path / "run2"), "--set", *SMALL, "train.steps=40",
                    "train.ckpt_every=2", "opt.lr=0.05", "opt.warmup=0"])
    assert rc == EXIT_NONFINITE


def test_run_dir_guard(tmp_path):
    cfg = lm_pretrain.tiny()
    wd = str(tmp_path / "r")
    assert prepare_run_dir(wd, cfg) is False
    assert prepare_run_dir(wd, cfg) is True  # same config: resume
    other = override(cfg, ["opt.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"different config \(differs at opt.lr\).*overwrite"):
        prepare_run_dir(wd, other)
    assert prepare_run_dir(wd, override(other, ["run.overwrite=true"])) is False
    assert json.load(open(os.path.join(wd, "config.json")))["opt"]["lr"] == 1e-4
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        prepare_run_dir(str(tmp_path / "junk"), cfg)


BAD = [
    (["opt.lrr=1"], "unknown config key 'opt.lrr'"),
    (["opt.lr=fast"], "opt.lr='fast': expected a float"),
    (["model.pos=alibi"], "model.pos='alibi' is not one of"),
    (["mesh.fsdp=3"], "does not divide the 8 devices"),
    (["train.batch_size=12"], "not divisible by the data axes"),
    (["train.seq_len=512"], "exceeds the model context model.max_len=256"),
    (["data.source=files"], "data.paths"),
    (["data.source=files", "data.paths=/nonexistent/*.txt"], "no file matches"),
    (["train.loss=nope"], "not a registered loss"),
    (["opt.lr=-1"], "opt.lr=-1.0 must be finite and > 0"),
    (["opt.eps=0"], "opt.eps=0.0 must be finite and > 0"),
    (["opt.b2=1.0"], "opt.b2=1.0 must be finite and in [0, 1)"),
    (["opt.weight_decay=-0.1"], "opt.weight_decay=-0.1 must be finite and >= 0"),
    (["opt.clip=-1"], "opt.clip=-1.0 must be finite and >= 0"),
    (["opt.lr=nan"], "opt.lr=nan must be finite"),
    (["train.steps=10", "opt.warmup=11"], "opt.warmup=11 exceeds train.steps=10"),
]


@pytest.mark.parametrize("sets,msg", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_one_clear_error(sets, msg, tmp_path, capsys):
    rc = main(lm_pretrain.PRESETS, lm_pretrain.run,
              argv=["--workdir", str(tmp_path / "r"), "--set", *sets])
    err = capsys.readouterr().err
    assert rc == EXIT_CONFIG
    assert err.startswith("error: ") and msg in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_input_exit_code_in_a_process(tmp_path):
    args, env = cli(["mesh.tensor=5"], tmp_path / "r")
    out = subprocess.run(args, cwd=ROOT, env={**env, "XLA_FLAGS":
                                              "--xla_force_host_platform_device_count=8"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "does not divide the 8 devices" in out.stderr and "Traceback" not in out.stderr


def test_unknown_preset(capsys):
    assert main(lm_pretrain.PRESETS, lm_pretrain.run, argv=["--preset", "huge"]) == EXIT_CONFIG
    assert "'huge' is not one of ['gpu', 'tiny', 'tiny_moe', 'tpu_pod']" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_pod_preset_lowers_for_tpu(capsys):
    assert main(lm_pretrain.PRESETS, lm_pretrain.run, argv=["--preset", "tpu_pod",
                                                            "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lowered for tpu on AbstractMesh" in out and "on 256 devices" in out
    assert "params per device" in out and "optimizer per device" in out
