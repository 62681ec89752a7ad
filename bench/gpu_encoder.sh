#!/usr/bin/env bash
# The GPU encoder benchmark in one run: ELASTIC vs SASRec-SDPA vs naive attention, D=64, 2 layers,
# 131,072 tokens/batch, bf16 autocast, N in {256, 1024, 4096, 16384, 65536}; eager (train + infer)
# then torch.compile (train; ELASTIC and SDPA).
# Budget: under 5 minutes wall on one H100/H200. Each phase has its own time limit and writes
# JSON lines as it goes, so a phase cut short still returns what it measured.
#
# From the repository root: bash bench/gpu_encoder.sh   (results in $OUT, default bench/out)
# Prefer an H200: naive attention needs ~91 GiB at N=16,384 (measured on an H200), so on an
# 80 GB H100 it records OOM there and the "ELASTIC memory <= 3% of naive at 16,384" target has
# no denominator.
# Needs only torch (+ this repository); no pip install, no network.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || PY=python3
LENGTHS=${LENGTHS:-256,1024,4096,16384,65536}
COMMON=(--device cuda --dtype bf16 --tokens 131072 --lengths "$LENGTHS" --d-model 64 --layers 2)
start=$(date +%s)

{
  nvidia-smi --query-gpu=name --format=csv
  nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/gpu_env.txt"

"$PY" -m bench.encoder --state-bytes 2>&1 | tee "$OUT/state_bytes.md"

echo "== eager (train + infer), $(($(date +%s) - start)) s in"
timeout --signal=TERM 110 "$PY" -m bench.encoder "${COMMON[@]}" --warmup 3 --iters 10 \
  --out "$OUT/gpu_eager.jsonl" 2>&1 | tee "$OUT/gpu_eager.md"

echo "== torch.compile (train), $(($(date +%s) - start)) s in"
# N outermost so a time limit cuts ELASTIC and SDPA evenly; one compilation per N (shapes differ).
timeout --signal=TERM 170 "$PY" -m bench.encoder "${COMMON[@]}" --compile --interleave \
  --encoders elastic,sasrec --modes train --warmup 3 --iters 10 \
  --out "$OUT/gpu_compile.jsonl" 2>&1 | tee "$OUT/gpu_compile.md"

echo "== done in $(($(date +%s) - start)) s; files in $OUT"
ls -l "$OUT"
