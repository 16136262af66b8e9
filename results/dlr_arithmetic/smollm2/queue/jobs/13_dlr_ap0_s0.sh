#!/usr/bin/env bash
set -euo pipefail
cd "${WORKTREE:-/work/main}"  # the checkout to run from (the smollm2 queue pins a worktree)
exec /work/main/.venv/bin/python -m experiments.dlr_arithmetic --preset smollm2 --workdir /work/main/runs/dlr_smollm2/dlr_ap0_s0 --set exp.methods=dlr_ap0 exp.seeds=0 exp.tasks=hidden exp.eval_base=false
