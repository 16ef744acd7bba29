#!/usr/bin/env bash
#SBATCH --job-name=biflow
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
# Often wanted as well (site-specific): --partition, --account, --exclusive, --mem=0.
#
# The main job on SLURM GPU nodes: one JAX process per GPU (default), or one per node.
#
#   sbatch --nodes=2 launch/gpu_slurm.sh configs/imagenet256.py /shared/runs/b2 [--config.x=y ...]
#   MODE=per_node sbatch --nodes=2 --ntasks-per-node=1 --cpus-per-task=96 launch/gpu_slurm.sh ...
#
# Submit from the repo root with the Python environment active (sbatch passes the environment
# on; PYTHON=/path/to/venv/bin/python also works) that has `pip install -e .` and
# `pip install -U 'jax[cuda12]'`. Edit --gpus-per-node and --ntasks-per-node (equal, for
# MODE=per_gpu) to the node's GPU count. WORKDIR must be on a filesystem all nodes share:
# every process writes its checkpoint shards there, and process i logs to
# WORKDIR/logs/process_<i>.log. jax.distributed finds the coordinator, process count and id in
# the SLURM environment. MODE=per_gpu gives each process --local_device_ids=$SLURM_LOCALID
# (or 0 when Slurm binds one GPU per task); MODE=per_node gives it every GPU of its node.
#
# Preemption and time limits: --requeue lets Slurm requeue a preempted job; the SIGTERM it sends
# makes main save a checkpoint and exit (within the cluster's GraceTime, else the job resumes
# from the last periodic checkpoint). 180 s before the time limit Slurm sends USR1 to this
# script, which sends SIGTERM to the processes, waits for their checkpoint and requeues the job
# (REQUEUE_ON_TIMEOUT=0: don't; at most MAX_RESTARTS times). A requeued job resumes from WORKDIR.
# Raise the lead time with e.g. `sbatch --signal=B:USR1@600` if checkpoints are slow.
#
# DRY_RUN=1 bash launch/gpu_slurm.sh CONFIG WORKDIR ... prints the commands (set the SLURM_*
# variables by hand to see what a task would run).
set -euo pipefail

if [[ $# -lt 2 || $1 == -h || $1 == --help ]]; then
  sed -n '14,36p' "$0"; exit 2
fi
CONFIG=$1 WORKDIR=$2; shift 2
MODE=${MODE:-per_gpu} PYTHON=${PYTHON:-python} DRY_RUN=${DRY_RUN:-0}
REQUEUE_ON_TIMEOUT=${REQUEUE_ON_TIMEOUT:-1} MAX_RESTARTS=${MAX_RESTARTS:-50}
: "${SLURM_JOB_ID:?not inside a SLURM job: submit with sbatch (or set SLURM_* by hand with DRY_RUN=1)}"
case $MODE in per_gpu|per_node) ;; *) echo "MODE=$MODE: use per_gpu or per_node" >&2; exit 2 ;; esac
export MODE PYTHONUNBUFFERED=1

# Optional, per cluster (uncomment what applies):
# export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90   # JAX preallocates 75% of each GPU by default
# export XLA_PYTHON_CLIENT_PREALLOCATE=false   # allocate on demand instead (more fragmentation)
# export NCCL_DEBUG=WARN                       # INFO to see transports / debug hangs
# export NCCL_SOCKET_IFNAME=ib0                # or ^lo,docker0: the interface NCCL bootstraps on
# export NCCL_IB_HCA=mlx5                      # which InfiniBand adapters NCCL uses
# export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"  # overlap collectives

# Runs inside each task: pick this process's GPUs, then exec the main job.
# shellcheck disable=SC2016  # expands in the task
TASK_SH='set -euo pipefail; vis=${CUDA_VISIBLE_DEVICES:-}
if [[ $MODE == per_node ]]; then
  if [[ -n $vis ]]; then IFS=, read -ra gpus <<<"$vis"; n=${#gpus[@]}
  else n=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)}; fi
  ids=""; if ((n > 0)); then ids=$(seq -s, 0 $((n - 1))); fi  # none counted: all devices
elif [[ -n $vis && $vis != *,* ]]; then ids=0  # Slurm bound one GPU to this task
else ids=$SLURM_LOCALID; fi
exec "$@" --local_device_ids="$ids"'

