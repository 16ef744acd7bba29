"""A person's mistakes on the main job's command line: one line on the console naming the
problem and the fix, the traceback in DIR/logs/ (issue 32, item 10)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biflow_jax.runtime import console
from subprocess_util import NONZERO, python

TINY = Path(__file__).resolve().parents[1] / 'configs' / 'tiny.py'
# What XLA's C++ logging prints before Python runs (not this package's, not a message).
_NATIVE = re.compile(r'^(WARNING: All log messages before absl::InitializeLog|[IWEF]0000 00:00:)')


def own_lines(proc) -> list[str]:
  """The console lines the job itself printed (stdout and stderr)."""
  return [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()
          and not _NATIVE.match(l)]


def main_job(*args, cwd=None, expect=NONZERO):
  return python('-m', 'biflow_jax.main', *args, expect=expect, timeout=180,
                **({'cwd': cwd} if cwd else {}))


def test_missing_config_file_is_one_line(tmp_path):
  """Before: 45 lines of config_flags' traceback, raised where the config was first used."""
  proc = main_job('--config=configs/nope.py', f'--workdir={tmp_path / "run"}', expect=2)
  lines = own_lines(proc)
  assert lines == ["FATAL: --config=configs/nope.py could not be loaded: no such file (a path "
                   'relative to this directory, or absolute)'], lines
  assert not (tmp_path / 'run').exists()


def test_config_file_with_an_error_names_its_line(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('def get_config():\n  return 1 / 0\n')
  proc = main_job(f'--config={bad}', f'--workdir={tmp_path / "run"}', expect=2)
  (line,) = own_lines(proc)
  assert line.startswith(f'FATAL: --config={bad} could not be loaded (line 2: return 1 / 0): '
                         'ZeroDivisionError'), line


def test_workdir_that_is_a_file_says_so(tmp_path):
  """Before: 'not writable (File exists) ... remount / fix the permissions of this one'."""
  (tmp_path / 'afile').write_text('x')
  for workdir, what in ((tmp_path / 'afile', 'is a file'),
                        (tmp_path / 'afile' / 'run', f'is under {tmp_path / "afile"}, a file')):
    proc = main_job(f'--config={TINY}', f'--workdir={workdir}', expect=1)
    (line,) = own_lines(proc)
    assert f'the workdir {workdir} {what}, not a directory: point --workdir at a directory' in line
    assert 'remount' not in line and 'permissions' not in line


def test_corrupt_image_and_impossible_value_are_one_line_with_the_traceback_in_the_log(tmp_path):
  """Before: a corrupt JPEG printed 57 lines; only an unknown field was one line."""
  folder = tmp_path / 'mine'
  folder.mkdir()
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / 'good.png')
  (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
  workdir = tmp_path / 'run'
  proc = main_job(f'--config={TINY}', f'--workdir={workdir}', '--mode=likelihood',
                  f'--config.likelihood.input={folder}', expect=1)
  lines = own_lines(proc)
  fatal = [l for l in lines if 'FATAL' in l]
  assert len(fatal) == 1 and not any('Traceback' in l for l in lines), lines
  assert (f'BadImageError: cannot decode image {folder / "broken.jpg"}' in fatal[0]
          and '--config.data.skip_bad_images=True' in fatal[0]), fatal
  assert fatal[0].endswith(f'(traceback in {console.log_file(workdir)})')
  log = console.log_file(workdir).read_text()
  assert 'Traceback (most recent call last)' in log and 'BadImageError' in log

  proc = main_job(f'--config={TINY}', f'--workdir={tmp_path / "run2"}',
                  '--config.model.patch_size=5', expect=1)
  fatal = [l for l in own_lines(proc) if 'FATAL' in l]
  assert len(fatal) == 1 and 'not divisible by config.model.patch_size=5' in fatal[0], fatal
  assert not any('Traceback' in l for l in own_lines(proc))
