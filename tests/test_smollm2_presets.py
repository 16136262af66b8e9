"""The ``--preset smollm2`` of grpo_arithmetic and tdpo_pairs run 2 steps end to end on the real
checkpoint cut to 2 layers (session fixture ``smollm2_shallow_dir``: the preset's code path at a
fraction of the 30 layers' compile time) with small work; a module of its own so the torch
model held by tests/test_smollm2.py is not alive beside these runs (memory on 2-core CI boxes).
Measured under `pytest -n 2` on the 2-core AMD EPYC: grpo 63 s, tdpo 135 s (mostly compiling;
30 layers took 160 s and 330 s in CI)."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cli(module: str, args: list[str]) -> None:
    """``python -m experiments.<module> --preset smollm2 ...`` as a user runs it: its own process
    on one CPU device (on the suite's 8 fake devices the reference copy in the preference loss
    state and the data-parallel replicas would be held 8 times: > 10 GB for 135M params)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-m", f"experiments.{module}", "--preset", "smollm2",
                          *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.slow
def test_grpo_arithmetic_smollm2_preset_two_steps(smollm2_shallow_dir, tmp_path):
    import json
    res = tmp_path / "res"
    _run_cli("grpo_arithmetic", [
        "--workdir", str(tmp_path / "w"), "--set", f"model.init_from={smollm2_shallow_dir}",
        "train.steps=2", "rl.eval_every=2", "rl.prompts_per_step=2", "rl.group_size=2",
        "rl.max_new_tokens=4", "exp.eval_n=4", "exp.train_pool=16", "train.ckpt_every=2",
        f"exp.results_dir={res}"])
    rows = [json.loads(x) for x in open(tmp_path / "w" / "grpo" / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 2]
    assert all(np.isfinite(r["loss"]) for r in rows if r["split"] == "train")
    assert all(0 < r["response_length"] <= 4 for r in rows if r["split"] == "train")
    cfg = json.load(open(tmp_path / "w" / "config.json"))
    assert cfg["exp"]["sft_steps"] == 0 and cfg["exp"]["prompt"] == "chat"
    assert cfg["model"]["n_layers"] == 2 and (res / "README.md").exists()


@pytest.mark.slow
def test_tdpo_pairs_smollm2_preset_two_steps(smollm2_shallow_dir, tmp_path):
    import json
    res = tmp_path / "res"
    _run_cli("tdpo_pairs", [
        "--workdir", str(tmp_path / "w"), "--set", f"model.init_from={smollm2_shallow_dir}",
        "train.steps=2", "exp.eval_every=2", "exp.n_prompts=16", "exp.samples_per_prompt=2",
        "exp.comp_len=3", "exp.eval_n=4", "exp.n_eval_samples=2", "exp.sample_batch=32",
        "train.batch_size=2", f"exp.results_dir={res}"])
    pairs = json.load(open(tmp_path / "w" / "pairs.json"))
    assert pairs["info"]["problems"] == 16 and len(pairs["triples"]) == pairs["info"]["pairs"]
    rows = [json.loads(x) for x in open(res / "metrics.jsonl")]
    assert {r["method"] for r in rows} == {"reference", "dpo", "tdpo2"}
    ev = [r for r in rows if r["method"] == "tdpo2" and r.get("split") == "eval"]
    assert {"seq_kl", "acc_heldout", "acc_long", "reward"} <= set(ev[-1])
    assert ev[-1]["seq_kl"] >= 0
