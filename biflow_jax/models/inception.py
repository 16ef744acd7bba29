"""The FID InceptionV3 (pytorch-fid 0.3.0 `fid_inception_v3`) in Flax Linen, inference only.

Same network as pytorch-fid's FID Inception (the TF 2015-12-05 graph ported to PyTorch):
torchvision's Inception3 stem and Mixed_6a (InceptionB) / Mixed_7a (InceptionD), with
pytorch-fid's FIDInceptionA (Mixed_5b-d), FIDInceptionC (Mixed_6b-e), FIDInceptionE_1
(Mixed_7b) and FIDInceptionE_2 (Mixed_7c); every conv is bias-free, followed by BatchNorm
(eps 0.001) and ReLU; the A/C/E_1 pool branches average-pool 3x3/1 pad 1 without counting
the padding (count_include_pad=False), the E_2 pool branch max-pools 3x3/1 pad 1; the
stem max-pools 3x3/2 (no padding); a global average pool gives the 2048-d pool3 features
and a 1008-way fc the logits (no dropout at inference).

Variables: `{'params': ..., 'batch_stats': ...}`. Submodules carry the PyTorch names
(`Conv2d_1a_3x3`, `Mixed_5b/branch1x1`, ..., `fc`), each BasicConv2d holding `conv`
(kernel (kh, kw, in, out)) and `bn` (params scale/bias; batch_stats mean/var: the
running statistics, NOT folded into the conv). BatchNorm always uses the running
statistics. Use `biflow_jax.convert.inception.load_fid_inception` to get the weights.

`fid_features(variables, images_01)` is the pytorch-fid wrapper: images in [0, 1], NHWC,
any size -> bilinear resize to 299x299 with PyTorch's align_corners=False semantics
(half-pixel centres, no antialiasing in either direction) -> 2x - 1 -> the network.
Convs and the resize run at HIGHEST matmul precision (float32 also on TPU/GPU-TF32).

Only jax, flax and numpy are imported here.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
# sFID's spatial features (the ADM suite's 'mixed_6/conv:0'[..., :7]): the first 7 channels
# of Mixed_6d's 1x1 branch after its ReLU, 17x17 at 299 input, flattened (h, w, c).
SPATIAL_MODULE = ('Mixed_6d', 'branch1x1')
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
BN_EPS = 1e-3
_PRECISION = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- resize

def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32 matrix of PyTorch's 1-D bilinear, align_corners=False.

  As in ATen (size given, no scale_factor): scale = in/out,
  src = max(scale * (dst + 0.5) - 0.5, 0), i0 = floor(src), i1 = min(i0 + 1, in - 1),
  weights (1 - frac, frac). No antialiasing, so downsampling only looks at 2 taps.
  """
  scale = in_size / out_size
  dst = np.arange(out_size, dtype=np.float64)
  src = np.maximum(scale * (dst + 0.5) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = src - i0
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m.astype(np.float32)


def resize_bilinear(images: jax.Array, size: Sequence[int] | int) -> jax.Array:
  """NHWC bilinear resize = torch F.interpolate(mode='bilinear', align_corners=False)."""
  if isinstance(size, int):
    size = (size, size)
  out_h, out_w = int(size[0]), int(size[1])
  _, h, w, _ = images.shape
  x = images
  if h != out_h:
    x = jnp.einsum('oh,nhwc->nowc', jnp.asarray(bilinear_matrix(h, out_h)), x,
                   precision=_PRECISION)
  if w != out_w:
    x = jnp.einsum('ow,nhwc->nhoc', jnp.asarray(bilinear_matrix(w, out_w)), x,
                   precision=_PRECISION)
  return x


def preprocess(images_01: jax.Array) -> jax.Array:
  """[0, 1] NHWC, any size -> the network's input: 299x299 in [-1, 1] (pytorch-fid order)."""
  x = jnp.asarray(images_01, jnp.float32)
  if x.ndim != 4:
    raise ValueError(f'expected NHWC images, got shape {x.shape}')
  x = resize_bilinear(x, INPUT_SIZE)
  return 2.0 * x - 1.0


# ----------------------------------------------------------------------------- pools

def _max_pool(x, window=3, stride=2, pad=0):
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)))


