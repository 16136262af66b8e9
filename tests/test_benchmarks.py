"""Every ``benchmarks/bench_*.py`` runs at its smoke size (``BENCH_SMOKE=1``) so none rots.

Each runs as a subprocess from the repo root and must exit 0, print the CPU model
(``/proc/cpuinfo``) and end with a line ``<name>: <number>``. The subprocess gets the suite's
environment minus ``XLA_FLAGS`` (the 8 fake devices are the suite's, not the benchmark's: a
benchmark that needs flags sets them itself). The glob picks up benchmarks added later.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from benchmarks.common import cpu_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHES = sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))
LAST_LINE = re.compile(r"^[^:]+: -?[0-9.]+")


def smoke_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["BENCH_SMOKE"] = "1"
    return env


def test_glob_finds_the_benchmarks():
    assert {"bench_sample.py", "bench_gds.py", "bench_tdpo.py",
            "bench_real_model.py"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_smoke(name):
    r = subprocess.run([sys.executable, f"benchmarks/{name}"], cwd=ROOT, env=smoke_env(),
                       capture_output=True, text=True, timeout=300)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, f"{name} exited {r.returncode}:\n{tail}"
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert lines and LAST_LINE.match(lines[-1]), f"{name}: last line {lines[-1:]!r}\n{tail}"
    assert cpu_model() in r.stdout, f"{name} does not print the CPU model {cpu_model()!r}"


def test_record_round_trip_and_latest(tmp_path):
    from benchmarks import readme_table, record

    runs = [dict(name="bench_a.py", rc=0, seconds=1.0,
                 output="cpu: X\nside speedup: 2.0\n## not a header\na/b ratio: 1.50\n"),
            dict(name="bench_b.py", rc=3, seconds=0.5, output="Traceback ...\n")]
    meta = dict(date="2026-01-02T00:00:00Z", commit="abc", cpu="Some CPU", cores="2",
                command="make bench")
    old = dict(meta, date="2025-12-31T00:00:00Z", cpu="Old CPU")
    (tmp_path / "some-cpu.md").write_text(record.render(meta, runs))
    (tmp_path / "old-cpu.md").write_text(record.render(old, runs[:1]))
    got_meta, got_runs = record.parse((tmp_path / "some-cpu.md").read_text())
    assert {k: got_meta[k] for k in meta} == meta
    assert [(r["name"], r["rc"], r["output"]) for r in got_runs] == [
        (r["name"], r["rc"], r["output"].rstrip("\n")) for r in runs]
    latest = readme_table.latest_record(tmp_path)
    assert latest.name == "some-cpu.md"
    body = readme_table.table(latest, root=tmp_path)
    assert "| `bench_a.py` | `a/b ratio: 1.50` | side speedup: 2.0 |" in body
    assert "| `bench_b.py` | failed (exit 3) | |" in body and "Some CPU" in body
    assert record.cpu_slug("Intel(R) Xeon(R) Processor") == "intel-r-xeon-r-processor"
    assert readme_table.latest_record(tmp_path / "nowhere") is None


def test_readme_table_is_generated_from_latest_record():
    from benchmarks import readme_table

    readme = (ROOT / "README.md").read_text()
    assert readme_table.current_block(readme) == readme_table.table(
        readme_table.latest_record()), "README benchmark table is stale: run make bench " \
        "(or benchmarks/readme_table.py after benchmarks/record.py)"
