#!/bin/bash
# Multi-node GPU training under SLURM: one task per node, each task drives ALL GPUs of its node.
#
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/instructblip_vicuna7b.py /shared/runs/v7b \
#       --config.train.num_steps=1000
#   DRY_RUN=1 launch/slurm_gpu.sh CONFIG WORKDIR   # print what each task would run (outside SLURM too)
#
# Process group: the coordinator is the first host of the allocation (port IB_JAX_PORT, default
# 12355); each task gets IB_JAX_NUM_PROCESSES=$SLURM_NTASKS and IB_JAX_PROCESS_ID=$SLURM_PROCID,
# which ib_jax/distributed.py passes to jax.distributed.initialize.
#
# Every GPU of the node: jax.distributed.initialize fills an unset `local_device_ids` from SLURM,
# as [SLURM_LOCALID] (jax/_src/clusters/cluster.py: "Defaults to single process per device"), so
# one task per node would drive GPU 0 only and leave the other 7 idle without an error
# (jax-ml/jax#16788). Each task therefore sets JAX_LOCAL_DEVICE_IDS (read by
# jax.distributed.initialize before that default) to all of its node's GPUs: SLURM_GPUS_ON_NODE,
# else `nvidia-smi -L`. tests/test_launch_slurm.py checks it with jax's own detection.
#
# CPUs: since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch, so a task would get
# one CPU and starve the input pipeline: it is passed on (SRUN_CPUS_PER_TASK and --cpus-per-task).
#
# Time limit and preemption: --signal=TERM@120 sends SIGTERM to the tasks 120 s before the time
# limit; the trainer saves a checkpoint and exits 0. If WORKDIR/TRAINING_DONE is not there yet, this
# script requeues the job (`scontrol requeue`, allowed by --requeue), and the requeued job resumes
# from that checkpoint. A job preempted by the scheduler is requeued by SLURM itself (--requeue).
# WORKDIR must be on a filesystem every node sees (or gs://): Orbax writes one checkpoint from all
# processes. Logs: slurm-<job>.out for this script, LOG_DIR/<job>-task<id>.out per task (appended
# across requeues).
#
# Environment: VENV (default: <repo>/.venv, built with `make venv` plus `pip install "jax[cuda12]"`
# of the pinned jax version on a node with the CUDA driver), LOG_DIR (default: <repo>/slurm_logs).
#SBATCH --job-name=ib_jax
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
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
LOG_DIR=${LOG_DIR:-$REPO/slurm_logs}
PORT=${IB_JAX_PORT:-12355}
NODELIST=${SLURM_JOB_NODELIST:-$(hostname)}
# First host of the allocation; scontrol expands compressed lists like "gpu[003-006,010]".
if command -v scontrol >/dev/null 2>&1; then
  # sed reads all of it: `head -n 1` could leave scontrol a SIGPIPE, fatal under pipefail.
  COORDINATOR_HOST=$(scontrol show hostnames "$NODELIST" | sed -n 1p)
elif [[ $NODELIST =~ ^([^,\[]+)\[([0-9]+) ]]; then  # no scontrol (dry runs): "gpu[003-006]" -> gpu003
  COORDINATOR_HOST="${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
else
  COORDINATOR_HOST=${NODELIST%%,*}
fi
NTASKS=${SLURM_NTASKS:-${SLURM_NNODES:-1}}
CPUS=${SLURM_CPUS_PER_TASK:-32}

# Per task: its process id (SLURM_PROCID is set by srun, not sbatch) and all of its node's GPUs.
# shellcheck disable=SC2016  # expanded by each task's shell, not here
TASK_SCRIPT='export IB_JAX_PROCESS_ID=$SLURM_PROCID
gpus=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [[ $gpus -gt 0 ]]; then export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1))); fi
exec "$0" "$@"'
TRAIN=("$VENV/bin/python" -m ib_jax.train "--config=$CONFIG" "--workdir=$WORKDIR" "$@")
export IB_JAX_COORDINATOR="$COORDINATOR_HOST:$PORT" IB_JAX_NUM_PROCESSES="$NTASKS"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export SRUN_CPUS_PER_TASK=$CPUS
# Let XLA use most of each GPU's memory; the process owns the whole node (--exclusive).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

COMMAND=(srun --ntasks="$NTASKS" --ntasks-per-node=1 --cpus-per-task="$CPUS" --kill-on-bad-exit=1
         --chdir="$REPO" --output="$LOG_DIR/%j-task%t.out" --open-mode=append
         bash -c "$TASK_SCRIPT" "${TRAIN[@]}")
if [[ -n "${DRY_RUN:-}" ]]; then
  echo "IB_JAX_COORDINATOR=$IB_JAX_COORDINATOR IB_JAX_NUM_PROCESSES=$IB_JAX_NUM_PROCESSES"
  printf '%q ' "${COMMAND[@]}"
  echo
  exit 0
fi
mkdir -p "$LOG_DIR"
echo "coordinator $IB_JAX_COORDINATOR, $NTASKS processes x all GPUs of each node, nodes $NODELIST," \
  "$CPUS CPUs per task; task logs in $LOG_DIR/${SLURM_JOB_ID:-}-task<id>.out"
status=0
"${COMMAND[@]}" || status=$?

done_marker() {  # WORKDIR/TRAINING_DONE (ib_jax.checkpoint.FINAL_MARKER), local or gs://
  "$VENV/bin/python" -c 'import sys; from etils import epath
sys.exit(0 if (epath.Path(sys.argv[1]) / "TRAINING_DONE").exists() else 1)' "$WORKDIR"
}
if [[ $status -eq 0 ]] && ! done_marker && [[ -n "${SLURM_JOB_ID:-}" ]]; then
  echo "training stopped before the end (time limit): requeueing job $SLURM_JOB_ID to resume"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
