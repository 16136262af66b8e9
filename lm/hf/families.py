"""Hugging Face ``config.json`` <-> ``ModelCfg``, one entry per supported ``model_type``.

    cfg = to_model_cfg(hf_config, param_dtype="bfloat16")     # load
    hf_config = to_hf_config(cfg)                             # save (model_type chosen from cfg)

Supported: gpt2, llama (3.x rope scaling), mistral (sliding window), qwen2 (q/k/v bias), qwen3
(q/k norm; both with ``use_sliding_window`` + ``max_window_layers`` or ``layer_types``), gemma
(sqrt(d) embedding scale, 1 + w norms, GeGLU), gemma2 (sandwich norms, ``query_pre_attn_scalar``,
attention and final logit softcaps, alternating sliding layers), gemma3_text (gemma2 plus q/k
norms, ``layer_types`` / ``sliding_window_pattern`` and local/global rotary tables; a
``gemma3`` checkpoint's text tower), olmo2 (post-norm blocks, q/k norms over the whole
projection), smollm3 (``no_rope_layers``), phi3 (fused qkv/gate_up tensors, ``lm.hf.params``), arcee
(Llama with a plain MLP: what a scratch-trained rotary/RMSNorm/GELU model of this codebase
exports as), and the mixtures of experts (``lm.moe``) qwen3_moe (q/k norm, ``num_experts``,
``norm_topk_prob``, ``decoder_sparse_step`` + ``mlp_only_layers``: dense MLPs elsewhere) and
mixtral (Mistral with an MoE in every layer, top-k always renormalised). Anything
else, or a field whose value changes the math in a way the one GPT does not implement (other
MoE families, partial rotary, yarn/dynamic rope, quantisation, ...), is refused
with one ``ConfigError`` naming the ``model_type`` or field.
"""

from __future__ import annotations

import dataclasses

from lm.layers import parse_rope_scaling
from lm.model import ModelCfg
from lm.sharding import ConfigError

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "arcee", "gemma2", "gemma3_text",
              "olmo2", "smollm3", "phi3", "qwen3_moe", "mixtral")
SUPPORTED = ("gpt2",) + LLAMA_LIKE + ("gemma3",)  # gemma3: its text tower (as gemma3_text)
ARCH = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM",
        "arcee": "ArceeForCausalLM", "gemma2": "Gemma2ForCausalLM",
        "gemma3_text": "Gemma3ForCausalLM", "olmo2": "Olmo2ForCausalLM",
        "smollm3": "SmolLM3ForCausalLM", "phi3": "Phi3ForCausalLM",
        "qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM"}
MOE_FAMILIES = ("qwen3_moe", "mixtral")
MOE_FIELDS = ("num_experts", "num_local_experts", "moe_intermediate_size")
GEMMAS = ("gemma", "gemma2", "gemma3_text")  # sqrt(d) embedding scale, 1 + w norms
SANDWICH = ("gemma2", "gemma3_text")  # pre- and post-norms around attention and MLP
TIED_DEFAULT = {"gpt2": True, "gemma": True, "gemma2": True, "gemma3_text": True}
SOFTCAPS = ("attn_logit_softcapping", "final_logit_softcapping")
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


# Gemma3TextConfig's defaults (transformers 5.x): the text_config of a ``gemma3`` checkpoint
# lists only the fields that differ from them
GEMMA3_TEXT_DEFAULTS = dict(
    model_type="gemma3_text", vocab_size=262_208, hidden_size=2304, intermediate_size=9216,
    num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131_072, rms_norm_eps=1e-6,
    tie_word_embeddings=True, attention_bias=False, query_pre_attn_scalar=256,
    sliding_window=4096)


