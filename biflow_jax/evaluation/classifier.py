"""A small MNIST classifier used as an offline feature net for sample metrics.

Inception-v3 needs downloaded weights and sees 299x299 RGB; for 28x28 digits the field
uses a dataset classifier instead. This one is trained on the bundled MNIST train split
by `python -m biflow_jax.tools.train_classifier` and shipped as
`biflow_jax/assets/mnist_classifier.{npz,json}` (params, and the held-out accuracy measured
on the fixed 1,000 held-out digits). Its logits give Inception-Score-style numbers and its
penultimate activations (`feature_dim` wide, post-ReLU) give FID-style Frechet distances
and precision/recall; see `evaluation.metrics`.

Inputs are float NHWC images in [-1, 1] (x = uint8 / 127.5 - 1), the range generated
samples come in.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax import assets

DEFAULT_NAME = 'mnist_classifier'
REGENERATE_COMMAND = ('python -m biflow_jax.tools.train_classifier '
                      '--out=biflow_jax/assets/mnist_classifier')


#: Classifier.norm choices: none (the MNIST net) | group (GroupNorm after each conv: a
#: stateless norm, so the asset is params only and eval needs no batch statistics).
NORMS = ('none', 'group')


class Classifier(nn.Module):
  """Per entry of `channels`: `convs_per_stage` x (Conv 3x3 [+ GroupNorm] + ReLU), then a
  2x2 max-pool; then dense features, then logits.

  28x28 input -> 14 -> 7 -> 3 spatially with the default three stages (the MNIST net);
  the CIFAR-10 net is (32, 64, 128) x 2 convs with GroupNorm: 32 -> 16 -> 8 -> 4.
  """
  channels: Sequence[int] = (16, 32, 64)
  feature_dim: int = 128
  num_classes: int = 10
  convs_per_stage: int = 1
  norm: str = 'none'
  norm_groups: int = 8

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: (B, H, W, C) in [-1, 1] -> (logits (B, num_classes), features (B, feature_dim))."""
    if self.norm not in NORMS:
      raise ValueError(f'Classifier.norm={self.norm!r}; use one of {NORMS}')
    for i, ch in enumerate(self.channels):
      for j in range(self.convs_per_stage):
        # The MNIST asset's names (conv0, conv1, ...) stay as they were for one conv a stage.
        name = f'conv{i}' if self.convs_per_stage == 1 else f'conv{i}_{j}'
        x = nn.Conv(ch, (3, 3), padding='SAME', name=name)(x)
        if self.norm == 'group':
          x = nn.GroupNorm(num_groups=min(self.norm_groups, ch), name=f'{name}_norm')(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(self.feature_dim, name='features')(x))
    logits = nn.Dense(self.num_classes, name='logits')(features)
    return logits, features


def architecture(module: Classifier) -> dict[str, Any]:
  """The JSON-able hyperparameters that rebuild `module`."""
  return {'channels': list(module.channels), 'feature_dim': module.feature_dim,
          'num_classes': module.num_classes, 'convs_per_stage': module.convs_per_stage,
          'norm': module.norm, 'norm_groups': module.norm_groups}


def from_architecture(arch: dict[str, Any], feature_dim: int | None = None) -> Classifier:
  """The module an asset's `architecture` record describes (older records: MNIST defaults)."""
  return Classifier(channels=tuple(arch.get('channels', Classifier.channels)),
                    feature_dim=int(arch.get('feature_dim', feature_dim or Classifier.feature_dim)),
                    num_classes=int(arch.get('num_classes', 10)),
                    convs_per_stage=int(arch.get('convs_per_stage', 1)),
                    norm=str(arch.get('norm', 'none')),
                    norm_groups=int(arch.get('norm_groups', Classifier.norm_groups)))


# ------------------------------------------------------------------------------ files


def asset_paths(path: str | Path | None) -> tuple[Path, Path]:
  """(<path>.npz, <path>.json) of a classifier asset; the shipped MNIST one for None."""
  return assets.prefix_paths(path, DEFAULT_NAME)


def save_classifier(path: str | Path, variables: Any, info: dict[str, Any]) -> tuple[Path, Path]:
  """Writes <path>.npz (float32 params, '/'-joined keys) and <path>.json (info)."""
  return assets.save_params(*asset_paths(path), variables['params'], info)


def load_classifier(path: str | Path | None = None) -> tuple[Classifier, dict[str, Any], dict[str, Any]]:
  """(module, variables, info) from <path>.npz/.json; the shipped MNIST asset by default."""
  npz, meta = asset_paths(path)
  missing = [str(p) for p in (npz, meta) if not p.is_file()]
  if missing:
    raise FileNotFoundError(
        f'classifier asset not found: {", ".join(missing)}. Regenerate it with '
        f'`{REGENERATE_COMMAND}` (or --out=<prefix> for another location), run from '
        'the repository root.')
  info = json.loads(meta.read_text())
  arch = info.get('architecture', {})
  module = from_architecture(arch, info.get('feature_dim'))
  with np.load(npz) as data:
    params = assets.unflatten_params({k: jnp.asarray(data[k]) for k in data.files})
  variables = {'params': params}
  # Fail here, not at the first batch, if the file and the architecture disagree.
  image_shape = tuple(info.get('image_shape', (28, 28, 1)))
  expected = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.zeros((1,) + image_shape, jnp.float32))['params']
  want = {k: v.shape for k, v in assets.flatten_params(expected).items()}
  got = {k: v.shape for k, v in assets.flatten_params(params).items()}
  if want != got:
    raise ValueError(f'{npz}: parameters {got} do not match the architecture {arch} '
                     f'(expected {want}); regenerate with `{REGENERATE_COMMAND}`')
  return module, variables, info


# ---------------------------------------------------------------------------- inference


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: Classifier, variables: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  return module.apply(variables, x)


def classify(module: Classifier, variables: Any, images_m11, batch_size: int = 500,
             ) -> tuple[np.ndarray, np.ndarray]:
  """(logits (N, classes), features (N, feature_dim)) as float32 numpy, in jitted batches.

  `images_m11`: float (N, H, W, C) in [-1, 1]. The last batch is zero-padded to
  `batch_size`, so any N compiles once.
  """
  x = np.asarray(images_m11)
  if x.dtype == np.uint8:
    raise ValueError('classify expects float images in [-1, 1], got uint8; '
                     'convert with images / 127.5 - 1')
  if x.ndim != 4:
    raise ValueError(f'expected NHWC images, got shape {x.shape}')
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  x = x.astype(np.float32)
  n = x.shape[0]
  logits, features = [], []
  for start in range(0, n, batch_size):
    chunk = x[start:start + batch_size]
    m = chunk.shape[0]
    if m < batch_size and n > batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - m,) + chunk.shape[1:],
                                              chunk.dtype)])
    lg, ft = _apply(module, variables, jnp.asarray(chunk))
    logits.append(np.asarray(lg)[:m])
    features.append(np.asarray(ft)[:m])
  if not logits:
    return (np.zeros((0, module.num_classes), np.float32),
            np.zeros((0, module.feature_dim), np.float32))
  return np.concatenate(logits), np.concatenate(features)


def accuracy(module: Classifier, variables: Any, images_m11, labels,
             batch_size: int = 500) -> float:
  """Top-1 accuracy on float [-1, 1] images."""
  logits, _ = classify(module, variables, images_m11, batch_size)
  return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
