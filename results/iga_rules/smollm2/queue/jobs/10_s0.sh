#!/usr/bin/env bash
set -euo pipefail
cd "${WORKTREE:-/work/main}"  # the checkout to run from (the smollm2 queue pins a worktree)
/work/main/.venv/bin/python -m experiments.iga_rules --preset smollm2 --workdir /work/main/runs/iga_smollm2_s0 --set iga.first_seed=0 iga.seeds=1
# keep the finished run's record files in results/ (runs/ is not kept between machines)
bash /work/main/results/grpo_arithmetic/smollm2/queue/keep.sh /work/main/runs/iga_smollm2_s0 /work/main/results/iga_rules/smollm2/runs/iga_smollm2_s0
