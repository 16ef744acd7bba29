"""--mode=eval on data stored class by class (a JPEG folder), the issue's example: 3 class
folders with 40 training and 20 held-out digits each, eval.num_samples=30, batch_size=12,
eval_batches=2. The floor row must score 10/10/10 digits (taking the first 30 stored gave
30/0/0: FD 661, IS 1.00) and held-out bits/dim must cover 8/8/8 (the first 24 gave 20/4/0).
Evaluating again with another classifier in the same workdir recomputes the real statistics.
Against an ADM-suite reference batch, samples are scored and saved in the suite's format.
"""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from biflow_jax.data import input_pipeline as ip
from biflow_jax.evaluation import adm, likelihood, npz_stream, reference as reference_lib
from biflow_jax.modes import evaluate
from biflow_jax.training import train

from test_eval_cache import perturbed_classifier
from test_train import parse_config


def write_digit_folders(root, digits=(0, 1, 2), num_train=40, num_heldout=20):
  """<root>/{train,test}/digit<d>/NNN.jpg: bundled MNIST digits, stored class by class."""
  images, labels = ip.load_bundled_mnist()
  train_idx, heldout_idx = ip.bundled_mnist_split(9000, 1000)
  for split, idx, n in (('train', train_idx, num_train), ('test', heldout_idx, num_heldout)):
    for d in digits:
      folder = root / split / f'digit{d}'
      folder.mkdir(parents=True)
      for i, j in enumerate(idx[labels[idx] == d][:n]):
        Image.fromarray(images[j, ..., 0]).save(folder / f'{i:03d}.jpg', quality=95)
  return root


def jpeg_config(path, *overrides):
  # MNIST digits as JPEG files: data.name makes evaluation use the shipped MNIST classifier.
  return parse_config('--config.data.source=jpeg', f'--config.data.path={path}',
                      '--config.data.name=mnist', '--config.model.num_classes=3', '--config.batch_size=12',
                      '--config.eval_batches=2', '--config.schedule.forward_steps=2',
                      '--config.eval.num_samples=30', '--config.eval.batch=30',
                      '--config.eval.decoders=exact', '--config.eval.is_splits=1',
                      '--config.sample.num=6', *overrides)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('protocol')
  config = jpeg_config(write_digit_folders(root / 'digits'))
  workdir = root / 'run'
  train.train_and_evaluate(config, workdir)
  return config, workdir, evaluate.run(config, workdir)


def test_floor_row_is_class_balanced(run):
  config, _, result = run
  floor = result['protocol']['floor']
  assert floor['class_counts'] == [10, 10, 10]  # the first 30 stored were 30/0/0
  assert (floor['method'], floor['num_examples'], floor['of']) == ('class_balanced', 30, 120)
  # Scored by the project's classifier, 10 real digits of each class look like 3 classes:
  # IS near 3 (the 30/0/0 floor scored 1.00) and a small Frechet distance (it scored 661).
  row = result['real_train_images']
  assert row['inception_score'] == pytest.approx(3.0, abs=0.1)
  assert row['class_accuracy'] == 1.0 and row['frechet_distance'] < 150
  # The reference is the whole held-out split; the samples ask for each class in turn.
  assert result['protocol']['reference']['subset']['class_counts'] == [20, 20, 20]
  assert 'class i mod 3' in result['protocol']['samples']['labels']
  assert json.loads((run[1] / 'eval.json').read_text())['protocol'] == result['protocol']


def test_heldout_bits_per_dim_covers_the_classes_evenly(run):
  config, _, result = run
  record = result['protocol']['heldout_likelihood']
  assert record['class_counts'] == [8, 8, 8]  # the first 24 stored were 20/4/0
  assert (record['num_examples'], record['batches']) == (24, 2)
  # Training's periodic held-out bits/dim loads its examples the same way.
  heldout = ip.load_heldout(config, config.eval_batches * config.batch_size)
  used = likelihood.examples_used(len(heldout['label']), config)
  assert np.bincount(heldout['label'][:used]).tolist() == [8, 8, 8]
  assert np.isfinite(result['heldout_bits_per_dim_ema'])


