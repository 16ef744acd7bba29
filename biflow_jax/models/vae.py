"""The Stable Diffusion VAE (diffusers `AutoencoderKL`) in Flax, NHWC.

Latent BiFlow trains F and G on the SD VAE's latents, so the maths here follows
diffusers 0.42 exactly (GroupNorm eps 1e-6, asymmetric (0,1,0,1) padding before each
stride-2 conv, single-head mid-block attention, logvar clamped to [-30, 20]) and the
module names mirror its state-dict names (`down_blocks.0` -> `down_blocks_0`) so
`biflow_jax.convert.vae` can map a checkpoint onto the params name by name.

Numerics: params are float32; convs and matmuls run in `dtype` at `precision`
(config.vae.dtype / config.vae.precision); GroupNorm statistics and the attention
softmax are float32; `encode`/`decode` return float32.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from biflow_jax.models.layers import resolve_dtype, resolve_precision

Array = jax.Array
Dtype = Any

# diffusers builds every VAE norm with eps 1e-6 (torch's default is 1e-5).
NORM_EPS = 1e-6
# DiagonalGaussianDistribution clamps logvar to this range.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def _group_norm(groups: int, dtype: Dtype, name: str) -> nn.GroupNorm:
  # Two-pass variance, as torch computes it: E[x^2]-E[x]^2 loses digits on large activations.
  return nn.GroupNorm(num_groups=groups, epsilon=NORM_EPS, dtype=dtype,
                      use_fast_variance=False, name=name)


def _conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1,
          padding: Any = 'SAME', precision: Any = None) -> nn.Conv:
  pad = ((kernel // 2, kernel // 2),) * 2 if padding == 'SAME' else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad,
                 dtype=dtype, precision=precision, name=name)


class ResnetBlock(nn.Module):
  """diffusers ResnetBlock2D without a time embedding: norm-silu-conv twice, plus skip."""
  out_channels: int
  groups: int
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.silu(_group_norm(self.groups, self.dtype, 'norm1')(x))
    h = _conv(self.out_channels, 3, self.dtype, 'conv1', precision=self.precision)(h)
    h = nn.silu(_group_norm(self.groups, self.dtype, 'norm2')(h))
    h = _conv(self.out_channels, 3, self.dtype, 'conv2', precision=self.precision)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, 'conv_shortcut', precision=self.precision)(x)
    return x + h


class Attention(nn.Module):
  """The VAE mid-block attention: GroupNorm, one head over all H*W positions, residual."""
  groups: int
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hgt, wid, c = x.shape
    h = _group_norm(self.groups, self.dtype, 'group_norm')(x).reshape(b, hgt * wid, c)
    q = nn.Dense(c, dtype=self.dtype, precision=self.precision, name='to_q')(h)
    k = nn.Dense(c, dtype=self.dtype, precision=self.precision, name='to_k')(h)
    v = nn.Dense(c, dtype=self.dtype, precision=self.precision, name='to_v')(h)
    logits = jnp.einsum('bqc,bkc->bqk', q, k, precision=self.precision).astype(jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(c))
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    h = jnp.einsum('bqk,bkc->bqc', weights, v, precision=self.precision)
    h = nn.Dense(c, dtype=self.dtype, precision=self.precision, name='to_out')(h)
    return x + h.reshape(b, hgt, wid, c)


class MidBlock(nn.Module):
  """resnet -> attention -> resnet at the lowest resolution."""
  channels: int
  groups: int
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = ResnetBlock(self.channels, self.groups, self.dtype, self.precision, name='resnets_0')(x)
    x = Attention(self.groups, self.dtype, self.precision, name='attentions_0')(x)
    return ResnetBlock(self.channels, self.groups, self.dtype, self.precision,
                       name='resnets_1')(x)


class Downsample(nn.Module):
  """Pad right/bottom by one, then a 3x3 stride-2 conv without padding (diffusers padding=0)."""
  channels: int
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.channels, 3, self.dtype, 'conv', stride=2, padding='VALID',
                 precision=self.precision)(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x, then a 3x3 conv."""
  channels: int
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.channels, 3, self.dtype, 'conv', precision=self.precision)(x)


class DownBlock(nn.Module):
  out_channels: int
  num_layers: int
  groups: int
  add_downsample: bool
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.dtype, self.precision,
                      name=f'resnets_{i}')(x)
    if self.add_downsample:
      x = Downsample(self.out_channels, self.dtype, self.precision, name='downsamplers_0')(x)
    return x


class UpBlock(nn.Module):
  out_channels: int
  num_layers: int
  groups: int
  add_upsample: bool
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.dtype, self.precision,
                      name=f'resnets_{i}')(x)
    if self.add_upsample:
      x = Upsample(self.out_channels, self.dtype, self.precision, name='upsamplers_0')(x)
    return x


