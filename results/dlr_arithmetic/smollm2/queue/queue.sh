#!/usr/bin/env bash
# Sequential queue for this record: runs jobs/NN_*.sh in name order, one at a time.
# A job that exits 0 gets jobs/NN_*.done; a failed one jobs/NN_*.failed (rerun: delete it).
# Restart after a kill: `nohup nice -n 10 bash queue.sh >> queue.log 2>&1 &` (each job resumes
# from its checkpoints in its workdir). Jobs added while it runs are picked up.
cd "$(dirname "$0")"
while true; do
  next=""
  for j in jobs/*.sh; do
    [ -e "$j" ] || continue
    [ -e "${j%.sh}.done" ] || [ -e "${j%.sh}.failed" ] || { next="$j"; break; }
  done
  [ -n "$next" ] || { echo "$(date -u +%FT%TZ) queue empty"; exit 0; }
  echo "$(date -u +%FT%TZ) start $next"
  if bash "$next" > "${next%.sh}.log" 2>&1; then touch "${next%.sh}.done"; s=done; else touch "${next%.sh}.failed"; s=failed; fi
  echo "$(date -u +%FT%TZ) $s $next"
done
