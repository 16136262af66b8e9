"""Sampling with a KV cache, and per-token log-probs of given completions.

    out = generate(graphdef, params, prompt_BxP, prompt_len_B, SampleCfg(...), rng)
    seq_BxS, comp_mask_BxS = splice(prompt_BxP, prompt_len_B, out["tokens_BxT"], out["mask_BxT"])
    logp_BxS = sequence_logprobs(graphdef, params, seq_BxS, comp_mask_BxS)   # RL policy/ref logps
    # G samples per prompt: prefill the N prompts once, decode N*G rows (row n*G + g <- prompt n)
    out = generate(graphdef, params, prompt_NxP, prompt_len_N, cfg, rng, group_size=G)
    ref_BxT = completion_logprobs(graphdef, ref, prompt_NxP, prompt_len_N, out["tokens_BxT"],
                                  out["mask_BxT"], group_size=G)     # scored through one prefill

Everything is a pure function of ``(graphdef, params, arrays)``: the module is rebuilt with
``lm.losses.bind`` inside the trace (Tree Mode), so ``generate`` can be called inside a larger
``jax.jit`` (RL rollouts) or on its own (it is jitted with ``model`` and ``cfg`` static).

Ragged prompts. Prompts are *right*-padded; row b's prompt is ``prompt_BxP[b, :prompt_len_B[b]]``
(every length must be >= 1). ``generate`` prefills the whole padded prompt once at cache index 0
(causal attention: a real prompt token never sees the pads after it), reads each row's first
next-token logits at its own position ``len_b - 1``, and then decodes row b's t-th new token at
its own position ``len_b + t``. ``GPT.decode`` takes one scalar ``index`` for the whole batch, so
the one-token decode step is ``jax.vmap``-ed over rows with a per-row index; the row's first
decode overwrites the pad keys at ``len_b`` and the causal cache mask (``key <= position``) hides
the pad keys after it until they are overwritten in turn. Positions (rotary or learned) are
therefore exactly those of the unpadded prompt, and each row matches a batch-of-one run.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lm.losses import bind


@dataclasses.dataclass(frozen=True)
class SampleCfg:
    """How to sample. ``temperature=0`` is greedy; ``top_k=0`` and ``top_p=1.0`` switch those off.

    With ``eos_id`` set, a row stops after emitting it (or any of ``stop_ids``): later tokens are
    ``pad_id`` with mask 0.
    The filters apply in the order temperature, top-k, top-p (as in HF ``generate``)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_id: int | None = None
    pad_id: int = 0
    stop_ids: tuple[int, ...] = ()  # more ids that end a row like eos_id (Llama 3's eot ids)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"sample.max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"sample.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"sample.top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sample.top_p={self.top_p} must be in (0, 1] (1 = off)")


