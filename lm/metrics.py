"""Run records: JSONL + TensorBoard metrics, a tqdm progress bar, provenance, and ``plot.png``."""

from __future__ import annotations

import dataclasses
import hashlib
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


HERE = os.path.dirname(os.path.abspath(__file__))


def _git(repo: str, *args: str, text: bool = True):
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=text, timeout=10)


def git_commit(repo: str = HERE) -> str:
    try:
        out = _git(repo, "rev-parse", "HEAD")
        dirty = _git(repo, "status", "--porcelain").stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state(repo: str = HERE) -> dict | None:
    """``{"root", "commit", "dirty", "changed", "diff_sha256"}`` of the git tree holding ``repo``
    (None outside git). ``changed`` = tracked changes and untracked files *outside* ``results/``
    (the code and configs a run depends on; ``results/`` holds data, and a results folder being
    written is itself untracked); ``dirty`` = ``bool(changed)``; ``diff_sha256`` = sha256 of the
    bytes of ``git diff HEAD`` (None when that diff is empty)."""
    try:
        top = _git(repo, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return None
        root = top.stdout.strip()
        status = _git(root, "status", "--porcelain", "--", ".", ":(exclude)results").stdout
        diff = _git(root, "diff", "HEAD", text=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"root": root, "commit": _git(root, "rev-parse", "HEAD").stdout.strip(),
            "dirty": bool(changed), "changed": changed,
            "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None}


def check_clean(out: str, allow_dirty: bool = False, repo: str = HERE) -> dict | None:
    """Refuse (``ConfigError``) to record results into the repository's own ``results/`` folder
    from a tree with uncommitted code changes, unless ``allow_dirty`` (``run.allow_dirty=true``).

    Only destinations inside ``<repo root>/results/`` are checked: those folders are committed
    as the project's recorded claims and must name a commit that reproduces them. Run
    directories elsewhere (``runs/``, the test suite's temporary folders) are never refused, so
    tests and day-to-day runs on a dirty development tree keep working; their provenance still
    records ``-dirty`` and the diff's hash. Returns ``git_state`` (None outside git)."""
    from lm.sharding import ConfigError
    st = git_state(repo)
    if st is None or allow_dirty or not st["dirty"]:
        return st
    results = os.path.join(os.path.realpath(st["root"]), "results")
    dest = os.path.realpath(out)
    if dest == results or dest.startswith(results + os.sep):
        shown = ", ".join(st["changed"][:5]) + (" ..." if len(st["changed"]) > 5 else "")
        raise ConfigError(f"refusing to record results in {out}: the git tree has uncommitted "
                          f"changes ({shown}); commit them first, or pass --set "
                          "run.allow_dirty=true to record the diff's sha256 instead")
    return st


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
                     allow_dirty: bool | None = None, repo: str = HERE, **extra) -> None:
    """The record every result folder carries: ``config.json`` (when ``cfg`` is given) and
    ``name`` = command, git commit, package versions and devices (``provenance``) + ``extra``,
    plus ``git_dirty`` and ``git_diff_sha256`` (sha256 of ``git diff HEAD``, when non-empty).

    Into the repository's ``results/`` it writes only from a clean tree (``check_clean``;
    nothing is written when it refuses); ``allow_dirty`` defaults to ``cfg.run.allow_dirty``
    when ``cfg`` has one, else False."""
    if allow_dirty is None:
        allow_dirty = bool(getattr(getattr(cfg, "run", None), "allow_dirty", False))
    st = check_clean(out, allow_dirty, repo)
    os.makedirs(out, exist_ok=True)
    if cfg is not None:
        write_json(os.path.join(out, "config.json"), to_jsonable(cfg))
    prov = provenance(argv)
    prov["git_commit"] = git_commit(repo)
    prov["git_dirty"] = None if st is None else st["dirty"]
    prov["git_diff_sha256"] = None if st is None else st["diff_sha256"]
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