def _avg_pool_exclude_pad(x):
  """avg_pool2d(3, stride=1, padding=1, count_include_pad=False)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return total / count


# ----------------------------------------------------------------------------- blocks

class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm(eps 0.001, running stats) -> ReLU."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                precision=_PRECISION, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, momentum=0.9,
                     dtype=self.dtype, name='bn')(x)
    return nn.relu(x)


class FIDInceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, name='branch1x1')(x)
    b5 = BasicConv2d(48, name='branch5x5_1')(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, name='branch_pool')(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """torchvision InceptionB (Mixed_6a): grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), stride=2, name='branch3x3')(x)
    bd = BasicConv2d(64, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, (3, 3), stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, name='branch1x1')(x)
    b7 = BasicConv2d(c7, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, name='branch_pool')(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """torchvision InceptionD (Mixed_7a): grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, (3, 3), stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, (3, 3), stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (pool='avg', count_include_pad=False) / FIDInceptionE_2 (pool='max')."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, name='branch1x1')(x)
    b3 = BasicConv2d(384, name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = BasicConv2d(448, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    if self.pool == 'avg':
      p = _avg_pool_exclude_pad(x)
    elif self.pool == 'max':
      p = _max_pool(x, window=3, stride=1, pad=1)
    else:
      raise ValueError(f'pool must be avg or max, got {self.pool!r}')
    bp = BasicConv2d(192, name='branch_pool')(p)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID InceptionV3. Input: NHWC already preprocessed (299x299, [-1, 1]).

  Returns (pool3 (N, 2048), logits (N, 1008)). Works at other sizes >= 75 too, but FID
  needs 299 (use `fid_features`, which resizes).
  """

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    x = BasicConv2d(32, (3, 3), stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool(x)
    x = BasicConv2d(80, name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool(x)
    x = FIDInceptionA(32, name='Mixed_5b')(x)
    x = FIDInceptionA(64, name='Mixed_5c')(x)
    x = FIDInceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = FIDInceptionC(128, name='Mixed_6b')(x)
    x = FIDInceptionC(160, name='Mixed_6c')(x)
    x = FIDInceptionC(160, name='Mixed_6d')(x)
    x = FIDInceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = FIDInceptionE('avg', name='Mixed_7b')(x)
    x = FIDInceptionE('max', name='Mixed_7c')(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_LOGITS, precision=_PRECISION, name='fc')(pool3)
    return pool3, logits


def fid_features(variables, images_01) -> tuple[jax.Array, jax.Array]:
  """pytorch-fid's wrapper: [0, 1] NHWC images (any size) -> (pool3 (N, 2048), logits (N, 1008)).

  Jittable (`jax.jit(fid_features)`); the resize matrices depend only on static shapes.
  """
  return InceptionV3().apply(variables, preprocess(images_01))


def variable_shapes() -> dict:
  """The expected variables tree as ShapeDtypeStructs (no compute)."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), x)


def suite_features(variables, images_01) -> dict[str, jax.Array]:
  """What the ADM evaluation suite reads from the network, for [0, 1] NHWC images:

  - 'pool': pool3 (N, 2048) (FID, precision/recall);
  - 'spatial': Mixed_6d's 1x1 branch, first 7 channels, flattened (N, 2023) (sFID);
  - 'logits_unbiased': pool3 @ fc kernel (N, 1008), the fc layer without its bias, which
    is what the suite's Inception Score takes a softmax of.

  Jittable; the same network and preprocessing as `fid_features`.
  """
  def is_spatial(module, method_name):
    return method_name == '__call__' and module.scope.path == SPATIAL_MODULE

  (pool3, _), state = InceptionV3().apply(variables, preprocess(images_01),
                                          capture_intermediates=is_spatial,
                                          mutable=['intermediates'])
  branch = state['intermediates'][SPATIAL_MODULE[0]][SPATIAL_MODULE[1]]['__call__'][0]
  spatial = branch[..., :SPATIAL_CHANNELS].reshape(branch.shape[0], -1)
  kernel = variables['params']['fc']['kernel']
  return {'pool': pool3, 'spatial': spatial,
          'logits_unbiased': jnp.dot(pool3, kernel, precision=_PRECISION)}
