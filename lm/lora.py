"""LoRA adapters on the GPT's projections (``model.lora``), with PEFT's math and initialisation.

    --set model.lora.rank=16 model.lora.alpha=32 model.lora.targets=q,k,v,o,gate,up,down

A targeted projection ``y = x W`` becomes ``y = x W + s · (dropout(x) A) B`` with
``s = alpha / rank`` (``rslora``: ``alpha / sqrt(rank)``), ``A`` Kaiming-uniform as PEFT draws it
(``kaiming_uniform_(a=sqrt(5))`` on ``[r, in]``: U(-1/sqrt(in), 1/sqrt(in))) and ``B = 0``, so
a fresh adapter leaves the model's output bit-identical. Targets are PEFT's Llama module names:
``q k v o`` (attention projections; our fused ``qkv_Dx3xNxH`` has one adapter per slice) and
``gate up down`` (MLP; ``gate`` exists only for ``mlp="swiglu"``: as PEFT does with a module
name that a model lacks, a known target the architecture does not have is skipped).

Where the adapters live: ``Adapter`` submodules ``lora_<target>`` of each block's ``attn`` /
``mlp``, attached by ``attach`` *after* every base parameter (and the DLR router) is created, so
the base draws the same random numbers with and without LoRA. Each adapter's params carry
logical names that follow its weight: ``A``'s input dims are named like ``W``'s input dims, ``B``'s
output dims like ``W``'s output dims (``lm.sharding.RULES`` then shards them alike); the rank dim
is replicated. They are ``nnx.LoRAParam`` (a subclass of ``nnx.Param``: ``nnx.split`` takes them
with the base, notebooks can filter them).

Training (``lm.train``/``lm.setup``): the train state keeps the whole params tree, but the
gradient is taken only with respect to ``trainable(path)`` leaves (the adapters, and a fresh DLR
router when there is one); the frozen base enters the loss as a closed-over input, so the
backward computes activation gradients only, and the optimizer state is built over the
adapters alone. ``disabled(params)`` is the base with adapters switched off (every ``B`` zeroed:
new arrays of rank size only; the base leaves are the same buffers): the reference of the DPO
family, TDPO and the RL loop's KL terms. Checkpoints store the adapters (``lm.checkpoint``
drops the frozen leaves; the base is rebuilt from ``model.init_from`` or the seed on resume).

Why not ``qwix`` (evaluated: Google's JAX LoRA/QLoRA library, used by Tunix): qwix attaches
``nnx.LoRAParam``s by intercepting a module's ``dot_general``/``einsum`` calls during a traced
call and matches modules by path regex. Here one module computes q, k and v from one fused
parameter (``qkv_Dx3xNxH``, 2-D dots of its slices), gate and up from one ``up_DxCxF``, so a
per-target adapter (what PEFT checkpoints hold and exchange) is not a per-module interception;
its adapters would also lack this codebase's logical axis names (sharding rules) and the
Tree-Mode params dict would change shape after the first call. Explicit adapters are ~150 lines.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from lm import quant
from lm.sharding import ConfigError

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
ATTN_TARGETS, MLP_TARGETS = ("q", "k", "v", "o"), ("gate", "up", "down")
PREFIX = "lora_"  # adapter submodule attribute names: lora_q, lora_gate, ...
BASE_DTYPES = ("", "int8", "nf4")


@dataclasses.dataclass(frozen=True)
class LoRACfg:
    rank: int = 0  # 0 = off: full fine-tuning, today's program
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    dropout: float = 0.0  # on the adapter branch's input only (PEFT lora_dropout)
    rslora: bool = False  # scale alpha / sqrt(rank) instead of alpha / rank
    base_dtype: str = ""  # QLoRA: "int8" | "nf4" keeps the frozen base quantized (lm.quant)
    init_from: str = ""  # a PEFT adapter dir to start from (its r/alpha/targets are taken;
    # needs model.init_from = the adapter's base; lm.pretrained.resolve, lm.hf.peft)

    def __post_init__(self):
        if self.rank < 0:
            raise ConfigError(f"model.lora.rank={self.rank} must be >= 0 (0 = off)")
        if not self.alpha > 0:
            raise ConfigError(f"model.lora.alpha={self.alpha} must be > 0")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ConfigError(f"model.lora.targets={','.join(self.targets)}: unknown target(s) "
                              f"{bad or '(none given)'}; allowed: {','.join(TARGETS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout={self.dropout} must be in [0, 1)")
        if self.base_dtype not in BASE_DTYPES:
            raise ConfigError(f"model.lora.base_dtype={self.base_dtype!r} is not one of "
                              f"{BASE_DTYPES}")
        if self.base_dtype and self.rank == 0:
            raise ConfigError(f"model.lora.base_dtype={self.base_dtype} quantizes the frozen "
                              "base of a LoRA run: it needs model.lora.rank > 0")

    @property
    def on(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


class Adapter(nnx.Module):
    """``s · (dropout(x) A) B`` for a weight of input dims ``in_shape`` and output dims
    ``out_shape``: ``a`` is ``in_shape + (r,)``, ``b`` is ``(r,) + out_shape``."""

    def __init__(self, in_shape, in_names, out_shape, out_names, lcfg: LoRACfg, param_dtype,
                 a_IxR: jax.Array):
        """``a_IxR``: A's initial value (``kaiming_a``), ``[prod(in_shape), rank]`` fp32."""
        r = lcfg.rank
        self.a = nnx.LoRAParam(a_IxR.reshape(tuple(in_shape) + (r,)).astype(param_dtype),
                               out_sharding=tuple(in_names) + (None,), eager_sharding=False)
        self.b = nnx.LoRAParam(jnp.zeros((r,) + tuple(out_shape), param_dtype),
                               out_sharding=(None,) + tuple(out_names), eager_sharding=False)
        self.scale, self.dropout = lcfg.scale, lcfg.dropout

    def __call__(self, x_MxI: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Delta [M, prod(out_shape)] for input rows ``x_MxI`` (inputs flattened)."""
        from lm.layers import dropout
        r = self.b.shape[0]
        a_IxR = self.a[...].astype(x_MxI.dtype).reshape(-1, r)
        b_RxO = self.b[...].astype(x_MxI.dtype).reshape(r, -1)
        h_MxR = dropout(x_MxI, self.dropout, rng) @ a_IxR
        return (h_MxR @ b_RxO) * jnp.asarray(self.scale, x_MxI.dtype)


def delta(module, target: str, x_MxI, rng=None):
    """The adapter ``lora_<target>`` of ``module`` applied to ``x_MxI``, or None without one.
    ``rng`` (a block's LoRA dropout key) is folded with the target's index."""
    ad = getattr(module, PREFIX + target, None)
    if ad is None:
        return None
    key = None if rng is None else jax.random.fold_in(rng, TARGETS.index(target))
    return ad(x_MxI, key)


def deltas(module, targets, x_MxI, rng=None) -> list:
    """``[delta(module, t, x_MxI, rng) for t in targets]`` for targets that read the same input
    (q/k/v, gate/up). Without dropout (rate 0, or no key) the adapters' A matrices are applied as
    one ``x [A_1 .. A_n]`` matmul: one [M, I] x [I, n*r] dot instead of n thin ones (fewer and
    fatter dots, forward and backward; the same sums per column)."""
    ads = [getattr(module, PREFIX + t, None) for t in targets]
    live = [a for a in ads if a is not None]
    if len(live) < 2 or (rng is not None and live[0].dropout > 0.0):
        return [delta(module, t, x_MxI, rng) for t in targets]
    r, dt = live[0].b.shape[0], x_MxI.dtype
    a_IxNR = jnp.concatenate([a.a[...].astype(dt).reshape(-1, r) for a in live], axis=1)
    h_MxNR = x_MxI @ a_IxNR
    out, i = [], 0
    for a in ads:
        if a is None:
            out.append(None)
            continue
        b_RxO = a.b[...].astype(dt).reshape(r, -1)
        out.append((h_MxNR[:, i * r:(i + 1) * r] @ b_RxO) * jnp.asarray(a.scale, dt))
        i += 1
    return out


def shapes_of(cfg, target: str):
    """(in_shape, in_names, out_shape, out_names) of ``target``'s weight in ``GPT(cfg)``, or
    None when the architecture has no such weight (``gate`` of a non-gated MLP)."""
    D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim_, cfg.d_ff
    kv_name = "heads" if K == N else "kv_heads"
    return {"q": ((D,), ("embed",), (N, H), ("heads", "kv")),
            "k": ((D,), ("embed",), (K, H), (kv_name, "kv")),
            "v": ((D,), ("embed",), (K, H), (kv_name, "kv")),
            "o": ((N, H), ("heads", "kv"), (D,), ("embed",)),
            "gate": ((D,), ("embed",), (F,), ("mlp",)) if cfg.mlp == "swiglu" else None,
            "up": ((D,), ("embed",), (F,), ("mlp",)),
            "down": ((F,), ("mlp",), (D,), ("embed",))}[target]


def kaiming_a(keys: jax.Array, fan_in: int, rank: int) -> jax.Array:
    """``[len(keys), fan_in, rank]`` fp32 draws of U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PEFT's
    ``kaiming_uniform_(a=sqrt(5))`` on ``[r, fan_in]``), one per key: vmapped, each slice is
    bit-identical to ``jax.random.uniform(key, (fan_in, rank), ...)`` drawn alone."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.vmap(lambda k: jax.random.uniform(k, (fan_in, rank), jnp.float32, -bound,
                                                 bound))(keys)


