"""Feature networks that evaluation scores samples with: the dataset's own classifier
(shipped for MNIST and CIFAR-10, `assets/__init__.py`) or the FID InceptionV3 (pytorch-fid weights from a local file).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax import assets
from biflow_jax.convert import inception as inception_convert
from biflow_jax.evaluation import classifier, fingerprint as fp
from biflow_jax.models import inception

#: config.eval.feature_net
FEATURE_NETS = ('classifier', 'inception')

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # [-1,1] NHWC -> (logits, feats)


class FeatureNet(NamedTuple):
  """A feature net ready to run: `fn` maps float NHWC images in [-1, 1] to (logits (n, c),
  features (n, d)); `fingerprint` names its weights by content hash (cache keys).

  `classes`: how many of the dataset's classes its logits score (a dataset classifier's
  class count); None when its logits are not the dataset's classes (the FID Inception's
  1008 are ImageNet's), so no class accuracy can be read from them.
  """
  name: str
  fn: FeatureFn
  fingerprint: dict[str, Any]
  classes: int | None = None


def make_feature_net(config) -> FeatureNet:
  """The configured feature net (config.eval.feature_net), weights loaded and hashed.

  Raises FileNotFoundError for missing weight files and ValueError for a classifier that
  reads another image shape than the model makes, before anything is sampled.
  """
  name, fn, files, classes = _build(config)
  return FeatureNet(name, fn, fp.canonical({
      'net': config.eval.feature_net, 'name': name, 'preprocessing': PREPROCESSING[
          config.eval.feature_net],
      'weights_sha256': {str(p.name): fp.file_sha256(p) for p in files}}), classes)


#: What each net does to [-1, 1] NHWC images before its first layer (part of cache keys).
PREPROCESSING = {
    'classifier': 'images in [-1, 1] as given',
    'inception': '(x + 1) / 2, grey repeated to RGB, bilinear resize to 299 inside '
                 'inception.fid_features',
}


def classifier_asset(config) -> Path:
  """The classifier's asset prefix: eval.classifier_path, else the dataset's shipped one.

  Raises FileNotFoundError when the dataset ships none, naming the tool that trains one.
  """
  if config.eval.classifier_path:
    return Path(config.eval.classifier_path)
  path = assets.shipped(config, 'classifier')
  if not classifier.asset_paths(path)[0].is_file():
    name = assets.dataset_name(config)
    raise FileNotFoundError(
        f'no evaluation classifier is shipped for dataset {name!r} (looked for {path}.npz; '
        f'shipped: {", ".join(assets.available("classifier"))}). Train one with `python -m '
        'biflow_jax.tools.train_classifier --dataset=... --out=PREFIX` and set '
        '--config.eval.classifier_path=PREFIX, or use --config.eval.feature_net=inception')
  return path


def _build(config) -> tuple[str, FeatureFn, list, int | None]:
  """(name, fn, weight files, dataset classes its logits score) for the configured net."""
  net = config.eval.feature_net
  batch = int(config.eval.batch)
  if net == 'classifier':
    path = classifier_asset(config)
    module, variables, info = classifier.load_classifier(path)
    shape = (config.model.image_size, config.model.image_size, config.model.in_channels)
    expected = tuple(info.get('image_shape', (28, 28, 1)))
    if shape != expected:
      raise ValueError(f'the classifier at {path} reads {expected} images but the model makes '
                       f'{shape}; train one for this dataset (python -m '
                       'biflow_jax.tools.train_classifier) or use '
                       '--config.eval.feature_net=inception')

    def classify(images):
      logits, features = classifier.classify(module, variables, images, batch_size=batch)
      return np.asarray(logits), np.asarray(features)

    return (f"classifier_{info.get('dataset', 'custom')}", classify,
            list(classifier.asset_paths(path)), int(module.num_classes))
  if net == 'inception':
    path = inception_convert.resolve_path(config.eval.inception_weights or None)
    variables = inception_convert.load_fid_inception(path)
    features_fn = jax.jit(inception.fid_features)

    def run(images):
      pools, logits = [], []
      for start in range(0, images.shape[0], batch):
        x = jnp.asarray(images[start:start + batch], jnp.float32)
        x = (x + 1.0) / 2.0
        if x.shape[-1] == 1:
          x = jnp.repeat(x, 3, axis=-1)
        pool, logit = features_fn(variables, x)
        pools.append(np.asarray(pool))
        logits.append(np.asarray(logit))
      return np.concatenate(logits), np.concatenate(pools)

    return 'inception', run, [path], None  # ImageNet's classes, not the dataset's
  raise ValueError(f'config.eval.feature_net={net!r}; use one of {FEATURE_NETS}')