def text_config(hf: dict) -> dict:
    """The language model's config: a ``gemma3`` (multimodal) checkpoint's ``text_config`` over
    Gemma3TextConfig's defaults (its vision tower is not loaded), else ``hf`` itself."""
    if hf.get("model_type") != "gemma3":
        return hf
    text = {**GEMMA3_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    if text["model_type"] != "gemma3_text":
        _refuse("gemma3", "text_config.model_type", text["model_type"], "expected gemma3_text")
    return text


def model_type(hf: dict) -> str:
    mt = hf.get("model_type")
    if mt == "gemma3":
        model_type(text_config(hf))  # the text tower's fields are checked
        return mt
    if mt not in SUPPORTED:
        raise ConfigError(f"config.json: model_type={mt!r} is not supported; supported model "
                          f"types: {list(SUPPORTED)} (other MoE families, vision towers: not)")
    for field, ok in REFUSED.items():
        if (mt in SANDWICH and field in SOFTCAPS) or (mt in MOE_FAMILIES and field in MOE_FIELDS):
            continue
        if field in hf and hf[field] not in ok:
            _refuse(mt, field, hf[field], "this field changes the model's math")
    if mt in MOE_FAMILIES and float(hf.get("router_jitter_noise") or 0.0):
        _refuse(mt, "router_jitter_noise", hf["router_jitter_noise"],
                "router jitter is not implemented")
    return mt


def _moe(hf: dict, mt: str) -> dict:
    """The ``ModelCfg.moe_*`` fields of a qwen3_moe / mixtral config (transformers' defaults
    for absent fields); {} for a dense family."""
    if mt not in MOE_FAMILIES:
        return {}
    if mt == "mixtral":
        out = dict(moe_experts=int(hf.get("num_local_experts", 8)),
                   moe_top_k=int(hf.get("num_experts_per_tok", 2)),
                   moe_d_ff=int(hf.get("intermediate_size", 14336)), moe_norm_topk=True)
    else:
        out = dict(moe_experts=int(hf.get("num_experts", hf.get("num_local_experts", 128))),
                   moe_top_k=int(hf.get("num_experts_per_tok", 8)),
                   moe_d_ff=int(hf.get("moe_intermediate_size", 768)),
                   moe_norm_topk=bool(hf.get("norm_topk_prob", False)),
                   moe_sparse_step=int(hf.get("decoder_sparse_step", 1)),
                   moe_dense_layers=tuple(int(i) for i in hf.get("mlp_only_layers") or ()))
    if out["moe_experts"] < 1:
        _refuse(mt, "num_experts", out["moe_experts"], "an MoE family needs experts")
    return {**out, "moe_aux_coef": float(hf.get("router_aux_loss_coef", 0.001))}


def _rope(hf: dict, mt: str, rp: dict | None = None) -> tuple[float, str]:
    """(theta, ``ModelCfg.rope_scaling``) from ``rope_parameters`` (transformers 5) or
    ``rope_theta`` + ``rope_scaling`` (transformers 4); ``rp``: one layer type's parameters."""
    rp = dict(hf.get("rope_parameters") or {}) if rp is None else rp
    rs = hf.get("rope_scaling") or {}
    theta = float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))
    spec = {**rs, **rp}
    if spec.get("partial_rotary_factor", 1.0) != 1.0:
        _refuse(mt, "partial_rotary_factor", spec["partial_rotary_factor"],
                "partial rotary is not implemented")
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


def _gemma3_rope(hf: dict, mt: str) -> tuple[float, str, float]:
    """(theta, rope_scaling, local_rope_base) of Gemma 3: transformers 5's
    ``rope_parameters.full_attention`` / ``.sliding_attention`` or 4's ``rope_theta`` +
    ``rope_scaling`` + ``rope_local_base_freq``. local_rope_base 0: sliding = full."""
    rp = hf.get("rope_parameters") or {}
    if "full_attention" in rp:
        full, slide = dict(rp["full_attention"]), dict(rp.get("sliding_attention") or {})
    else:
        full = {"rope_theta": hf.get("rope_theta", 1e6), **(hf.get("rope_scaling") or {})}
        slide = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 1e4)}
    theta, scaling = _rope({}, mt, full)
    if slide == full:
        return theta, scaling, 0.0
    if slide.get("rope_type", slide.get("type", "default")) != "default":
        _refuse(mt, "rope_parameters.sliding_attention.rope_type", slide.get("rope_type"),
                "the sliding layers' rotary must be default (or equal the full layers')")
    return theta, scaling, float(slide.get("rope_theta", 1e4))


