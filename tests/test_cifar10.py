"""CIFAR-10 as a second real dataset: the shipped evaluation classifier and G's feature net,
the tools that train them from a JPEG tar, and how a config picks the dataset's own nets.

The real CIFAR-10 JPEG tar is not in the repository; the tools run here on a tiny
synthetic tar of the same layout, and the shipped classifier's accuracy is re-measured on
the real test split only where the tar is found (a slow, selective check).
"""
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biflow_jax import assets, config_lib
from biflow_jax.evaluation import classifier as clf, features
from biflow_jax.objective import feature_term
from biflow_jax.tools import train_classifier as tc, train_feature_net as tf

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {kind: assets.ASSETS_DIR / f'cifar10_{kind}' for kind in assets.KINDS}
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
           'truck')
#: Where the development machines keep the real tar (../shared/data); override with
#: $BIFLOW_CIFAR10_JPEG.
REAL_TAR = Path(os.environ.get('BIFLOW_CIFAR10_JPEG', ROOT.parent / 'shared' / 'data' /
                               'cifar10' / 'cifar10-jpeg.tar.gz'))


@pytest.fixture(scope='module')
def tiny_tar(tmp_path_factory):
  """train/<class>/ 6 and test/<class>/ 2 JPEGs per class, each class its own colour."""
  path = tmp_path_factory.mktemp('cifar') / 'tiny-cifar10-jpeg.tar.gz'
  rng = np.random.default_rng(0)
  with tarfile.open(path, 'w:gz') as tar:
    for split, n in (('train', 6), ('test', 2)):
      for c, name in enumerate(CLASSES):
        for i in range(n):
          base = np.array([25 * c, 255 - 25 * c, (80 * c) % 256], np.float64)
          pixels = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
          buf = io.BytesIO()
          Image.fromarray(pixels).save(buf, format='JPEG', quality=95)
          info = tarfile.TarInfo(f'{split}/{name}/{i:04d}.jpg')
          info.size = buf.tell()
          buf.seek(0)
          tar.addfile(info, buf)
  return path


def mtimes():
  return {p: p.stat().st_mtime_ns for p in assets.ASSETS_DIR.iterdir()}


@pytest.mark.slow  # trains a classifier (~40 s)
def test_classifier_tool_trains_from_a_jpeg_tar_and_writes_a_32x32_asset(tiny_tar, tmp_path):
  before = mtimes()
  out = tmp_path / 'c10'
  info = tc.main(['--dataset=cifar10', f'--data_path={tiny_tar}', f'--out={out}', '--steps=4',
                  '--batch_size=20', '--log_every=0'])
  assert info['image_shape'] == [32, 32, 3] and info['dataset'] == 'cifar10'
  assert (info['train_examples'], info['heldout_examples']) == (60, 20)
  assert info['flip'] and info['pad_mode'] == 'reflect' and info['max_shift'] == 4
  assert len(info['data_sha256']) == 64
  module, variables, loaded = clf.load_classifier(out)
  assert loaded == info
  assert module == tc.RECIPES['cifar10'].module and module.norm == 'group'
  x = np.zeros((3, 32, 32, 3), np.float32)
  logits, feats = clf.classify(module, variables, x)
  assert logits.shape == (3, 10) and feats.shape == (3, 256)
  assert mtimes() == before  # never writes into the package


@pytest.mark.slow  # trains a feature net (~25 s)
def test_feature_net_tool_trains_from_a_jpeg_tar(tiny_tar, tmp_path):
  info = tf.main(['--dataset=cifar10', f'--data_path={tiny_tar}', f'--out={tmp_path / "f"}',
                  '--steps=3', '--batch_size=20', '--log_every=0', '--max_shift=4'])
  assert info['image_shape'] == [32, 32, 3] and info['flip']
  module, params, _ = feature_term.load(tmp_path / 'f', (32, 32, 3))
  assert module.num_classes == 10
  with pytest.raises(ValueError, match=r'\(32, 32, 3\)'):
    feature_term.load(tmp_path / 'f', (28, 28, 1))


def test_cifar10_tools_need_the_data_path():
  with pytest.raises(ValueError, match='--data_path'):
    tc.main(['--dataset=cifar10', '--steps=1'])