def attach(gpt, cfg, rngs: nnx.Rngs):
    """Add ``lora_<target>`` adapters to every block of ``gpt`` (call after all base params).

    Adapter ``n`` (blocks in order, targets in ``lora.targets`` order) draws its A from the key
    ``rngs.params()`` would give on its ``n``-th call (``lm.layers.next_keys``), so the values
    are those of one ``rngs.params()`` call per adapter. The draws are vmapped, one per target
    over the blocks: a threefry per adapter made a large XLA compile (with the per-call counter
    writes, ~70 s for a 30-layer, 7-target init)."""
    lc = cfg.lora
    plan = [(block, t, spec) for block in gpt.blocks for t in lc.targets
            if (spec := shapes_of(cfg, t)) is not None]
    if not plan:
        return
    from lm.layers import next_keys
    keys = next_keys(rngs, len(plan))
    a_init = {}  # target -> [n_blocks, fan_in, r]
    for t, spec in dict((t, spec) for _, t, spec in plan).items():  # in order: same program
        idx = jnp.array([n for n, (_, tt, _) in enumerate(plan) if tt == t])
        a_init[t] = iter(kaiming_a(keys[idx], math.prod(spec[0]), lc.rank))
    for block, t, spec in plan:
        owner = block.attn if t in ATTN_TARGETS else block.mlp
        # fp32 adapters under a bf16/fp16 base (PEFT's autocast_adapter_dtype default)
        setattr(owner, PREFIX + t, Adapter(*spec, lc, jnp.float32, next(a_init[t])))


