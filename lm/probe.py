"""Per-layer matrix-based entropy of a saved run's checkpoint on held-out data.

    python -m lm.probe --workdir runs/gapt_lm_tiny/gapt_s0 [--step N] [--batches 4]
    python -m lm.probe --workdir path/to/hf_checkpoint          # a Hugging Face checkpoint

or ``from lm.probe import probe; probe("runs/...")``. Rebuilds the model from the run's
``config.json``, restores the checkpoint (latest, or ``--step``) and, on the run's validation
split, measures every hidden state (``h0`` = embedding output, ``h<i>`` = after block i-1):

- ``patch_mbe``: mean α=2 entropy of ``ib.patch_size``-token windows (what IBLM/GAPT regularise);
- ``global_mbe`` / ``global_vn``: α=2 and von Neumann (α=1) entropy of *all* probed tokens of the
  layer at once, accumulated through the d×d dual Gram (``lm.info.stream_*``), so N tokens cost
  O(N d²), never an N×N matrix.

Writes ``probe.json`` and ``probe.png`` into the run directory and prints a markdown table.
Padding positions (mask 0) are excluded from the global statistics; the patch statistic keeps
them, as the training loss does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

import jax
import jax.numpy as jnp
import numpy as np

from lm import info
from lm.sharding import ConfigError


def from_dict(cls, d: dict):
    """Rebuild a (nested, frozen) dataclass from ``asdict`` output; unknown keys are ignored."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, t = d[f.name], hints[f.name]
        if dataclasses.is_dataclass(t):
            v = from_dict(t, v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


def load_run_config(workdir: str):
    from lm.config import Config
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"--workdir {workdir} has no config.json; is it a run directory?")
    with open(path) as fh:
        return from_dict(Config, json.load(fh))


def restore_params(workdir: str, cfg, step: int | None = None):
    """(setup, params, step) from the run's checkpoints."""
    from lm import lora
    from lm.checkpoint import Checkpointer, abstract_target
    from lm.setup import build
    setup = build(cfg)
    ck = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False,
                      frozen=lora.frozen_state_fn(setup.cfg.model))
    try:
        steps = ck.all_steps()
        if not steps:
            raise ConfigError(f"{workdir}/checkpoints holds no checkpoint")
        step = max(steps) if step is None else step
        if step not in steps:
            raise ConfigError(f"--step {step} is not saved; saved steps: {sorted(steps)}")
        target = abstract_target(jax.eval_shape(lambda: setup.state), setup.state_sharding)
        state, _ = ck.restore(step, target, fill=setup.state)
    finally:
        ck.close()
    return setup, state["params"], step


def layer_entropies(graphdef, params, batches, patch_size: int = 8) -> dict:
    """Per-hidden-state patch MBE and global α=2 / α=1 entropy over ``batches``."""
    from lm.losses import bind

    @jax.jit
    def stats(params, batch, accs):
        _, hid = bind(graphdef, params)(batch["inputs"], return_hidden=True)
        w_BxLx1 = batch["mask"][..., None].astype(jnp.float32)
        patch = jnp.stack([info.patch_mbe(h, patch_size) for h in hid])
        accs = [info.stream_update(a, h * w_BxLx1) for a, h in zip(accs, hid, strict=True)]
        return patch, accs

    accs, patch_sums, n = None, 0.0, 0
    for b in batches:
        if accs is None:
            d = int(params["embed_VxD"].shape[-1])
            accs = [info.stream_init(d) for _ in range(_n_hidden(params))]
        p, accs = stats(params, b, accs)
        patch_sums, n = patch_sums + np.asarray(p), n + 1
    if n == 0:
        raise ConfigError("probe: no held-out batches")
    return {"patch_mbe": (patch_sums / n).tolist(),
            "global_mbe": [float(info.stream_mbe(a)) for a in accs],
            "global_vn": [float(info.stream_renyi(a, 1.0)) for a in accs]}


def _n_hidden(params) -> int:
    return 1 + sum(1 for k in params if k.startswith("block_"))


