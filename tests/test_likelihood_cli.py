"""--mode=likelihood: bits/dim of user images (folder or .npz) under a run's F."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biflow_jax.data import input_pipeline
from biflow_jax.evaluation import likelihood as heldout_likelihood
from biflow_jax.modes import likelihood
from biflow_jax.training import train
from biflow_jax.training.experiment import build_models
from subprocess_util import python
from tiny_run import flags_of, two_stage_config

TINY = Path(__file__).resolve().parents[1] / 'configs' / 'tiny.py'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('likelihood') / 'run'
  config = two_stage_config()
  state = train.train_and_evaluate(config, workdir)
  return config, state, workdir


def test_npz_scores_equal_the_heldout_metric_and_rank_noise_last(run, tmp_path):
  config, state, workdir = run
  heldout = input_pipeline.load_heldout(config)
  n = config.batch_size
  digits, labels = heldout['image'][:n], heldout['label'][:n]
  np.savez(tmp_path / 'digits.npz', arr_0=digits, arr_1=labels)
  config.likelihood.input = str(tmp_path / 'digits.npz')
  config.likelihood.batch = n
  result = likelihood.run(config, workdir)
  # Same images, labels, noise draw and weights as the held-out metric over one batch.
  config.eval_batches = 1
  flow = build_models(config).flow
  expected = heldout_likelihood.heldout_nll_per_dim(flow, state.ema['forward'], heldout, config)
  got = np.mean([r['nll_per_dim'] for r in result['images']])
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert result['summary']['n'] == n and result['checkpoint_step'] == 60
  rows = list(csv.DictReader((workdir / 'likelihood' / 'digits.csv').open()))
  assert len(rows) == n and rows[0]['name'] == 'digits.npz[0]'
  assert json.loads((workdir / 'likelihood' / 'digits.json').read_text())['summary'] == result[
      'summary']

  noise = np.random.default_rng(0).integers(0, 256, digits.shape, dtype=np.uint8)
  np.savez(tmp_path / 'noise.npz', images=noise)
  config.likelihood.input = str(tmp_path / 'noise.npz')
  noisy = likelihood.run(config, workdir)['summary']
  assert noisy['mean'] > result['summary']['mean'] + 0.05, (noisy, result['summary'])


def test_folder_of_other_sizes_and_modes_scores_as_the_same_digits(run, tmp_path):
  """Digits saved as 56x56 RGB PNGs come back exactly through box-halving and 'L'."""
  config, _, workdir = run
  digits = input_pipeline.load_heldout(config)['image'][:5]
  folder = tmp_path / 'mine'
  folder.mkdir()
  for i, d in enumerate(digits):
    big = np.repeat(np.repeat(d[..., 0], 2, axis=0), 2, axis=1)
    Image.fromarray(big).convert('RGB').save(folder / f'{i}.png')
  np.savez(tmp_path / 'same.npz', arr_0=digits)
  config.likelihood.batch = 8
  config.likelihood.input = str(folder)
  with pytest.raises(ValueError, match=r"0.png.*56x56.*data.resize='centre_crop'"):
    likelihood.run(config, workdir)
  config.data.resize = 'centre_crop'
  from_folder = likelihood.run(config, workdir)
  config.likelihood.input = str(tmp_path / 'same.npz')
  from_npz = likelihood.run(config, workdir)
  assert [r['name'] for r in from_folder['images']] == [f'{i}.png' for i in range(5)]
  np.testing.assert_allclose([r['bits_per_dim'] for r in from_folder['images']],
                             [r['bits_per_dim'] for r in from_npz['images']], rtol=1e-6)


def test_bad_input_fails_before_restoring(tmp_path, run):
  config, _, _ = run
  config.likelihood.input = ''
  with pytest.raises(ValueError, match='needs --config.likelihood.input'):
    likelihood.run(config, tmp_path / 'nothing')
  np.savez(tmp_path / 'wrong.npz', arr_0=np.zeros((2, 32, 32, 3), np.uint8))
  config.likelihood.input = str(tmp_path / 'wrong.npz')
  with pytest.raises(ValueError, match=r'wrong.npz:arr_0 is uint8 \(2, 32, 32, 3\).*\(N, 28, 28, 1\)'):
    likelihood.run(config, tmp_path / 'nothing')
  assert not (tmp_path / 'nothing').exists()


def test_main_entry_point_mode(run, tmp_path):
  config, _, workdir = run
  np.savez(tmp_path / 'few.npz', arr_0=input_pipeline.load_heldout(config)['image'][:3])
  proc = python('-m', 'biflow_jax.main', f'--config={TINY}', f'--workdir={workdir}',
                '--mode=likelihood', *flags_of(config),
                f'--config.likelihood.input={tmp_path / "few.npz"}', timeout=300)
  assert 'few.npz: 3 images, bits/dim mean' in proc.stderr
  assert (workdir / 'likelihood' / 'few.csv').exists()


def test_file_label_outside_the_classes_fails_before_scoring(run, tmp_path):
  """Issue 32, item 1: labels[0] = 10 in an .npz of MNIST digits went into the jitted
  scorer, which read NaN past the class embedding; the run wrote "mean": NaN, exit 0."""
  config, state, workdir = run
  config = copy.deepcopy(config)
  heldout = input_pipeline.load_heldout(config)
  labels = heldout['label'][:8].astype(np.int64)
  labels[0] = 10
  np.savez(tmp_path / 'eight.npz', images=heldout['image'][:8], labels=labels)
  config.likelihood.input = str(tmp_path / 'eight.npz')
  with pytest.raises(ValueError, match=r'eight.npz:labels: label 10 \(index 0; 1 of 8 labels '
                                       r'out of range\).*\[0, 10\)'):
    likelihood.run(config, workdir)
  assert not (workdir / 'likelihood' / 'eight.json').exists()
  # The scorer itself refuses what a caller could hand it directly.
  flow = build_models(config).flow
  with pytest.raises(ValueError, match='label 11'):
    likelihood.score(flow, state.ema['forward'], heldout['image'][:8], np.full(8, 11), 0.1, 8)


def test_non_finite_scores_are_written_as_strict_json_naming_them(run, tmp_path, monkeypatch,
                                                                  caplog):
  """A diverged F scores NaN: the JSON said "mean": NaN, which strict parsers reject."""
  config, _, workdir = run
  config = copy.deepcopy(config)
  np.savez(tmp_path / 'two.npz', images=input_pipeline.load_heldout(config)['image'][:2])
  config.likelihood.update(input=str(tmp_path / 'two.npz'), batch=2)
  monkeypatch.setattr(likelihood, 'score', lambda *a, **k: np.array([np.nan, 1.0]))
  likelihood.run(config, workdir)

  def refuse(constant):
    raise ValueError(f'{constant} is not JSON')

  saved = json.loads((workdir / 'likelihood' / 'two.json').read_text(), parse_constant=refuse)
  assert saved['summary']['mean'] == 'non-finite (nan)'
  assert saved['images'][0]['bits_per_dim'] == 'non-finite (nan)'
  assert np.isfinite(saved['images'][1]['bits_per_dim'])
  assert 'two.json' in caplog.text and 'images[0].bits_per_dim' in caplog.text
