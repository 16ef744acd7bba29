"""Child: `python -m biflow_jax.main` that SIGKILLs itself halfway through writing a file.

The first file opened for writing whose name contains $KILL_WRITING gets half of its
first write, flushed to disk, and then the process kills itself: a crash at the worst
moment for a writer. Any other file is written normally. Argv is main's.
"""
import builtins
import io
import os
import signal

TARGET = os.environ['KILL_WRITING']
_open = io.open


class _DiesMidWrite:
  """Wraps an open file: the first write() writes half, then SIGKILL."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    self._f.write(data[:max(1, len(data) // 2)])
    self._f.flush()
    os.fsync(self._f.fileno())
    print(f'die_mid_write: killing myself while writing {self._f.name}', flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()


def _open_that_dies(file, mode='r', *args, **kwargs):
  f = _open(file, mode, *args, **kwargs)
  if (any(c in mode for c in 'wax') and not isinstance(file, int)
      and TARGET in os.path.basename(os.fspath(file))):
    return _DiesMidWrite(f)
  return f


io.open = builtins.open = _open_that_dies

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position

from biflow_jax import main
from biflow_jax.runtime import cli

if __name__ == '__main__':
  app.run(main.main, flags_parser=cli.parse_flags)
