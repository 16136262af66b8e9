#!/usr/bin/env bash
set -euo pipefail
cd /work/smollm2-wt
exec /work/main/.venv/bin/python -m experiments.grpo_arithmetic --preset smollm2 --workdir /work/main/runs/smollm2_dr_grpo_s0 --set exp.methods=dr_grpo train.seed=0 exp.results_dir=/work/main/runs/smollm2_dr_grpo_s0/record