# ----------------------------------------------------------------------------- params trees


def is_adapter(path) -> bool:
    return any(str(k).startswith(PREFIX) for k in path)


def trainable_fn(model_cfg):
    """The predicate on param paths (tuples of keys) of what trains, or None when everything
    does (LoRA off: full fine-tuning, today's program)."""
    if not model_cfg.lora.on:
        return None
    return lambda path: is_adapter(path) or (len(path) > 0 and str(path[0]) == "dlr")


def frozen_state_fn(model_cfg):
    """Predicate on train-state paths (``("params", "block_0", ...)``, also nested as the RL
    loop's ``("policy", "params", ...)``) of the frozen base leaves a checkpoint leaves out;
    None when LoRA is off."""
    trainable = trainable_fn(model_cfg)
    if trainable is None:
        return None

    def frozen(path) -> bool:
        keys = [str(k) for k in path]
        if "params" not in keys:
            return False
        return not trainable(tuple(keys[keys.index("params") + 1:]))
    return frozen


def trainable_subset(tree: dict, model_cfg) -> dict:
    """The part of a params-shaped tree (params, shapes, shardings) the optimizer covers."""
    trainable = trainable_fn(model_cfg)
    return tree if trainable is None else partition(tree, trainable)[0]


def on_base(params: dict, base: dict, shardings: dict, model_cfg) -> dict:
    """``params`` (a LoRA model's: base + adapters) with its base replaced by ``base`` (a plain
    params dict of the same model, e.g. an SFT result; adapters it carries are merged in first;
    quantized for QLoRA), placed on ``shardings``: the experiments' "start the policy from these
    weights" under LoRA, keeping the fresh adapters."""
    if adapters(base):
        base = merged(base, model_cfg)
    not_adapter = lambda p: not is_adapter(p)  # noqa: E731
    base = partition(base, not_adapter)[0]
    kind = model_cfg.lora.base_dtype
    if kind and not any(quant.is_scale(p) for p in _flat(base)):
        base = quant.quantize_params(base, kind)
    b_shard = partition(shardings, not_adapter)[0]
    flat_b, flat_s = _flat(base), _flat(b_shard)
    placed = {p: jax.device_put(jnp.asarray(flat_b[p]), s) for p, s in flat_s.items()}
    return combine(_nest(placed), adapters(params))


