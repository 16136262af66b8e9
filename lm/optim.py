"""AdamW with warmup + cosine/linear/constant schedule, global-norm clipping, a weight-decay mask
(no decay on norms, biases, embeddings by default) and an optional frozen-parameter mask."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import optax

from lm.sharding import ConfigError

NO_DECAY = ("scale", "bias")  # never decayed
EMBEDDINGS = ("embed_VxD", "pos_LxD")  # decayed only with decay_embeddings=True


@dataclasses.dataclass(frozen=True)
class OptCfg:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup: int = 20
    schedule: str = "cosine"  # "cosine" | "linear" | "constant"
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    clip: float = 1.0  # global-norm clip; 0 disables
    freeze: str = ""  # regex over "a/b/c" param paths; matches get no update

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"opt.schedule={self.schedule!r} is not one of "
                              "('cosine', 'linear', 'constant')")
        for key, ok, allowed in (
                ("lr", self.lr > 0, "> 0"), ("eps", self.eps > 0, "> 0"),
                ("b1", 0 <= self.b1 < 1, "in [0, 1)"), ("b2", 0 <= self.b2 < 1, "in [0, 1)"),
                ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
                ("warmup", self.warmup >= 0, ">= 0"),
                ("weight_decay", self.weight_decay >= 0, ">= 0"),
                ("clip", self.clip >= 0, ">= 0 (0 disables clipping)")):
            if not (ok and math.isfinite(getattr(self, key))):  # nan fails every comparison
                raise ConfigError(f"opt.{key}={getattr(self, key)!r} must be finite and {allowed}")


def schedule(cfg: OptCfg, total_steps: int) -> optax.Schedule:
    warm = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup, 1))
    rest = max(total_steps - cfg.warmup, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(cfg.lr, end, rest)
    else:
        main = optax.constant_schedule(cfg.lr)
    return optax.join_schedules([warm, main], [cfg.warmup])


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def decay_mask(params, cfg: OptCfg):
    skip = NO_DECAY + (() if cfg.decay_embeddings else EMBEDDINGS)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x.ndim >= 2 and path_str(p).split("/")[-1] not in skip, params)


def frozen_mask(params, pattern: str):
    rx = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(rx.search(path_str(p))), params)


def make_optimizer(cfg: OptCfg, params, total_steps: int):
    """Returns ``(tx, lr_schedule)``."""
    lr = schedule(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.clip)] if cfg.clip > 0 else []
    parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask(params, cfg)))
    tx = optax.chain(*parts)
    if cfg.freeze:
        mask = frozen_mask(params, cfg.freeze)
        if not any(jax.tree.leaves(mask)):
            raise ConfigError(f"opt.freeze={cfg.freeze!r} matches no parameter path")
        labels = jax.tree.map(lambda m: "frozen" if m else "train", mask)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, lr
