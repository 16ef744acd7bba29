"""Jitted samplers: (params, rng, labels, temperature) -> images in [-1, 1].

One implementation per decoder, all over the same noise z ~ N(0, temperature^2 I):
- 'reverse': BiFlow's learned generator G, one forward pass (1 NFE); guidance is an
  input of G (training-time CFG), so guided sampling stays 1 NFE. With
  `sample.reverse_cfg='two_pass'` G is guided the ordinary way instead (2 NFE, for a G
  trained without training-time CFG but with label dropout): G(z|c) + w (G(z|c) - G(z|null)),
  both passes at G's guidance input 0.
- 'exact': F's exact inverse (serial over tokens, KV cache).
- 'fixed_point': F's Jacobi / Gauss-Seidel-Jacobi inverse.
F's inverses land on noisy images x~ (F models x + sigma * eps); 'score' denoising
(Tweedie through F) cleans them. G learns its own denoising by default.

Noise-space uses of having both directions (docs/method.md §6) are here too:
`make_inpainter` (keep F(x) where the mask keeps pixels, fresh noise elsewhere, then
G) and `make_interpolator` (spherical interpolation between two z, then G).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from biflow_jax.models import base_density, layers
from biflow_jax.models.flow import ForwardFlow, score_denoise
from biflow_jax.models.generator import ReverseModel

DECODERS = ('reverse', 'exact', 'fixed_point')
DENOISERS = ('score', 'none')
#: How G is guided: w as G's input (training-time CFG, 1 NFE) or two passes (ordinary CFG).
REVERSE_CFG = ('input', 'two_pass')

Sampler = Callable[..., jax.Array]


def class_rows(num: int, num_classes: int) -> jax.Array:
  """Labels for a grid with one row per class (0,0,..,1,1,..); -1 everywhere if unconditional."""
  if not num_classes:
    return -jnp.ones((num,), jnp.int32)
  per_class = max(1, num // num_classes)
  return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)[:num]


def _reverse_model(config):
  if not config.reverse.enabled:
    raise ValueError("decoder 'reverse' needs the reverse model: set config.reverse.enabled=True "
                     "and train it, or use decoder 'exact' / 'fixed_point'")
  return ReverseModel.from_config(config.reverse, config.model)


def make_decoder(config, decoder: str = 'exact', denoise: str = 'score'
                 ) -> Callable[..., jax.Array]:
  """An un-jitted pure function (params, z tokens, labels, guidance) -> NHWC images in [-1, 1].

  For F's inverses a Python guidance of 0 skips the unconditional pass; for G the
  guidance scale is simply an input (training-time CFG), so it costs nothing extra, unless
  config.sample.reverse_cfg='two_pass': then G runs twice at input w = 0, conditional and
  with the null label -1, combined as x_c + guidance * (x_c - x_u) (F's guidance rule, so
  guidance 0 is the conditional pass).
  """
  if decoder not in DECODERS:
    raise ValueError(f'unknown decoder {decoder!r}; available: {DECODERS}')
  if denoise not in DENOISERS:
    raise ValueError(f'unknown denoise {denoise!r}; available: {DENOISERS}')
  flow = ForwardFlow.from_config(config.model)
  generator = _reverse_model(config) if decoder == 'reverse' else None
  reverse_cfg = config.sample.get('reverse_cfg', 'input')
  if reverse_cfg not in REVERSE_CFG:
    raise ValueError(f'config.sample.reverse_cfg={reverse_cfg!r} is not one of {REVERSE_CFG}')
  sigma = float(config.objective.noise_sigma)
  s = config.sample
  fp_kwargs = dict(tol=float(s.fixed_point_tol), max_iters=int(s.fixed_point_max_iters) or None,
                   num_groups=int(s.fixed_point_groups))

  def decode(params: Any, z: jax.Array, labels: jax.Array, guidance=0.0) -> jax.Array:
    forward = {'params': params['forward']}
    y = labels if flow.num_classes else None
    if decoder == 'reverse':
      run = lambda labels, w: generator.apply({'params': params['reverse']}, z, labels,
                                              jnp.full((z.shape[0],), w, jnp.float32))[0]
      if reverse_cfg == 'two_pass':
        cond = run(y, 0.0)
        # As for F, a Python guidance of 0 (static) skips the unconditional pass.
        unguided = y is None or (isinstance(guidance, (int, float)) and guidance == 0)
        tokens = cond if unguided else cond + guidance * (cond - run(None, 0.0))
      else:
        tokens = run(y, guidance)
      x = layers.unpatchify(tokens, flow.image_shape, flow.patch_size)
    elif decoder == 'exact':
      x = flow.apply(forward, z, y, method=ForwardFlow.inverse, guidance=guidance)
    else:
      x, _, _ = flow.apply(forward, z, y, method=ForwardFlow.inverse, mode='fixed_point',
                           guidance=guidance, **fp_kwargs)
    if denoise == 'score':
      x = score_denoise(flow, forward, x, y, sigma)
    return jnp.clip(x, -1.0, 1.0)

  return decode


def sample_noise(config, rng: jax.Array, num: int, temperature=1.0) -> jax.Array:
  flow = ForwardFlow.from_config(config.model)
  return base_density.sample(rng, (num, flow.num_tokens, flow.token_dim), flow.base, flow.nu,
                             temperature)


def make_sampler(config, decoder: str = 'exact', denoise: str = 'score') -> Sampler:
  """A jitted pure function (params, rng, labels, guidance=0., temperature=1.) -> NHWC images.

  `params` is the whole tree ({'forward': ..., 'reverse': ...}); labels of -1 sample
  unconditionally. `guidance` is static (each value compiles once): for F's inverses
  it decides whether the unconditional pass runs at all.
  """
  decode = make_decoder(config, decoder, denoise)

  def sample(params, rng, labels, guidance=0.0, temperature=1.0):
    z = sample_noise(config, rng, labels.shape[0], temperature)
    return decode(params, z, labels, guidance)

  return jax.jit(sample, static_argnames=('guidance',))


def pixel_mask_to_tokens(mask: jax.Array, patch_size: int) -> jax.Array:
  """(N, H, W) or (N, H, W, C) keep-mask -> (N, T, D) token mask (a token dim is kept
  where its pixel is kept)."""
  if mask.ndim == 3:
    mask = mask[..., None]
  return layers.patchify(mask.astype(jnp.float32), patch_size)


def make_inpainter(config, guidance: float = 0.0, denoise: str = 'none') -> Callable:
  """Zero-shot noise-space inpainting: z' = M * F(x_known) + (1 - M) * eps, x = G(z').

  Returns a jitted (params, rng, x_known NHWC in [-1, 1], keep_mask (N,H,W[,C]), labels)
  -> images. F sees x_known + sigma * eps, the input distribution it was trained on.
  """
  flow = ForwardFlow.from_config(config.model)
  decode = make_decoder(config, 'reverse', denoise)
  sigma = float(config.objective.noise_sigma)

  def inpaint(params, rng, x_known, keep_mask, labels):
    noise_rng, z_rng = jax.random.split(rng)
    x_noisy = x_known + sigma * jax.random.normal(noise_rng, x_known.shape)
    y = labels if flow.num_classes else None
    z_known, _, _ = flow.apply({'params': params['forward']}, x_noisy, y)
    m = pixel_mask_to_tokens(keep_mask, flow.patch_size)
    z = m * z_known + (1.0 - m) * jax.random.normal(z_rng, z_known.shape)
    return decode(params, z, labels, guidance)

  return jax.jit(inpaint)


def slerp(z0: jax.Array, z1: jax.Array, t: jax.Array) -> jax.Array:
  """Spherical interpolation per example over all token dims; t in [0, 1], shape (K,)."""
  a = z0.reshape(-1)
  b = z1.reshape(-1)
  cos = jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  so = jnp.sin(omega)
  t = t[:, None]
  linear = (1.0 - t) * a + t * b
  spherical = (jnp.sin((1.0 - t) * omega) * a + jnp.sin(t * omega) * b) / jnp.where(so == 0, 1.0, so)
  out = jnp.where(so < 1e-6, linear, spherical)
  return out.reshape((t.shape[0],) + z0.shape)


def make_interpolator(config, guidance: float = 0.0, denoise: str = 'none') -> Callable:
  """Jitted (params, z0 (T, D), z1 (T, D), label (), num) -> `num` images from z0 to z1 via G."""
  decode = make_decoder(config, 'reverse', denoise)

  def interpolate(params, z0, z1, label, num: int):
    t = jnp.linspace(0.0, 1.0, num)
    z = slerp(z0, z1, t)
    return decode(params, z, jnp.full((num,), label, jnp.int32), guidance)

  return jax.jit(interpolate, static_argnames=('num',))
