#!/bin/bash
# Multi-node DDP/FSDP training of elastic-pl under SLURM, preemption-safe.
#
#   CONFIG=configs/<experiment>.yaml sbatch slurm/train_multinode.sh [key=value ...]
#
# Resources below are defaults; sbatch options on the command line override them, e.g.
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 slurm/train_multinode.sh
# One task per GPU: --ntasks-per-node MUST equal the GPUs per node (Lightning checks it
# and stops at once with a ValueError if `trainer.devices` differs).
#
# Environment (all optional except CONFIG; reaches the job through sbatch's default
# --export=ALL, or list them: sbatch --export=ALL,CONFIG=...,ACCELERATOR=cpu ...):
#   CONFIG        experiment config (required)
#   EXPERIMENT    experiment name; default: the config file's base name
#   RUN_DIR       run directory; default: runs/$EXPERIMENT. Stable per EXPERIMENT, not per
#                 job: a requeued (or resubmitted) job finds its hpc_ckpt_*.ckpt /
#                 last.ckpt / W&B run id there and resumes. New experiment = new EXPERIMENT.
#   PYTHON        python executable (default: python)
#   ELASTIC_PL_ENTRY  the command srun starts (default: "$PYTHON -m elastic_pl")
#   ACCELERATOR   e.g. cpu (with gloo) for CPU clusters and CI; default: the config's
#   STRATEGY      e.g. ddp, fsdp; default: the config's
#   DEVICES       trainer.devices; default: $SLURM_NTASKS_PER_NODE (keep it so)
#   MASTER_ADDR / MASTER_PORT  rendezvous; default: Lightning derives them from the job
#                 (first node of the allocation, port 15000 + last 4 digits of the job id)
# NCCL/InfiniBand knobs: see slurm/README.md (export them before sbatch, or here).
#
#SBATCH --job-name=elastic-pl-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
##SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# SIGUSR1 goes to the srun'd tasks (not this shell): before the next training step every rank
# saves $RUN_DIR/hpc_ckpt_<n>.ckpt and rank 0 runs `scontrol requeue $SLURM_JOB_ID`
# (elastic_pl/strategies.py RequeueOnSignal); the requeued job resumes from it.
# Uncomment for NCCL diagnostics on a new cluster:
# export NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET
# export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

CONFIG=${CONFIG:?set CONFIG=configs/<experiment>.yaml (see slurm/README.md)}
EXPERIMENT=${EXPERIMENT:-$(basename "${CONFIG%.*}")}
RUN_DIR=${RUN_DIR:-runs/$EXPERIMENT}
PYTHON=${PYTHON:-python}
ELASTIC_PL_ENTRY=${ELASTIC_PL_ENTRY:-$PYTHON -m elastic_pl}

echo "[train_multinode] job=$SLURM_JOB_ID restart=${SLURM_RESTART_COUNT:-0} nodes=$SLURM_JOB_NODELIST" \
     "tasks/node=$SLURM_NTASKS_PER_NODE run_dir=$RUN_DIR $(date -Is)"

# $ELASTIC_PL_ENTRY is split into words on purpose (a command with arguments).
# --kill-on-bad-exit: one dead rank ends the step at once instead of a collective hang.
srun --kill-on-bad-exit=1 $ELASTIC_PL_ENTRY train --config "$CONFIG" \
    trainer.num_nodes="$SLURM_NNODES" \
    trainer.devices="${DEVICES:-$SLURM_NTASKS_PER_NODE}" \
    ${ACCELERATOR:+trainer.accelerator=$ACCELERATOR} \
    ${STRATEGY:+trainer.strategy=$STRATEGY} \
    run.dir="$RUN_DIR" \
    "$@"
