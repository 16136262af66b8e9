"""Per-family parity with transformers (the oracle): logits on a ragged right-padded batch,
per-token log-probs of a completion, and a greedy 32-token continuation, fp32, eager attention,
on tiny random checkpoints built here (tests/hf_fixtures.py); KV-cache decoding past the
sliding window of the windowed families. Run with ``-s`` to see the table.
"""

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from lm import hf  # noqa: E402
from lm.losses import bind  # noqa: E402
from lm.sample import SampleCfg, generate, sequence_logprobs  # noqa: E402
from tests import hf_fixtures as fx  # noqa: E402

TABLE: dict[str, dict] = {}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_families")
    out = {}
    for name in fx.FAMILIES:
        path = str(root / name)
        model = fx.build(name, path)
        cfg, params = hf.load(path)
        out[name] = (path, model, cfg, params)
    yield out
    if TABLE:
        print("\nfamily | max abs logit diff | max abs logp diff | greedy 32 match")
        for k, r in TABLE.items():
            print(f"{k} | {r.get('logit', float('nan')):.2e} | {r.get('logp', float('nan')):.2e}"
                  f" | {r.get('greedy', '-')}")


@pytest.mark.parametrize("name", sorted(fx.FAMILIES))
def test_logits_and_logprobs_match_transformers(checkpoints, name):
    path, model, cfg, params = checkpoints[name]
    assert cfg.param_dtype == "float32"
    toks, mask = fx.ragged_batch()
    want = fx.hf_logits(model, toks, mask)
    gd = hf.graphdef(cfg)
    got = np.asarray(bind(gd, params)(jnp.asarray(toks)))
    valid = mask.astype(bool)
    diff = np.abs(got - want)[valid].max()
    # per-token log-probs of the completion (positions >= 4 of each row) as RL losses read them
    comp = mask * (np.arange(toks.shape[1])[None] >= 4)
    logp = np.asarray(sequence_logprobs(gd, params, jnp.asarray(toks), jnp.asarray(comp)))
    lsm = torch.log_softmax(torch.as_tensor(want[:, :-1]), -1).numpy()
    ref = np.take_along_axis(lsm, toks[:, 1:, None], -1)[..., 0]
    ref = np.pad(ref, ((0, 0), (1, 0))) * comp
    TABLE.setdefault(name, {}).update(logit=float(diff), logp=float(np.abs(logp - ref).max()))
    assert diff < 1e-4, f"{name}: max abs logit diff {diff:.2e}"
    np.testing.assert_allclose(logp, ref, atol=1e-4)


@pytest.mark.parametrize("name", sorted(fx.FAMILIES))
def test_greedy_continuation_matches_generate(checkpoints, name):
    path, model, cfg, params = checkpoints[name]
    prompts = [[5, 17, 99, 42, 7, 64], [11, 3, 120]]
    P = max(map(len, prompts))
    prompt_BxP = np.zeros((2, P), np.int32)
    for b, p in enumerate(prompts):
        prompt_BxP[b, :len(p)] = p
    out = generate(hf.graphdef(cfg), params, jnp.asarray(prompt_BxP),
                   jnp.asarray([len(p) for p in prompts]),
                   SampleCfg(max_new_tokens=32, temperature=0.0))
    ours = np.asarray(out["tokens_BxT"])
    ok = []
    for b, p in enumerate(prompts):
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=32,
                                 min_new_tokens=32, eos_token_id=None, pad_token_id=0,
                                 attention_mask=torch.ones(1, len(p), dtype=torch.long))
        ok.append(ref[0, len(p):].tolist() == ours[b].tolist())
    TABLE.setdefault(name, {})["greedy"] = f"{sum(ok)}/{len(ok)} rows"
    assert all(ok), f"{name}: greedy continuations differ ({ok})"


WINDOWED = sorted(n for n in fx.FAMILIES if n.endswith("_sliding") or n in (
    "mistral", "gemma2", "gemma3_text", "smollm3", "phi3"))


@pytest.mark.parametrize("name", WINDOWED)
def test_decode_past_the_window_matches_forward(checkpoints, name):
    """Prefill 3 tokens, then one token at a time to 20 (window 4 or 8): the cached decode
    gives the full forward's logits; and the window (per layer) is not a no-op here."""
    import dataclasses

    import jax
    path, model, cfg, params = checkpoints[name]
    gd = hf.graphdef(cfg)
    toks = jnp.asarray(fx.ragged_batch()[0][:1])  # the 20-token row
    full = np.asarray(bind(gd, params)(toks))
    decode = jax.jit(lambda p, t, c, i: bind(gd, p).decode(t, c, i))
    cache = bind(gd, params).init_cache(1, 20)
    steps, cache = decode(params, toks[:, :3], cache, 0)
    steps = [steps]
    for t in range(3, 20):
        lg, cache = decode(params, toks[:, t:t + 1], cache, t)
        steps.append(lg)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5)
    no_window = hf.graphdef(dataclasses.replace(cfg, sliding_window=0, window_layers=()))
    assert np.abs(np.asarray(bind(no_window, params)(toks)) - full).max() > 1e-3
