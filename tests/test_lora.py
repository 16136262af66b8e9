"""LoRA (``model.lora``, ``lm/lora.py``): PEFT's math, only adapters train, the base with
adapters off is the reference, sharding, resume, and PEFT adapters in and out."""

import dataclasses
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from lm import lora
from lm.config import Config, override
from lm.losses import bind
from lm.model import GPT, ModelCfg
from lm.setup import build
from lm.sharding import ConfigError, MeshCfg
from lm.train import with_reference
from rl.losses import pref_logps

BASE = ModelCfg(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                mlp="swiglu", max_len=32)
LORA = ["model.lora.rank=4", "model.lora.alpha=8", "train.batch_size=8", "train.seq_len=16",
        "opt.lr=3e-2", "opt.warmup=0", "opt.schedule=constant"]
NOT_ADAPTER = lambda p: not lora.is_adapter(p)  # noqa: E731


def cfg_with(*sets, model=BASE):
    return override(Config(model=model, mesh=MeshCfg(data=-1)), list(LORA) + list(sets))


def flat(tree):
    return lora._flat(jax.device_get(tree))


def lm_batch(seed=0, B=8, L=16, V=64):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, V, (B, L + 1)).astype(np.int32)
    return {"inputs": t[:, :-1], "targets": t[:, 1:], "mask": np.ones((B, L), np.float32)}


def pref_batch(seed=0, B=8, S=16, V=64):
    rng = np.random.default_rng(seed)
    m = np.zeros((B, S), np.float32)
    m[:, 6:] = 1.0
    return {"chosen_tokens": rng.integers(0, V, (B, S)).astype(np.int32), "chosen_mask": m,
            "rejected_tokens": rng.integers(0, V, (B, S)).astype(np.int32), "rejected_mask": m}


def policy_batch(seed=0, B=8, S=16, V=64):
    rng = np.random.default_rng(seed)
    m = np.zeros((B, S), np.float32)
    m[:, 6:] = 1.0
    return {"tokens": rng.integers(0, V, (B, S)).astype(np.int32), "mask": m,
            "old_logp": np.full((B, S), -4.0, np.float32) * m,
            "ref_logp": np.full((B, S), -4.1, np.float32) * m,
            "adv": rng.normal(size=(B, 1)).astype(np.float32) * m}


def trained(loss="xent", batch_fn=lm_batch, steps=3, *sets):
    setup = build(cfg_with(f"train.loss={loss}", *sets))
    p0 = flat(setup.state["params"])
    state = setup.state
    for i in range(steps):
        state, _ = setup.train_step(state, batch_fn(i))
    return setup, p0, state


def test_fresh_adapters_leave_logits_bit_identical_and_rank0_is_todays_model():
    plain = GPT(BASE, rngs=nnx.Rngs(0))
    with_lora = GPT(dataclasses.replace(BASE, lora=lora.LoRACfg(rank=4, alpha=8)),
                    rngs=nnx.Rngs(0))
    p_plain = nnx.to_pure_dict(nnx.state(plain, nnx.Param))
    p_lora = nnx.to_pure_dict(nnx.state(with_lora, nnx.Param))
    base, _ = lora.partition(p_lora, NOT_ADAPTER)
    assert jax.tree.structure(base) == jax.tree.structure(p_plain)  # rank 0: no new leaf
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(p_plain)):
        assert np.array_equal(a, b)  # adapters are created last: same base draws
    x = lm_batch()["inputs"]
    assert np.array_equal(plain(x), with_lora(x))  # B = 0: exactly the base
    ad = flat(lora.adapters(p_lora))
    a_q = ad[("block_0", "attn", "lora_q", "a")]
    assert a_q.shape == (32, 4) and np.abs(a_q).max() <= 1 / np.sqrt(32)  # kaiming bound
    assert np.abs(a_q).max() > 0.8 / np.sqrt(32)  # uniform over the whole bound
    assert ad[("block_0", "attn", "lora_k", "b")].shape == (4, 2, 8)  # (r, kv heads, H)
    assert ad[("block_0", "attn", "lora_o", "a")].shape == (4, 8, 4)  # (N, H, r)
    assert all(not v.any() for k, v in ad.items() if k[-1] == "b")


