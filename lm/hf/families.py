"""Hugging Face ``config.json`` <-> ``ModelCfg``, one entry per supported ``model_type``.

    cfg = to_model_cfg(hf_config, param_dtype="bfloat16")     # load
    hf_config = to_hf_config(cfg)                             # save (model_type chosen from cfg)

Supported: gpt2, llama (3.x rope scaling), mistral (sliding window), qwen2 (q/k/v bias), qwen3
(q/k norm), gemma (sqrt(d) embedding scale, 1 + w norms, GeGLU), arcee (Llama with a plain
MLP: what a scratch-trained rotary/RMSNorm/GELU model of this codebase exports as). Anything
else, or a field whose value changes the math in a way the one GPT does not implement (MoE,
alternating sliding windows, partial rotary, yarn/dynamic rope, quantisation, ...), is refused
with one ``ConfigError`` naming the ``model_type`` or field.
"""

from __future__ import annotations

import dataclasses

from lm.layers import parse_rope_scaling
from lm.model import ModelCfg
from lm.sharding import ConfigError

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "arcee")
SUPPORTED = ("gpt2",) + LLAMA_LIKE
ARCH = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM",
        "arcee": "ArceeForCausalLM"}
TIED_DEFAULT = {"gpt2": True, "gemma": True}
ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
HF_ACT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
# fields that, when present with a value other than the harmless one, change the math
REFUSED = {"num_experts": (None, 0), "num_local_experts": (None, 0, 1), "moe_intermediate_size":
           (None, 0), "quantization_config": (None,), "partial_rotary_factor": (None, 1.0),
           "use_bidirectional_attention": (None, False), "attn_logit_softcapping": (None,),
           "final_logit_softcapping": (None,), "add_cross_attention": (None, False),
           "scale_attn_by_inverse_layer_idx": (None, False), "reorder_and_upcast_attn":
           (None, False), "scale_attn_weights": (None, True), "vision_config": (None,),
           "text_config": (None,), "use_qk_norm": (None, False)}


def _refuse(mt: str, field: str, value, why: str):
    raise ConfigError(f"config.json: model_type={mt!r} with {field}={value!r} is not supported "
                      f"({why})")


def model_type(hf: dict) -> str:
    mt = hf.get("model_type")
    if mt not in SUPPORTED:
        raise ConfigError(f"config.json: model_type={mt!r} is not supported; supported model "
                          f"types: {list(SUPPORTED)} (MoE, multimodal, gemma2/3 are not)")
    for field, ok in REFUSED.items():
        if field in hf and hf[field] not in ok:
            _refuse(mt, field, hf[field], "this field changes the model's math")
    return mt


def _rope(hf: dict, mt: str) -> tuple[float, str]:
    """(theta, ``ModelCfg.rope_scaling``) from ``rope_parameters`` (transformers 5) or
    ``rope_theta`` + ``rope_scaling`` (transformers 4)."""
    rp = dict(hf.get("rope_parameters") or {})
    rs = hf.get("rope_scaling") or {}
    theta = float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))
    spec = {**rs, **rp}
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind == "default":
        return theta, ""
    if kind == "linear":
        return theta, f"linear:{float(spec['factor'])!r}"
    if kind == "llama3":
        vals = [spec["factor"], spec["low_freq_factor"], spec["high_freq_factor"],
                spec["original_max_position_embeddings"]]
        return theta, "llama3:" + ",".join(repr(float(v)) for v in vals)
    _refuse(mt, "rope_type", kind, "supported rope types: default, linear, llama3")


