"""A feature-space term on G's output for pixel data, with a network the project trains.

The paper's largest single gain for G comes from comparing G's output with its target in
the feature space of a pretrained network (LPIPS, ConvNeXt; docs/method.md §5). Those
networks see RGB photographs; for small grey datasets (MNIST) this module provides a
small convolutional `LossFeatureNet`, trained by
`python -m biflow_jax.tools.train_feature_net` on the training split only and shipped as
`biflow_jax/assets/mnist_feature_net.{npz,json}` with its provenance and held-out accuracy.

It is deliberately not the evaluation classifier (`evaluation/classifier.py`: 3x3 convs,
ReLU, max pools, a 128-d dense feature layer, other seed): a loss that optimised the very
features FD and class accuracy are computed from would inflate those metrics.

The distance (`feature_distance`) is LPIPS-shaped without learned heads: at every tap,
each pixel's channel vector is divided by its L2 norm, the squared difference is summed
over channels and averaged over pixels, and the taps are summed -> (batch,).

Config: `perceptual.feature_weight` (0 = off) and `perceptual.feature_net` (asset prefix;
'' = the bundled MNIST asset). The asset records the image shape it reads; a missing,
corrupt or mismatched file is one error naming the file and the config field, raised
when the experiment is built, before anything compiles.
"""
from __future__ import annotations

import functools
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax import assets

Array = jax.Array

DEFAULT_NAME = 'mnist_feature_net'
FIELD = 'config.perceptual.feature_net'
REGENERATE_COMMAND = ('python -m biflow_jax.tools.train_feature_net '
                      '--out=biflow_jax/assets/mnist_feature_net')


class LossFeatureNet(nn.Module):
  """Strided 4x4 convs + GELU (taps after each), global average pool, linear logits.

  (B, 28, 28, 1) in [-1, 1] -> 14x14x32 -> 7x7x64 -> 7x7x128 with the default strides.
  Returns (logits (B, num_classes), taps: list of NHWC activations in `dtype`).
  precision / dtype: the convs' and the dense layer's (config.perceptual.precision /
  .dtype; not part of the asset: the same weights run at any numerics).
  """
  channels: Sequence[int] = (32, 64, 128)
  strides: Sequence[int] = (2, 2, 1)
  num_classes: int = 10
  precision: Any = jax.lax.Precision.HIGHEST
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, list[Array]]:
    taps = []
    for i, (ch, s) in enumerate(zip(self.channels, self.strides)):
      x = nn.gelu(nn.Conv(ch, (4, 4), strides=(s, s), padding='SAME', precision=self.precision,
                          dtype=self.dtype, name=f'conv{i}')(x))
      taps.append(x)
    logits = nn.Dense(self.num_classes, precision=self.precision, dtype=self.dtype,
                      name='logits')(jnp.mean(x, axis=(1, 2)))
    return logits, taps


def architecture(module: LossFeatureNet) -> dict[str, Any]:
  """The JSON-able hyperparameters that rebuild `module`."""
  return {'channels': list(module.channels), 'strides': list(module.strides),
          'num_classes': module.num_classes}