# nested params dicts <-> {path tuple: leaf} (empty dicts dropped), as lm.hf.checkpoint uses
_flat, _nest = flatten_dict, unflatten_dict


def partition(params: dict, trainable) -> tuple[dict, dict]:
    """(trainable subtree, frozen subtree) of a pure params dict (nested dicts of leaves)."""
    flat = _flat(params)
    return (_nest({p: v for p, v in flat.items() if trainable(p)}),
            _nest({p: v for p, v in flat.items() if not trainable(p)}))


def combine(a: dict, b: dict) -> dict:
    """The union of two disjoint params subtrees."""
    return _nest({**_flat(a), **_flat(b)})


def disabled(params: dict) -> dict:
    """``params`` with every adapter switched off (its ``b`` zeroed): the frozen base's
    function, sharing the base's buffers (the reference of preference / RL losses)."""
    flat = _flat(params)
    return _nest({p: (jnp.zeros_like(v) if is_adapter(p) and p[-1] == "b" else v)
                  for p, v in flat.items()})


def adapters(params: dict) -> dict:
    return _nest({p: v for p, v in _flat(params).items() if is_adapter(p)})


def merged(params: dict, cfg) -> dict:
    """The base params with each adapter folded into its weight (``W + s · A B``, fp32 math,
    cast back to the weight's dtype) and the adapters removed: the plain model of ``cfg`` with
    ``model.lora`` off computes the same function."""
    import numpy as np
    if cfg.lora.base_dtype:  # QLoRA: merge into the dequantized base
        params = quant.dequantize_params(params, cfg.lora.base_dtype, cfg.param_dtype_)
    flat = _flat(jax.device_get(params))
    out = {p: v for p, v in flat.items() if not is_adapter(p)}
    s = cfg.lora.scale
    for p, v in flat.items():
        if not is_adapter(p) or p[-1] != "a":
            continue
        owner, t = p[:-2], p[-2][len(PREFIX):]
        a = np.asarray(v, np.float32)
        b = np.asarray(flat[p[:-1] + ("b",)], np.float32)
        r = b.shape[0]
        d_IxO = (a.reshape(-1, r) @ b.reshape(r, -1)) * s
        wpath, sl = weight_slot(cfg, owner, t)
        w = np.array(out[wpath], np.float32)
        view = w[sl]
        w[sl] = view + d_IxO.reshape(view.shape)
        out[wpath] = w.astype(np.asarray(flat[wpath]).dtype)
    return _nest(out)


def weight_slot(cfg, owner: tuple, target: str):
    """(path of the base weight that ``target`` adapts, index of its slice in that weight)."""
    fused = cfg.kv_heads == cfg.n_heads
    if target in ("q", "k", "v"):
        c = "qkv".index(target)
        if fused:
            return owner + ("qkv_Dx3xNxH",), (slice(None), c)
        if target == "q":
            return owner + ("q_DxNxH",), (slice(None),)
        return owner + ("kv_Dx2xKxH",), (slice(None), c - 1)
    if target == "o":
        return owner + ("out_NxHxD",), (slice(None),)
    if target == "down":
        return owner + ("down_FxD",), (slice(None),)
    c = 0 if target == "gate" or cfg.mlp != "swiglu" else 1
    return owner + ("up_DxCxF",), (slice(None), c)
