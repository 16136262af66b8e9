"""Tiny random Hugging Face checkpoints built in the test (nothing downloaded), one per family.

Every parameter is perturbed after transformers' init (vectors ``+ 0.1 N(0, 1)``, matrices
``+ 0.25 N(0, 1)``) so biases and norm weights are not their trivial zeros/ones and greedy
32-token continuations are varied (with transformers' 0.02 init most families repeat one
token), not a constant stream. fp32, eager attention.
"""

from __future__ import annotations

import os

import numpy as np

V, D, LAYERS, HEADS, MAXPOS = 128, 32, 2, 4, 64

FAMILIES = {
    "gpt2": dict(model_type="gpt2", vocab_size=V, n_embd=D, n_layer=LAYERS, n_head=HEADS,
                 n_positions=MAXPOS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "llama": dict(model_type="llama", vocab_size=V, hidden_size=D, intermediate_size=64,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                  max_position_embeddings=MAXPOS, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16}),
    "llama_tied_bias": dict(model_type="llama", vocab_size=V, hidden_size=D,
                            intermediate_size=64, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, num_key_value_heads=HEADS,
                            max_position_embeddings=MAXPOS, tie_word_embeddings=True,
                            attention_bias=True, mlp_bias=True,
                            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                             "factor": 2.0}),
    "mistral": dict(model_type="mistral", vocab_size=V, hidden_size=D, intermediate_size=64,
                    num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                    max_position_embeddings=MAXPOS, sliding_window=8),
    "qwen2": dict(model_type="qwen2", vocab_size=V, hidden_size=D, intermediate_size=64,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                  max_position_embeddings=MAXPOS, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", vocab_size=V, hidden_size=D, intermediate_size=64,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                  head_dim=16, max_position_embeddings=MAXPOS, tie_word_embeddings=True),
    "gemma": dict(model_type="gemma", vocab_size=V, hidden_size=D, intermediate_size=64,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                  head_dim=16, max_position_embeddings=MAXPOS,
                  hidden_act="gelu_pytorch_tanh"),
    # per-layer sliding windows: layer 1 slides (window 4 < the 20-token rows and 32-token
    # continuations), layer 0 is full
    "qwen2_sliding": dict(model_type="qwen2", vocab_size=V, hidden_size=D, intermediate_size=64,
                          num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          num_key_value_heads=2, max_position_embeddings=MAXPOS,
                          use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3_sliding": dict(model_type="qwen3", vocab_size=V, hidden_size=D, intermediate_size=64,
                          num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          num_key_value_heads=2, head_dim=16, max_position_embeddings=MAXPOS,
                          tie_word_embeddings=False, use_sliding_window=True, sliding_window=4,
                          max_window_layers=1),
    # Gemma 2: sandwich norms, query_pre_attn_scalar != head_dim, small caps so both bite,
    # layer 0 sliding (window 4) and layer 1 full (the default alternation)
    "gemma2": dict(model_type="gemma2", vocab_size=V, hidden_size=D, intermediate_size=64,
                   num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                   head_dim=16, max_position_embeddings=MAXPOS, query_pre_attn_scalar=24,
                   sliding_window=4, attn_logit_softcapping=3.0, final_logit_softcapping=5.0),
    # Gemma 3 text: q/k norms, local rotary base for the sliding layer, linear-scaled global
    "gemma3_text": dict(model_type="gemma3_text", vocab_size=V, hidden_size=D,
                        intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        num_key_value_heads=1, head_dim=16, max_position_embeddings=MAXPOS,
                        query_pre_attn_scalar=24, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention"],
                        rope_parameters={"sliding_attention": {"rope_type": "default",
                                                               "rope_theta": 100.0},
                                         "full_attention": {"rope_type": "linear",
                                                            "rope_theta": 10000.0,
                                                            "factor": 4.0}}),
    # a gemma3 (multimodal) checkpoint: its text tower (model.language_model.*) is loaded, a
    # tiny SigLIP vision tower is left out
    "gemma3_tower": dict(model_type="gemma3", text_config=dict(
        vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=MAXPOS, query_pre_attn_scalar=16, sliding_window=4,
        sliding_window_pattern=2, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16,
                           intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14), mm_tokens_per_image=1),
    # OLMo 2: post-norm blocks, q/k RMSNorm over the whole projection (GQA: 64 and 32 wide)
    "olmo2": dict(model_type="olmo2", vocab_size=V, hidden_size=D, intermediate_size=64,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                  max_position_embeddings=MAXPOS),
    # SmolLM3: layer 1 has no rotary (NoPE) and slides (window 4), layer 0 is a full rotary one
    "smollm3": dict(model_type="smollm3", vocab_size=V, hidden_size=D, intermediate_size=64,
                    num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                    max_position_embeddings=MAXPOS, no_rope_layers=[1, 0],
                    use_sliding_window=True, sliding_window=4),
    # Phi-3: fused qkv_proj (GQA rows q, k, v) and gate_up_proj, one window for every layer
    "phi3": dict(model_type="phi3", vocab_size=V, hidden_size=D, intermediate_size=64,
                 num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                 max_position_embeddings=MAXPOS, original_max_position_embeddings=MAXPOS,
                 sliding_window=6),
    "arcee": dict(model_type="arcee", vocab_size=V, hidden_size=D, intermediate_size=64,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                  max_position_embeddings=MAXPOS, hidden_act="gelu_pytorch_tanh"),
}


