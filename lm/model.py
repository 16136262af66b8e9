"""Flax NNX GPT: pre-norm decoder with rotary or learned positions, GELU or SwiGLU MLPs.

One config covers the Hugging Face families ``lm.hf`` loads (GPT-2, Llama 3, Mistral, Qwen2/3,
Gemma 1/2/3): GQA/MQA (``n_kv_heads``), explicit ``head_dim``, biases, q/k norm, Gemma's embedding
scale and ``1 + w`` norms, rope scaling, sliding windows (all or some layers), sandwich/post
norms, score scale and softcaps, local rotary tables are ``ModelCfg`` fields whose defaults give
the original model (same params, names, random draws and numerics). Per-layer differences are
per-layer data (``ModelCfg.layer_windows`` / ``layer_ropes``, indexed by the block's layer).
``moe_experts > 0`` replaces the SwiGLU MLP of the layers ``ModelCfg.is_moe`` names by a
mixture of experts (``lm.moe``; Qwen3-MoE, Mixtral); 0 experts is the dense model unchanged.

One forward path serves training, probing and decoding:

    logits_BxLxV = model(tokens_BxL)                                   # training
    logits_BxLxV, hiddens = model(tokens_BxL, return_hidden=True)      # IBLM / probes
    logits_BxLxV, cache = model.decode(tokens_BxL, cache, index)       # KV-cache sampling

``hiddens`` is a list of ``n_layers + 1`` arrays [B, L, D]: the embedding output and the residual
stream after every block (the IBLM loss and ``lm.probe`` read them). Parameters are plain
``nnx.Param`` leaves with logical axis names; ``nnx.split`` once and ``nnx.merge`` inside jitted
losses (Tree Mode; no ``nnx.jit``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lm import attention as attn_lib
from lm import remat as remat_lib
from lm.layers import Block, Norm, dropout, param, parse_rope_scaling
from lm.lora import LoRACfg, attach
from lm.moe import IMPLS
from lm.quant import quantize_module
from lm.routing import DLRCfg, LatentRouter
from lm.sharding import ConfigError, constrain

ACT_BxLxD = ("batch", "length", "act_embed")  # the residual stream's logical layout

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    max_len: int = 256  # context length (learned positions table size, KV-cache bound)
    pos: str = "rope"  # "rope" | "learned"
    mlp: str = "gelu"  # "gelu" | "swiglu"
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dropout: float = 0.0
    rope_base: float = 10000.0
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; logits and norms are fp32
    dlr: DLRCfg = DLRCfg()  # Dynamic Latent Routing hook (lm/routing.py); off by default
    lora: LoRACfg = LoRACfg()  # LoRA/QLoRA adapters (lm/lora.py); rank 0 = off
    # model families (lm/hf); the defaults are the original GPT of this codebase
    n_kv_heads: int | None = None  # None = n_heads; fewer = GQA (1 = MQA); the KV cache holds them
    head_dim: int | None = None  # None = d_model // n_heads
    qkv_bias: bool = False  # biases on the q/k/v projections (GPT-2, Qwen2)
    out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # biases on the MLP projections (GPT-2)
    norm_bias: bool = False  # LayerNorm bias (GPT-2); norm="layer" only
    norm_offset: float = 0.0  # norm scale is offset + w (Gemma: 1.0)
    qk_norm: bool = False  # per-head RMSNorm of q and k before rotary (Qwen3)
    act: str = ""  # MLP activation; "" = gelu_tanh for mlp="gelu", silu for mlp="swiglu"
    rope_scaling: str = ""  # "" | "linear:F" | "llama3:F,LOW,HIGH,ORIG" (lm.layers.rope_inv_freq)
    embed_scale: bool = False  # multiply embeddings by sqrt(d_model) in compute dtype (Gemma)
    sliding_window: int = 0  # 0 = full causal; W: a query sees its last W positions (Mistral)
    final_logit_softcap: float = 0.0  # 0 = off; else cap * tanh(logits / cap) (Gemma 2)
    # per-layer differences (Qwen max_window_layers, Gemma 2/3, SmolLM3): per-layer *data* (a
    # window int and a rotary-table index per layer), so the remat scan over blocks still works
    window_layers: tuple[int, ...] = ()  # layers using sliding_window; () = every layer
    local_rope_base: float = 0.0  # rotary base of the sliding layers (Gemma 3); 0 = rope_base
    nope_layers: tuple[int, ...] = ()  # layers without rotary (SmolLM3 no_rope_layers)
    block_norm: str = "pre"  # "pre" | "sandwich" (Gemma 2/3: + post-attn/-MLP norms) | "post"
    attn_scale: float = 0.0  # attention score scale; 0 = head_dim ** -0.5 (Gemma 2/3 differ)
    attn_softcap: float = 0.0  # 0 = off; else cap * tanh(scores / cap) before the mask (Gemma 2)
    qk_norm_full: bool = False  # q/k RMSNorm over all heads' projection, not per head (OLMo 2)
    # speed and memory (lm/remat.py, lm/attention.py); the defaults are today's program
    remat: str = "none"  # "none" | "full" | "dots" | "dots_no_batch" | "attn_out" (per block)
    attention: str = "auto"  # "auto" (cuDNN on a GPU where it applies, else XLA) | "xla" | "cudnn"
    # a Hugging Face checkpoint dir or a run dir to start from; its architecture replaces the
    # fields above (lm/pretrained.py); "" = random init
    init_from: str = ""
    # mixture of experts (lm/moe.py); 0 experts = the dense model above, unchanged
    moe_experts: int = 0  # E experts per MoE layer
    moe_top_k: int = 2  # experts per token
    moe_d_ff: int = 0  # each expert's hidden size; 0 = d_ff
    moe_norm_topk: bool = True  # renormalise the top-k probabilities (Mixtral; Qwen3 option)
    moe_sparse_step: int = 1  # layer i is MoE iff (i + 1) % step == 0 (decoder_sparse_step)
    moe_dense_layers: tuple[int, ...] = ()  # layers kept dense (Qwen3 mlp_only_layers)
    moe_aux_coef: float = 0.001  # load-balancing loss weight (router_aux_loss_coef)
    moe_router_z_coef: float = 0.0  # router z-loss weight (ST-MoE); 0 = reported only
    moe_impl: str = "auto"  # dropless dispatch: "auto" | "ragged_dot" | "tiled" (lm.moe)

    CHOICES = {"pos": ("rope", "learned"), "mlp": ("gelu", "swiglu"), "norm": ("rms", "layer"),
               "param_dtype": tuple(DTYPES), "dtype": tuple(DTYPES),
               "act": ("", "gelu_tanh", "gelu", "silu", "relu"), "remat": remat_lib.POLICIES,
               "block_norm": ("pre", "sandwich", "post"),
               "attention": attn_lib.IMPLEMENTATIONS, "moe_impl": IMPLS}

    def __post_init__(self):
        for field, allowed in self.CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"model.{field}={getattr(self, field)!r} is not one of {allowed}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by "
                             f"model.n_heads={self.n_heads} (or set model.head_dim)")
        if self.head_dim is not None and self.head_dim < 1:
            raise ConfigError(f"model.head_dim={self.head_dim} must be >= 1 (or None)")
        if self.n_kv_heads is not None and not (
                1 <= self.n_kv_heads <= self.n_heads and self.n_heads % self.n_kv_heads == 0):
            raise ConfigError(f"model.n_kv_heads={self.n_kv_heads} must divide "
                              f"model.n_heads={self.n_heads} (1 = MQA, None = n_heads)")
        if self.pos == "rope" and self.head_dim_ % 2:
            raise ValueError("rotary positions need an even head dim (d_model / n_heads)")
        if self.norm_bias and self.norm != "layer":
            raise ConfigError("model.norm_bias=true needs model.norm='layer' (RMSNorm has no bias)")
        if self.sliding_window < 0 or self.final_logit_softcap < 0:
            raise ConfigError("model.sliding_window and model.final_logit_softcap must be >= 0 "
                              "(0 = off)")
        if self.attn_scale < 0 or self.attn_softcap < 0 or self.local_rope_base < 0:
            raise ConfigError("model.attn_scale, model.attn_softcap and model.local_rope_base "
                              "must be >= 0 (0 = off/default)")
        for field in ("window_layers", "nope_layers"):
            bad = [i for i in getattr(self, field) if not 0 <= i < self.n_layers]
            if bad or len(set(getattr(self, field))) != len(getattr(self, field)):
                raise ConfigError(f"model.{field}={getattr(self, field)} must be distinct layer "
                                  f"indices in [0, {self.n_layers})")
        if self.window_layers and not self.sliding_window:
            raise ConfigError("model.window_layers needs model.sliding_window > 0")
        if (self.local_rope_base or self.nope_layers) and self.pos != "rope":
            raise ConfigError("model.local_rope_base and model.nope_layers need model.pos='rope'")
        if self.qk_norm_full and not self.qk_norm:
            raise ConfigError("model.qk_norm_full=true needs model.qk_norm=true")
        if self.rope_scaling and self.pos != "rope":
            raise ConfigError("model.rope_scaling needs model.pos='rope'")
        parse_rope_scaling(self.rope_scaling)
        self.dlr.check(self.n_layers)
        if self.moe_experts:
            self._check_moe()

    def _check_moe(self):
        if self.moe_experts < 0 or not 1 <= self.moe_top_k <= self.moe_experts:
            raise ConfigError(f"model.moe_top_k={self.moe_top_k} must be in [1, "
                              f"model.moe_experts={self.moe_experts}]")
        if self.moe_d_ff < 0 or self.moe_sparse_step < 1:
            raise ConfigError("model.moe_d_ff must be >= 0 (0 = d_ff) and model.moe_sparse_step "
                              ">= 1")
        bad = [i for i in self.moe_dense_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ConfigError(f"model.moe_dense_layers={self.moe_dense_layers} must be layer "
                              f"indices in [0, {self.n_layers})")
        if self.mlp != "swiglu":
            raise ConfigError("model.moe_experts > 0 needs model.mlp='swiglu' (experts are "
                              "SwiGLU)")
        if set(self.lora.targets) & {"gate", "up", "down"} and self.lora.on:
            raise ConfigError("model.lora on an MoE model targets the attention projections "
                              "only (q, k, v, o); the experts take no adapters")
        if self.lora.base_dtype:
            raise ConfigError("model.lora.base_dtype (QLoRA) is not implemented for MoE models")

    def is_moe(self, layer: int) -> bool:
        """Whether block ``layer`` has an MoE MLP (HF: not in ``mlp_only_layers`` and
        ``(layer + 1) % decoder_sparse_step == 0``)."""
        return bool(self.moe_experts) and layer not in self.moe_dense_layers and (
            (layer + 1) % self.moe_sparse_step == 0)

    @property
    def moe_d_ff_(self) -> int:
        return self.moe_d_ff or self.d_ff

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim_(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def layer_windows(self) -> tuple[int, ...]:
        """The sliding window of each layer (0 = full causal)."""
        on = set(self.window_layers or range(self.n_layers))
        return tuple(self.sliding_window if i in on else 0 for i in range(self.n_layers))

    @property
    def layer_ropes(self) -> tuple[int, ...]:
        """The rotary table of each layer: 0 = (rope_base, rope_scaling), 1 = local_rope_base
        (sliding layers, Gemma 3), 2 = none (``nope_layers``)."""
        win = self.layer_windows
        return tuple(2 if i in self.nope_layers else int(bool(self.local_rope_base and win[i]))
                     for i in range(self.n_layers))

    @property
    def per_layer(self) -> bool:
        """Whether layers differ (then each block reads its window/rotary table by index)."""
        return len(set(self.layer_windows)) > 1 or len(set(self.layer_ropes)) > 1

    @property
    def act_(self) -> str:
        return self.act or ("silu" if self.mlp == "swiglu" else "gelu_tanh")

    @property
    def dtype_(self):
        return DTYPES[self.dtype]

    @property
    def param_dtype_(self):
        return DTYPES[self.param_dtype]


class GPT(nnx.Module):
    def __init__(self, cfg: ModelCfg, *, rngs: nnx.Rngs):
        attn_lib.check(cfg.attention, cfg.dtype_)  # model.attention=cudnn off a GPU: ConfigError
        self.cfg = cfg
        pdt = cfg.param_dtype_
        self.embed_VxD = param(rngs, nnx.initializers.normal(0.02), (cfg.vocab_size, cfg.d_model),
                               ("vocab", "embed"), pdt)
        if cfg.pos == "learned":
            self.pos_LxD = param(rngs, nnx.initializers.normal(0.01), (cfg.max_len, cfg.d_model),
                                 (None, "embed"), pdt)
        for i in range(cfg.n_layers):  # string attribute names give clean checkpoint paths
            setattr(self, f"block_{i}", Block(cfg, rngs, moe=cfg.is_moe(i)))
        self.norm_f = Norm(cfg.d_model, cfg.norm, cfg.norm_eps, pdt, rngs, bias=cfg.norm_bias,
                           offset=cfg.norm_offset)
        if not cfg.tie_embeddings:
            self.unembed_DxV = param(rngs, nnx.initializers.normal(0.02),
                                     (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pdt)
        if cfg.dlr.on:  # created last: the base parameters draw the same random numbers
            self.dlr = LatentRouter(cfg, rngs)
        if cfg.lora.base_dtype:  # QLoRA: the frozen block weights as codes + scales
            quantize_module(self, cfg.lora.base_dtype)
        if cfg.lora.on:  # adapters after everything: base and router draws are unchanged
            attach(self, cfg, rngs)

    @property
    def blocks(self) -> list[Block]:
        return [getattr(self, f"block_{i}") for i in range(self.cfg.n_layers)]

    def embed(self, tokens_BxL, pos_BxL, rng=None):
        """Embedding (with dropout) and the per-block dropout keys (a list of Nones if no rng)."""
        cfg, dt = self.cfg, self.cfg.dtype_
        x_BxLxD = self.embed_VxD[...].astype(dt)[tokens_BxL]
        if cfg.embed_scale:  # Gemma: the normalizer is rounded to the compute dtype
            x_BxLxD = x_BxLxD * jnp.asarray(cfg.d_model**0.5, dt)
        if cfg.pos == "learned":
            x_BxLxD = x_BxLxD + self.pos_LxD[...].astype(dt)[pos_BxL]
        rngs = list(jax.random.split(rng, cfg.n_layers + 1)) if rng is not None else [None] * (
            cfg.n_layers + 1)
        x_BxLxD = constrain(x_BxLxD, ACT_BxLxD)
        return dropout(x_BxLxD, cfg.dropout, rngs[-1]), rngs[:-1]

    def run_blocks(self, x_BxLxD, pos_BxL, rngs, cache=None, index=None, codes_BxM=None,
                   lo=0, hi=None, segment_ids_BxL=None):
        """Blocks ``lo..hi-1`` on the stream after ``lo`` blocks. With ``codes_BxM`` (DLR) the
        codes' steering vectors are added before block ``dlr.layer``. Without a cache each block
        runs under ``model.remat`` (``lm.remat``). Returns (the stream after each block, the new
        cache of those blocks)."""
        hi = self.cfg.n_layers if hi is None else hi
        if cache is None and self.cfg.remat != "none":
            hiddens = self._remat_blocks(x_BxLxD, pos_BxL, rngs, codes_BxM, lo, hi,
                                         segment_ids_BxL)
            return hiddens, [None] * (hi - lo)
        hiddens, new_cache = [], []
        for i in range(lo, hi):
            if codes_BxM is not None and i == self.cfg.dlr.layer:
                x_BxLxD = self.dlr.steer(x_BxLxD, pos_BxL, codes_BxM)
            kv = None if cache is None else cache[i - lo]
            x_BxLxD, new_kv = self.blocks[i](x_BxLxD, pos_BxL, rngs[i], kv, index,
                                             segment_ids_BxL, layer=i)
            x_BxLxD = constrain(x_BxLxD, ACT_BxLxD)
            hiddens.append(x_BxLxD)
            new_cache.append(new_kv)
        return hiddens, new_cache

    def _remat_blocks(self, x_BxLxD, pos_BxL, rngs, codes_BxM, lo, hi, segment_ids_BxL):
        """``run_blocks`` under ``model.remat``: checkpointed scans over the stacked blocks
        (``lm.remat.scan_blocks``), cut at the DLR layer when codes steer the stream."""
        k = self.cfg.dlr.layer
        steer = codes_BxM is not None and lo <= k < hi
        kinds = [self.cfg.is_moe(i) for i in range(self.cfg.n_layers)]  # MoE/dense: one scan each
        cuts = sorted(({lo, hi, k} if steer else {lo, hi}) | {
            i for i in range(lo + 1, hi) if kinds[i] != kinds[i - 1]})
        hiddens = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            if steer and a == k:
                x_BxLxD = self.dlr.steer(x_BxLxD, pos_BxL, codes_BxM)
            hiddens += remat_lib.scan_blocks(self.blocks[a:b], self.cfg.remat, x_BxLxD, pos_BxL,
                                             rngs[a:b], segment_ids_BxL,
                                             post=lambda y: constrain(y, ACT_BxLxD), first=a)
            x_BxLxD = hiddens[-1]
        return hiddens

    def _trunk(self, tokens_BxL, pos_BxL, rng, cache, index, codes_BxM=None,
               segment_ids_BxL=None):
        x_BxLxD, rngs = self.embed(tokens_BxL, pos_BxL, rng)
        hiddens, new_cache = self.run_blocks(x_BxLxD, pos_BxL, rngs, cache, index, codes_BxM,
                                             segment_ids_BxL=segment_ids_BxL)
        return [x_BxLxD] + hiddens, new_cache

    def logits(self, h_BxLxD: jax.Array) -> jax.Array:
        """Final norm and unembedding; logits in fp32."""
        h_BxLxD = self.norm_f(h_BxLxD)
        w_DxV = (self.embed_VxD[...].T if self.cfg.tie_embeddings else self.unembed_DxV[...])
        logits_BxLxV = jnp.einsum("bld,dv->blv", h_BxLxD, w_DxV.astype(h_BxLxD.dtype))
        logits_BxLxV = constrain(logits_BxLxV, ("batch", "length", "vocab")).astype(jnp.float32)
        if cap := self.cfg.final_logit_softcap:
            logits_BxLxV = cap * jnp.tanh(logits_BxLxV / cap)
        return logits_BxLxV

    def __call__(self, tokens_BxL, *, positions_BxL=None, rng=None, return_hidden=False,
                 codes_BxM=None, segment_ids_BxL=None):
        """``codes_BxM`` (DLR models only): steer chunk m by code ``codes_BxM[:, m]``; None =
        unsteered. ``hiddens[dlr.layer]`` is the stream before steering (the router's input).
        Packed rows (``lm.packing``): ``segment_ids_BxL`` keeps attention inside each document
        and ``positions_BxL`` restarts rotary/learned positions per document."""
        if positions_BxL is None:
            positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
        hiddens, _ = self._trunk(tokens_BxL, positions_BxL, rng, None, None, codes_BxM,
                                 segment_ids_BxL)
        logits_BxLxV = self.logits(hiddens[-1])
        return (logits_BxLxV, hiddens) if return_hidden else logits_BxLxV

    def init_cache(self, batch: int, length: int | None = None, dtype=None,
                   segments: bool = False):
        """Zero KV cache: per layer (k, v) of shape [B, K, S, H] (K = kv heads; kv-head-major, the
        layout ``lm.attention.cached``'s dots read without a copy); with ``segments`` also the
        keys' segment ids seg_BxS (int32) for packed decoding."""
        cfg = self.cfg
        S = length or cfg.max_len
        shape = (batch, cfg.kv_heads, S, cfg.head_dim_)
        dt = dtype or cfg.dtype_
        seg = (jnp.zeros((batch, S), jnp.int32),) if segments else ()
        return [(jnp.zeros(shape, dt), jnp.zeros(shape, dt)) + seg for _ in range(cfg.n_layers)]

    def decode(self, tokens_BxL, cache, index, codes_BxM=None, segment_ids_BxL=None,
               positions_BxL=None):
        """Run ``tokens_BxL`` at cache slots ``index .. index+L-1`` against ``cache``.

        Returns (logits_BxLxV, new_cache). ``index`` may be a traced scalar. ``codes_BxM``: the
        DLR codes of every chunk of the sequence (indexed by absolute position // chunk).
        Packed decoding: ``segment_ids_BxL`` (with an ``init_cache(..., segments=True)`` cache)
        and per-document ``positions_BxL`` (default: the slots)."""
        B, L = tokens_BxL.shape
        pos_BxL = (jnp.broadcast_to(index + jnp.arange(L), (B, L)) if positions_BxL is None
                   else positions_BxL)
        hiddens, new_cache = self._trunk(tokens_BxL, pos_BxL, None, cache, index, codes_BxM,
                                         segment_ids_BxL)
        return self.logits(hiddens[-1]), new_cache


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