def _layer_types(hf: dict, mt: str, n: int) -> list[str]:
    """Per layer "sliding_attention" or "full_attention": ``layer_types`` when the config has
    it, else the family's rule (Qwen ``max_window_layers``, Gemma 2 alternating, Gemma 3
    ``sliding_window_pattern``, Mistral every layer)."""
    types = hf.get("layer_types")
    if types is None:
        if mt in ("mistral", "mixtral"):
            types = ["sliding_attention"] * n
        elif mt == "phi3":  # one window for every layer when set
            types = ["sliding_attention" if hf.get("sliding_window") else "full_attention"] * n
        elif mt == "smollm3" and hf.get("use_sliding_window") and hf.get("sliding_window"):
            types = ["full_attention" if r else "sliding_attention" for r in _rope_layers(hf, n)]
        elif mt in ("qwen2", "qwen3", "qwen3_moe") and hf.get("use_sliding_window"):
            m = int(hf.get("max_window_layers", 28))
            types = ["sliding_attention" if i >= m else "full_attention" for i in range(n)]
        elif mt == "gemma2":
            types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
        elif mt == "gemma3_text":
            p = int(hf.get("sliding_window_pattern", 6))
            types = ["sliding_attention" if (i + 1) % p else "full_attention" for i in range(n)]
        else:
            types = ["full_attention"] * n
    types = list(types)
    if len(types) != n or set(types) - {"full_attention", "sliding_attention"}:
        _refuse(mt, "layer_types", types, f"expected {n} of full_attention/sliding_attention")
    return types


def _rope_layers(hf: dict, n: int) -> list[int]:
    """SmolLM3's ``no_rope_layers``: per layer 1 = rotary, 0 = none (NoPE); default: every
    ``no_rope_layer_interval``-th layer (4) has none."""
    rl = hf.get("no_rope_layers")
    if rl is None:
        k = int(hf.get("no_rope_layer_interval", 4))
        rl = [int((i + 1) % k != 0) for i in range(n)]
    if len(rl) != n or set(rl) - {0, 1}:
        _refuse("smollm3", "no_rope_layers", rl, f"expected {n} of 0/1")
    return list(rl)


def _windows(hf: dict, mt: str, n: int) -> tuple[int, tuple[int, ...]]:
    """(``ModelCfg.sliding_window``, ``window_layers``) of a config."""
    types = _layer_types(hf, mt, n)
    window = int(hf.get("sliding_window") or 0)
    if mt in ("qwen2", "qwen3", "qwen3_moe", "smollm3") and not hf.get("use_sliding_window"):
        window = 0  # transformers drops the window (layer_types then say full everywhere)
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    if not sliding or not window:
        if sliding and mt not in ("mistral", "mixtral"):
            _refuse(mt, "sliding_window", hf.get("sliding_window"),
                    "sliding layers need a window")
        return 0, ()
    return window, () if len(sliding) == n else sliding