def pretrained_batches(tok, text: str, *, batch_size: int, seq_len: int, max_batches: int):
    """Held-out batches for a checkpoint: ``text`` in the checkpoint's own tokens, cut into
    consecutive ``seq_len + 1`` windows (no padding; every position counts)."""
    ids = np.asarray(tok.encode(text, add_special_tokens=False), np.int32)
    n = min(len(ids) // (seq_len + 1) // batch_size, max_batches)
    if n < 1:
        raise ConfigError(f"probe: {len(ids)} tokens of text do not fill one batch of "
                          f"{batch_size} x {seq_len + 1}")
    w = ids[: n * batch_size * (seq_len + 1)].reshape(n, batch_size, seq_len + 1)
    return [{"inputs": b[:, :-1], "targets": b[:, 1:],
             "mask": np.ones((batch_size, seq_len), np.float32)} for b in w]


def probe_pretrained(path: str, batches: int = 4, *, batch_size: int = 8, seq_len: int = 128,
                     patch_size: int = 8, text: str | None = None) -> dict:
    """Per-layer MBE of a Hugging Face checkpoint (``lm.hf.load``) on ``text`` (default: the
    last books of the embedded KJV corpus) in its own tokenizer."""
    from flax import nnx

    from lm import data as data_lib
    from lm import hf
    from lm.model import GPT
    from tokenization.hf import HFTokenizer

    mcfg, params = hf.load(path, dtype="float32")
    graphdef = nnx.split(nnx.eval_shape(lambda: GPT(mcfg, rngs=nnx.Rngs(0))))[0]
    if text is None:
        with open(data_lib.prepare_corpus(data_lib.DataCfg())) as fh:
            text = fh.read()[-400_000:]
    seq_len = min(seq_len, mcfg.max_len)
    host = pretrained_batches(HFTokenizer.load(path), text, batch_size=batch_size,
                              seq_len=seq_len, max_batches=batches)
    out = layer_entropies(graphdef, params, host, patch_size)
    out.update(step=0, workdir=path, tokens=int(sum(b["mask"].sum() for b in host)))
    return out


def probe(workdir: str, step: int | None = None, batches: int = 4, plot: bool = True) -> dict:
    """Probe a run directory (writes probe.json/png there) or a Hugging Face checkpoint
    directory (nothing written into it; see ``probe_pretrained``)."""
    from lm import data as data_lib
    from lm.pretrained import source_kind
    if source_kind(workdir) == "hf":
        return probe_pretrained(workdir, batches)
    cfg = load_run_config(workdir)
    setup, params, step = restore_params(workdir, cfg, step)
    host = data_lib.make_eval_batches(cfg.data, batch_size=cfg.train.batch_size,
                                      seq_len=cfg.train.seq_len, max_batches=batches)
    out = layer_entropies(setup.graphdef, params, host, cfg.ib.patch_size)
    out.update(step=step, workdir=workdir, tokens=int(sum(b["mask"].sum() for b in host)))
    with open(os.path.join(workdir, "probe.json"), "w") as fh:
        json.dump(out, fh, indent=2)
    if plot:
        plot_probe(out, os.path.join(workdir, "probe.png"))
    return out


def table(out: dict) -> str:
    rows = ["| hidden | patch MBE (α=2) | global MBE (α=2) | global von Neumann (α=1) |",
            "|---|---|---|---|"]
    for i, (p, g, v) in enumerate(zip(out["patch_mbe"], out["global_mbe"], out["global_vn"],
                                      strict=True)):
        name = "h0 (embed)" if i == 0 else f"h{i} (block {i - 1})"
        rows.append(f"| {name} | {p:.4f} | {g:.4f} | {v:.4f} |")
    return "\n".join(rows)


def plot_probe(out: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(out["patch_mbe"]))
    for key, label in [("patch_mbe", "patch MBE (α=2)"), ("global_mbe", "global MBE (α=2)"),
                       ("global_vn", "global von Neumann (α=1)")]:
        ax.plot(x, out[key], "o-", label=label)
    ax.set_xticks(x, ["emb"] + [f"b{i}" for i in range(len(x) - 1)])
    ax.set_xlabel("hidden state")
    ax.set_ylabel("entropy (nats)")
    ax.set_title(f"{os.path.basename(os.path.abspath(out['workdir']))} @ step {out['step']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--batches", type=int, default=4)
    a = p.parse_args(argv)
    try:
        out = probe(a.workdir, a.step, a.batches)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(out))
    from lm.pretrained import source_kind
    wrote = (f"; wrote {a.workdir}/probe.json, probe.png" if source_kind(a.workdir) == "run"
             else " (checkpoint directory left untouched)")
    print(f"step {out['step']}, {out['tokens']} tokens{wrote}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