def filter_logits(logits_BxV: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """Logits of the adjusted sampling distribution (fp32); removed tokens get ``-inf``.

    ``temperature``, ``top_k`` and ``top_p`` are Python numbers (static). Temperature 0 is the
    point mass on the argmax (first index on ties). Top-k keeps exactly k tokens (``lax.top_k``
    order on ties); top-p keeps the smallest prefix of the sorted distribution whose mass >= p."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    B, V = logits_BxV.shape
    rows_Bx1 = jnp.arange(B)[:, None]
    if temperature == 0:
        keep_BxV = jax.nn.one_hot(argmax_last(logits_BxV), V, dtype=jnp.bool_)
        return jnp.where(keep_BxV, 0.0, -jnp.inf)
    logits_BxV = logits_BxV / temperature
    if 0 < top_k < V:
        _, idx_BxK = jax.lax.top_k(logits_BxV, top_k)
        keep_BxV = jnp.zeros((B, V), jnp.bool_).at[rows_Bx1, idx_BxK].set(True)
        logits_BxV = jnp.where(keep_BxV, logits_BxV, -jnp.inf)
    if top_p < 1.0:
        order_BxV = jnp.argsort(-logits_BxV, axis=-1)
        probs_BxV = jax.nn.softmax(jnp.take_along_axis(logits_BxV, order_BxV, -1), -1)
        mass_before_BxV = jnp.cumsum(probs_BxV, -1) - probs_BxV
        keep_sorted_BxV = mass_before_BxV < top_p  # always keeps the top token
        keep_BxV = jnp.zeros((B, V), jnp.bool_).at[rows_Bx1, order_BxV].set(keep_sorted_BxV)
        logits_BxV = jnp.where(keep_BxV, logits_BxV, -jnp.inf)
    return logits_BxV


def argmax_last(x_BxV: jax.Array) -> jax.Array:
    """``jnp.argmax(x, -1)`` (first index on ties; rows with a finite max, -inf entries are
    fine) as two plain reductions: the max, then the least index equal to it. XLA:CPU runs
    ``argmax``'s fused variadic (value, index) reduce several times slower: at 128 x 49152
    Gumbel-perturbed logits that was about a sixth of a SmolLM2-135M decode step."""
    V = x_BxV.shape[-1]
    max_Bx1 = jnp.max(x_BxV, -1, keepdims=True)
    idx_BxV = jnp.where(x_BxV == max_Bx1, jnp.arange(V, dtype=jnp.int32), V)
    return jnp.minimum(jnp.min(idx_BxV, -1), V - 1)


def sample_logits(logits_BxV: jax.Array, rng: jax.Array | None, temperature: float,
                  top_k: int = 0, top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Draw one token per row. Returns ``(tokens_B int32, logp_sampled_B)``, the latter the
    token's log-prob under the adjusted distribution (0 for greedy). ``rng`` may be None when
    ``temperature == 0``. The draw is ``jax.random.categorical``'s Gumbel-max, token for token
    (the same Gumbel noise from the same key), with the argmax as ``argmax_last``."""
    adj_BxV = filter_logits(logits_BxV, temperature, top_k, top_p)
    if temperature == 0:
        tokens_B = argmax_last(adj_BxV)
    else:
        tokens_B = argmax_last(adj_BxV + jax.random.gumbel(rng, adj_BxV.shape, adj_BxV.dtype))
    logp_BxV = jax.nn.log_softmax(adj_BxV, -1)
    logp_B = jnp.take_along_axis(logp_BxV, tokens_B[:, None], -1)[:, 0]
    return tokens_B.astype(jnp.int32), logp_B


def _token_logp(logits_BxV: jax.Array, tokens_B: jax.Array) -> jax.Array:
    logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), -1)
    return jnp.take_along_axis(logp_BxV, tokens_B[:, None], -1)[:, 0]


def _decode_rows(m, tokens_B: jax.Array, cache, index_B: jax.Array):
    """One decode step with a per-row cache position: ``GPT.decode`` vmapped over rows."""
    logits_BxLxV, cache = _decode_rows_L(m, tokens_B[:, None], cache, index_B)
    return logits_BxLxV[:, 0], cache


def _decode_rows_L(m, tokens_BxL: jax.Array, cache, index_B: jax.Array):
    """``GPT.decode`` of L tokens per row at that row's cache slots ``index_b ..``, vmapped."""
    def one(tok_L, kv_row, idx):
        kv = jax.tree.map(lambda x: x[None], kv_row)
        logits_1xLxV, kv = m.decode(tok_L[None], kv, idx)
        return logits_1xLxV[0], jax.tree.map(lambda x: x[0], kv)
    return jax.vmap(one)(tokens_BxL, cache, index_B)


