#!/usr/bin/env bash
set -euo pipefail
cd /work/smollm2-wt
exec /work/main/.venv/bin/python -m experiments.grpo_arithmetic --preset smollm2 --workdir /work/main/runs/smollm2_grpo_s2 --set exp.methods=grpo train.seed=2 exp.results_dir=/work/main/runs/smollm2_grpo_s2/record