def to_model_cfg(hf: dict, *, param_dtype: str = "float32", dtype: str | None = None,
                 max_len: int | None = None) -> ModelCfg:
    """The ``ModelCfg`` of a Hugging Face config dict. ``max_len`` caps
    ``max_position_embeddings`` (the KV-cache bound and GPT-2's position table)."""
    mt = model_type(hf)
    tied = bool(hf.get("tie_word_embeddings", TIED_DEFAULT.get(mt, False)))
    common = {"param_dtype": param_dtype, "dtype": dtype or param_dtype,
              "tie_embeddings": tied}
    if mt == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ACTS:
            _refuse(mt, "activation_function", act, f"supported: {sorted(ACTS)}")
        n_pos = int(hf.get("n_positions", 1024))
        D = int(hf["n_embd"])
        return ModelCfg(vocab_size=int(hf["vocab_size"]), d_model=D,
                        n_layers=int(hf["n_layer"]), n_heads=int(hf["n_head"]),
                        d_ff=int(hf.get("n_inner") or 4 * D),
                        max_len=min(n_pos, max_len or n_pos), pos="learned", mlp="gelu",
                        norm="layer", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                        norm_bias=True, qkv_bias=True, out_bias=True, mlp_bias=True,
                        act=ACTS[act], **common)
    act_key = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
    act = hf.get(act_key, "gelu_pytorch_tanh" if mt == "gemma" else "silu")
    if mt == "gemma" and act == "gelu":  # transformers' legacy-config conversion
        act = "gelu_pytorch_tanh"
    if act not in ACTS:
        _refuse(mt, act_key, act, f"supported activations: {sorted(ACTS)}")
    window = 0
    if mt == "mistral":
        window = int(hf.get("sliding_window") or 0)
    elif hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or ()):
        _refuse(mt, "use_sliding_window", True, "per-layer sliding windows are not implemented")
    if any(t != "full_attention" for t in (hf.get("layer_types") or ())) and mt != "mistral":
        _refuse(mt, "layer_types", hf["layer_types"], "only full attention is implemented")
    attn_bias = bool(hf.get("attention_bias", False))
    if mt == "qwen2":
        qkv_bias, out_bias = True, False
    else:
        qkv_bias = out_bias = attn_bias
    if mt in ("mistral", "qwen2") and attn_bias:
        _refuse(mt, "attention_bias", True, "not part of this family")
    theta, scaling = _rope(hf, mt)
    D, N = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    n_pos = int(hf.get("max_position_embeddings", 2048))
    return ModelCfg(vocab_size=int(hf["vocab_size"]), d_model=D,
                    n_layers=int(hf["num_hidden_layers"]), n_heads=N,
                    n_kv_heads=int(hf.get("num_key_value_heads") or N),
                    head_dim=int(hf.get("head_dim") or D // N), d_ff=int(hf["intermediate_size"]),
                    max_len=min(n_pos, max_len or n_pos), pos="rope",
                    mlp="gelu" if mt == "arcee" else "swiglu", norm="rms",
                    norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_base=theta,
                    rope_scaling=scaling, qkv_bias=qkv_bias, out_bias=out_bias,
                    mlp_bias=bool(hf.get("mlp_bias", False)), qk_norm=mt == "qwen3",
                    act=ACTS[act], embed_scale=mt == "gemma",
                    norm_offset=1.0 if mt == "gemma" else 0.0, sliding_window=window, **common)


def choose_family(cfg: ModelCfg) -> str:
    """The ``model_type`` that represents ``cfg`` exactly, or one ``ConfigError`` saying why
    none does. Missing biases are written as zeros (exact), so a bias-free LayerNorm model
    exports as GPT-2 and a bias-free attention as any family."""
    def no(why):
        raise ConfigError(f"cannot export this model to a transformers family: {why}; "
                          f"exportable: {list(SUPPORTED)}")
    if cfg.dlr.on:
        no("model.dlr (latent routing) has no Hugging Face equivalent")
    if cfg.final_logit_softcap:
        no("model.final_logit_softcap is only in gemma2/3, which are not supported")
    if cfg.pos == "learned":
        if cfg.norm != "layer" or cfg.mlp != "gelu" or cfg.act_ not in ("gelu", "gelu_tanh"):
            no("learned positions export as gpt2, which needs norm='layer' and a plain GELU MLP")
        if (cfg.kv_heads != cfg.n_heads or cfg.head_dim_ * cfg.n_heads != cfg.d_model
                or cfg.qk_norm or cfg.embed_scale or cfg.norm_offset or cfg.sliding_window):
            no("gpt2 has no GQA, explicit head_dim, q/k norm, embedding scale, norm offset or "
               "sliding window")
        return "gpt2"
    if cfg.norm != "rms":
        no("rotary models export as llama-style families, which use norm='rms'")
    if cfg.norm_bias:
        no("RMSNorm has no bias")
    gemma = cfg.embed_scale or cfg.norm_offset
    if gemma:
        if not (cfg.embed_scale and cfg.norm_offset == 1.0 and cfg.mlp == "swiglu"):
            no("gemma needs embed_scale, norm_offset=1 and a gated MLP together")
        if cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias or cfg.qk_norm or cfg.sliding_window:
            no("gemma has no biases, q/k norm or sliding window")
        if cfg.act_ not in ("gelu_tanh", "gelu", "silu", "relu"):
            no(f"act={cfg.act_!r}")
        return "gemma"
    if cfg.qk_norm:
        if cfg.qkv_bias != cfg.out_bias or cfg.mlp_bias or cfg.mlp != "swiglu" or \
                cfg.sliding_window:
            no("q/k norm exports as qwen3: attention biases all or none, no MLP bias, a gated "
               "MLP and no sliding window")
        return "qwen3"
    if cfg.qkv_bias and not cfg.out_bias:
        if cfg.mlp_bias or cfg.mlp != "swiglu" or cfg.sliding_window:
            no("q/k/v bias without out bias exports as qwen2: no MLP bias, a gated MLP, "
               "no sliding window")
        return "qwen2"
    if cfg.qkv_bias != cfg.out_bias:
        no("an out-projection bias without q/k/v biases")
    if cfg.sliding_window:
        if cfg.qkv_bias or cfg.mlp_bias or cfg.mlp != "swiglu":
            no("a sliding window exports as mistral: no biases and a gated MLP")
        return "mistral"
    return "llama" if cfg.mlp == "swiglu" else "arcee"


def export_cfg(cfg: ModelCfg, family: str) -> ModelCfg:
    """``cfg`` as the family stores it (GPT-2's biases made explicit): the cfg ``hf.load`` gives
    back for the written ``config.json``."""
    if family == "gpt2":
        return dataclasses.replace(cfg, norm_bias=True, qkv_bias=True, out_bias=True,
                                   mlp_bias=True)
    return cfg


def to_hf_config(cfg: ModelCfg, family: str, dtype: str, extra: dict | None = None) -> dict:
    """``config.json`` for ``cfg`` as ``family`` (see ``choose_family``)."""
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[dtype]
    out = {"architectures": [ARCH[family]], "model_type": family, "vocab_size": cfg.vocab_size,
           "tie_word_embeddings": cfg.tie_embeddings, "dtype": torch_dtype,
           "torch_dtype": torch_dtype, "bos_token_id": None, "eos_token_id": None,
           "pad_token_id": None}  # unknown unless given (else transformers fills its defaults)
    if family == "gpt2":
        out.update(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                   n_inner=cfg.d_ff, n_positions=cfg.max_len, n_ctx=cfg.max_len,
                   layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0,
                   attn_pdrop=0.0, activation_function="gelu" if cfg.act_ == "gelu"
                   else "gelu_new")
        return {**out, **(extra or {})}
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
    kind, vals = parse_rope_scaling(cfg.rope_scaling)
    if kind == "linear":
        rope.update(rope_type="linear", factor=vals[0])
    elif kind == "llama3":
        rope.update(rope_type="llama3", factor=vals[0], low_freq_factor=vals[1],
                    high_freq_factor=vals[2], original_max_position_embeddings=int(vals[3]))
    out.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
               num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
               head_dim=cfg.head_dim_, intermediate_size=cfg.d_ff,
               max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
               hidden_act=HF_ACT[cfg.act_], rope_parameters=rope, rope_theta=cfg.rope_base,
               attention_dropout=0.0)
    if family in ("llama", "arcee", "qwen3", "gemma"):
        out["attention_bias"] = cfg.qkv_bias
    if family in ("llama", "arcee"):
        out["mlp_bias"] = cfg.mlp_bias
    if family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if family in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, max_window_layers=cfg.n_layers)
    return {**out, **(extra or {})}
