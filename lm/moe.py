"""Mixture-of-experts MLP: softmax router, top-k, dropless grouped dispatch, aux losses.

    y_BxLxD = MoE(cfg, rngs)(x_BxLxD)                 # one sparse MLP layer (``ModelCfg.moe_*``)
    stats = collect(model)                            # per MoE layer, after a forward
    terms = aux_terms(stats, cfg)                     # load-balancing + router z-loss (xent)

Router as transformers computes it for Qwen3-MoE and Mixtral: ``logits = x @ W_r`` in the
compute dtype, ``p = softmax(logits)`` in fp32 over *all* experts, then top-k of ``p``,
renormalised to sum 1 when ``moe_norm_topk`` (Mixtral always, Qwen3 ``norm_topk_prob``); the
weights are cast to the compute dtype. Experts are SwiGLU: ``down(act(gate x) * up x)`` with
weights stacked ``[E, D, F]`` / ``[E, F, D]``.

Dispatch is dropless (no capacity factor, no dropped token): the ``T*k`` (token, slot) pairs are
sorted by expert and the three expert matmuls are grouped matmuls over the sorted rows
(``grouped_matmul``). ``model.moe_impl``:

- ``ragged_dot``: ``jax.lax.ragged_dot`` on the sorted rows (one group per expert). XLA has a
  native ragged dot on GPU and TPU. On CPU jax lowers it to a *dense* expansion (every row
  against every expert: ``k`` times the work of the one-hot reference), so it is not used there.
- ``tiled``: each expert's rows are padded to a multiple of a tile of ``m`` rows (at most
  ``ceil(T*k/m) + E`` tiles, a static bound), and each tile is multiplied by its expert's
  weights (a batched matmul over tiles with the tile's expert weights gathered). Exactly the
  same numbers as ragged_dot; about ``(T*k + E*m) / (T*E)`` of the dense work.
- ``auto`` (default): ``ragged_dot`` on GPU/TPU, ``tiled`` on CPU.

``dense_reference`` runs every expert on every token and masks by the combine weights: the test
oracle and the benchmark's baseline, never the model's path.

Aux losses (``aux_terms``): the load-balancing loss of transformers' ``load_balancing_loss_func``
(``E * sum_e f_e * P_e``, ``f_e`` the fraction of top-k selections that went to expert e and
``P_e`` the mean router probability, both pooled over layers and tokens, padding masked) and
the ST-MoE router z-loss (mean over layers and tokens of ``logsumexp(logits)**2``). Each MoE
layer leaves its sums on the module (``router_stats``, an ``nnx.Intermediate``: per-expert
selections, per-expert probabilities, the z sum and the token count), so the pooled loss is
exact for any number of layers; ``collect`` reads them after the forward (the remat scan hands
them back too, ``lm.remat``). Padding (segment id 0 of a packed batch) carries weight 0.

Sharding: expert weights carry the logical axis ``"expert"`` (``lm.sharding.RULES``: the
``fsdp`` mesh axis; why there) and ``"mlp"`` (``tensor``); the router is small and follows
``embed``. Under a mesh each batch shard dispatches its own tokens (``batch_groups``) and the
expert matmuls read the fsdp-sharded experts as FSDP reads any weight (XLA's partitioner
gathers them); there is no hand-written ``shard_map`` all-to-all of tokens to expert owners.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lm.layers import ACTS, param
from lm.sharding import AXES, BATCH_AXES, constrain

IMPLS = ("auto", "ragged_dot", "tiled")
MAX_TILE = 128


def route(x_TxD, w_DxE, top_k: int, norm_topk: bool):
    """(logits_TxE fp32, probs_TxE fp32, weights_TxK fp32, ids_TxK int32) as transformers'
    Qwen3-MoE / Mixtral routers: softmax over all experts first, then top-k, renormalised."""
    logits_TxE = (x_TxD @ w_DxE.astype(x_TxD.dtype)).astype(jnp.float32)
    probs_TxE = jax.nn.softmax(logits_TxE, axis=-1)
    w_TxK, ids_TxK = jax.lax.top_k(probs_TxE, top_k)
    if norm_topk:
        w_TxK = w_TxK / w_TxK.sum(-1, keepdims=True)
    return logits_TxE, probs_TxE, w_TxK, ids_TxK.astype(jnp.int32)


def resolve_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"model.moe_impl={impl!r} is not one of {IMPLS}")
    if impl == "auto":
        return "tiled" if jax.default_backend() == "cpu" else "ragged_dot"
    return impl


def tile_size(rows: int, n_experts: int) -> int:
    """Rows per tile: the mean group size rounded up to a power of two, in [8, MAX_TILE]."""
    mean = -(-rows // n_experts)
    return int(min(MAX_TILE, max(8, 1 << max(0, (mean - 1).bit_length()))))


def _layout(ids_TxK, n_experts: int, impl: str):
    """Where each (token, slot) pair goes in the expert-sorted row buffer.

    Returns (dest_M: row of pair m = t*k + j, n_rows, group_sizes_G, tile_expert or None):
    ``ragged_dot``: rows are the M pairs sorted by expert, groups the experts' counts.
    ``tiled``: each expert's rows start at a multiple of the tile ``m``; ``tile_expert`` is
    the expert of each of the ``ceil(M/m) + E`` tiles (unused tiles: zero rows)."""
    ids_M = ids_TxK.reshape(-1)
    M = ids_M.shape[0]
    counts_E = jnp.bincount(ids_M, length=n_experts).astype(jnp.int32)
    order_M = jnp.argsort(ids_M, stable=True)
    rank_M = jnp.zeros((M,), jnp.int32).at[order_M].set(jnp.arange(M, dtype=jnp.int32))
    start_E = jnp.cumsum(counts_E) - counts_E  # first sorted row of each expert
    if impl == "ragged_dot":
        return rank_M, M, counts_E, None
    m = tile_size(M, n_experts)
    n_tiles = -(-M // m) + n_experts
    padded_E = -(-counts_E // m) * m
    pstart_E = jnp.cumsum(padded_E) - padded_E
    dest_M = pstart_E[ids_M] + rank_M - start_E[ids_M]
    tile_start = jnp.arange(n_tiles, dtype=jnp.int32) * m
    tile_expert = jnp.searchsorted(jnp.cumsum(padded_E), tile_start, side="right")
    return dest_M, n_tiles * m, None, jnp.minimum(tile_expert, n_experts - 1).astype(jnp.int32)


def grouped_matmul(x_RxD, w_ExDxF, layout, impl: str):
    """Rows of ``x_RxD`` (in ``_layout`` order) times their expert's ``[D, F]`` weight."""
    _, _, group_sizes, tile_expert = layout
    if impl == "ragged_dot":
        return jax.lax.ragged_dot(x_RxD, w_ExDxF, group_sizes)
    n_tiles = tile_expert.shape[0]
    x_NxMxD = x_RxD.reshape(n_tiles, -1, x_RxD.shape[-1])
    y_NxMxF = jnp.einsum("nmd,ndf->nmf", x_NxMxD, w_ExDxF[tile_expert])
    return y_NxMxF.reshape(x_RxD.shape[0], -1)


