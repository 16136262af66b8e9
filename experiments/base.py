"""The experiment runner: CLI, run directory, and the generic sharded LM training loop.

    python -m experiments.<name> [--preset tiny] [--set k=v ...] [--workdir DIR] [--dry-run]
        [--coordinator host:port --num-processes N --process-id i | --distributed]

The builder (``build``, ``Setup``, ``validate``, ``sample_text``) is library code in
``lm/setup.py``; it is re-exported here so ``experiments.base.build`` keeps working.
``main(presets)`` parses the command line, applies overrides, validates the config against the
devices (one ``ConfigError`` message, exit code 2, never a traceback from inside JAX), and hands the
config to the experiment's ``run(cfg, workdir)``. ``train(cfg, workdir)`` is the shared pretraining
loop every LM experiment composes: mesh -> abstract sharded init -> optimizer -> jitted step for the
configured loss -> data -> Orbax resume -> metrics/plot -> sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable

from lm import pretrained
from lm.config import Config, override, to_dict
from lm.setup import Setup, build, sample_text, validate  # noqa: F401 - public names live here too
from lm.sharding import ConfigError

EXIT_CONFIG, EXIT_NONFINITE = 2, 3


# ----------------------------------------------------------------------------- run directory


def prepare_run_dir(workdir: str, cfg: Config, *, is_main: bool = True) -> bool:
    """Create ``workdir`` or decide to resume it. Returns True when resuming.

    An existing run dir whose config differs is refused unless ``run.overwrite=true``
    (``run.allow_dirty`` is a recording policy, not part of the run: it is not compared). A
    ``workdir`` inside the repository's ``results/`` is refused from a dirty git tree before
    anything is written (``lm.metrics.check_clean``)."""
    from lm.metrics import check_clean
    check_clean(workdir, getattr(cfg.run, "allow_dirty", False))
    path = os.path.join(workdir, "config.json")
    new = json.loads(json.dumps(to_dict(cfg)))
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
        old.setdefault("run", {})["allow_dirty"] = new.get("run", {}).get("allow_dirty", False)
        defaults = json.loads(json.dumps(to_dict(type(cfg)())))
        if not list(_diff(old, new, defaults=defaults)):
            return True  # equal, up to keys added since (at their defaults)
        if not cfg.run.overwrite:
            diff = sorted(_diff(old, new, defaults=defaults))
            raise ConfigError(f"run directory {workdir} holds a run with a different config "
                              f"(differs at {', '.join(diff[:6])}); pass --set run.overwrite=true "
                              "to replace it, or choose another --workdir")
        if is_main:
            shutil.rmtree(workdir)
    elif os.path.isdir(workdir) and os.listdir(workdir) and not cfg.run.overwrite:
        raise ConfigError(f"--workdir {workdir} exists, is not empty and holds no config.json; "
                          "choose another --workdir or pass --set run.overwrite=true")
    if is_main:
        from lm.metrics import write_json
        os.makedirs(workdir, exist_ok=True)
        write_json(path, new)
    return False


def _diff(a, b, prefix="", defaults=None):
    """Dotted keys where config dicts ``a`` (on disk) and ``b`` differ. With ``defaults``, a key
    ``a`` lacks (a field added to the code since ``a`` was written) counts as equal when ``b``
    holds its default, so an old run directory still resumes."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            d = defaults.get(k) if isinstance(defaults, dict) else None
            if k not in a and isinstance(defaults, dict) and k in defaults and b.get(k) == d:
                continue
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.", d)
    elif a != b:
        yield prefix.rstrip(".")


# ----------------------------------------------------------------------------- training