def test_adapter_a_draws_are_one_rngs_params_call_per_adapter_in_order():
    """``lora.attach`` vmaps its keys and draws; the values are those of calling
    ``rngs.params()`` once per adapter (blocks in order, targets in order) after the base."""
    cfg = dataclasses.replace(BASE, lora=lora.LoRACfg(rank=4, alpha=8))
    got = flat(nnx.to_pure_dict(nnx.state(GPT(cfg, rngs=nnx.Rngs(3)), nnx.Param)))
    rngs = nnx.Rngs(3)
    GPT(BASE, rngs=rngs)  # the base draws first
    n = 0
    for b in range(BASE.n_layers):
        for t in cfg.lora.targets:
            where = "attn" if t in lora.ATTN_TARGETS else "mlp"
            a = got[(f"block_{b}", where, f"lora_{t}", "a")]
            fan_in = int(np.prod(a.shape[:-1]))
            bound = 1.0 / np.sqrt(fan_in)
            want = jax.random.uniform(rngs.params(), (fan_in, 4), minval=-bound, maxval=bound)
            np.testing.assert_array_equal(a.reshape(fan_in, 4), want)
            n += 1
    assert n == 7 * BASE.n_layers


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_forward_equals_merged_weights_after_training(rslora):
    setup, _, state = trained("xent", lm_batch, 2, f"model.lora.rslora={rslora}")
    params = jax.device_get(state["params"])
    assert any(np.abs(v).max() > 0 for k, v in flat(lora.adapters(params)).items()
               if k[-1] == "b")
    model = setup.cfg.model
    plain = dataclasses.replace(model, lora=lora.LoRACfg())
    gd = nnx.graphdef(GPT(plain, rngs=nnx.Rngs(0)))
    x = lm_batch(5)["inputs"]
    got = bind(setup.graphdef, params)(x)
    want = bind(gd, lora.merged(params, model))(x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert model.lora.scale == (8 / 2 if rslora else 8 / 4)


@pytest.mark.parametrize("loss,batch_fn", [("xent", lm_batch), ("dpo", pref_batch),
                                           ("tdpo2", pref_batch), ("grpo", policy_batch)])
def test_only_adapters_change_and_the_optimizer_holds_only_adapters(loss, batch_fn):
    setup, p0, state = trained(loss, batch_fn, 3)
    p1 = flat(state["params"])
    changed = {k for k in p0 if not np.array_equal(p0[k], p1[k])}
    assert changed and all(lora.is_adapter(k) for k in changed), sorted(changed)[:3]
    assert any(k[-1] == "b" for k in changed)
    frozen_shapes = {v.shape for k, v in p0.items() if not lora.is_adapter(k) and v.ndim >= 2}
    adapter_shapes = {v.shape for k, v in p0.items() if lora.is_adapter(k)}
    opt_leaves = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim >= 2]
    assert opt_leaves and {x.shape for x in opt_leaves} <= adapter_shapes
    assert not {x.shape for x in opt_leaves} & (frozen_shapes - adapter_shapes)
    n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
    n_ad = sum(v.size for k, v in p0.items() if lora.is_adapter(k))
    assert n_opt <= 2 * n_ad + 8  # two Adam moments over the adapters (+ counters)
    assert "ref_params" not in state["loss_state"]  # no second copy of the weights


def test_reference_is_the_base_model_with_adapters_off():
    setup, p0, state = trained("dpo", pref_batch, 3)
    params = state["params"]
    ref = with_reference({}, params, lora.trainable_fn(setup.cfg.model))["ref_params"]
    toks = np.concatenate([pref_batch()["chosen_tokens"], pref_batch()["rejected_tokens"]])
    plain = dataclasses.replace(setup.cfg.model, lora=lora.LoRACfg())
    gd = nnx.graphdef(GPT(plain, rngs=nnx.Rngs(0)))
    base = lora.partition(jax.device_get(params), NOT_ADAPTER)[0]
    want = pref_logps(gd, base, toks)  # the base model alone, no adapter code at all
    np.testing.assert_array_equal(pref_logps(setup.graphdef, ref, toks), want)
    trained_lp = pref_logps(setup.graphdef, params, toks)
    assert np.abs(np.asarray(trained_lp) - np.asarray(want)).max() > 1e-4  # adapters moved
    for k, v in flat(ref).items():  # the base leaves are the same buffers' values
        if not lora.is_adapter(k):
            assert np.array_equal(v, flat(params)[k])