def to_model_cfg(hf: dict, *, param_dtype: str = "float32", dtype: str | None = None,
                 max_len: int | None = None) -> ModelCfg:
    """The ``ModelCfg`` of a Hugging Face config dict. ``max_len`` caps
    ``max_position_embeddings`` (the KV-cache bound and GPT-2's position table)."""
    model_type(hf)
    hf = text_config(hf)
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
    act = hf.get(act_key, "gelu_pytorch_tanh" if mt in GEMMAS else "silu")
    if mt == "gemma" and act == "gelu":  # transformers' legacy-config conversion
        act = "gelu_pytorch_tanh"
    if act not in ACTS:
        _refuse(mt, act_key, act, f"supported activations: {sorted(ACTS)}")
    n_layers = int(hf["num_hidden_layers"])
    window, window_layers = _windows(hf, mt, n_layers)
    attn_bias = bool(hf.get("attention_bias", False))
    if mt == "qwen2":
        qkv_bias, out_bias = True, False
    else:
        qkv_bias = out_bias = attn_bias
    if mt in ("mistral", "qwen2", "phi3", "mixtral") and attn_bias:
        _refuse(mt, "attention_bias", True, "not part of this family")
    local_base = 0.0
    if mt == "gemma3_text":
        theta, scaling, local_base = _gemma3_rope(hf, mt)
    else:
        theta, scaling = _rope(hf, mt)
    D, N = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    H = int(hf.get("head_dim") or D // N)
    n_pos = int(hf.get("max_position_embeddings", 2048))
    extra = {}
    if mt == "olmo2":
        extra = dict(block_norm="post", qk_norm_full=True)
    if mt == "smollm3":
        extra = dict(nope_layers=tuple(i for i, r in enumerate(_rope_layers(hf, n_layers))
                                       if not r))
    if mt in SANDWICH:
        qpas = float(hf.get("query_pre_attn_scalar") or 256)
        extra = dict(block_norm="sandwich", attn_scale=qpas ** -0.5,
                     attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
                     final_logit_softcap=float(hf.get("final_logit_softcapping") or 0.0),
                     local_rope_base=local_base)
    return ModelCfg(vocab_size=int(hf["vocab_size"]), d_model=D,
                    n_layers=n_layers, n_heads=N,
                    n_kv_heads=int(hf.get("num_key_value_heads") or N),
                    head_dim=H, d_ff=int(hf["intermediate_size"]),
                    max_len=min(n_pos, max_len or n_pos), pos="rope",
                    mlp="gelu" if mt == "arcee" else "swiglu", norm="rms",
                    norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_base=theta,
                    rope_scaling=scaling, qkv_bias=qkv_bias, out_bias=out_bias,
                    mlp_bias=bool(hf.get("mlp_bias", False)),
                    qk_norm=mt in ("qwen3", "qwen3_moe", "gemma3_text", "olmo2"),
                    act=ACTS[act],
                    embed_scale=mt in GEMMAS, norm_offset=1.0 if mt in GEMMAS else 0.0,
                    sliding_window=window, window_layers=window_layers, **extra, **common,
                    **_moe(hf, mt))


def choose_family(cfg: ModelCfg, prefer: str | None = None) -> str:
    """The ``model_type`` that represents ``cfg`` exactly, or one ``ConfigError`` saying why
    none does. Missing biases are written as zeros (exact), so a bias-free LayerNorm model
    exports as GPT-2 and a bias-free attention as any family. ``prefer``: a family that stores
    the same model in another layout (``phi3``: fused qkv/gate_up tensors of a Llama or
    Mistral) is taken when given; any other family must be the one chosen."""
    family = _choose(cfg)
    if prefer is None or prefer == family:
        return family
    if prefer == "phi3" and family in ("llama", "mistral") and not (
            cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias):
        return "phi3"
    raise ConfigError(f"cannot export this model as {prefer!r}: it is a {family!r} model")


def _choose(cfg: ModelCfg) -> str:
    def no(why):
        raise ConfigError(f"cannot export this model to a transformers family: {why}; "
                          f"exportable: {list(SUPPORTED)}")
    if cfg.dlr.on:
        no("model.dlr (latent routing) has no Hugging Face equivalent")
    if cfg.moe_experts:
        return _choose_moe(cfg, no)
    if (cfg.final_logit_softcap or cfg.attn_scale or cfg.attn_softcap or cfg.local_rope_base) \
            and cfg.block_norm != "sandwich":
        no("model.final_logit_softcap/attn_scale/attn_softcap/local_rope_base are gemma2/"
           "gemma3_text features, which need block_norm='sandwich'")
    if cfg.pos == "learned":
        if cfg.norm != "layer" or cfg.mlp != "gelu" or cfg.act_ not in ("gelu", "gelu_tanh"):
            no("learned positions export as gpt2, which needs norm='layer' and a plain GELU MLP")
        if (cfg.kv_heads != cfg.n_heads or cfg.head_dim_ * cfg.n_heads != cfg.d_model
                or cfg.qk_norm or cfg.embed_scale or cfg.norm_offset or cfg.sliding_window
                or cfg.block_norm != "pre"):
            no("gpt2 has no GQA, explicit head_dim, q/k norm, embedding scale, norm offset, "
               "sliding window or post-norms")
        return "gpt2"
    if cfg.norm != "rms":
        no("rotary models export as llama-style families, which use norm='rms'")
    if cfg.norm_bias:
        no("RMSNorm has no bias")
    if cfg.qk_norm_full or cfg.block_norm == "post":
        if not (cfg.qk_norm_full and cfg.block_norm == "post" and cfg.mlp == "swiglu"):
            no("post-norm blocks and whole-projection q/k norms export as olmo2, which has "
               "both and a gated MLP")
        if (cfg.qkv_bias != cfg.out_bias or cfg.mlp_bias or cfg.embed_scale or cfg.norm_offset
                or cfg.sliding_window or cfg.nope_layers):
            no("olmo2 has no MLP bias, embedding scale, norm offset, sliding window or NoPE "
               "layers; attention biases all or none")
        return "olmo2"
    if cfg.nope_layers:
        if (cfg.qk_norm or cfg.embed_scale or cfg.norm_offset or cfg.block_norm != "pre"
                or cfg.mlp != "swiglu" or cfg.qkv_bias != cfg.out_bias):
            no("layers without rotary export as smollm3: a Llama-style block (gated MLP, no "
               "q/k norm, attention biases all or none)")
        if any(cfg.layer_windows[i] for i in range(cfg.n_layers) if i not in cfg.nope_layers):
            no("smollm3 slides only its NoPE layers")
        return "smollm3"
    gemma = cfg.embed_scale or cfg.norm_offset or cfg.block_norm == "sandwich"
    if gemma:
        if not (cfg.embed_scale and cfg.norm_offset == 1.0 and cfg.mlp == "swiglu"):
            no("gemma families need embed_scale, norm_offset=1 and a gated MLP together")
        if cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias:
            no("gemma families have no biases")
        if cfg.act_ not in ("gelu_tanh", "gelu", "silu", "relu"):
            no(f"act={cfg.act_!r}")
        if cfg.block_norm == "sandwich":
            if cfg.qk_norm:
                return "gemma3_text"
            if cfg.local_rope_base:
                no("gemma2 has one rotary table (local_rope_base needs qk_norm: gemma3_text)")
            return "gemma2"
        if cfg.qk_norm or cfg.sliding_window:
            no("gemma has no q/k norm or sliding window (block_norm='sandwich' exports as "
               "gemma2/gemma3_text)")
        return "gemma"
    if cfg.window_layers and not cfg.qkv_bias and not cfg.qk_norm:
        no("per-layer sliding windows export as qwen2 (q/k/v bias) or qwen3 (q/k norm)")
    if cfg.qk_norm:
        if cfg.qkv_bias != cfg.out_bias or cfg.mlp_bias or cfg.mlp != "swiglu":
            no("q/k norm exports as qwen3: attention biases all or none, no MLP bias and a "
               "gated MLP")
        return "qwen3"
    if cfg.qkv_bias and not cfg.out_bias:
        if cfg.mlp_bias or cfg.mlp != "swiglu":
            no("q/k/v bias without out bias exports as qwen2: no MLP bias and a gated MLP")
        return "qwen2"
    if cfg.qkv_bias != cfg.out_bias:
        no("an out-projection bias without q/k/v biases")
    if cfg.sliding_window:
        if cfg.qkv_bias or cfg.mlp_bias or cfg.mlp != "swiglu":
            no("a sliding window exports as mistral: no biases and a gated MLP")
        return "mistral"
    return "llama" if cfg.mlp == "swiglu" else "arcee"


def _choose_moe(cfg: ModelCfg, no) -> str:
    """qwen3_moe (q/k norm, any layer pattern) or mixtral (every layer MoE, renormalised)."""
    if (cfg.pos != "rope" or cfg.norm != "rms" or cfg.block_norm != "pre" or cfg.embed_scale
            or cfg.norm_offset or cfg.qk_norm_full or cfg.nope_layers or cfg.mlp_bias
            or cfg.attn_scale or cfg.attn_softcap or cfg.final_logit_softcap
            or cfg.local_rope_base or cfg.qkv_bias != cfg.out_bias):
        no("MoE models export as qwen3_moe or mixtral: rotary, RMSNorm pre-norm blocks, no "
           "MLP bias, attention biases all or none, no Gemma/OLMo features")
    if cfg.qk_norm:
        if cfg.window_layers and any(cfg.layer_windows[i] == 0 for i in range(
                cfg.window_layers[0], cfg.n_layers)):
            no("qwen3_moe slides the layers from max_window_layers on")
        return "qwen3_moe"
    if not all(cfg.is_moe(i) for i in range(cfg.n_layers)) or not cfg.moe_norm_topk:
        no("an MoE model without q/k norm exports as mixtral: every layer MoE, "
           "moe_norm_topk=true (q/k norm: qwen3_moe)")
    if cfg.qkv_bias or cfg.window_layers:
        no("mixtral has no attention biases and one window for every layer")
    return "mixtral"


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
    rope: dict = {"rope_type": "default", "rope_theta": cfg.rope_base}
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
    if family in ("llama", "arcee", "qwen3", "qwen3_moe", "olmo2", "smollm3") + GEMMAS:
        out["attention_bias"] = cfg.qkv_bias
    if family in ("llama", "arcee", "smollm3"):
        out["mlp_bias"] = cfg.mlp_bias
    if family in ("mistral", "phi3", "mixtral"):
        out["sliding_window"] = cfg.sliding_window or None
    if family == "phi3":
        out.update(original_max_position_embeddings=cfg.max_len, resid_pdrop=0.0,
                   embd_pdrop=0.0)
    types = ["sliding_attention" if w else "full_attention" for w in cfg.layer_windows]
    if family == "smollm3":
        out.update(no_rope_layers=[int(r != 2) for r in cfg.layer_ropes],
                   use_sliding_window=bool(cfg.sliding_window),
                   sliding_window=cfg.sliding_window or None, layer_types=types)
    if family in ("qwen2", "qwen3", "qwen3_moe"):
        slides = [i for i, w in enumerate(cfg.layer_windows) if w]
        out.update(use_sliding_window=bool(slides), sliding_window=cfg.sliding_window or None,
                   max_window_layers=slides[0] if slides else cfg.n_layers, layer_types=types)
    if family == "qwen3_moe":
        out.update(num_experts=cfg.moe_experts, num_experts_per_tok=cfg.moe_top_k,
                   moe_intermediate_size=cfg.moe_d_ff_, norm_topk_prob=cfg.moe_norm_topk,
                   decoder_sparse_step=cfg.moe_sparse_step,
                   mlp_only_layers=list(cfg.moe_dense_layers),
                   router_aux_loss_coef=cfg.moe_aux_coef)
    if family == "mixtral":
        out.update(num_local_experts=cfg.moe_experts, num_experts_per_tok=cfg.moe_top_k,
                   intermediate_size=cfg.moe_d_ff_, router_aux_loss_coef=cfg.moe_aux_coef,
                   router_jitter_noise=0.0)
    if family in SANDWICH:
        out.pop("hidden_act")
        out.update(hidden_activation=HF_ACT[cfg.act_], layer_types=types,
                   sliding_window=cfg.sliding_window or 4096,  # unused when no layer slides
                   query_pre_attn_scalar=_qpas(cfg),
                   attn_logit_softcapping=cfg.attn_softcap or None,
                   final_logit_softcapping=cfg.final_logit_softcap or None)
    if family == "gemma3_text":
        local = ({"rope_type": "default", "rope_theta": cfg.local_rope_base}
                 if cfg.local_rope_base else dict(rope))
        out.update(rope_parameters={"full_attention": rope, "sliding_attention": local},
                   use_bidirectional_attention=False)
        out.pop("rope_theta")
    return {**out, **(extra or {})}


def _qpas(cfg: ModelCfg):
    """Gemma's ``query_pre_attn_scalar`` for ``cfg.attn_scale`` (0: head_dim, the default
    scale); an integer when it is one (256, 144, ...)."""
    if not cfg.attn_scale:
        return cfg.head_dim_
    q = cfg.attn_scale ** -2
    return int(round(q)) if abs(q - round(q)) < 1e-6 * q else q
