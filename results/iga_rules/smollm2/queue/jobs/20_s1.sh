#!/usr/bin/env bash
set -euo pipefail
cd "${WORKTREE:-/work/main}"  # the checkout to run from (the smollm2 queue pins a worktree)
exec /work/main/.venv/bin/python -m experiments.iga_rules --preset smollm2 --workdir /work/main/runs/iga_smollm2_s1 --set iga.first_seed=1 iga.seeds=1
