"""Frozen, pretrained feature networks of the perceptual terms: LPIPS-VGG and ConvNeXt-V2.

Flax Linen, inference only, NHWC, with the PyTorch networks' maths so that imported
weights (`convert/perceptual.py`) give the same numbers:

- `LPIPS`: the `lpips` package 0.1.4, `LPIPS(net='vgg', version='0.1')` with
  spatial=False and normalize=False (inputs in [-1, 1]). Scaling layer
  (x - shift) / scale with the package's constants; torchvision's VGG16 `features`
  (3x3 conv pad 1 + ReLU, 2x2/2 max pools) tapped after relu1_2, relu2_2, relu3_3,
  relu4_3, relu5_3; each map divided by (its L2 norm over channels + 1e-10); squared
  difference; a bias-free 1x1 conv head per layer (dropout is off at eval); spatial
  mean; sum over the 5 layers -> (batch,).
- `ConvNeXtV2`: timm 1.0.31 `convnextv2_*` (stem 4x4/4 conv + LayerNorm; stages 1..3
  start with LayerNorm + 2x2/2 conv; blocks: 7x7 depthwise conv, LayerNorm, Linear 4x,
  exact GELU, GRN, Linear back, residual; head: global average pool, LayerNorm, fc).
  All LayerNorms use eps 1e-6. GRN is timm's `GlobalResponseNorm`:
  x + bias + weight * (x * Nx), Nx = Gx / (mean_C Gx + 1e-6), Gx = ||x||_2 over (H, W).
  Linear layers are Dense whether the checkpoint stores them as Linear (tiny and up) or
  as 1x1 convs (atto..nano, timm's conv_mlp=True): the same maths.

Norms (LPIPS channel norm, GRN) use a square root whose gradient is 0 at 0 instead of
inf (PyTorch would give NaN there), so an all-zero ReLU column cannot poison training.
Numerics: convs and matmuls run at `precision` in `dtype` (defaults HIGHEST and float32);
norms and the LPIPS channel normalisation are float32 whatever `dtype`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


Array = jax.Array
PRECISION = jax.lax.Precision.HIGHEST

# ----------------------------------------------------------------------------- helpers


def _safe_sqrt(x: Array) -> Array:
  """sqrt with gradient 0 (not inf) at x == 0; same forward values."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _layer_norm(name: str | None = None) -> nn.LayerNorm:
  # Two-pass variance, as torch.nn.functional.layer_norm.
  return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name=name)


# ----------------------------------------------------------------------------- LPIPS

# torchvision vgg16().features indices of the 13 convs: (index, in, out).
VGG16_CONVS = ((0, 3, 64), (2, 64, 64),
               (5, 64, 128), (7, 128, 128),
               (10, 128, 256), (12, 256, 256), (14, 256, 256),
               (17, 256, 512), (19, 512, 512), (21, 512, 512),
               (24, 512, 512), (26, 512, 512), (28, 512, 512))
# LPIPS slices (features[0:4], [4:9], [9:16], [16:23], [23:30]): the convs of each.
# Slices 2..5 start with the 2x2/2 max pool at features index 4 / 9 / 16 / 23.
VGG16_SLICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# lpips ScalingLayer constants (lpips 0.1.4), per RGB channel.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
  """torchvision VGG16 `features` up to relu5_3 -> the 5 LPIPS taps (NHWC).

  Convs are named `conv{i}`, i the torchvision `features` index (0, 2, 5, ..., 28).
  """
  precision: Any = PRECISION
  dtype: Any = jnp.float32  # compute dtype of convs and matmuls; params stay float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, ...]:
    out_channels = dict((i, c) for i, _, c in VGG16_CONVS)
    taps = []
    for s, convs in enumerate(VGG16_SLICES):
      if s > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
      for i in convs:
        x = nn.Conv(out_channels[i], (3, 3), padding=((1, 1), (1, 1)),
                    precision=self.precision, dtype=self.dtype, name=f'conv{i}')(x)
        x = nn.relu(x)
      taps.append(x)
    return tuple(taps)


