"""Run configs: frozen dataclasses, ``--set a.b=c`` overrides with type checking.

``Config`` is the root every loop in the library (``lm.setup.build``, ``rl.loop``, ``lm.probe``)
and every experiment uses (experiments may subclass it to add sections, e.g.
``ib: IBCfg``). Overrides are parsed against the dataclass field types; an unknown key or a value
of the wrong type raises ``ConfigError`` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing

from lm.data import DataCfg
from lm.ib import IBCfg
from lm.model import ModelCfg
from lm.optim import OptCfg
from lm.sharding import ConfigError, MeshCfg
from lm.train import TrainCfg


@dataclasses.dataclass(frozen=True)
class RunCfg:
    name: str = "run"
    overwrite: bool = False  # allow reusing a run dir whose config differs (wipes it)
    sample_tokens: int = 200  # tokens generated at the end of a run (0 = none)
    sample_prompt: str = "And God said"
    progress: bool = True
    max_to_keep: int = 3
    dry_run_devices: int = 0  # devices of the target mesh for --dry-run (0 = product of mesh)
    dry_run_platform: str = ""  # lowering platform for --dry-run ("tpu", "cuda", "cpu"; "" = cpu)
    # record into the repo's results/ from a git tree with uncommitted changes (the provenance
    # then carries the sha256 of `git diff HEAD`); see lm.metrics.check_clean
    allow_dirty: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelCfg = ModelCfg()
    opt: OptCfg = OptCfg()
    data: DataCfg = DataCfg()
    mesh: MeshCfg = MeshCfg()
    train: TrainCfg = TrainCfg()
    run: RunCfg = RunCfg()
    ib: IBCfg = IBCfg()  # IBLM / GAPT knobs (lm.ib); read only by those losses


def _fields(dc) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(dc)}


def _coerce(key: str, raw: str, typ):
    """Parse ``raw`` into ``typ`` (bool, int, float, str, tuple[str, ...], Optional)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        return _coerce(key, raw, args[0])
    if typ is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={raw!r}: expected a bool (true/false)")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected an int") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected a float") from None
    if origin is tuple:
        (elem, *_) = typing.get_args(typ) or (str,)
        items = [s for s in raw.split(",") if s] if not raw.startswith("[") else json.loads(raw)
        return tuple(_coerce(key, str(s), elem) for s in items)
    if typ is str:
        return raw
    raise ConfigError(f"{key}: fields of type {typ} cannot be set from the command line")


# short override keys: ``--set dlr.layer=2`` sets ``model.dlr.layer`` (lm/routing.py)
ALIASES = {"dlr": "model.dlr"}


def override(cfg, assignments: list[str]):
    """Apply ``["a.b=c", ...]`` to a frozen dataclass tree, returning a new one."""
    for a in assignments:
        if "=" not in a:
            raise ConfigError(f"--set {a!r}: expected key=value, e.g. opt.lr=3e-4")
        key, raw = a.split("=", 1)
        key = key.strip()
        head = key.split(".", 1)[0]
        if head in ALIASES and "." in key and head not in _fields(cfg):  # dlr.x -> model.dlr.x
            key = ALIASES[head] + key[len(head):]
        cfg = _set(cfg, key.split("."), raw.strip(), key)
    return cfg


def _set(node, path: list[str], raw: str, full: str):
    hints = typing.get_type_hints(type(node))
    fields = _fields(node)
    name = path[0]
    if name not in fields:
        prefix = full[: len(full) - len(".".join(path))]
        raise ConfigError(f"unknown config key {full!r}; allowed keys under "
                          f"{prefix.rstrip('.') or 'the root'}: {sorted(fields)}")
    cur = getattr(node, name)
    if len(path) == 1:
        if dataclasses.is_dataclass(cur):
            raise ConfigError(f"{full!r} is a section; set one of its keys: "
                              f"{sorted(_fields(cur))}")
        value = _coerce(full, raw, hints[name])
    else:
        if not dataclasses.is_dataclass(cur):
            raise ConfigError(f"unknown config key {full!r}: {name!r} is not a section")
        value = _set(cur, path[1:], raw, full)
    try:
        return dataclasses.replace(node, **{name: value})
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flat_keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out += flat_keys(v, prefix + f.name + ".") if dataclasses.is_dataclass(v) else [
            prefix + f.name]
    return out
