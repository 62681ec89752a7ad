#!/usr/bin/env bash
# The runs behind the quality-vs-cost frontier of BENCHMARKS.md: ELASTIC and SASRec trained on one
# dataset at several history lengths (the frozen config of each model plus max_len overrides),
# two trainings at a time with one thread each, then the table and the figure.
#   bash bench/frontier_runs.sh ml-latest-small "200 1000 2391"
#   bash bench/frontier_runs.sh lastfm "200 899"
# Run directories: runs/<experiment>/<TAG>len<max_len> (TAG: a prefix, default none). Prepare the data first
# (elastic-pl prepare --config configs/<dataset>.yaml). DRY_RUN=1 prints the commands instead.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$1
LENGTHS=$2
EXTRA=${EXTRA:-}  # more key=value overrides for every run
TAG=${TAG:-}  # run ids are <TAG>len<max_len>
BIN=${BIN:-.venv/bin}
runs=()
for len in $LENGTHS; do
    for cfg in "configs/$DATA.yaml" "configs/$DATA-sasrec.yaml"; do
        exp=$("$BIN/python" -c "import sys; from elastic_pl.config import load_config; print(load_config(sys.argv[1]).run.experiment)" "$cfg")
        runs+=("runs/$exp/${TAG}len$len")
        cmd=("$BIN/elastic-pl" train --config "$cfg" run.run_id="${TAG}len$len" data.loader.max_len="$len"
             model.max_positions="$len" trainer.progress_bar=false $EXTRA)
        if [ -n "${DRY_RUN:-}" ]; then echo "${cmd[*]}"; continue; fi
        mkdir -p runs
        OMP_NUM_THREADS=1 WANDB_MODE=offline "${cmd[@]}" > "runs/frontier-$DATA-$(basename "$cfg" .yaml)-${TAG}len$len.log" 2>&1 &
    done
    wait  # the two models at one length side by side
done
[ -n "${DRY_RUN:-}" ] && { echo "runs: ${runs[*]}"; exit 0; }
"$BIN/python" -m bench.frontier --paired --title "$DATA" --png "docs/frontier-$DATA${TAG:+-${TAG%-}}.png" --run "${runs[@]}"