def _unit_channels(f: Array) -> Array:
  """lpips normalize_tensor: f / (||f||_2 over channels + 1e-10)."""
  norm = _safe_sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True))
  return f / (norm + 1e-10)


class LPIPS(nn.Module):
  """LPIPS-VGG v0.1 distance: __call__(x0, x1) with NHWC images in [-1, 1] -> (batch,).

  Params: `net` (VGG16Features) and `lin0..lin4` (1x1 bias-free convs, kernel
  (1, 1, C, 1)). Both images go through the trunk as one batch.
  """
  precision: Any = PRECISION
  dtype: Any = jnp.float32  # compute dtype of convs and matmuls; params stay float32

  @nn.compact
  def __call__(self, x0: Array, x1: Array) -> Array:
    if x0.shape != x1.shape or x0.ndim != 4 or x0.shape[-1] != 3:
      raise ValueError(f'LPIPS wants two NHWC RGB batches of one shape, got {x0.shape} '
                       f'and {x1.shape}')
    batch = x0.shape[0]
    x = jnp.concatenate([x0, x1], axis=0).astype(jnp.float32)
    x = (x - jnp.asarray(LPIPS_SHIFT, jnp.float32)) / jnp.asarray(LPIPS_SCALE, jnp.float32)
    taps = VGG16Features(precision=self.precision, dtype=self.dtype, name='net')(x)
    total = jnp.zeros((batch,), jnp.float32)
    for i, f in enumerate(taps):
      f = _unit_channels(f.astype(jnp.float32))
      diff = jnp.square(f[:batch] - f[batch:])
      head = nn.Conv(1, (1, 1), use_bias=False, precision=self.precision, dtype=self.dtype,
                     name=f'lin{i}')
      total = total + jnp.mean(head(diff).astype(jnp.float32), axis=(1, 2, 3))
    return total


# ----------------------------------------------------------------------------- ConvNeXt-V2

# timm convnextv2_* variants: (dims, depths).
CONVNEXT_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    'atto': ((40, 80, 160, 320), (2, 2, 6, 2)),
    'femto': ((48, 96, 192, 384), (2, 2, 6, 2)),
    'pico': ((64, 128, 256, 512), (2, 2, 6, 2)),
    'nano': ((80, 160, 320, 640), (2, 2, 8, 2)),
    'tiny': ((96, 192, 384, 768), (3, 3, 9, 3)),
    'base': ((128, 256, 512, 1024), (3, 3, 27, 3)),
    'large': ((192, 384, 768, 1536), (3, 3, 27, 3)),
    'huge': ((352, 704, 1408, 2816), (3, 3, 27, 3)),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GRN(nn.Module):
  """timm GlobalResponseNorm (channels last): x + bias + weight * (x * Nx)."""
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dim = x.shape[-1]
    weight = self.param('weight', nn.initializers.zeros, (dim,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (dim,), jnp.float32)
    gx = _safe_sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True))
    nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + self.eps)
    return x + bias + weight * (x * nx)


class GRNMlp(nn.Module):
  """fc1 (4x) -> exact GELU -> GRN -> fc2 (timm GlobalResponseNormMlp)."""
  hidden: int
  precision: Any = PRECISION
  dtype: Any = jnp.float32  # compute dtype of convs and matmuls; params stay float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dim = x.shape[-1]
    x = nn.Dense(self.hidden, precision=self.precision, dtype=self.dtype, name='fc1')(x)
    x = nn.gelu(x, approximate=False)
    x = GRN(name='grn')(x)
    return nn.Dense(dim, precision=self.precision, dtype=self.dtype, name='fc2')(x)


class ConvNeXtV2Block(nn.Module):
  """7x7 depthwise conv -> LayerNorm -> GRNMlp -> + input (no layer scale in V2)."""
  precision: Any = PRECISION
  dtype: Any = jnp.float32  # compute dtype of convs and matmuls; params stay float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dim = x.shape[-1]
    y = nn.Conv(dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=dim,
                precision=self.precision, dtype=self.dtype, name='conv_dw')(x)
    y = _layer_norm('norm')(y)
    y = GRNMlp(4 * dim, precision=self.precision, dtype=self.dtype, name='mlp')(y)
    return x + y


