#!/usr/bin/env bash
# The runs behind the quality-vs-cost frontier of BENCHMARKS.md: ELASTIC and SASRec trained on one
# dataset at several history lengths (the frozen config of each model plus max_len overrides),
# two trainings at a time with one thread each, then the table and the figure.
#   bash bench/frontier_runs.sh ml-latest-small "200 1000 2391"
#   bash bench/frontier_runs.sh lastfm "200 899"
# Run directories: runs/<dataset>-<model>/len<max_len>. Prepare the data first
# (elastic-pl prepare --config configs/<dataset>.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$1
LENGTHS=$2
EXTRA=${EXTRA:-}  # more key=value overrides for every run
BIN=${BIN:-.venv/bin}
runs=()
for len in $LENGTHS; do
    for cfg in "configs/$DATA.yaml" "configs/$DATA-sasrec.yaml"; do
        exp=$(grep -m1 "^  experiment:" "$cfg" | awk '{print $2}')
        runs+=("runs/$exp/len$len")
        OMP_NUM_THREADS=1 WANDB_MODE=offline "$BIN/elastic-pl" train --config "$cfg" run.run_id="len$len" \
            data.loader.max_len="$len" model.max_positions="$len" trainer.progress_bar=false $EXTRA \
            > "runs/frontier-$DATA-$(basename "$cfg" .yaml)-len$len.log" 2>&1 &
    done
    wait  # the two models at one length side by side
done
"$BIN/python" -m bench.frontier --paired --title "$DATA" --png "docs/frontier-$DATA.png" --run "${runs[@]}"