def _prefill(m, prompt_NxP: jax.Array, prompt_len_N: jax.Array, S: int, G: int):
    """Prefill N prompts into a length-S cache once, then copy each prompt's cache rows and its
    next-token logits to its G rows. Returns ``(cache, logits_BxV, prompt_len_B)``, B = N*G."""
    P = prompt_NxP.shape[1]
    cache = m.init_cache(prompt_NxP.shape[0], S)
    logits_NxPxV, cache = m.decode(prompt_NxP.astype(jnp.int32), cache, 0)
    last_N = jnp.clip(prompt_len_N - 1, 0, P - 1)
    logits_NxV = jnp.take_along_axis(logits_NxPxV, last_N[:, None, None], axis=1)[:, 0]
    out = (cache, logits_NxV, prompt_len_N)
    if G > 1:
        out = jax.tree.map(lambda x: jnp.repeat(x, G, axis=0), out)  # row n*G + g <- prompt n
    return out


def _generate(model, params, prompt_NxP: jax.Array, prompt_len_N: jax.Array, cfg: SampleCfg,
              rng: jax.Array | None, return_logits: bool = False, group_size: int = 1) -> dict:
    m = bind(model, params)
    N, P = prompt_NxP.shape
    G = group_size
    B = N * G
    T = cfg.max_new_tokens
    S = P + T
    if S > m.cfg.max_len:
        raise ValueError(f"prompt length {P} + max_new_tokens {T} = {S} exceeds model.max_len="
                         f"{m.cfg.max_len}; shorten the prompt or sample fewer tokens")
    if cfg.temperature > 0 and rng is None:
        raise ValueError("sampling with temperature > 0 needs an rng key")
    if G < 1:
        raise ValueError(f"group_size={G} must be >= 1")
    rng = jax.random.key(0) if rng is None else rng
    prompt_len_N = jnp.asarray(prompt_len_N, jnp.int32)

    # prefill each distinct prompt once; a group's G rows then share (copies of) its cache rows
    cache, logits_BxV, prompt_len_B = _prefill(m, prompt_NxP, prompt_len_N, S, G)

    V = logits_BxV.shape[-1]
    bufs = {"tokens_BxT": jnp.full((B, T), cfg.pad_id, jnp.int32),
            "logp_BxT": jnp.zeros((B, T), jnp.float32),
            "logp_sampled_BxT": jnp.zeros((B, T), jnp.float32),
            "mask_BxT": jnp.zeros((B, T), jnp.int32)}
    if return_logits:
        bufs["logits_BxTxV"] = jnp.zeros((B, T, V), jnp.float32)

    def emit(t, logits_BxV, done_B, bufs):
        """Sample token t from ``logits_BxV`` and record it; rows already done emit pad."""
        tok_B, logp_s_B = sample_logits(logits_BxV, jax.random.fold_in(rng, t),
                                        cfg.temperature, cfg.top_k, cfg.top_p)
        # at temperature 1 without filters the adjusted distribution is the model's (x / 1.0 is
        # exact), so its log-prob is reused rather than a second log-softmax over the vocab
        plain = cfg.temperature == 1.0 and cfg.top_k == 0 and cfg.top_p == 1.0
        live_B = ~done_B
        logp_B = logp_s_B if plain else _token_logp(logits_BxV, tok_B)
        tok_B = jnp.where(live_B, tok_B, cfg.pad_id)
        col = {"tokens_BxT": tok_B,
               "logp_BxT": jnp.where(live_B, logp_B, 0.0),
               "logp_sampled_BxT": jnp.where(live_B, logp_s_B, 0.0),
               "mask_BxT": live_B.astype(jnp.int32)}
        if return_logits:
            col["logits_BxTxV"] = logits_BxV
        bufs = {k: jax.lax.dynamic_update_index_in_dim(v, col[k], t, axis=1)
                for k, v in bufs.items()}
        for stop in ((cfg.eos_id,) if cfg.eos_id is not None else ()) + tuple(cfg.stop_ids):
            done_B = done_B | (tok_B == stop)
        return tok_B, done_B, bufs

    tok_B, done_B, bufs = emit(0, logits_BxV, jnp.zeros((B,), jnp.bool_), bufs)

    def cond(carry):
        t, _, _, done_B, _ = carry
        return (t < T) & ~jnp.all(done_B)

    def body(carry):
        t, tok_B, cache, done_B, bufs = carry
        logits_BxV, cache = _decode_rows(m, tok_B, cache, prompt_len_B + t - 1)
        tok_B, done_B, bufs = emit(t, logits_BxV, done_B, bufs)
        return t + 1, tok_B, cache, done_B, bufs

    carry = (jnp.int32(1), tok_B, cache, done_B, bufs)
    _, _, _, _, bufs = jax.lax.while_loop(cond, body, carry)
    bufs["lengths_B"] = bufs["mask_BxT"].sum(-1)
    return bufs


