"""Jitted samplers: (params, rng, labels, temperature) -> images in [-1, 1].

One implementation per decoder over the same noise: the exact inverse of F (KV cache)
and its fixed-point inverse, each optionally followed by score denoising (F models
x~ = x + sigma * eps, so its inverse lands on noisy images). The 1-NFE reverse model
joins here as decoder 'reverse' with the reverse-model issue.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from biflow_jax.models.flow import ForwardFlow, score_denoise

DECODERS = ('exact', 'fixed_point')
DENOISERS = ('score', 'none')

Sampler = Callable[..., jax.Array]


def class_rows(num: int, num_classes: int) -> jax.Array:
  """Labels for a grid with one row per class (0,0,..,1,1,..); -1 everywhere if unconditional."""
  if not num_classes:
    return -jnp.ones((num,), jnp.int32)
  per_class = max(1, num // num_classes)
  return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)[:num]


def make_sampler(config, decoder: str = 'exact', denoise: str = 'score',
                 guidance: float = 0.0) -> Sampler:
  """A jitted pure function (params, rng, labels, temperature) -> NHWC images.

  `params` is the whole tree ({'forward': ...}); labels of -1 sample unconditionally.
  Guidance is fixed per sampler (it decides whether the unconditional pass runs).
  """
  if decoder not in DECODERS:
    raise ValueError(f'unknown decoder {decoder!r}; available: {DECODERS}')
  if denoise not in DENOISERS:
    raise ValueError(f'unknown denoise {denoise!r}; available: {DENOISERS}')
  flow = ForwardFlow.from_config(config.model)
  sigma = float(config.objective.noise_sigma)
  guidance = float(guidance)
  sample_cfg = config.sample
  fp_kwargs = dict(tol=float(sample_cfg.fixed_point_tol),
                   max_iters=int(sample_cfg.fixed_point_max_iters) or None,
                   num_groups=int(sample_cfg.fixed_point_groups))

  def sample(params: Any, rng: jax.Array, labels: jax.Array, temperature=1.0) -> jax.Array:
    variables = {'params': params['forward']}
    y = labels if flow.num_classes else None
    z = temperature * jax.random.normal(rng, (labels.shape[0], flow.num_tokens, flow.token_dim))
    if decoder == 'exact':
      x = flow.apply(variables, z, y, method=ForwardFlow.inverse, guidance=guidance)
    else:
      x, _, _ = flow.apply(variables, z, y, method=ForwardFlow.inverse, mode='fixed_point',
                           guidance=guidance, **fp_kwargs)
    if denoise == 'score':
      x = score_denoise(flow, variables, x, y, sigma)
    return jnp.clip(x, -1.0, 1.0)

  return jax.jit(sample)
