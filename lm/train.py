"""One jitted train step for any pure loss, an eval step, and the one-step-late train loop.

``make_train_step(loss_fn, tx, ...)`` knows nothing of the loss: it splits the global batch into
``microbatches`` strided slices (each slice still spans every data shard), scans over them,
accumulates gradients weighted by each slice's ``aux["loss"]`` count (so the result equals the
full-batch token mean exactly) and sums every ``(sum, count)`` metric. It is ``jax.jit`` with
in/out shardings and the train state donated.

Train state: ``{"params", "opt_state", "step", "rng", "loss_state"}`` (a plain dict; checkpointed
whole). The per-step key is ``fold_in(rng, step)`` so a resumed run draws the same randomness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lm import lora
from lm.perf import perf_metrics
from lm.sharding import BATCH_AXES, ConfigError


def mesh_context(mesh):
    """Trace under ``mesh`` so the model's ``lm.sharding.constrain`` calls take effect."""
    if mesh is None:
        return contextlib.nullcontext()
    am = mesh if isinstance(mesh, jax.sharding.AbstractMesh) else mesh.abstract_mesh
    return jax.sharding.use_abstract_mesh(am)


@dataclasses.dataclass(frozen=True)
class TrainCfg:
    loss: str = "xent"
    steps: int = 300
    batch_size: int = 32  # global, in sequences
    seq_len: int = 128
    microbatches: int = 1
    z_loss: float = 0.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    ckpt_every: int = 100


def init_state(params, tx, seed: int, loss_state=None, trainable=None) -> dict:
    """``trainable`` (``lm.lora.trainable_fn``): the optimizer state covers those leaves only."""
    opt_params = params if trainable is None else lora.partition(params, trainable)[0]
    return {"params": params, "opt_state": tx.init(opt_params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed)),
            "loss_state": {} if loss_state is None else loss_state}


def state_shardings(state_shapes, param_shardings, mesh, opt_param_shardings=None):
    """Shardings for the train state: optimizer moments (and a params-shaped loss-state subtree,
    e.g. a frozen reference model) follow their params, the rest is replicated.
    ``opt_param_shardings``: those of the params the optimizer covers, when not all (LoRA)."""
    replicated = NamedSharding(mesh, P())

    def follow(shardings):
        flat, pdef = jax.tree.leaves(shardings), jax.tree.structure(shardings)

        def for_opt(subtree):
            if jax.tree.structure(subtree) == pdef:
                return jax.tree.unflatten(pdef, flat)
            return jax.tree.map(lambda _: replicated, subtree)
        return for_opt, (lambda x: jax.tree.structure(x) == pdef)

    for_opt, pdef_leaf = follow(param_shardings)
    opt_fn, opt_leaf = (for_opt, pdef_leaf) if opt_param_shardings is None else follow(
        opt_param_shardings)
    opt = jax.tree.map(opt_fn, state_shapes["opt_state"], is_leaf=opt_leaf)
    return {"params": param_shardings, "opt_state": opt, "step": replicated, "rng": replicated,
            # a params-shaped subtree of the loss state (a frozen reference model) is sharded
            # like the params; everything else in it is replicated
            "loss_state": jax.tree.map(for_opt, state_shapes["loss_state"], is_leaf=pdef_leaf)}


