"""Run records: JSONL + TensorBoard metrics, a tqdm progress bar, provenance, and ``plot.png``."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "grain",
            "tensorflow-datasets", "numpy")


class MetricsWriter:
    """Appends ``{"step", "split", **metrics}`` lines to metrics.jsonl and TensorBoard."""

    def __init__(self, run_dir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(run_dir, "tb"))
            except ImportError:
                self.tb = None

    def write(self, step: int, metrics: dict, split: str = "train"):
        if not self.enabled:
            return
        rec = {"step": int(step), "split": split, **{k: _num(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "split") and isinstance(v, int | float):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: str, max_step: int):
    """Drop records after ``max_step`` (a resumed run rewrites them)."""
    recs = [r for r in read_jsonl(path) if r["step"] <= max_step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in recs))


def write_atomic(path: str, text: str) -> str:
    """Write ``text`` all or nothing: a temp file in the same folder, renamed over ``path``
    (a killed process leaves the old file or none, never half of one)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def provenance(argv=None) -> dict:
    import jax
    return {"argv": list(sys.argv if argv is None else argv), "git_commit": git_commit(),
            "versions": versions(), "device_kind": jax.devices()[0].device_kind,
            "backend": jax.default_backend(), "device_count": jax.device_count(),
            "process_count": jax.process_count()}


def to_jsonable(cfg) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def write_json(path: str, obj) -> str:
    """Write ``obj`` as indented JSON, atomically (``write_atomic``)."""
    return write_atomic(path, json.dumps(obj, indent=2, default=str))


def write_provenance(out: str, cfg=None, argv=None, name: str = "versions.json",
                     **extra) -> None:
    """The record every result folder carries: ``config.json`` (when ``cfg`` is given) and
    ``name`` = command, git commit, package versions and devices (``provenance``) + ``extra``."""
    os.makedirs(out, exist_ok=True)
    if cfg is not None:
        write_json(os.path.join(out, "config.json"), to_jsonable(cfg))
    prov = provenance(argv)
    prov["versions"].update(extra)
    write_json(os.path.join(out, name), prov)


def progress(total: int, initial: int = 0, desc: str = "train", disable: bool = False):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True,
                unit="step", smoothing=0.1)


def plot_run(run_dir: str, out: str | None = None, x: str = "tokens") -> str:
    """Train/eval loss vs tokens seen from ``metrics.jsonl`` -> ``plot.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    out = out or os.path.join(run_dir, "plot.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("eval", "o-")):
        rs = [r for r in recs if r.get("split") == split and "loss" in r]
        if rs:
            ax.plot([r.get(x, r["step"]) for r in rs], [r["loss"] for r in rs], style,
                    label=f"{split} loss", ms=3)
    ax.set_xlabel(x)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(run_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
