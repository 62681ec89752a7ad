#!/bin/bash
# Data preparation on SLURM: a plan job, an array job (one task per hash bucket), a finalize job.
#
#   export CONFIG=configs/<experiment>.yaml          # buckets B = data.prepare.num_buckets
#   plan=$(sbatch --parsable slurm/prepare_array.sh plan)
#   arr=$(sbatch --parsable --dependency=afterok:$plan --kill-on-invalid-dep=yes --array=0-15 \
#         slurm/prepare_array.sh)
#   sbatch --dependency=afterok:$arr --kill-on-invalid-dep=yes slurm/prepare_array.sh finalize
#
# plan      reads the log once (generates the synthetic log first if the config has one and it is
#           missing), writes <output_dir>/_work/plan.json and item_map.parquet; every bucket needs it
# (array)   bucket $SLURM_ARRAY_TASK_ID: its shard parts + a done-file (idempotent, rerunnable)
# finalize  numbers the parts as seq-*.tar, writes user_map.parquet and manifest.json (sha256 per shard)
# The output is byte-identical to a local `python -m elastic_pl prepare --config $CONFIG`.
#
# --array=0-(B-1) must match the number of buckets B in the config (an id out of range fails that
# task). afterok on the array's job id waits for EVERY task to exit 0; if one fails, finalize is
# cancelled (with --kill-on-invalid-dep=yes; without it, it stays PENDING,
# Reason=DependencyNeverSatisfied). Rerun a failed bucket alone: sbatch --array=7 slurm/prepare_array.sh
# (buckets are independent; the plan stays valid while input and config are unchanged), then submit
# finalize again. Throttle: --array=0-255%32 runs at most 32 buckets at a time.
# Extra key=value overrides after the script name (after `plan`/`finalize`) must be the same for
# all three jobs.
# Environment: CONFIG (required), PYTHON, PREPARE_ENTRY (default: "$PYTHON -m elastic_pl prepare";
# "$PYTHON -m data_pipeline.prepare" takes the same flags with a data-only config).
#
#SBATCH --job-name=elastic-pl-prepare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%A_%a.out

CONFIG=${CONFIG:?set CONFIG=configs/<experiment>.yaml}
PYTHON=${PYTHON:-python}
PREPARE_ENTRY=${PREPARE_ENTRY:-$PYTHON -m elastic_pl prepare}

# $PREPARE_ENTRY is split into words on purpose (a command with arguments).
case "${1:-}" in
    plan|finalize)
        stage=$1
        shift
        echo "[prepare_array] $stage job=$SLURM_JOB_ID $(date -Is)"
        exec $PREPARE_ENTRY --config "$CONFIG" "--$stage" "$@"
        ;;
esac
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "[prepare_array] not an array job: submit with --array=0-<buckets-1> (or pass 'plan' / 'finalize')" >&2
    exit 2
fi
echo "[prepare_array] bucket=$SLURM_ARRAY_TASK_ID of array=$SLURM_ARRAY_JOB_ID job=$SLURM_JOB_ID $(date -Is)"
exec $PREPARE_ENTRY --config "$CONFIG" --bucket "$SLURM_ARRAY_TASK_ID" "$@"