def _unit_channels(x: Array) -> Array:
  """x / ||x|| over channels; the square root's gradient is 0 (not inf) at 0."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return x / (norm + 1e-10)


def feature_distance(module: LossFeatureNet, image_shape: tuple[int, int, int], params,
                     x0: Array, x1: Array) -> Array:
  """Sum over taps of the pixel-mean squared distance of unit-normalised features -> (batch,).

  x0, x1: NHWC in [-1, 1]. Grey images reach perceptual terms repeated over RGB
  (`biflow.perceptual_terms`); a net that reads C < 3 channels takes the first C.
  Differentiable in both arguments (the caller stops the target's gradient).
  Raises ValueError when the shapes differ or do not match `image_shape`.
  """
  if x0.shape != x1.shape:
    raise ValueError(f'feature_distance: image shapes differ: {x0.shape} vs {x1.shape}')
  channels = image_shape[-1]
  if x0.shape[-1] != channels:
    x0, x1 = x0[..., :channels], x1[..., :channels]
  if tuple(x0.shape[1:]) != tuple(image_shape):
    raise ValueError(f'feature_distance: images are {tuple(x0.shape[1:])}, the feature net '
                     f'reads {tuple(image_shape)}')
  batch = x0.shape[0]
  _, taps = module.apply({'params': params}, jnp.concatenate([x0, x1], axis=0))
  total = jnp.zeros((batch,), jnp.float32)
  for tap in taps:
    tap = tap.astype(jnp.float32)  # the normalisation and distance are float32 at any dtype
    a, b = _unit_channels(tap[:batch]), _unit_channels(tap[batch:])
    total = total + jnp.mean(jnp.sum(jnp.square(a - b), axis=-1), axis=(1, 2))
  return total


# ------------------------------------------------------------------------------ files


def asset_paths(path: str | Path | None) -> tuple[Path, Path]:
  """(<path>.npz, <path>.json); the bundled MNIST asset for None or ''."""
  return assets.prefix_paths(path, DEFAULT_NAME)


def save(path: str | Path, params: Any, info: dict[str, Any]) -> tuple[Path, Path]:
  """Writes <path>.npz (float32 params, '/'-joined keys) and <path>.json (info)."""
  return assets.save_params(*asset_paths(path), params, info)


def load(path: str | Path | None, image_shape: tuple[int, int, int],
         field: str = FIELD) -> tuple[LossFeatureNet, dict, dict[str, Any]]:
  """(module, params, info) of the asset at `path` ('' = bundled), checked for `image_shape`.

  image_shape: (H, W, C) of the images G's output decodes to.
  Raises FileNotFoundError when <path>.npz or .json is missing, and ValueError when either
  cannot be read (corrupt), when the asset reads another image shape or channel count, or
  when its parameters do not match its recorded architecture; each names the file and
  `field`, and says how to fix it.
  """
  npz, meta = asset_paths(path)
  fix = (f'set {field} to a feature-net asset prefix made by `{REGENERATE_COMMAND}` '
         f"(--out=<prefix> for another location), or {field.rsplit('.', 1)[0]}"
         '.feature_weight=0 to train without the feature term')
  missing = [str(p) for p in (npz, meta) if not p.is_file()]
  if missing:
    raise FileNotFoundError(f'{field}: feature-net file(s) not found: {", ".join(missing)}. '
                            f'{fix}')
  try:
    info = json.loads(meta.read_text())
    if not isinstance(info, dict):
      raise ValueError('not a JSON object')
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{field}: {meta} is not a readable feature-net description ({e}). '
                     f'{fix}') from None
  try:
    with np.load(npz) as data:
      flat = {k: np.asarray(data[k], np.float32) for k in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise ValueError(f'{field}: {npz} is not a readable feature-net weights file '
                     f'({type(e).__name__}: {e}). {fix}') from None
  made_for = tuple(int(v) for v in info.get('image_shape', ()))
  if made_for != tuple(image_shape):
    raise ValueError(f'{field}: {npz} was made for images of shape {made_for or "unknown"} '
                     f'(H, W, C) but G\'s output decodes to {tuple(image_shape)}. Train one '
                     f'for this data, or {fix.split(", or ")[-1]}')
  arch = info.get('architecture', {})
  module = LossFeatureNet(channels=tuple(arch.get('channels', LossFeatureNet.channels)),
                          strides=tuple(arch.get('strides', LossFeatureNet.strides)),
                          num_classes=int(arch.get('num_classes', LossFeatureNet.num_classes)))
  expected = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, *image_shape), jnp.float32))['params']
  want = {k: tuple(v.shape) for k, v in assets.flatten_params(expected).items()}
  got = {k: tuple(v.shape) for k, v in flat.items()}
  if want != got:
    raise ValueError(f'{field}: the parameters in {npz} {got} do not match its recorded '
                     f'architecture {arch} (expected {want}). {fix}')
  if not all(np.isfinite(v).all() for v in flat.values()):
    raise ValueError(f'{field}: {npz} holds non-finite weights. {fix}')
  return module, assets.unflatten_params({k: jnp.asarray(v) for k, v in flat.items()}), info


def abstract(image_shape: tuple[int, int, int]) -> tuple[LossFeatureNet, dict]:
  """(module, ShapeDtypeStruct params) of the default architecture: no files."""
  module = LossFeatureNet()
  return module, jax.eval_shape(module.init, jax.random.PRNGKey(0),
                                jnp.zeros((1, *image_shape), jnp.float32))['params']


def distance_fn(module: LossFeatureNet, image_shape: tuple[int, int, int]):
  """distance(params, x0, x1) -> (batch,) for a `perceptual.PerceptualTerm`."""
  return functools.partial(feature_distance, module, tuple(int(s) for s in image_shape))


def accuracy(module: LossFeatureNet, params, images_m11: np.ndarray, labels: np.ndarray,
             batch_size: int = 500) -> float:
  """Top-1 accuracy of the net's logits on float [-1, 1] NHWC images."""
  apply = jax.jit(lambda x: module.apply({'params': params}, x)[0])
  correct = 0
  for start in range(0, len(labels), batch_size):
    logits = apply(jnp.asarray(images_m11[start:start + batch_size], jnp.float32))
    correct += int(np.sum(np.argmax(np.asarray(logits), -1) == labels[start:start + batch_size]))
  return correct / max(len(labels), 1)