def hf_config(name: str):
    import transformers
    kw = dict(FAMILIES[name])
    mt = kw.pop("model_type")
    return transformers.AutoConfig.for_model(mt, **kw, bos_token_id=1, eos_token_id=2,
                                             pad_token_id=0)


def build(name: str, out_dir: str, seed: int = 0, dtype: str = "float32"):
    """A random tiny transformers model of family ``name`` saved to ``out_dir``; returns it."""
    import torch
    import transformers
    torch.manual_seed(seed)
    cfg = hf_config(name)
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.1 if p.ndim == 1 else 0.25) * torch.randn_like(p))
    model = model.to(getattr(torch, dtype)).eval()
    model.save_pretrained(out_dir)
    return model


def ragged_batch(seed: int = 0, lengths=(20, 13, 7)):
    """Right-padded tokens [B, L] (pad 0) and their mask."""
    rng = np.random.default_rng(seed)
    L = max(lengths)
    toks = rng.integers(3, V, (len(lengths), L)).astype(np.int32)
    mask = (np.arange(L)[None] < np.array(lengths)[:, None]).astype(np.int32)
    return np.where(mask > 0, toks, 0).astype(np.int32), mask


def hf_logits(model, toks, mask):
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(toks, dtype=torch.long),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long))
    return out.logits.float().numpy()


def tensors(path: str) -> dict:
    """Every tensor of a HF directory as numpy (bf16 via its raw bits)."""
    from lm.hf.safetensors_io import SafetensorsDir
    files = SafetensorsDir(path)
    return {n: np.array(files.array(n)) for n in files.names}


def text_tower(tensors: dict) -> dict:
    """A gemma3 checkpoint's text-tower tensors under gemma3_text's names (``model.X``)."""
    out = {}
    for k, v in tensors.items():
        for pre, to in (("language_model.model.", "model."), ("model.language_model.", "model."),
                        ("language_model.lm_head.", "lm_head.")):
            if k.startswith(pre):
                out[to + k[len(pre):]] = v
    return out


def listing(path: str) -> list[str]:
    return sorted(os.listdir(path))


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def add_tokenizer(out_dir: str) -> None:
    """A tiny BPE ``tokenizer.json`` (vocab <= V; pad 0, bos 1, eos 2 as in the model configs)
    with a short ChatML template, saved by transformers into ``out_dir``."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    words = ["the", "cat", "sat", "on", "a", "mat", "hello", "world", "dog", "ran"]
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=V, special_tokens=specials,
                                                        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHATML, bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
