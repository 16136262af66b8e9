"""benchmarks/gpu_check.py at CPU size: every part runs and the results land atomically."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import gpu_check  # noqa: E402


def test_cpu_smoke_run_writes_json_and_readme(tmp_path, capsys):
    assert gpu_check.main(["--cpu-smoke", "--out", str(tmp_path)]) == 0
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and files[-1] == "README.md", files
    rec = json.loads((tmp_path / files[0]).read_text())
    parts = {p["name"]: p for p in rec["parts"]}
    assert set(parts) == {"gpt2", "llama_1b", "decode_kvcache"} and rec["smoke"]
    assert parts["llama_1b"]["remat"] == "full" and parts["gpt2"]["attention"] == "auto"
    assert all(p["tokens_per_s"] > 0 for p in parts.values())
    # against the whole CPU's measured matmul peak (a part runs on one of the 8 simulated
    # devices, which share one thread pool): achieved / peak, and below it
    g = parts["gpt2"]
    assert "whole CPU" in rec["peak_source"] and 0 < g["mfu"] < 1
    rounding = 0.0005e12 / rec["peak_flops"] + 1e-4  # tflops_per_device has 3 decimals
    assert abs(g["mfu"] - g["tflops_per_device"] * 1e12 / rec["peak_flops"]) <= rounding
    readme = (tmp_path / "README.md").read_text()
    assert rec["device"] in readme and files[0] in readme
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"gpu_check gpt2_124m mfu: {parts['gpt2']['mfu']}"