def test_lora_step_on_the_2x2x2_mesh_equals_one_device():
    import experiments.config  # noqa: F401  (Config with every section)
    from tests.helpers import mesh
    outs = []
    for m in (mesh((1, 1, 1)), mesh((2, 2, 2))):
        # the optimizer settings of test_train's mesh equivalence (Adam's eps keeps the
        # reduction-order noise of near-zero gradients from being scaled up to the lr)
        setup = build(cfg_with("train.loss=xent", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2",
                               "opt.lr=1e-2", "opt.eps=1e-4"), mesh=m)
        state = setup.state
        for i in range(2):
            state, met = setup.train_step(state, lm_batch(i))
        outs.append((flat(lora.adapters(state["params"])), float(met["loss"][0])))
        if m.devices.size == 8:
            sh = lora._flat(lora.adapters(setup.state_sharding["params"]))
            assert sh[("block_0", "attn", "lora_q", "a")].spec[0] == "fsdp"  # like W's D
            assert sh[("block_0", "attn", "lora_q", "b")].spec[1] == "tensor"  # like W's heads
            assert sh[("block_0", "mlp", "lora_down", "a")].spec[0] == "tensor"  # W's mlp
    (a, la), (b, lb) = outs
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-6, err_msg=str(k))


@pytest.mark.parametrize("sets,msg", [
    (["model.lora.targets=q,x"], r"unknown target\(s\) \['x'\]; allowed: q,k,v,o,gate,up,down"),
    (["model.lora.rank=-1"], r"model.lora.rank=-1 must be >= 0"),
    (["model.lora.alpha=0"], r"model.lora.alpha=0.0 must be > 0"),
    (["model.lora.rank=0", "model.lora.base_dtype=int8"], r"needs model.lora.rank > 0"),
    (["model.lora.base_dtype=fp8"], r"is not one of \('', 'int8', 'nf4'\)"),
])
def test_bad_lora_config_is_one_clear_error(sets, msg):
    with pytest.raises(ConfigError, match=msg):
        cfg_with(*sets)


@pytest.mark.slow
def test_lora_run_resumes_bit_exact_and_saves_only_adapters(tmp_path):
    from experiments import lm_pretrain
    from experiments.base import main
    from lm.metrics import read_jsonl
    argv = ["--preset", "tiny", "--workdir", str(tmp_path / "run"), "--set",
            "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64",
            "model.mlp=swiglu", "model.lora.rank=4", "train.batch_size=8", "train.seq_len=32",
            "data.source=synthetic", "run.progress=false", "run.sample_tokens=0",
            "train.eval_batches=1", "train.steps=6", "train.ckpt_every=3", "train.eval_every=3",
            "opt.warmup=0"]
    assert main(lm_pretrain.PRESETS, lm_pretrain.run, argv=argv) == 0
    ck = tmp_path / "run" / "checkpoints"
    losses = {r["step"]: r["loss"] for r in read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
              if r["split"] == "train"}
    shutil.rmtree(ck / "6")  # as if killed after step 3's checkpoint
    assert main(lm_pretrain.PRESETS, lm_pretrain.run, argv=argv) == 0
    again = {r["step"]: r["loss"] for r in read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
             if r["split"] == "train"}
    assert again == losses  # steps 4..6 continue bit for bit
    import ast
    import json
    with open(ck / "6" / "state" / "_METADATA") as fh:  # Orbax's tree of saved leaf paths
        paths = [ast.literal_eval(k) for k in json.load(fh)["tree_metadata"]]
    params = [p for p in paths if p[0] == "params"]
    assert params and all(lora.is_adapter(p) for p in params), params[:3]
    assert not any(p for p in paths if p[0] == "opt_state" and not lora.is_adapter(p)
                   and len(p) > 4)  # moments of adapters only
    assert not os.path.exists(str(ck) + ".unreadable")


