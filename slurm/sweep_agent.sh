#!/bin/bash
# One W&B sweep trial per array task: `wandb agent --count 1 $SWEEP` asks the sweep for a trial
# and runs the sweep's `command` (configs/sweeps/*.yaml) in this allocation; a multi-GPU command
# starts its ranks with srun itself (configs/sweeps/scale-1m.yaml).
#   wandb sweep configs/sweeps/scale-1m.yaml                   # -> ENTITY/PROJECT/SWEEP_ID
#   SWEEP=ENTITY/PROJECT/SWEEP_ID sbatch --array=0-15%4 slurm/sweep_agent.sh
# Environment: SWEEP (required), PYTHON (default: python; its bin/ goes first on PATH, so the
# agent's ${interpreter} is the same python), WANDB_* (the agent needs to be logged in: W&B online).
# Not requeued: a preempted trial is left unfinished in the sweep; the next array task takes a new one.
#
#SBATCH --job-name=elastic-pl-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
##SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%A_%a.out

SWEEP=${SWEEP:?set SWEEP=ENTITY/PROJECT/SWEEP_ID (printed by wandb sweep)}
PYTHON=${PYTHON:-python}
PATH="$(dirname "$(command -v "$PYTHON")"):$PATH"
echo "[sweep_agent] job=${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0} sweep=$SWEEP $(date -Is)"
exec "$PYTHON" -m wandb agent --count 1 "$SWEEP"
