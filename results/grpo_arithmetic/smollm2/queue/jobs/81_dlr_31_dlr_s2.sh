#!/usr/bin/env bash
# issue 20 job 31_dlr_s2 of results/dlr_arithmetic/smollm2/queue, run from the worktree pinned at 4b325d9
WORKTREE=/work/post-wt exec bash /work/main/results/dlr_arithmetic/smollm2/queue/jobs/31_dlr_s2.sh
