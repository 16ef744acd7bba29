#!/usr/bin/env bash
# N JAX processes on this machine, joined by jax.distributed over 127.0.0.1, each with
# D fake CPU devices and gloo collectives: the multi-host code path, runnable anywhere.
#
#   launch/local_multiprocess.sh N D --config=configs/tiny.py --workdir=/tmp/run [--config.x=y ...]
#
# Every process runs the same main job; process 0 writes logs, samples and config, all
# write their checkpoint shards to the (shared) workdir. Per-process output goes to
# <workdir>/logs/process_<i>.log. If one process fails the others are stopped, and the
# script exits with the first non-zero status. Set PORT to choose the coordinator port.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,12p' "$0"; exit 2
fi
NUM_PROCESSES=$1; DEVICES=$2; shift 2
WORKDIR=""
for arg in "$@"; do
  case $arg in --workdir=*) WORKDIR=${arg#--workdir=} ;; esac
done
if [[ -z $WORKDIR ]]; then echo "pass --workdir=DIR" >&2; exit 2; fi
PORT=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
PYTHON=${PYTHON:-python}
mkdir -p "$WORKDIR/logs"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES" \
  "$PYTHON" -m biflow_jax.main "$@" \
      --coordinator_address="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES" \
      --process_id="$i" --cpu_collectives=gloo \
      > "$WORKDIR/logs/process_$i.log" 2>&1 &
  pids+=($!)
done

status=0
for ((i = 0; i < NUM_PROCESSES; i++)); do
  if ! wait "${pids[$i]}"; then
    rc=$?
    echo "process $i failed (exit $rc); see $WORKDIR/logs/process_$i.log" >&2
    tail -n 20 "$WORKDIR/logs/process_$i.log" >&2
    [[ $status -eq 0 ]] && status=$rc
    cleanup
  fi
done
exit $status