_generate_jit = jax.jit(_generate, static_argnames=("model", "cfg", "return_logits",
                                                   "group_size"))


def generate(model, params, prompt_BxP: jax.Array, prompt_len_B: jax.Array, cfg: SampleCfg,
             rng: jax.Array | None = None, *, return_logits: bool = False,
             jit: bool = True, group_size: int = 1) -> dict:
    """Sample ``cfg.max_new_tokens`` tokens after each row's prompt (jitted).

    Args: ``model`` an ``nnx.GraphDef`` (static), ``params`` a pure dict, ``prompt_BxP`` int,
    right-padded, ``prompt_len_B`` int (>= 1 each), ``cfg`` a ``SampleCfg`` (static), ``rng`` a key
    (None allowed for greedy). Raises ValueError if ``P + max_new_tokens > model.cfg.max_len``.

    ``group_size=G`` (static) samples G completions of each prompt: the N prompts are prefilled
    once and each prompt's KV cache and first logits are copied to its G rows before decoding,
    so the outputs have N*G rows, row ``n*G + g`` the g-th sample of prompt n. The result is
    that of ``generate(repeat(prompt, G), repeat(len, G), ...)`` with the same key: the same
    draws, from prefill logits computed over N rows instead of N*G (equal up to fp32 round-off;
    tested). G = 1 is the plain call.

    Returns a dict of [B, T] arrays (T = ``max_new_tokens``):
      ``tokens_BxT``        new tokens (``pad_id`` after a row's eos);
      ``logp_BxT``          log-prob of each token under the *model* distribution, i.e.
                            ``log_softmax`` of the raw logits at temperature 1, no top-k/top-p
                            (what policy-gradient losses compare against ``sequence_logprobs``);
      ``logp_sampled_BxT``  log-prob under the temperature/top-k/top-p-adjusted distribution the
                            token was drawn from (0 for greedy);
      ``mask_BxT``          1 for valid tokens up to and including eos, else 0 (logps are 0 there);
      ``lengths_B``         number of valid tokens per row;
      ``logits_BxTxV``      only with ``return_logits=True``: the raw logits each token came from.
    The loop stops early once every row has emitted eos. Row b's step-t key is
    ``fold_in(rng, t)``, so a fixed rng reproduces the same tokens.
    """
    fn = _generate_jit if jit else _generate
    return fn(model, params, prompt_BxP, prompt_len_B, cfg, rng, return_logits, group_size)


