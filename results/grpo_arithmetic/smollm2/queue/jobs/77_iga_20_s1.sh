#!/usr/bin/env bash
# issue 20 job 20_s1 of results/iga_rules/smollm2/queue, run from the worktree pinned at 4b325d9
WORKTREE=/work/post-wt exec bash /work/main/results/iga_rules/smollm2/queue/jobs/20_s1.sh
