"""Shared by every ``benchmarks/bench_*.py``: the CPU model line and the ``BENCH_SMOKE`` switch.

    from benchmarks.common import SMOKE, print_machine
    n = 16 if SMOKE else 4096
    print_machine(baseline="padded full recompute")

``BENCH_SMOKE=1`` (environment) shrinks every size so a benchmark finishes in seconds; the suite
(``tests/test_benchmarks.py``) runs each one that way so none rots. Smoke figures mean nothing.
"""

from __future__ import annotations

import os
import platform

SMOKE = os.environ.get("BENCH_SMOKE", "") == "1"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first ``model name`` of ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def print_machine(baseline: str) -> None:
    """One line: CPU model, core count, the baseline's name, and whether this is a smoke run."""
    smoke = "  [BENCH_SMOKE=1: tiny sizes, figures meaningless]" if SMOKE else ""
    print(f"cpu: {cpu_model()} ({os.cpu_count()} cores); baseline: {baseline}{smoke}")
