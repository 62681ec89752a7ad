#!/usr/bin/env bash
# The interest-memory ablation on configs/synthetic-interests.yaml (1,000 interest clusters):
# ELASTIC with its memory (arm `mem`), without it (`nomem`), and with it plus query normalisation
# and a faster-learning memory (`memqn`: model.encoder.memory_query_norm=$QUERY_NORM,
# optim.memory_lr_mult=10), seeds 0 1 2 each; then paired comparisons over the test users
# (python -m bench.paired: the mean over a side's seeds per user, a bootstrap interval and a
# sign-flip p-value).
#   bash bench/memory_ablation.sh
#   JOBS=1 SEEDS="0 1" QUERY_NORM=layernorm bash bench/memory_ablation.sh
# Each training runs on one thread and stops at the data layer's trainer.max_time_minutes (15),
# then tests its best checkpoint; JOBS of them at a time (default 2). Run directories:
# runs/synthetic-interests/<arm>-s<seed> (a relaunch resumes unfinished ones); logs beside them in
# runs/memory-ablation-<arm>-s<seed>.log; the comparisons in bench/out/memory-ablation-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=configs/synthetic-interests.yaml
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
QUERY_NORM=${QUERY_NORM:-batchnorm}  # Lample et al. 2019 normalise the query with BatchNorm
EXTRA=${EXTRA:-}  # more key=value overrides for every run
BIN=${BIN:-.venv/bin}
RUNS=runs/synthetic-interests
declare -A ARM=(
    [mem]=""
    [nomem]="model.encoder.use_memory=false"
    [memqn]="model.encoder.memory_query_norm=$QUERY_NORM optim.memory_lr_mult=10"
)

[ -f data/synthetic-interests/shards/manifest.json ] || "$BIN/elastic-pl" prepare --config "$CONFIG"
mkdir -p runs bench/out
for seed in $SEEDS; do
    for arm in mem nomem memqn; do
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
        # shellcheck disable=SC2086  # the overrides are separate words
        OMP_NUM_THREADS=1 WANDB_MODE=offline "$BIN/elastic-pl" train --config "$CONFIG" run.run_id="$arm-s$seed" \
            run.seed="$seed" trainer.progress_bar=false ${ARM[$arm]} $EXTRA \
            > "runs/memory-ablation-$arm-s$seed.log" 2>&1 &
    done
done
wait

side() { for seed in $SEEDS; do printf '%s ' "$RUNS/$1-s$seed"; done; }
for pair in "mem nomem" "memqn nomem" "memqn mem"; do
    set -- $pair
    # shellcheck disable=SC2046  # one run directory per word
    "$BIN/python" -m bench.paired --a $(side "$1") --b $(side "$2") --out "bench/out/memory-ablation-$1-vs-$2.json"
done
