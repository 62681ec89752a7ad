#!/bin/bash
# Data preparation as a SLURM array job (one task per hash bucket) + a dependent finalize job.
#
#   jid=$(CONFIG=configs/prep.yaml sbatch --parsable --array=0-15 slurm/prepare_array.sh)
#   CONFIG=configs/prep.yaml sbatch --dependency=afterok:$jid --kill-on-invalid-dep=yes \
#       slurm/prepare_array.sh finalize
#
# --array=0-(B-1) must match the number of buckets B in the config. afterok on the array's
# job id waits for EVERY task to exit 0; if one fails, finalize is cancelled (with
# --kill-on-invalid-dep=yes; without it, it stays PENDING, Reason=DependencyNeverSatisfied).
# Rerun a failed bucket alone: sbatch --array=7 slurm/prepare_array.sh (buckets are independent).
# Throttle: --array=0-255%32 runs at most 32 buckets at a time.
# Environment: CONFIG (required), PYTHON, PREPARE_ENTRY (default: "$PYTHON -m data_pipeline.prepare").
#
#SBATCH --job-name=elastic-pl-prepare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%A_%a.out

CONFIG=${CONFIG:?set CONFIG=configs/<prepare config>.yaml}
PYTHON=${PYTHON:-python}
PREPARE_ENTRY=${PREPARE_ENTRY:-$PYTHON -m data_pipeline.prepare}

if [ "${1:-}" = finalize ]; then
    shift
    echo "[prepare_array] finalize job=$SLURM_JOB_ID $(date -Is)"
    exec $PREPARE_ENTRY --config "$CONFIG" --finalize "$@"
fi
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "[prepare_array] not an array job: submit with --array=0-<buckets-1> (or pass 'finalize')" >&2
    exit 2
fi
echo "[prepare_array] bucket=$SLURM_ARRAY_TASK_ID of array=$SLURM_ARRAY_JOB_ID job=$SLURM_JOB_ID $(date -Is)"
exec $PREPARE_ENTRY --config "$CONFIG" --bucket "$SLURM_ARRAY_TASK_ID" "$@"
