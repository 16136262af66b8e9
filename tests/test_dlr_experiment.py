"""The DLR arithmetic experiment end to end (smoke preset) and its pure pieces."""

import dataclasses
import json
import os

import numpy as np
import pytest

from experiments import dlr_arithmetic as E
from experiments.base import main
from lm.checkpoint import save_params_npz
from lm.routing import DLRCfg
from rl import dlr_tasks as T


def test_task_generator_answers_and_carries_are_right():
    d = T.make("addsub", 64, seed=0)
    toks = d["tokens"]
    num = lambda row: int("".join(map(str, row)))
    for r in range(64):
        a, b = num(toks[r, :6]), num(toks[r, 7:13])
        c = num(toks[r, T.PROMPT:][::-1])
        assert c == (a + b if toks[r, 6] == T.PLUS else a - b) and toks[r, 13] == T.EQ
        ad, bd = f"{a:07d}"[::-1], f"{b:07d}"[::-1]
        carry = 0
        for j in range(T.ANS):
            assert d["carry"][r, j] == carry
            s = int(ad[j]) + int(bd[j]) + carry if d["op"][r] == 0 else int(ad[j]) - int(
                bd[j]) - carry
            carry = int(s >= 10) if d["op"][r] == 0 else int(s < 0)
    h = T.make("hidden", 64, seed=1)
    assert (h["tokens"][:, 6] == T.HIDDEN).all()
    np.testing.assert_array_equal(h["op"], h["tokens"][:, 0] % 2)
    b = T.to_batch(toks[:2])
    assert b["mask"].sum() == 2 * T.ANS and b["mask"][0, T.PROMPT - 1] == 1


def test_mutual_information_and_bootstrap_hand_cases():
    assert T.mutual_information([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert T.mutual_information([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    assert T.entropy_bits([0, 1, 2, 3]) == pytest.approx(2.0)
    mean, lo, hi = T.bootstrap_ci(np.ones((3, 10)))
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)


def test_methods_override_only_their_dlr_field():
    cfg = E.tiny()
    base = cfg.model.dlr
    expect = {"dlr_c1": ("codes", 1), "dlr_c32": ("codes", 32), "dlr_k1": ("chunk", 1),
              "dlr_k2": ("chunk", 2), "dlr_alpha0.3": ("alpha", 0.3), "dlr_alpha3": ("alpha", 3.0),
              "dlr_ap0": ("alpha_policy", 0.0), "dlr_n1": ("n_search", 1)}
    for method, (field, value) in expect.items():
        d = E.method_model(cfg, method).dlr
        assert getattr(d, field) == value
        others = [f for f in ("codes", "chunk", "alpha", "alpha_policy", "layer") if f != field]
        assert all(getattr(d, f) == getattr(base, f) for f in others), method
    assert E.method_model(cfg, "dlr_n1").dlr.greedy is False
    assert set(E.ARMS) <= set(E.METHODS) and E.tiny().exp.methods == E.ARMS


def test_unknown_method_is_a_config_error(tmp_path, capsys):
    rc = main(E.PRESETS, E.run, argv=["--preset", "smoke", "--workdir", str(tmp_path),
                                      "--set", "exp.methods=sft,bogus"])
    assert rc == 2 and "bogus" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
    rc = main(E.PRESETS, E.run, argv=["--preset", "smoke", "--workdir", str(tmp_path)])
    assert rc == 0
    for f in ("config.json", "versions.json", "raw.jsonl", "summary.json", "table.md",
              "plot.png"):
        assert os.path.getsize(tmp_path / f) > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {(r["task"], r["method"]) for r in summary["rows"]}
    assert rows == {(t, m) for t in ("addsub", "hidden") for m in ("base", "sft", "dlr")}
    recs = [json.loads(x) for x in (tmp_path / "raw.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in recs} == {"pretrain", "post", "eval"}
    pre = [r["loss"] for r in recs if r["phase"] == "pretrain"]
    assert pre[-1] < 0.97 * pre[0], pre  # it learns: 2.87 -> 2.73 in 2 logged steps, recorded
    dlr_post = [r for r in recs if r["phase"] == "post" and r["method"] == "dlr"]
    assert all(np.isfinite(r["loss"]) and "info_gain" in r for r in dlr_post)

    # the saved base is reused: no pretraining, the same base evaluation
    again = tmp_path / "again"
    rc = main(E.PRESETS, E.run, argv=["--preset", "smoke", "--workdir", str(again), "--set",
                                      f"exp.base_from={tmp_path / 'base.npz'}",
                                      "exp.methods=sft", "exp.tasks=addsub"])
    assert rc == 0
    recs2 = [json.loads(x) for x in (again / "raw.jsonl").read_text().splitlines()]
    assert "pretrain" not in {r["phase"] for r in recs2}
    base_row = lambda s: next(r for r in s["rows"] if r["task"] == "addsub" and
                              r["method"] == "base")
    again_summary = json.loads((again / "summary.json").read_text())
    assert base_row(again_summary)["digit_off"] == base_row(summary)["digit_off"]


def test_base_from_missing_or_other_shape_is_a_config_error(tmp_path, capsys):
    argv = ["--preset", "smoke", "--workdir", str(tmp_path / "w"), "--set"]
    assert main(E.PRESETS, E.run, argv=argv + ["exp.base_from=/nonexistent/base.npz"]) == 2
    assert "does not exist" in capsys.readouterr().err
    pre_cfg = dataclasses.replace(E.smoke().model, dlr=DLRCfg())
    save_params_npz(str(tmp_path / "base.npz"), E.with_dlr_params(pre_cfg, {}, 0))
    assert main(E.PRESETS, E.run, argv=argv + [f"exp.base_from={tmp_path / 'base.npz'}",
                                               "model.d_model=32"]) == 2
    assert "another model shape" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