def _split_micro(x, m: int):
    """[B, ...] -> [M, B/M, ...] with slice i = rows i, i+M, ... (spans every data shard)."""
    b = x.shape[0]
    x = x.reshape((b // m, m) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)


def _tree_norm(tree):
    return optax.tree.norm(tree)


def with_reference(loss_state, params, trainable):
    """The loss state a loss sees: with LoRA (``trainable`` set) it carries
    ``ref_params`` = the base with adapters switched off (``lm.lora.disabled``), built in the
    trace from the same buffers; a loss that does not read it costs nothing (dead code)."""
    if trainable is None:
        return loss_state
    return {**loss_state, "ref_params": lora.disabled(params)}


def make_train_step(loss_fn: Callable, tx, *, model, cfg, mesh=None, state_sharding=None,
                    microbatches: int = 1, lr_fn=None, donate: bool = True, jit: bool = True,
                    trainable=None):
    """Returns ``step(state, batch) -> (state, metrics)``; metrics are device scalars.

    ``trainable`` (``lm.lora.trainable_fn``; None = every param): the gradient is taken with
    respect to those leaves only, the rest (the frozen base) enters the loss as a constant of
    the differentiated function, so no gradient is computed for it; the optimizer updates the
    trainable leaves and ``grad_norm``/``param_norm``/``update_norm`` are theirs."""

    def grads_and_aux(params, batch, rng, loss_state):
        ls_in = with_reference(loss_state, params, trainable)
        if ls_in:
            batch = {**batch, "loss_state": ls_in}
        if trainable is None:
            wrt, rebuild = params, lambda p: p
        else:
            wrt, frozen = lora.partition(params, trainable)
            rebuild = lambda p: lora.combine(p, frozen)  # noqa: E731

        def f(p):
            loss, aux = loss_fn(rebuild(p), batch, model=model, rng=rng, cfg=cfg)
            return loss, aux
        (loss, aux), g = jax.value_and_grad(f, has_aux=True)(wrt)
        new_ls = aux.pop("loss_state", loss_state)
        w = jax.lax.stop_gradient(aux["loss"][1]) if "loss" in aux else jnp.float32(1.0)
        return jax.tree.map(lambda x: x * w, g), w, aux, new_ls

    def step(state, batch):
        with mesh_context(mesh):
            return _step(state, batch)

    def _step(state, batch):
        params, loss_state = state["params"], state["loss_state"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        if microbatches == 1:
            g, w, aux, loss_state = grads_and_aux(params, batch, rng, loss_state)
        else:
            mb = jax.tree.map(lambda x: _split_micro(x, microbatches), batch)
            if mesh is not None:
                mb = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
                    x, NamedSharding(mesh, P(None, BATCH_AXES))), mb)

            def body(carry, i):
                g_acc, w_acc, aux_acc, ls = carry
                b = jax.tree.map(lambda x: x[i], mb)
                g, w, aux, ls = grads_and_aux(params, b, jax.random.fold_in(rng, i), ls)
                aux_acc = jax.tree.map(jnp.add, aux_acc, aux)
                return (jax.tree.map(jnp.add, g_acc, g), w_acc + w, aux_acc, ls), None

            b0 = jax.tree.map(lambda x: x[0], mb)
            aux_shape = jax.eval_shape(lambda: grads_and_aux(params, b0, rng, loss_state)[2])
            zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
            wrt = params if trainable is None else lora.partition(params, trainable)[0]
            init = (zeros(jax.eval_shape(lambda: wrt)), jnp.float32(0.0), zeros(aux_shape),
                    loss_state)
            (g, w, aux, loss_state), _ = jax.lax.scan(body, init, jnp.arange(microbatches))
        grads = jax.tree.map(lambda x: x / jnp.maximum(w, 1e-9), g)
        if trainable is None:
            updates, opt_state = tx.update(grads, state["opt_state"], params)
            new_params = optax.apply_updates(params, updates)
            new_train = new_params
        else:
            train_p, frozen = lora.partition(params, trainable)
            updates, opt_state = tx.update(grads, state["opt_state"], train_p)
            new_train = optax.apply_updates(train_p, updates)
            new_params = lora.combine(new_train, frozen)
        metrics = dict(aux)
        metrics["grad_norm"] = _tree_norm(grads)
        metrics["param_norm"] = _tree_norm(new_train)
        metrics["update_norm"] = _tree_norm(updates)
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state["step"])
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1,
                     "rng": state["rng"], "loss_state": loss_state}
        return new_state, metrics

    if not jit:
        return step
    if state_sharding is not None and mesh is not None:
        batch_s = NamedSharding(mesh, P(BATCH_AXES))
        return jax.jit(step, in_shardings=(state_sharding, batch_s),
                       out_shardings=(state_sharding, NamedSharding(mesh, P())),
                       donate_argnums=(0,) if donate else ())
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_eval_step(loss_fn: Callable, *, model, cfg, mesh=None, jit: bool = True,
                   trainable=None):
    """Returns ``eval_step(params, batch) -> aux`` ((sum, count) pairs; no dropout). With LoRA
    (``trainable``) a loss reading ``batch["loss_state"]["ref_params"]`` gets the base with
    adapters off, as in the train step."""

    def step(params, batch):
        if trainable is not None:
            ls = with_reference(batch.get("loss_state") or {}, params, trainable)
            batch = {**batch, "loss_state": ls}
        with mesh_context(mesh):
            _, aux = loss_fn(params, batch, model=model, rng=None, cfg=cfg)
        aux.pop("loss_state", None)
        return aux
    return jax.jit(step) if jit else step


