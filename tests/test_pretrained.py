"""``model.init_from``: experiments start from a Hugging Face checkpoint (a tiny random Qwen3 with
its own byte-level BPE tokenizer, built here with transformers; nothing is downloaded) or from a
run directory of this codebase; contradicting overrides are refused; ``lm.probe`` reads it."""

import dataclasses
import json

import numpy as np
import pytest

from experiments.base import main
from lm import pretrained
from lm.config import Config, override
from lm.sharding import ConfigError

# qwen3_dir (tests/conftest.py): a random 2-layer Qwen3 (GQA 4/2 heads, head_dim 16, tied) with its
# own byte-level BPE tokenizer and a ChatML chat template (tests.helpers.make_tiny_qwen3)


def test_resolve_takes_the_architecture_and_refuses_contradicting_overrides(qwen3_dir):
    cfg = override(Config(), [f"model.init_from={qwen3_dir}", "model.dtype=float32"])
    got = pretrained.resolve(cfg, set_keys=["model.init_from", "model.dtype"])
    assert (got.model.d_model, got.model.n_layers, got.model.n_kv_heads) == (32, 2, 2)
    assert got.model.qk_norm and got.model.init_from == qwen3_dir
    assert pretrained.resolve(got) == got  # idempotent (lm.setup.build resolves again)
    bad = override(cfg, ["model.d_model=64", "model.n_layers=2"])
    with pytest.raises(ConfigError, match=r"model\.d_model=64 \(checkpoint: 32\)") as e:
        pretrained.resolve(bad, set_keys=["model.d_model", "model.n_layers"])
    assert "n_layers" not in str(e.value)  # agrees with the checkpoint: not a contradiction
    with pytest.raises(ConfigError, match="no config.json"):
        pretrained.resolve(override(Config(), ["model.init_from=/nonexistent/dir"]))


def test_checkpoint_tokenizer_frames_prompts_and_stops_on_eos(qwen3_dir):
    tok = pretrained.tokenizer_for(override(Config(), [f"model.init_from={qwen3_dir}"]).model)
    ids = tok.encode("12+7=", add_eos=True)
    assert ids[-1] == tok.eos_id and tok.decode(ids) == "12+7="


@pytest.mark.slow
def test_tdpo_and_grpo_start_from_a_pretrained_qwen3(qwen3_dir, tmp_path, capsys):
    from experiments import grpo_arithmetic as G
    from experiments import tdpo_pairs as T
    rc = main(T.PRESETS, T.run, argv=[
        "--workdir", str(tmp_path / "t"), "--set", f"model.init_from={qwen3_dir}",
        "exp.sft_steps=2", "train.steps=2", "exp.methods=tdpo2", "exp.n_prompts=32",
        "exp.eval_every=2", f"exp.results_dir={tmp_path / 'tres'}", "train.batch_size=8"])
    assert rc == 0
    run_cfg = json.load(open(tmp_path / "t" / "config.json"))
    assert run_cfg["model"]["init_from"] == qwen3_dir and run_cfg["model"]["d_model"] == 32
    rows = [json.loads(x) for x in open(tmp_path / "tres" / "metrics.jsonl")]
    assert {r["method"] for r in rows} == {"reference", "tdpo2"}
    rc = main(G.PRESETS, G.run, argv=[
        "--workdir", str(tmp_path / "g"), "--set", f"model.init_from={qwen3_dir}",
        "exp.sft_steps=0", "train.steps=2", "exp.methods=grpo", "exp.eval_n=8",
        f"exp.results_dir={tmp_path / 'gres'}", "rl.prompts_per_step=4", "rl.group_size=2"])
    assert rc == 0 and (tmp_path / "gres" / "metrics.jsonl").exists()
    rc = main(G.PRESETS, G.run, argv=[
        "--workdir", str(tmp_path / "g2"), "--set", f"model.init_from={qwen3_dir}",
        "model.n_heads=8"])
    assert rc == 2 and "model.n_heads=8 (checkpoint: 4)" in capsys.readouterr().err


def test_probe_reads_a_pretrained_checkpoint(qwen3_dir):
    from lm.probe import probe
    out = probe(qwen3_dir, batches=1)
    assert len(out["patch_mbe"]) == 3 and out["tokens"] > 0  # embedding + 2 blocks
    assert all(np.isfinite(out["global_mbe"]))


def test_a_run_dir_from_before_a_new_config_key_still_resumes(tmp_path):
    from experiments.base import prepare_run_dir
    from lm.config import to_dict
    cfg = Config()
    old = to_dict(cfg)
    del old["model"]["init_from"]  # written by code that did not have the key yet
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert prepare_run_dir(str(tmp_path), cfg)  # resumes: the new key holds its default
    with pytest.raises(ConfigError, match=r"differs at model\.init_from"):
        prepare_run_dir(str(tmp_path), override(cfg, ["model.init_from=/some/dir"]))


