"""What a user sees of a run: the console of the real entry point, the full log file and
TensorBoard (sample grids as images, the config as text), from one tiny training run."""
from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from biflow_jax.runtime import console
from subprocess_util import python

TINY = Path(__file__).resolve().parents[1] / 'configs' / 'tiny.py'
# A line in absl's Python format at INFO: `I1130 06:32:42.521583 140295331580800 file.py:701] ...`
ABSL_PY_INFO = re.compile(r'^I\d{4} [\d:.]+ +\d+ [\w.-]+\.py:\d+\]')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('console') / 'run'
  proc = python('-m', 'biflow_jax.main', f'--config={TINY}', f'--workdir={workdir}',
                timeout=300)
  return workdir, proc


def test_console_has_step_lines_and_no_library_info(run):
  workdir, proc = run
  lines = (proc.stdout + proc.stderr).splitlines()
  library_info = [l for l in lines if ABSL_PY_INFO.match(l)]
  assert not library_info, '\n'.join(library_info[:10])
  assert not [l for l in lines if re.search(r'orbax|etils|grain', l, re.I)]
  steps = [l for l in lines if re.search(r' step (10|20|30)/30 forward \| ', l)]
  assert len(steps) == 3, '\n'.join(lines)
  assert all(' loss ' in l and 'steps/s' in l and 'ETA ' in l for l in steps)
  assert any('held-out' in l and 'heldout/bits_per_dim' in l for l in lines)
  assert any(f'wrote {workdir}/samples/step_30.png' in l for l in lines)
  assert len(lines) < 40, '\n'.join(lines)  # before: about 300 on this config
  # The library lines are not lost: they are in the full log, with the config.
  log = console.log_file(workdir).read_text()
  assert 'checkpoint_manager.py' in log and 'model:' in log and 'patch_size: 7' in log


def test_tensorboard_holds_sample_grid_and_config(run):
  workdir, _ = run
  events = event_accumulator.EventAccumulator(str(workdir), size_guidance={'tensors': 0})
  events.Reload()
  tags = events.Tags()['tensors']
  assert 'samples/exact' in tags and 'config' in tags and 'heldout/bits_per_dim' in tags
  (image,) = events.Tensors('samples/exact')
  assert image.step == 30
  width, height, png = image.tensor_proto.string_val
  grid = np.asarray(Image.open(io.BytesIO(png)))
  # tiny: 20 samples of 28x28, one row per class (10 rows of 2), 2-pixel borders
  assert grid.shape[:2] == (int(height), int(width)) == (10 * 30 + 2, 2 * 30 + 2)
  assert grid.std() > 0  # drawn, not blank
  (config_text,) = events.Tensors('config')
  text = config_text.tensor_proto.string_val[0].decode()
  assert '"patch_size": 7' in text


def test_console_filter_passes_info_of_every_module_of_the_package():
  """The filter once looked at runtime/ alone (console.py's own folder), hiding every INFO
  line of training and the modes (`wrote ...`, `step ...`) from the console."""
  package = Path(console.__file__).resolve().parents[1]

  def record(path, level=logging.INFO):
    return logging.LogRecord('absl', level, str(path), 1, 'message', None, None)

  keep = console.ConsoleFilter()
  for module in ('main.py', 'training/train.py', 'modes/evaluate.py', 'modes/bench.py',
                 'runtime/console.py'):
    assert keep.filter(record(package / module)), module
  assert not keep.filter(record(package.parent / 'site-packages' / 'orbax' / 'x.py'))
  assert keep.filter(record('/elsewhere/orbax/x.py', logging.WARNING))


def test_train_line_format():
  line = console.train_line(20, 30, 'forward', {'loss': 0.99976, 'lr/forward': 6.7e-4,
                                               'skipped': 0.0, 'steps_per_sec': 5.0}, 5.0)
  assert line == 'step 20/30 forward | loss 0.9998  lr/forward 0.00067  skipped 0 | 5 steps/s | ETA 0:00:02'


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
