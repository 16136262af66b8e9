"""Small shared builders for tests (tiny models, random batches, meshes)."""

import jax
import numpy as np
from flax import nnx

from lm import sharding as sh
from lm.model import GPT, ModelCfg

TINY = ModelCfg(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32)


def tiny_model(cfg: ModelCfg = TINY, seed: int = 0):
    """(graphdef, params) of a tiny GPT on one device."""
    model = GPT(cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def random_batch(B: int, L: int, V: int, seed: int = 0, mask_frac: float = 0.0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, V, (B, L + 1)).astype(np.int32)
    mask = (rng.random((B, L)) >= mask_frac).astype(np.float32)
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": mask}


def mesh(shape=(2, 2, 2)):
    return sh.make_mesh(sh.MeshCfg(*shape), jax.devices()[: int(np.prod(shape))])


QWEN3_CORPUS = [f"{a}+{b}={a + b} {a}-{b}={a - b} S{a}{b}:0123456789 sorted" for a in range(40)
                for b in range(0, 40, 7)]


def make_tiny_qwen3(out) -> str:
    """A random 2-layer Qwen3 (GQA 4/2 heads, head_dim 16, tied) with its own byte-level BPE
    tokenizer (eos = pad = ``<|endoftext|>``) and Qwen2.5's ChatML chat template, saved as a
    Hugging Face checkpoint in ``out`` with transformers (nothing is downloaded)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tests.hf_chat_templates import QWEN25

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(QWEN3_CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                               pad_token="<|endoftext|>")
    tok.chat_template = QWEN25
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(
        vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=128, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(out)
    return str(out)


def same_records(a_recs, b_recs):
    """Same (step, split) records with equal float fields (timings aside): a resumed RL run
    against the uninterrupted one."""
    key = lambda r: (r["step"], r.get("split"))
    assert sorted(map(key, a_recs)) == sorted(map(key, b_recs))
    for a, b in zip(sorted(a_recs, key=key), sorted(b_recs, key=key)):
        for k, v in a.items():
            if isinstance(v, float) and k not in ("time", "wall_s", "step_time"):
                np.testing.assert_allclose(b[k], v, rtol=1e-5, atol=1e-7, err_msg=f"{key(a)} {k}")


def make_shallow_checkpoint(src: str, out, n_layers: int = 2) -> str:
    """The HF checkpoint in ``src`` cut to its first ``n_layers`` decoder layers (the real
    weights, embeddings, final norm, tokenizer and chat template untouched; ``config.json``'s
    ``num_hidden_layers`` set to ``n_layers``): the same preset code path as the full model
    at a fraction of the compile and step time, for the suite's end-to-end preset runs."""
    import json
    import os
    import re
    import shutil

    from safetensors.numpy import load_file, save_file

    os.makedirs(out, exist_ok=True)
    for name in os.listdir(src):
        if name not in ("config.json",) and not name.endswith(".safetensors"):
            shutil.copy(os.path.join(src, name), os.path.join(out, name))
    with open(os.path.join(src, "config.json")) as fh:
        cfg = json.load(fh)
    if not 0 < n_layers <= cfg["num_hidden_layers"]:
        raise ValueError(f"n_layers={n_layers}: the checkpoint has {cfg['num_hidden_layers']}")
    cfg["num_hidden_layers"] = n_layers
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    layer = re.compile(r"\.layers\.(\d+)\.")
    for name in sorted(os.listdir(src)):
        if name.endswith(".safetensors"):
            tensors = load_file(os.path.join(src, name))
            keep = {k: v for k, v in tensors.items()
                    if (m := layer.search(k)) is None or int(m.group(1)) < n_layers}
            save_file(keep, os.path.join(out, name), metadata={"format": "pt"})
    return str(out)