def test_another_classifier_in_the_same_workdir_recomputes(run, tmp_path):
  config, workdir, first = run
  assert first['protocol']['cache']['recomputed']
  other = jpeg_config(config.data.path,
                      f'--config.eval.classifier_path={perturbed_classifier(tmp_path)}')
  second = evaluate.run(other, workdir)
  cache = second['protocol']['cache']
  assert cache['recomputed'] and 'feature_net.weights_sha256' in cache['reason']
  assert cache['key'] != first['protocol']['cache']['key']
  # The floor against the new net's own statistics: its features are 3x the first net's,
  # so its Frechet distance is 9x (against the stale statistics it would be huge).
  assert second['real_train_images']['frechet_distance'] == pytest.approx(
      9 * first['real_train_images']['frechet_distance'], rel=1e-3)


# ------------------------------------------------- against an ADM-suite reference batch


def stand_in_suite_net():
  """A cheap stand-in for the FID Inception with the suite's three outputs (narrow widths,
  fixed random projections of the pixels); the real network is tested in test_inception."""
  rng = np.random.default_rng(0)
  dims = {'pool': 16, 'spatial': 8, 'logits_unbiased': 10}
  weights = {k: rng.normal(size=(28 * 28, d)).astype(np.float32) / 28 for k, d in dims.items()}

  def fn(images):
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 3)  # quantised RGB
    x = images.astype(np.float32).mean(-1).reshape(len(images), -1) / 255
    return {k: np.maximum(x @ w, 0) if k != 'logits_unbiased' else x @ w
            for k, w in weights.items()}

  return adm.SuiteNet(fn, {'net': 'stand-in'}, dims)


@pytest.mark.slow  # Inception-V3 features of a reference batch (~35 s)
def test_fid_against_an_adm_reference_batch(run, tmp_path, monkeypatch, caplog):
  config, workdir, _ = run
  monkeypatch.setattr(adm, 'make_suite_net', lambda weights, batch: stand_in_suite_net())
  heldout = ip.load_heldout(config)
  np.savez(tmp_path / 'ref.npz', np.repeat(heldout['image'], 3, axis=-1))  # arr_0, 60 digits
  suite = jpeg_config(config.data.path, f'--config.eval.reference={tmp_path / "ref.npz"}',
                      '--config.eval.num_samples=12', '--config.eval.batch=5',
                      '--config.eval.save_samples=True')
  with caplog.at_level(logging.INFO):
    result = evaluate.run(suite, workdir)
  assert 'eval exact: 12/12 (100%)' in caplog.text and 'ETA' in caplog.text
  keys = {'fid', 'sfid', 'inception_score', 'precision', 'recall', 'num_samples'}
  entry, floor = result['decoders']['exact'], result['real_train_images']
  assert keys <= set(entry) and keys <= set(floor) and entry['num_samples'] == 12
  assert floor['fid'] < entry['fid']  # 12 real digits beat a 2-step model's samples
  assert result['protocol']['reference']['num_images'] == 60
  assert result['protocol']['floor']['class_counts'] == [4, 4, 4]
  assert result['protocol']['cache']['recomputed']
  # The samples, in the suite's format, score exactly what eval.json says.
  with np.load(entry['samples_npz']) as saved:
    assert saved['arr_0'].shape == (12, 28, 28, 3) and saved['arr_0'].dtype == np.uint8
    assert saved['arr_1'].tolist() == [0, 1, 2] * 4
  net = stand_in_suite_net()
  ref, _ = reference_lib.reference_stats(
      reference_lib.open_reference(tmp_path / 'ref.npz', 28), net, workdir / 'eval_cache', 7)
  acc = adm.SuiteAccumulator(net.dims)
  for rows in npz_stream.iter_rows(entry['samples_npz'], 'arr_0', 5):
    acc.update(net.fn(rows))
  assert adm.suite_scores(acc, ref)['fid'] == pytest.approx(entry['fid'], rel=1e-9)
  again = evaluate.run(suite, workdir)
  assert not again['protocol']['cache']['recomputed']
  assert again['decoders']['exact']['fid'] == entry['fid']


def test_a_bad_reference_fails_before_sampling(run, tmp_path, monkeypatch):
  config, workdir, _ = run
  monkeypatch.setattr(adm, 'make_suite_net', lambda weights, batch: stand_in_suite_net())

  def no_restore(*args, **kwargs):
    raise AssertionError('the reference must be checked before the model is restored')

  monkeypatch.setattr(evaluate.restore, 'restore_run', no_restore)
  np.savez(tmp_path / 'ref256.npz', np.zeros((8, 256, 256, 3), np.uint8))
  bad = jpeg_config(config.data.path, f'--config.eval.reference={tmp_path / "ref256.npz"}')
  with pytest.raises(ValueError, match=r'ref256.npz.*256x256 but the model makes 28x28'):
    evaluate.run(bad, workdir)
