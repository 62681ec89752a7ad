#!/bin/bash
# Evaluate a checkpoint of elastic-pl under SLURM (full-ranking, leave-one-out test split).
#
#   CONFIG=configs/<experiment>.yaml CKPT=runs/<experiment>/checkpoints/last.ckpt \
#       sbatch slurm/evaluate.sh [--out metrics.json] [--split valid] [key=value ...]
#
# Multi-GPU evaluation: sbatch --nodes=N --ntasks-per-node=G --gpus-per-node=G slurm/evaluate.sh
# (every user is evaluated exactly once on any number of ranks; see docs/DATA_LOADER.md).
# CKPT: a checkpoint file, or the directory of a sharded one (trainer.strategy=fsdp|fsdp2;
# consolidated in CPU memory on every rank).
# Environment: CONFIG, CKPT (required); RUN_DIR (where results go; default: the entry
# point's choice), PYTHON, ELASTIC_PL_ENTRY, ACCELERATOR, DEVICES: as in train_multinode.sh.
#
#SBATCH --job-name=elastic-pl-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
##SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out

CONFIG=${CONFIG:?set CONFIG=configs/<experiment>.yaml}
CKPT=${CKPT:?set CKPT=path/to/checkpoint.ckpt}
PYTHON=${PYTHON:-python}
ELASTIC_PL_ENTRY=${ELASTIC_PL_ENTRY:-$PYTHON -m elastic_pl}

echo "[evaluate] job=$SLURM_JOB_ID nodes=$SLURM_JOB_NODELIST tasks/node=$SLURM_NTASKS_PER_NODE ckpt=$CKPT $(date -Is)"

srun --kill-on-bad-exit=1 $ELASTIC_PL_ENTRY evaluate --config "$CONFIG" \
    --checkpoint "$CKPT" \
    trainer.num_nodes="$SLURM_NNODES" \
    trainer.devices="${DEVICES:-$SLURM_NTASKS_PER_NODE}" \
    ${ACCELERATOR:+trainer.accelerator=$ACCELERATOR} \
    ${RUN_DIR:+run.dir=$RUN_DIR} \
    "$@"
