"""DIR/eval_cache cannot go stale: entries are keyed by a fingerprint of every input
(feature-net weights by content hash, data source, split, example count, geometry), a
changed input recomputes and the log names it, and an unchanged one is reused."""
import hashlib
import json
import logging

import numpy as np
import pytest

from biflow_jax.data import input_pipeline as ip
from biflow_jax.evaluation import cache, classifier, features, fingerprint as fp, metrics
from biflow_jax.modes import evaluate

from test_train import parse_config


# ------------------------------------------------------------------ the cache directory


def test_entries_are_reused_only_for_the_same_fingerprint(tmp_path, caplog):
  calls = []

  def compute(value):
    def run():
      calls.append(value)
      return {'x': np.full(3, value)}, {'note': value}
    return run

  first = {'net': {'sha': 'a'}, 'count': 200}
  arrays, record = cache.load_or_compute(tmp_path, 'real', first, compute(1.0))
  assert record['recomputed'] and calls == [1.0] and 'no cached real entry' in record['reason']
  arrays, record = cache.load_or_compute(tmp_path, 'real', dict(first), compute(2.0))
  assert not record['recomputed'] and calls == [1.0] and arrays['x'].tolist() == [1.0] * 3
  assert record['info'] == {'note': 1.0}
  second = {'net': {'sha': 'b'}, 'count': 1000}
  with caplog.at_level(logging.WARNING):
    arrays, record = cache.load_or_compute(tmp_path, 'real', second, compute(3.0))
  assert record['recomputed'] and arrays['x'].tolist() == [3.0] * 3
  assert "count: 200 -> 1000" in record['reason'] and "net.sha: 'a' -> 'b'" in record['reason']
  assert 'count: 200 -> 1000' in caplog.text  # the log says why it recomputed
  # Both entries stay: switching back reuses the first.
  _, record = cache.load_or_compute(tmp_path, 'real', first, compute(4.0))
  assert not record['recomputed'] and calls == [1.0, 3.0]
  assert len(list(tmp_path.glob('real-*.npz'))) == 2 and not list(tmp_path.glob('.*tmp'))


def test_an_entry_whose_record_disagrees_is_recomputed(tmp_path):
  key = {'count': 5}
  cache.load_or_compute(tmp_path, 'real', key, lambda: ({'x': np.zeros(2)}, {}))
  meta = next(tmp_path.glob('real-*.json'))
  text = json.loads(meta.read_text())
  text['fingerprint']['count'] = 6  # edited by hand, or a different entry under this name
  meta.write_text(json.dumps(text))
  arrays, record = cache.load_or_compute(tmp_path, 'real', key,
                                         lambda: ({'x': np.ones(2)}, {}))
  assert record['recomputed'] and 'another fingerprint' in record['reason']
  assert arrays['x'].tolist() == [1.0, 1.0]
  with pytest.raises(ValueError, match='cache kind'):
    cache.load_or_compute(tmp_path, 'a-b', key, lambda: ({}, {}))


def test_fingerprints_name_files_by_content(tmp_path):
  a, b = tmp_path / 'a.bin', tmp_path / 'b.bin'
  a.write_bytes(b'weights')
  b.write_bytes(b'weights')
  assert fp.file_sha256(a) == fp.file_sha256(b)  # same bytes, other name: same weights
  assert fp.file_sha256(a) == hashlib.sha256(b'weights').hexdigest()
  b.write_bytes(b'weightz')
  assert fp.file_sha256(a) != fp.file_sha256(b)
  with pytest.raises(FileNotFoundError, match='no such file'):
    fp.file_sha256(tmp_path / 'missing')
  assert fp.differences({'a': {'b': 1}, 'c': 2}, {'a': {'b': 3}, 'd': 2}) == [
      'a.b: 1 -> 3', 'c: 2 -> (absent)', "d: (absent) -> 2"]


# --------------------------------------------------------- real statistics, end to end


def perturbed_classifier(tmp_path):
  """Another feature net: the shipped classifier with its feature layer scaled by 3
  (the same predictions, features three times as large)."""
  _, variables, info = classifier.load_classifier()
  params = {k: dict(v) for k, v in variables['params'].items()}
  params['features'] = {k: 3.0 * np.asarray(v) for k, v in params['features'].items()}
  return classifier.save_classifier(tmp_path / 'other_classifier', {'params': params}, info)[0]


def bundled_config(num_heldout):
  config = parse_config()
  config.data.num_train, config.data.num_heldout = 1000, num_heldout
  config.eval.batch = 500
  return config


def test_changing_num_heldout_recomputes(tmp_path, caplog):
  """The issue's example: num_heldout 200 -> 1000 used to return the 200 cached rows."""
  cache_dir = tmp_path / 'eval_cache'
  config = bundled_config(200)
  net = features.make_feature_net(config)
  real, record = evaluate.real_statistics(config, net, cache_dir)
  assert record['recomputed'] and real['features'].shape == (200, 128)
  config = bundled_config(1000)
  with caplog.at_level(logging.WARNING):
    real, record = evaluate.real_statistics(config, net, cache_dir)
  assert record['recomputed'] and real['features'].shape == (1000, 128)
  assert 'data.split.num_heldout: 200 -> 1000' in record['reason']
  assert 'data.split.num_heldout: 200 -> 1000' in caplog.text
  assert record['info']['subset']['class_counts'] == np.bincount(
      ip.load_heldout(config)['label'], minlength=10).tolist()
  _, record = evaluate.real_statistics(bundled_config(200), net, cache_dir)
  assert not record['recomputed']  # the 200-row entry is still there and still right


def test_another_classifier_recomputes(tmp_path):
  """The issue's example: a second eval.classifier_path used to reuse the first network's
  statistics, so real digits scored an enormous Frechet distance."""
  cache_dir = tmp_path / 'eval_cache'
  config = bundled_config(1000)
  shipped = features.make_feature_net(config)
  stale, _ = evaluate.real_statistics(config, shipped, cache_dir)
  config.eval.classifier_path = str(perturbed_classifier(tmp_path))
  other = features.make_feature_net(config)
  assert other.name == shipped.name  # same name and dataset: only the hash tells them apart
  real, record = evaluate.real_statistics(config, other, cache_dir)
  assert record['recomputed'] and 'weights_sha256' in record['reason']
  fresh, _ = evaluate.real_statistics(config, other, tmp_path / 'fresh_cache')
  np.testing.assert_array_equal(real['features'], fresh['features'])
  np.testing.assert_allclose(real['features'], 3.0 * stale['features'], rtol=1e-4, atol=1e-4)
  # 1,000 real training digits (the floor), featurised by the second net.
  floor, _ = ip.take_subset(config, 'train', 1000)
  _, feats = other.fn(evaluate.real_images(config, floor))
  mu, sigma = metrics.feature_stats(feats)
  right = metrics.frechet_distance(mu, sigma, real['mu'], real['sigma'])
  wrong = metrics.frechet_distance(mu, sigma, stale['mu'], stale['sigma'])
  print(f'floor FD with the second classifier: {right:.1f} against its own statistics, '
        f'{wrong:.1f} against the first network\'s (the stale cache)')
  assert right < 100 and wrong > 20 * right
