"""Byte-level GPT pretraining on the embedded corpus (KJV) or your own files.

    python -m experiments.lm_pretrain --preset tiny          # CPU, about 3-4 minutes
    python -m experiments.lm_pretrain --preset tiny_moe      # 8 experts, top-2; CPU, ~8 minutes
    python -m experiments.lm_pretrain --preset tiny --set train.steps=50 opt.lr=1e-3
    python -m experiments.lm_pretrain --preset gpu --set data.source=files data.paths=/d/*.parquet
    python -m experiments.lm_pretrain --preset tpu_pod --dry-run   # check a pod config on this CPU

Writes ``runs/<run.name>/``: config.json, provenance.json, metrics.jsonl, TensorBoard events,
Orbax checkpoints and plot.png; prints the final eval loss and a sample. Rerunning the same command
resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import math

from experiments.base import main, train
from experiments.config import Config, RunCfg
from lm.data import DataCfg
from lm.model import ModelCfg
from lm.optim import OptCfg
from lm.sharding import MeshCfg
from lm.train import TrainCfg

BYTE_VOCAB = 264  # 256 bytes + 3 specials, padded to a multiple of 8


def tiny() -> Config:
    return Config(
        model=ModelCfg(vocab_size=BYTE_VOCAB, d_model=128, n_layers=4, n_heads=4, d_ff=512,
                       max_len=256),
        opt=OptCfg(lr=3e-3, warmup=30),
        data=DataCfg(source="kjv"),
        mesh=MeshCfg(data=-1),
        train=TrainCfg(steps=300, batch_size=32, seq_len=128, eval_every=100, eval_batches=4,
                       ckpt_every=100),
        run=RunCfg(name="lm_pretrain_tiny"),
    )


def tiny_moe() -> Config:
    """``tiny`` with a mixture of experts in every layer (``lm.moe``): 8 SwiGLU experts of hidden
    168, top-2, at the dense tiny model's active parameters (per token 2 x 3 x 128 x 168 +
    the 128 x 8 router = 130,048 MLP weights vs the GELU MLP's 2 x 128 x 512 = 131,072), 4x
    the MLP parameters in total. Load-balancing loss 0.01 (Switch/Mixtral-style training
    weight; HF's 0.001 default is a fine-tuning one), router z-loss 1e-3 (ST-MoE)."""
    base = tiny()
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, mlp="swiglu", moe_experts=8, moe_top_k=2,
                                        moe_d_ff=168, moe_aux_coef=0.01,
                                        moe_router_z_coef=1e-3),
        run=dataclasses.replace(base.run, name="lm_pretrain_tiny_moe"))


def gpu() -> Config:
    """GPT-2-124M shape (12L/768/12H, ctx 1024) in bf16 on one or more GPUs."""
    return Config(
        model=ModelCfg(vocab_size=BYTE_VOCAB, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                       max_len=1024, dtype="bfloat16"),
        opt=OptCfg(lr=6e-4, warmup=700, weight_decay=0.1),
        data=DataCfg(source="kjv"),
        mesh=MeshCfg(data=-1),
        train=TrainCfg(steps=20000, batch_size=64, seq_len=1024, microbatches=1,
                       eval_every=500, eval_batches=20, ckpt_every=1000),
        run=RunCfg(name="lm_pretrain_gpu", progress=True),
    )


def tpu_pod() -> Config:
    """GPT-2-medium shape, FSDP over every chip of a v5e-256-style pod (multi-host)."""
    base = gpu()
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
        mesh=MeshCfg(data=1, fsdp=-1, tensor=1),
        train=dataclasses.replace(base.train, batch_size=512, steps=50000),
        run=RunCfg(name="lm_pretrain_tpu_pod", dry_run_devices=256, dry_run_platform="tpu"),
    )


PRESETS = {"tiny": tiny, "tiny_moe": tiny_moe, "gpu": gpu, "tpu_pod": tpu_pod}


def run(cfg: Config, workdir: str, argv=None) -> dict:
    out = train(cfg, workdir, argv=argv)
    unit = "token" if cfg.data.tokenizer else "byte"  # data.tokenizer: the checkpoint's ids
    print(f"final eval loss: {out['final_eval_loss']:.4f} nats/token "
          f"({out['final_eval_loss'] / math.log(2):.3f} bits/{unit})")
    if "sample" in out:
        print(f"sample:\n{out['sample']}")
    print(f"run dir: {workdir}")
    return out


if __name__ == "__main__":
    raise SystemExit(main(PRESETS, run))