cd "${SLURM_SUBMIT_DIR:-.}"
LOGDIR=$WORKDIR/logs
JOB=("$PYTHON" -m biflow_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@")
SRUN=(srun --kill-on-bad-exit=1 --output="$LOGDIR/process_%t.log" --open-mode=append)
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then SRUN+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
if [[ $MODE == per_node ]]; then
  SRUN+=(--ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1)
  if [[ ${SLURM_NTASKS_PER_NODE:-1} != 1 ]]; then
    echo "note: MODE=per_node in an allocation of $SLURM_NTASKS_PER_NODE tasks per node; submit" \
         "with --ntasks-per-node=1 and all the node's CPUs in --cpus-per-task" >&2
  fi
fi
CMD=("${SRUN[@]}" bash -c "$TASK_SH" task "${JOB[@]}")

echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}: MODE=$MODE"
if [[ $DRY_RUN == 1 ]]; then
  printf '+'; printf ' %q' mkdir -p "$LOGDIR"; echo
  printf '+'; printf ' %q' "${SRUN[@]}"; printf '%s' " bash -c \"\$TASK_SH\" task"; printf ' %q' "${JOB[@]}"; echo
  printf 'task %s (SLURM_LOCALID=%s, CUDA_VISIBLE_DEVICES=%s) would run:\n  ' \
    "${SLURM_PROCID:-0}" "${SLURM_LOCALID:-0}" "${CUDA_VISIBLE_DEVICES:-unset}"
  SLURM_LOCALID=${SLURM_LOCALID:-0} bash -c "$TASK_SH" task printf '%q ' "${JOB[@]}"; echo
  exit 0
fi
mkdir -p "$LOGDIR"
# The interpreter every task runs: fail here, with its own error, rather than in N tasks.
if ! PYTHON_PATH=$(command -v "$PYTHON"); then
  echo "PYTHON=$PYTHON: no such interpreter; set PYTHON=/path/to/venv/bin/python" >&2; exit 127
fi
echo "PYTHON=$PYTHON_PATH"
"$PYTHON" -c 'import biflow_jax' || {
  rc=$?; echo "PYTHON=$PYTHON_PATH cannot import biflow_jax (exit $rc): activate the" \
    "environment with \`pip install -e .\` before sbatch, or set PYTHON" >&2; exit "$rc"; }

REQUEUE=0
# shellcheck disable=SC2317,SC2329  # runs from a trap
on_usr1() {  # time limit near: the processes checkpoint and exit, then the job is requeued
  echo "USR1 (time limit in a few minutes): SIGTERM to the processes"
  REQUEUE=$REQUEUE_ON_TIMEOUT
  scancel --signal=TERM "$SLURM_JOB_ID" || true  # the job steps, not this script
}
# shellcheck disable=SC2317,SC2329
on_term() { echo "SIGTERM (preemption or scancel): waiting for the processes to checkpoint"; }
trap on_usr1 USR1
trap on_term TERM

# In the background, so that the traps run while it is going (bash defers them otherwise).
"${CMD[@]}" &
srun_pid=$!
rc=0
wait "$srun_pid" || rc=$?
while kill -0 "$srun_pid" 2>/dev/null; do  # a trap interrupted wait: keep waiting
  rc=0
  wait "$srun_pid" || rc=$?
done
if ((rc == 0)); then
  echo "processes exited with status 0; logs in $LOGDIR/process_*.log"
else  # srun's status is the highest of the tasks'; its own lines above name each failed task
  echo "processes failed: srun exited with status $rc. The first 'srun: error: NODE: task T:" \
       "Exited with exit code ...' line above names the task that failed; its log is" \
       "$LOGDIR/process_T.log (all logs: $LOGDIR/process_*.log)" >&2
fi

if [[ $REQUEUE == 1 ]]; then
  if (( ${SLURM_RESTART_COUNT:-0} < MAX_RESTARTS )); then
    echo "requeueing job $SLURM_JOB_ID: it resumes from $WORKDIR"
    scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue failed (exit $?)" >&2
  else
    echo "not requeued: already restarted $MAX_RESTARTS times (MAX_RESTARTS)" >&2
  fi
fi
exit "$rc"
