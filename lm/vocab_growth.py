"""Vocabulary growth of a GPT between curriculum stages, and a trainer that survives it.

Row initialisation (spec §2.6): a token created from the pair ``(prefix, r)`` gets copies of the
rows of ``r``, its right component: ``E[new] = E[r]`` (and ``W_out[:, new] = W_out[:, r]`` for an
untied unembedding). With tied embeddings the new token therefore starts with exactly the logit of
``r`` at every position. Truncation (scale-down) is LIFO: rows ``>= V`` are dropped, so truncating
right after a growth restores the params bit for bit.

Two ways to let the shapes change, both implemented, measured by
``benchmarks/bench_vocab_growth.py`` (tiny preset shapes, 5 stages, 1 CPU device):

- **recompile per stage** (``grow_params``/``truncate_params`` + a fresh ``StageTrainer``): the
  params have shape ``[V_k, D]``; each stage builds a new optimizer and train step, so XLA
  compiles once per stage and per baseline run, and every step pays only for the ``V_k`` logits
  it needs.
- **pre-allocated padded rows** (``PaddedTrainer``: ``pad_params`` + ``masked_xent``): the params
  have shape ``[V_pad, D]``; the logits of ids ``>= n_active`` are set to ``-inf`` so the softmax
  normalizer is exactly that of ``|V_k|`` (the loss equals the unpadded one, tested), and
  ``n_active`` travels in the train state's ``loss_state``, so one compiled step (and one compiled
  eval function, ``n_active`` is a traced argument) serves every stage and every baseline with
  ``V_k <= V_pad``. A new stage only re-initialises the train state (fresh optimizer and
  schedule). Inactive rows get exactly zero gradient, so Adam leaves them untouched. It pays the
  full ``V_pad`` unembedding at every step.

Measured (``benchmarks/bench_vocab_growth.py``, tiny-preset shapes, 5 stages x 150 steps,
V 64 -> 379, 2 shared CPU cores): recompile 200.8 s vs padded 70.4 s, ratio 2.85 -- **padded
is faster at this scale**, because a CPU compile (~10 s under load) costs more than a 150-step
stage's extra logits when V_pad is a few hundred. **The experiment therefore uses the padded
path** (``vocab.padded=true``, the default; ``vocab.padded=false`` keeps recompiling). Since
the realized growth is random (a tuple adds up to len-1 ids), ``V_pad`` is not fixed in
advance: it is ``V_k`` rounded up to a multiple of ``vocab.pad_multiple``, and a stage whose
``V_k`` exceeds the current ``V_pad`` gets a new ``PaddedTrainer`` (one more compile), cached by
``(V_pad, LR span)``. Growth itself stays a host-side ``grow_params`` on the unpadded rows
(``activate_rows`` is the in-place equivalent on padded rows), so ``expand`` (below) works
unchanged. At the paper's scale (5000 steps a stage, V up to 18k) compiles are negligible
and the padding waste is what matters, so keep ``pad_multiple`` small there (or re-measure). The
FLOP accounting in the experiment counts the model's nominal ``V_k`` (masked columns are an
implementation artefact).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.losses import bind, xent_from_logits
from lm.sharding import ConfigError

EMBED, UNEMBED = "embed_VxD", "unembed_DxV"


def vocab_size_of(params) -> int:
    return int(params[EMBED].shape[0])


def grow_params(params, right_ids_N) -> dict:
    """Append one row per new token, copied from its right component's row (host arrays)."""
    right_ids_N = np.asarray(right_ids_N, np.int64)
    out = dict(params)
    emb_VxD = np.asarray(params[EMBED])
    out[EMBED] = np.concatenate([emb_VxD, emb_VxD[right_ids_N]], axis=0)
    if UNEMBED in params:
        un_DxV = np.asarray(params[UNEMBED])
        out[UNEMBED] = np.concatenate([un_DxV, un_DxV[:, right_ids_N]], axis=1)
    return out


def expand(tok, params, batches, *, model, M: int = 3000, tau: float = 0.3, q: float = 0.6,
           seed: int = 0, nll_fn=None):
    """One curriculum step on a ``tokenization.curriculum.CurriculumTokenizer``:
    ``(tok2, params2, report)``. The tokenizer proposes the merges from this model's surprisal
    (``tok.propose``); the new rows copy their right component's (``grow_params``).
    ``model`` is the GPT graphdef (or module); ``nll_fn`` overrides ``make_nll_fn(model)``."""
    nll_fn = nll_fn or make_nll_fn(model)
    tok2, right_ids, report = tok.propose(params, batches, nll_fn=nll_fn, M=M, tau=tau, q=q,
                                          seed=seed)
    return tok2, grow_params(params, right_ids), report


