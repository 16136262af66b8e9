"""Hugging Face checkpoints in and out of the one sharded GPT.

    from lm import hf
    cfg, params = hf.load("path/to/hf_dir", mesh=mesh, dtype="bfloat16")
    logits = lm.losses.bind(hf.graphdef(cfg), params)(tokens_BxL)
    hf.save(cfg, params, "out_dir", tokenizer_dir="path/to/hf_dir")
    hf.inspect("path/to/hf_dir")   # family, sizes, dtype, tensors mapped

Families: gpt2, llama, mistral, qwen2, qwen3, gemma, arcee (``lm.hf.families``). CLI:
``python -m lm.hf inspect DIR | export RUN_DIR OUT_DIR | sample DIR --prompt ...``.
Not supported (one ``ConfigError`` naming the model_type or field): MoE (mixtral, qwen2_moe,
...), multimodal, gemma2/3 (alternating sliding windows, attention softcaps), per-layer sliding
windows (qwen2/3 ``use_sliding_window``), partial rotary, rope types other than default /
linear / llama3 (yarn, dynamic, longrope), quantised checkpoints. Mistral's sliding window is
implemented as a mask (the KV cache stays full length: no ring buffer). Export picks the family
from the config; a scratch model with rotary + RMSNorm + a plain GELU MLP (the default GPT
here) exports as ``arcee`` (Llama with a non-gated MLP); missing biases are written as zeros.
Modules: ``families`` (config.json <-> ModelCfg), ``params`` (tensor names and layouts),
``safetensors_io`` (memory-mapped reading, sharded writing), ``checkpoint`` (load/save/inspect).
"""

from lm.hf.checkpoint import graphdef, inspect, load, save
from lm.hf.families import SUPPORTED

__all__ = ["SUPPORTED", "graphdef", "inspect", "load", "save"]