def splice(prompt_BxP: jax.Array, prompt_len_B: jax.Array, tokens_BxT: jax.Array,
           mask_BxT: jax.Array, pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """Right-padded ``[B, P+T]`` sequences ``prompt[:len] + valid new tokens`` and the mask of
    the new tokens in them (the ``mask`` for ``sequence_logprobs`` and RL losses)."""
    B, P = prompt_BxP.shape
    T = tokens_BxT.shape[1]
    j_1xS = jnp.arange(P + T)[None, :]
    len_Bx1 = jnp.asarray(prompt_len_B, jnp.int32)[:, None]
    gen_idx_BxS = jnp.clip(j_1xS - len_Bx1, 0, T - 1)
    gen_BxS = jnp.take_along_axis(tokens_BxT, gen_idx_BxS, axis=1)
    gen_mask_BxS = jnp.take_along_axis(mask_BxT, gen_idx_BxS, axis=1)
    in_gen_BxS = (j_1xS >= len_Bx1) & (j_1xS < len_Bx1 + T) & (gen_mask_BxS > 0)
    prompt_BxS = jnp.pad(prompt_BxP, ((0, 0), (0, T)), constant_values=pad_id)
    seq_BxS = jnp.where(j_1xS < len_Bx1, prompt_BxS, jnp.where(in_gen_BxS, gen_BxS, pad_id))
    return seq_BxS.astype(jnp.int32), in_gen_BxS.astype(jnp.int32)


def sequence_logprobs(model, params, tokens_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    """Per-token log-probs ``log p(tokens[t] | tokens[:t])`` from one full forward (fp32).

    Aligned with ``tokens_BxL``: entry t scores token t, entry 0 is 0 (no context), and entries
    where ``mask_BxL`` is 0 are 0. Differentiable in ``params`` (policy and reference logps)."""
    m = bind(model, params)
    logits_BxLxV = m(tokens_BxL)[:, :-1].astype(jnp.float32)
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, -1)
    tgt_BxL = jnp.take_along_axis(logp_BxLxV, tokens_BxL[:, 1:, None], -1)[..., 0]
    logp_BxL = jnp.pad(tgt_BxL, ((0, 0), (1, 0)))
    return logp_BxL * mask_BxL.astype(jnp.float32)


def completion_logprobs(model, params, prompt_NxP: jax.Array, prompt_len_N: jax.Array,
                        tokens_BxT: jax.Array, mask_BxT: jax.Array,
                        group_size: int = 1) -> jax.Array:
    """``[B, T]`` log-probs of completions given their prompts, each prompt prefilled once.

    Row ``n*G + g`` of ``tokens_BxT`` (``generate``'s ``tokens_BxT``, B = N*G) continues prompt n:
    the N prompts are prefilled into a KV cache once, its rows copied to their G completions, and
    the completions' first T-1 tokens run through that cache in one call, so the forward costs
    ``N*P + B*(T-1)`` token positions instead of ``sequence_logprobs``' ``B*(P+T)``. Entries where
    ``mask_BxT`` is 0 are 0. Equal to ``sequence_logprobs`` on the spliced rows (at their
    completion positions) up to fp32 round-off (tested); the same cached path as ``generate``'s
    own ``logp_BxT``. Meant for scoring (reference log-probs of rollouts), not for gradients."""
    m = bind(model, params)
    N, P = prompt_NxP.shape
    B, T = tokens_BxT.shape
    cache, first_BxV, len_B = _prefill(m, prompt_NxP, jnp.asarray(prompt_len_N, jnp.int32),
                                       P + T, group_size)
    tokens_BxT = tokens_BxT.astype(jnp.int32)
    logp_BxT = _token_logp(first_BxV, tokens_BxT[:, 0])[:, None]
    if T > 1:
        logits_BxTxV, _ = _decode_rows_L(m, tokens_BxT[:, :-1], cache, len_B)
        rest_BxT = jax.vmap(_token_logp, in_axes=(1, 1), out_axes=1)(logits_BxTxV,
                                                                      tokens_BxT[:, 1:])
        logp_BxT = jnp.concatenate([logp_BxT, rest_BxT], axis=1)
    return logp_BxT * mask_BxT.astype(jnp.float32)


def place(values_BxT: jax.Array, prompt_len_B: jax.Array, S: int) -> jax.Array:
    """Completion-aligned ``[B, T]`` values moved to ``splice``'s ``[B, S]`` rows (completion
    token t at column ``len_b + t``); zero elsewhere (multiply by the splice mask for pads)."""
    T = values_BxT.shape[1]
    j_1xS = jnp.arange(S)[None, :]
    len_Bx1 = jnp.asarray(prompt_len_B, jnp.int32)[:, None]
    idx_BxS = jnp.clip(j_1xS - len_Bx1, 0, T - 1)
    inside_BxS = (j_1xS >= len_Bx1) & (j_1xS < len_Bx1 + T)
    return jnp.where(inside_BxS, jnp.take_along_axis(values_BxT, idx_BxS, axis=1), 0.0)