def experts_dropless(x_TxD, w_TxK, ids_TxK, gate_ExDxF, up_ExDxF, down_ExFxD, act: str,
                     impl: str = "auto"):
    """Sum over slots of ``w * expert_id(x)``: tokens grouped by expert, grouped matmuls."""
    impl = resolve_impl(impl)
    T, D = x_TxD.shape
    K, E = ids_TxK.shape[1], gate_ExDxF.shape[0]
    layout = _layout(ids_TxK, E, impl)
    dest_M, n_rows = layout[0], layout[1]
    x_MxD = jnp.repeat(x_TxD, K, axis=0)  # pair m = t*K + j reads token t
    x_RxD = jnp.zeros((n_rows, D), x_TxD.dtype).at[dest_M].set(x_MxD, unique_indices=True)
    h_RxF = ACTS[act](grouped_matmul(x_RxD, gate_ExDxF, layout, impl)) * grouped_matmul(
        x_RxD, up_ExDxF, layout, impl)
    y_RxD = grouped_matmul(h_RxF, down_ExFxD, layout, impl)
    y_TxKxD = y_RxD[dest_M].reshape(T, K, D)
    return jnp.einsum("tkd,tk->td", y_TxKxD, w_TxK.astype(y_TxKxD.dtype))


def dense_reference(x_TxD, w_TxK, ids_TxK, gate_ExDxF, up_ExDxF, down_ExFxD, act: str):
    """Every expert on every token, masked by the combine weights (test oracle, baseline)."""
    E = gate_ExDxF.shape[0]
    c_TxE = jnp.einsum("tk,tke->te", w_TxK, jax.nn.one_hot(ids_TxK, E, dtype=w_TxK.dtype))
    h_TxExF = ACTS[act](jnp.einsum("td,edf->tef", x_TxD, gate_ExDxF)) * jnp.einsum(
        "td,edf->tef", x_TxD, up_ExDxF)
    y_TxExD = jnp.einsum("tef,efd->ted", h_TxExF, down_ExFxD)
    return jnp.einsum("ted,te->td", y_TxExD, c_TxE.astype(y_TxExD.dtype))