class Encoder(nn.Module):
  """Image -> 2*latent_channels moments (before quant_conv)."""
  latent_channels: int
  block_out_channels: Sequence[int]
  layers_per_block: int
  groups: int
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, x: Array) -> Array:
    chans = tuple(self.block_out_channels)
    x = _conv(chans[0], 3, self.dtype, 'conv_in', precision=self.precision)(x.astype(self.dtype))
    for i, c in enumerate(chans):
      x = DownBlock(c, self.layers_per_block, self.groups, i < len(chans) - 1, self.dtype,
                    self.precision, name=f'down_blocks_{i}')(x)
    x = MidBlock(chans[-1], self.groups, self.dtype, self.precision, name='mid_block')(x)
    x = nn.silu(_group_norm(self.groups, self.dtype, 'conv_norm_out')(x))
    return _conv(2 * self.latent_channels, 3, self.dtype, 'conv_out',
                 precision=self.precision)(x)


class Decoder(nn.Module):
  """Latents (after post_quant_conv) -> image; up blocks run the channels in reverse."""
  out_channels: int
  block_out_channels: Sequence[int]
  layers_per_block: int
  groups: int
  dtype: Dtype = jnp.float32
  precision: Any = None  # jax.lax.Precision of convs and matmuls; None = backend default

  @nn.compact
  def __call__(self, z: Array) -> Array:
    chans = tuple(reversed(tuple(self.block_out_channels)))
    x = _conv(chans[0], 3, self.dtype, 'conv_in', precision=self.precision)(z.astype(self.dtype))
    x = MidBlock(chans[0], self.groups, self.dtype, self.precision, name='mid_block')(x)
    for i, c in enumerate(chans):
      x = UpBlock(c, self.layers_per_block + 1, self.groups, i < len(chans) - 1, self.dtype,
                  self.precision, name=f'up_blocks_{i}')(x)
    x = nn.silu(_group_norm(self.groups, self.dtype, 'conv_norm_out')(x))
    return _conv(self.out_channels, 3, self.dtype, 'conv_out', precision=self.precision)(x)


class AutoencoderKL(nn.Module):
  """diffusers AutoencoderKL (the SD VAE): NHWC images in [-1, 1] <-> NHWC latents."""
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  dtype: Any = jnp.float32  # compute dtype; params float32
  precision: Any = None     # jax.lax.Precision of convs and matmuls; None = backend default

  @classmethod
  def from_config(cls, vae_cfg: Any) -> 'AutoencoderKL':
    """Build from `config.vae` (in_channels, block_out_channels, ..., dtype, precision)."""
    get = vae_cfg.get if hasattr(vae_cfg, 'get') else lambda k, d=None: getattr(vae_cfg, k, d)
    chans = tuple(int(c) for c in get('block_out_channels'))
    groups = int(get('norm_num_groups'))
    bad = [c for c in chans if c % groups]
    if bad:
      raise ValueError(f'config.vae.block_out_channels={chans} has channels {bad} not divisible '
                       f'by config.vae.norm_num_groups={groups}; fix one of the two')
    in_channels = int(get('in_channels'))
    return cls(in_channels=in_channels, out_channels=int(get('out_channels', in_channels)),
               block_out_channels=chans, layers_per_block=int(get('layers_per_block')),
               latent_channels=int(get('latent_channels')), norm_num_groups=groups,
               dtype=resolve_dtype(get('dtype', 'float32')),
               precision=resolve_precision(get('precision', 'highest')))

  def setup(self):
    chans = tuple(self.block_out_channels)
    self.encoder = Encoder(self.latent_channels, chans, self.layers_per_block,
                           self.norm_num_groups, self.dtype, self.precision)
    self.decoder = Decoder(self.out_channels, chans, self.layers_per_block,
                           self.norm_num_groups, self.dtype, self.precision)
    self.quant_conv = _conv(2 * self.latent_channels, 1, self.dtype, None,
                            precision=self.precision)
    self.post_quant_conv = _conv(self.latent_channels, 1, self.dtype, None,
                                 precision=self.precision)

  def encode(self, x: Array) -> tuple[Array, Array]:
    """NHWC image in [-1, 1] -> posterior (mean, logvar), each (B, H/f, W/f, latent) float32."""
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f'encode expects NHWC images with {self.in_channels} channels, got shape '
                       f'{x.shape}; transpose NCHW inputs with x.transpose(0, 2, 3, 1)')
    moments = self.quant_conv(self.encoder(x)).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

  def decode(self, latents: Array) -> Array:
    """Unscaled NHWC latents (divide by scaling_factor first) -> NHWC image, float32."""
    if latents.ndim != 4 or latents.shape[-1] != self.latent_channels:
      raise ValueError(f'decode expects NHWC latents with {self.latent_channels} channels, got '
                       f'shape {latents.shape}')
    z = self.post_quant_conv(latents.astype(self.dtype))
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: Array) -> tuple[Array, Array, Array]:
    """(decode(mean), mean, logvar): touches both halves, so `init` creates every param."""
    mean, logvar = self.encode(x)
    return self.decode(mean), mean, logvar


def downsample_factor(model: AutoencoderKL) -> int:
  """Pixels per latent along each side: 2 ** (number of blocks - 1), 8 for the SD VAE."""
  return 2 ** (len(tuple(model.block_out_channels)) - 1)


def scale_latents(latents: Array, scaling_factor: float) -> Array:
  """VAE posterior -> the unit-ish-variance latents F and G see."""
  return latents * scaling_factor


def unscale_latents(latents: Array, scaling_factor: float) -> Array:
  """Inverse of `scale_latents`: what `AutoencoderKL.decode` expects."""
  return latents / scaling_factor
