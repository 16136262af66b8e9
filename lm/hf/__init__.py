"""Hugging Face checkpoints in and out of the one sharded GPT.

    from lm import hf
    cfg, params = hf.load("path/to/hf_dir", mesh=mesh, dtype="bfloat16")
    logits = lm.losses.bind(hf.graphdef(cfg), params)(tokens_BxL)
    hf.save(cfg, params, "out_dir", tokenizer_dir="path/to/hf_dir")
    hf.inspect("path/to/hf_dir")   # family, sizes, dtype, tensors mapped

Families: gpt2, llama, mistral, qwen2, qwen3 (also with ``use_sliding_window`` /
``max_window_layers``), gemma, gemma2, gemma3_text (and the text tower of gemma3, saved back as
gemma3_text), olmo2, smollm3, phi3 (fused tensors; ``save(..., family="phi3")``), arcee
(``lm.hf.families``). CLI:
``python -m lm.hf inspect DIR | export RUN_DIR OUT_DIR | sample DIR --prompt ...`` (inspect
prints the layer pattern: which layers slide, which use the local or no rotary).
Not supported (one ``ConfigError`` naming the model_type or field): MoE (mixtral, qwen2_moe,
...), vision towers, partial rotary, rope types other than default / linear / llama3 (yarn,
dynamic, longrope), quantised checkpoints.
Sliding windows (Mistral's, and the per-layer ones) are
implemented as a mask (the KV cache stays full length: no ring buffer). Export picks the family
from the config; a scratch model with rotary + RMSNorm + a plain GELU MLP (the default GPT
here) exports as ``arcee`` (Llama with a non-gated MLP); missing biases are written as zeros.
Modules: ``families`` (config.json <-> ModelCfg), ``params`` (tensor names and layouts),
``safetensors_io`` (memory-mapped reading, sharded writing), ``checkpoint`` (load/save/inspect).
"""

from lm.hf.checkpoint import graphdef, inspect, load, save
from lm.hf.families import SUPPORTED

__all__ = ["SUPPORTED", "graphdef", "inspect", "load", "save"]
