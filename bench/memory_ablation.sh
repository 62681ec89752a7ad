#!/usr/bin/env bash
# The interest-memory ablation: ELASTIC with its memory (arm `mem`), without it (`nomem`), and with
# it plus query normalisation and a faster-learning memory (`memqn`:
# model.encoder.memory_query_norm=$QUERY_NORM, optim.memory_lr_mult=10), seeds 0 1 2 each; then
# paired comparisons over the test users (python -m bench.paired: the mean over a side's seeds per
# user, a bootstrap interval and a sign-flip p-value).
#   bash bench/memory_ablation.sh                                   # configs/synthetic-interests.yaml
#   CONFIG=configs/lastfm.yaml ARMS="mem nomem" bash bench/memory_ablation.sh
#   JOBS=1 SEEDS="0 1" QUERY_NORM=layernorm bash bench/memory_ablation.sh
# Each training runs on one thread and stops at its config's trainer.max_time_minutes, then tests
# its best checkpoint; JOBS of them at a time (default 2). Run directories:
# runs/<experiment>/<arm>-s<seed> (a relaunch resumes unfinished ones); logs beside them in
# runs/memory-ablation-<experiment>-<arm>-s<seed>.log; the comparisons in
# bench/out/memory-ablation-<experiment>-<a>-vs-<b>.json. DRY_RUN=1 prints the commands instead.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/synthetic-interests.yaml}
ARMS=${ARMS:-"mem nomem memqn"}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
QUERY_NORM=${QUERY_NORM:-batchnorm}  # Lample et al. 2019 normalise the query with BatchNorm
EXTRA=${EXTRA:-}  # more key=value overrides for every run
BIN=${BIN:-.venv/bin}
declare -A ARM=(
    [mem]="model.encoder.use_memory=true"
    [nomem]="model.encoder.use_memory=false"
    [memqn]="model.encoder.use_memory=true model.encoder.memory_query_norm=$QUERY_NORM optim.memory_lr_mult=10"
)
for arm in $ARMS; do  # before anything is prepared or trained
    [ -n "${ARM[$arm]+set}" ] || { echo "unknown arm '$arm' (known: ${!ARM[*]})" >&2; exit 2; }
done
read -r EXP SHARDS < <("$BIN/python" -c "import sys; from elastic_pl.config import load_config
c = load_config(sys.argv[1]); print(c.run.experiment, c.data.prepare.output_dir)" "$CONFIG")
RUNS=runs/$EXP

run() { if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi; }
[ -f "$SHARDS/manifest.json" ] || run "$BIN/elastic-pl" prepare --config "$CONFIG"
mkdir -p runs bench/out
for seed in $SEEDS; do
    for arm in $ARMS; do
        # shellcheck disable=SC2206  # the overrides are separate words
        cmd=("$BIN/elastic-pl" train --config "$CONFIG" run.run_id="$arm-s$seed" run.seed="$seed"
             trainer.progress_bar=false ${ARM[$arm]} $EXTRA)
        if [ -n "${DRY_RUN:-}" ]; then echo "${cmd[*]}"; continue; fi
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
        OMP_NUM_THREADS=1 WANDB_MODE=offline "${cmd[@]}" > "runs/memory-ablation-$EXP-$arm-s$seed.log" 2>&1 &
    done
done
wait

side() { for seed in $SEEDS; do printf '%s ' "$RUNS/$1-s$seed"; done; }
read -r -a arms <<< "$ARMS"
for ((i = 0; i < ${#arms[@]}; i++)); do
    for ((j = i + 1; j < ${#arms[@]}; j++)); do
        a=${arms[i]} b=${arms[j]}
        # shellcheck disable=SC2046  # one run directory per word
        run "$BIN/python" -m bench.paired --a $(side "$a") --b $(side "$b") \
            --out "bench/out/memory-ablation-$EXP-$a-vs-$b.json"
    done
done
