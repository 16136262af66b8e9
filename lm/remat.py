"""Rematerialisation of transformer blocks (``model.remat``), as MaxText's ``remat_policy``.

Each block's forward is wrapped in ``jax.checkpoint`` with a ``jax.checkpoint_policies`` policy
deciding which of its intermediates the backward pass may keep; the rest is recomputed from
the block's input (always kept):

=================  ==============================================================================
``none``           no checkpoint: every intermediate is kept (default; today's program)
``full``           ``nothing_saveable``: only each block's input survives; all is recomputed
``dots``           ``checkpoint_dots``: matmul outputs kept, elementwise work recomputed
``dots_no_batch``  ``checkpoint_dots_with_no_batch_dims``: projection matmuls kept, attention
                   score/value einsums (batched dots) recomputed
``attn_out``       ``save_only_these_names("attn_out")``: only the attention output (tagged with
                   ``checkpoint_name`` in ``lm.layers``) is kept
=================  ==============================================================================

Why a scan: XLA:CPU drops the optimisation barriers ``jax.checkpoint`` places and schedules the
recomputation straight after the forward pass, so per-block checkpoints of the unrolled stack
save nothing there (measured: the compiled step's temp bytes were identical, or larger). Inside
the backward ``while`` loop of a ``lax.scan`` the recomputation cannot be hoisted, on any
backend. So a remat policy runs the (identical) blocks as one ``lax.scan`` over their stacked
states with the checkpointed block as the body, as MaxText does with ``scan_layers``; ``none``
keeps today's unrolled program. Tree Mode (no ``nnx.remat``/``nnx.scan``): each block's state is
taken with ``nnx.state`` inside the trace, stacked, and the body is the pure
``merge(graphdef, state)(x, ...)``, so the parameters are explicit inputs of the checkpoint.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict

POLICIES = ("none", "full", "dots", "dots_no_batch", "attn_out")
ATTN_OUT = "attn_out"  # the checkpoint_name of the attention output


def policy(name: str):
    """The ``jax.checkpoint`` policy of ``model.remat=name`` (not for ``none``)."""
    cp = jax.checkpoint_policies
    return {"full": cp.nothing_saveable, "dots": cp.checkpoint_dots,
            "dots_no_batch": cp.checkpoint_dots_with_no_batch_dims,
            "attn_out": cp.save_only_these_names(ATTN_OUT)}[name]


def scan_blocks(blocks, remat: str, x_BxLxD, pos_BxL, rngs, segment_ids_BxL=None,
                post=lambda x: x, first: int = 0) -> list:
    """Run ``blocks`` (same structure) in order as one checkpointed ``lax.scan``; ``rngs`` one
    dropout key (or None) per block; ``post`` is applied to each block's output (a sharding
    constraint). Each block gets its layer index (``first`` + its offset) as scanned data, so
    per-layer windows and rotary tables are read by index, never branched on in Python.
    Returns the stream after each block, as the unrolled loop does."""
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in blocks])
    keys = None if rngs[0] is None else jnp.stack(rngs)
    layers = first + jnp.arange(len(blocks), dtype=jnp.int32)

    def body(x_BxLxD, xs):
        state, key, layer = xs
        block = nnx.merge(graphdef, state)
        y_BxLxD, _ = block(x_BxLxD, pos_BxL, key, None, None, segment_ids_BxL, layer=layer)
        y_BxLxD = post(y_BxLxD)
        # what a block leaves as nnx.Intermediate (MoE router sums, lm.moe) goes out per layer
        return y_BxLxD, (y_BxLxD, nnx.to_pure_dict(nnx.pop(block, nnx.Intermediate)))

    x_BxLxD, (h_NxBxLxD, inter) = jax.lax.scan(jax.checkpoint(body, policy=policy(remat)),
                                               x_BxLxD, (stacked, keys, layers))
    for path, v_N in flatten_dict(inter).items():  # back on the blocks, as unrolled blocks
        for i, b in enumerate(blocks):
            owner = functools.reduce(getattr, path[:-1], b)
            setattr(owner, path[-1], nnx.Intermediate(v_N[i]))
    return [h_NxBxLxD[i] for i in range(len(blocks) - 1)] + [x_BxLxD]
