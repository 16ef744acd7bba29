"""The shipped MNIST feature classifier: its recorded accuracy re-measured on the fixed
held-out digits, its API, and the training tool on a tiny subset (never writing into
the package)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.evaluation import classifier as clf, metrics
from biflow_jax.tools import train_classifier as tc

SHIPPED = [*clf.asset_paths(None)]


@pytest.fixture(scope='module')
def shipped():
  return clf.load_classifier()


@pytest.fixture(scope='module')
def mnist():
  return tc.bundled_mnist_m11()


@pytest.fixture(scope='module')
def heldout_outputs(shipped, mnist):
  module, variables, _ = shipped
  (_, _), (heldout_x, _) = mnist
  return clf.classify(module, variables, heldout_x)


def test_shipped_asset_is_small_and_documented(shipped):
  assert sum(p.stat().st_size for p in SHIPPED) < 1.5e6
  _, _, info = shipped
  assert info == json.loads(SHIPPED[1].read_text())
  assert info['dataset'] == 'bundled_mnist'
  assert (info['train_examples'], info['heldout_examples']) == (9000, 1000)
  assert info['command'].startswith('python -m biflow_jax.tools.train_classifier')
  for key in ('seed', 'steps', 'date', 'feature_dim', 'heldout_accuracy'):
    assert key in info


def test_shipped_heldout_accuracy_is_remeasured(shipped, mnist, heldout_outputs):
  _, _, info = shipped
  (_, _), (heldout_x, heldout_y) = mnist
  assert heldout_x.shape == (1000, 28, 28, 1)
  assert heldout_x.min() == -1.0 and heldout_x.max() == 1.0
  logits, _ = heldout_outputs
  acc = float(np.mean(logits.argmax(1) == heldout_y))
  assert acc >= 0.98
  assert acc == pytest.approx(info['heldout_accuracy'], abs=0.002)


def test_outputs_have_documented_shapes(shipped, heldout_outputs):
  module, _, info = shipped
  logits, features = heldout_outputs
  assert logits.shape == (1000, 10) and logits.dtype == np.float32
  assert features.shape == (1000, info['feature_dim']) == (1000, module.feature_dim)
  assert info['feature_dim'] == 128
  assert np.all(features >= 0)  # post-ReLU
  # Real digits are classified confidently and evenly: a high Inception-style score.
  is_mean, _ = metrics.inception_score(logits, splits=10)
  assert is_mean > 8.0


def test_classify_batching_pads_without_changing_results(shipped, mnist, heldout_outputs):
  module, variables, _ = shipped
  (_, _), (heldout_x, _) = mnist
  logits, features = clf.classify(module, variables, heldout_x[:700], batch_size=300)
  np.testing.assert_allclose(logits, heldout_outputs[0][:700], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(features, heldout_outputs[1][:700], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match='uint8'):
    clf.classify(module, variables, np.zeros((2, 28, 28, 1), np.uint8))


def test_missing_asset_names_the_regeneration_command(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match='python -m biflow_jax.tools.train_classifier --out='):
    clf.load_classifier(tmp_path / 'nothing_here')


def test_random_shift_moves_content_within_bounds():
  x = jnp.full((64, 28, 28, 1), -1.0).at[:, 10:18, 10:18, :].set(1.0)
  shifted = tc.random_shift(jax.random.PRNGKey(0), x, max_shift=2)
  assert shifted.shape == x.shape
  # The blob stays whole (it is 10 pixels from every border) ...
  np.testing.assert_allclose(jnp.sum(shifted > 0, axis=(1, 2, 3)), 64)
  # ... and lands at several offsets.
  rows = np.asarray(jnp.argmax(shifted[:, :, 14, 0] > 0, axis=1))
  assert set(rows) == set(range(8, 13))
  np.testing.assert_array_equal(tc.random_shift(jax.random.PRNGKey(0), x, 0), x)


def test_training_on_a_tiny_subset_reduces_loss_and_round_trips(mnist, tmp_path):
  before = {p: p.stat().st_mtime_ns for p in SHIPPED}
  (train_x, train_y), (heldout_x, _) = mnist
  module = clf.Classifier(channels=(8, 16), feature_dim=32)
  variables, losses = tc.train_classifier(
      train_x[:256], train_y[:256], module=module, steps=40, batch_size=32,
      learning_rate=3e-3, seed=1)
  assert losses.shape == (40,) and np.all(np.isfinite(losses))
  assert losses[-8:].mean() < 0.7 * losses[:8].mean(), losses
  info = {'feature_dim': 32, 'architecture': clf.architecture(module)}
  npz, meta = clf.save_classifier(tmp_path / 'tiny', variables, info)
  assert npz.parent == tmp_path and meta.parent == tmp_path
  loaded_module, loaded_vars, loaded_info = clf.load_classifier(tmp_path / 'tiny.npz')
  assert loaded_module == module and loaded_info == info
  a = clf.classify(module, variables, heldout_x[:50])
  b = clf.classify(loaded_module, loaded_vars, heldout_x[:50])
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6)
  assert b[1].shape == (50, 32)
  assert {p: p.stat().st_mtime_ns for p in SHIPPED} == before


def test_load_rejects_params_of_another_architecture(tmp_path):
  module = clf.Classifier(channels=(4,), feature_dim=8)
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  clf.save_classifier(tmp_path / 'x', variables, {'architecture': {'channels': [8]}})
  with pytest.raises(ValueError, match='do not match the architecture'):
    clf.load_classifier(tmp_path / 'x')


@pytest.mark.slow  # trains the classifier through the tool (~10 s); the subset-training test stays
def test_tool_main_writes_only_to_out(tmp_path, capsys):
  before = {p: p.stat().st_mtime_ns for p in SHIPPED}
  info = tc.main([f'--out={tmp_path / "clf"}', '--steps=3', '--log_every=0', '--seed=7'])
  assert sorted(p.name for p in tmp_path.iterdir()) == ['clf.json', 'clf.npz']
  assert 'held-out accuracy' in capsys.readouterr().out
  assert info['steps'] == 3 and info['seed'] == 7 and info['feature_dim'] == 128
  assert info['command'] == ('python -m biflow_jax.tools.train_classifier '
                             f'--out={tmp_path / "clf"} --steps=3 --log_every=0 --seed=7')
  module, _, loaded = clf.load_classifier(tmp_path / 'clf')
  assert loaded == info and module == clf.Classifier()
  assert {p: p.stat().st_mtime_ns for p in SHIPPED} == before
