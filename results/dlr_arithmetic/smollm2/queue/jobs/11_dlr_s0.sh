#!/usr/bin/env bash
set -euo pipefail
cd "${WORKTREE:-/work/main}"  # the checkout to run from (the smollm2 queue pins a worktree)
/work/main/.venv/bin/python -m experiments.dlr_arithmetic --preset smollm2 --workdir /work/main/runs/dlr_smollm2/dlr_s0 --set exp.methods=dlr exp.seeds=0 exp.tasks=hidden exp.eval_base=false
# keep the finished run's record files in results/ (runs/ is not kept between machines)
bash /work/main/results/grpo_arithmetic/smollm2/queue/keep.sh /work/main/runs/dlr_smollm2/dlr_s0 /work/main/results/dlr_arithmetic/smollm2/runs/dlr_s0
