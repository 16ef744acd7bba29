#!/usr/bin/env bash
# Cloud TPU VM pod slice lifecycle for the main job, with gcloud (run it on your own machine).
#
#   launch/tpu_pod.sh [--dry_run] [--setting=value ...] COMMAND [MAIN_ARGS ...]
#
#   create  gcloud compute tpus tpu-vm create (--spot / --preemptible on request)
#   setup   copy this checkout (or git clone REPO_URL) to every worker, make a venv there,
#           pip install -e . and -U 'jax[tpu]'
#   run     the same main job on all workers at once; each worker logs to
#           ~/biflow_logs/<TPU_NAME>_<hostname>.log (and the console, unless --background)
#           and prints its exit status (--background: writes it to ~/biflow_logs/<TPU_NAME>.status)
#   stop    SIGTERM to a --background run (the job saves a checkpoint and exits)
#   delete  gcloud compute tpus tpu-vm delete
#   all     create, setup, run (foreground), then delete, also when setup or run fails
#
# Settings, as --flag=value or environment variables:
#   --tpu_name TPU_NAME (biflow)  --zone ZONE (required)  --project PROJECT (gcloud default)
#   --accelerator ACCELERATOR (v4-32; e.g. v5p-64)  --runtime_version RUNTIME_VERSION
#   (default from the accelerator: v5p v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite,
#   v6e v2-alpha-tpuv6e, else tpu-ubuntu2204-base)  --spot SPOT=1  --preemptible PREEMPTIBLE=1
#   --config CONFIG  --workdir WORKDIR (both needed by run)  --background BACKGROUND=1
#   --repo_url REPO_URL (setup clones it instead of copying this checkout; REPO_REF: tag or commit)
#   REMOTE_DIR (biflow_jax), REMOTE_VENV (biflow_venv): relative to the worker's home
#   REMOTE_PYTHON (python3.11: setup.cfg needs >= 3.11 and the Ubuntu 22.04 images ship 3.10;
#   setup apt-installs it when missing)
#   TPU_COORD=metadata (default) gives main the coordinator, process count and id read from
#   the TPU metadata server (as JAX does); TPU_COORD=auto leaves it to main's own detection.
# Any other argument (--config.mesh.fsdp=8, --stop_at=N, ...) goes to biflow_jax.main.
# --dry_run or DRY_RUN=1 prints every command instead of running it.
#
# WORKDIR must be a path that every worker sees, the same on all of them: gs://bucket/run
# (orbax writes checkpoint shards from every host) or a shared filesystem mounted at the same
# path. A worker-local path leaves each host with only its own shards.
set -euo pipefail

usage() { sed -n '2,33p' "$0"; exit "${1:-2}"; }
TPU_NAME=${TPU_NAME:-biflow} ZONE=${ZONE:-} PROJECT=${PROJECT:-} ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-} SPOT=${SPOT:-0} PREEMPTIBLE=${PREEMPTIBLE:-0}
CONFIG=${CONFIG:-} WORKDIR=${WORKDIR:-} BACKGROUND=${BACKGROUND:-0} DRY_RUN=${DRY_RUN:-0}
REPO_URL=${REPO_URL:-} REPO_REF=${REPO_REF:-} REMOTE_DIR=${REMOTE_DIR:-biflow_jax}
REMOTE_VENV=${REMOTE_VENV:-biflow_venv} REMOTE_PYTHON=${REMOTE_PYTHON:-python3.11}
TPU_COORD=${TPU_COORD:-metadata}
CMD="" MAIN_ARGS=()
while (($#)); do
  case $1 in
    -h|--help) usage 0 ;;
    --dry_run) DRY_RUN=1 ;;
    --tpu_name=*) TPU_NAME=${1#*=} ;;          --zone=*) ZONE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;            --accelerator=*) ACCELERATOR=${1#*=} ;;
    --runtime_version=*) RUNTIME_VERSION=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;              --workdir=*) WORKDIR=${1#*=} ;;
    --repo_url=*) REPO_URL=${1#*=} ;;
    --spot) SPOT=1 ;;  --preemptible) PREEMPTIBLE=1 ;;  --background) BACKGROUND=1 ;;
    --) shift; MAIN_ARGS+=("$@"); break ;;
    create|setup|run|stop|delete|all) if [[ -z $CMD ]]; then CMD=$1; else MAIN_ARGS+=("$1"); fi ;;
    *) MAIN_ARGS+=("$1") ;;
  esac
  shift
done
[[ -n $CMD ]] || usage
[[ -n $ZONE ]] || { echo "set ZONE or --zone=..." >&2; exit 2; }
if [[ -z $RUNTIME_VERSION ]]; then
  case $ACCELERATOR in
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;  v5litepod-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;; *) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
  esac
fi
GC=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then GC+=(--project="$PROJECT"); fi

# Prints a command shell-quoted (copy-pasteable) under --dry_run, else runs it.
show() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "+ ${out[*]}"
}
x() { if [[ $DRY_RUN == 1 ]]; then show "$@"; else "$@"; fi; }
on_all() { x gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GC[@]}" --worker=all --command="$1"; }
# Remote prologue: absolute paths on the worker (the ssh session starts in $HOME).
PRE="cd && D=\$(realpath -m $(printf %q "$REMOTE_DIR")) && V=\$(realpath -m $(printf %q "$REMOTE_VENV"))"

create() {
  local args=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GC[@]}"
              --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION")
  if [[ $SPOT == 1 ]]; then args+=(--spot); fi
  if [[ $PREEMPTIBLE == 1 ]]; then args+=(--preemptible); fi
  x "${args[@]}"
}

