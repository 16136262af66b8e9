# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Start from a pretrained model: load, probe, chat, one DPO step
#
# A Hugging Face checkpoint goes into the one GPT of this codebase (`lm.hf.load`), its
# per-layer matrix-based entropy is probed (`lm.probe`), its chat template renders a prompt that
# the KV-cache sampler continues until EOS, and one DPO step runs with the checkpoint as policy
# and reference. With internet, `hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir ckpt` gives a
# real one; offline, this notebook builds a *random* tiny Qwen2 with `transformers` (the test
# oracle of the `dev` extra; nothing is downloaded), so the text it samples is noise.

# %%
import os
import tempfile

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lm import hf
from lm.config import Config, override
from lm.probe import layer_entropies, pretrained_batches
from lm.sample import SampleCfg, generate
from lm.setup import build
from lm.train import to_host
from tokenization.hf import HFTokenizer

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
text = " ".join(f"In the beginning {i} and {i + 1} were {2 * i + 1}." for i in range(300))

ckpt = tempfile.mkdtemp(prefix="tiny_qwen2_")
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator([text], trainers.BpeTrainer(
    vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
transformers.PreTrainedTokenizerFast(
    tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
    chat_template=CHATML).save_pretrained(ckpt)
torch.manual_seed(0)
transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
    vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256, tie_word_embeddings=True)).save_pretrained(ckpt)
sorted(os.listdir(ckpt))

# %% [markdown]
# `hf.inspect` reads the config and the safetensors headers only; `hf.load` gives a `ModelCfg`
# and the pure params dict (`mesh=` places each tensor straight onto its sharding).

# %%
print(hf.inspect(ckpt))
cfg, params = hf.load(ckpt, dtype="float32")
gd = hf.graphdef(cfg)
print(cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.qkv_bias)

# %% [markdown]
# Per-layer MBE (what the IBLM/GAPT losses regularise) on text in the checkpoint's own tokens:

# %%
tok = HFTokenizer.load(ckpt)
batches = pretrained_batches(tok, text, batch_size=4, seq_len=64, max_batches=2)
ent = layer_entropies(gd, params, batches, patch_size=8)
{k: np.round(v, 3).tolist() for k, v in ent.items()}

# %% [markdown]
# The chat template renders the prompt exactly as transformers would; sampling stops at EOS.

# %%
prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                 add_generation_prompt=True)
print(prompt)
ids = tok.encode(prompt, add_special_tokens=False)
out = generate(gd, params, ids[None], np.array([len(ids)], np.int32),
               SampleCfg(max_new_tokens=16, temperature=0.0, eos_id=tok.eos_id,
                         pad_id=tok.pad_id), None)
tok.decode(np.asarray(out["tokens_BxT"][0])[: int(out["lengths_B"][0])])

# %% [markdown]
# One DPO step with the checkpoint as policy and reference: `model.init_from` makes the builder
# take the architecture and weights from the checkpoint (`lm.pretrained`).

# %%
run = override(Config(), [f"model.init_from={ckpt}", "train.loss=dpo", "train.batch_size=2",
                          "train.seq_len=48", "train.steps=1", "opt.warmup=0"])
setup = build(run, loss_state={"ref_params": params})


def pair(p, c, S=48):
    """Right-padded tokens of prompt + completion and the completion's mask."""
    p_ids = tok.encode(p, add_special_tokens=False)
    x = np.concatenate([p_ids, tok.encode(c, add_special_tokens=False), [tok.eos_id]])[:S]
    t = np.full(S, tok.pad_id, np.int32)
    t[: len(x)] = x
    m = np.zeros(S, np.float32)
    m[len(p_ids): len(x)] = 1.0
    return t, m


(ct, cm), (rt, rm) = pair(prompt, "5"), pair(prompt, "7")
batch = {"chosen_tokens": np.stack([ct, ct]), "chosen_mask": np.stack([cm, cm]),
         "rejected_tokens": np.stack([rt, rt]), "rejected_mask": np.stack([rm, rm])}
state, metrics = setup.train_step(setup.state, batch)
to_host(metrics)  # loss = -log sigmoid(0) = ln 2 at the first step: policy == reference
