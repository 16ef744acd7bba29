"""--mode=eval end to end on the tiny config: every metric for every decoder, cached real stats."""
import copy
import json

import numpy as np
import pytest

from biflow_jax.evaluation import features
from biflow_jax.modes import evaluate
from biflow_jax.training import train

from test_inception import stand_in_state_dict
from test_train import parse_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('eval')
  config = parse_config('--config.reverse.enabled=True', '--config.schedule.plan=two_stage',
                        '--config.schedule.forward_steps=4', '--config.schedule.reverse_steps=4',
                        '--config.sample_every=1000', '--config.eval_every=1000',
                        '--config.eval.num_samples=30', '--config.eval.batch=30',
                        '--config.eval.is_splits=2')
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_eval_writes_every_metric_for_every_decoder(trained, caplog):
  config, workdir = trained
  with caplog.at_level('INFO'):
    result = evaluate.run(config, workdir)
  assert f'wrote {workdir / "eval.json"}' in caplog.text  # where it is (issue 32, item 11)
  saved = json.loads((workdir / 'eval.json').read_text())
  assert saved['step'] == 8 and np.isfinite(saved['heldout_bits_per_dim_ema'])
  assert set(saved['decoders']) == {'reverse', 'exact', 'fixed_point'}
  keys = {'frechet_distance', 'inception_score', 'precision', 'recall', 'class_accuracy'}
  for entry in list(saved['decoders'].values()) + [saved['real_train_images']]:
    assert keys <= set(entry)
    assert 0 <= entry['class_accuracy'] <= 1 and np.isfinite(entry['frechet_distance'])
  # The shipped classifier recognises real digits; an 8-step model's samples are far worse.
  assert saved['real_heldout_class_accuracy'] > 0.98
  assert saved['real_train_images']['class_accuracy'] > 0.9
  real_fd = saved['real_train_images']['frechet_distance']
  assert all(e['frechet_distance'] > real_fd for e in saved['decoders'].values())
  assert result == saved
  assert list((workdir / 'eval_cache').glob('real-*.npz'))  # cached for the next call


def test_eval_decoder_selection_and_errors(trained):
  config, _ = trained
  config = parse_config('--config.eval.decoders=exact')
  assert evaluate.decoders_to_evaluate(config) == ('exact',)
  config.eval.decoders = 'reverse'
  with pytest.raises(ValueError, match='reverse.enabled=False'):
    evaluate.decoders_to_evaluate(config)
  config.eval.decoders = 'ddim'
  with pytest.raises(ValueError, match='unknown decoder'):
    evaluate.decoders_to_evaluate(config)


def test_inception_feature_net_without_weights_is_a_clear_error(trained, tmp_path, monkeypatch):
  config, workdir = trained
  monkeypatch.delenv('BIFLOW_FID_WEIGHTS', raising=False)
  config = parse_config('--config.eval.feature_net=inception',
                        f'--config.eval.inception_weights={tmp_path / "missing.npz"}')
  with pytest.raises(FileNotFoundError, match='pt_inception'):
    evaluate.run(config, workdir)


def _strict_json(path):
  """The JSON in `path`, refusing the NaN / Infinity that Python writes and strict parsers reject."""
  def refuse(constant):
    raise ValueError(f'{path} holds {constant}, which is not JSON')
  return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow  # Inception-V3 forward on CPU (~50 s)
def test_inception_features_report_no_class_accuracy(trained, tmp_path):
  """Issue 32, item 4: with the FID Inception, eval.json reported class_accuracy and
  real_heldout_class_accuracy as the argmax of its 1008 ImageNet logits compared with
  MNIST's labels: a number that looked like accuracy and meant nothing."""
  config, workdir = trained
  config = copy.deepcopy(config)
  weights = tmp_path / 'inception_standin.npz'
  np.savez(weights, **stand_in_state_dict())
  config.eval.update(feature_net='inception', inception_weights=str(weights), decoders='reverse',
                     num_samples=10, batch=10, floor_samples=10)
  evaluate.run(config, workdir)
  saved = _strict_json(workdir / 'eval.json')
  assert saved['feature_net'] == 'inception'
  assert 'real_heldout_class_accuracy' not in saved
  for entry in (saved['decoders']['reverse'], saved['real_train_images']):
    assert 'class_accuracy' not in entry and np.isfinite(entry['frechet_distance'])
  assert saved['protocol']['class_accuracy'].startswith('not reported: the logits of inception '
                                                        'are ImageNet classes')


def test_class_accuracy_only_from_the_datasets_own_classes():
  config = parse_config()
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(40, 8))
  real = {'features': feats, 'mu': feats.mean(0), 'sigma': np.cov(feats, rowvar=False)}
  labels = np.arange(40) % 10
  for classes, width, reported in ((10, 10, True), (None, 1008, False), (5, 5, False)):
    logits = np.eye(width)[labels % width]
    metrics = evaluate.feature_metrics(logits, feats, labels, real, config, classes)
    assert ('class_accuracy' in metrics) == reported, classes
  net = features.FeatureNet('inception', None, {})
  assert net.classes is None and not evaluate.has_class_accuracy(config, net)
  shipped = features.make_feature_net(config)
  assert shipped.classes == 10 and evaluate.has_class_accuracy(config, shipped)
