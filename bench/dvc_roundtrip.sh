#!/usr/bin/env bash
# Time and size of a DVC push and pull of a workflow's results/ (default: this checkout's), through a
# local-directory remote, in a scratch copy. Usage: bench/dvc_roundtrip.sh [results_dir] [scratch_dir]
# Uses `tsmflow.dvc_sync track` (snapshot + dvc add) rather than `push`, which would refuse a run that
# still has jobs left; pull is the real `tsmflow.dvc_sync pull`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RESULTS=${1:-$ROOT/results}
SCRATCH=${2:-$(mktemp -d)}
PY=$ROOT/.venv/bin/python
export DVC_NO_ANALYTICS=1 GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost GIT_COMMITTER_NAME=bench \
    GIT_COMMITTER_EMAIL=bench@localhost
now() { date +%s.%N; }
mkdir -p "$SCRATCH/proj"
cd "$SCRATCH/proj"
git init -q && $PY -m dvc init -q && $PY -m dvc remote add -q -d local "$SCRATCH/remote"
cp -a "$RESULTS" results && rm -rf results/smoke
[ -d "$ROOT/.snakemake/metadata" ] && mkdir -p .snakemake && cp -a "$ROOT/.snakemake/metadata" .snakemake/
files=$(find results -type f | wc -l)
t0=$(now); $PY -m tsmflow.dvc_sync track >/dev/null; t1=$(now)
$PY -m dvc push -q; t2=$(now)
git add results.dvc .gitignore .dvc && git commit -qm results
git clone -q "$SCRATCH/proj" "$SCRATCH/clone" && cd "$SCRATCH/clone"
$PY -m dvc remote add -q --local -f local "$SCRATCH/remote"
t3=$(now); $PY -m tsmflow.dvc_sync pull >/dev/null; t4=$(now)
cat <<JSON
{"results": "$RESULTS", "files": $files, "size_mb": $(du -sm "$SCRATCH/proj/results" | cut -f1),
 "remote_size_mb": $(du -sm "$SCRATCH/remote" | cut -f1),
 "track_s": $(echo "$t1 - $t0" | bc), "push_s": $(echo "$t2 - $t1" | bc), "pull_and_restore_s": $(echo "$t4 - $t3" | bc)}
JSON