def evaluate(eval_step, params, batches) -> dict:
    """Exact mean of every metric over ``batches`` (sums and counts added before dividing)."""
    total = None
    for b in batches:
        aux = eval_step(params, b)
        total = aux if total is None else jax.tree.map(jnp.add, total, aux)
    if total is None:
        raise ConfigError("evaluation got no batches; the eval split is empty or too short")
    return {k: float(v[0]) / max(float(v[1]), 1e-9) for k, v in total.items()
            if isinstance(v, tuple)}


def to_host(metrics) -> dict:
    """Device metrics -> floats ((sum, count) pairs become means)."""
    out = {}
    for k, v in jax.device_get(metrics).items():
        if isinstance(v, tuple | list) and len(v) == 2:
            out[k] = float(v[0]) / max(float(v[1]), 1e-9)
        else:
            out[k] = float(v)
    return out


class NonFiniteLoss(RuntimeError):
    pass


def train_loop(state, step_fn, batches: Iterator, *, steps: int, on_metrics=None,
               on_step_end=None, sync_at=lambda step: False, tokens_per_step: int = 0,
               flops_per_token: float = 0.0, peak_flops: float | None = None) -> dict:
    """Run ``step_fn`` until ``state["step"] == steps``; metrics fetched one step late.

    With ``tokens_per_step`` (global) and ``flops_per_token`` (``lm.perf.flops_per_token``) the
    metrics carry ``perf/tokens_per_s``, ``perf/tflops_per_device`` and ``perf/mfu`` against
    ``peak_flops`` per device (``lm.perf.device_peak_flops``; None gives ``"n/a"``).

    ``on_metrics(step, metrics)`` gets the host metrics of step ``step`` (1-based) while the next
    step is already dispatched. At steps where ``sync_at(step)`` holds (checkpoints, evals) and at
    the last step, the loop first fetches that step's own metrics, so ``on_step_end(step, state)``
    only ever sees a state whose loss was finite. A NaN/inf loss raises ``NonFiniteLoss`` naming
    the step, before anything is saved for it.
    """
    start = int(jax.device_get(state["step"]))
    pending, t_last = None, time.perf_counter()

    def flush(p):
        nonlocal t_last
        step_no, m = p
        host = to_host(m)
        now = time.perf_counter()
        host["step_time"] = now - t_last
        t_last = now
        if tokens_per_step:
            host["tokens_per_s"] = tokens_per_step / max(host["step_time"], 1e-9)
        if tokens_per_step and flops_per_token:
            host.update(perf_metrics(host["step_time"], tokens_per_step, flops_per_token,
                                     jax.device_count(), peak_flops))
        loss = host.get("loss", 0.0)
        if loss != loss or loss in (float("inf"), float("-inf")):
            raise NonFiniteLoss(f"loss is {loss} at step {step_no}")
        if on_metrics is not None:
            on_metrics(step_no, host)

    for s in range(start, steps):
        state, metrics = step_fn(state, next(batches))
        if pending is not None:
            flush(pending)
        pending = (s + 1, metrics)
        if sync_at(s + 1) or s + 1 == steps:
            flush(pending)
            pending = None
            if on_step_end is not None:
                on_step_end(s + 1, state)
    return state
