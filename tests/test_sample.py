"""lm.sample: KV-cache decoding against full forwards, ragged prompts, filters, eos, logprobs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.losses import bind
from lm.model import GPT, ModelCfg
from lm.sample import (
    SampleCfg,
    argmax_last,
    completion_logprobs,
    filter_logits,
    generate,
    place,
    sample_logits,
    sequence_logprobs,
    splice,
)

T = 8
PROMPT_BxP = np.array([[5, 9, 3, 17, 2, 40, 11],
                       [7, 1, 30, 0, 0, 0, 0],
                       [12, 60, 4, 4, 8, 0, 0]], np.int32)
PROMPT_LEN_B = np.array([7, 3, 5], np.int32)
GREEDY = SampleCfg(max_new_tokens=T, temperature=0.0)


@functools.cache
def tiny(pos: str = "rope"):
    """Tiny GPT (2 layers, d=64), weights scaled up so attention is far from uniform and the
    next-token argmax is not decided by rounding (top-2 logit gaps >> fp32 error)."""
    cfg = ModelCfg(vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=24,
                   pos=pos)
    graphdef, state = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    params = nnx.to_pure_dict(state)
    params = jax.tree.map(lambda x: x * 20.0 if x.ndim >= 2 else x, params)
    params["embed_VxD"] = params["embed_VxD"] / 4.0  # logits O(1): fp32 error << 1e-5
    return graphdef, params


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, params, tokens_BxL):
    """Full (no-cache) forward: logits_BxLxV."""
    return bind(graphdef, params)(tokens_BxL)


def full_logits(graphdef, params, seq_L) -> np.ndarray:
    """Last-position logits of one full forward over exactly ``seq_L`` (no padding)."""
    return np.asarray(forward(graphdef, params, jnp.asarray(seq_L, jnp.int32)[None])[0, -1])


def np_top_p_keep(probs_V: np.ndarray, p: float) -> np.ndarray:
    """Reference: the smallest set of most likely tokens whose total mass is >= p."""
    order = np.argsort(-probs_V, kind="stable")
    k = int(np.searchsorted(np.cumsum(probs_V[order]), p) + 1)
    keep = np.zeros_like(probs_V, bool)
    keep[order[:k]] = True
    return keep


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_kvcache_logits_match_full_forward(pos):
    """Ragged greedy batch: the logits that picked token t of row b equal one full forward's
    logits at position len_b - 1 + t of prompt + generated (1e-5, fp32), for every t."""
    graphdef, params = tiny(pos)
    out = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, GREEDY, return_logits=True)
    seq_BxS, _ = splice(PROMPT_BxP, PROMPT_LEN_B, out["tokens_BxT"], out["mask_BxT"])
    ref_BxSxV = np.asarray(forward(graphdef, params, seq_BxS))
    for b, n in enumerate(PROMPT_LEN_B):
        np.testing.assert_allclose(out["logits_BxTxV"][b], ref_BxSxV[b, n - 1:n - 1 + T],
                                   atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out["tokens_BxT"], np.asarray(out["logits_BxTxV"]).argmax(-1))
    np.testing.assert_array_equal(out["mask_BxT"], 1)
    np.testing.assert_array_equal(out["lengths_B"], T)
    np.testing.assert_array_equal(out["logp_sampled_BxT"], 0.0)  # greedy: point mass


def test_greedy_matches_naive_argmax_loop():
    """Naive reference: per row, argmax of a full forward over exactly prompt + generated[:t]
    (no padding, no cache), appended one token at a time."""
    graphdef, params = tiny()
    out = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, GREEDY, return_logits=True)
    for b, n in enumerate(PROMPT_LEN_B):
        seq = list(PROMPT_BxP[b, :n])
        for t in range(T):
            ref_V = full_logits(graphdef, params, seq)
            np.testing.assert_allclose(out["logits_BxTxV"][b, t], ref_V, atol=1e-5, rtol=0)
            seq.append(int(ref_V.argmax()))
        np.testing.assert_array_equal(out["tokens_BxT"][b], seq[n:])


def test_ragged_batch_equals_each_prompt_alone():
    graphdef, params = tiny()
    batch = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, GREEDY)
    for b, n in enumerate(PROMPT_LEN_B):
        alone = generate(graphdef, params, PROMPT_BxP[b:b + 1, :n], PROMPT_LEN_B[b:b + 1], GREEDY)
        np.testing.assert_array_equal(batch["tokens_BxT"][b], alone["tokens_BxT"][0])
        np.testing.assert_allclose(batch["logp_BxT"][b], alone["logp_BxT"][0], atol=1e-5)


def test_sampling_reproducible_and_rng_dependent():
    graphdef, params = tiny()
    cfg = SampleCfg(max_new_tokens=T, temperature=1.5)
    a = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, cfg, jax.random.key(1))
    b = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, cfg, jax.random.key(1))
    c = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, cfg, jax.random.key(2))
    np.testing.assert_array_equal(a["tokens_BxT"], b["tokens_BxT"])
    np.testing.assert_array_equal(a["logp_BxT"], b["logp_BxT"])
    assert (np.asarray(a["tokens_BxT"]) != np.asarray(c["tokens_BxT"])).any()
    greedy = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, GREEDY)
    assert (np.asarray(a["tokens_BxT"]) != np.asarray(greedy["tokens_BxT"])).any()


@pytest.mark.parametrize("cfg", [
    SampleCfg(max_new_tokens=T, temperature=1.0),
    SampleCfg(max_new_tokens=T, temperature=0.8, top_k=10, top_p=0.9, eos_id=3),
    GREEDY])
def test_group_shared_prefill_equals_repeated_prompts(cfg):
    """``group_size=G`` (each prompt prefilled once, its cache copied to its G rows) gives the
    tokens of the same call on the prompts repeated G times with the same key, and log-probs
    within 1e-5 (fp32: only the prefill batch differs, N rows instead of N*G)."""
    graphdef, params = tiny()
    G = 3
    shared = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, cfg, jax.random.key(4),
                      group_size=G)
    rep = generate(graphdef, params, np.repeat(PROMPT_BxP, G, 0), np.repeat(PROMPT_LEN_B, G), cfg,
                   jax.random.key(4))
    assert shared["tokens_BxT"].shape == (3 * G, T)
    np.testing.assert_array_equal(shared["tokens_BxT"], rep["tokens_BxT"])
    np.testing.assert_array_equal(shared["mask_BxT"], rep["mask_BxT"])
    for k in ("logp_BxT", "logp_sampled_BxT"):
        np.testing.assert_allclose(shared[k], rep[k], atol=1e-5, rtol=0)
    if cfg.temperature > 0:  # the G rows of one prompt are distinct samples, not copies
        toks = np.asarray(shared["tokens_BxT"]).reshape(3, G, T)
        assert any((toks[n, 0] != toks[n, 1]).any() for n in range(3))


def test_completion_logprobs_equal_full_forward():
    """Scoring G completions per prompt through the shared prefill equals ``sequence_logprobs``
    on the spliced rows (1e-5, fp32), masks included (EOS-stopped rows are zero after EOS)."""
    graphdef, params = tiny()
    G = 2
    cfg = SampleCfg(max_new_tokens=T, temperature=1.0, eos_id=5)
    out = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, cfg, jax.random.key(7),
                   group_size=G)
    len_B = np.repeat(PROMPT_LEN_B, G)
    seq, mask = splice(np.repeat(PROMPT_BxP, G, 0), len_B, out["tokens_BxT"], out["mask_BxT"])
    want = sequence_logprobs(graphdef, params, seq, mask)
    got_BxT = completion_logprobs(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, out["tokens_BxT"],
                                  out["mask_BxT"], group_size=G)
    got = place(got_BxT, len_B, seq.shape[1])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_BxT, out["logp_BxT"], atol=1e-5, rtol=0)
    assert np.asarray(mask).sum() == np.asarray(out["mask_BxT"]).sum() > 0


def test_argmax_last_equals_argmax():
    x = np.random.default_rng(0).integers(-3, 4, (64, 50)).astype(np.float32)  # many ties
    x[:8, 10:] = -np.inf
    np.testing.assert_array_equal(argmax_last(jnp.asarray(x)), np.argmax(x, -1))
    k = jax.random.key(5)
    logits = jax.random.normal(jax.random.key(6), (16, 300)) * 3
    np.testing.assert_array_equal(sample_logits(logits, k, 1.0)[0],
                                  jax.random.categorical(k, logits, axis=-1))


def test_top_k_1_is_greedy():
    graphdef, params = tiny()
    greedy = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, GREEDY)
    top1 = generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B,
                    SampleCfg(max_new_tokens=T, temperature=2.0, top_k=1), jax.random.key(3))
    np.testing.assert_array_equal(top1["tokens_BxT"], greedy["tokens_BxT"])
    np.testing.assert_allclose(top1["logp_BxT"], greedy["logp_BxT"], atol=1e-6)
    np.testing.assert_array_equal(top1["logp_sampled_BxT"], 0.0)


def test_filters_against_numpy_reference():
    """Hand-made distribution: top-p keeps the minimal mass->=p set, top-k the k largest,
    temperature divides logits; the kept log-probs are the renormalised reference."""
    probs_V = np.array([0.05, 0.3, 0.02, 0.15, 0.4, 0.08], np.float64)
    logits_1xV = np.log(probs_V)[None].astype(np.float32)
    expected = {0.35: [4], 0.5: [4, 1], 0.6: [4, 1], 0.8: [4, 1, 3], 0.9: [4, 1, 3, 5],
                0.97: [4, 1, 3, 5, 0], 0.99: [4, 1, 3, 5, 0, 2]}  # no p on a boundary
    for p, kept in expected.items():
        keep_ref = np_top_p_keep(probs_V, p)
        assert sorted(np.flatnonzero(keep_ref)) == sorted(kept)  # the reference itself
        adj_V = np.asarray(filter_logits(jnp.asarray(logits_1xV), 1.0, 0, p))[0]
        np.testing.assert_array_equal(np.isfinite(adj_V), keep_ref)
        ref_logp = np.log(probs_V[keep_ref] / probs_V[keep_ref].sum())
        np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(adj_V))[keep_ref], ref_logp,
                                   atol=1e-6)
    adj_V = np.asarray(filter_logits(jnp.asarray(logits_1xV), 1.0, 3, 1.0))[0]
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(adj_V)), [1, 3, 4])
    adj_V = np.asarray(filter_logits(jnp.asarray(logits_1xV), 0.5, 0, 1.0))[0]
    np.testing.assert_allclose(adj_V, logits_1xV[0] / 0.5, rtol=1e-6)
    # temperature 2 flattens (p -> sqrt p): top-p 0.6 now needs three tokens, not two
    adj_V = np.asarray(filter_logits(jnp.asarray(logits_1xV), 2.0, 0, 0.6))[0]
    flat = np.sqrt(probs_V) / np.sqrt(probs_V).sum()
    np.testing.assert_array_equal(np.isfinite(adj_V), np_top_p_keep(flat, 0.6))
    assert np_top_p_keep(flat, 0.6).sum() == 3
    # draws stay inside the kept set
    toks_N, logp_N = sample_logits(jnp.repeat(jnp.asarray(logits_1xV), 2000, 0),
                                   jax.random.key(0), 1.0, 0, 0.8)
    counts = np.bincount(np.asarray(toks_N), minlength=6)
    assert set(np.flatnonzero(counts)) == {1, 3, 4}
    np.testing.assert_allclose(counts[[4, 1, 3]] / 2000, np.array([0.4, 0.3, 0.15]) / 0.85,
                               atol=0.05)
    keep = np_top_p_keep(probs_V, 0.8)
    ref = np.log(probs_V / probs_V[keep].sum())[np.asarray(toks_N)]
    np.testing.assert_allclose(logp_N, ref, atol=1e-5)


def test_eos_stops_row_and_masks_rest():
    graphdef, params = tiny()
    free = jax.device_get(generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, GREEDY))
    eos = int(free["tokens_BxT"][1, 2])  # row 1 emits this at step 2 (maybe earlier)
    cfg = SampleCfg(max_new_tokens=T, temperature=0.0, eos_id=eos, pad_id=63)
    out = jax.device_get(generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, cfg))
    for b in range(len(PROMPT_LEN_B)):
        hits = np.flatnonzero(free["tokens_BxT"][b] == eos)
        n = hits[0] + 1 if hits.size else T
        assert out["lengths_B"][b] == n
        np.testing.assert_array_equal(out["mask_BxT"][b], np.arange(T) < n)
        np.testing.assert_array_equal(out["tokens_BxT"][b, :n], free["tokens_BxT"][b, :n])
        np.testing.assert_array_equal(out["tokens_BxT"][b, n:], 63)
        np.testing.assert_allclose(out["logp_BxT"][b, :n], free["logp_BxT"][b, :n], atol=1e-6)
        np.testing.assert_array_equal(out["logp_BxT"][b, n:], 0.0)
    assert out["lengths_B"][1] <= 3
    # all rows stopping at the first token ends the loop early with everything masked after it
    first = SampleCfg(max_new_tokens=T, temperature=0.0, eos_id=int(free["tokens_BxT"][0, 0]))
    one = jax.device_get(generate(graphdef, params, PROMPT_BxP[:1], PROMPT_LEN_B[:1], first))
    np.testing.assert_array_equal(one["mask_BxT"][0], np.arange(T) < 1)
    # stop_ids end a row like eos_id (several eos ids, e.g. Llama 3's): the first of any wins
    t0, t2 = int(free["tokens_BxT"][1, 0]), int(free["tokens_BxT"][1, 2])
    both = SampleCfg(max_new_tokens=T, temperature=0.0, eos_id=t2, stop_ids=(t0,))
    row = jax.device_get(generate(graphdef, params, PROMPT_BxP[1:2], PROMPT_LEN_B[1:2], both))
    assert int(row["lengths_B"][0]) == 1


def test_logps_match_full_forward_and_jit_matches_eager():
    """logp = log_softmax(full-forward logits) at the sampled tokens (via splice +
    sequence_logprobs); logp_sampled = the same under the filtered distribution."""
    graphdef, params = tiny()
    cfg = SampleCfg(max_new_tokens=T, temperature=0.7, top_k=20, top_p=0.9)
    rng = jax.random.key(4)
    out = jax.device_get(generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, cfg, rng))
    eager = jax.device_get(generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, cfg, rng,
                                    jit=False))
    np.testing.assert_array_equal(eager["tokens_BxT"], out["tokens_BxT"])
    for k in ("logp_BxT", "logp_sampled_BxT"):
        np.testing.assert_allclose(eager[k], out[k], atol=1e-5)
    assert (out["logp_sampled_BxT"] > out["logp_BxT"]).any()  # filtering sharpened something

    seq_BxS, comp_BxS = splice(PROMPT_BxP, PROMPT_LEN_B, out["tokens_BxT"], out["mask_BxT"])
    logp_BxS = np.asarray(jax.jit(sequence_logprobs, static_argnums=0)(
        graphdef, params, seq_BxS, comp_BxS))
    logits_BxSxV = np.asarray(forward(graphdef, params, seq_BxS))
    for b, n in enumerate(PROMPT_LEN_B):
        np.testing.assert_array_equal(seq_BxS[b, :n], PROMPT_BxP[b, :n])
        np.testing.assert_array_equal(seq_BxS[b, n:n + T], out["tokens_BxT"][b])
        np.testing.assert_array_equal(comp_BxS[b], (np.arange(seq_BxS.shape[1]) >= n) &
                                      (np.arange(seq_BxS.shape[1]) < n + T))
        np.testing.assert_allclose(logp_BxS[b, n:n + T], out["logp_BxT"][b], atol=1e-5)
        assert (logp_BxS[b, :n] == 0).all() and (logp_BxS[b, n + T:] == 0).all()
        adj_TxV = np.asarray(jax.jit(filter_logits, static_argnums=(1, 2, 3))(
            jnp.asarray(logits_BxSxV[b, n - 1:n - 1 + T]), cfg.temperature, cfg.top_k, cfg.top_p))
        ref = jax.nn.log_softmax(adj_TxV)[np.arange(T), out["tokens_BxT"][b]]
        np.testing.assert_allclose(out["logp_sampled_BxT"][b], ref, atol=1e-5)


def test_sequence_logprobs_numpy_reference():
    graphdef, params = tiny()
    tokens_BxL = np.array([[1, 2, 3, 4, 5], [9, 8, 7, 6, 0]], np.int32)
    mask_BxL = np.array([[0, 1, 1, 1, 1], [0, 0, 1, 1, 0]], np.float32)
    got = np.asarray(sequence_logprobs(graphdef, params, tokens_BxL, mask_BxL))
    logits = np.asarray(forward(graphdef, params, tokens_BxL), np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ref = np.zeros_like(mask_BxL)
    for b in range(2):
        for t in range(1, 5):
            ref[b, t] = (logits[b, t - 1, tokens_BxL[b, t]] - lse[b, t - 1]) * mask_BxL[b, t]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_errors():
    graphdef, params = tiny()
    with pytest.raises(ValueError, match="max_len=24"):
        generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, SampleCfg(max_new_tokens=18))
    with pytest.raises(ValueError, match="needs an rng"):
        generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, SampleCfg(max_new_tokens=2))
    with pytest.raises(ValueError, match="group_size=0"):
        generate(graphdef, params, PROMPT_BxP, PROMPT_LEN_B, GREEDY, group_size=0)
    for bad in ({"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SampleCfg(**bad)
