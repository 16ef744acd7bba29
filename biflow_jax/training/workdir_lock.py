"""One training job per workdir, and a workdir that can be written, checked before training.

`hold(workdir)` takes an exclusive `flock` on WORKDIR/lock for the life of the job and
writes the holder (host, pid, start time, command line) into it. A second job finds the
lock taken and stops with `WorkdirBusyError` naming the holder. The kernel drops the lock
when its process ends however it ends (SIGKILL, OOM, crash), so a lock file left by a dead
job never blocks a restart: there is no stale lock to clean up by hand.

Where it works: local filesystems, and NFS (Linux maps `flock` onto NFS byte-range locks,
so jobs on different hosts see each other). Object stores (gs://, s3://) have no locks:
there `hold` takes none and logs a warning. Two jobs on one gs:// workdir would both train
into the same checkpoint directory, steps of one number overwriting each other and each
job's keep_checkpoints pruning the other's (reasoned from orbax, not tried). Start one job
per gs:// workdir; a launcher that restarts a preempted job must stop the old one first.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Iterator

from absl import logging

LOCK_NAME = 'lock'


class WorkdirBusyError(RuntimeError):
  """Another live job holds the workdir's lock."""


class WorkdirNotWritableError(OSError):
  """The workdir cannot be created or written (read-only filesystem, permissions)."""


def is_local(workdir: str | os.PathLike[str]) -> bool:
  """False for object-store URLs (gs://, s3://, ...), which have no file locks."""
  return '://' not in str(workdir)


def _not_writable(workdir: str, error: OSError) -> WorkdirNotWritableError:
  return WorkdirNotWritableError(
      error.errno, f'the workdir {workdir} is not writable ({error.strerror or error}): '
      'training writes checkpoints, logs and samples there. Point --workdir at a writable '
      'directory, or remount / fix the permissions of this one.')


def check_writable(workdir: str | os.PathLike[str]) -> None:
  """Creates `workdir` (and parents) if needed and writes and removes a probe file in it.

  Local paths only (object stores report their errors on first write). Raises
  WorkdirNotWritableError naming the path when either fails (read-only filesystem,
  permissions, no space for even a probe), or when the path, or a folder on it, is a
  file: then the message says so (no remount or permission fixes that).
  """
  workdir = str(workdir)
  if not is_local(workdir):
    return
  blocker = _file_in_the_way(workdir)
  if blocker is not None:
    what = 'is a file' if blocker == os.path.abspath(workdir) else f'is under {blocker}, a file'
    raise WorkdirNotWritableError(
        errno.ENOTDIR, f'the workdir {workdir} {what}, not a directory: point --workdir at a '
        'directory (it is created when missing), or move the file away.')
  probe = os.path.join(workdir, f'.write_probe.{socket.gethostname()}.{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('probe')
    os.unlink(probe)
  except OSError as e:
    raise _not_writable(workdir, e) from e


def _file_in_the_way(workdir: str) -> str | None:
  """The absolute path of `workdir` or of its nearest existing ancestor when that is not a
  directory (so the workdir cannot be one); None when nothing is in the way."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return None
    path = parent
  return None if os.path.isdir(path) else path


def read_holder(workdir: str | os.PathLike[str]) -> dict | None:
  """The holder record in WORKDIR/lock (host, pid, started, argv); None if absent or empty.

  The record of a job that died is still there: only the lock itself says it is alive.
  """
  try:
    with open(os.path.join(str(workdir), LOCK_NAME)) as f:
      return json.loads(f.read() or 'null')
  except (OSError, ValueError):
    return None


def _describe(holder: dict | None) -> str:
  if not holder:
    return 'another job (it has not written its host and pid yet)'
  return (f"the job with pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{holder.get('started')} (command: {' '.join(holder.get('argv') or [])})")


@contextlib.contextmanager
def hold(workdir: str | os.PathLike[str]) -> Iterator[dict | None]:
  """Holds WORKDIR/lock while the block runs; yields this job's holder record.

  Raises WorkdirBusyError (before the block runs) while another live process holds it,
  and WorkdirNotWritableError when the lock file cannot be created. On gs:// and other
  object stores it takes no lock (see the module docstring) and yields None.
  """
  workdir = str(workdir)
  if not is_local(workdir):
    logging.warning('%s is not a local filesystem: no workdir lock is taken, so nothing stops '
                    'a second job from training in it at the same time. Run one job per '
                    'workdir.', workdir)
    yield None
    return
  path = os.path.join(workdir, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise _not_writable(workdir, e) from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirBusyError(
          f'the workdir {workdir} is in use by {_describe(read_holder(workdir))}. One training '
          'job per workdir: wait for it to end or stop it (a restart resumes from its last '
          'checkpoint), or use another --workdir.') from None
    holder = {'host': socket.gethostname(), 'pid': os.getpid(),
              'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
              'argv': sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    try:
      yield holder
    finally:
      os.ftruncate(fd, 0)  # a finished job leaves no holder behind
  finally:
    os.close(fd)  # closing the only descriptor releases the flock
