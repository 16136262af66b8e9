#!/usr/bin/env bash
# keep.sh SRC_RUN_DIR DST_DIR: copy a finished run's small record files (top-level *.json,
# *.jsonl, *.md, *.png; never checkpoints) from runs/ (not kept between machines) into results/
# (committed), so a record can be merged in a later session on a fresh machine. Atomic per run:
# written to DST.tmp, then renamed over DST.
set -euo pipefail
src=$1 dst=$2
[ -d "$src" ] || { echo "error: keep.sh: no run dir $src" >&2; exit 2; }
rm -rf "$dst.tmp"; mkdir -p "$dst.tmp"
find "$src" -maxdepth 1 -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' \) \
  -exec cp {} "$dst.tmp/" \;
rm -rf "$dst"; mv "$dst.tmp" "$dst"
echo "kept $(ls "$dst" | tr '\n' ' ')-> $dst"
