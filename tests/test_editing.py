"""--mode=edit: inpainting (named and PNG masks), interpolation (images, noise), class swap."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biflow_jax.data import input_pipeline
from biflow_jax.inference import decoders, sampling
from biflow_jax.modes import edit
from biflow_jax.training import train
from subprocess_util import python
from tiny_run import flags_of, two_stage_config

TINY = Path(__file__).resolve().parents[1] / 'configs' / 'tiny.py'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('edit') / 'run'
  config = two_stage_config(forward_steps=20, reverse_steps=10)
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_masks():
  assert edit.region_mask('left', 4).tolist() == [[1, 1, 0, 0]] * 4
  assert edit.region_mask('bottom', 4)[:, 0].tolist() == [0, 0, 1, 1]
  assert edit.region_mask('centre', 8).sum() == 16
  with pytest.raises(ValueError, match="mask='diagonal' is neither"):
    edit.region_mask('diagonal', 8)


def test_inpaint_keeps_nothing_of_the_region_and_writes_grid(run, tmp_path):
  config, workdir = run
  mask = np.zeros((56, 56), np.uint8)
  mask[:, 28:] = 255  # right half, at another size
  Image.fromarray(mask).save(tmp_path / 'm.png')
  config.edit.update(task='inpaint', mask=str(tmp_path / 'm.png'), num=4)
  path = edit.run(config, workdir)
  saved = np.load(workdir / 'edit' / 'inpaint.npz')
  assert saved['images'].shape == (4, 3, 28, 28, 1) and path.exists()
  np.testing.assert_array_equal(saved['mask'], edit.region_mask('right', 28))
  heldout = input_pipeline.load_heldout(config, 4)['image'][:4]
  np.testing.assert_array_equal(saved['images'][:, 2], heldout)          # the originals
  assert (saved['images'][:, 0, :, 14:] == 128).all()                    # region greyed


@pytest.mark.parametrize('between', ['images', 'noise'])
def test_interpolate(run, between):
  config, workdir = run
  config.edit.update(task='interpolate', between=between, num=4, steps=5)
  edit.run(config, workdir)
  frames = np.load(workdir / 'edit' / 'interpolate.npz')['images']
  assert frames.shape == ((2 if between == 'images' else 4), 5, 28, 28, 1)
  assert not np.array_equal(frames[:, 0], frames[:, -1])


def test_class_swap_from_the_command_line(run):
  config, workdir = run
  proc = python('-m', 'biflow_jax.main', f'--config={TINY}', f'--workdir={workdir}',
                '--mode=edit', *flags_of(config), '--config.edit.task=class_swap',
                '--config.edit.num=3', timeout=300)
  assert 'edit class_swap at step 30: 3 rows x 11 columns' in proc.stderr
  saved = np.load(workdir / 'edit' / 'class_swap.npz')
  assert saved['images'].shape == (3, 11, 28, 28, 1) and saved['labels'].shape == (3,)


def test_bad_task_fails_before_restoring(tmp_path):
  config = two_stage_config()
  config.edit.task = 'colourise'
  with pytest.raises(ValueError, match="edit.task='colourise'"):
    edit.run(config, tmp_path / 'none')


def test_labels_outside_the_classes_fail_before_restoring(tmp_path):
  """edit.label and an .npz's labels reach G's class embedding inside jitted code (label
  10 is G's null row, 11 reads NaN): both are checked first (issue 32, item 1)."""
  config = two_stage_config()
  config.edit.update(task='interpolate', between='noise', label=10)
  with pytest.raises(ValueError, match=r'config.edit.label=10: label 10 .*\[0, 10\)'):
    edit.run(config, tmp_path / 'none')
  labels = np.array([1, 2, 12, 3])
  np.savez(tmp_path / 'four.npz', images=np.zeros((4, 28, 28, 1), np.uint8), labels=labels)
  config.edit.update(task='class_swap', label=-1, input=str(tmp_path / 'four.npz'))
  with pytest.raises(ValueError, match=r'four.npz:labels: label 12 \(index 2'):
    edit.run(config, tmp_path / 'none')
  assert not (tmp_path / 'none').exists()


def test_noise_interpolation_draws_at_the_temperature_g_samples_with(run, monkeypatch):
  """Issue 32, item 3: the endpoints were drawn at F's sample.temperature (0.85 in
  configs/mnist.py) while G samples, evaluates and exports at reverse_temperature (1.15)."""
  config, workdir = run
  config = copy.deepcopy(config)
  config.sample.update(temperature=0.85, reverse_temperature=1.15)
  config.edit.update(task='interpolate', between='noise', num=2, steps=3, input='')
  drawn = []
  original = sampling.sample_noise

  def recording(config, rng, num, temperature=1.0):
    z = original(config, rng, num, temperature)
    drawn.append((temperature, float(np.std(np.asarray(z)))))
    return z

  monkeypatch.setattr(sampling, 'sample_noise', recording)
  edit.run(config, workdir)
  (temperature, std), = drawn
  assert temperature == decoders.reverse_temperature(config) == 1.15
  assert abs(std - 1.15) < 0.05, std


@pytest.mark.slow  # three main-job subprocesses (~60 s)
def test_modes_use_the_runs_config_without_its_training_flags(run):
  """Issue 32, item 6: a run trained with --config.reverse.enabled=True
  --config.schedule.plan=two_stage ... could not be sampled or edited with the quick
  start's commands (configs/tiny.py alone): 'written by a different model' and 'this run
  has none (config.reverse.enabled=False)'. The modes now read DIR/config.json."""
  _, workdir = run
  proc = python('-m', 'biflow_jax.main', f'--config={TINY}', f'--workdir={workdir}',
                '--mode=edit', '--config.edit.task=class_swap', '--config.edit.num=2',
                timeout=300)
  assert f"config: the run's {workdir / 'config.json'} (how it was trained)" in proc.stderr
  assert 'reverse.enabled (run True, --config False)' in proc.stderr
  assert "the command line's overrides {'edit.task': 'class_swap', 'edit.num': 2}" in (
      proc.stderr)
  assert 'edit class_swap at step 30: 2 rows x 11 columns' in proc.stderr
  proc = python('-m', 'biflow_jax.main', f'--config={TINY}', f'--workdir={workdir}',
                '--mode=sample', '--config.sample.decoder=reverse', '--config.sample.num=10',
                timeout=300)
  assert f'wrote {workdir}/samples/reverse_' in proc.stderr


def test_png_mask_of_another_size_is_resized_with_a_warning_or_refused(tmp_path, caplog):
  """Issue 32, item 11: a wrong-size PNG mask was stretched without a word."""
  top = np.zeros((56, 56), np.uint8)
  top[:28] = 255
  Image.fromarray(top).save(tmp_path / 'square.png')
  with caplog.at_level('WARNING'):
    mask = edit.region_mask(str(tmp_path / 'square.png'), 28)
  np.testing.assert_array_equal(mask, edit.region_mask('top', 28))
  assert f'config.edit.mask={tmp_path / "square.png"} is 56x56 and the images 28x28' in caplog.text
  Image.fromarray(np.full((28, 40), 255, np.uint8)).save(tmp_path / 'wide.png')
  with pytest.raises(ValueError, match=r'wide.png.* is 40x28, not square, and the images are '
                                       r'28x28: draw the mask at 28x28'):
    edit.region_mask(str(tmp_path / 'wide.png'), 28)
  config = two_stage_config()
  config.edit.update(task='inpaint', mask=str(tmp_path / 'wide.png'))
  with pytest.raises(ValueError, match='not square'):
    edit.run(config, tmp_path / 'none')  # before any checkpoint is read