@pytest.mark.slow
def test_8b_lora_dpo_step_fits_80_gb_in_the_dry_run(capsys):
    """The Llama-3.1-8B config (shapes only), LoRA r16 on the seven projections, bf16 base,
    remat=full, 8 sequences x 1024 tokens, 1 device: XLA's compiled memory analysis."""
    from experiments import lm_pretrain
    from experiments.base import main
    cfg_dir = os.path.join(os.path.dirname(__file__), "..", "results", "lora_dry_run",
                           "llama-3.1-8b")
    rc = main(lm_pretrain.PRESETS, lm_pretrain.run, argv=[
        "--dry-run", "--set", f"model.init_from={cfg_dir}", "model.lora.rank=16",
        "model.param_dtype=bfloat16", "model.dtype=bfloat16", "model.remat=full",
        "model.max_len=1024", "train.seq_len=1024", "train.loss=dpo", "train.batch_size=4",
        "mesh.data=1", "run.dry_run_devices=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    gib = {line.split(":")[0]: float(line.split(":")[-1].split()[0]) for line in
           out.splitlines() if "per device" in line and "GiB" in line}
    assert "8 sequences of 1024 tokens" in out and "LoRA rank 16" in out
    assert 14.5 < gib["params per device"] < 15.5  # 8.03B bf16 weights
    assert 0.1 < gib["adapters per device"] < 0.2  # 42M fp32 adapter params
    assert gib["optimizer per device"] < 0.4  # two Adam moments of the adapters only
    assert gib["activations/temp per device (XLA, compiled for 1 CPU devices)"] > 1
    total = gib["params + adapters + optimizer + activations per device"]
    assert total * 2**30 <= 80e9, total


def test_export_cli_writes_a_peft_adapter_or_a_merged_checkpoint(tmp_path, qwen3_dir):
    from experiments import lm_pretrain
    from experiments.base import main
    from lm import hf
    from lm.hf.__main__ import main as hf_main
    run = tmp_path / "run"
    argv = ["--preset", "tiny", "--workdir", str(run), "--set", f"model.init_from={qwen3_dir}",
            "model.lora.rank=4", "model.lora.targets=q,v,down", "train.batch_size=8",
            "train.seq_len=16", "data.source=synthetic", "run.progress=false",
            "run.sample_tokens=0", "train.eval_batches=1", "train.steps=2",
            "train.ckpt_every=2", "train.eval_every=2", "opt.warmup=0", "opt.lr=1e-2"]
    assert main(lm_pretrain.PRESETS, lm_pretrain.run, argv=argv) == 0
    assert hf_main(["export", str(run), str(tmp_path / "plain")]) == 2  # LoRA: say which
    assert not (tmp_path / "plain").exists()
    assert hf_main(["export", str(run), str(tmp_path / "ad"), "--adapter"]) == 0
    assert hf_main(["export", str(run), str(tmp_path / "merged"), "--merge",
                    "--tokenizer-dir", qwen3_dir]) == 0
    import json
    conf = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == qwen3_dir and conf["r"] == 4
    assert sorted(conf["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    x = np.arange(12, dtype=np.int32)[None] % 50 + 3
    c_ad, p_ad = hf.load(qwen3_dir, adapter=str(tmp_path / "ad"))
    c_m, p_m = hf.load(str(tmp_path / "merged"))
    with_ad = np.asarray(bind(hf.graphdef(c_ad), p_ad)(x))
    merged_logits = np.asarray(bind(hf.graphdef(c_m), p_m)(x))
    np.testing.assert_allclose(with_ad, merged_logits, atol=1e-5, rtol=0)
    c_b, p_b = hf.load(qwen3_dir)
    assert np.abs(np.asarray(bind(hf.graphdef(c_b), p_b)(x)) - with_ad).max() > 1e-4
    # the LoRA run dir as model.init_from: its function (adapters merged into its base)
    nxt = build(override(Config(), [f"model.init_from={run}", "model.dtype=float32"]))
    assert not lora.adapters(nxt.state["params"])
    got = np.asarray(bind(nxt.graphdef, jax.device_get(nxt.state["params"]))(x))
    np.testing.assert_allclose(got, merged_logits, atol=1e-5, rtol=0)
