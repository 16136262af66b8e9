"""lm.hf on mixture-of-experts checkpoints (qwen3_moe, mixtral) against transformers (the oracle):
logits on a ragged right-padded batch, per-token log-probs, a greedy 32-token continuation;
HF -> ours -> HF identical tensors; a scratch MoE exported and reopened by transformers; the
sharded load holds whole experts per fsdp shard. Tiny random models built here, weights
perturbed (``tests/hf_fixtures.py``); fp32, eager attention. ``-s`` prints the parity table."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
import transformers  # noqa: E402

from lm import hf  # noqa: E402
from lm.losses import bind  # noqa: E402
from lm.sample import SampleCfg, generate, sequence_logprobs  # noqa: E402
from tests import hf_fixtures as fx  # noqa: E402
from tests.helpers import TINY, mesh, tiny_model  # noqa: E402

COMMON = dict(vocab_size=fx.V, hidden_size=fx.D, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=fx.MAXPOS)
FAMILIES = {
    # layer 1 dense (mlp_only_layers), 0 and 2 MoE; renormalised top-2 of 4 experts
    "qwen3_moe": dict(model_type="qwen3_moe", head_dim=16, intermediate_size=48,
                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1],
                      tie_word_embeddings=True),
    # 30B-A3B's other switch: raw top-k probabilities (norm_topk_prob false), every 2nd layer
    "qwen3_moe_step2": dict(model_type="qwen3_moe", head_dim=16, intermediate_size=48,
                            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                            norm_topk_prob=False, decoder_sparse_step=2),
    "mixtral": dict(model_type="mixtral", intermediate_size=24, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=6, tie_word_embeddings=False),
}
TABLE: dict[str, dict] = {}


def build(name, out_dir, seed=0):
    torch.manual_seed(seed)
    kw = {**COMMON, **FAMILIES[name]}
    cfg = transformers.AutoConfig.for_model(kw.pop("model_type"), **kw, bos_token_id=1,
                                            eos_token_id=2, pad_token_id=0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.1 if p.ndim == 1 else 0.25) * torch.randn_like(p))
    model = model.float().eval()
    model.save_pretrained(out_dir)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_moe")
    out = {}
    for name in FAMILIES:
        path = str(root / name)
        model = build(name, path)
        out[name] = (path, model) + hf.load(path)
    yield out
    if TABLE:
        print("\nfamily | max abs logit diff | max abs logp diff | greedy 32 match")
        for k, r in TABLE.items():
            print(f"{k} | {r.get('logit', float('nan')):.2e} | {r.get('logp', float('nan')):.2e}"
                  f" | {r.get('greedy', '-')}")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_logprobs_and_greedy_match_transformers(checkpoints, name):
    path, model, cfg, params = checkpoints[name]
    assert cfg.moe_experts == 4 and cfg.moe_top_k == 2
    assert [cfg.is_moe(i) for i in range(3)] == {
        "qwen3_moe": [True, False, True], "qwen3_moe_step2": [False, True, False],
        "mixtral": [True, True, True]}[name]
    toks, mask = fx.ragged_batch()
    want = fx.hf_logits(model, toks, mask)
    gd = hf.graphdef(cfg)
    got = np.asarray(jax.jit(lambda p, t: bind(gd, p)(t))(params, jnp.asarray(toks)))
    diff = np.abs(got - want)[mask.astype(bool)].max()
    comp = mask * (np.arange(toks.shape[1])[None] >= 4)
    logp = np.asarray(sequence_logprobs(gd, params, jnp.asarray(toks), jnp.asarray(comp)))
    lsm = torch.log_softmax(torch.as_tensor(want[:, :-1]), -1).numpy()
    ref = np.pad(np.take_along_axis(lsm, toks[:, 1:, None], -1)[..., 0], ((0, 0), (1, 0)))
    TABLE.setdefault(name, {}).update(logit=float(diff),
                                      logp=float(np.abs(logp - ref * comp).max()))
    assert diff < 1e-4, f"{name}: max abs logit diff {diff:.2e}"
    np.testing.assert_allclose(logp, ref * comp, atol=1e-4)
    prompts = [[5, 17, 99, 42, 7, 64], [11, 3, 120]]
    prompt_BxP = np.zeros((2, 6), np.int32)
    for b, p in enumerate(prompts):
        prompt_BxP[b, :len(p)] = p
    out = np.asarray(generate(gd, params, jnp.asarray(prompt_BxP), jnp.asarray([6, 3]),
                              SampleCfg(max_new_tokens=32, temperature=0.0))["tokens_BxT"])
    ok = []
    for b, p in enumerate(prompts):
        with torch.no_grad():
            ref_t = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=32,
                                   min_new_tokens=32, eos_token_id=None, pad_token_id=0,
                                   attention_mask=torch.ones(1, len(p), dtype=torch.long))
        ok.append(ref_t[0, len(p):].tolist() == out[b].tolist())
    TABLE[name]["greedy"] = f"{sum(ok)}/{len(ok)} rows"
    assert all(ok), f"{name}: greedy continuations differ ({ok})"


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral"])
def test_load_save_identical_tensors(checkpoints, name, tmp_path):
    path, _, cfg, params = checkpoints[name]
    out = hf.save(cfg, params, str(tmp_path / "out"), max_shard_bytes=30_000)
    a, b = fx.tensors(path), fx.tensors(out)
    assert sorted(a) == sorted(b)
    assert any(".experts.3." in k for k in a)  # per-expert tensors, as the hub stores them
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert hf.load(out)[0] == cfg
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == name
    assert hf.inspect(out)["layer_pattern"] == {
        "qwen3_moe": "full+moe:4x2, full, full+moe:4x2",
        "mixtral": "3 x sliding:6+moe:4x2"}[name]


def test_scratch_moe_exports_to_transformers(tmp_path):
    """A scratch MoE of this codebase (every layer MoE, no q/k norm) exports as mixtral, with
    q/k norm and a dense layer as qwen3_moe; transformers gives the same logits."""
    base = dataclasses.replace(TINY, mlp="swiglu", n_kv_heads=2, moe_experts=4, moe_d_ff=16,
                               tie_embeddings=False)
    for family, cfg in (("mixtral", base),
                        ("qwen3_moe", dataclasses.replace(base, qk_norm=True,
                                                          moe_dense_layers=(0,)))):
        gd, params = tiny_model(cfg, seed=1)
        params = jax.tree.map(lambda x: x + 0.2 * np.random.default_rng(0).normal(
            size=x.shape).astype(np.float32), params)
        out = hf.save(cfg, params, str(tmp_path / family))
        assert json.load(open(os.path.join(out, "config.json")))["model_type"] == family
        model = transformers.AutoModelForCausalLM.from_pretrained(
            out, attn_implementation="eager").float().eval()
        toks, mask = fx.ragged_batch()
        toks = toks % cfg.vocab_size
        want = fx.hf_logits(model, toks, mask)
        got = np.asarray(jax.jit(lambda p, t, gd=gd: bind(gd, p)(t))(params, jnp.asarray(toks)))
        assert np.abs(got - want)[mask.astype(bool)].max() < 1e-4, family


def test_sharded_load_holds_whole_experts_per_fsdp_shard(checkpoints):
    """fsdp=4 x tensor=2: each fsdp shard holds one of the 4 experts, its hidden split over
    tensor; the values equal the single-device load."""
    path, _, cfg, single = checkpoints["mixtral"]
    _, sharded = hf.load(path, mesh=mesh((1, 4, 2)))
    w = sharded["block_0"]["moe"]["gate_ExDxF"]
    assert tuple(w.sharding.spec) == ("fsdp", None, "tensor")
    assert w.sharding.shard_shape(w.shape) == (1, cfg.d_model, cfg.moe_d_ff // 2)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
