"""The vocab_curriculum experiment: tiny preset end to end (2 stages, a handful of steps), and
bad input as one ConfigError."""

import json
import os
import subprocess
import sys

import pytest

from experiments.config import override
from experiments.vocab_curriculum import endpoint_slope, flops_per_token, tiny
from lm.sharding import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bad_input_is_one_config_error():
    with pytest.raises(ConfigError, match="baselines"):
        override(tiny(), ["vocab.baselines=step,nope"])
    with pytest.raises(ConfigError, match="baseline_lr_span"):
        override(tiny(), ["vocab.baseline_lr_span=forever"])


def test_slope_and_flops():
    assert abs(endpoint_slope(100, 2.0, 1000, 1.5) + 0.5) < 1e-12
    m = tiny().model
    assert flops_per_token(200, m, 64) - flops_per_token(100, m, 64) == 6 * 100 * m.d_model


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path):
    wd = tmp_path / "run"
    args = [sys.executable, "-m", "experiments.vocab_curriculum", "--preset", "tiny",
            "--workdir", str(wd), "--set", "vocab.stages=2", "vocab.stage_steps=4",
            "vocab.select_every=2", "vocab.train_chars=60000", "vocab.val_chars=3000",
            "vocab.M=40", "vocab.tau=100", "vocab.q=1.0", "vocab.max_pool_batches=2",
            "vocab.pool_windows=8", "vocab.eval_random_batches=1", "vocab.baselines=step,flop",
            "run.progress=false"]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((wd / "results.json").read_text())
    cur = [r for r in res["rows"] if r["run"] == "curriculum"]
    assert [r["stage"] for r in cur] == [0, 1, 2]
    assert cur[0]["V"] < cur[1]["V"] < cur[2]["V"]
    assert {r["run"] for r in res["rows"]} == {"curriculum", "scratch_step", "scratch_flop"}
    assert all(r["bpc"] > 0 for r in res["rows"])
    # it learns: the curriculum's val BPC falls over its stages (5.55 -> 5.38 when recorded)
    assert cur[2]["bpc"] < 0.985 * cur[0]["bpc"], [r["bpc"] for r in cur]
    assert set(res["verdict"]["slopes_per_decade"]) >= {"curriculum", "scratch_step"}
    for f in ("plot.png", "metrics.jsonl", "tokenizer_stage2.json", "bpc_by_token_len.json",
              "versions.json", "config.json"):
        assert (wd / f).exists(), f
