"""Run every ``benchmarks/bench_*.py`` and record the outputs in ``results/benchmarks/<cpu>.md``.

    .venv/bin/python benchmarks/record.py [--out results/benchmarks] [bench_sample.py ...]

``make bench`` runs this, then ``benchmarks/readme_table.py`` (README's benchmark table from the
latest record). One file per CPU model (``cpu_slug``), rewritten atomically on each run (git keeps
the history): date, commit (``-dirty`` when the tree had changes), the CPU model from
``/proc/cpuinfo``, and each benchmark's full output (stdout and stderr) and exit status. The
benchmarks run one after another in fresh processes. Exit 1 when any benchmark failed (the record
is written anyway and says which).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import cpu_model  # noqa: E402
from lm.metrics import git_commit, write_atomic  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FENCE = "~~~~"  # benchmark output never starts a line with it


def cpu_slug(model: str) -> str:
    """``Intel(R) Xeon(R) Processor`` -> ``intel-r-xeon-r-processor``."""
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") or "unknown-cpu"


def last_line(output: str) -> str:
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def render(meta: dict, runs: list[dict]) -> str:
    """The record's markdown; ``runs``: dicts with name, rc, seconds, output."""
    out = [f"# Benchmarks on {meta['cpu']}", "",
           f"- date: {meta['date']}", f"- commit: {meta['commit']}", f"- cpu: {meta['cpu']}",
           f"- cores: {meta['cores']}", f"- command: {meta['command']}", ""]
    for r in runs:
        out += [f"## {r['name']}", "", f"- exit status: {r['rc']}",
                f"- wall time: {r['seconds']:.1f} s", f"- last line: `{last_line(r['output'])}`",
                "", FENCE, r["output"].rstrip("\n"), FENCE, ""]
    return "\n".join(out)


def parse(text: str) -> tuple[dict, list[dict]]:
    """Inverse of ``render``: (meta, runs) with runs' name, rc, output."""
    meta = dict(re.findall(r"^- (date|commit|cpu|cores|command): (.*)$",
                           text.split("\n## ", 1)[0], re.M))
    runs = []
    for block in re.split(r"^## (?=bench_\S+\.py$)", text, flags=re.M)[1:]:
        name = block.split("\n", 1)[0].strip()
        rc = int(re.search(r"^- exit status: (-?\d+)$", block, re.M).group(1))
        body = block.split(FENCE + "\n", 1)[1]
        runs.append(dict(name=name, rc=rc, output=body[:body.rindex(FENCE)].rstrip("\n")))
    return meta, runs


def run_one(path: pathlib.Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True)
    output = p.stdout + (f"\n[stderr]\n{p.stderr}" if p.returncode and p.stderr else "")
    return dict(name=path.name, rc=p.returncode, seconds=time.perf_counter() - t0, output=output)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    ap.add_argument("names", nargs="*", help="bench_*.py files to run (default: all)")
    a = ap.parse_args(argv)
    paths = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if a.names:
        unknown = sorted(set(a.names) - {p.name for p in paths})
        if unknown:
            print(f"error: unknown benchmark(s) {unknown}; allowed: {[p.name for p in paths]}")
            return 2
        paths = [p for p in paths if p.name in a.names]
    cpu = cpu_model()
    meta = dict(date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                commit=git_commit() or "unknown", cpu=cpu, cores=str(os.cpu_count()),
                command="python benchmarks/record.py " + " ".join(a.names or []))
    meta["command"] = meta["command"].rstrip()
    runs = []
    for p in paths:
        print(f"== {p.name}", flush=True)
        runs.append(run_one(p))
        print(runs[-1]["output"].rstrip("\n"), flush=True)
    os.makedirs(a.out, exist_ok=True)
    dest = os.path.join(a.out, f"{cpu_slug(cpu)}.md")
    write_atomic(dest, render(meta, runs))
    failed = [r["name"] for r in runs if r["rc"]]
    print(f"wrote {dest}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