def test_init_from_a_run_dir_starts_from_its_latest_checkpoint(tmp_path):
    import jax

    from experiments.base import train
    from lm.setup import build
    from tests.helpers import TINY
    tiny = dataclasses.replace(TINY, vocab_size=264)  # the byte corpus' ids
    run = override(Config(model=tiny), [
        "data.source=synthetic", "train.steps=2", "train.batch_size=8", "train.seq_len=16",
        "train.eval_every=2", "train.ckpt_every=1", "run.sample_tokens=0", "run.progress=false",
        "opt.warmup=0"])
    out = train(run, str(tmp_path / "r"))
    trained = jax.device_get(out["state"]["params"])
    # the preset's own architecture is replaced by the run's (here: a wider default model)
    cfg = pretrained.resolve(override(Config(), [f"model.init_from={tmp_path / 'r'}"]))
    assert cfg.model.d_model == TINY.d_model and cfg.model.n_layers == TINY.n_layers
    loaded = jax.device_get(build(cfg).state["params"])
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resolve_gives_the_data_the_checkpoints_tokenizer(qwen3_dir, tmp_path):
    from lm.config import to_dict
    keys = ["model.init_from"]
    got = pretrained.resolve(override(Config(), [f"model.init_from={qwen3_dir}"]), keys)
    assert got.data.tokenizer == qwen3_dir and pretrained.resolve(got) == got  # idempotent
    other = str(tmp_path / "other_tok")
    mine = override(Config(), [f"model.init_from={qwen3_dir}", f"data.tokenizer={other}"])
    assert pretrained.resolve(mine, keys + ["data.tokenizer"]).data.tokenizer == other
    assert pretrained.resolve(pretrained.resolve(mine, keys + ["data.tokenizer"])) \
        .data.tokenizer == other  # build's second resolve keeps the explicit choice
    with pytest.raises(ConfigError, match="differs from the tokenizer of model.init_from"):
        pretrained.resolve(mine, keys)  # came with the preset, not from the user: refused
    binned = override(Config(), [f"model.init_from={qwen3_dir}", "data.source=bin"])
    assert pretrained.resolve(binned, keys).data.tokenizer == ""  # shards are pre-tokenized
    run = tmp_path / "run"  # a run dir remembers the tokenizer it trained on
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(to_dict(got)))
    assert pretrained.tokenizer_dir(str(run)) == qwen3_dir


@pytest.mark.slow
def test_gapt_continues_pretraining_a_qwen3_in_its_tokens(qwen3_dir, tmp_path):
    """experiments.gapt_lm (tiny, cut to 3 steps; 2 layers: skip_first=0) from the checkpoint: the
    data is the checkpoint tokenizer's ids (data.tokenizer filled in by resolve), losses finite."""
    from experiments import gapt_lm as gl
    from lm import data as data_lib
    from lm import data_builder
    from tokenization.hf import HFTokenizer
    wd = tmp_path / "wd"
    rc = main(gl.PRESETS, gl.run, argv=[
        "--workdir", str(wd), "--set", f"model.init_from={qwen3_dir}", "data.source=synthetic",
        "data.synthetic_docs=32", "train.steps=3", "train.eval_every=3", "train.ckpt_every=3",
        "train.eval_batches=1", "train.batch_size=8", "train.seq_len=32", "exp.seeds=0",
        "exp.arms=gapt", f"exp.out={tmp_path / 'res'}", "ib.p_m=1", "ib.skip_first=0",
        "opt.warmup=1"])
    assert rc == 0
    run_cfg = json.load(open(wd / "gapt_s0" / "config.json"))
    assert run_cfg["data"]["tokenizer"] == qwen3_dir and run_cfg["model"]["vocab_size"] == 320
    rows = [json.loads(x) for x in open(wd / "gapt_s0" / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if r["split"] == "train"] + [
        r[k] for r in rows if r["split"] == "eval" for k in ("val_ce", "val_mbe")]
    assert len(losses) == 5 and np.isfinite(losses).all()
    assert "val CE (nats/token)" in (tmp_path / "res" / "README.md").read_text()
    from lm.probe import probe  # per-layer MBE of the continued run, on its own (BPE) data
    res = probe(str(wd / "gapt_s0"), batches=1, plot=False)
    assert res["step"] == 3 and len(res["patch_mbe"]) == 3 and np.isfinite(res["global_mbe"]).all()
    tok = HFTokenizer.load(qwen3_dir)
    data = data_lib.DataCfg(source="synthetic", synthetic_docs=32, tokenizer=qwen3_dir)
    b = data_lib.make_eval_batches(data, batch_size=8, seq_len=32, max_batches=1)[0]
    assert b["inputs"].max() < 320 and (b["inputs"] == tok.eos_id).any()
    row = list(b["inputs"][0])  # window 0 starts at the first validation document
    first = tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row)
    assert len(first) > 10 and any(d.decode().startswith(first)
                                   for d in data_builder.synthetic_docs(32, 0))
