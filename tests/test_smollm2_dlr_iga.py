"""``--preset smollm2`` of dlr_arithmetic and iga_rules: 2 optimizer steps end to end on the real
checkpoint cut to 2 layers (session fixture ``smollm2_shallow_dir``: the preset's code path at a
fraction of the 30 layers' compile time; 30 layers took 960 s and 380 s of a CI run, 2 take 200 s
and 120 s under ``pytest -n 2`` on the 2-core AMD EPYC), each in its own process on one CPU
device as tests/test_smollm2_presets.py runs its presets; and DLR started from a pretrained
checkpoint is that checkpoint at step 0 (tiny random Qwen3, fixture ``qwen3_dir``)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cli(module: str, args: list[str]) -> str:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-m", f"experiments.{module}", "--preset", "smollm2",
                          *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def _jsonl(path):
    return [json.loads(x) for x in open(path) if x.strip()]


@pytest.mark.slow
def test_dlr_arithmetic_smollm2_preset_two_steps_and_resume(smollm2_shallow_dir, tmp_path):
    wd = tmp_path / "w"
    args = ["--workdir", str(wd), "--set", f"model.init_from={smollm2_shallow_dir}",
            "model.dlr.layer=1",  # the preset's 15 is past the 2 layers
            "exp.methods=sft,dlr", "exp.seeds=0", "exp.post_steps=2", "exp.post_n=8",
            "exp.batch_size=2", "exp.test_n=4", "exp.log_every=1"]
    _run_cli("dlr_arithmetic", args)
    recs = _jsonl(wd / "records.jsonl")
    assert [(r["task"], r["method"], r["seed"]) for r in recs] == [
        ("hidden", "base", 0), ("hidden", "sft", 0), ("hidden", "dlr", 0)]
    assert set(recs[2]["correct"]) == {"route", "off", "random"}
    assert all(len(v) == 4 for r in recs for v in r["correct"].values())
    post = [r for r in _jsonl(wd / "raw.jsonl") if r.get("phase") == "post"]
    assert [r["step"] for r in post if r["method"] == "dlr"] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in post)
    assert all("info_gain" in r for r in post if r["method"] == "dlr")
    cfg = json.load(open(wd / "config.json"))
    assert cfg["model"]["n_layers"] == 2 and cfg["exp"]["prompt"] == "chat"
    assert cfg["exp"]["pretrain_steps"] == 0 and cfg["model"]["lora"]["rank"] == 16
    assert not (wd / "base.npz").exists()  # no pretraining: the checkpoint is the base
    # resume: every run is recorded, so a rerun trains nothing and keeps the records
    out = _run_cli("dlr_arithmetic", args)
    assert "resuming" in out and _jsonl(wd / "records.jsonl") == recs
    # the merge of run dirs into one record recomputes the table
    from experiments.dlr_record import merge
    s = merge([str(wd)], str(tmp_path / "rec"))
    assert {r["method"] for r in s["rows"]} == {"base", "sft", "dlr"}
    assert (tmp_path / "rec" / "plot.png").exists()


@pytest.mark.slow
def test_iga_rules_smollm2_preset_two_steps(smollm2_shallow_dir, tmp_path):
    wd = tmp_path / "w"
    _run_cli("iga_rules", [
        "--workdir", str(wd), "--set", f"model.init_from={smollm2_shallow_dir}",
        "iga.scenarios=forbidden_entity", "iga.max_train=4", "iga.sft_steps=2",
        "iga.iterations=1", "iga.n_think=0", "iga.n_parrot=1", "iga.helper_errors=0.1",
        "iga.batch_size=2", "iga.max_new_tokens=4"])
    rows = _jsonl(wd / "results.jsonl")
    assert [r["arm"] for r in rows] == ["teacher_naive", "teacher_igp", "base", "plain_sft",
                                        "iga"]
    assert rows[-1]["steps"] == 2 and 0 <= rows[-1]["compliance"] <= 1
    cfg = json.load(open(wd / "config.json"))
    lora = cfg["model"]["lora"]
    assert (lora["rank"], lora["alpha"], lora["dropout"]) == (8, 32.0, 0.05)
    assert lora["targets"] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert cfg["iga"]["pretrain_steps"] == 0 and cfg["model"]["n_layers"] == 2
    assert [r["seed"] for r in _jsonl(wd / "seed_rows.jsonl")] == [0, 0, 0]
    from experiments.iga_record import merge
    merged = merge([str(wd)], str(tmp_path / "rec"))
    assert merged == rows and (tmp_path / "rec" / "report.md").exists()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_dlr_from_a_pretrained_checkpoint_is_the_checkpoint_at_step_0(qwen3_dir, lora_rank):
    """A fresh router (zero code book) on the loaded checkpoint: with steering off, and with
    the router's codes too, the logits are the checkpoint's, bit for bit."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from flax.traverse_util import flatten_dict

    from experiments import dlr_arithmetic as E
    from lm import hf
    from lm.config import Config
    from lm.lora import LoRACfg
    from lm.losses import bind
    from lm.model import GPT, ModelCfg
    from lm.pretrained import resolve
    from lm.routing import DLRCfg
    from rl.dlr_generate import routed_codes

    dl = DLRCfg(layer=1, codes=4, chunk=2, router_norm=True)
    mcfg = resolve(Config(model=ModelCfg(init_from=qwen3_dir, dlr=dl,
                                         lora=LoRACfg(rank=lora_rank)))).model
    params = E.start_params(mcfg, seed=3)
    assert np.all(np.asarray(params["dlr"]["codebook_CxD"]) == 0)
    ckpt_cfg, ckpt = hf.load(qwen3_dir)
    ref = GPT(ckpt_cfg, rngs=nnx.Rngs(0))
    gd, st = nnx.split(ref, nnx.Param)
    nnx.replace_by_pure_dict(st, ckpt)
    x = jnp.asarray(np.random.default_rng(0).integers(0, ckpt_cfg.vocab_size, (2, 9)), jnp.int32)
    want = nnx.merge(gd, st)(x)
    m = bind(E.graphdef(mcfg), params)
    np.testing.assert_array_equal(m(x), want)  # steering off
    codes = routed_codes(m, x)
    np.testing.assert_array_equal(m(x, codes_BxM=codes), want)  # routed codes, zero code book
    # the base weights are the checkpoint's, tensor for tensor
    flat = flatten_dict(params)
    for path, v in flatten_dict(ckpt).items():
        np.testing.assert_array_equal(jax.device_get(flat[path]), v)
    assert dataclasses.replace(mcfg, dlr=DLRCfg()).n_layers == ckpt_cfg.n_layers
