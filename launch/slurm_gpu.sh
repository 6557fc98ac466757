#!/bin/bash
# Multi-node GPU training under SLURM: one task per host, each task drives all GPUs of its host.
#
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/instructblip_vicuna7b.py /shared/runs/v7b \
#       --config.train.num_steps=1000
#   DRY_RUN=1 launch/slurm_gpu.sh CONFIG WORKDIR   # print what each task would run (outside SLURM too)
#
# The coordinator is the first host of the allocation (port IB_JAX_PORT, default 12355); each task
# gets IB_JAX_NUM_PROCESSES=$SLURM_NTASKS and IB_JAX_PROCESS_ID=$SLURM_PROCID, which
# ib_jax/distributed.py passes to jax.distributed.initialize. (Without them, jax's own SLURM
# auto-detection does the same.) WORKDIR must be on a filesystem every node sees: Orbax writes one
# checkpoint from all processes, and re-submitting the same command resumes from it.
#
# Environment: VENV (default: <repo>/.venv, built with `make venv` plus `pip install "jax[cuda12]"`
# of the pinned jax version on a node with the CUDA driver).
#SBATCH --job-name=ib_jax
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: sbatch [--nodes=N] $0 CONFIG WORKDIR [ib_jax.train flags...]" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2

# sbatch runs a copy of this script from the spool directory: find the repository from the submit dir.
REPO=${IB_JAX_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
VENV=${VENV:-$REPO/.venv}
PORT=${IB_JAX_PORT:-12355}
NODELIST=${SLURM_JOB_NODELIST:-$(hostname)}
# First host of the allocation; scontrol expands compressed lists like "gpu[003-006,010]".
if command -v scontrol >/dev/null 2>&1; then
  COORDINATOR_HOST=$(scontrol show hostnames "$NODELIST" | head -n 1)
elif [[ $NODELIST =~ ^([^,\[]+)\[([0-9]+) ]]; then  # no scontrol (dry runs): "gpu[003-006]" -> gpu003
  COORDINATOR_HOST="${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
else
  COORDINATOR_HOST=${NODELIST%%,*}
fi
NTASKS=${SLURM_NTASKS:-1}

# Each task computes its own process id from SLURM_PROCID (set by srun, not by sbatch).
TASK_SCRIPT='export IB_JAX_PROCESS_ID=$SLURM_PROCID; exec "$0" "$@"'
TRAIN=("$VENV/bin/python" -m ib_jax.train "--config=$CONFIG" "--workdir=$WORKDIR" "$@")
export IB_JAX_COORDINATOR="$COORDINATOR_HOST:$PORT" IB_JAX_NUM_PROCESSES="$NTASKS"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Let XLA use most of each GPU's memory; the process owns the whole node (--exclusive).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

COMMAND=(srun --ntasks="$NTASKS" --ntasks-per-node=1 --kill-on-bad-exit=1 --chdir="$REPO"
         bash -c "$TASK_SCRIPT" "${TRAIN[@]}")
if [[ -n "${DRY_RUN:-}" ]]; then
  echo "IB_JAX_COORDINATOR=$IB_JAX_COORDINATOR IB_JAX_NUM_PROCESSES=$IB_JAX_NUM_PROCESSES"
  printf '%q ' "${COMMAND[@]}"
  echo
  exit 0
fi
echo "coordinator $IB_JAX_COORDINATOR, $NTASKS processes, nodes $NODELIST"
"${COMMAND[@]}"