def router_stats(logits_TxE, probs_TxE, ids_TxK, weight_T):
    """One layer's sums [2E + 2]: selections per expert, probability per expert, the z sum
    (``logsumexp(logits)**2``) and the token count, each token weighted by ``weight_T``."""
    E = logits_TxE.shape[-1]
    sel_TxE = jax.nn.one_hot(ids_TxK, E, dtype=jnp.float32).sum(1)
    w_Tx1 = weight_T.astype(jnp.float32)[:, None]
    z_T = jax.nn.logsumexp(logits_TxE, axis=-1) ** 2
    return jnp.concatenate([jax.lax.stop_gradient(sel_TxE * w_Tx1).sum(0),
                            (probs_TxE * w_Tx1).sum(0), (z_T * w_Tx1[:, 0]).sum()[None],
                            w_Tx1.sum()[None]])


def pooled(stats: list) -> dict:
    """Layer sums pooled: ``sel_E``, ``prob_E``, ``z`` and ``n`` (tokens x layers)."""
    s = jnp.sum(jnp.stack(stats), 0)
    E = (s.shape[0] - 2) // 2
    return {"sel_E": s[:E], "prob_E": s[E:2 * E], "z": s[2 * E], "n": s[2 * E + 1]}


def load_balancing_loss(stats: list) -> jax.Array:
    """transformers' ``load_balancing_loss_func``: ``E * sum_e f_e * P_e`` pooled over layers."""
    p = pooled(stats)
    n = jnp.maximum(p["n"], 1.0)
    return p["sel_E"].shape[0] * jnp.sum((p["sel_E"] / n) * (p["prob_E"] / n))


def aux_terms(stats: list, aux_coef: float, z_coef: float, count):
    """(extra loss sum, aux pairs) for a loss whose ``aux["loss"]`` count is ``count``: the
    load-balancing and z terms enter the loss weighted by that count (so the train step's
    token-weighted mean over microbatches adds ``coef * term`` per microbatch), and the
    metrics ``moe_aux``, ``moe_z``, ``moe_load/{e}`` (share of selections, pooled) and
    ``moe_load_max`` (busiest expert's share times E)."""
    p = pooled(stats)
    lb = load_balancing_loss(stats)
    z = p["z"] / jnp.maximum(p["n"], 1.0)
    total_sel = p["sel_E"].sum()
    E = p["sel_E"].shape[0]
    aux = {"moe_aux": (lb * count, count), "moe_z": (z * count, count),
           "moe_load_max": (p["sel_E"].max() * E, total_sel)}
    aux.update({f"moe_load/{e}": (p["sel_E"][e], total_sel) for e in range(E)})
    return (aux_coef * lb + z_coef * z) * count, aux


