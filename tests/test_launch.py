"""Exit status of the launchers and entry points: a failed run exits non-zero, says which
process failed and where its log is, and children run the interpreter they were given.

The launcher tests use a stand-in interpreter (a shell script) and stand-ins for srun and
gcloud, so they take a second or two; the entry-point tests run the real commands on a
failing input, which fail within seconds.
"""
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from subprocess_util import NONZERO, broken_python_on_path, launch, python
from test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = str(ROOT / 'configs' / 'imagenet256.py')

# Acts as process --process_id=I (or SLURM_PROCID): prints its arguments, exits
# FAKE_STATUS_I (default 0) after FAKE_DELAY_I seconds; FAKE_HANG_I=1: sleeps, ignoring
# SIGTERM. `-c CODE` (the launcher picking a port, the import check) runs the real one.
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ $1 == -c ]]; then exec {real} "$@"; fi
id=${{SLURM_PROCID:-0}}
for a in "$@"; do case $a in --process_id=*) id=${{a#*=}} ;; esac; done
echo "fake python: process $id: $*"
status=FAKE_STATUS_$id delay=FAKE_DELAY_$id hang=FAKE_HANG_$id
if [[ ${{!hang:-0}} == 1 ]]; then trap '' TERM; exec sleep 60; fi
sleep "${{!delay:-0}}"
if [[ ${{!status:-0}} != 0 ]]; then echo "fake python: process $id fails" >&2; fi
exit "${{!status:-0}}"
"""

# srun's part: runs the tasks here (SLURM_PROCID/LOCALID set, output to --output with %t),
# reports each failed task the way srun does and exits with the highest status.
FAKE_SRUN = """#!/usr/bin/env bash
out=/dev/stdout n=${FAKE_NTASKS:-2}
while [[ $1 == --* ]]; do
  case $1 in --output=*) out=${1#*=} ;; --ntasks=*) n=${1#*=} ;; esac; shift
done
pids=()
for ((t = 0; t < n; t++)); do
  SLURM_PROCID=$t SLURM_LOCALID=$t "$@" >>"${out//%t/$t}" 2>&1 &
  pids+=($!)
done
max=0
for ((t = 0; t < n; t++)); do
  rc=0; wait "${pids[t]}" || rc=$?
  if ((rc)); then echo "srun: error: localhost: task $t: Exited with exit code $rc" >&2; fi
  if ((rc > max)); then max=$rc; fi
done
exit $max
"""

# gcloud's part for `tpu-vm ssh --command=CMD`: runs CMD here, as one worker whose home is
# FAKE_HOME; any other gcloud command just succeeds.
FAKE_GCLOUD = """#!/usr/bin/env bash
cmd=""
for a in "$@"; do case $a in --command=*) cmd=${a#--command=} ;; esac; done
if [[ -z $cmd ]]; then exit 0; fi
HOME=$FAKE_HOME exec bash -c "$cmd"
"""


def _script(path: Path, text: str) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)
  return path


@pytest.fixture
def fake_python(tmp_path):
  return _script(tmp_path / 'fake' / 'python-fake', FAKE_PYTHON.format(real=sys.executable))


# --------------------------------------------------------------- local_multiprocess.sh


def test_local_launcher_returns_the_failing_status_and_names_the_process(tmp_path, fake_python):
  """Process 1 exits 3 while process 0 hangs (ignoring SIGTERM): the launcher stops it,
  exits 3 and names process 1 and its log. `python` on PATH is broken: PYTHON alone runs."""
  workdir = tmp_path / 'run'
  env = {**broken_python_on_path(tmp_path / 'bin'), 'PYTHON': str(fake_python),
         'FAKE_STATUS_1': '3', 'FAKE_DELAY_1': '0.5', 'FAKE_HANG_0': '1', 'KILL_AFTER': '1'}
  start = time.monotonic()
  proc = launch('local_multiprocess.sh', 2, 1, f'--config={TINY}', f'--workdir={workdir}',
                env=env, expect=3, timeout=60)
  assert time.monotonic() - start < 30  # did not wait for the hung process's sleep
  log = workdir / 'logs' / 'process_1.log'
  assert f'process 1 failed (exit 3); full log: {log}' in proc.stderr
  assert 'fake python: process 1 fails' in proc.stderr  # the log's tail
  assert f'exit status per process: 0:{128 + signal.SIGKILL} 1:3' in proc.stderr
  assert '--process_id=1' in log.read_text() and '-m biflow_jax.main' in log.read_text()
  assert 'on PATH' not in proc.stdout + proc.stderr


def test_local_launcher_exits_0_only_when_every_process_does(tmp_path, fake_python):
  workdir = tmp_path / 'run'
  env = {**broken_python_on_path(tmp_path / 'bin'), 'PYTHON': str(fake_python)}
  proc = launch('local_multiprocess.sh', 3, 2, f'--config={TINY}', f'--workdir={workdir}',
                env=env, timeout=60)
  assert 'all 3 process(es) exited 0' in proc.stdout
  for i in range(3):
    assert f'--process_id={i} --cpu_collectives=gloo' in (
        workdir / 'logs' / f'process_{i}.log').read_text()
  # process 0 exits 3 first, process 1 (later, exit 5) is not reported as the cause
  env.update(FAKE_STATUS_0='3', FAKE_STATUS_1='5', FAKE_DELAY_1='1')
  proc = launch('local_multiprocess.sh', 2, 1, f'--config={TINY}', f'--workdir={workdir}',
                env=env, expect=3, timeout=60)
  assert 'process 0 failed (exit 3)' in proc.stderr


def test_local_launcher_fails_when_the_interpreter_does(tmp_path):
  """The issue's case: PYTHON unset and the `python` on PATH cannot run the project."""
  env = broken_python_on_path(tmp_path / 'bin')
  env['PYTHON'] = 'python'
  proc = launch('local_multiprocess.sh', 2, 1, f'--config={TINY}', f'--workdir={tmp_path}',
                env=env, expect=127, timeout=60)
  assert 'could not pick a free port (exit 127)' in proc.stderr
  env.update(PYTHON='/nonexistent/bin/python')
  proc = launch('local_multiprocess.sh', 2, 1, f'--config={TINY}', f'--workdir={tmp_path}',
                env=env, expect=127, timeout=60)
  assert 'no such interpreter' in proc.stderr
  env.update(PYTHON='python', PORT='12345')  # the processes themselves die
  proc = launch('local_multiprocess.sh', 2, 1, f'--config={TINY}', f'--workdir={tmp_path}',
                env=env, expect=127, timeout=60)
  assert 'failed (exit 127)' in proc.stderr and 'was used, not PYTHON' in proc.stderr


def test_local_launcher_real_processes_fail_with_their_error(tmp_path):
  """2 real processes of the main job (eval, multi-process path) with no checkpoint."""
  workdir = tmp_path / 'run'
  proc = launch('local_multiprocess.sh', 2, 1, f'--config={TINY}', f'--workdir={workdir}',
                '--mode=eval', env=broken_python_on_path(tmp_path / 'bin'), expect=1,
                timeout=240, logs=[workdir / 'logs' / 'process_*.log'])
  assert 'failed (exit 1); full log:' in proc.stderr
  assert 'no checkpoint' in proc.stderr  # the failing process's log tail names the cause


# ---------------------------------------------------------------------------- gpu_slurm.sh


def _slurm_env(tmp_path, python_path):
  bin_dir = tmp_path / 'slurm_bin'
  _script(bin_dir / 'srun', FAKE_SRUN)
  for name in ('scancel', 'scontrol'):
    _script(bin_dir / name, '#!/bin/sh\nexit 0\n')
  env = broken_python_on_path(tmp_path / 'bin')
  env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
  return {**env, 'PYTHON': str(python_path), 'SLURM_JOB_ID': '7', 'SLURM_SUBMIT_DIR': str(ROOT),
          'SLURM_JOB_NUM_NODES': '1', 'SLURM_NTASKS_PER_NODE': '2', 'MODE': 'per_gpu',
          'CUDA_VISIBLE_DEVICES': ''}


def test_slurm_job_exits_with_the_tasks_status(tmp_path, fake_python):
  workdir = tmp_path / 'run'
  env = _slurm_env(tmp_path, fake_python)
  proc = launch('gpu_slurm.sh', TINY, workdir, '--stop_at=1', env=env, timeout=120)
  assert 'processes exited with status 0' in proc.stdout
  assert '--local_device_ids=1' in (workdir / 'logs' / 'process_1.log').read_text()
  proc = launch('gpu_slurm.sh', TINY, workdir, env={**env, 'FAKE_STATUS_1': '3'}, expect=3,
                timeout=120)
  assert 'task 1: Exited with exit code 3' in proc.stderr
  assert 'srun exited with status 3' in proc.stderr and str(workdir / 'logs') in proc.stderr


def test_slurm_job_checks_its_interpreter_before_starting_tasks(tmp_path):
  broken = _script(tmp_path / 'nopy' / 'python',
                   '#!/bin/sh\necho "No module named biflow_jax" >&2\nexit 1\n')
  env = _slurm_env(tmp_path, broken)
  proc = launch('gpu_slurm.sh', TINY, tmp_path / 'run', env=env, expect=1, timeout=60)
  assert 'cannot import biflow_jax (exit 1)' in proc.stderr
  assert not list((tmp_path / 'run' / 'logs').glob('process_*'))  # srun never ran


# ------------------------------------------------------------------------------ tpu_pod.sh


def _tpu_env(tmp_path, fake_python):
  home = tmp_path / 'home'
  (home / 'biflow_jax').mkdir(parents=True)
  (home / 'biflow_venv' / 'bin').mkdir(parents=True)
  (home / 'biflow_venv' / 'bin' / 'python').symlink_to(fake_python)
  bin_dir = tmp_path / 'gcloud_bin'
  _script(bin_dir / 'gcloud', FAKE_GCLOUD)
  return home, {'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', 'FAKE_HOME': str(home),
                'ZONE': 'zone-a', 'TPU_COORD': 'auto', 'TPU_NAME': 'tpu'}


def test_tpu_run_exits_with_the_workers_status(tmp_path, fake_python):
  home, env = _tpu_env(tmp_path, fake_python)
  args = [f'--config={TINY}', '--workdir=gs://bucket/run', 'run']
  proc = launch('tpu_pod.sh', *args, env=env, timeout=60)
  assert 'exit status 0' in proc.stdout
  proc = launch('tpu_pod.sh', *args, env={**env, 'FAKE_STATUS_0': '3'}, expect=3, timeout=60)
  assert 'fake python: process 0 fails' in proc.stdout and 'exit status 3; log' in proc.stdout
  # --background returns at once; the job's status lands in the status file and the log
  proc = launch('tpu_pod.sh', '--background', *args,
                env={**env, 'FAKE_STATUS_0': '4', 'FAKE_DELAY_0': '1'}, timeout=60)
  logs = home / 'biflow_logs'
  assert 'exit status (when done) in' in proc.stdout
  assert (logs / 'tpu.pid').read_text().strip().isdigit()
  deadline = time.monotonic() + 30
  while not (logs / 'tpu.status').exists() and time.monotonic() < deadline:
    time.sleep(0.2)
  assert (logs / 'tpu.status').read_text().strip() == '4'
  assert 'exit status 4' in next(logs.glob('tpu_*.log')).read_text()


# ----------------------------------------------------------------------------- entry points


MAIN = ['-m', 'biflow_jax.main', f'--config={TINY}']


@pytest.mark.parametrize('args, status, text', [
    (['--config.batch_size=-1'], 1, 'config.batch_size=-1 must be positive'),
    (['--config.data.source=jpeg', '--config.data.path=/nonexistent'], 1,
     "jpeg data path '/nonexistent' (config.data.path) does not exist"),
    (['--mode=eval'], 1, 'no checkpoint'),
    (['--mode=sample'], 1, 'no checkpoint'),
    (['--config.model.nope=1'], 2, 'names a field the config does not have'),
    (['--mode=nope'], 2, 'FATAL'),
], ids=['bad_config', 'missing_data', 'eval_no_checkpoint', 'sample_no_checkpoint',
        'unknown_field', 'bad_flag'])
def test_main_exit_status_on_failure(tmp_path, args, status, text):
  proc = python(*MAIN, f'--workdir={tmp_path / "run"}', *args, expect=status, timeout=120)
  assert text in proc.stderr


CACHE = ['-m', 'biflow_jax.tools.cache_latents', f'--config={IMAGENET}']


@pytest.mark.parametrize('args, text', [
    (['--config.data.data_dir=/nonexistent', '--process_index=0', '--process_count=1'],
     "'imagenet2012' (split 'train') is not prepared under data_dir /nonexistent"),
    # one host of a multi-host run, as every host runs it
    (['--config.data.data_dir=/nonexistent', '--process_index=1', '--process_count=2'],
     'is not prepared under data_dir /nonexistent'),
    (['--process_index=2', '--process_count=2'], '--process_index=2 is not in [0, '),
    (['--batch=3', '--process_index=0', '--process_count=1'], '--batch=3 must be even'),
], ids=['missing_data', 'missing_data_host_1_of_2', 'bad_process_index', 'odd_batch'])
def test_cache_latents_exit_status_on_failure(tmp_path, args, text):
  proc = python(*CACHE, f'--out={tmp_path / "cache"}', *args, expect=1, timeout=120,
                env={'JAX_PLATFORMS': 'cpu'})
  assert text in proc.stderr
  assert not list((tmp_path / 'cache').glob('*/latents-*'))


def test_tools_exit_status_on_failure(tmp_path):
  proc = python('-m', 'biflow_jax.tools.step_cost', f'--config={TINY}',
                '--config.batch_size=-1', expect=NONZERO, timeout=120)
  assert 'config.batch_size=-1 must be positive' in proc.stderr
  proc = python('-m', 'biflow_jax.tools.train_classifier', '--steps=abc',
                f'--out={tmp_path / "clf"}', expect=2, timeout=120)
  assert "invalid int value: 'abc'" in proc.stderr
  # mesh_overhead runs each layout in a child: the child's failure fails the tool
  python('-m', 'biflow_jax.tools.mesh_overhead', f'--config={TINY}', '--config.batch_size=-1',
         '--devices=2', '--steps=1', expect=NONZERO, timeout=120)


def test_mesh_overhead_shows_its_childs_error():
  proc = python('-m', 'biflow_jax.tools.mesh_overhead', f'--config={TINY}',
                '--config.batch_size=-1', '--devices=2', '--steps=1', expect=NONZERO,
                timeout=120)
  assert 'config.batch_size=-1 must be positive' in proc.stderr