def test_reflect_shift_keeps_pixel_values_and_shape():
  import jax
  import jax.numpy as jnp
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)), jnp.float32)
  y = tc.random_shift(jax.random.PRNGKey(0), x, 4, pad_mode='reflect')
  assert y.shape == x.shape
  # Reflection copies pixels of the image itself: no -1 background enters.
  assert float(y.min()) >= float(x.min()) and float(y.max()) <= float(x.max())
  assert not np.allclose(y, x)


def test_shipped_cifar10_assets_are_small_and_documented():
  c_info = json.loads((SHIPPED['classifier'].with_suffix('.json')).read_text())
  f_info = json.loads((SHIPPED['feature_net'].with_suffix('.json')).read_text())
  for prefix in SHIPPED.values():
    assert prefix.with_name(prefix.name + '.npz').stat().st_size < 4e6
  assert c_info['dataset'] == f_info['dataset'] == 'cifar10'
  assert c_info['image_shape'] == f_info['image_shape'] == [32, 32, 3]
  assert (c_info['train_examples'], c_info['heldout_examples']) == (50000, 10000)
  assert c_info['heldout_accuracy'] >= 0.80  # the bar, measured by the tool
  assert c_info['command'].startswith('python -m biflow_jax.tools.train_classifier '
                                      '--dataset=cifar10')
  assert f_info['command'].startswith('python -m biflow_jax.tools.train_feature_net '
                                      '--dataset=cifar10')
  assert c_info['seed'] != f_info['seed']  # G's loss never uses the evaluation net
  module, _, info = clf.load_classifier(SHIPPED['classifier'])
  assert info == c_info and module.feature_dim == 256


@pytest.mark.slow
@pytest.mark.skipif(not REAL_TAR.is_file(), reason=f'no CIFAR-10 JPEG tar at {REAL_TAR}')
def test_shipped_cifar10_classifier_accuracy_is_remeasured():
  (_, _), (test_x, test_y) = tc.cifar10_m11(str(REAL_TAR))
  module, variables, info = clf.load_classifier(SHIPPED['classifier'])
  acc = clf.accuracy(module, variables, test_x, test_y)
  assert acc >= 0.80
  assert acc == pytest.approx(info['heldout_accuracy'], abs=0.002)


def config_for(source='bundled_mnist', name='', tfds_name=''):
  config = config_lib.base_config()
  config.data.source, config.data.name, config.data.tfds_name = source, name, tfds_name
  return config


def test_each_dataset_picks_its_own_shipped_nets():
  assert assets.dataset_name(config_for()) == 'mnist'
  assert assets.dataset_name(config_for('tfds', tfds_name='cifar10')) == 'cifar10'
  assert assets.dataset_name(config_for('jpeg', name='cifar10')) == 'cifar10'
  cifar = config_for('jpeg', name='cifar10')
  cifar.model.image_size, cifar.model.in_channels = 32, 3
  assert features.classifier_asset(cifar) == SHIPPED['classifier']
  assert features.classifier_asset(config_for()) == assets.ASSETS_DIR / 'mnist_classifier'
  assert assets.shipped(cifar, 'feature_net') == SHIPPED['feature_net']
  net = features.make_feature_net(cifar)
  assert net.name == 'classifier_cifar10'
  logits, feats = net.fn(np.zeros((2, 32, 32, 3), np.float32))
  assert logits.shape == (2, 10) and feats.shape == (2, 256)
  # An explicit path still wins.
  cifar.eval.classifier_path = str(assets.ASSETS_DIR / 'mnist_classifier')
  assert features.classifier_asset(cifar) == assets.ASSETS_DIR / 'mnist_classifier'
  with pytest.raises(ValueError, match=r'reads \(28, 28, 1\) images but the model makes'):
    features.make_feature_net(cifar)


def test_unnamed_or_unshipped_datasets_are_one_clear_error():
  with pytest.raises(ValueError, match='config.data.name'):
    features.classifier_asset(config_for('jpeg'))
  with pytest.raises(FileNotFoundError, match='train_classifier --dataset'):
    features.classifier_asset(config_for('tfds', tfds_name='svhn_cropped'))
  with pytest.raises(ValueError, match='unknown|use one of'):
    assets.shipped(config_for(), 'vae')