def truncate(tok, size: int, params=None):
    """LIFO scale-down of the tokenizer and (if given) the params: ``(tok2, params2)``."""
    return tok.truncate(size), (None if params is None else truncate_params(params, size))


def truncate_params(params, size: int) -> dict:
    """Keep the rows (and unembedding columns) of ids ``< size``."""
    out = dict(params)
    out[EMBED] = np.asarray(params[EMBED])[:size]
    if UNEMBED in params:
        out[UNEMBED] = np.asarray(params[UNEMBED])[:, :size]
    return out


def pad_params(params, v_max: int) -> dict:
    """Padded variant: zero rows up to ``v_max`` (inactive until ``activate_rows``)."""
    V = vocab_size_of(params)
    out = dict(params)
    out[EMBED] = np.pad(np.asarray(params[EMBED]), ((0, v_max - V), (0, 0)))
    if UNEMBED in params:
        out[UNEMBED] = np.pad(np.asarray(params[UNEMBED]), ((0, 0), (0, v_max - V)))
    return out


def activate_rows(params, n_active: int, right_ids_N) -> dict:
    """Padded variant of ``grow_params``: write the new rows at ``n_active, n_active+1, ...``."""
    right_ids_N = np.asarray(right_ids_N, np.int64)
    new_N = n_active + np.arange(len(right_ids_N))
    out = dict(params)
    emb = np.array(params[EMBED])
    emb[new_N] = emb[right_ids_N]
    out[EMBED] = emb
    if UNEMBED in params:
        un = np.array(params[UNEMBED])
        un[:, new_N] = un[:, right_ids_N]
        out[UNEMBED] = un
    return out


def masked_logits(logits_BxLxV, n_active):
    """``-inf`` at ids ``>= n_active`` so the softmax runs over the active vocabulary only."""
    active_V = jnp.arange(logits_BxLxV.shape[-1]) < n_active
    return jnp.where(active_V[None, None, :], logits_BxLxV, -jnp.inf)


def masked_xent(params, batch, *, model, rng, cfg):
    """Next-token xent over the first ``batch["loss_state"]["n_active"]`` ids (padded variant)."""
    ls = batch["loss_state"]
    logits_BxLxV = masked_logits(bind(model, params)(batch["inputs"], rng=rng), ls["n_active"])
    mask_BxL = batch.get("mask", jnp.ones(batch["targets"].shape, jnp.float32))
    loss, aux = xent_from_logits(logits_BxLxV, batch["targets"], mask_BxL, cfg.train.z_loss)
    aux["loss_state"] = ls
    return loss, aux


def make_nll_fn(model, n_active: int | None = None):
    """Jitted ``nll(params, inputs_BxL, targets_BxL) -> nll_BxL`` (eval mode, fp32).

    With ``n_active`` the logits of ids ``>= n_active`` are masked (padded params). The returned
    function also accepts ``n_active=`` as a keyword (a traced scalar: one compile for all)."""
    graphdef = nnx.graphdef(model) if isinstance(model, nnx.Module) else model

    @jax.jit
    def nll(params, inputs_BxL, targets_BxL, n_active=None):
        logits = bind(graphdef, params)(inputs_BxL).astype(jnp.float32)
        if n_active is not None:
            logits = masked_logits(logits, n_active)
        lse_BxL = jax.nn.logsumexp(logits, axis=-1)
        tgt_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
        return lse_BxL - tgt_BxL
    if n_active is None:
        return nll
    return functools.partial(nll, n_active=jnp.int32(n_active))