class MoE(nnx.Module):
    """A sparse SwiGLU MLP layer: router ``[D, E]``, experts ``[E, D, F]`` x2 and ``[E, F, D]``."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        D, E, F, pdt = cfg.d_model, cfg.moe_experts, cfg.moe_d_ff_, cfg.param_dtype_
        self.cfg = cfg
        init, out_std = nnx.initializers.normal(0.02), 0.02 / (2 * cfg.n_layers) ** 0.5
        self.router_DxE = param(rngs, init, (D, E), ("embed", None), pdt)
        self.gate_ExDxF = param(rngs, init, (E, D, F), ("expert", None, "mlp"), pdt)
        self.up_ExDxF = param(rngs, init, (E, D, F), ("expert", None, "mlp"), pdt)
        self.down_ExFxD = param(rngs, nnx.initializers.normal(out_std), (E, F, D),
                                ("expert", "mlp", None), pdt)

    def __call__(self, x_BxLxD, segment_ids_BxL=None, impl: str | None = None,
                 record: bool = True):
        """``impl``: override ``model.moe_impl`` ("dense": the reference). ``record``: leave
        the router sums on the module (off when decoding with a KV cache: sampling runs the
        module inside ``vmap``/``scan`` traces where it may not be mutated, and no loss reads
        them there)."""
        cfg, dt = self.cfg, self.cfg.dtype_
        B, L, D = x_BxLxD.shape
        x_TxD = x_BxLxD.reshape(B * L, D)
        logits, probs, w_TxK, ids_TxK = route(x_TxD, self.router_DxE[...], cfg.moe_top_k,
                                              cfg.moe_norm_topk)
        weight_T = (jnp.ones((B * L,), jnp.float32) if segment_ids_BxL is None
                    else (segment_ids_BxL.reshape(-1) > 0).astype(jnp.float32))
        if record:
            self.router_stats = nnx.Intermediate(router_stats(logits, probs, ids_TxK, weight_T))
        ws = [self.gate_ExDxF[...].astype(dt), self.up_ExDxF[...].astype(dt),
              self.down_ExFxD[...].astype(dt)]
        if impl == "dense":
            y_TxD = dense_reference(x_TxD, w_TxK.astype(dt), ids_TxK, *ws, cfg.act_)
            return constrain(y_TxD.reshape(B, L, D), ("batch", "length", "act_embed"))
        G = batch_groups(B)
        run = lambda x, w, ids: experts_dropless(  # noqa: E731
            x, w, ids, *ws, cfg.act_, impl or cfg.moe_impl)
        if G == 1:
            y_TxD = run(x_TxD, w_TxK.astype(dt), ids_TxK)
        else:  # each batch shard dispatches its own tokens (same numbers, no global sort)
            grouped = [constrain(a.reshape((G, -1) + a.shape[1:]), ("batch",) + (None,) * a.ndim)
                       for a in (x_TxD, w_TxK.astype(dt), ids_TxK)]
            y_TxD = jax.vmap(run)(*grouped).reshape(B * L, D)
        return constrain(y_TxD.reshape(B, L, D), ("batch", "length", "act_embed"))


def batch_groups(batch: int) -> int:
    """How many batch shards the ambient mesh (``lm.train`` traces under it) splits the rows
    into, when that divides ``batch``; 1 outside a mesh. The dispatch then runs per shard
    (``vmap`` over groups pinned to the batch axes): each device sorts and groups only its own
    tokens, where a global sort would make every device redo the whole batch's dispatch."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or tuple(mesh.axis_names) != AXES:
        return 1
    g = math.prod(mesh.shape[a] for a in BATCH_AXES)
    return g if g > 1 and batch % g == 0 else 1


def collect(model) -> list:
    """The ``router_stats`` of every MoE layer of ``model`` after its last forward (a list of
    [2E + 2] arrays; empty for a dense model)."""
    out = []
    for block in model.blocks:
        moe = getattr(block, "moe", None)
        if moe is not None and hasattr(moe, "router_stats"):
            out.append(moe.router_stats[...])
    return out
