#!/usr/bin/env bash
# The scale run: generate -> prepare -> train (fixed wall time) -> evaluate, each stage timed, with
# its peak RSS (process tree) and disk use, as a table (bench/scale_run.py).
#   bash bench/scale_run.sh configs/scale-1m.yaml                       # 10^8 events, 60 training minutes
#   bash bench/scale_run.sh configs/scale-10m.yaml
#   EVENTS=1e6 MINUTES=5 bash bench/scale_run.sh configs/scale-1m.yaml  # a scaled-down instance
# Environment: OUT (default runs/scale-run/<config name>[-<EVENTS>]), EVENTS, MINUTES (default 60),
# EVAL_BATCHES (default 20), PYTHON (default .venv/bin/python if present, else python).
# Extra key=value overrides after the config go to every stage.
set -euo pipefail
CONFIG=${1:?usage: bash bench/scale_run.sh configs/scale-1m.yaml [key=value ...]}
shift
NAME=$(basename "${CONFIG%.*}")${EVENTS:+-$EVENTS}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
exec "$PYTHON" -m bench.scale_run --config "$CONFIG" --out "${OUT:-runs/scale-run/$NAME}" \
    ${EVENTS:+--events "$EVENTS"} --minutes "${MINUTES:-60}" --eval-batches "${EVAL_BATCHES:-20}" -- "$@"
