"""The workdir as a fault source: a second job on it, a read-only one, a disk that fills up.

The read-only and full-disk cases mount a tmpfs inside a private user and mount namespace
(`unshare -r -m`), so they need no privileges and touch nothing outside the test; where
the kernel forbids such namespaces they are skipped, saying why.
"""
import shlex
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from biflow_jax.training import restore, train, workdir_lock
from subprocess_util import Child, run
from test_train import TINY, parse_config

QUICK = ('--config.schedule.forward_steps=10', '--config.checkpoint_every=5',
         '--config.log_every=1', '--config.sample_every=1000', '--config.eval_every=1000')


def _holder(workdir):
  """A process that takes the workdir lock, says so and sleeps until killed."""
  code = ('import sys, time\nfrom biflow_jax.training import workdir_lock\n'
          'with workdir_lock.hold(sys.argv[1]):\n  print("held", flush=True)\n  time.sleep(600)\n')
  return Child([sys.executable, '-c', code, str(workdir)])


def test_second_job_on_a_live_workdir_refuses_and_names_it(tmp_path):
  config = parse_config(*QUICK, '--config.schedule.forward_steps=2')
  with _holder(tmp_path) as other:
    other.wait_for(lambda line: 'held' in line, timeout=60, what='the lock')
    holder = workdir_lock.read_holder(tmp_path)
    with pytest.raises(workdir_lock.WorkdirBusyError) as error:
      train.train_and_evaluate(config, tmp_path)
    message = str(error.value)
    assert f'pid {other.proc.pid} on host {holder["host"]}' in message, message
    assert f'started {holder["started"]}' in message and str(tmp_path) in message
    assert not (tmp_path / 'checkpoints').exists()  # refused before anything was written
    other.send_signal(signal.SIGKILL)
    other.finish(expect=-signal.SIGKILL)
  # The dead job's record is still in the file, but its lock died with it.
  assert workdir_lock.read_holder(tmp_path)['pid'] == other.proc.pid
  state = train.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 2
  assert workdir_lock.read_holder(tmp_path) is None  # released at the end


def test_lock_is_exclusive_within_one_process_and_released_on_exit(tmp_path):
  with workdir_lock.hold(tmp_path) as me:
    assert workdir_lock.read_holder(tmp_path)['pid'] == me['pid']
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {me['pid']}"):
      with workdir_lock.hold(tmp_path):
        pass
  with workdir_lock.hold(tmp_path):
    pass


def test_object_store_workdir_takes_no_lock(caplog):
  with workdir_lock.hold('gs://bucket/run') as holder:
    assert holder is None
  assert 'no workdir lock' in caplog.text


# ------------------------------------------------------------- read-only, full disk


def _namespaces_available() -> bool:
  if shutil.which('unshare') is None:
    return False
  return subprocess.run(['unshare', '-r', '-m', 'true'], capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_available(),
    reason='needs unprivileged user + mount namespaces (unshare -r -m) to mount a tmpfs')


def _main(workdir, *flags) -> str:
  return shlex.join([sys.executable, '-m', 'biflow_jax.main', f'--config={TINY}',
                     f'--workdir={workdir}', *QUICK, *flags])


def _in_namespace(script: str, timeout: float) -> subprocess.CompletedProcess:
  return run(['unshare', '-r', '-m', 'bash', '-c', 'set -u\n' + script], expect=None,
             timeout=timeout)


@needs_namespaces
def test_read_only_workdir_fails_before_training_naming_the_path(tmp_path):
  mnt = tmp_path / 'mnt'
  mnt.mkdir()
  script = f"""
mount -t tmpfs -o size=1m tmpfs {mnt} && mkdir {mnt}/run && mount -o remount,ro {mnt} || exit 90
{_main(mnt / 'run')}; echo "status existing=$?"
{_main(mnt / 'new' / 'run')}; echo "status new=$?"
"""
  proc = _in_namespace(script, timeout=240)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 90, out
  assert 'status existing=1' in out and 'status new=1' in out, out
  for path in (mnt / 'run', mnt / 'new' / 'run'):
    assert f'the workdir {path} is not writable (Read-only file system)' in out, out
  assert 'loss=' not in out


@pytest.mark.slow  # 3 training runs: ~2 min on 2 busy cores
@needs_namespaces
def test_full_disk_during_a_save_stops_cleanly_and_the_restart_is_exact(tmp_path):
  """A tmpfs with room for the first checkpoint (step 5) but not the second (step 10)."""
  mnt, out_dir = tmp_path / 'mnt', tmp_path / 'out'
  mnt.mkdir()
  out_dir.mkdir()
  workdir = mnt / 'run'
  script = f"""
mount -t tmpfs -o size=1400k tmpfs {mnt} || exit 90
{_main(workdir)}; echo "status full=$?"
ls {workdir}/checkpoints; cp -a {workdir} {out_dir}/after_failure
mount -o remount,size=64m {mnt} || exit 91
{_main(workdir)}; echo "status resumed=$?"
cp -a {workdir} {out_dir}/resumed
"""
  proc = _in_namespace(script, timeout=400)
  out = proc.stdout + proc.stderr
  assert proc.returncode not in (90, 91), out
  assert 'status full=1' in out and 'status resumed=0' in out, out
  assert 'CheckpointSaveError: writing a checkpoint in' in out, out
  assert 'No space left on device' in out
  assert 'The newest complete checkpoint is step 5, untouched' in out
  config = parse_config(*QUICK)
  _, at_failure, step = restore.restore_run(config, out_dir / 'after_failure')
  assert step == 5 and int(at_failure.step) == 5
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  _, resumed, step = restore.restore_run(config, out_dir / 'resumed')
  assert step == 10
  for name in ('params', 'ema', 'opt_state'):
    for a, b in zip(jax.tree.leaves(getattr(straight, name)),
                    jax.tree.leaves(getattr(resumed, name))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
