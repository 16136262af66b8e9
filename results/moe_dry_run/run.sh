#!/usr/bin/env bash
# The Qwen3-30B-A3B dry run of results/moe_dry_run/README.md (abstract: config.json only).
set -euo pipefail
cd "$(dirname "$0")/../.."
ARGS="model.init_from=results/moe_dry_run/qwen3-30b-a3b model.param_dtype=bfloat16 model.dtype=bfloat16 model.remat=full model.max_len=4096 train.seq_len=4096 train.batch_size=8 mesh.data=1 mesh.fsdp=8 mesh.tensor=1"
echo "== python -m experiments.lm_pretrain --dry-run --set $ARGS"
XLA_FLAGS= python -m experiments.lm_pretrain --dry-run --set $ARGS
