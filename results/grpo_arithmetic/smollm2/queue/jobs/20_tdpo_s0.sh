#!/usr/bin/env bash
set -euo pipefail
cd /work/smollm2-wt
exec /work/main/.venv/bin/python -m experiments.tdpo_pairs --preset smollm2 --workdir /work/main/runs/smollm2_tdpo_s0 --set train.seed=0 exp.results_dir=/work/main/runs/smollm2_tdpo_s0/record