class ConvNeXtV2Stage(nn.Module):
  """Optional downsample (LayerNorm + 2x2/2 conv), then `depth` blocks."""
  dim: int
  depth: int
  has_downsample: bool
  precision: Any = PRECISION
  dtype: Any = jnp.float32  # compute dtype of convs and matmuls; params stay float32

  def setup(self):
    if self.has_downsample:  # named downsample_0 / downsample_1 like timm's Sequential
      self.downsample = [_layer_norm(),
                         nn.Conv(self.dim, (2, 2), strides=(2, 2), padding='VALID',
                                 precision=self.precision, dtype=self.dtype)]
    self.blocks = [ConvNeXtV2Block(precision=self.precision, dtype=self.dtype)
                   for _ in range(self.depth)]

  def __call__(self, x: Array) -> Array:
    if self.has_downsample:
      norm, conv = self.downsample
      x = conv(norm(x))
    for block in self.blocks:
      x = block(x)
    return x


class ConvNeXtV2(nn.Module):
  """timm ConvNeXt-V2, NHWC; inputs already ImageNet-normalised (see convnext_distance).

  Submodule names mirror timm's with '.' -> '_' after stem/stages/blocks/downsample/head
  (`stem_0`, `stages_1/downsample_1`, `stages_2/blocks_5/mlp/grn`, `head_norm`,
  `head_fc`), so `biflow_jax.convert.perceptual` maps names mechanically.
  num_classes=0 drops `head_fc` (then __call__ returns pre_logits).
  """
  dims: tuple[int, ...]
  depths: tuple[int, ...]
  num_classes: int = 1000
  precision: Any = PRECISION
  dtype: Any = jnp.float32  # compute dtype of convs and matmuls; params stay float32

  def setup(self):
    if len(self.dims) != len(self.depths):
      raise ValueError(f'ConvNeXtV2 dims {self.dims} and depths {self.depths} differ in length')
    self.stem_0 = nn.Conv(self.dims[0], (4, 4), strides=(4, 4), padding='VALID',
                          precision=self.precision, dtype=self.dtype)
    self.stem_1 = _layer_norm()
    self.stages = [ConvNeXtV2Stage(dim, depth, has_downsample=i > 0, precision=self.precision,
                                   dtype=self.dtype)
                   for i, (dim, depth) in enumerate(zip(self.dims, self.depths))]
    self.head_norm = _layer_norm()
    if self.num_classes:
      self.head_fc = nn.Dense(self.num_classes, precision=self.precision, dtype=self.dtype)

  def forward_features(self, x: Array) -> Array:
    """(B, H, W, 3) -> the last stage's output (B, H/32, W/32, dims[-1]), before the head."""
    x = self.stem_1(self.stem_0(x.astype(jnp.float32)))
    for stage in self.stages:
      x = stage(x)
    return x

  def pre_logits(self, x: Array) -> Array:
    """Images (B, H, W, 3) -> global average pool of the features + head LayerNorm (B, C)."""
    return self.head_norm(jnp.mean(self.forward_features(x), axis=(1, 2)))

  def __call__(self, x: Array) -> Array:
    """Images -> logits (B, num_classes); pre_logits when num_classes == 0."""
    feats = self.pre_logits(x)
    return self.head_fc(feats) if self.num_classes else feats


def convnext_model(variant: str, num_classes: int = 1000,
                   precision: Any = PRECISION, dtype: Any = jnp.float32) -> ConvNeXtV2:
  """ConvNeXtV2 for a timm variant name ('atto' .. 'huge', or 'convnextv2_base')."""
  key = variant.removeprefix('convnextv2_')
  if key not in CONVNEXT_VARIANTS:
    raise ValueError(f'unknown ConvNeXt-V2 variant {variant!r}; expected one of '
                     f'{sorted(CONVNEXT_VARIANTS)} (config.perceptual.convnext_variant)')
  dims, depths = CONVNEXT_VARIANTS[key]
  return ConvNeXtV2(dims=dims, depths=depths, num_classes=num_classes, precision=precision,
                    dtype=dtype)