@dataclasses.dataclass
class StageTrainer:
    """One stage of training on a fixed vocabulary: sharded params, fresh optimizer, jitted step.

    Built from host params (or ``None`` for a fresh init) so a grown model continues training
    with a new optimizer and LR schedule, as the paper does at every stage."""

    cfg: object  # experiments.config.Config with model.vocab_size = this stage's V
    mesh: object
    graphdef: object
    state: dict
    train_step: object
    nll: object

    @classmethod
    def create(cls, cfg, mesh, params=None, *, total_steps: int, loss_fn=None,
               loss_state=None, n_active=None):
        from lm import sharding as sh
        from lm.losses import xent
        from lm.model import GPT
        from lm.optim import make_optimizer
        from lm.train import init_state, make_train_step, state_shardings

        if cfg.model.lora.on:  # the curriculum grows and trains the embedding rows
            raise ConfigError("the vocabulary curriculum trains new embedding rows as it grows "
                              "the tokenizer: it runs full fine-tuning only; drop "
                              f"model.lora.rank={cfg.model.lora.rank}")
        seed = cfg.train.seed
        graphdef, fresh, p_shard = sh.init_params(lambda: GPT(cfg.model, rngs=nnx.Rngs(seed)),
                                                  mesh)
        if params is not None:
            dt = cfg.model.param_dtype_
            params = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, dt), s), params,
                                  p_shard)
        else:
            params = fresh
        tx, lr_fn = make_optimizer(cfg.opt, params, total_steps)
        shapes = jax.eval_shape(lambda p: init_state(p, tx, seed, loss_state), params)
        s_shard = state_shardings(shapes, p_shard, mesh)
        state = jax.jit(lambda p: init_state(p, tx, seed, loss_state), out_shardings=s_shard)(
            params)
        step = make_train_step(loss_fn or xent, tx, model=graphdef, cfg=cfg, mesh=mesh,
                               state_sharding=s_shard, microbatches=cfg.train.microbatches,
                               lr_fn=lr_fn)
        return cls(cfg, mesh, graphdef, state, step, make_nll_fn(graphdef, n_active))

    def host_params(self) -> dict:
        return jax.device_get(self.state["params"])



def pad_capacity(V: int, multiple: int) -> int:
    """``V`` rounded up to a multiple of ``multiple`` (the padded row count)."""
    return -(-V // multiple) * multiple


@dataclasses.dataclass
class PaddedTrainer:
    """The padded path: one compiled train step at ``v_pad`` rows for every stage/run.

    ``start(params, n_active)`` returns a fresh train state (new optimizer and LR schedule, step 0)
    for unpadded host params ``[V, D]`` with ``V = n_active <= v_pad`` (``None``: a fresh init,
    i.e. the first ``n_active`` rows of this trainer's ``v_pad`` init, the rest zero: with JAX's
    default partitionable threefry that is bit-identical to an init at ``n_active``, tested).
    ``nll(n_active)`` is the masked eval function; ``unpad(params, n_active)`` gives the host
    rows back."""

    cfg: object  # with model.vocab_size = v_pad
    mesh: object
    graphdef: object
    v_pad: int
    train_step: object
    _fresh: dict
    _shard: object
    _init: object
    _nll: object

    @classmethod
    def create(cls, cfg, mesh, v_pad: int, *, total_steps: int):
        from lm import sharding as sh
        from lm.model import GPT
        from lm.optim import make_optimizer
        from lm.train import init_state, make_train_step, state_shardings

        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=v_pad))
        if cfg.model.lora.on:  # the curriculum grows and trains the embedding rows
            raise ConfigError("the vocabulary curriculum trains new embedding rows as it grows "
                              "the tokenizer: it runs full fine-tuning only; drop "
                              f"model.lora.rank={cfg.model.lora.rank}")
        seed = cfg.train.seed
        graphdef, fresh, p_shard = sh.init_params(lambda: GPT(cfg.model, rngs=nnx.Rngs(seed)),
                                                  mesh)
        tx, lr_fn = make_optimizer(cfg.opt, fresh, total_steps)
        ls0 = {"n_active": jnp.int32(v_pad)}
        init = lambda p, ls: init_state(p, tx, seed, ls)
        s_shard = state_shardings(jax.eval_shape(init, fresh, ls0), p_shard, mesh)
        step = make_train_step(masked_xent, tx, model=graphdef, cfg=cfg, mesh=mesh,
                               state_sharding=s_shard, microbatches=cfg.train.microbatches,
                               lr_fn=lr_fn)
        return cls(cfg, mesh, graphdef, v_pad, step, jax.device_get(fresh), p_shard,
                   jax.jit(init, out_shardings=s_shard), make_nll_fn(graphdef))

    def start(self, params, n_active: int) -> dict:
        if n_active > self.v_pad:
            raise ValueError(f"n_active={n_active} > v_pad={self.v_pad}")
        if params is None:
            params = truncate_params(self._fresh, n_active)
        if vocab_size_of(params) != n_active:
            raise ValueError(f"params have {vocab_size_of(params)} rows, n_active={n_active}")
        dt = self.cfg.model.param_dtype_
        params = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, dt), s),
                              pad_params(params, self.v_pad), self._shard)
        return self._init(params, {"n_active": jnp.int32(n_active)})

    def nll(self, n_active: int):
        return functools.partial(self._nll, n_active=jnp.int32(n_active))

    @staticmethod
    def unpad(params, n_active: int) -> dict:
        return truncate_params(jax.device_get(params), n_active)