setup() {
  local py src
  py=$(printf %q "$REMOTE_PYTHON")
  if [[ -n $REPO_URL ]]; then
    src="if [ -d \"\$D/.git\" ]; then git -C \"\$D\" fetch -q; else git clone -q $(printf %q "$REPO_URL") \"\$D\"; fi"
    if [[ -n $REPO_REF ]]; then src+=" && git -C \"\$D\" checkout -q $(printf %q "$REPO_REF")"
    else src+=" && git -C \"\$D\" pull -q --ff-only"; fi
  else  # tracked and untracked-but-not-ignored files of this checkout: no .git, venvs or workdirs
    local root tarball
    root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
    tarball=${TMPDIR:-/tmp}/biflow_src_$$.tar.gz
    if [[ $DRY_RUN == 1 ]]; then
      echo "+ git -C $root ls-files -z --cached --others --exclude-standard | (files that exist) | tar -czf $tarball -C $root --null -T -"
    else
      git -C "$root" ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do if [[ -e $root/$f ]]; then printf '%s\0' "$f"; fi; done |
        tar -czf "$tarball" -C "$root" --null -T -
    fi
    x gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:biflow_src.tar.gz" "${GC[@]}" --worker=all
    x rm -f "$tarball"
    src="mkdir -p \"\$D\" && tar -xzf biflow_src.tar.gz -C \"\$D\" && rm biflow_src.tar.gz"
  fi
  on_all "set -euo pipefail; $PRE
if ! command -v $py >/dev/null || ! $py -c 'import ensurepip' 2>/dev/null; then
  sudo apt-get update -qq && sudo apt-get install -y -qq $py $py-venv; fi
$src
[ -x \"\$V/bin/python\" ] || $py -m venv \"\$V\"
\"\$V/bin/pip\" install -q -U pip && \"\$V/bin/pip\" install -q -e \"\$D\" && \"\$V/bin/pip\" install -q -U 'jax[tpu]'
\"\$V/bin/python\" -c 'import jax; print(\"jax\", jax.__version__)'"
}

run_job() {
  [[ -n $CONFIG && -n $WORKDIR ]] || { echo "run needs --config=... and --workdir=..." >&2; exit 2; }
  if [[ $WORKDIR != gs://* ]]; then
    echo "note: WORKDIR=$WORKDIR must be the same shared filesystem on every worker" >&2
  fi
  local job coord="" launch
  job="\"\$V/bin/python\" -m biflow_jax.main$(printf ' %q' --config="$CONFIG" --workdir="$WORKDIR" ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"})"
  if [[ $TPU_COORD == metadata ]]; then  # the metadata JAX's GCE TPU detection reads
    # shellcheck disable=SC2016  # expands on the worker
    coord='md() { curl -sf -H "Metadata-Flavor: Google" "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }
eps=$(md worker-network-endpoints) || { echo "no TPU metadata: use TPU_COORD=auto" >&2; exit 1; }
id=$(md agent-worker-number); n=$(tr , "\n" <<<"$eps" | grep -c .)
export BIFLOW_PROCESS_ID=$id BIFLOW_NUM_PROCESSES=$n BIFLOW_COORDINATOR=$(cut -d, -f1 <<<"$eps" | cut -d: -f3):8476
'
  fi
  if [[ $BACKGROUND == 1 ]]; then  # a watcher subshell records the job's exit status
    launch="p=\$L/$TPU_NAME.pid st=\$L/$TPU_NAME.status; rm -f \"\$p\" \"\$st\"
(trap '' HUP; $job >>\"\$log\" 2>&1 </dev/null & echo \$! >\"\$p\"; rc=0; wait \$! || rc=\$?
 echo \"\$(hostname): exit status \$rc\" >>\"\$log\"; echo \"\$rc\" >\"\$st.tmp\"; mv \"\$st.tmp\" \"\$st\") </dev/null >/dev/null 2>&1 &
for _ in \$(seq 50); do if [[ -s \$p ]]; then break; fi; sleep 0.1; done
echo \"\$(hostname): pid \$(cat \"\$p\"), log \$log; exit status (when done) in \$st\""
  else  # the status of the job, not of tee (pipefail), ends the ssh command; each worker says it
    launch="rc=0; $job 2>&1 | tee -a \"\$log\" || rc=\$?
echo \"\$(hostname): exit status \$rc; log \$log\"; exit \$rc"
  fi
  on_all "set -euo pipefail; $PRE && L=\$HOME/biflow_logs && mkdir -p \"\$L\" && log=\$L/${TPU_NAME}_\$(hostname).log
${coord}export PYTHONUNBUFFERED=1; cd \"\$D\"
$launch"
}

stop() {
  on_all "p=\$HOME/biflow_logs/$TPU_NAME.pid; pid=\$(cat \"\$p\" 2>/dev/null) || exit 0
if grep -qs biflow_jax.main \"/proc/\$pid/cmdline\" && kill -TERM \"\$pid\"; then echo \"\$(hostname): SIGTERM sent to \$pid\"; fi
rm -f \"\$p\""
}
delete() { x gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GC[@]}" --quiet; }
delete_on_exit() {
  local status=$?
  trap - EXIT; echo "deleting $TPU_NAME (exit status $status)" >&2
  delete || true; exit "$status"
}

case $CMD in
  create) create ;;  setup) setup ;;  run) run_job ;;  stop) stop ;;  delete) delete ;;
  all)
    BACKGROUND=0
    create  # only then the trap: a name that already exists is not deleted
    trap delete_on_exit EXIT
    trap 'exit 130' INT; trap 'exit 143' TERM
    setup; run_job ;;
esac
