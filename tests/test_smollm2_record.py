"""experiments.smollm2_record: finished runs are copied into results/ and read back from that
copy once their runs/ folder is gone (a fresh machine); an in-progress copy without its run is
left out."""

import json
import os
import shutil

from experiments import smollm2_record as rec


def _write_run(runs, name, arm, base, final, done=True):
    wd = os.path.join(runs, name)
    os.makedirs(os.path.join(wd, "record"))
    os.makedirs(os.path.join(wd, arm))
    cfg = {"train": {"steps": 20}}
    lines = [{"method": "sft", "split": "eval", "step": 0, "acc_heldout": base, "acc_long": 0.0},
             {"method": arm, "split": "train", "step": 20, "kl_ref": 0.3, "response_length": 5.0},
             {"method": arm, "split": "eval", "step": 20, "acc_heldout": final, "acc_long": 0.1}]
    with open(os.path.join(wd, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    with open(os.path.join(wd, arm, "metrics.jsonl"), "w") as fh:
        fh.writelines(json.dumps(x) + "\n" for x in lines[1:2])
    if done:
        for f, obj in (("config.json", cfg), ("versions.json", {"commit": "x"})):
            with open(os.path.join(wd, "record", f), "w") as fh:
                json.dump(obj, fh)
        with open(os.path.join(wd, "record", "metrics.jsonl"), "w") as fh:
            fh.writelines(json.dumps(x) + "\n" for x in lines)


def test_finished_runs_survive_a_lost_runs_folder(tmp_path):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "out")
    _write_run(runs, "smollm2_grpo_s0", "grpo", 0.125, 0.375)
    _write_run(runs, "smollm2_grpo_s1", "grpo", 0.100, 0.400)
    _write_run(runs, "smollm2_dapo_s0", "dapo", 0.125, 0.0, done=False)  # started, no eval yet
    first = rec.grpo_runs(runs, out)
    assert [(r["arm"], r["seed"], r["done"]) for r in first] == [("grpo", 0, True),
                                                                 ("grpo", 1, True)]
    assert os.path.exists(os.path.join(out, "smollm2_grpo_s0", "versions.json"))
    assert os.path.exists(os.path.join(out, "smollm2_dapo_s0", "metrics.jsonl"))  # partial copy

    shutil.rmtree(runs)  # a fresh machine: only the committed copies remain
    again = rec.grpo_runs(runs, out)
    assert again == first
    stats = rec.grpo_stats(again)
    assert "grpo, acc_heldout change over 2 finished seeds: +0.275" in stats
    assert "dapo" not in stats
