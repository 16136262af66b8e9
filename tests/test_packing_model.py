"""Model side of document packing and the attention switch: a packed row equals its documents
run alone (rope and learned positions, fp32), through the model, the xent loss and the KV cache;
``model.attention`` picks XLA on a CPU and refuses cuDNN there."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm import data_builder
from lm.data import PackedWindows
from lm.losses import token_nll, xent
from lm.model import GPT, ModelCfg
from lm.packing import pack_examples
from lm.sharding import ConfigError
from tests.helpers import TINY

CFG = types.SimpleNamespace(train=types.SimpleNamespace(z_loss=0.0))
EOS = 7


def docs():
    rng = np.random.default_rng(0)
    return [np.append(rng.integers(10, TINY.vocab_size, n), EOS).astype(np.int32)
            for n in (6, 9)]


class Fwd:
    """A tiny GPT and its jitted forwards (one compile per shape, the load here is heavy)."""

    def __init__(self, pos):
        self.model = GPT(dataclasses.replace(TINY, pos=pos), rngs=nnx.Rngs(1))
        self.gd = nnx.graphdef(self.model)
        self.params = nnx.to_pure_dict(nnx.state(self.model, nnx.Param))
        m = lambda p: nnx.merge(self.gd, nnx.State(p))  # noqa: E731
        self.plain = jax.jit(lambda p, t: m(p)(t))
        self.packed = jax.jit(lambda p, t, pos, seg: m(p)(t, positions_BxL=pos,
                                                          segment_ids_BxL=seg))
        self.decode = jax.jit(lambda p, t, c, i, seg, pos: m(p).decode(
            t, c, i, segment_ids_BxL=seg, positions_BxL=pos))

    def nll(self, logits, targets):
        return np.asarray(token_nll(logits, jnp.asarray(targets))[0])


@pytest.fixture(scope="module", params=["rope", "learned"])
def fwd(request):
    return Fwd(request.param)


def padded(rows, L):
    out = np.zeros((len(rows), L), np.int32)
    for r, x in enumerate(rows):
        out[r, :len(x)] = x
    return jnp.asarray(out)


def test_packed_row_equals_documents_alone(fwd):
    a, b = docs()
    L = len(a) + len(b) - 1
    w = PackedWindows(data_builder.InMemorySource([a, b]), np.array([len(a), len(b)]), L,
                      document=True, eos=EOS)[0]
    batch = {k: jnp.asarray(v)[None] for k, v in w.items()}
    nll_packed = fwd.nll(fwd.packed(fwd.params, batch["inputs"], batch["positions"],
                                    batch["segment_ids"]), batch["targets"])[0]
    # each document alone (right-padded to L: causal, so the padding changes nothing before it)
    alone = fwd.nll(fwd.plain(fwd.params, padded([a[:-1], b[:-1]], L)), padded([a[1:], b[1:]], L))
    np.testing.assert_allclose(nll_packed[: len(a) - 1], alone[0, : len(a) - 1],
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(nll_packed[len(a): L], alone[1, : len(b) - 1],
                               atol=1e-5, rtol=1e-5)
    assert w["mask"][len(a) - 1] == 0  # eos -> next document's first token is not a target
    # the xent loss passes segment ids and positions: its sum is the two documents' sums
    _, aux = jax.jit(lambda p, b: xent(p, b, model=fwd.gd, rng=None, cfg=CFG))(fwd.params, batch)
    np.testing.assert_allclose(float(aux["xent"][0]), nll_packed[w["mask"] > 0].sum(),
                               rtol=1e-5)
    # without segment ids the second document sees the first (concat packing differs)
    plain = fwd.nll(fwd.plain(fwd.params, batch["inputs"]), batch["targets"])[0]
    assert np.abs(plain[len(a):] - nll_packed[len(a):]).max() > 1e-3


def test_pack_examples_rows_equal_padded_rows(fwd):
    """SFT packing: several examples in one row score like one padded example per row."""
    rng = np.random.default_rng(2)
    ex = []
    for n in (5, 8, 3):
        s = rng.integers(10, TINY.vocab_size, n + 1).astype(np.int32)
        ex.append((s[:-1], s[1:], (np.arange(n) >= 1).astype(np.float32)))
    packed = pack_examples(ex, seq_len=16, pad_id=0)
    assert packed["inputs"].shape == (1, 16)
    pj = {k: jnp.asarray(v) for k, v in packed.items()}
    nll = fwd.nll(fwd.packed(fwd.params, pj["inputs"], pj["positions"], pj["segment_ids"]),
                  pj["targets"])[0]
    alone = fwd.nll(fwd.plain(fwd.params, padded([e[0] for e in ex], 16)),
                    padded([e[1] for e in ex], 16))
    at = 0
    for r, (inp, _, _) in enumerate(ex):
        np.testing.assert_allclose(nll[at: at + len(inp)], alone[r, : len(inp)],
                                   atol=1e-5, rtol=1e-5)
        at += len(inp)


def test_kv_cache_decode_matches_forward_under_segments(fwd):
    """Prefill a packed [doc A, start of doc B] prompt, then decode B's next tokens one at a time
    with the cache: every step's logits equal the full segment-masked forward's."""
    a, b = docs()
    seq = jnp.asarray(np.concatenate([a, b])[None])  # [1, S]
    seg = jnp.asarray(np.concatenate([np.ones(len(a)), np.full(len(b), 2)]).astype(np.int32)[None])
    pos = jnp.asarray(np.concatenate([np.arange(len(a)), np.arange(len(b))]).astype(np.int32)[None])
    full = np.asarray(fwd.packed(fwd.params, seq, pos, seg))
    P, S = len(a) + 3, seq.shape[1]
    cache = fwd.model.init_cache(1, S, segments=True)
    lg, cache = fwd.decode(fwd.params, seq[:, :P], cache, 0, seg[:, :P], pos[:, :P])
    np.testing.assert_allclose(np.asarray(lg), full[:, :P], atol=1e-5, rtol=1e-5)
    for i in range(P, S):
        lg, cache = fwd.decode(fwd.params, seq[:, i:i + 1], cache, jnp.int32(i),
                               seg[:, i:i + 1], pos[:, i:i + 1])
        np.testing.assert_allclose(np.asarray(lg)[:, 0], full[:, i], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="segment ids and a KV cache go together"):
        fwd.model.decode(seq[:, :2], fwd.model.init_cache(1, S), 0, segment_ids_BxL=seg[:, :2])


# ----------------------------------------------------------------------------- attention switch


def test_cudnn_on_cpu_is_one_clear_config_error():
    cfg = dataclasses.replace(TINY, attention="cudnn", dtype="bfloat16")
    with pytest.raises(ConfigError, match="model.attention='cudnn' needs a GPU, but the JAX "
                                          "backend is 'cpu'"):
        GPT(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"model.attention='flash' is not one of"):
        ModelCfg(attention="flash")


@pytest.mark.parametrize("attention", ["auto", "xla"])
def test_auto_lowers_to_xla_on_cpu_with_default_numerics(attention):
    ref = GPT(TINY, rngs=nnx.Rngs(0))
    model = GPT(dataclasses.replace(TINY, attention=attention), rngs=nnx.Rngs(0))
    gd, params = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model, nnx.Param))
    toks = jnp.asarray(np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 16)), jnp.int32)
    seg = jnp.asarray(np.repeat([[1, 2]], 8, axis=1).repeat(2, 0), jnp.int32)

    def f(p, t, s):
        return nnx.merge(gd, nnx.State(p))(t, segment_ids_BxL=s)
    for text in (jax.jit(f).lower(params, toks, None).as_text(),
                 jax.jit(f).lower(params, toks, seg).compile().as_text()):
        assert "cudnn" not in text.lower() and "custom_call_target=\"__cudnn" not in text
    np.testing.assert_array_equal(np.asarray(model(toks)), np.asarray(ref(toks)))


def test_auto_picks_cudnn_only_where_it_applies():
    from lm import attention as A
    bf16, f32 = jnp.bfloat16, jnp.float32
    assert A.cudnn_supported(bf16, 64, 1024, 1024, False, backend="gpu")
    assert not A.cudnn_supported(bf16, 64, 1024, 1024, False, backend="cpu")
    assert not A.cudnn_supported(f32, 64, 1024, 1024, False, backend="gpu")  # fp32
    assert not A.cudnn_supported(bf16, 60, 1024, 1024, False, backend="gpu")  # head dim % 8
    assert not A.cudnn_supported(bf16, 64, 1023, 1023, True, backend="gpu")  # odd + mask
    assert A.implementation("auto", f32, 64, 16, 16, False) is None  # CPU: today's XLA call
    assert A.implementation("xla", bf16, 64, 16, 16, False) == "xla"
    assert A.implementation("cudnn", bf16, 64, 16, 16, False) == "cudnn"
    with pytest.raises(ConfigError, match="needs bf16/fp16 compute, got model.dtype=float32"):
        A.check("cudnn", f32, backend="gpu")
    A.check("cudnn", bf16, backend="gpu")  # allowed on a GPU


@pytest.mark.parametrize("L,N,K,window,segments", [(1, 4, 4, 0, False), (1, 6, 2, 3, True),
                                                   (5, 6, 3, 0, True), (3, 4, 1, 2, False)])
def test_cached_attention_on_the_kv_major_cache_equals_jax(L, N, K, window, segments):
    """``lm.attention.cached`` on the kv-head-major [B, K, S, H] cache equals
    ``jax.nn.dot_product_attention`` on the same keys in [B, S, K, H] with the same mask."""
    from lm import attention as A
    B, S, H = 2, 12, 8
    ks = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(ks[0], (B, L, N, H))
    k_BxKxSxH = jax.random.normal(ks[1], (B, K, S, H))
    v_BxKxSxH = jax.random.normal(ks[2], (B, K, S, H))
    pos = jnp.array([[4 + i for i in range(L)], [S - L + i for i in range(L)]])
    rng = np.random.default_rng(0)
    seg_k = jnp.asarray(np.sort(rng.integers(1, 3, (B, S)), axis=1)) if segments else None
    seg_q = jnp.take_along_axis(seg_k, pos, 1) if segments else None
    ours = A.cached(q, k_BxKxSxH, v_BxKxSxH, pos, seg_q_BxL=seg_q, seg_k_BxS=seg_k, window=window)
    keep = jnp.arange(S)[None, None] <= pos[:, :, None]
    if window:
        keep = keep & (jnp.arange(S)[None, None] > pos[:, :, None] - window)
    keep = keep[:, None]
    if segments:
        keep = keep & A.segment_mask(seg_q, seg_k)
    ref = jax.nn.dot_product_attention(q, k_BxKxSxH.transpose(0, 2, 1, 3),
                                       v_BxKxSxH.transpose(0, 2, 1, 3), mask=keep,
                                       implementation="xla")
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-6)
