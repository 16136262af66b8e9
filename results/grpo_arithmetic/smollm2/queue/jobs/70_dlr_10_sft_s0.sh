#!/usr/bin/env bash
# issue 20 job 10_sft_s0 of results/dlr_arithmetic/smollm2/queue, run from the worktree pinned at 4b325d9
WORKTREE=/work/post-wt exec bash /work/main/results/dlr_arithmetic/smollm2/queue/jobs/10_sft_s0.sh
