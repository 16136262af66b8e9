#!/usr/bin/env bash
# The 8B LoRA vs full fine-tune dry runs of results/lora_dry_run/README.md (abstract: config.json only).
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON="model.init_from=results/lora_dry_run/llama-3.1-8b model.dtype=bfloat16 model.remat=full model.max_len=1024 train.seq_len=1024 mesh.data=1"
for loss in dpo grpo; do
  bs=$([ "$loss" = dpo ] && echo 4 || echo 8)   # 8 sequences: 4 chosen/rejected pairs, or 8 rollouts
  for arm in lora full; do
    if [ "$arm" = lora ]; then extra="model.lora.rank=16 model.param_dtype=bfloat16"; else extra="model.param_dtype=float32"; fi
    echo "== $loss $arm: python -m experiments.lm_pretrain --dry-run --set $COMMON train.loss=$loss train.batch_size=$bs $extra"
    XLA_FLAGS= python -m experiments.lm_pretrain --dry-run --set $COMMON train.loss=$loss train.batch_size=$bs $extra
  done
done
