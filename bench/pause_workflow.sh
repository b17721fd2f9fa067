#!/usr/bin/env bash
# Run a benchmark with every running Snakemake job of this checkout paused (SIGSTOP), so that
# absolute timings are not shared with a workflow run in the background; jobs resume afterwards.
#   bench/pause_workflow.sh .venv/bin/python bench/eval_one_run.py
set -u
pids=$(pgrep -f "\.snakemake/scripts/" || true)
[ -n "$pids" ] && kill -STOP $pids
trap '[ -n "$pids" ] && kill -CONT $pids' EXIT
"$@"
