#!/usr/bin/env bash
# N JAX processes on this machine, joined by jax.distributed over 127.0.0.1, each with
# D fake CPU devices and gloo collectives: the multi-host code path, runnable anywhere.
#
#   [PYTHON=/path/to/venv/bin/python] launch/local_multiprocess.sh N D \
#       --config=configs/tiny.py --workdir=/tmp/run [--config.x=y ...]
#
# PYTHON is the interpreter that runs every process (and picks the port): pass the one that
# has the project installed (tests pass their own sys.executable); unset, it is `python` on
# PATH, i.e. the active environment's. Every process runs the same main job; process 0 writes
# logs, samples and config, all write their checkpoint shards to the (shared) workdir.
# Process i's output goes to <workdir>/logs/process_<i>.log. The script exits 0 only if every
# process exits 0. When one fails, the others get SIGTERM (SIGKILL KILL_AFTER seconds later,
# default 30), and the script names the first process that failed and its log, prints the
# log's tail and exits with that process's status. Set PORT to choose the coordinator port.
set -euo pipefail

usage() { sed -n '2,15p' "$0" >&2; exit 2; }
if [[ $# -lt 3 ]]; then usage; fi
NUM_PROCESSES=$1 DEVICES=$2; shift 2
if ! [[ $NUM_PROCESSES =~ ^[1-9][0-9]*$ && $DEVICES =~ ^[1-9][0-9]*$ ]]; then
  echo "N=$NUM_PROCESSES and D=$DEVICES must be positive integers" >&2; usage
fi
WORKDIR=""
for arg in "$@"; do
  case $arg in --workdir=*) WORKDIR=${arg#--workdir=} ;; esac
done
if [[ -z $WORKDIR ]]; then echo "pass --workdir=DIR" >&2; exit 2; fi
PYTHON=${PYTHON:-python}
KILL_AFTER=${KILL_AFTER:-30}
if ! command -v "$PYTHON" >/dev/null; then
  echo "PYTHON=$PYTHON: no such interpreter (set PYTHON to the one with the project installed)" >&2
  exit 127
fi
if [[ -z ${PORT:-} ]]; then
  PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || {
    rc=$?; echo "PYTHON=$PYTHON could not pick a free port (exit $rc)" >&2; exit "$rc"; }
fi
LOGDIR=$WORKDIR/logs
mkdir -p "$LOGDIR"

pids=() statuses=() interrupted=0 kill_at=0
stop_all() {  # SIGTERM to the processes still running; SIGKILL after KILL_AFTER seconds
  local pid
  for pid in "${pids[@]}"; do
    if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  if ((kill_at == 0)); then kill_at=$((SECONDS + KILL_AFTER)); fi
}
on_signal() { interrupted=$1; echo "$2: SIGTERM to the processes" >&2; stop_all; }
trap 'on_signal 130 SIGINT' INT
trap 'on_signal 143 SIGTERM' TERM

echo "$NUM_PROCESSES process(es) x $DEVICES device(s) with $(command -v "$PYTHON"), port $PORT;" \
     "logs: $LOGDIR/process_<i>.log"
for ((i = 0; i < NUM_PROCESSES; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES" \
  "$PYTHON" -m biflow_jax.main "$@" \
      --coordinator_address="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES" \
      --process_id="$i" --cpu_collectives=gloo \
      > "$LOGDIR/process_$i.log" 2>&1 &
  pids+=($!)
  statuses+=("")
done

# Poll rather than `wait PID` in order: process 0 may hang on a peer that died long ago, and
# the first process to fail is the one whose log holds the cause.
first=-1 status=0 left=$NUM_PROCESSES
while ((left > 0)); do
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    pid=${pids[i]}
    if [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null; then continue; fi
    rc=0
    wait "$pid" || rc=$?
    pids[i]="" statuses[i]=$rc left=$((left - 1))
    if ((rc != 0 && first < 0)); then
      first=$i status=$rc
      echo "process $i failed (exit $rc); log: $LOGDIR/process_$i.log; stopping the others" >&2
      stop_all
    fi
  done
  if ((kill_at > 0 && SECONDS >= kill_at)); then
    for pid in "${pids[@]}"; do
      if [[ -n $pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
  fi
  if ((left > 0)); then sleep 0.2; fi
done

if ((first >= 0)); then
  summary=""
  for ((i = 0; i < NUM_PROCESSES; i++)); do summary+=" $i:${statuses[i]}"; done
  echo "exit status per process:$summary" >&2
  echo "process $first failed first (exit $status); last lines of $LOGDIR/process_$first.log:" >&2
  tail -n 30 "$LOGDIR/process_$first.log" >&2 || true
  echo "process $first failed (exit $status); full log: $LOGDIR/process_$first.log" >&2
  exit "$status"
fi
if ((interrupted)); then
  echo "interrupted: the processes exited 0 (a SIGTERM saves a checkpoint); exit $interrupted" >&2
  exit "$interrupted"
fi
echo "all $NUM_PROCESSES process(es) exited 0"