def train(cfg: Config, workdir: str, *, loss_fn=None, argv=None, loss_state=None,
          on_eval=None) -> dict:
    """Train (or resume) an LM run in ``workdir``; returns a summary dict.

    ``loss_state``: initial state of a stateful loss (default: ``loss_fn.init_state(cfg)``).
    ``on_eval(step, state, setup, eval_batches) -> dict``: extra metrics for each eval record."""
    import jax

    from lm import data as data_lib
    from lm import lora, perf
    from lm import metrics as M
    from lm import sharding as sh
    from lm.checkpoint import Checkpointer, abstract_target
    from lm.train import NonFiniteLoss, evaluate, train_loop

    is_main = jax.process_index() == 0
    validate(cfg, jax.device_count())
    resume = prepare_run_dir(workdir, cfg, is_main=is_main)
    setup = build(cfg, loss_fn=loss_fn, loss_state=loss_state)
    tr = cfg.train
    pi, pc = jax.process_index(), jax.process_count()
    it = data_lib.make_train_iter(cfg.data, batch_size=tr.batch_size, seq_len=tr.seq_len,
                                  seed=tr.seed)  # yields this process's rows
    eval_host = data_lib.make_eval_batches(cfg.data, batch_size=tr.batch_size,
                                           seq_len=tr.seq_len, max_batches=tr.eval_batches)
    eval_batches = [sh.shard_batch({k: v[pi::pc] for k, v in b.items()}, setup.mesh)
                    for b in eval_host]
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.run.max_to_keep,
                        frozen=lora.frozen_state_fn(setup.cfg.model))  # LoRA: adapters only
    state, metrics_path = setup.state, os.path.join(workdir, "metrics.jsonl")
    restored = None
    if resume:  # newest readable checkpoint; an unreadable one is logged and skipped
        target = abstract_target(jax.eval_shape(lambda: setup.state), setup.state_sharding)
        say = (lambda m: print(m, file=sys.stderr, flush=True)) if is_main else (lambda m: None)
        restored = ckpt.restore_latest(target, check=it.set_state, log=say, fill=setup.state)
    if restored is not None:
        last, state, _ = restored
        if is_main:
            M.truncate_jsonl(metrics_path, last)
    elif is_main and os.path.exists(metrics_path):
        os.remove(metrics_path)
    if is_main:
        M.write_provenance(workdir, argv=argv, name="provenance.json",
                           allow_dirty=cfg.run.allow_dirty)
    writer = M.MetricsWriter(workdir, enabled=is_main)
    start = int(jax.device_get(state["step"]))
    tokens_per_step = tr.batch_size * tr.seq_len
    fpt = perf.flops_per_token(cfg.model, perf.model_params(state["params"], cfg.model),
                               tr.seq_len)  # MFU accounting (lm/perf.py)
    peak, _ = perf.device_peak_flops()
    bar = M.progress(tr.steps, start, desc=cfg.run.name,
                     disable=not (is_main and cfg.run.progress))

    def batches():
        while True:
            yield sh.shard_batch(next(it), setup.mesh)

    def on_metrics(step, m):
        m["tokens"] = step * tokens_per_step
        writer.write(step, m, "train")
        bar.update(step - bar.n)
        mfu = m.get("perf/mfu", "n/a")
        bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m.get('tokens_per_s', 0):.0f}",
                        tflops=f"{m.get('perf/tflops_per_device', 0):.3g}",
                        mfu=mfu if isinstance(mfu, str) else f"{mfu:.1%}")

    def on_step_end(step, st):
        if step % tr.eval_every == 0 or step == tr.steps:
            ev = evaluate(setup.eval_step, st["params"], eval_batches)
            if on_eval is not None:
                ev.update(on_eval(step, st, setup, eval_batches))
            writer.write(step, {**ev, "tokens": step * tokens_per_step}, "eval")
            bar.write(f"step {step}: eval loss {ev['loss']:.4f}")
        if step % tr.ckpt_every == 0 or step == tr.steps:
            ckpt.save(step, st, it.get_state())

    sync = lambda s: s % tr.eval_every == 0 or s % tr.ckpt_every == 0
    try:
        state = train_loop(state, setup.train_step, batches(), steps=tr.steps,
                           on_metrics=on_metrics, on_step_end=on_step_end, sync_at=sync,
                           tokens_per_step=tokens_per_step, flops_per_token=fpt,
                           peak_flops=peak)
    except NonFiniteLoss as e:
        ckpt.wait()
        good = ckpt.latest_step()
        where = (f"last good checkpoint: step {good} in {ckpt.directory}" if good is not None
                 else "no checkpoint was written")
        raise NonFiniteLoss(f"{e}; the run stopped ({where}); nothing was overwritten") from None
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    recs = M.read_jsonl(metrics_path)
    evals = [r for r in recs if r["split"] == "eval"]
    summary = {"workdir": workdir, "steps": tr.steps,
               "final_eval_loss": evals[-1]["loss"] if evals else None,
               "final_train_loss": next((r["loss"] for r in reversed(recs)
                                         if r["split"] == "train"), None)}
    if is_main:
        M.plot_run(workdir)
        if cfg.run.sample_tokens:
            summary["sample"] = sample_text(setup, state["params"], cfg.run.sample_prompt,
                                            cfg.run.sample_tokens, tr.seed)
    summary["state"] = state
    summary["setup"] = setup
    return summary


# ----------------------------------------------------------------------------- CLI


def parse_args(argv, presets: dict[str, Callable[[], Config]], default: str):
    p = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=default, help=f"one of {sorted(presets)}")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[],
                   metavar="KEY=VALUE", help="config override, e.g. --set opt.lr=3e-4")
    p.add_argument("--workdir", default=None, help="run directory (default runs/<run.name>)")
    p.add_argument("--dry-run", action="store_true",
                   help="lower+compile the train step for the preset's mesh on abstract devices "
                        "and print per-device memory; no training")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() with TPU/SLURM auto-detection")
    return p.parse_args(argv)


def load_config(args, presets, default) -> Config:
    """The preset with the ``--set`` overrides; with ``model.init_from`` the architecture is the
    checkpoint's and an override contradicting it is refused (``lm.pretrained.resolve``)."""
    if args.preset not in presets:
        raise ConfigError(f"--preset {args.preset!r} is not one of {sorted(presets)}")
    sets = [kv for group in args.overrides for kv in group]
    cfg = override(presets[args.preset](), sets)
    return pretrained.resolve(cfg, set_keys=[kv.split("=", 1)[0].strip() for kv in sets])


def init_distributed(args):
    import jax
    if args.coordinator or args.num_processes:
        if args.coordinator is None or args.num_processes is None or args.process_id is None:
            raise ConfigError("multi-host needs --coordinator host:port, --num-processes N and "
                              "--process-id i together")
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes, process_id=args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def main(presets: dict[str, Callable[[], Config]], run: Callable, *, default: str = "tiny",
         argv=None) -> int:
    """CLI entry: ``run(cfg, workdir, argv)`` does the experiment. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv, presets, default)
        cfg = load_config(args, presets, default)
        workdir = args.workdir or os.path.join("runs", cfg.run.name)
        if args.dry_run:
            from experiments.dry_run import dry_run  # one way: dry_run imports lm.setup
            print(dry_run(cfg))
            return 0
        init_distributed(args)
        run(cfg, workdir, argv)
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as e:  # noqa: BLE001 - NaN stop is a clean, named failure
        from lm.train import NonFiniteLoss
        if isinstance(e, NonFiniteLoss):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_NONFINITE
        raise
