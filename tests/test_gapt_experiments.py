"""GAPT experiments end to end (tiny, few steps), their data, the .bin reader and lm.probe."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import gapt_arithmetic as ga
from experiments import gapt_forgetting as gf
from experiments import gapt_lm as gl
from experiments.config import override
from lm import data as data_lib
from lm import data_bin, info
from lm.sharding import ConfigError

# ----------------------------------------------------------------------------- data


def test_bin_shards_read_back_exactly(tmp_path):
    tr = np.arange(1000) % 50000
    va = (np.arange(300) * 7) % 50257
    data_bin.write_shard(str(tmp_path / "fineweb_train_000001.bin"), tr)
    data_bin.write_shard(str(tmp_path / "fineweb_val_000000.bin"), va)
    cfg = data_lib.DataCfg(source="bin", paths=(str(tmp_path / "*.bin"),), shuffle=False)
    data_lib.validate(cfg)
    it = data_lib.make_train_iter(cfg, batch_size=2, seq_len=16, seed=0, process_index=0,
                                  process_count=1)
    b = next(it)
    np.testing.assert_array_equal(b["inputs"][0], tr[:16])
    np.testing.assert_array_equal(b["targets"][1], tr[17:33])
    ev = data_lib.make_eval_batches(cfg, batch_size=4, seq_len=16, max_batches=1)[0]
    np.testing.assert_array_equal(ev["inputs"][0], va[:16])


def test_bin_bad_header_is_config_error(tmp_path):
    p = tmp_path / "x_val.bin"
    p.write_bytes(np.zeros(300, np.int32).tobytes())
    q = tmp_path / "x_train.bin"
    data_bin.write_shard(str(q), np.arange(10))
    with pytest.raises(ConfigError, match="magic"):
        data_lib.validate(data_lib.DataCfg(source="bin", paths=(str(tmp_path / "*.bin"),)))
    with pytest.raises(ConfigError, match="no file matches"):
        data_lib.validate(data_lib.DataCfg(source="bin", paths=(str(tmp_path / "none*"),)))


def test_arithmetic_encoding_mask_and_id_split():
    b = ga.make_batch([12, 7], [345, 8], 24)
    assert ga.decode(b["inputs"][0]).startswith("<bos>12 x 345 = 4140<eos>")
    assert ga.decode(b["targets"][0][b["mask"][0] > 0]) == "4140<eos>"
    assert ga.decode(b["targets"][1][b["mask"][1] > 0]) == "56<eos>"
    rng = np.random.default_rng(0)
    a, c = ga.sample_pairs(rng, 400, 1, 3, "train")
    assert not ga.is_id_eval(a, c).any() and max(a) < 1000 and min(a) >= 1
    a, c = ga.sample_pairs(rng, 100, 1, 3, "id")
    assert ga.is_id_eval(a, c).all()
    a, c = ga.sample_pairs(rng, 100, 4, 4, "ood")
    assert min(a) >= 1000 and max(c) < 10000
    with pytest.raises(ConfigError, match="too short"):
        ga.make_batch([9999], [9999], 16)


def test_forgetting_teacher_shift_and_pure_task_patches():
    f = gf.ForgetCfg()
    teacher = gf.init_mlp(jax.random.key(0), f)
    delta = gf.shift(jax.random.key(1), teacher)
    for k in teacher:
        ratio = float(jnp.linalg.norm(delta[k]) / jnp.linalg.norm(teacher[k]))
        assert 0.5 <= ratio <= 5.0
    assert int(jnp.linalg.matrix_rank(delta["w1"])) == 3
    x, y = gf.task_batch(jax.random.key(2), teacher, delta, f, mix=True)
    assert x.shape == (32, 10) and y.shape == (32, 10)
    np.testing.assert_allclose(x[:16, :5].mean(), 1.0, atol=0.15)  # p1 half, then p2 half
    np.testing.assert_allclose(x[16:, 5:].mean(), 1.0, atol=0.15)
    np.testing.assert_allclose(x[16:, :5].mean(), 0.0, atol=0.15)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_gapt_lm_tiny_end_to_end_and_probe(tmp_path):
    cfg = override(gl.tiny(), ["data.source=synthetic", "train.steps=4", "train.eval_every=2",
                               "train.ckpt_every=4", "exp.seeds=0", "exp.arms=ce,gapt",
                               f"exp.out={tmp_path / 'res'}", "model.n_layers=3",
                               "train.batch_size=8", "train.seq_len=32", "ib.p_m=1",
                               "opt.warmup=2"])
    out = gl.run(cfg, str(tmp_path / "wd"))
    assert {"ce", "gapt"} <= {r[0] for r in out["runs"]}
    ce = out["runs"][("ce", 0)]  # it learns: train 5.58 -> 5.11, val CE 5.40 -> 5.02 recorded
    tr_ce = [r["loss"] for r in ce if r["split"] == "train"]
    val_ce = [r["val_ce"] for r in ce if r["split"] == "eval"]
    assert tr_ce[-1] < 0.95 * tr_ce[0] and val_ce[1] < 0.97 * val_ce[0], (tr_ce, val_ce)
    ev = [r for r in out["runs"][("gapt", 0)] if r["split"] == "eval"]
    assert [r["step"] for r in ev] == [2, 4]
    assert all(np.isfinite(r["grad_cos"]) and -1 <= r["grad_cos"] <= 1 for r in ev)
    assert all(0 <= r[f"val_mbe_{i}"] <= np.log(8) + 1e-5 for r in ev for i in range(3))
    tr = [r for r in out["runs"][("gapt", 0)] if r["split"] == "train"]
    assert {r["gapt_phase"] for r in tr} <= {1.0, 2.0} and 2.0 in {r["gapt_phase"] for r in tr}
    for f in ["README.md", "config.json", "versions.json", "results.jsonl", "plot.png"]:
        assert os.path.getsize(tmp_path / "res" / f) > 0
    assert "| gapt | 1 |" in (tmp_path / "res" / "README.md").read_text()

    from lm import probe
    wd = str(tmp_path / "wd" / "gapt_s0")
    res = probe.probe(wd, batches=1)
    assert res["step"] == 4 and len(res["patch_mbe"]) == 4
    # h0 = embedding rows of the masked-in tokens: check the streamed d×d value against mbe2
    params = probe.restore_params(wd, probe.load_run_config(wd))[1]
    batch = data_lib.make_eval_batches(cfg.data, batch_size=8, seq_len=32, max_batches=1)[0]
    rows = np.asarray(params["embed_VxD"])[batch["inputs"][batch["mask"] > 0]]
    np.testing.assert_allclose(res["global_mbe"][0], info.mbe2(rows), rtol=1e-4)
    assert json.load(open(os.path.join(wd, "probe.json")))["step"] == 4
    assert "| h3 (block 2) |" in probe.table(res)


@pytest.mark.slow
def test_gapt_arithmetic_tiny_end_to_end(tmp_path):
    cfg = override(ga.tiny(), ["train.steps=3", "train.eval_every=3", "arith.eval_n=16",
                               "exp.seeds=0", f"exp.out={tmp_path / 'res'}",
                               "model.n_layers=3", "model.d_model=32", "model.d_ff=64"])
    out = ga.run(cfg, str(tmp_path / "wd"))
    last = out["runs"][("gapt", 0)][-1]
    assert 0.0 <= last["ood_exact_match"] <= 1.0 and np.isfinite(last["ood_answer_ce"])
    assert os.path.getsize(tmp_path / "res" / "plot.png") > 0
    assert "| ce | 1 |" in out["table"]


@pytest.mark.slow
def test_gapt_forgetting_tiny_end_to_end(tmp_path):
    cfg = override(gf.tiny(), ["forget.pre_steps=2", "forget.ft_steps=2", "forget.accum=2",
                               "exp.seeds=0,1", f"exp.out={tmp_path / 'res'}"])
    out = gf.run(cfg, str(tmp_path / "wd"))
    for arm in ("base", "gapt", "mbe"):
        r = out["results"][arm]
        assert r["ft_separation"].shape == (2,) and np.all(np.isfinite(r["forgetting"]))
    recs = [json.loads(x) for x in open(tmp_path / "res" / "results.jsonl")]
    assert len(recs) == 6 and {r["seed"] for r in recs} == {0, 1}
    with pytest.raises(ConfigError, match="exp.arms"):
        gf.run(override(cfg, ["exp.arms=nope"]), str(tmp_path / "wd2"))
