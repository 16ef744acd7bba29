"""G's feature term for pixel data: the shipped loss feature net, its distance, bad files."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from biflow_jax import assets
from biflow_jax.evaluation import classifier
from biflow_jax.objective import biflow, feature_term, frozen
from biflow_jax.tools import train_classifier as tc
from biflow_jax.training.experiment import build_experiment

from test_reverse_training import biflow_config

SHAPE = (28, 28, 1)


@pytest.fixture(scope='module')
def shipped():
  return feature_term.load('', SHAPE)


@pytest.fixture(scope='module')
def heldout():
  _, (x, y) = tc.bundled_mnist_m11()
  return x, y


def test_shipped_asset_is_trained_on_the_train_split_and_is_not_the_eval_classifier(shipped):
  module, params, info = shipped
  assert info['heldout_accuracy'] >= 0.95
  assert 'train part only' in info['split'] and info['image_shape'] == list(SHAPE)
  assert 'train_feature_net' in info['command'] and info['date']
  _, eval_vars, eval_info = classifier.load_classifier(None)
  ours = {k: v.shape for k, v in assets.flatten_params(params).items()}
  theirs = {k: v.shape for k, v in assets.flatten_params(eval_vars['params']).items()}
  convs = lambda shapes: {v for k, v in shapes.items() if k.startswith('conv') and 'kernel' in k}
  assert not convs(ours) & convs(theirs)  # no conv kernel of the same shape
  assert info['seed'] != eval_info['seed']


def test_recorded_accuracy_is_what_the_weights_give(shipped, heldout):
  module, params, info = shipped
  x, y = heldout
  assert feature_term.accuracy(module, params, x, y) == pytest.approx(info['heldout_accuracy'],
                                                                      abs=1e-3)


def test_distance_is_zero_on_equal_images_and_separates_digits(shipped, heldout):
  module, params, _ = shipped
  x, y = heldout
  dist = jax.jit(feature_term.distance_fn(module, SHAPE))
  a = jnp.asarray(x[:200])
  np.testing.assert_allclose(dist(params, a, a), 0.0, atol=1e-6)
  # the same digits with a little pixel noise are nearer than digits of other classes
  noisy = a + 0.1 * jax.random.normal(jax.random.PRNGKey(0), a.shape)
  other = np.roll(np.arange(200), 1)
  mismatched = y[:200] != y[:200][other]
  d_noisy = np.asarray(dist(params, a, noisy))
  d_other = np.asarray(dist(params, a, a[other]))
  assert mismatched.sum() > 100
  assert np.mean(d_noisy) < 0.5 * np.mean(d_other[mismatched])
  # grey images arrive repeated over RGB (biflow.perceptual_terms): same distance
  rgb = frozen.rgb
  np.testing.assert_allclose(dist(params, rgb(a), rgb(noisy)), d_noisy, rtol=1e-6)


def test_gradient_is_finite_where_output_equals_target(shipped, heldout):
  module, params, _ = shipped
  x, _ = heldout
  a = jnp.asarray(x[:8])
  zero_tap = jnp.full_like(a, -1.0)  # an all-background image: some taps may be exactly 0
  dist = feature_term.distance_fn(module, SHAPE)
  for target in (a, zero_tap):
    g = jax.grad(lambda img: jnp.sum(dist(params, img, target)))(target)
    assert np.all(np.isfinite(np.asarray(g)))


# ------------------------------------------------------------------------- bad files


def _copy_asset(tmp_path):
  npz, meta = feature_term.asset_paths('')
  base = tmp_path / 'net'
  shutil.copy(npz, str(base) + '.npz')
  shutil.copy(meta, str(base) + '.json')
  return base


def test_missing_file_names_the_file_and_the_field(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'config\.perceptual\.feature_net.*nowhere\.npz'):
    feature_term.load(str(tmp_path / 'nowhere'), SHAPE)
  base = _copy_asset(tmp_path)
  (tmp_path / 'net.json').unlink()
  with pytest.raises(FileNotFoundError, match=r'net\.json'):
    feature_term.load(str(base), SHAPE)


@pytest.mark.parametrize('which', ['npz_garbage', 'npz_truncated', 'json_garbage', 'params'])
def test_corrupt_file_is_one_clear_error(tmp_path, which):
  base = _copy_asset(tmp_path)
  npz, meta = feature_term.asset_paths(base)
  if which == 'npz_garbage':
    npz.write_bytes(b'not a zip file at all')
  elif which == 'npz_truncated':
    npz.write_bytes(npz.read_bytes()[:1000])
  elif which == 'json_garbage':
    meta.write_text('{"image_shape": [28, 28')
  else:  # a layer missing from the weights
    with np.load(npz) as data:
      kept = {k: data[k] for k in data.files if not k.startswith('logits')}
    np.savez(npz, **kept)
  culprit = meta if which == 'json_garbage' else npz
  with pytest.raises(ValueError, match=r'config\.perceptual\.feature_net') as err:
    feature_term.load(str(base), SHAPE)
  assert str(culprit) in str(err.value)


def test_non_finite_weights_are_refused(tmp_path):
  base = _copy_asset(tmp_path)
  npz, _ = feature_term.asset_paths(base)
  with np.load(npz) as data:
    arrays = {k: data[k] for k in data.files}
  arrays['logits/bias'] = arrays['logits/bias'] * np.nan
  np.savez(npz, **arrays)
  with pytest.raises(ValueError, match='non-finite'):
    feature_term.load(str(base), SHAPE)


@pytest.mark.parametrize('shape', [(35, 35, 1), (28, 28, 3)])
def test_asset_for_another_image_shape_or_channels_fails_before_compiling(tmp_path, shape):
  config = biflow_config()
  config.perceptual.feature_weight = 1.0
  config.model.image_size, config.model.in_channels = shape[0], shape[2]
  with pytest.raises(ValueError, match=r'config\.perceptual\.feature_net.*mnist_feature_net\.npz'
                     r'.*\(28, 28, 1\).*' + re_shape(shape)):
    build_experiment(config)


def re_shape(shape):
  return r'\(' + r', '.join(str(s) for s in shape) + r'\)'


def test_bad_path_in_the_config_fails_when_the_experiment_is_built(tmp_path):
  config = biflow_config()
  config.perceptual.feature_weight = 1.0
  config.perceptual.feature_net = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match=r'config\.perceptual\.feature_net'):
    build_experiment(config)
  config.perceptual.feature_weight = 0.0  # off: the path is never read
  build_experiment(config, abstract=True)


# ------------------------------------------------------------------------- in G's loss


@pytest.mark.slow  # a G gradient through the feature net (~35 s)
def test_feature_term_enters_the_reverse_loss_and_its_gradient_reaches_g(heldout):
  config = biflow_config()
  config.perceptual.feature_weight = 1.0
  exp = build_experiment(config)
  state = exp.create_state()
  x, y = heldout
  batch = {'image': jnp.asarray(((x[:16] + 1) * 127.5).round().astype(np.uint8)),
           'label': jnp.asarray(y[:16])}
  phase = next(p for p in exp.plan if 'reverse' in p.trainable)

  def loss(params):
    return biflow.loss_fn(params, batch, jax.random.PRNGKey(0), phase=phase, models=exp.models,
                          config=config, frozen_params=exp.frozen_params)

  (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  assert float(metrics['reverse/features']) > 0
  # the term counts: turning it off lowers the loss by exactly weight * its value
  config.perceptual.feature_weight = 0.0
  off = build_experiment(config)

  def loss_off(params):
    return biflow.loss_fn(params, batch, jax.random.PRNGKey(0), phase=phase, models=off.models,
                          config=config, frozen_params=off.frozen_params)

  (value_off, _), grads_off = jax.value_and_grad(loss_off, has_aux=True)(state.params)
  np.testing.assert_allclose(float(value) - float(value_off), float(metrics['reverse/features']),
                             rtol=1e-4)
  # the term's own gradient reaches G
  diff = jax.tree.map(lambda a, b: a - b, grads['reverse'], grads_off['reverse'])
  assert float(optax.global_norm(diff)) > 0
  assert np.isfinite(float(optax.global_norm(grads['reverse'])))


def test_feature_net_tool_takes_widths_and_refuses_bad_ones():
  from biflow_jax.tools import train_feature_net
  args = train_feature_net.parse_args(['--channels=48,96,192'])
  assert args.channels == (48, 96, 192)
  assert train_feature_net.parse_args([]).channels == tuple(feature_term.LossFeatureNet.channels)
  for bad in ('--channels=48,96', '--channels=a,b,c', '--channels=0,8,8'):
    with pytest.raises(SystemExit):
      train_feature_net.parse_args([bad])
